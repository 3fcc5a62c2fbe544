"""ONNX Runtime's OpenVINO execution provider vs its CPU provider on one UNet graph.

    python -m venv /tmp/ov && /tmp/ov/bin/pip install onnxruntime-openvino numpy
    /tmp/ov/bin/python benchmarks/openvino_ep.py UNET.onnx [--sizes 32 64] [--cross 768]

onnxruntime-openvino replaces onnxruntime (same `onnxruntime` module), so it lives in its
own environment. Each variant runs in a fresh process (peak = VmHWM): the CPU provider, and
the OpenVINO provider on the CPU at fp32 and with a bf16 inference-precision hint. Seconds
per sample at batch 1 (best of 2 after a warm-up) and the cosine to the CPU provider's output.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

VARIANT = """
import json, time, numpy as np, onnxruntime as ort
def peak_mb():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
options = ort.SessionOptions(); options.intra_op_num_threads = 2; options.log_severity_level = 3
options.enable_cpu_mem_arena = False
provider = {provider!r}
providers = [provider, "CPUExecutionProvider"] if provider != "CPUExecutionProvider" else [provider]
start = time.time()
session = ort.InferenceSession({path!r}, options, providers=providers, provider_options=[{provider_options!r}, {{}}][: len(providers)])
load = time.time() - start
row = {{"load_s": load, "providers": session.get_providers()}}
for size in {sizes!r}:
    rng = np.random.default_rng(size)
    feeds = {{"sample": rng.standard_normal((1, 4, size, size)).astype(np.float32), "timestep": np.array([500.0], np.float32),
             "encoder_hidden_states": rng.standard_normal((1, 77, {cross})).astype(np.float32)}}
    out = session.run(None, feeds)[0]
    times = []
    for _ in range(2):
        t = time.perf_counter(); session.run(None, feeds); times.append(time.perf_counter() - t)
    row[f"s{{size}}"] = min(times)
    np.save({out!r} + f"_{{size}}.npy", out)
row["peak_mb"] = peak_mb()
print(json.dumps(row))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("unet", type=Path)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--cross", type=int, default=768, help="text-state width (768 for SD 1.x, 64 for the default model)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="openvino-ep-"))
    variants = [
        ("cpu", "ONNX Runtime CPU provider, fp32", "CPUExecutionProvider", {}),
        ("ov-fp32", "OpenVINO provider (CPU), fp32", "OpenVINOExecutionProvider", {"device_type": "CPU", "precision": "FP32", "num_of_threads": "2"}),
        ("ov-bf16", "OpenVINO provider (CPU), bf16 precision hint", "OpenVINOExecutionProvider",
         {"device_type": "CPU", "num_of_threads": "2", "load_config": json.dumps({"CPU": {"INFERENCE_PRECISION_HINT": "bf16"}})}),
    ]
    rows = {}
    for key, label, provider, options in variants:
        code = VARIANT.format(provider=provider, provider_options=options, path=str(args.unet), sizes=args.sizes, cross=args.cross, out=str(work / key))
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if done.returncode != 0:
            rows[key] = {"label": label, "error": done.stderr.strip().splitlines()[-1][:200]}
        else:
            rows[key] = {"label": label, **json.loads(done.stdout.strip().splitlines()[-1])}
        print(key, rows[key], flush=True)
    print(f"\n| {args.unet} | providers used | peak RSS (MB) | " + " | ".join(f"s / sample {s}x{s}" for s in args.sizes) + " | cosine vs CPU provider |")
    print("| --- | --- | ---: | " + " | ".join("---:" for _ in args.sizes) + " | ---: |")
    for key, row in rows.items():
        if "error" in row:
            print(f"| {row['label']} | failed: {row['error']} | | " + " | ".join("" for _ in args.sizes) + " | |")
            continue
        cos = []
        for size in args.sizes:
            a, b = np.load(work / f"{key}_{size}.npy").astype(np.float64).ravel(), np.load(work / f"cpu_{size}.npy").astype(np.float64).ravel()
            cos.append(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
        print(f"| {row['label']} | {', '.join(row['providers'])} | {row['peak_mb']:.0f} | " + " | ".join(f"{row[f's{s}']:.3f}" for s in args.sizes) + f" | {min(cos):.5f} |")


if __name__ == "__main__":
    main()
