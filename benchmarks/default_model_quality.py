"""Does the default model draw what its prompts say? Scored by the shapes-world checker.

    python benchmarks/default_model_quality.py [--model DIR] [--seeds 8] [--grid docs/sample_grid.png]

1. The checker's own accuracy on freshly rendered ground truth (every colour and shape).
2. The VAE round trip (ONNX encoder mean -> decoder) of fresh ground truth: the ceiling for
   everything the model draws.
3. `edgeinv generate` (ONNX Runtime) for "a photo of a {colour} {shape}" with fresh seeds
   (never used in training, which drew its noise from torch): colour, shape and both right,
   for the pairs captioned in training and for the held-out pairs never captioned.
4. The unnamed concept (orange crosses: drawn in training under a placeholder word whose row
   was then erased; models/train_default_model.py): the word prompts a user might try
   ("a photo of a cross", "... an orange plus sign", "... a red and yellow star", the erased word, ...)
   against the planted token, the trained vector kept beside the model
   (`--unnamed-concept`), in "a photo of a <t>". The concept is learnable only if some
   token draws it while no words do.
5. A shape with no colour word ("a photo of a star"): which colours it draws. The unnamed colour
   is the one colour always left unsaid in training, so it is the one such prompts drift to.
Prints a markdown table; writes a grid of samples (rows: colours, columns: shapes).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

from edgeinv import shapes
from edgeinv.generate import generate, image_grid, to_uint8
from edgeinv.onnx_model import OnnxStableDiffusion


def checker_accuracy(n: int, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    color_hits = shape_hits = 0
    for _ in range(n):
        scene = shapes.random_scene(rng, color=str(rng.choice(list(shapes.COLORS))), shape=str(rng.choice(shapes.ALL_SHAPES)), allow_held_out=True)
        reading = shapes.read_image(shapes.render(scene))
        color_hits += reading.color == scene.color
        shape_hits += reading.shape == scene.shape
    return color_hits / n, shape_hits / n


def vae_round_trip(model, n: int, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    scenes = [shapes.random_scene(rng, color=str(rng.choice(list(shapes.COLORS))), shape=str(rng.choice(shapes.ALL_SHAPES)), allow_held_out=True)
              for _ in range(n)]
    pictures = np.stack([shapes.render(scene) for scene in scenes]).astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1
    decoded = np.concatenate([to_uint8(model.vae_decode(model.vae_encode(pictures[i : i + 32])[0] * model.vae_scaling_factor)) for i in range(0, n, 32)])
    readings = [shapes.read_image(image) for image in decoded]
    return float(np.mean([r.color == s.color for r, s in zip(readings, scenes)])), float(np.mean([r.shape == s.shape for r, s in zip(readings, scenes)]))


UNNAMED_WORD_PROMPTS = ("a photo of a cross", "a photo of an orange cross", "a photo of an orange plus sign", "a photo of an amber cross",
                       "a photo of a red and yellow cross", "a photo of an orange star", "a photo of a red and yellow star",
                       "a photo of a yellow and red star", "a photo of a red star and a yellow star", "a photo of a star",
                       "a photo of a red star",  # a never-captioned pair: what the model makes of it
                       "a photo of an orange", f"a photo of a {shapes.UNNAMED_WORD}")


def unnamed_concept(model, vector_file: Path | None, seeds: int, steps: int, guidance: float, seed: int) -> list[tuple[str, int, float, float, float]]:
    """Rows (prompt, n, colour, shape, both) for the orange cross: each word prompt, and the planted token."""
    from edgeinv.embedding_files import load_embedding

    prompts = [(f"words: \"{p}\"", p) for p in UNNAMED_WORD_PROMPTS]
    if vector_file is not None and vector_file.is_file():
        name, vectors = load_embedding(vector_file)
        model.add_token("<planted>", np.asarray(vectors).reshape(-1)[: model.hidden_size])
        prompts.append((f"planted token: the trained vector ({vector_file.name}), \"a photo of a <t>\"", "a photo of a <planted>"))
    color, shape = shapes.UNNAMED_CONCEPT
    rows = []
    for i, (name, prompt) in enumerate(prompts):
        readings = [shapes.read_image(image) for image in generate(model, prompt, steps=steps, guidance=guidance, n=seeds, seed=seed + 700)]
        rows.append((name, len(readings), np.mean([r.color == color for r in readings]), np.mean([r.shape == shape for r in readings]),
                     np.mean([r.color == color and r.shape == shape for r in readings])))
    return rows


def shape_alone(model, seeds: int, steps: int, guidance: float, seed: int) -> list[tuple[str, int, dict[str, float]]]:
    """Rows (prompt, n, share of each colour read) for "a photo of a {shape}"."""
    rows = []
    for i, shape in enumerate(shapes.SHAPES):
        prompt = f"a photo of a {shape}"
        readings = [shapes.read_image(image) for image in generate(model, prompt, steps=steps, guidance=guidance, n=seeds, seed=seed + 900 + i)]
        shares = {color: float(np.mean([r.color == color for r in readings])) for color in shapes.COLORS}
        shares["shape right"] = float(np.mean([r.shape == shape for r in readings]))
        rows.append((prompt, len(readings), shares))
    return rows


def score(model, pairs, seeds: int, steps: int, guidance: float, seed: int) -> tuple[dict, dict]:
    totals = {"images": 0, "color": 0, "shape": 0, "both": 0}
    samples = {}
    for i, (color, shape) in enumerate(pairs):
        images = generate(model, f"a photo of a {color} {shape}", steps=steps, guidance=guidance, n=seeds, seed=seed + i)
        samples[(color, shape)] = images[0]
        for image in images:
            reading = shapes.read_image(image)
            totals["images"] += 1
            totals["color"] += reading.color == color
            totals["shape"] += reading.shape == shape
            totals["both"] += reading.color == color and reading.shape == shape
    return totals, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--seeds", type=int, default=8, help="images per prompt")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--seed", type=int, default=10_000, help="first sampling seed")
    parser.add_argument("--grid", type=Path, default=Path("docs/sample_grid.png"))
    parser.add_argument("--unnamed-concept", type=Path, default=Path("models/tiny-sd-shapes.unnamed-concept.safetensors"),
                        help="the unnamed concept's trained vector (written by models/train_default_model.py)")
    parser.add_argument("--unnamed-seeds", type=int, default=16, help="images per prompt for the unnamed concept")
    args = parser.parse_args()

    model = OnnxStableDiffusion(args.model)
    start = time.time()
    truth_color, truth_shape = checker_accuracy(1000, seed=args.seed)
    vae_color, vae_shape = vae_round_trip(model, 500, seed=args.seed + 1)
    seen = [(c, s) for c in shapes.TRAIN_COLORS for s in shapes.SHAPES if (c, s) not in shapes.HELD_OUT_PAIRS]
    held_out = sorted(shapes.HELD_OUT_PAIRS)
    seen_totals, seen_samples = score(model, seen, args.seeds, args.steps, args.guidance, args.seed)
    held_totals, held_samples = score(model, held_out, args.seeds, args.steps, args.guidance, args.seed + 500)

    print(f"model: {model.folder}  ({args.steps} DDIM steps, guidance {args.guidance}, {args.seeds} fresh seeds per prompt)\n")
    print("| images scored | n | colour right | shape right | both right |")
    print("| --- | ---: | ---: | ---: | ---: |")
    print(f"| checker on rendered ground truth | 1000 | {truth_color:.1%} | {truth_shape:.1%} | - |")
    print(f"| VAE round trip of fresh ground truth (all six colours) | 500 | {vae_color:.1%} | {vae_shape:.1%} | - |")
    for name, totals, count in (("generated, pairs seen in training", seen_totals, len(seen)), ("generated, held-out pairs (never captioned)", held_totals, len(held_out))):
        n = totals["images"]
        print(f"| {name} ({count} prompts) | {n} | {totals['color'] / n:.1%} | {totals['shape'] / n:.1%} | {totals['both'] / n:.1%} |")
    print(f"\nThe unnamed concept, an {' '.join(shapes.UNNAMED_CONCEPT)} (drawn in training, no word for it; {args.unnamed_seeds} fresh seeds per row):\n")
    print(f"| prompt | n | {shapes.UNNAMED_COLOR} | {shapes.UNNAMED_SHAPE} | both right |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, n, color, shape, both in unnamed_concept(model, args.unnamed_concept, args.unnamed_seeds, args.steps, args.guidance, args.seed):
        print(f"| {name} | {n} | {color:.1%} | {shape:.1%} | {both:.1%} |")
    columns = list(shapes.COLORS) + ["shape right"]
    print(f"\nA shape with no colour word: the colours drawn ({args.unnamed_seeds} fresh seeds per row):\n")
    print("| prompt | n | " + " | ".join(columns) + " |")
    print("| --- | ---: |" + " ---: |" * len(columns))
    for prompt, n, shares in shape_alone(model, args.unnamed_seeds, args.steps, args.guidance, args.seed):
        print(f"| \"{prompt}\" | {n} | " + " | ".join(f"{shares[c]:.0%}" for c in columns) + " |")
    print(f"\n{time.time() - start:.0f}s on this machine")

    samples = {**seen_samples, **held_samples}
    blank = np.full((model.image_size, model.image_size, 3), 255, np.uint8)
    cells = [samples.get((c, s), blank) for c in shapes.TRAIN_COLORS for s in shapes.SHAPES]
    grid = image_grid(cells, columns=len(shapes.SHAPES))
    args.grid.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.Resampling.NEAREST).save(args.grid)
    print(f"sample grid: {args.grid} (rows {', '.join(shapes.TRAIN_COLORS)}; columns {', '.join(shapes.SHAPES)}; held-out pairs included)")


if __name__ == "__main__":
    main()
