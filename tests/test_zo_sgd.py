"""`edgeinv invert --optimizer zo-sgd` on the default model: exact resume, every output, subspaces."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file

from edgeinv.errors import UserError
from edgeinv.config import OPTIMIZER_DEFAULTS, InvertConfig
from edgeinv.invert import invert

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "orange-cross"
FAST = dict(images=str(EXAMPLE), optimizer="zo-sgd", budget=6, dim=4, samples=2, heldout=4, init=["red"], dvar_window=40, lr=0.2)


def test_zo_sgd_resume_after_interrupt_reaches_the_same_embedding(tmp_path):
    config = InvertConfig(**FAST)
    straight = invert(config, tmp_path / "straight", warn=lambda m: None)

    def interrupt_after_three(record, _):
        if record.generation == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        invert(config, tmp_path / "resumed", progress=interrupt_after_three, warn=lambda m: None)
    assert len((tmp_path / "resumed" / "history.jsonl").read_text().splitlines()) == 3
    resumed = invert(config, tmp_path / "resumed", resume=True, warn=lambda m: None)
    np.testing.assert_array_equal(resumed.vector, straight.vector)
    assert [g.deterministic_loss for g in resumed.history] == [g.deterministic_loss for g in straight.history]
    # the search moved: the deterministic loss changed, and the means differ from the start
    assert len({g.deterministic_loss for g in straight.history}) > 1
    assert np.abs(straight.trajectory[5] - straight.trajectory[0]).max() > 0


def test_zo_sgd_population_is_the_point_and_its_probes(tmp_path):
    result = invert(InvertConfig(**{**FAST, "probes": 3, "budget": 2, "dvar_batch": 4}), tmp_path / "run", warn=lambda m: None)
    # (1 point + 3 probes) x 2 samples, plus the 4-sample deterministic loss, per step
    assert [g.unet_evaluations for g in result.history] == [12, 24]
    assert result.history[0].sigma == pytest.approx(OPTIMIZER_DEFAULTS["zo-sgd"].mu)  # the default probe length


@pytest.mark.parametrize("subspace", ["pca", "random", "none"])
def test_both_optimizers_search_every_subspace(sd, subspace):
    from edgeinv.subspace import make_basis

    start = sd.token_table[sd.tokenizer.token_id("red</w>")]
    basis = make_basis(subspace, sd.token_table, FAST["dim"], 0)
    for optimizer in ("zo-sgd", "cma-es"):
        zo_options = {"lr": FAST["lr"]} if optimizer == "zo-sgd" else {"lr": None}  # cma-es refuses zo-sgd's options
        config = InvertConfig(**{**FAST, **zo_options, "optimizer": optimizer, "subspace": subspace, "budget": 2, "popsize": 4 if optimizer == "cma-es" else None})
        result = invert(config, warn=lambda m: None)
        moved = (result.trajectory[1][0] - start).astype(np.float64)
        if subspace == "none":  # the whole embedding: every coordinate moves
            assert basis.shape == (64, 64) and np.count_nonzero(moved) == 64, optimizer
        else:  # only within the d-dimensional subspace
            q, _ = np.linalg.qr(basis.T.astype(np.float64))
            assert np.linalg.norm(moved) > 0 and np.linalg.norm(moved - q @ (q.T @ moved)) < 1e-4 * np.linalg.norm(moved), optimizer


def test_zo_sgd_cli_end_to_end(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "edgeinv.cli", "invert", str(EXAMPLE), "--optimizer", "zo-sgd", "--out", str(out), "--token", "<zo-star>",
                           "--budget", "8", "--dim", "8", "--samples", "2", "--heldout", "4", "--init", "star", "--lr", "0.2"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "stopped by budget at step 8" in " ".join(done.stderr.split())
    for name in ("learned_embeds.safetensors", "zo-star.safetensors", "config.json", "history.jsonl", "loss.png", "samples.png"):
        assert (out / name).is_file(), name
    settings = json.loads((out / "config.json").read_text())["settings"]
    defaults = OPTIMIZER_DEFAULTS["zo-sgd"]
    assert settings["optimizer"] == "zo-sgd" and (settings["probes"], settings["mu"]) == (defaults.probes, defaults.mu) and settings["lr"] == 0.2
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [h["generation"] for h in history] == list(range(8))
    assert Image.open(out / "loss.png").size == (640, 360)
    assert load_file(str(out / "zo-star.safetensors"))["emb_params"].shape == (1, 64)


def test_zo_sgd_is_refused_for_the_gradient_methods():
    with pytest.raises(UserError, match="--optimizer zo-sgd"):
        InvertConfig(images=str(EXAMPLE), method="ti", optimizer="zo-sgd").resolved()


def test_each_optimizer_gets_its_own_defaults_and_options_win():
    from edgeinv.config import METHOD_DEFAULTS

    cma, zo = InvertConfig(images=str(EXAMPLE)).resolved(), InvertConfig(images=str(EXAMPLE), optimizer="zo-sgd").resolved()
    assert cma.budget == METHOD_DEFAULTS["cma-es"].budget and cma.probes is None and cma.lr is None
    assert (zo.budget, zo.probes, zo.mu, zo.lr) == tuple(getattr(OPTIMIZER_DEFAULTS["zo-sgd"], k) for k in ("budget", "probes", "mu", "lr"))
    assert InvertConfig(images=str(EXAMPLE), optimizer="zo-sgd", lr=0.5, probes=7).resolved().lr == 0.5
    # the search dimension and the DVAR window too: each optimiser keeps the ones it was measured with; --dim wins
    assert (cma.dim, zo.dim) == (METHOD_DEFAULTS["cma-es"].dim, OPTIMIZER_DEFAULTS["zo-sgd"].dim)
    assert (cma.dvar_window, zo.dvar_window) == (METHOD_DEFAULTS["cma-es"].dvar_window, OPTIMIZER_DEFAULTS["zo-sgd"].dvar_window)
    assert cma.dvar_window != zo.dvar_window
    assert InvertConfig(images=str(EXAMPLE), dim=8).resolved().dim == 8


@pytest.mark.parametrize("change", [dict(optimizer="cma-es", lr=None), dict(vectors=2), dict(probes=5), dict(mu=0.2), dict(lr=0.3), dict(subspace="none")])
def test_every_option_that_changes_the_result_is_in_the_resume_fingerprint(change):
    base = InvertConfig(**FAST).resolved()
    assert InvertConfig(**{**FAST, **change}).resolved().fingerprint() != base.fingerprint()
    assert InvertConfig(**{**FAST, "budget": 99}).resolved().fingerprint() == base.fingerprint()  # a longer budget may resume


def test_zo_sgd_checkpoint_is_json_and_replays_from_the_seed(tmp_path):
    """issue9's checkpoint: no pickled optimiser, only the told losses, from which --resume rebuilds zo-sgd."""
    invert(InvertConfig(**{**FAST, "budget": 3}), tmp_path / "run", warn=lambda m: None)
    state = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    assert state["optimizer"] == "zo-sgd" and state["generation"] == 3
    assert [len(told) for told in state["told"]] == [OPTIMIZER_DEFAULTS["zo-sgd"].probes + 1] * 3
    assert not (tmp_path / "run" / "checkpoint.pkl").exists()


def test_replay_rebuilds_zo_sgd_bit_for_bit_past_the_history_subspace(tmp_path):
    """The checkpoint's own path (edgeinv.invert.replay, JSON-round-tripped losses) through
    several history-subspace updates: the rebuilt optimiser asks exactly what the original asks next."""
    from edgeinv.invert import points_digest, replay
    from edgeinv.optimizers import ZoSgd

    target = np.random.default_rng(3).standard_normal(6)
    original = ZoSgd(np.zeros(6), probes=3, mu=0.05, lr=0.05, seed=2, tau=9)
    state = {"asked": [], "told": []}
    for _ in range(30):
        points = original.ask()
        losses = ((points - target) ** 2).sum(axis=1).astype(np.float32).astype(np.float64)
        original.tell(points, losses)
        state["asked"].append(points_digest(points))
        state["told"].append([float(v) for v in losses])
    state = json.loads(json.dumps(state))
    rebuilt = ZoSgd(np.zeros(6), probes=3, mu=0.05, lr=0.05, seed=2, tau=9)
    means = replay(rebuilt, state, tmp_path / "checkpoint.json")
    assert original.projection is not None and sorted(means) == list(range(30))
    np.testing.assert_array_equal(rebuilt.projection, original.projection)
    np.testing.assert_array_equal(rebuilt.ask(), original.ask())
    state["told"][20][1] += 1e-12  # one recorded loss off by a hair: the next ask differs and replay says so
    with pytest.raises(UserError, match="does not replay"):
        replay(ZoSgd(np.zeros(6), probes=3, mu=0.05, lr=0.05, seed=2, tau=9), state, tmp_path / "checkpoint.json")
