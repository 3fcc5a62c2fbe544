"""Export an SD 1.5-shaped pipeline (random weights) and check it: the >2 GB path.

    python benchmarks/export_sd15_shaped.py [--out /tmp/sd15-onnx] [--keep]

Prints export time and size per graph, whether external data was used, and the largest
difference between ONNX Runtime and PyTorch per graph (UNet at 32x32 latents, batch 2).
Needs the torch extra and about 14 GB of memory.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np


def run(out: Path) -> list[dict]:
    import torch

    from edgeinv import manifest
    from edgeinv.onnx_model import OnnxStableDiffusion
    from edgeinv_export.onnx_export import export_pipeline
    from edgeinv_export.reference_models import sd15_shaped_pipeline

    repo = Path(__file__).resolve().parents[1]
    pipeline = sd15_shaped_pipeline(repo / "models" / "tiny-sd-shapes-onnx" / "tokenizer")
    start = time.time()
    seconds = export_pipeline(pipeline, out, "sd15-shaped (random weights)")
    total = time.time() - start

    model = OnnxStableDiffusion(out, device="cpu")
    rng = np.random.default_rng(0)
    prompts = ["a photo of a cat", ""]
    ids = model.tokenizer(prompts)
    with torch.no_grad():
        states = pipeline.text_encoder(torch.from_numpy(ids)).last_hidden_state.numpy()
        latents = rng.standard_normal((2, 4, 32, 32)).astype(np.float32)
        timesteps = np.array([50.0, 700.0], np.float32)
        unet_ref = pipeline.unet(torch.from_numpy(latents), torch.from_numpy(timesteps), torch.from_numpy(states)).sample.numpy()
        images = rng.uniform(-1, 1, (1, 3, 128, 128)).astype(np.float32)
        mean_ref = pipeline.vae.encode(torch.from_numpy(images)).latent_dist.mean.numpy()
        decoded_ref = pipeline.vae.decode(torch.from_numpy(latents[:1, :, :16, :16])).sample.numpy()
    differences = {
        "text_encoder": np.abs(model.encode_prompts(prompts) - states).max(),
        "unet": np.abs(model.unet(latents, timesteps, states) - unet_ref).max(),
        "vae_encoder": np.abs(model.vae_encode(images)[0] - mean_ref).max(),
        "vae_decoder": np.abs(model.vae_decode(latents[:1, :, :16, :16] * model.vae_scaling_factor) - decoded_ref).max(),
    }
    scales = {"text_encoder": np.abs(states).max(), "unet": np.abs(unet_ref).max(), "vae_encoder": np.abs(mean_ref).max(), "vae_decoder": np.abs(decoded_ref).max()}
    rows = []
    graph_files = {"text_encoder": manifest.TEXT_ENCODER_IDS, "text_encoder_embeds": manifest.TEXT_ENCODER_EMBEDS, "unet": manifest.UNET,
                   "vae_encoder": manifest.VAE_ENCODER, "vae_decoder": manifest.VAE_DECODER}
    for name, relative in graph_files.items():
        folder = (out / relative).parent
        data = folder / "model.onnx_data"
        size = (out / relative).stat().st_size + (data.stat().st_size if relative.endswith("model.onnx") and data.is_file() else 0)
        key = "text_encoder" if name.startswith("text_encoder") else name
        rows.append({
            "graph": name, "export_s": seconds[name], "bytes": size,
            "external_data": (folder / "model.onnx_data").is_file(),
            "max_abs_diff": differences[key] if name != "text_encoder" else np.abs(
                model.session(manifest.TEXT_ENCODER_IDS).run(["last_hidden_state"], {"input_ids": ids})[0] - states).max(),
            "output_scale": scales[key],
        })
    table_mb = (out / manifest.TOKEN_EMBEDDINGS).stat().st_size / 1e6
    print(f"SD 1.5-shaped export (random weights) in {total:.0f}s to {out}; token table stored once: {table_mb:.0f} MB\n")
    print("| graph | export (s) | size (MB) | external data | max abs diff vs PyTorch | output max abs |")
    print("| --- | ---: | ---: | --- | ---: | ---: |")
    for row in rows:
        print(f"| {row['graph']} | {row['export_s']:.1f} | {row['bytes'] / 1e6:.0f} | {'yes' if row['external_data'] else 'no'} | {row['max_abs_diff']:.2e} | {row['output_scale']:.2f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/edgeinv-sd15-shaped-onnx"))
    parser.add_argument("--keep", action="store_true", help="keep the exported folder (for other benchmarks)")
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    try:
        run(args.out)
    finally:
        if not args.keep:
            shutil.rmtree(args.out, ignore_errors=True)


if __name__ == "__main__":
    main()
