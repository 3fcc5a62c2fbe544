"""Nothing is lost or overwritten by surprise; real exports' scalar timestep; what `--out` means."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file

from edgeinv import manifest
from edgeinv.errors import UserError
from tests.conftest import ONNX_DIR
from tests.test_bad_input import FAST, Mounts, assert_one_line_error, cli, fill, picture


@pytest.fixture
def mounts(tmp_path):
    m = Mounts(tmp_path)
    yield m
    m.close()


def files_in(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- scalar timestep (optimum exports)


def scalar_timestep_copy(tmp_path: Path) -> Path:
    """The shipped model with its UNet's `timestep` declared a scalar, as optimum-onnx exports it."""
    import onnx

    folder = tmp_path / "scalar"
    shutil.copytree(ONNX_DIR, folder)
    graph = onnx.load(str(folder / manifest.UNET))
    timestep = next(i for i in graph.graph.input if i.name == "timestep")
    timestep.type.tensor_type.shape.ClearField("dim")
    onnx.save_model(graph, str(folder / manifest.UNET))
    record = json.loads((folder / manifest.MANIFEST_NAME).read_text())
    for entry in record["files"]:
        if entry["path"] == manifest.UNET:
            entry["bytes"] = (folder / manifest.UNET).stat().st_size
    (folder / manifest.MANIFEST_NAME).write_text(json.dumps(record))
    return folder


def test_scalar_timestep_unet_generates_bit_identically(tmp_path, sd):
    from edgeinv.generate import generate
    from edgeinv.onnx_model import OnnxStableDiffusion

    model = OnnxStableDiffusion(scalar_timestep_copy(tmp_path))
    assert len(next(i for i in model.session(manifest.UNET).get_inputs() if i.name == "timestep").shape) == 0
    np.testing.assert_array_equal(generate(model, "a red circle", steps=3, n=2, seed=1), generate(sd, "a red circle", steps=3, n=2, seed=1))


def test_scalar_timestep_unet_scores_mixed_timesteps_like_the_batched_one(tmp_path, sd, rng):
    from edgeinv.onnx_model import OnnxStableDiffusion

    model = OnnxStableDiffusion(scalar_timestep_copy(tmp_path))
    latents = rng.standard_normal((4, sd.latent_channels, sd.latent_size, sd.latent_size)).astype(np.float32)
    states = sd.encode_prompts(["a red circle"] * 4)
    steps = np.array([10, 500, 10, 999], dtype=np.float32)  # inversion batches mix timesteps
    np.testing.assert_allclose(model.unet(latents, steps, states), sd.unet(latents, steps, states), atol=1e-5)


# ---------------------------------------------------------------- generate --out


def test_generate_into_a_folder_writes_each_image_and_the_grid(tmp_path):
    folder = tmp_path / "pictures"
    folder.mkdir()
    done = cli("generate", "a red circle", "--steps", "2", "-n", "3", "--out", folder)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["grid-0001.png", "image-0001.png", "image-0002.png", "image-0003.png"]
    done = cli("generate", "a blue square", "--steps", "2", "-n", "1", "--out", folder)
    assert done.returncode == 0, done.stderr
    size = json.loads((ONNX_DIR / manifest.MANIFEST_NAME).read_text())["architecture"]["image_size"]
    assert (folder / "image-0004.png").is_file() and Image.open(folder / "image-0004.png").size == (size, size)  # earlier images kept


def test_generate_without_extension_writes_png(tmp_path):
    done = cli("generate", "a red circle", "--steps", "2", "-n", "1", "--out", tmp_path / "star")
    assert done.returncode == 0, done.stderr
    assert Image.open(tmp_path / "star.png").format == "PNG"


def test_generate_jpeg_extension(tmp_path):
    done = cli("generate", "a red circle", "--steps", "2", "-n", "2", "--out", tmp_path / "grid.jpg")
    assert done.returncode == 0, done.stderr
    assert Image.open(tmp_path / "grid.jpg").format == "JPEG"


# ---------------------------------------------------------------- atomic writes


def test_atomic_path_keeps_the_earlier_file_when_the_disk_is_full(mounts):
    from edgeinv.files import atomic_path

    disk = mounts.tmpfs("disk", "128k")
    earlier = disk / "out.bin"
    earlier.write_bytes(b"earlier contents")
    fill(disk)
    with pytest.raises(UserError, match="No space left"):
        with atomic_path(earlier) as tmp:
            tmp.write_bytes(os.urandom(1 << 20))
    assert earlier.read_bytes() == b"earlier contents"
    assert sorted(p.name for p in disk.iterdir()) == ["filler", "out.bin"]


def test_atomic_path_removes_its_temporary_on_ctrl_c(tmp_path):
    from edgeinv.files import atomic_path

    earlier = tmp_path / "out.json"
    earlier.write_text("{}")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(earlier) as tmp:
            tmp.write_text('{"half')
            raise KeyboardInterrupt
    assert earlier.read_text() == "{}" and [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_report_files_on_a_full_disk_leave_no_temporaries(mounts):
    from edgeinv.report import plot_loss

    disk = mounts.tmpfs("disk", "128k")
    fill(disk)
    with pytest.raises(UserError, match="loss.png"):
        plot_loss(disk / "loss.png", [0.3, 0.2, 0.1], 1, "loss")
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]


# ---------------------------------------------------------------- invert --out


def test_token_named_like_a_fixed_file_does_not_overwrite_it(tmp_path):
    from edgeinv.embedding_files import DIFFUSERS_FILE, load_embedding, save_embedding

    vector = np.arange(64, dtype=np.float32)
    for token in ("<learned_embeds>", "<LEARNED_EMBEDS>", "<pytorch_lora_weights>", "<checkpoint>"):
        paths = save_embedding(tmp_path / token.strip("<>"), token, vector)
        assert paths["a1111"].name != DIFFUSERS_FILE and paths["a1111"].name.lower() != DIFFUSERS_FILE
        assert set(load_file(str(paths["diffusers"]))) == {token}  # the diffusers file is still the diffusers file
        assert list(load_file(str(paths["a1111"]))) == ["emb_params"]
        np.testing.assert_array_equal(load_embedding(paths["a1111"], token)[1][0], vector)


def test_overwrite_starts_again_in_a_used_folder(tmp_path):
    concept = tmp_path / "pictures"
    concept.mkdir()
    for i, color in enumerate([(230, 120, 20), (240, 130, 30), (220, 110, 10)]):
        picture(concept / f"{i}.png", color)
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert_one_line_error(cli("invert", concept, "--out", out, *FAST), "not empty")
    done = cli("invert", concept, "--out", out, "--overwrite", *FAST)
    assert done.returncode == 0, done.stderr
    assert (out / "learned_embeds.safetensors").is_file() and (out / "notes.txt").read_text() == "mine"
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_resume_command_keeps_the_users_options():
    from edgeinv.cli import Main, resume_command

    Main.argv = ["invert", "my pictures", "--token", "<x>", "--dim", "8", "--overwrite"]
    assert resume_command(Path("runs/x-1")) == "edgeinv invert 'my pictures' --token '<x>' --dim 8 --out runs/x-1 --resume"
    Main.argv = ["invert", "p", "--out", "r", "--resume"]
    assert resume_command(Path("r")) == "edgeinv invert p --out r --resume"


def test_checkpoint_is_json_and_replays_exactly(tmp_path):
    """No pickle anywhere; the recorded losses rebuild the optimiser exactly (tests/test_invert.py
    checks the resumed run's result)."""
    from edgeinv.config import InvertConfig
    from edgeinv.invert import CHECKPOINT, invert
    from edgeinv.optimizers import OPTIMIZERS

    concept = tmp_path / "pictures"
    concept.mkdir()
    for i in range(3):
        picture(concept / f"{i}.png")
    config = InvertConfig(images=str(concept), budget=3, dim=4, popsize=4, samples=2, heldout=2, init=["red"])
    result = invert(config, tmp_path / "run", warn=lambda m: None)
    state = json.loads((tmp_path / "run" / CHECKPOINT).read_text())
    assert state["generation"] == 3 and len(state["told"]) == 3
    optimizer = OPTIMIZERS["cma-es"](np.zeros(4), 1.0, 4, 0)
    from edgeinv.invert import replay

    means = replay(optimizer, state, tmp_path / "run" / CHECKPOINT)
    assert optimizer.sigma == result.history[-1].sigma
    assert sorted(means) == [0, 1, 2]


# ---------------------------------------------------------------- export


def test_export_of_an_edgeinv_folder_changes_nothing(onnx_copy):
    before = files_in(onnx_copy)
    done = cli("export", onnx_copy)
    assert done.returncode == 0, done.stderr
    assert "nothing to do" in done.stderr
    assert files_in(onnx_copy) == before


def test_staged_folder_leaves_out_as_it_was_on_failure(tmp_path):
    from edgeinv.cli import staged_folder

    out = tmp_path / "model"
    out.mkdir()
    (out / "model_index.json").write_text("working model")
    with pytest.raises(KeyboardInterrupt):
        with staged_folder(out) as tmp:
            (tmp / "model_index.json").write_text("half")
            raise KeyboardInterrupt
    assert files_in(out) == {"model_index.json": b"working model"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_staged_folder_swaps_in_world_readable_files(tmp_path):
    from edgeinv.cli import staged_folder

    out = tmp_path / "model"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with staged_folder(out) as tmp:
        (tmp / "unet").mkdir()
        (tmp / "unet" / "model.onnx").write_text("new")
        os.chmod(tmp / "unet" / "model.onnx", 0o600)  # what safetensors writes
    assert files_in(out) == {"unet/model.onnx": b"new"}
    assert (out / "unet" / "model.onnx").stat().st_mode & 0o777 == 0o644
    assert out.stat().st_mode & 0o777 == 0o755 and (out / "unet").stat().st_mode & 0o777 == 0o755
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_export_into_the_same_models_folder_replaces_it_whole(tmp_path, torch_pipeline):
    from tests.conftest import DIFFUSERS_DIR

    out = tmp_path / "onnx"
    first = cli("export", DIFFUSERS_DIR, "--out", out)
    assert first.returncode == 0, first.stderr
    (out / "stray.txt").write_text("from before")
    again = cli("export", DIFFUSERS_DIR, "--out", out)
    assert again.returncode == 0, again.stderr
    assert not (out / "stray.txt").exists()  # swapped whole, not written into
    assert all(p.stat().st_mode & 0o004 for p in out.rglob("*"))  # readable by other users
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx"]
