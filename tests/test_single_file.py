"""`edgeinv export model.safetensors`: single-file checkpoints through diffusers' loader."""

import pytest

from edgeinv.errors import UserError
from tests.conftest import DIFFUSERS_DIR

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def single_file(torch_pipeline, tmp_path_factory):
    from safetensors.torch import save_file

    from tests.original_layout import pipeline_to_original

    path = tmp_path_factory.mktemp("single") / "tiny-sd-shapes.safetensors"
    save_file(pipeline_to_original(torch_pipeline), str(path))
    return path


def test_single_file_loads_the_same_weights(single_file, torch_pipeline):
    from edgeinv_export.load import load_pipeline

    loaded = load_pipeline(str(single_file), config=str(DIFFUSERS_DIR))
    for name in ("unet", "vae", "text_encoder"):
        ours, theirs = getattr(loaded, name).state_dict(), getattr(torch_pipeline, name).state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name


def test_single_file_export_matches_pytorch(single_file, torch_pipeline, tmp_path):
    from edgeinv_export.load import load_pipeline
    from edgeinv_export.onnx_export import export_pipeline
    from edgeinv_export.parity import graph_differences
    from tests.test_export import TOLERANCE

    export_pipeline(load_pipeline(str(single_file), config=str(DIFFUSERS_DIR)), tmp_path / "onnx", str(single_file))
    differences = graph_differences(torch_pipeline, tmp_path / "onnx")
    assert max(differences.values()) <= TOLERANCE, differences


def test_a_file_that_is_not_a_checkpoint(tmp_path):
    from edgeinv_export.load import load_pipeline

    bogus = tmp_path / "photo.safetensors"
    bogus.write_bytes(b"\0" * 64)
    with pytest.raises(UserError, match="photo.safetensors"):
        load_pipeline(str(bogus), config=str(DIFFUSERS_DIR))
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(UserError, match="not a checkpoint"):
        load_pipeline(str(text))
