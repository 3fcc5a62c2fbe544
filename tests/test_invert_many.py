"""`edgeinv invert-many`: one run per concept folder, failures reported, reruns skip or resume."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from edgeinv.config import InvertConfig

from edgeinv.invert import invert
from tests.conftest import write_pictures

OPTIONS = ["--budget", "4", "--dim", "4", "--popsize", "4", "--samples", "2", "--heldout", "4", "--init", "red", "--no-samples"]
SAME_AS_OPTIONS = dict(budget=4, dim=4, popsize=4, samples=2, heldout=4, init=["red"])


@pytest.fixture()
def root(tmp_path) -> Path:
    rng = np.random.default_rng(7)
    for name, color in (("blue-star", "blue"), ("red-circle", "red")):
        write_pictures(tmp_path / "root" / name, color, name.split("-")[1], 3, rng)
    (tmp_path / "root" / "broken").mkdir()
    (tmp_path / "root" / "broken" / "x.png").write_text("not a picture")
    return tmp_path / "root"


def invert_many(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "edgeinv.cli", "invert-many", *map(str, args)], capture_output=True, text=True, timeout=timeout)


def test_each_concept_runs_a_bad_one_is_reported_and_a_rerun_skips_or_resumes(root, tmp_path):
    runs = tmp_path / "runs"
    # red-circle was interrupted after two generations in an earlier attempt: a checkpoint, no results
    config = InvertConfig(images=str(root / "red-circle"), **SAME_AS_OPTIONS)
    straight = invert(config, tmp_path / "straight", warn=lambda m: None)

    def interrupt(record, _):
        if record.generation == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        invert(config, runs / "red-circle", progress=interrupt, warn=lambda m: None)

    first = invert_many(root, "--out", runs, *OPTIONS)
    assert first.returncode == 2, first.stderr  # one concept failed on bad input
    summary = {c["concept"]: c for c in json.loads((runs / "summary.json").read_text())["concepts"]}
    assert summary["blue-star"]["status"] == "done" and summary["blue-star"]["stop"] == 4
    assert summary["red-circle"]["status"] == "done" and summary["red-circle"]["resumed"]
    assert summary["broken"]["status"] == "failed" and "x.png" in summary["broken"]["error"] and "Traceback" not in first.stderr + first.stdout
    assert "broken" in first.stdout and "failed" in first.stdout
    resumed = load_file(runs / "red-circle" / "learned_embeds.safetensors")
    assert np.abs(next(iter(resumed.values())) - straight.vector[0]).max() == 0.0  # the resume continued exactly

    blue = (runs / "blue-star" / "learned_embeds.safetensors").stat().st_mtime_ns
    second = invert_many(root, "--out", runs, *OPTIONS)
    assert second.returncode == 2
    summary = {c["concept"]: c for c in json.loads((runs / "summary.json").read_text())["concepts"]}
    assert summary["blue-star"]["status"] == "skipped" and summary["red-circle"]["status"] == "skipped"
    assert (runs / "blue-star" / "learned_embeds.safetensors").stat().st_mtime_ns == blue  # not rerun, not rewritten


@pytest.mark.parametrize("args, phrase", [
    (["--out", "{runs}", "--resume"], "invert-many sets it"),
    (["--out", "{runs}", "--budget", "zero"], "--budget"),
    (["--out", "{runs}", "--workers", "2"], "add --ray"),
])
def test_bad_options_are_one_line_before_any_work(root, tmp_path, args, phrase):
    result = invert_many(root, *[a.format(runs=tmp_path / "runs") for a in args], timeout=120)
    assert result.returncode == 2 and phrase in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


def test_a_folder_of_pictures_is_not_a_root(root, tmp_path):
    result = invert_many(root / "blue-star", "--out", tmp_path / "runs", timeout=120)
    assert result.returncode == 2 and "use `edgeinv invert` for one concept" in result.stderr


def test_on_ray_the_concepts_match_the_local_runs(root, tmp_path):
    pytest.importorskip("ray")
    (root / "broken" / "x.png").unlink()
    (root / "broken").rmdir()
    local = invert_many(root, "--out", tmp_path / "local", *OPTIONS)
    spread = invert_many(root, "--out", tmp_path / "ray", "--ray", "local", "--workers", "2", *OPTIONS)
    assert local.returncode == 0 and spread.returncode == 0, spread.stderr
    for concept in ("blue-star", "red-circle"):
        a = load_file(tmp_path / "local" / concept / "learned_embeds.safetensors")
        b = load_file(tmp_path / "ray" / concept / "learned_embeds.safetensors")
        assert np.abs(next(iter(a.values())) - next(iter(b.values()))).max() <= 1e-6
