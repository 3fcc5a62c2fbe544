"""Optimisers behind one ask/tell interface, so the inversion loop does not care which.

An optimiser proposes a population of points in the search subspace (`ask`), is told their
losses (`tell`) and exposes its current best guess (`mean`). Its random numbers come from a
generator it owns, seeded by the run's seed, so its state is a function of the seed and the
losses it was told: the checkpoint records only those losses, and a resumed run replays
ask/tell into a freshly seeded optimiser (`edgeinv.invert.replay`) and draws exactly what an
uninterrupted one would. To add one, write a class with these members (plus `from_config`,
which reads its settings from an `InvertConfig`) and register it in OPTIMIZERS.

- `CmaEs`: pycma's CMA-ES.
- `ZoSgd`: zeroth-order SGD with ZOODiP's random-gradient estimator (Seo et al., CVPR 2025):
  each step's population is the current point and n probes around it, scored together on
  one evaluation set; one-sided differences give a gradient estimate, projected onto the
  history subspace (the directions the recent trajectory actually moved in), then an Adam
  step.
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

    @classmethod
    def from_config(cls, start: np.ndarray, config) -> "CmaEs":
        return cls(start, config.sigma0, config.popsize, config.seed)

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


class ZoSgd:
    """Zeroth-order SGD: ZOODiP's random-gradient estimator, Adam, and the history subspace.

    One step, for the current point x in the d-dimensional search space:

        ask:  [x, x + mu u_1, ..., x + mu u_n],  u_i ~ N(0, I)   (one population, scored by the
              caller in one batch on one evaluation set: common random numbers)
        tell: g = sum_i (L_i - L_0) / mu * u_i / (n sqrt((d + n - 1) / n))   (one-sided differences)
              g <- P g          (P: projection onto the history subspace, once there is one)
              Adam (beta1, beta2, eps) step of size lr

    mu and lr are in the basis's units: with the PCA basis (scaled by the vocabulary's spread
    along each direction) mu = 0.1 probes a tenth of a typical word-to-word distance. Adam's
    eps is 1e-8 (ZOODiP: 1e-3, in raw embedding units), so the step does not depend on the
    scale of the estimate.
    History subspace: the last `tau` points; every `tau` steps they are standardised and
    PCA'd, and the components that explain all but `nu` of their variance span P.

    Deterministic: step k's probes come from a generator seeded by (seed, k) and owned by this
    object, so the optimiser's state is a function of its constructor arguments and the
    sequence of tell() calls; replaying them rebuilds it exactly, and it also pickles.
    """

    def __init__(self, start: np.ndarray, probes: int, mu: float, lr: float, seed: int, tau: int = 128, nu: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.x = np.asarray(start, dtype=np.float64).copy()
        self.probes, self.mu, self.lr, self.seed = int(probes), float(mu), float(lr), int(seed)
        self.tau, self.nu, self.betas, self.eps = int(tau), float(nu), tuple(betas), float(eps)
        self.popsize = self.probes + 1
        self.step = 0
        self.m = np.zeros_like(self.x)
        self.v = np.zeros_like(self.x)
        self.recent: list[np.ndarray] = []  # the last tau points (ring buffer)
        self.projection: np.ndarray | None = None  # [d, k] orthonormal basis of the history subspace

    @classmethod
    def from_config(cls, start: np.ndarray, config) -> "ZoSgd":
        return cls(start, config.probes, config.mu, config.lr, config.seed)

    def directions(self) -> np.ndarray:
        """This step's probe directions [n, d]; the same however often it is asked."""
        return np.random.default_rng([self.seed, self.step]).standard_normal((self.probes, len(self.x)))

    def ask(self) -> np.ndarray:
        return np.concatenate([self.x[None], self.x[None] + self.mu * self.directions()])

    def gradient(self, points: np.ndarray, losses: np.ndarray) -> np.ndarray:
        """The estimator: one-sided differences against points[0], ZOODiP's normalisation."""
        points, losses = np.asarray(points, dtype=np.float64), np.asarray(losses, dtype=np.float64)
        n, d = len(points) - 1, points.shape[1]
        u = (points[1:] - points[0]) / self.mu
        return ((losses[1:] - losses[0]) / self.mu) @ u / (n * np.sqrt((d + n - 1) / n))

    def tell(self, points: np.ndarray, losses: np.ndarray) -> None:
        g = self.gradient(points, losses)
        if self.projection is not None:
            g = self.projection @ (self.projection.T @ g)
        beta1, beta2 = self.betas
        self.step += 1
        self.m = beta1 * self.m + (1 - beta1) * g
        self.v = beta2 * self.v + (1 - beta2) * g * g
        m_hat, v_hat = self.m / (1 - beta1**self.step), self.v / (1 - beta2**self.step)
        self.x = self.x - self.lr * m_hat / (np.sqrt(v_hat) + self.eps)
        self.recent = (self.recent + [self.x.copy()])[-self.tau :]
        if self.step % self.tau == 0:
            self.projection = history_subspace(np.stack(self.recent), self.nu)

    @property
    def mean(self) -> np.ndarray:
        return self.x.copy()

    @property
    def sigma(self) -> float:
        return self.mu


def history_subspace(points: np.ndarray, nu: float) -> np.ndarray:
    """Orthonormal basis [d, k] of the directions in which `points` [m, d] varied: standardise
    each coordinate, PCA, keep the leading components up to cumulative explained variance 1 - nu,
    map them back to the unstandardised coordinates."""
    centred = points - points.mean(axis=0)
    scale = centred.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    _, singular, components = np.linalg.svd(centred / scale, full_matrices=False)
    variance = singular**2
    if variance.sum() == 0:
        return np.zeros((points.shape[1], 0))
    keep = int(np.searchsorted(np.cumsum(variance) / variance.sum(), 1.0 - nu)) + 1
    directions = (components[:keep] * scale).T  # back to the original coordinates
    q, _ = np.linalg.qr(directions)
    return q


OPTIMIZERS = {"cma-es": CmaEs, "zo-sgd": ZoSgd}
