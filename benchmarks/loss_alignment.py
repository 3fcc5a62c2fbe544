"""Does a lower loss mean a token that draws the concept? Which loss says so most often?

    python benchmarks/loss_alignment.py [--model DIR] [--samples 256] [--seeds 16]

For the README's example (orange star) and rendered pictures of every never-captioned
colour/shape pair, a handful of fixed candidate vectors with known behaviour (the words'
mean, the colour word, the shape word, an unrelated word, a wrong colour, a wrong shape, and
for the orange star the planted vector the model was trained with) are
- drawn: "a photo of a <t>" with fresh seeds, scored by the shapes checker (both right);
- scored by each candidate loss on one large evaluation set: the mean of per-sample MSEs
  (the training loss) or the mean of their logs, over all timesteps or only t >= 0.5.
A loss is aligned with the product when the candidate it ranks first is the one that draws the
concept most often. The table gives, per loss, the drawing rate of its first-ranked candidate.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from concepts import FRESH_SEED, both_right, render_pictures  # noqa: E402

from edgeinv import shapes  # noqa: E402
from edgeinv.data import load_images  # noqa: E402
from edgeinv.embedding_files import load_embedding  # noqa: E402
from edgeinv.generate import generate  # noqa: E402
from edgeinv.initialisation import word_vector  # noqa: E402
from edgeinv.objective import LatentCache, Objective, combine_samples, draw_evaluation_set  # noqa: E402
from edgeinv.onnx_model import OnnxStableDiffusion  # noqa: E402

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "orange-cross"
PLANTED = Path(__file__).resolve().parent.parent / "models" / "tiny-sd-shapes.unnamed-concept.safetensors"
LOSSES = {"mse": ("mse", 0), "log-mse": ("log-mse", 0), "mse, t >= 0.5": ("mse", 500), "log-mse, t >= 0.5": ("log-mse", 500)}


def candidates(model: OnnxStableDiffusion, color: str, shape: str) -> dict[str, np.ndarray]:
    named = "red" if color == shapes.UNNAMED_COLOR else color  # orange has no trained word: its nearest
    other_color = next(c for c in ("red", "green", "blue", "yellow", "purple") if c != named)
    other_shape = next(s for s in shapes.SHAPES if s != shape)
    found = {f"{named} {shape} (words' mean)": word_vector(model, [named, shape]), named: word_vector(model, [named]), shape: word_vector(model, [shape]),
             "light (unrelated)": word_vector(model, ["light"]), f"{other_color} {shape}": word_vector(model, [other_color, shape]),
             f"{named} {other_shape}": word_vector(model, [named, other_shape])}
    if color == shapes.UNNAMED_COLOR and PLANTED.is_file():
        found["planted vector"] = load_embedding(PLANTED)[1][0]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--seeds", type=int, default=16)
    args = parser.parse_args()

    model = OnnxStableDiffusion(args.model)
    root = Path(tempfile.mkdtemp(prefix="loss-alignment-"))
    concepts = [(EXAMPLE, shapes.UNNAMED_CONCEPT)] + [(render_pictures(c, s, root / f"{c}-{s}"), (c, s)) for c, s in sorted(shapes.HELD_OUT_PAIRS)]
    first_rates: dict[str, list[float]] = {name: [] for name in LOSSES}
    print(f"model: {model.folder}; {args.samples} evaluation samples (t uniform over the schedule), {args.seeds} fresh seeds per candidate\n")
    print("| concept | candidate | both right | " + " | ".join(LOSSES) + " |")
    print("| --- | --- | ---: | " + " | ".join("---:" for _ in LOSSES) + " |")
    for folder, (color, shape) in concepts:
        token = f"<align-{color}-{shape}>"
        token_id = model.tokenizer.add_token(token)
        objective = Objective(model, [token_id], token, "object")
        cache = LatentCache.encode(model, load_images(str(folder), model.image_size, warn=lambda message: None).images)
        evaluation = draw_evaluation_set(cache, len(objective.captions), args.samples, np.random.default_rng([7, 1]), model.vae_scaling_factor)
        found = candidates(model, color, shape)
        names = list(found)
        rows = objective.row_losses(np.stack(list(found.values()))[:, None], evaluation)  # [k, m]
        drawn = {}
        for name, vector in found.items():
            model.learned[token_id] = vector.astype(np.float32)
            drawn[name] = both_right(generate(model, f"a photo of a {token}", n=args.seeds, seed=FRESH_SEED), color, shape)[2]
        scores = {loss: combine_samples(rows[:, evaluation.timesteps >= low], kind) for loss, (kind, low) in LOSSES.items()}
        ranks = {loss: np.argsort(np.argsort(values)) + 1 for loss, values in scores.items()}
        for i, name in enumerate(names):
            cells = " | ".join(f"{'**' if ranks[loss][i] == 1 else ''}{scores[loss][i]:.4f} ({ranks[loss][i]}){'**' if ranks[loss][i] == 1 else ''}" for loss in LOSSES)
            print(f"| {color}-{shape} | {name} | {drawn[name]:.0%} | {cells} |", flush=True)
        for loss in LOSSES:
            first_rates[loss].append(drawn[names[int(np.argmin(scores[loss]))]])
    print("\n| loss | both right of its first-ranked candidate, per concept | mean |")
    print("| --- | --- | ---: |")
    for loss, rates in first_rates.items():
        print(f"| {loss} | {' / '.join(f'{r:.0%}' for r in rates)} | {np.mean(rates):.0%} |")


if __name__ == "__main__":
    main()
