"""Model folders with missing or mismatched files get one-line errors that say what to do."""

import json

import pytest

from edgeinv import manifest
from edgeinv.errors import UserError
from edgeinv.onnx_model import OnnxStableDiffusion
from tests.conftest import DIFFUSERS_DIR


def test_loads_the_shipped_model(sd):
    assert sd.token_table.shape == (49408, sd.hidden_size)
    assert sd.image_size == sd.latent_size * sd.manifest["architecture"]["vae_scale_factor"]


def test_missing_folder(tmp_path):
    with pytest.raises(UserError, match="no such model folder"):
        OnnxStableDiffusion(tmp_path / "absent")


def test_diffusers_folder_points_to_export():
    with pytest.raises(UserError, match="edgeinv export"):
        OnnxStableDiffusion(DIFFUSERS_DIR)


def test_missing_graph(onnx_copy):
    (onnx_copy / manifest.UNET).unlink()
    with pytest.raises(UserError, match="unet/model.onnx: missing"):
        OnnxStableDiffusion(onnx_copy)


def test_truncated_graph(onnx_copy):
    path = onnx_copy / manifest.VAE_DECODER
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(UserError, match="truncated"):
        OnnxStableDiffusion(onnx_copy)


def test_graphs_from_different_models(onnx_copy):
    record = json.loads((onnx_copy / manifest.MANIFEST_NAME).read_text())
    record["architecture"]["cross_attention_dim"] = 768
    (onnx_copy / manifest.MANIFEST_NAME).write_text(json.dumps(record))
    with pytest.raises(UserError, match="different models"):
        OnnxStableDiffusion(onnx_copy)


def test_corrupt_graph_fails_at_load_with_the_file_named(onnx_copy):
    path = onnx_copy / manifest.UNET
    path.write_bytes(bytes(path.stat().st_size))  # same size, zeros inside
    model = OnnxStableDiffusion(onnx_copy)
    with pytest.raises(UserError, match="unet/model.onnx: ONNX Runtime cannot load it"):
        model.session(manifest.UNET)


def test_wrong_width_embedding_is_refused(sd):
    import numpy as np

    with pytest.raises(UserError, match="width 768"):
        sd.add_token("<sd1-token>", np.zeros(768, np.float32))
