"""Peak memory: `edgeinv invert` (ONNX Runtime) vs one PyTorch textual-inversion step.

    python benchmarks/peak_memory.py [--sd15-onnx DIR]

Both on the SD 1.5-shaped model (random weights) at 512x512 pictures (64x64 latents), each
in a fresh process, peak resident memory from the kernel (ru_maxrss):
- edgeinv invert: 4 pictures, 2 generations of 4 candidates x 2 samples, UNet chunk 1
  (`--chunk-size 1`: one sample per UNet call, the low-memory setting).
- PyTorch TI: the SD 1.5-shaped pipeline in fp32, VAE encode of one picture, then one
  forward + backward to the token row (UNet, VAE and the rest of the text encoder frozen,
  as diffusers' textual_inversion example), batch 1.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

INVERT = """
import sys, time, json
def peak_mb():  # VmHWM: this process's own peak (ru_maxrss would carry the parent's over fork + exec)
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
sys.argv = ["edgeinv", "invert", {images!r}, "--model", {model!r}, "--out", {out!r}, "--budget", "2", "--popsize", "4",
            "--samples", "2", "--heldout", "2", "--chunk-size", "1", "--init", "photo", "--no-samples", "--dim", "16"]
from edgeinv.cli import main
start = time.time()
try:
    main()
except SystemExit as e:
    assert e.code in (0, None), e.code
print(json.dumps({{"peak_mb": peak_mb(), "seconds": time.time() - start,
                  "torch": "torch" in sys.modules}}))
"""

TORCH_STEP = """
import json, time, torch
def peak_mb():  # VmHWM: this process's own peak (ru_maxrss would carry the parent's over fork + exec)
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
from pathlib import Path
from edgeinv_export.reference_models import sd15_shaped_pipeline
torch.set_num_threads(2)
start = time.time()
pipe = sd15_shaped_pipeline(Path({tokenizer!r}))
embedding = pipe.text_encoder.get_input_embeddings()
embedding.weight.requires_grad_(True)
image = torch.rand(1, 3, 512, 512) * 2 - 1
with torch.no_grad():
    latents = pipe.vae.encode(image).latent_dist.sample() * 0.18215
ids = pipe.tokenizer(["a photo of a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
noise = torch.randn_like(latents)
t = torch.tensor([500])
noisy = pipe.scheduler.add_noise(latents, noise, t)
states = pipe.text_encoder(ids)[0]
loss = torch.nn.functional.mse_loss(pipe.unet(noisy, t, states).sample, noise)
loss.backward()
assert embedding.weight.grad is not None
print(json.dumps({{"peak_mb": peak_mb(), "seconds": time.time() - start}}))
"""


def run(code: str) -> dict:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sd15-onnx", type=Path, default=Path("/tmp/edgeinv-sd15-shaped-onnx"))
    args = parser.parse_args()
    if not (args.sd15_onnx / "edgeinv.json").is_file():
        raise SystemExit(f"{args.sd15_onnx}: run `python benchmarks/export_sd15_shaped.py --keep --out {args.sd15_onnx}` first")
    import numpy as np
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp) / "images"
        images.mkdir()
        rng = np.random.default_rng(0)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (512, 512, 3), dtype=np.uint8)).save(images / f"{i}.png")
        ours = run(INVERT.format(images=str(images), model=str(args.sd15_onnx), out=str(Path(tmp) / "run")))
        theirs = run(TORCH_STEP.format(tokenizer=str(REPO / "models" / "tiny-sd-shapes-onnx" / "tokenizer")))
    print("| SD 1.5-shaped, 512x512 | peak memory (MB) | wall (s) |")
    print("| --- | ---: | ---: |")
    print(f"| edgeinv invert (ONNX Runtime, 2 generations, torch imported: {ours['torch']}) | {ours['peak_mb']:.0f} | {ours['seconds']:.0f} |")
    print(f"| PyTorch textual inversion, one step (forward + backward to the token) | {theirs['peak_mb']:.0f} | {theirs['seconds']:.0f} |")
    print(f"| ratio | {theirs['peak_mb'] / ours['peak_mb']:.2f}x less for edgeinv | |")


if __name__ == "__main__":
    main()
