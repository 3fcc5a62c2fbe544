"""The gradient methods (needs the torch extra): everything that imports torch lives here.

`train.py` is the loop and the methods (textual inversion, DreamBooth-LoRA, Custom
Diffusion); `torch_model.py` puts a diffusers pipeline behind the ONNX model's interface.
"""
