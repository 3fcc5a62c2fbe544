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
trajectories; the wall time at a stop is the run's own (initialisation and search, from its
history). The replay is benchmarks/replay.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from edgeinv.onnx_model import OnnxStableDiffusion
from edgeinv.stopping import window_in_steps

sys.path.insert(0, str(Path(__file__).resolve().parent))
from concepts import concept_folders, run_invert, token_draws  # noqa: E402
from replay import ForwardOnlyRun, dvar_stop  # noqa: E402


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

    folders = concept_folders(args.folders, args.never_captioned)
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
            run = ForwardOnlyRun(model, out, folder)
            per_generation = run.optimizer.popsize * run.config.samples
            for window in rows:
                dvar = dvar_stop(run.deterministic, window_in_steps(window, per_generation), args.threshold) if window else None
                stop = dvar or run.steps  # no window, or DVAR never stopped: the budget
                both = token_draws(model, f"<{color}-{shape}-s{seed}-{window or 'budget'}>", run.choice(stop)[1], color, shape, args.seeds)[1][2]
                seconds = run.seconds_at(stop)
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
