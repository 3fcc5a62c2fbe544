"""What a finished run leaves in its folder besides the embedding files.

`config.json` (settings, result, timings), `loss.png` (deterministic loss per generation,
the stopping point marked; drawn with Pillow so the base install needs no matplotlib) and
`samples.png` (the learned token in a few prompts, drawn by `generate`).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from edgeinv import manifest
from edgeinv.files import atomic_path
from edgeinv.generate import decode, denoise, image_grid
from edgeinv.manifest import write_json_atomic

SAMPLE_PROMPTS = {
    "object": ("a photo of a {}", "a close-up photo of a {}", "a picture of a {} on the left", "a drawing of a small {}"),
    "style": ("a painting in the style of {}", "a picture in the style of {}", "a circle in the style of {}", "a house in the style of {}"),
}


def write_config(out_dir: Path, config, result, extra: dict | None = None) -> None:
    write_json_atomic(out_dir / "config.json", {
        "settings": asdict(config),
        "result": {
            "stopped_by": result.stopped_by, "stop_generation": result.stop_generation, "chosen": result.chosen,
            "heldout_loss": result.heldout_loss, "init_heldout_loss": result.init_loss,
            "unet_evaluations": result.history[-1].unet_evaluations if result.history else 0,
            "init_seconds": round(result.init_seconds, 2), "total_seconds": round(result.total_seconds, 2),
        },
        **(extra or {}),
    })


def plot_loss(path: Path, values: list[float], stop: int | None, title: str, size=(640, 360), x_label: str = "generation") -> None:
    """A line plot of `values` with a vertical marker at index `stop`."""
    width, height = size
    left, right, top, bottom = 64, 16, 28, 36
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.text((left, 8), title, fill="black")
    if len(values) >= 1:
        y = np.asarray(values, dtype=np.float64)
        low, high = float(y.min()), float(y.max())
        span = high - low or 1.0
        xs = left + np.arange(len(y)) * (width - left - right) / max(1, len(y) - 1)
        ys = top + (high - y) / span * (height - top - bottom)
        draw.rectangle([left, top, width - right, height - bottom], outline="#888888")
        for fraction in (0.0, 0.5, 1.0):
            level = high - fraction * span
            draw.text((4, top + fraction * (height - top - bottom) - 6), f"{level:.4f}", fill="#444444")
        draw.text((left, height - bottom + 6), "0", fill="#444444")
        draw.text((width - right - 40, height - bottom + 6), f"{len(y) - 1}", fill="#444444")
        draw.text(((width - 80) // 2, height - 16), x_label, fill="#444444")
        draw.line(list(zip(xs.tolist(), ys.tolist())), fill="#1f77b4", width=2)
        if stop is not None and 0 <= stop < len(y):
            x = float(xs[stop])
            draw.line([(x, top), (x, height - bottom)], fill="#d62728", width=2)
            draw.text((min(x + 4, width - 90), top + 4), f"stop @ {stop}", fill="#d62728")
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def write_samples(path: Path, model, token: str, property: str, seed: int, steps: int = 25, multi_vector_tokens: dict[str, int] | None = None,
                  max_rows: int | None = None) -> None:
    latents = [denoise(model, template.format(token), steps=steps, n=2, seed=seed + i, multi_vector_tokens=multi_vector_tokens, max_rows=max_rows)
               for i, template in enumerate(SAMPLE_PROMPTS[property])]
    # The run is over: the UNet's memory goes before the decoder's (at SD 1.5's size the two
    # together would set the run's peak), and the pictures are decoded one at a time.
    model.release(manifest.UNET)
    images = list(decode(model, np.concatenate(latents)))
    grid = image_grid(images, columns=4)
    scale = max(1, 256 // images[0].shape[0])
    picture = Image.fromarray(grid)
    if scale > 1:
        picture = picture.resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.Resampling.NEAREST)
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")
