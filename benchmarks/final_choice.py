"""Does a different final choice make the forward-only token draw the concept more often?

    python benchmarks/final_choice.py RUNS [RUNS ...]

`edgeinv invert` ends by choosing, among the optimiser means with the eight lowest deterministic
losses, the last mean and the start vector, the one with the lowest loss on a held-out set of 32
samples over all timesteps. For every finished forward-only run in the given folders (each a
folder of runs named `<colour>-<shape>-s<seed>`, as benchmarks/token_vs_words.py writes them),
this redoes the choice among the same contenders (benchmarks/replay.py) with other held-out sets:
- `heldout 32` - the run's own (what invert chose; checked against its config.json);
- `heldout 128, t >= 0.5` - four times the samples, high-noise timesteps only, where colour and
  layout are decided;
- `heldout 128` - four times the samples, all timesteps.
Each chosen token draws "a photo of a <token>" with 16 fresh seeds, scored by the shapes checker
(both = colour and shape right). Candidate rules must stay model-agnostic: a user has no checker.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from edgeinv.data import load_images
from edgeinv.history import contender_generations
from edgeinv.objective import HELDOUT_SET, LatentCache, seeded_evaluation_set
from edgeinv.onnx_model import OnnxStableDiffusion

sys.path.insert(0, str(Path(__file__).resolve().parent))
from concepts import token_draws  # noqa: E402
from replay import ForwardOnlyRun  # noqa: E402

RULES = {"heldout 32": None, "heldout 128, t >= 0.5": (128, (500, 1000)), "heldout 128": (128, (0, 1000))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--seeds", type=int, default=16)
    args = parser.parse_args()

    model = OnnxStableDiffusion(None)
    drawn: dict[str, dict[str, list[float]]] = {rule: {} for rule in RULES}
    for folder in args.runs:
        for out in sorted(p for p in folder.iterdir() if (p / "config.json").is_file()):
            concept, seed = out.name.rsplit("-s", 1)
            color, shape = concept.split("-")[:2]
            run = ForwardOnlyRun(model, out)
            cache = LatentCache.encode(model, load_images(run.config.images, model.image_size).images)
            generations = contender_generations(run.deterministic)
            names = [f"@{g}" for g in generations] + ["init"]
            candidates = np.stack([run.vector_at(g) for g in generations] + [run.start_vector()])
            scores: dict[int, float] = {}
            line = []
            for rule, drawn_set in RULES.items():
                heldout = run.heldout if drawn_set is None else seeded_evaluation_set(
                    cache, len(run.objective.captions), drawn_set[0], run.config.seed, HELDOUT_SET,
                    scaling_factor=model.vae_scaling_factor, timesteps=drawn_set[1], flip=run.config.flip)
                best = int(np.argmin(run.objective.losses(candidates, heldout)))
                if drawn_set is None and not run.result["chosen"].endswith(names[best]):
                    raise SystemExit(f"{out}: the replayed choice {names[best]} is not the run's {run.result['chosen']}")
                if best not in scores:
                    scores[best] = token_draws(model, f"<{folder.name}-{out.name}-{best}>", candidates[best], color, shape, args.seeds)[1][2]
                drawn[rule].setdefault(concept, []).append(scores[best])
                line.append(f"{rule}: {names[best]} {scores[best]:.0%}")
            print(f"{folder.name}/{out.name}: {'; '.join(line)}", flush=True)

    concepts = sorted(next(iter(drawn.values())))
    runs = sum(len(v) for v in drawn["heldout 32"].values())
    print(f"\n{runs} runs from {', '.join(str(r) for r in args.runs)}; {args.seeds} fresh sampling seeds; both right, mean over runs\n")
    print(f"| final choice | {' | '.join(concepts)} | **mean over runs** |")
    print("| --- |" + " ---: |" * (len(concepts) + 1))
    for rule, per_concept in drawn.items():
        everything = [v for c in concepts for v in per_concept[c]]
        print(f"| {rule} | {' | '.join(f'{np.mean(per_concept[c]):.0%}' for c in concepts)} | **{np.mean(everything):.1%}** |")


if __name__ == "__main__":
    main()
