"""The lean SD 1.5-shaped forward path, side by side in one run: memory, speed, accuracy.

    python benchmarks/lean_unet.py --dir /work/sd15 [--prepare] [--skip-invert]

On the SD 1.5-shaped model (random weights, export/reference_models.py), each variant in a
fresh process, peak = the process's VmHWM (kernel high-water mark of resident memory):
- ONNX Runtime UNet: today's export (attention as MatMul/Softmax), fused attention
  (com.microsoft.MultiHeadAttention) fp32, + int8 weights, + int4 UNet MatMuls; sessions as
  edgeinv opens them (CPU arena off). Seconds per sample at 32x32 and 64x64 latents, batch 1;
  cosine of the 64x64 output to PyTorch fp32 eager on the same inputs.
- PyTorch: the UNet forward in fp32 eager (the throughput reference); one textual-inversion
  step at 512 px (VAE encode, text encoder, UNet forward + backward to the token row) in fp32,
  and with bf16 autocast + gradient checkpointing.
- `edgeinv invert` for 2 generations on the int8 folder with three 512 px pictures
  (--init photo, --popsize 2, --samples 1, --heldout 1, --no-flip: the peak does not depend
  on them, the run time does; chunk size from the default --max-memory).
Runs in this order, most important first (a busy machine may not finish): invert, the two
TI steps, then the UNet variants. --repeats: 32x32 calls timed (best of); 64x64 is one call.

--prepare writes, under --dir (about 13 GB of disk, ~15 GB of memory, 20+ minutes on 2 cores):
diffusers/ (the pipeline saved), fp32/ (`edgeinv export diffusers/`), unet-matmul-softmax/
(the UNet exported without fused attention), int8/ and int4/ (`edgeinv export fp32/
--quantize ...`, torch-free).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = REPO / "models" / "tiny-sd-shapes-onnx" / "tokenizer"

PEAK = """
def peak_mb():  # VmHWM: this process's own peak resident memory
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
"""

INPUTS = """
import numpy as np
def inputs(size):
    rng = np.random.default_rng(size)
    return (rng.standard_normal((1, 4, size, size)).astype(np.float32), np.array([500.0], np.float32),
            rng.standard_normal((1, 77, 768)).astype(np.float32))
"""

ORT_UNET = PEAK + INPUTS + """
import json, time, numpy as np, onnxruntime as ort
from edgeinv.onnx_model import session_options
session = ort.InferenceSession({path!r}, session_options(threads=2, arena={arena}), providers=["CPUExecutionProvider"])
row = {{}}
for size in (32, 64):
    sample, t, states = inputs(size)
    feeds = {{"sample": sample, "timestep": t, "encoder_hidden_states": states}}
    times = []
    for _ in range({repeats} if size == 32 else 1):  # 64x64: one call (time includes first-call costs)
        start = time.perf_counter(); out = session.run(None, feeds)[0]; times.append(time.perf_counter() - start)
    row[f"s{{size}}"] = min(times)
    np.save({out!r} + f"_{{size}}.npy", out)
row["peak_mb"] = peak_mb()
print(json.dumps(row))
"""

TORCH_UNET = PEAK + INPUTS + """
import json, time, numpy as np, torch
from pathlib import Path
from diffusers import UNet2DConditionModel
torch.set_num_threads(2)
unet = UNet2DConditionModel.from_pretrained({path!r}).eval()
row = {{}}
with torch.no_grad():
    for size in (32, 64):
        tensors = [torch.from_numpy(a) for a in inputs(size)]
        times = []
        for _ in range({repeats} if size == 32 else 1):
            start = time.perf_counter(); out = unet(*tensors).sample.numpy(); times.append(time.perf_counter() - start)
        row[f"s{{size}}"] = min(times)
        np.save({out!r} + f"_{{size}}.npy", out)
row["peak_mb"] = peak_mb()
print(json.dumps(row))
"""

TORCH_TI_STEP = PEAK + """
import json, time, torch
from diffusers import StableDiffusionPipeline
torch.set_num_threads(2)
pipe = StableDiffusionPipeline.from_pretrained({path!r}, safety_checker=None, requires_safety_checker=False)
for module in (pipe.unet, pipe.vae, pipe.text_encoder):
    module.requires_grad_(False)
embedding = pipe.text_encoder.get_input_embeddings()
embedding.weight.requires_grad_(True)
if {checkpointing}:
    pipe.unet.enable_gradient_checkpointing(); pipe.text_encoder.gradient_checkpointing_enable()
    pipe.unet.train(); pipe.text_encoder.train()
image = torch.rand(1, 3, 512, 512) * 2 - 1
with torch.no_grad():
    latents = pipe.vae.encode(image).latent_dist.sample() * 0.18215
ids = pipe.tokenizer(["a photo of a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
noise = torch.randn_like(latents)
t = torch.tensor([500])
noisy = pipe.scheduler.add_noise(latents, noise, t)
start = time.time()
with torch.autocast("cpu", dtype=torch.bfloat16, enabled={bf16}):
    states = pipe.text_encoder(ids)[0]
    prediction = pipe.unet(noisy, t, states).sample
loss = torch.nn.functional.mse_loss(prediction.float(), noise)
loss.backward()
assert embedding.weight.grad is not None
print(json.dumps({{"peak_mb": peak_mb(), "step_s": time.time() - start}}))
"""

INVERT = PEAK + """
import sys, time, json
sys.argv = ["edgeinv", "invert", {images!r}, "--model", {model!r}, "--out", {out!r}, "--budget", "2", "--popsize", "2",
            "--samples", "1", "--heldout", "1", "--init", "photo", "--no-flip", "--no-samples", "--threads", "2"]
from edgeinv.cli import main
start = time.time()
try:
    main()
except SystemExit as e:
    assert e.code in (0, None), e.code
print(json.dumps({{"peak_mb": peak_mb(), "seconds": time.time() - start, "torch": "torch" in sys.modules}}))
"""

PREPARE = """
import torch
from pathlib import Path
from edgeinv_export.reference_models import sd15_shaped_pipeline
pipe = sd15_shaped_pipeline(Path({tokenizer!r}))
pipe.save_pretrained({out!r}, safe_serialization=True)
"""

UNFUSED_UNET = """
import torch
from pathlib import Path
from diffusers import UNet2DConditionModel
from edgeinv_export.onnx_export import UNetForOnnx, _export
unet = UNet2DConditionModel.from_pretrained({source!r}).eval()
b = 2
args = (torch.randn(b, 4, 64, 64), torch.tensor([999.0] * b), torch.randn(b, 77, 768))
_export(UNetForOnnx(unet), args, Path({out!r}) / "model.onnx", ["sample", "timestep", "encoder_hidden_states"], ["out_sample"],
        {{"sample": {{0: "batch", 2: "height", 3: "width"}}, "timestep": {{0: "batch"}}, "encoder_hidden_states": {{0: "batch", 1: "sequence"}},
         "out_sample": {{0: "batch", 2: "height", 3: "width"}}}})
"""


def run(code: str, env: dict | None = None) -> dict:
    import os

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **(env or {})})
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    result = json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else {}
    notes = [line for line in done.stderr.splitlines() if "per generation" in line or "warning" in line]
    return {**result, "notes": notes} if notes else result


def step(label: str, command: list[str]) -> None:
    start = time.time()
    print(f"[prepare] {label} ...", flush=True)
    subprocess.run(command, check=True)
    print(f"[prepare] {label}: {time.time() - start:.0f}s", flush=True)


def prepare(root: Path) -> None:
    edgeinv = [sys.executable, "-m", "edgeinv.cli"]
    if not (root / "diffusers" / "model_index.json").is_file():
        step("save the SD 1.5-shaped pipeline", [sys.executable, "-c", PREPARE.format(tokenizer=str(TOKENIZER), out=str(root / "diffusers"))])
    if not (root / "fp32" / "edgeinv.json").is_file():
        step("edgeinv export diffusers/ (fused attention, fp32)", edgeinv + ["export", str(root / "diffusers"), "--out", str(root / "fp32")])
    if not (root / "unet-matmul-softmax" / "model.onnx").is_file():
        step("UNet without fused attention (today's export)",
             [sys.executable, "-c", UNFUSED_UNET.format(source=str(root / "diffusers" / "unet"), out=str(root / "unet-matmul-softmax"))])
    for scheme in ("int8", "int4"):
        if not (root / scheme / "edgeinv.json").is_file():
            step(f"edgeinv export fp32/ --quantize {scheme} (torch-free)", edgeinv + ["export", str(root / "fp32"), "--out", str(root / scheme), "--quantize", scheme])


def cosine(a, b) -> float:
    import numpy as np

    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=Path("/work/sd15"))
    parser.add_argument("--prepare", action="store_true", help="write the folders first (see above)")
    parser.add_argument("--skip-invert", action="store_true")
    parser.add_argument("--only", nargs="*", help="run only these variant keys")
    parser.add_argument("--repeats", type=int, default=3, help="timed 32x32 calls per UNet variant (best of)")
    parser.add_argument("--skip-noflash", action="store_true", help="skip the fused fp32 graph with ORT_DISABLE_FLASH_ATTENTION=1")
    args = parser.parse_args()
    if args.prepare:
        prepare(args.dir)
    import numpy as np

    root = args.dir
    work = Path(tempfile.mkdtemp(prefix="lean-unet-"))
    variants = [
        ("torch-eager", "PyTorch eager UNet forward, fp32 (the reference)", TORCH_UNET, root / "diffusers" / "unet"),
        ("ort-int8", "ONNX Runtime, fused attention + int8 weights", ORT_UNET, root / "int8" / "unet" / "model.onnx"),
        ("ort-fused", "ONNX Runtime, fused attention, fp32", ORT_UNET, root / "fp32" / "unet" / "model.onnx"),
        ("ort-today", "ONNX Runtime, today's export (MatMul/Softmax attention), fp32", ORT_UNET, root / "unet-matmul-softmax" / "model.onnx"),
        ("ort-int4", "ONNX Runtime, fused attention + int4 MatMul / int8 Conv weights", ORT_UNET, root / "int4" / "unet" / "model.onnx"),
        ("ort-int8-arena", "ONNX Runtime, fused attention + int8 weights, CPU arena on", ORT_UNET, root / "int8" / "unet" / "model.onnx"),
    ]
    invert = None
    if not args.skip_invert and (not args.only or "invert" in args.only):
        from PIL import Image

        images = work / "images"
        images.mkdir()
        rng = np.random.default_rng(0)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (512, 512, 3), dtype=np.uint8)).save(images / f"{i}.png")
        invert = run(INVERT.format(images=str(images), model=str(root / "int8"), out=str(work / "run")))
        print("invert", invert, flush=True)
        for line in invert.get("notes", []):
            print("  edgeinv:", line, flush=True)
    ti = {}
    for key, bf16, checkpointing, label in (("ti-fp32", False, False, "PyTorch TI step, fp32 (today's baseline)"),
                                            ("ti-bf16-ckpt", True, True, "PyTorch TI step, bf16 autocast + gradient checkpointing")):
        if not args.only or "ti" in args.only or key in args.only:
            ti[key] = {"label": label, **run(TORCH_TI_STEP.format(path=str(root / "diffusers"), bf16=bf16, checkpointing=checkpointing))}
            print(key, ti[key], flush=True)
    rows = {}
    for key, label, template, path in variants:
        if args.only and key not in args.only:
            continue
        if not path.exists():
            print(f"skip {key}: {path} missing (run with --prepare)", flush=True)
            continue
        rows[key] = {"label": label, **run(template.format(path=str(path), out=str(work / key), arena=key.endswith("-arena"), repeats=args.repeats))}
        print(key, rows[key], flush=True)
    reference = {size: np.load(work / f"torch-eager_{size}.npy") for size in (32, 64)} if "torch-eager" in rows else {}
    for key, row in rows.items():
        if reference and key != "torch-eager":
            row["cosine"] = min(cosine(np.load(work / f"{key}_{size}.npy"), reference[size]) for size in (32, 64))
            row["max_diff"] = max(float(np.abs(np.load(work / f"{key}_{size}.npy") - reference[size]).max()) for size in (32, 64))
    # The flash path itself: the fused graph with ORT's flash kernel switched off.
    if "ort-fused" in rows and not args.skip_noflash:
        off = run(ORT_UNET.format(path=str(root / "fp32" / "unet" / "model.onnx"), out=str(work / "ort-noflash"), arena=False, repeats=args.repeats), env={"ORT_DISABLE_FLASH_ATTENTION": "1"})
        rows["ort-noflash"] = {"label": "ONNX Runtime, fused attention fp32, ORT_DISABLE_FLASH_ATTENTION=1", **off}
        if reference:
            rows["ort-noflash"]["cosine"] = min(cosine(np.load(work / f"ort-noflash_{size}.npy"), reference[size]) for size in (32, 64))
        print("ort-noflash", rows["ort-noflash"], flush=True)

    print("\n| SD 1.5-shaped, 2 threads | peak RSS (MB) | s / sample 32x32 | s / sample 64x64 | cosine vs PyTorch fp32 | max abs diff |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for key, row in rows.items():
        cos = f"{row['cosine']:.5f}" if "cosine" in row else ("1 (reference)" if key == "torch-eager" else "-")
        diff = f"{row['max_diff']:.1e}" if "max_diff" in row else "-"
        print(f"| {row['label']} | {row['peak_mb']:.0f} | {row['s32']:.2f} | {row['s64']:.2f} | {cos} | {diff} |")
    for key, row in ti.items():
        print(f"| {row['label']} (512 px, batch 1) | {row['peak_mb']:.0f} | - | {row['step_s']:.2f} (step) | - | - |")
    if invert:
        print(f"| edgeinv invert, int8 folder, 2 generations, 512 px pictures (torch imported: {invert['torch']}) | {invert['peak_mb']:.0f} | - | {invert['seconds']:.0f} s (whole run) | - | - |")
    if "torch-eager" in rows:
        print("\nThroughput vs PyTorch eager fp32 (64x64): " + ", ".join(
            f"{k} {rows['torch-eager']['s64'] / r['s64']:.2f}x" for k, r in rows.items() if k != "torch-eager"))
    if invert and ti:
        for key, row in ti.items():
            print(f"edgeinv invert peak / {key} peak: {invert['peak_mb'] / row['peak_mb']:.2f}x")


if __name__ == "__main__":
    main()
