"""Choosing the search subspace: PCA at several d, and Black-Box Tuning's random projection.

    python benchmarks/subspace_dim.py [--concepts 4] [--dims 4 8 16 32 64]

On planted concepts (benchmarks/planted_concepts.py), `edgeinv invert` with DVAR on and
the --init start of that benchmark: mean recovery R on 128 held-out samples, generations,
UNet forwards and wall time per setting (population 4 + 3 ln d, pycma's default).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from planted_concepts import BLENDS, START_WORD, Recovery, plant, word  # benchmarks/ is on sys.path when run as a script

from edgeinv.config import InvertConfig

from edgeinv.invert import invert
from edgeinv.onnx_model import OnnxStableDiffusion


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concepts", type=int, default=4)
    parser.add_argument("--dims", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--budget", type=int, default=150, help="generations at most (DVAR usually stops earlier)")
    parser.add_argument("--workdir", default="/tmp/edgeinv-subspace")
    args = parser.parse_args()
    settings = [("pca", d) for d in args.dims] + [("random", 16)]
    results = {s: [] for s in settings}
    for index, (a, b) in enumerate(BLENDS[: args.concepts]):
        model = OnnxStableDiffusion()
        planted = 0.5 * (word(model, a) + word(model, b))
        start = word(model, START_WORD)
        folder = Path(args.workdir) / f"{a}-{b}"
        images = plant(model, planted, folder, seed=index)
        recovery = Recovery(model, images, planted, start, seed=index)
        for kind, dim in settings:
            result = invert(InvertConfig(images=str(folder), init=[START_WORD], seed=index, dim=dim, subspace=kind, budget=args.budget, token=f"<{kind}-{dim}-{index}>"),
                            warn=lambda m: None, model=model)
            results[(kind, dim)].append((recovery(result.vector[0]), result.stop_generation, result.history[-1].unet_evaluations, result.total_seconds))
            print(kind, dim, a, b, results[(kind, dim)][-1], flush=True)
    print("\n| subspace | d | mean R | min R | generations | UNet forwards | wall (s) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for (kind, dim), values in results.items():
        v = np.array(values)
        print(f"| {kind} | {dim} | {v[:, 0].mean():.3f} | {v[:, 0].min():.3f} | {v[:, 1].mean():.0f} | {v[:, 2].mean():.0f} | {v[:, 3].mean():.0f} |")


if __name__ == "__main__":
    main()
