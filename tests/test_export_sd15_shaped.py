"""The >2 GB path: an SD 1.5-shaped pipeline (random weights, no download). Slow: -m slow."""

import numpy as np
import pytest

from edgeinv import manifest
from edgeinv.onnx_model import OnnxStableDiffusion
from tests.conftest import ONNX_DIR

torch = pytest.importorskip("torch")


@pytest.mark.slow
def test_sd15_shaped_export_uses_external_data_and_matches_pytorch(tmp_path):
    from edgeinv_export.onnx_export import export_pipeline
    from edgeinv_export.reference_models import sd15_shaped_pipeline

    pipeline = sd15_shaped_pipeline(ONNX_DIR / "tokenizer")
    out = tmp_path / "sd15"
    export_pipeline(pipeline, out, "sd15-shaped")
    # 860M UNet parameters: over protobuf's 2 GB, so gathered into one external-data file.
    assert (out / "unet" / "model.onnx_data").stat().st_size > 3_000_000_000
    assert sorted(p.name for p in (out / "unet").iterdir()) == ["config.json", "model.onnx", "model.onnx_data"]

    model = OnnxStableDiffusion(out, device="cpu")
    assert model.hidden_size == 768 and model.latent_size == 64
    ids = model.tokenizer(["a photo of a cat"])
    latents = np.random.default_rng(0).standard_normal((1, 4, 16, 16)).astype(np.float32)
    with torch.no_grad():
        states = pipeline.text_encoder(torch.from_numpy(ids)).last_hidden_state.numpy()
        expected = pipeline.unet(torch.from_numpy(latents), torch.tensor([400.0]), torch.from_numpy(states)).sample.numpy()
    np.testing.assert_allclose(model.encode_prompts(["a photo of a cat"]), states, atol=1e-4)
    np.testing.assert_allclose(model.unet(latents, np.array([400.0], np.float32), states), expected, atol=1e-4 * max(1.0, np.abs(expected).max()))
    assert manifest.read_manifest(out)["architecture"]["image_size"] == 512
