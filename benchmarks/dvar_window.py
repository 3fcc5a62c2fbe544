"""Which DVAR window? What the forward-only token draws had DVAR stopped the search at each window.

    python benchmarks/dvar_window.py examples/orange-cross --never-captioned --invert-seeds 0 1 \
        --windows 4000 8000 12000 [--threshold 0.15] [-- INVERT OPTIONS]

Each concept and inversion seed is inverted once (`--reuse`: once ever, into `--runs`), to the budget with DVAR off (`edgeinv invert
... --dvar-threshold 0`, in a fresh process). The run's checkpoint records every generation's
losses, so the optimiser's mean at every generation is rebuilt by replaying them
(`edgeinv.invert.replay`). For each window the benchmark then does what `invert` would have done
with it: finds the generation where var(last window) / var(history) of the deterministic loss
first falls below the threshold, makes invert's final choice among that run's contenders (the
eight lowest deterministic losses so far and the last, by the held-out loss, on the run's own
held-out set), and scores what the chosen token draws: "a photo of a <token>" with 16 fresh
seeds, by the shapes checker (both = colour and shape right). The budget's row is the same
choice with no DVAR stop. One inversion per run, so the windows are compared on identical
trajectories; the stop generation converts to wall time at the run's measured seconds per
generation.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from edgeinv import shapes
from edgeinv.data import load_images
from edgeinv.embedding_files import load_embedding, token_names
from edgeinv.generate import add_embedding, generate
from edgeinv.invert import CHECKPOINT, InvertConfig, contender_generations, replay
from edgeinv.objective import HELDOUT_SET, LatentCache, Objective, seeded_evaluation_set, timestep_range
from edgeinv.onnx_model import OnnxStableDiffusion
from edgeinv.optimizers import OPTIMIZERS
from edgeinv.stopping import Dvar, window_in_steps
from edgeinv.subspace import make_basis

sys.path.insert(0, str(Path(__file__).parent))
from token_vs_words import FRESH_SEED, both_right, render_pictures, run_invert  # noqa: E402


def dvar_stop(deterministic: list[float], window: int, threshold: float) -> int | None:
    """The number of generations run before DVAR (edgeinv/stopping.py) stops (None: it never does)."""
    dvar = Dvar(window, threshold)
    for generation, value in enumerate(deterministic):
        if dvar.update(value):
            return generation + 1
    return None


class BudgetRun:
    """One inversion run to its budget, with everything needed to redo its final choice at any stop."""

    def __init__(self, model: OnnxStableDiffusion, out: Path, token: str):
        saved = json.loads((out / "config.json").read_text())
        settings = {k: tuple(v) if k == "timesteps" else v for k, v in saved["settings"].items() if k in InvertConfig.__dataclass_fields__}
        self.config = InvertConfig(**settings)
        self.state = json.loads((out / CHECKPOINT).read_text())
        self.deterministic = [g["deterministic_loss"] for g in self.state["history"]]
        self.seconds_per_generation = self.state["seconds"] / len(self.deterministic)
        self.init_seconds = saved["result"]["init_seconds"]
        self.basis = make_basis(self.config.subspace, model.token_table, self.config.dim, self.config.seed)
        self.optimizer = OPTIMIZERS[self.config.optimizer].from_config(np.zeros(self.config.vectors * self.basis.shape[0]), self.config)
        self.means = replay(self.optimizer, self.state, out / CHECKPOINT)
        # The start vector e0, from the run's output: chosen = e0 + mean[chosen] @ basis.
        _, final = load_embedding(out / "learned_embeds.safetensors")
        chosen = saved["result"]["chosen"]
        offset = self.means[int(chosen.split("@")[1])].reshape(self.config.vectors, -1) @ self.basis if "@" in chosen else 0.0
        self.e0 = final - offset
        images = load_images(self.config.images, model.image_size)
        names = token_names(token + "-heldout", self.config.vectors)
        ids = [model.tokenizer.token_id(n) or model.tokenizer.add_token(n) for n in names]
        self.objective = Objective(model, ids, token + "-heldout", self.config.property, chunk_size=self.config.chunk_size, loss=self.config.loss)
        cache = LatentCache.encode(model, images.images)
        steps = timestep_range(*self.config.timesteps, int(model.scheduler_config.get("num_train_timesteps", 1000)))
        self.heldout = seeded_evaluation_set(cache, len(self.objective.captions), self.config.heldout, self.config.seed, HELDOUT_SET,
                                             scaling_factor=model.vae_scaling_factor, timesteps=steps, flip=self.config.flip)

    def vectors(self, points: np.ndarray) -> np.ndarray:
        return self.e0[None] + np.asarray(points).reshape(len(points), self.config.vectors, -1) @ self.basis

    def choice(self, stop: int) -> np.ndarray:
        """invert's final choice had the search stopped after `stop` generations."""
        generations = contender_generations(self.deterministic[:stop])
        points = np.stack([self.means[g] for g in generations] + [np.zeros_like(self.means[0])])
        losses = self.objective.losses(self.vectors(points), self.heldout)
        return self.vectors(points[[int(np.argmin(losses))]])[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="*", type=Path)
    parser.add_argument("--never-captioned", action="store_true", help="add rendered pictures of the never-captioned colour/shape pairs")
    parser.add_argument("--invert-seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--windows", type=int, nargs="+", default=[4000, 8000, 12000], help="DVAR windows in UNet sample-evaluations")
    parser.add_argument("--threshold", type=float, default=0.15)
    parser.add_argument("--seeds", type=int, default=16, help="fresh sampling seeds per token")
    parser.add_argument("--runs", type=Path, default=Path("runs/dvar_window"))
    parser.add_argument("--reuse", action="store_true", help="skip the inversion where --runs already holds that concept and seed run to its budget")
    argv = sys.argv[1:]
    options = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)

    folders = list(args.folders)
    if args.never_captioned:
        root = Path(tempfile.mkdtemp(prefix="never-captioned-"))
        folders += [render_pictures(c, s, root / f"{c}-{s}") for c, s in sorted(shapes.HELD_OUT_PAIRS)]
    model = OnnxStableDiffusion(None)
    rows = {w: [] for w in [*args.windows, None]}  # None: the budget
    for folder in folders:
        color, shape = folder.name.split("-")[:2]
        for seed in args.invert_seeds:
            token = f"<{color}-{shape}-s{seed}>"
            out = args.runs / f"{folder.name}-s{seed}"
            finished = out / "config.json"
            if not (args.reuse and finished.is_file() and json.loads(finished.read_text())["result"]["stopped_by"] == "budget"):
                run_invert(folder, token, out, [*options, "--dvar-threshold", "0", "--seed", str(seed)])
            run = BudgetRun(model, out, token)
            per_generation = run.optimizer.popsize * run.config.samples
            for window in rows:
                dvar = dvar_stop(run.deterministic, window_in_steps(window, per_generation), args.threshold) if window else None
                stop = dvar or len(run.deterministic)  # no window, or DVAR never stopped: the budget
                name = f"<{color}-{shape}-s{seed}-{window or 'budget'}>"
                multi: dict[str, int] = {}
                add_embedding(model, name, run.choice(stop), multi)
                images = generate(model, f"a photo of a {name}", n=args.seeds, seed=FRESH_SEED, multi_vector_tokens=multi)
                both = both_right(images, color, shape)[2]
                seconds = run.init_seconds + stop * run.seconds_per_generation
                rows[window].append((folder.name, seed, stop, both, seconds))
                print(f"{folder.name} seed {seed} window {window or 'budget'}: stop {stop}, draws {both:.0%}, ~{seconds:.0f} s", flush=True)

    concepts = list(dict.fromkeys(r[0] for r in rows[None]))
    print(f"\ninvert options: {' '.join(options) or '(defaults)'}; threshold {args.threshold}; inversion seeds "
          f"{' / '.join(map(str, args.invert_seeds))}; {args.seeds} fresh sampling seeds; both right, mean over seeds\n")
    print(f"| DVAR window (evaluations) | {' | '.join(concepts)} | **mean both** | mean stop generation | runs at the budget | search + init (mean) |")
    print("| --- |" + " ---: |" * (len(concepts) + 4))
    for window, results in rows.items():
        per_concept = [np.mean([r[3] for r in results if r[0] == c]) for c in concepts]
        budget = max(r[2] for r in rows[None])
        at_budget = sum(r[2] >= budget for r in results)
        print(f"| {window or 'none (budget)'} | {' | '.join(f'{v:.0%}' for v in per_concept)} | **{np.mean(per_concept):.0%}** | "
              f"{np.mean([r[2] for r in results]):.0f} | {at_budget} of {len(results)} | {np.mean([r[4] for r in results]):.0f} s |")


if __name__ == "__main__":
    main()
