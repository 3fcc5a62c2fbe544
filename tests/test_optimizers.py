"""The ask/tell optimisers: zo-sgd's gradient estimator, its Adam steps, the history subspace,
and determinism (replay and pickle) on functions with known answers."""

import pickle

import numpy as np
import pytest

from edgeinv.optimizers import OPTIMIZERS, ZoSgd, history_subspace


def quadratic(d: int, seed: int = 0):
    """f(x) = 0.5 (x - c)^T A (x - c), ill-conditioned; returns (f, gradient, c)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    a = q @ np.diag(np.logspace(0, 1.5, d)) @ q.T
    c = rng.standard_normal(d)

    def f(points):
        diff = np.atleast_2d(points) - c
        return 0.5 * np.einsum("ij,jk,ik->i", diff, a, diff)

    return f, (lambda x: a @ (x - c)), c


def cosine(a, b) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_estimator_points_along_the_true_gradient_on_average():
    d, n = 16, 2
    f, gradient, _ = quadratic(d)
    x = np.random.default_rng(1).standard_normal(d)
    true = gradient(x)
    estimates = []
    for seed in range(3000):
        optimizer = ZoSgd(x, probes=n, mu=1e-5, lr=0.1, seed=seed)
        points = optimizer.ask()
        estimates.append(optimizer.gradient(points, f(points)))
    estimates = np.array(estimates)
    single = np.mean([cosine(e, true) for e in estimates])
    assert 0.1 < single < 0.6  # one draw of 2 probes in 16 dimensions is a poor estimate ...
    assert cosine(estimates.mean(axis=0), true) > 0.97  # ... whose expectation is the gradient direction
    # ZOODiP's normalisation: E[estimate] = gradient / sqrt((d + n - 1) / n)
    assert np.linalg.norm(estimates.mean(axis=0)) == pytest.approx(np.linalg.norm(true) / np.sqrt((d + n - 1) / n), rel=0.1)


def test_adam_steps_decrease_a_quadratic():
    d = 8
    f, _, c = quadratic(d, seed=2)
    optimizer = ZoSgd(np.zeros(d), probes=2, mu=1e-3, lr=0.05, seed=0, tau=50)
    start = float(f(optimizer.mean)[0])
    for _ in range(600):
        points = optimizer.ask()
        optimizer.tell(points, f(points))
    assert optimizer.projection is not None  # the history subspace was in use for the later steps
    assert float(f(optimizer.mean)[0]) < 0.05 * start
    assert np.linalg.norm(optimizer.mean - c) < 0.3 * np.linalg.norm(c)


def test_ask_is_one_population_around_the_current_point():
    optimizer = ZoSgd(np.arange(5.0), probes=3, mu=0.2, lr=0.1, seed=4)
    points = optimizer.ask()
    assert points.shape == (4, 5) and optimizer.popsize == 4
    np.testing.assert_array_equal(points[0], optimizer.mean)  # the unperturbed point is scored with its probes
    np.testing.assert_array_equal(optimizer.ask(), points)  # asking again changes nothing
    assert np.all(np.linalg.norm(points[1:] - points[0], axis=1) > 0)
    optimizer.tell(points, np.array([1.0, 0.9, 1.1, 1.0]))
    after = optimizer.ask()
    assert not np.array_equal(after[0], points[0])  # the point moved
    assert not np.allclose((after[1:] - after[0]), (points[1:] - points[0]))  # fresh probe directions each step


def test_history_subspace_keeps_the_directions_moved_in_and_removes_the_rest():
    rng = np.random.default_rng(0)
    d = 16
    plane, _ = np.linalg.qr(rng.standard_normal((d, 2)))
    t = np.linspace(0, 1, 128)
    path = np.outer(np.sin(3 * t), plane[:, 0]) * 2 + np.outer(t**2, plane[:, 1])  # moves in a plane
    points = path + 1e-5 * rng.standard_normal(path.shape)  # and jitters a little in every direction
    projection = history_subspace(points, nu=1e-3)
    assert projection.shape[1] < 4  # most of the 16 directions removed
    np.testing.assert_allclose(projection.T @ projection, np.eye(projection.shape[1]), atol=1e-10)
    inside = plane @ np.array([0.6, -0.8])
    outside = rng.standard_normal(d)
    outside -= plane @ (plane.T @ outside)
    assert np.linalg.norm(projection @ (projection.T @ inside)) > 0.99 * np.linalg.norm(inside)
    assert np.linalg.norm(projection @ (projection.T @ outside)) < 0.05 * np.linalg.norm(outside)


def test_the_projection_applies_to_later_gradient_estimates():
    d, tau = 10, 20
    optimizer = ZoSgd(np.zeros(d), probes=2, mu=1e-3, lr=0.05, seed=7, tau=tau)
    f, _, _ = quadratic(d, seed=3)
    for _ in range(tau):
        assert optimizer.projection is None
        points = optimizer.ask()
        optimizer.tell(points, f(points))
    projection = optimizer.projection
    assert projection is not None and 0 < projection.shape[1] <= d
    points = optimizer.ask()
    m_before = optimizer.m.copy()
    optimizer.tell(points, f(points))
    g = (optimizer.m - 0.9 * m_before) / 0.1  # the gradient this step fed to Adam
    np.testing.assert_allclose(projection @ (projection.T @ g), g, atol=1e-12)


def run(optimizer, f, steps):
    record = []
    for _ in range(steps):
        points = optimizer.ask()
        losses = f(points)
        optimizer.tell(points, losses)
        record.append(losses)
    return record


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_same_seed_same_run_and_pickle_resumes_exactly(name):
    f, _, _ = quadratic(6, seed=5)
    make = {"cma-es": lambda: OPTIMIZERS[name](np.zeros(6), 0.5, 6, 11), "zo-sgd": lambda: ZoSgd(np.zeros(6), 2, 0.05, 0.05, 11, tau=7)}[name]
    straight = make()
    run(straight, f, 30)
    interrupted = make()
    run(interrupted, f, 12)
    resumed = pickle.loads(pickle.dumps(interrupted))
    run(resumed, f, 18)
    np.testing.assert_array_equal(resumed.mean, straight.mean)
    other = OPTIMIZERS[name](np.zeros(6), 0.5, 6, 12) if name == "cma-es" else ZoSgd(np.zeros(6), 2, 0.05, 0.05, 12, tau=7)
    run(other, f, 30)
    assert not np.array_equal(other.mean, straight.mean)


def test_zo_sgd_is_rebuilt_by_replaying_its_tells():
    """A checkpoint may keep only the seed and the losses: replaying ask/tell gives the same state."""
    f, _, _ = quadratic(6, seed=6)
    original = ZoSgd(np.zeros(6), 3, 0.05, 0.05, seed=2, tau=9)
    losses = run(original, f, 25)
    replayed = ZoSgd(np.zeros(6), 3, 0.05, 0.05, seed=2, tau=9)
    for recorded in losses:
        replayed.tell(replayed.ask(), recorded)
    np.testing.assert_array_equal(replayed.mean, original.mean)
    np.testing.assert_array_equal(replayed.projection, original.projection)
    np.testing.assert_array_equal(replayed.ask(), original.ask())
