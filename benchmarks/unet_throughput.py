"""UNet throughput: ONNX Runtime vs PyTorch eager, side by side in one run.

    python benchmarks/unet_throughput.py [--sd15-onnx DIR] [--repeats 3]

Milliseconds per sample for the default model's UNet and an SD 1.5-shaped UNet (random
weights, from the folder `benchmarks/export_sd15_shaped.py --keep` writes), at two latent
sizes, for batch 1 and a population batch, with ONNX Runtime at 1 and
2 intra-op threads and PyTorch at 2 threads. Needs the torch extra.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def best_time(function, repeats: int) -> float:
    function()  # warm-up: session initialisation, allocator
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(name, unet, onnx_path, cross_dim, sizes, batches, repeats):
    import onnxruntime as ort
    import torch

    rows = []
    sessions = {}
    for threads in (1, 2):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sessions[threads] = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    for size in sizes:
        for batch in batches:
            sample = rng.standard_normal((batch, 4, size, size)).astype(np.float32)
            timestep = np.full(batch, 500.0, np.float32)
            context = rng.standard_normal((batch, 77, cross_dim)).astype(np.float32)
            feeds = {"sample": sample, "timestep": timestep, "encoder_hidden_states": context}
            row = {"model": name, "latent": f"{size}x{size}", "batch": batch}
            for threads, session in sessions.items():
                row[f"ort{threads}"] = best_time(lambda: session.run(None, feeds), repeats) / batch * 1000
            with torch.no_grad():
                tensors = [torch.from_numpy(v) for v in (sample, timestep, context)]
                row["torch"] = best_time(lambda: unet(*tensors), repeats) / batch * 1000
            rows.append(row)
            print(row, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sd15-onnx", type=Path, default=Path("/tmp/edgeinv-sd15-shaped-onnx"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--population", type=int, default=96, help="population batch for the default model (12 candidates x 8 samples)")
    args = parser.parse_args()

    import torch
    from diffusers import UNet2DConditionModel

    tiny = UNet2DConditionModel.from_pretrained(REPO / "models" / "tiny-sd-shapes" / "unet").eval()
    rows = measure("default (tiny-sd-shapes)", tiny, REPO / "models" / "tiny-sd-shapes-onnx" / "unet" / "model.onnx", 64, (16, 32), (1, args.population), args.repeats)

    if not (args.sd15_onnx / "unet" / "model.onnx").is_file():
        raise SystemExit(f"{args.sd15_onnx}: run `python benchmarks/export_sd15_shaped.py --keep --out {args.sd15_onnx}` first")
    from edgeinv_export.reference_models import sd15_shaped_pipeline

    pipeline = sd15_shaped_pipeline(REPO / "models" / "tiny-sd-shapes-onnx" / "tokenizer", text_layers=1)
    torch.manual_seed(0)
    rows += measure("SD 1.5-shaped", pipeline.unet, args.sd15_onnx / "unet" / "model.onnx", 768, (32, 64), (1, 4), max(1, args.repeats - 1))

    print("\n| UNet | latents | batch | ONNX Runtime, 1 thread (ms/sample) | ONNX Runtime, 2 threads | PyTorch eager, 2 threads | PyTorch / ORT-2 |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['model']} | {r['latent']} | {r['batch']} | {r['ort1']:.1f} | {r['ort2']:.1f} | {r['torch']:.1f} | {r['torch'] / r['ort2']:.2f}x |")


if __name__ == "__main__":
    main()
