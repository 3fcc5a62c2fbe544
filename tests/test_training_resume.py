"""The default model's training script resumes exactly after being cut off (issue 8)."""

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")
from safetensors.numpy import load_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--images", "48", "--vae-steps", "3", "--vae-batch", "4", "--steps", "3", "--batch", "4", "--decoder-steps", "2",
        "--save-every", "100", "--check-scenes", "4", "--seed", "3"]
WEIGHTS = ("vae/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors")


def train(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "models" / "train_default_model.py"), "--out", str(out), *TINY, *extra],
                          cwd=ROOT, capture_output=True, text=True)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("whole") / "model"
    whole = train(out)
    assert whole.returncode == 0, whole.stderr[-2000:]
    return out


# Mid-stage (model, optimiser, EMA, schedule and both generators restored) and a stage start
# (only the generators and the frozen parts restored).
@pytest.mark.parametrize("cut", ["unet:2", "decoder:0"])
def test_training_resumes_exactly_after_a_cut(tmp_path, uninterrupted, cut):
    cut_off = train(tmp_path / "cut", "--interrupt-at", cut)
    assert cut_off.returncode == 3, cut_off.stderr[-2000:]
    resumed = train(tmp_path / "cut", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming at {cut.split(':')[0]} step {cut.split(':')[1]}" in resumed.stdout
    for name in WEIGHTS:
        a, b = load_file(uninterrupted / name), load_file(tmp_path / "cut" / name)
        assert a.keys() == b.keys()
        for key in a:
            assert (a[key] == b[key]).all(), f"{name}:{key} differs after resuming from {cut}"


def test_text_encoder_weights_load_in_transformers_4_layout():
    """transformers 4.x (optimum's exporter) needs the `text_model.` prefix, else it silently
    initialises a random text encoder; the shipped folder must carry it."""
    from safetensors import safe_open

    with safe_open(ROOT / "models" / "tiny-sd-shapes" / "text_encoder" / "model.safetensors", "np") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("text_model.") for k in keys), keys[:3]
    assert "text_model.embeddings.token_embedding.weight" in keys


def test_fine_tuning_from_a_trained_model_starts_exactly_where_it_ended(tmp_path, uninterrupted):
    """--init-from with no further steps gives the trained model back bit for bit: its VAE and
    scaling factor, its text encoder and UNet, and the placeholder word's kept vector (restored
    into the table for training, erased again at the end)."""
    tuned = tmp_path / "tuned"
    run = train(tuned, "--init-from", str(uninterrupted), "--wordless-rate", "0.5", "--steps", "0", "--decoder-steps", "0")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "VAE taken from" in run.stdout
    for name in WEIGHTS + ("vae/config.json",):
        if name.endswith(".json"):
            assert (uninterrupted / name).read_text() == (tuned / name).read_text()
            continue
        a, b = load_file(uninterrupted / name), load_file(tuned / name)
        assert a.keys() == b.keys() and all((a[key] == b[key]).all() for key in a), name
    kept = "model.unnamed-concept.safetensors"
    assert (uninterrupted.parent / kept).read_bytes() == (tuned.parent / "tuned.unnamed-concept.safetensors").read_bytes()
