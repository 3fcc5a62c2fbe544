"""`edgeinv invert` end to end on the default model: outputs, resume, torch-free, bad input."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file

from edgeinv.errors import UserError
from edgeinv.config import InvertConfig
from edgeinv.invert import invert
from tests.conftest import diffusers_text_states, run_cli_without_torch, write_pictures

# Small settings: a few seconds per run on 2 cores.
FAST = dict(budget=6, dim=4, popsize=4, samples=2, heldout=4, init=["red"], dvar_window=40)
CLI_FAST = ["--budget", "8", "--dim", "4", "--popsize", "4", "--samples", "2", "--init", "red", "--no-samples"]


@pytest.fixture(scope="module")
def concept(tmp_path_factory) -> Path:
    return write_pictures(tmp_path_factory.mktemp("concept"), "orange", "circle", 4, np.random.default_rng(3))


def test_resume_after_interrupt_reaches_the_same_embedding(concept, tmp_path):
    config = InvertConfig(images=str(concept), **FAST)
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
    assert len((tmp_path / "resumed" / "history.jsonl").read_text().splitlines()) == len(straight.history)


def test_kill_9_then_resume_matches_an_uninterrupted_run(concept, tmp_path):
    cli = [sys.executable, "-m", "edgeinv.cli", "invert", str(concept), *CLI_FAST]
    subprocess.run([*cli, "--out", str(tmp_path / "straight")], check=True, capture_output=True)

    killed = tmp_path / "killed"
    process = subprocess.Popen([*cli, "--out", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    history = killed / "history.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (history.exists() and len(history.read_text().splitlines()) >= 3):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "learned_embeds.safetensors").exists(), "the run finished before it could be killed"
    subprocess.run([*cli, "--out", str(killed), "--resume"], check=True, capture_output=True)
    a = load_file(str(tmp_path / "straight" / "learned_embeds.safetensors"))
    b = load_file(str(killed / "learned_embeds.safetensors"))
    np.testing.assert_array_equal(a["<concept>"], b["<concept>"])


def test_run_folder_has_every_output(concept, tmp_path):
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "edgeinv.cli", "invert", str(concept), "--out", str(out), "--token", "<orange-thing>",
                           *[a for a in CLI_FAST if a != "--no-samples"]], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for name in ("learned_embeds.safetensors", "orange-thing.safetensors", "config.json", "history.jsonl", "loss.png", "samples.png", "checkpoint.json"):
        assert (out / name).is_file(), name
    embeds = load_file(str(out / "learned_embeds.safetensors"))
    assert list(embeds) == ["<orange-thing>"] and embeds["<orange-thing>"].ndim == 1
    assert load_file(str(out / "orange-thing.safetensors"))["emb_params"].shape == (1, embeds["<orange-thing>"].shape[0])
    config = json.loads((out / "config.json").read_text())
    assert config["result"]["stop_generation"] == len((out / "history.jsonl").read_text().splitlines())
    assert Image.open(out / "loss.png").size == (640, 360)


def test_sigma0_sets_cma_es_initial_step(concept, tmp_path):
    """--sigma0 reaches pycma: the first generation's step size follows it (CSA moves it by a few % a generation)."""
    sigmas = {}
    for sigma0 in (1.0, 4.0):
        out = tmp_path / f"s{sigma0:g}"
        args = [*CLI_FAST, "--budget", "2"] + ([] if sigma0 == 1.0 else ["--sigma0", "4"])
        done = subprocess.run([sys.executable, "-m", "edgeinv.cli", "invert", str(concept), "--out", str(out), *args], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert json.loads((out / "config.json").read_text())["settings"]["sigma0"] == sigma0
        sigmas[sigma0] = json.loads((out / "history.jsonl").read_text().splitlines()[0])["sigma"]
    assert 0.7 < sigmas[1.0] < 1.3 and 2.8 < sigmas[4.0] < 5.2


def test_learned_file_loads_in_diffusers_and_conditions_like_onnx(concept, tmp_path, sd, torch_pipeline):
    pytest.importorskip("torch")
    from edgeinv.embedding_files import save_embedding
    from edgeinv.onnx_model import OnnxStableDiffusion

    result = invert(InvertConfig(images=str(concept), token="<orange-ish>", **FAST), tmp_path / "run", warn=lambda m: None)
    path = save_embedding(tmp_path / "run", "<orange-ish>", result.vector)["diffusers"]
    model = OnnxStableDiffusion(sd.folder)
    model.add_token("<orange-ish>", result.vector[0])
    prompt = "a photo of a <orange-ish> on the left"
    np.testing.assert_allclose(model.encode_prompts([prompt]), diffusers_text_states(torch_pipeline, path, prompt), atol=1e-4)


def test_invert_never_imports_torch(concept, tmp_path):
    done = run_cli_without_torch(["invert", concept, "--out", tmp_path / "run", *CLI_FAST])
    assert done.returncode == 0 and "torch-free" in done.stdout, done.stderr


def test_nan_losses_stop_with_a_clear_error(concept, tmp_path, monkeypatch):
    from edgeinv import objective

    monkeypatch.setattr(objective.Objective, "losses", lambda self, vectors, evaluation: np.full(len(vectors), np.nan))
    with pytest.raises(UserError, match="NaN"):
        invert(InvertConfig(images=str(concept), **FAST), tmp_path / "run", warn=lambda m: None)


@pytest.mark.parametrize("args, message", [
    (["--token", "circle"], "already a word"),
    (["--resume"], "--resume needs --out"),
    (["--timesteps", "0.8", "0.2"], "--timesteps"),
])
def test_cli_user_errors(concept, args, message):
    done = subprocess.run([sys.executable, "-m", "edgeinv.cli", "invert", str(concept), *CLI_FAST, *args], capture_output=True, text=True)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_resume_with_other_settings_is_refused(concept, tmp_path):
    config = InvertConfig(images=str(concept), **FAST)
    invert(config, tmp_path / "run", warn=lambda m: None)
    with pytest.raises(UserError, match="other settings"):
        invert(InvertConfig(images=str(concept), **{**FAST, "seed": 99}), tmp_path / "run", resume=True, warn=lambda m: None)


def test_final_choice_contenders_are_the_lowest_deterministic_losses_and_the_last():
    from edgeinv.history import contender_generations

    assert contender_generations([5, 4, 3, 2, 1, 0, 9, 8, 7, 6], best=3) == [3, 4, 5, 9]
    assert contender_generations([3.0, 1.0], best=8) == [0, 1]
    assert contender_generations([]) == []
