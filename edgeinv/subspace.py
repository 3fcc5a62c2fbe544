"""Where the search moves: a d-dimensional subspace of the token-embedding space.

A candidate z in R^d becomes the token vector  e = e0 + z @ basis  (basis [d, hidden]).

- `pca_basis`: the table's top-d principal directions, each scaled by its standard
  deviation over the vocabulary. With that scaling, CMA-ES's sigma0 = 1 means "one typical
  vocabulary spread along every direction", the same on any model, and the search favours
  the directions in which real words differ (GF-TI's choice of subspace; its unscaled unit
  directions make sigma0 model-dependent).
- `random_basis`: Black-Box Tuning's alternative, A ~ N(0, (alpha * sigma_vocab /
  (sqrt(d) * sigma0))^2), so a standard-normal z moves e by about alpha vocabulary spreads.
- `full_basis` (`--subspace none`): no subspace, the whole embedding; the identity with each
  coordinate scaled by its standard deviation over the vocabulary (d = hidden size), so
  step sizes keep the same meaning as with the PCA basis.
"""

from __future__ import annotations

import numpy as np


def pca_basis(table: np.ndarray, dim: int, sample_rows: int = 20000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(basis [dim, hidden] scaled by each direction's std, explained-variance fractions [dim])."""
    if len(table) > sample_rows:  # a random sample of rows gives the same directions, faster
        table = table[np.random.default_rng(seed).choice(len(table), sample_rows, replace=False)]
    # Sampled before the float64 copy: at SD 1.5's size the whole table in float64 cost
    # ~0.3 GB more (invert also computes this before the UNet loads, edgeinv/invert.py).
    centred = np.asarray(table, dtype=np.float64)
    centred -= centred.mean(axis=0)
    _, singular_values, directions = np.linalg.svd(centred, full_matrices=False)
    dim = min(dim, directions.shape[0])
    std = singular_values[:dim] / np.sqrt(len(centred))
    explained = singular_values[:dim] ** 2 / (singular_values**2).sum()
    return (directions[:dim] * std[:, None]).astype(np.float32), explained.astype(np.float32)


def random_basis(table: np.ndarray, dim: int, seed: int, alpha: float = 1.0, sigma0: float = 1.0) -> np.ndarray:
    sigma_vocab = float(np.asarray(table, dtype=np.float64).std())
    scale = alpha * sigma_vocab / (np.sqrt(dim) * sigma0)
    return (np.random.default_rng(seed).standard_normal((dim, table.shape[1])) * scale).astype(np.float32)


def full_basis(table: np.ndarray) -> np.ndarray:
    return np.diag(np.asarray(table, dtype=np.float64).std(axis=0)).astype(np.float32)


def make_basis(kind: str, table: np.ndarray, dim: int, seed: int) -> np.ndarray:
    if kind == "pca":
        return pca_basis(table, dim, seed=seed)[0]
    if kind == "random":
        return random_basis(table, dim, seed)
    if kind == "none":
        return full_basis(table)
    raise ValueError(f"unknown subspace {kind!r} (pca, random, none)")
