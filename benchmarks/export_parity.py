"""The default model: export time per graph, ONNX-vs-PyTorch error per graph, and
`edgeinv generate` against diffusers' StableDiffusionPipeline (same scheduler, seed, noise).

    python benchmarks/export_parity.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    import torch
    from diffusers import DDIMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline

    from edgeinv.generate import generate, initial_noise
    from edgeinv.onnx_model import OnnxStableDiffusion
    from edgeinv_export.onnx_export import export_pipeline
    from edgeinv_export.parity import graph_differences

    source = REPO / "models" / "tiny-sd-shapes"
    pipeline = StableDiffusionPipeline.from_pretrained(source, safety_checker=None, requires_safety_checker=False)
    pipeline.set_progress_bar_config(disable=True)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.time()
        seconds = export_pipeline(pipeline, Path(tmp) / "onnx", str(source))
        total = time.time() - start
        differences = graph_differences(pipeline, Path(tmp) / "onnx")
        model = OnnxStableDiffusion(Path(tmp) / "onnx", device="cpu")
        rows = []
        for name, scheduler in (("ddim", DDIMScheduler), ("euler", EulerDiscreteScheduler)):
            pipeline.scheduler = scheduler.from_config(pipeline.scheduler.config)
            noise = initial_noise(model, 8, seed=2024)
            prompt = "a photo of a large green square on the right"
            ours = generate(model, prompt, steps=25, guidance=7.5, scheduler=name, n=8, noise=noise)
            theirs = pipeline(prompt, num_inference_steps=25, guidance_scale=7.5, num_images_per_prompt=8, latents=torch.from_numpy(noise), output_type="np").images
            d = np.abs(ours.astype(int) - (theirs * 255).round().astype(int))
            rows.append((name, int(d.max()), float(d.mean()), float((d > 0).mean())))

    print(f"default model export: {total:.1f}s in all\n")
    print("| graph | export (s) | max abs difference vs PyTorch (fp32) |")
    print("| --- | ---: | ---: |")
    names = {"text_encoder": "text_encoder (input_ids)", "text_encoder_embeds": "text_encoder (inputs_embeds)"}
    for key, value in seconds.items():
        label = names.get(key, key)
        print(f"| {label} | {value:.2f} | {differences[label]:.1e} |")
    print("\n| `edgeinv generate` vs diffusers StableDiffusionPipeline (8 images, 25 steps, guidance 7.5) | max pixel difference (of 255) | mean | pixels that differ |")
    print("| --- | ---: | ---: | ---: |")
    for name, worst, mean, share in rows:
        print(f"| {name} | {worst} | {mean:.4f} | {share:.2%} |")


if __name__ == "__main__":
    main()
