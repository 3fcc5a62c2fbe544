"""Optimisers behind one ask/tell interface, so the inversion loop does not care which.

An optimiser proposes a population of points in the search subspace (`ask`), is told their
losses (`tell`), exposes its current best guess (`mean`), and pickles completely: its
random numbers come from a generator it owns, so a resumed run draws exactly what an
uninterrupted one would. To add one, write a class with these four members and register it
in OPTIMIZERS.
"""

from __future__ import annotations

import numpy as np


class SeededNormal:
    """pycma's `randn` option: standard normals from our own picklable generator."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def __call__(self, *shape):
        return self.rng.standard_normal(shape)


class CmaEs:
    """CMA-ES from pycma (ask/tell), the whole population evaluated by the caller in one batch."""

    def __init__(self, start: np.ndarray, sigma0: float, popsize: int | None, seed: int):
        import warnings

        with warnings.catch_warnings():  # pycma warns that matplotlib (its plots, unused here) is missing
            warnings.filterwarnings("ignore", message="Could not import matplotlib")
            import cma

        options = {"seed": np.nan, "randn": SeededNormal(seed), "verbose": -9, "CMA_diagonal": False}
        if popsize:
            options["popsize"] = popsize
        self.es = cma.CMAEvolutionStrategy(np.asarray(start, dtype=np.float64), sigma0, options)
        self.popsize = self.es.popsize

    def ask(self) -> np.ndarray:
        return np.asarray(self.es.ask(), dtype=np.float64)

    def tell(self, points: np.ndarray, losses: np.ndarray) -> None:
        self.es.tell(list(points), [float(v) for v in losses])

    @property
    def mean(self) -> np.ndarray:
        return np.asarray(self.es.mean, dtype=np.float64)

    @property
    def sigma(self) -> float:
        return float(self.es.sigma)


OPTIMIZERS = {"cma-es": CmaEs}
