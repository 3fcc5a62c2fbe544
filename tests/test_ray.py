"""Scale-out on Ray (local cluster, 2 CPUs): same embedding as one process, and an actor
killed with SIGKILL mid-run is replaced without changing the result."""

import os
import signal
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edgeinv.config import InvertConfig

from edgeinv.invert import invert
from tests.conftest import write_pictures

ray = pytest.importorskip("ray")

FAST = dict(budget=5, dim=4, popsize=6, samples=2, heldout=4, init=["red"], dvar_window=10_000, threads=1)


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", object_store_memory=100 * 2**20)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def concept(tmp_path_factory) -> Path:
    return write_pictures(tmp_path_factory.mktemp("concept"), "blue", "star", 3, np.random.default_rng(5))


@pytest.mark.parametrize("optimizer, loss", [("cma-es", "mse"), ("zo-sgd", "mse"), ("cma-es", "log-mse")])
def test_ray_pool_gives_the_single_process_embedding(cluster, concept, tmp_path, optimizer, loss):
    # DVAR's single mean per generation takes the sample-split path, which combines the
    # per-sample losses in the driver: with log-mse that must be the same reduction.
    config = InvertConfig(images=str(concept), optimizer=optimizer, loss=loss, **FAST)
    alone = invert(config, tmp_path / "alone", warn=lambda m: None)
    spread = invert(replace(config, ray="local", workers=2), tmp_path / "ray", warn=lambda m: None)
    assert np.abs(spread.vector - alone.vector).max() <= 1e-6
    assert [g.mean_loss for g in spread.history] == [g.mean_loss for g in alone.history]
    assert [g.deterministic_loss for g in spread.history] == [g.deterministic_loss for g in alone.history]
    assert spread.history[-1].unet_evaluations == alone.history[-1].unet_evaluations


def test_a_killed_actor_is_replaced_and_the_run_is_unchanged(cluster, concept, tmp_path):
    from edgeinv import ray_pool

    config = InvertConfig(images=str(concept), **FAST)
    alone = invert(config, tmp_path / "alone", warn=lambda m: None)

    pools = []
    original_init = ray_pool.RayPool.__init__

    def remember(self, *args, **kwargs):  # keep a handle on the pool to find its actors' processes
        original_init(self, *args, **kwargs)
        pools.append(self)

    killed = {}

    def kill_during_next_generation(record, _):
        if record.generation == 1:
            killed["before"] = pools[0].pids()
            # SIGKILL while generation 2's slices are being scored (or just before they arrive)
            threading.Timer(0.05, os.kill, (killed["before"][0], signal.SIGKILL)).start()
        if record.generation == 3:
            killed["after"] = pools[0].pids()

    ray_pool.RayPool.__init__ = remember
    try:
        spread = invert(replace(config, ray="local", workers=2), tmp_path / "ray", warn=lambda m: None, progress=kill_during_next_generation)
    finally:
        ray_pool.RayPool.__init__ = original_init
    assert np.abs(spread.vector - alone.vector).max() <= 1e-6
    assert len(spread.history) == len(alone.history)
    assert killed["after"][0] != killed["before"][0]  # a new process took the killed actor's place
    assert killed["after"][1] == killed["before"][1]


def test_ray_options_refused_in_one_line(concept, tmp_path):
    """--workers without --ray, and --ray with a gradient method: one line, exit 2, before any work."""
    for extra, phrase in ((["--workers", "2"], "add --ray"), (["--ray", "local", "--method", "ti"], "leave --ray out")):
        result = subprocess.run([sys.executable, "-m", "edgeinv.cli", "invert", str(concept), "--out", str(tmp_path / "x"), *extra],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr
        assert phrase in result.stderr and len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_ray_missing_is_one_line(concept, tmp_path):
    code = ("import sys; sys.modules['ray'] = None; from edgeinv.cli import main; "
            f"main(['invert', {str(concept)!r}, '--ray', 'local', '--out', {str(tmp_path / 'x')!r}])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "pip install 'edgeinv[ray]'" in result.stderr and len(result.stderr.strip().splitlines()) == 1
