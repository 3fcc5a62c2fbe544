"""Zeroth-order SGD (`--optimizer zo-sgd`) against CMA-ES on planted concepts; its defaults.

    python benchmarks/zo_sgd.py [--concepts 2] [--first 0] [--budget 300] [--settings 2,0.1,0.05 4,0.1,1.0 ...] [--skip-cma] [--dvar]

The planted concepts, start word and R of benchmarks/planted_concepts.py. For each concept:
1. CMA-ES with its defaults (DVAR on): R, generations, UNet sample-evaluations, wall.
2. zo-sgd for each setting "probes,mu,lr" run to `--budget` steps with DVAR off; R of its
   point every `--every` steps (judged outside the timed loop), and where DVAR would have
   stopped it for several windows (UNet sample-evaluations) and thresholds, from the same
   run's deterministic losses (the DVAR run is that run's prefix: same seed, same sets).
3. With `--dvar`: zo-sgd with the shipped defaults, DVAR on, as a user runs it.
"""

from __future__ import annotations

import argparse
import time

from edgeinv.config import InvertConfig

from edgeinv.invert import invert
from edgeinv.stopping import variance_ratio, window_in_steps

from planted_concepts import BLENDS, START_WORD, checker_color, planted_concept

WINDOWS = (2000, 4000, 8000)  # UNet sample-evaluations
THRESHOLDS = (0.15, 0.3)


def dvar_stop(history, window_evaluations: int, threshold: float) -> int | None:
    """The step (0-based) at which DVAR would stop this history, or None."""
    per_step = history[1].unet_evaluations - history[0].unet_evaluations
    window = window_in_steps(window_evaluations, per_step)
    values = [g.deterministic_loss for g in history]
    for step in range(len(values)):
        ratio = variance_ratio(values[: step + 1], window)
        if ratio is not None and ratio < threshold:
            return step
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--concepts", type=int, default=2)
    parser.add_argument("--first", type=int, default=0, help="start at this concept (index into planted_concepts.BLENDS)")
    parser.add_argument("--budget", type=int, default=300, help="zo-sgd steps of the DVAR-off runs")
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--settings", nargs="*", default=["2,0.1,0.05", "2,0.1,0.2"], help="probes,mu,lr")
    parser.add_argument("--skip-cma", action="store_true")
    parser.add_argument("--dvar", action="store_true", help="also run zo-sgd with its defaults, DVAR on")
    parser.add_argument("--workdir", default="/tmp/edgeinv-planted")
    args = parser.parse_args()

    for index, (a, b) in list(enumerate(BLENDS[: args.concepts]))[args.first :]:
        model, planted, start, folder, images, planted_color, recovery = planted_concept(args.model, args.workdir, index, a, b)
        base = dict(images=str(folder), init=[START_WORD], seed=index)
        print(f"\n## {a}+{b} (planted colour {planted_color})\n", flush=True)
        print("| run | R | draws | stopped by | generations / steps | UNet evaluations | wall (s) |")
        print("| --- | ---: | --- | --- | ---: | ---: | ---: |")
        runs = []
        if not args.skip_cma:
            runs.append(("cma-es (defaults)", dict()))
        if args.dvar:
            runs.append(("zo-sgd (defaults)", dict(optimizer="zo-sgd")))
        for name, extra in runs:
            result = invert(InvertConfig(**base, token=f"<{name.split()[0]}-{index}>", **extra), warn=lambda m: None, model=model)
            print(f"| {name} | {recovery(result.vector[0]):.3f} | {checker_color(model, result.vector[0], index)} | {result.stopped_by} | "
                  f"{result.stop_generation} | {result.history[-1].unet_evaluations} | {result.total_seconds:.0f} |", flush=True)

        for setting in args.settings:
            probes, mu, lr = setting.split(",")
            config = InvertConfig(**base, token=f"<zo-{index}-{setting}>", optimizer="zo-sgd", probes=int(probes), mu=float(mu), lr=float(lr),
                                  budget=args.budget, dvar_threshold=-1.0)
            tick = time.time()
            result = invert(config, warn=lambda m: None, model=model)
            wall = time.time() - tick
            history = result.history
            curve = {s: recovery(result.trajectory[s - 1][0]) for s in range(args.every, len(history) + 1, args.every)}
            print(f"\nzo-sgd probes {probes} mu {mu} lr {lr}: {len(history)} steps, {history[-1].unet_evaluations} evaluations, {wall:.0f}s; "
                  f"final choice {result.chosen}: R {recovery(result.vector[0]):.3f}, draws {checker_color(model, result.vector[0], index)}")
            print("  R of the point at step: " + ", ".join(f"{s}: {r:.3f}" for s, r in curve.items()))
            for window in WINDOWS:
                for threshold in THRESHOLDS:
                    stop = dvar_stop(history, window, threshold)
                    text = "no stop" if stop is None else (f"step {stop + 1}, R {recovery(result.trajectory[stop][0]):.3f}, "
                                                           f"{history[stop].unet_evaluations} evaluations, {history[stop].seconds:.0f}s")
                    print(f"  DVAR window {window} evaluations, threshold {threshold}: {text}")
            print(flush=True)


if __name__ == "__main__":
    main()
