"""`edgeinv export`: each graph against its PyTorch module, the layout, and bad input."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from edgeinv import manifest
from edgeinv.errors import UserError
from edgeinv.onnx_model import OnnxStableDiffusion
from edgeinv_export.parity import PROMPTS, graph_differences
from tests.conftest import DIFFUSERS_DIR, ONNX_DIR

torch = pytest.importorskip("torch")
TOLERANCE = 1e-4


def test_fresh_export_matches_pytorch(torch_pipeline, fresh_export):
    diffs = graph_differences(torch_pipeline, fresh_export)
    assert max(diffs.values()) <= TOLERANCE, diffs


def test_shipped_onnx_matches_shipped_diffusers_model(torch_pipeline):
    diffs = graph_differences(torch_pipeline, ONNX_DIR)
    assert max(diffs.values()) <= TOLERANCE, diffs


def test_layout_is_optimums_plus_extras(fresh_export):
    for relative in ["model_index.json", "scheduler/scheduler_config.json", "tokenizer/vocab.json", "tokenizer/merges.txt",
                     "text_encoder/model.onnx", "text_encoder/config.json", "unet/model.onnx", "unet/config.json",
                     "vae_encoder/model.onnx", "vae_encoder/config.json", "vae_decoder/model.onnx", "vae_decoder/config.json",
                     manifest.TEXT_ENCODER_EMBEDS, manifest.TOKEN_EMBEDDINGS, manifest.MANIFEST_NAME]:
        assert (fresh_export / relative).is_file(), relative
    index = json.loads((fresh_export / "model_index.json").read_text())
    assert index["unet"] == ["optimum", "ORTModelUnet"] and index["vae_decoder"] == ["optimum", "ORTModelVaeDecoder"]


def test_optimum_input_and_output_names(fresh_export):
    import onnxruntime as ort

    def names(relative):
        session = ort.InferenceSession(str(fresh_export / relative), providers=["CPUExecutionProvider"])
        return [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]

    assert names("text_encoder/model.onnx") == (["input_ids"], ["last_hidden_state", "pooler_output"])
    assert names("unet/model.onnx") == (["sample", "timestep", "encoder_hidden_states"], ["out_sample"])
    assert names("vae_encoder/model.onnx") == (["sample"], ["latent_parameters"])
    assert names("vae_decoder/model.onnx") == (["latent_sample"], ["sample"])
    assert names(manifest.TEXT_ENCODER_EMBEDS) == (["inputs_embeds"], ["last_hidden_state"])


def test_token_table_is_stored_once(fresh_export):
    table_bytes = (fresh_export / manifest.TOKEN_EMBEDDINGS).stat().st_size
    vocab, width = 49408, json.loads((fresh_export / manifest.MANIFEST_NAME).read_text())["architecture"]["hidden_size"]
    assert table_bytes >= vocab * width * 4
    # Neither text-encoder graph carries its own copy of the 49408-row table.
    assert (fresh_export / manifest.TEXT_ENCODER_IDS).stat().st_size < table_bytes / 4
    assert (fresh_export / manifest.TEXT_ENCODER_EMBEDS).stat().st_size < table_bytes / 4


def test_manifest_describes_the_model(fresh_export, torch_pipeline):
    record = json.loads((fresh_export / manifest.MANIFEST_NAME).read_text())
    assert record["prediction_type"] == "epsilon"
    assert record["vae_scaling_factor"] == pytest.approx(torch_pipeline.vae.config.scaling_factor)
    assert record["architecture"]["latent_size"] * record["architecture"]["vae_scale_factor"] == record["architecture"]["image_size"]
    for entry in record["files"]:
        assert entry["sha256"] == manifest.sha256(fresh_export / entry["path"])


def test_adopting_an_optimum_export_needs_no_torch(fresh_export, tmp_path):
    # An optimum folder: no edgeinv additions; the table lives inside the ids graph.
    import onnx

    optimum = tmp_path / "optimum"
    shutil.copytree(fresh_export, optimum)
    for extra in (manifest.TEXT_ENCODER_EMBEDS, manifest.MANIFEST_NAME):
        (optimum / extra).unlink()
    ids_graph = onnx.load(str(optimum / manifest.TEXT_ENCODER_IDS))  # pulls the table back in
    onnx.save_model(ids_graph, str(optimum / manifest.TEXT_ENCODER_IDS))
    (optimum / manifest.TOKEN_EMBEDDINGS).unlink()
    with pytest.raises(UserError, match="adopt"):
        OnnxStableDiffusion(optimum)

    script = f"import sys\nsys.modules['torch'] = None  # any torch import now fails\nfrom edgeinv.cli import main\nsys.argv = ['edgeinv', 'export', {str(optimum)!r}]\nmain()"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    adopted, original = OnnxStableDiffusion(optimum), OnnxStableDiffusion(fresh_export)
    np.testing.assert_allclose(adopted.encode_prompts(PROMPTS), original.encode_prompts(PROMPTS), atol=1e-5)
    np.testing.assert_array_equal(adopted.token_table, original.token_table)


@pytest.mark.parametrize("layout, message", [
    ("missing", "no such folder"),
    ("empty", "no model_index.json"),
    ("sdxl", "not supported"),
    ("no_unet", "missing 'unet/'"),
])
def test_bad_sources_get_one_line_errors(tmp_path, layout, message):
    from edgeinv_export.load import load_pipeline

    source = tmp_path / "model"
    if layout != "missing":
        source.mkdir()
    if layout == "sdxl":
        (source / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    if layout == "no_unet":
        shutil.copytree(DIFFUSERS_DIR, source, dirs_exist_ok=True)
        shutil.rmtree(source / "unet")
    with pytest.raises(UserError, match=message) as error:
        load_pipeline(str(source))
    assert "\n" not in str(error.value)


def test_export_cli_reports_missing_source_without_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "edgeinv.cli", "export", str(tmp_path / "nope")], capture_output=True, text=True)
    assert done.returncode == 2
    assert "no such folder" in done.stderr and "Traceback" not in done.stderr
