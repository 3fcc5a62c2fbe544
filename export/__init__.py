"""One-time export of a Stable Diffusion checkpoint to ONNX (needs the `torch` extra)."""
