"""The lean forward path: fused attention in exports, weight-only quantisation, memory-bounded runs."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from edgeinv import manifest
from edgeinv.errors import UserError
from edgeinv.onnx_model import OnnxStableDiffusion, chunk_rows, session_options
from edgeinv.quantize import cosine, quantize_folder
from tests.conftest import DIFFUSERS_DIR, ONNX_DIR, run_cli_without_torch

FLASH_PROBE = """
import sys, numpy as np, onnxruntime as ort
from edgeinv.onnx_model import session_options
def status(key):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key)) * 1024
session = ort.InferenceSession(sys.argv[1], session_options(threads=1), providers=["CPUExecutionProvider"])
rng = np.random.default_rng(0)
cross = [i for i in session.get_inputs() if i.name == "encoder_hidden_states"][0].shape[2]
feeds = {"sample": rng.standard_normal((1, 4, 64, 64)).astype(np.float32), "timestep": np.array([500.0], np.float32),
         "encoder_hidden_states": rng.standard_normal((1, 77, cross)).astype(np.float32)}
session.run(None, {**feeds, "sample": feeds["sample"][:, :, :8, :8]})  # initialise kernels on a small call
before = status("VmRSS")
session.run(None, feeds)
print(status("VmHWM") - before)
"""


def graph_ops(path) -> list[str]:
    import onnx

    return [node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node]


# ---------------------------------------------------------------- export: fused attention

def test_unet_and_vae_attention_is_fused(fresh_export):
    unet = graph_ops(fresh_export / manifest.UNET)
    assert unet.count("MultiHeadAttention") >= 2 and "Softmax" not in unet
    for vae in (manifest.VAE_ENCODER, manifest.VAE_DECODER):
        assert "Softmax" not in graph_ops(fresh_export / vae)
    assert "MultiHeadAttention" in manifest.read_manifest(fresh_export)["exported_with"]["attention"]


def test_export_leaves_the_pipeline_processors_alone(torch_pipeline, fresh_export):
    from edgeinv_export.fused_attention import FusedAttentionProcessor

    processors = list(torch_pipeline.unet.attn_processors.values()) + list(torch_pipeline.vae.attn_processors.values())
    assert processors and not any(isinstance(p, FusedAttentionProcessor) for p in processors)


def test_flash_attention_path_is_taken(fresh_export):
    """One 64x64-latent UNet call: materialised attention scores cost far more memory than flash attention."""
    def extra_bytes(disable: bool) -> int:
        env = {**os.environ, "ORT_DISABLE_FLASH_ATTENTION": "1" if disable else "0"}
        done = subprocess.run([sys.executable, "-c", FLASH_PROBE, str(fresh_export / manifest.UNET)], capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        return int(done.stdout.split()[-1])

    flash, materialised = extra_bytes(False), extra_bytes(True)
    # The first level's self-attention scores alone: heads x 4096 x 4096 floats (64 MB per head).
    assert materialised - flash > 100 * 2**20, (flash, materialised)


# ---------------------------------------------------------------- quantisation

@pytest.fixture(scope="module")
def int8_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("quantised") / "int8"
    done = run_cli_without_torch(["export", ONNX_DIR, "--out", out, "--quantize", "int8"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert "torch-free" in done.stdout
    return out


def test_int8_export_from_an_onnx_folder_needs_no_torch(int8_folder):
    record = manifest.read_manifest(int8_folder)
    q = record["quantization"]
    assert q["scheme"] == "int8" and q["matmul"]["bits"] == {"unet": 8, "others": 8}
    assert set(q["graphs"]) == {manifest.UNET, manifest.TEXT_ENCODER_EMBEDS, manifest.TEXT_ENCODER_IDS, manifest.VAE_ENCODER, manifest.VAE_DECODER}
    assert all(g["cosine"] >= 0.999 for g in q["graphs"].values())
    for entry in record["files"]:
        assert entry["sha256"] == manifest.sha256(int8_folder / entry["path"])


def test_int8_graphs_hold_int8_weights(int8_folder):
    import onnx
    from onnx import TensorProto

    model = onnx.load(str(int8_folder / manifest.UNET))
    ops = [n.op_type for n in model.graph.node]
    assert "MatMulNBits" in ops and ops.count("DequantizeLinear") == ops.count("Conv")
    initializers = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "MatMul":  # what is left multiplies activations by activations
            assert node.input[1] not in initializers
        if node.op_type == "Conv":
            assert node.input[1] not in initializers
    float_bytes = sum(len(i.raw_data) for i in model.graph.initializer if i.data_type == TensorProto.FLOAT)
    fp32_bytes = (ONNX_DIR / manifest.UNET).stat().st_size
    assert float_bytes < fp32_bytes / 10  # biases, norms and scales only
    assert (int8_folder / manifest.UNET).stat().st_size < fp32_bytes / 2
    # The token table is still stored once, in the safetensors file.
    assert (int8_folder / manifest.TEXT_ENCODER_IDS).stat().st_size < (int8_folder / manifest.TOKEN_EMBEDDINGS).stat().st_size / 4


def test_int8_folder_runs_close_to_fp32(int8_folder, rng):
    fp32, int8 = OnnxStableDiffusion(ONNX_DIR), OnnxStableDiffusion(int8_folder)
    prompts = ["a photo of a large red circle", "a small blue star"]
    states = fp32.encode_prompts(prompts)
    assert cosine(int8.encode_prompts(prompts), states) > 0.999
    latents = rng.standard_normal((2, fp32.latent_channels, fp32.latent_size, fp32.latent_size)).astype(np.float32)
    steps = np.array([100.0, 800.0], np.float32)
    assert cosine(int8.unet(latents, steps, states), fp32.unet(latents, steps, states)) > 0.999
    assert cosine(int8.vae_decode(latents), fp32.vae_decode(latents)) > 0.999


def test_generate_and_invert_read_an_int8_folder(int8_folder, tmp_path):
    done = run_cli_without_torch(["generate", "a red circle", "--model", int8_folder, "-n", "1", "--steps", "2", "--out", tmp_path / "a.png"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "a.png").is_file()
    images = DIFFUSERS_DIR.parent.parent / "examples" / "orange-cross"
    done = run_cli_without_torch(["invert", images, "--model", int8_folder, "--init", "star", "--budget", "3", "--popsize", "4", "--samples", "2",
                                  "--heldout", "2", "--no-samples", "--out", tmp_path / "run"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "run" / "learned_embeds.safetensors").is_file()
    # After the second generation: the measured time and the projection, before the run ends.
    assert "per generation after the first" in done.stderr and "typical DVAR stop" in done.stderr


def test_quantisation_below_the_threshold_is_refused_and_writes_nothing(tmp_path):
    out = tmp_path / "refused"
    script = ("import sys\nfrom edgeinv.cli import main\n"
              f"sys.argv = ['edgeinv', 'export', {str(ONNX_DIR)!r}, '--out', {str(out)!r}, '--quantize', 'int8', '--min-cosine', '1']\nmain()")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr[-2000:]
    error = [line for line in done.stderr.splitlines() if "error:" in line]
    assert error and "below 1" in error[0] and "nothing written" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_a_quantised_folder_is_not_quantised_again(int8_folder, tmp_path):
    with pytest.raises(UserError, match="already quantised"):
        quantize_folder(int8_folder, tmp_path / "again", "int8")


def test_int4_keeps_the_text_encoders_at_8_bits(tmp_path):
    record = quantize_folder(ONNX_DIR, tmp_path / "int4", "int4", log=lambda line: None)
    graphs = record["quantization"]["graphs"]
    assert graphs[manifest.UNET]["matmul_bits"] == 4 and graphs[manifest.TEXT_ENCODER_EMBEDS]["matmul_bits"] == 8
    assert all(g["cosine"] >= 0.999 for g in graphs.values())


def test_int8_export_from_a_diffusers_folder(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "a"
    done = subprocess.run([sys.executable, "-m", "edgeinv.cli", "export", str(DIFFUSERS_DIR), "--out", str(out), "--quantize", "int8"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "cosine" in done.stderr
    record = manifest.read_manifest(out)
    assert record["quantization"]["scheme"] == "int8" and "MultiHeadAttention" in record["exported_with"]["attention"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # the scratch fp32 export is gone
    assert "MultiHeadAttention" in graph_ops(out / manifest.UNET)


# ---------------------------------------------------------------- runtime

def test_sessions_run_without_the_cpu_arena():
    assert session_options().enable_cpu_mem_arena is False
    assert session_options(threads=3).intra_op_num_threads == 3


def test_chunk_rows_fit_the_memory_bound():
    gb = 10**9
    # SD 1.5's shape, int8 weights (~0.9 GB), ~0.25 GB per 64x64 row: a few rows under 2 GB.
    few = chunk_rows(int(0.9 * gb), int(0.25 * gb), 2 * gb)
    assert 1 <= few <= 3
    assert chunk_rows(int(0.9 * gb), int(0.25 * gb), 4 * gb) > few  # more memory, more rows
    assert chunk_rows(int(3.4 * gb), int(0.25 * gb), 2 * gb) == 1  # fp32 weights alone exceed it: one row at a time
    assert chunk_rows(10**7, 4 * 10**6, 2 * gb) == 64  # the tiny default model: the cap


def test_default_model_keeps_the_full_chunk(sd):
    assert sd.chunk_size_for(2.0) == 64
    assert sd.chunk_size_for(0.5) < 64


def test_projection_reports_time_per_generation():
    from edgeinv.cli import projection
    from edgeinv.config import InvertConfig
    from edgeinv.history import Generation

    config = InvertConfig(images=str(DIFFUSERS_DIR.parent.parent / "examples" / "orange-cross"), budget=300, popsize=16, samples=8, chunk_size=2).resolved()
    first = Generation(0, 1.0, 1.0, 1.0, None, 1.0, 132, 100.0)
    second = Generation(1, 1.0, 1.0, 1.0, None, 1.0, 264, 160.0)
    text = projection(first, second, config)
    assert "60.0s per generation" in text
    assert "5.0 h more to the budget of 300 generations" in text  # 298 generations x 60 s
    assert "~generation 205" in text  # 27,100 UNet evaluations (the v3 race's mean stop) at 132 a generation


def test_projection_for_zo_sgd_counts_steps_and_claims_no_typical_stop():
    from edgeinv.cli import projection
    from edgeinv.config import InvertConfig
    from edgeinv.history import Generation

    config = InvertConfig(images=str(DIFFUSERS_DIR.parent.parent / "examples" / "orange-cross"), optimizer="zo-sgd", budget=500).resolved()
    text = projection(Generation(0, 1.0, 1.0, 1.0, None, 0.1, 44, 10.0), Generation(1, 1.0, 1.0, 1.0, None, 0.1, 88, 12.0), config, "step")
    assert "2.0s per step" in text and "budget of 500 steps" in text
    assert "typical DVAR stop" not in text  # measured for CMA-ES only


def test_quantised_out_is_replaced_only_by_the_same_scheme(int8_folder):
    """issue9's --out rules apply to --quantize: another scheme (or fp32) over it needs --overwrite."""
    before = {p: p.read_bytes() for p in int8_folder.rglob("*") if p.is_file()}
    for args in (["--quantize", "int4"], []):
        done = subprocess.run([sys.executable, "-m", "edgeinv.cli", "export", str(ONNX_DIR), "--out", str(int8_folder), *args], capture_output=True, text=True)
        errors = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 2 and len(errors) == 1 and "(int8)" in errors[0] and "--overwrite" in errors[0], done.stderr
    assert {p: p.read_bytes() for p in int8_folder.rglob("*") if p.is_file()} == before


def test_quantize_refuses_to_write_over_its_source(tmp_path):
    import shutil

    source = shutil.copytree(ONNX_DIR, tmp_path / "model")
    done = subprocess.run([sys.executable, "-m", "edgeinv.cli", "export", str(source), "--out", str(source), "--quantize", "int8"], capture_output=True, text=True)
    assert done.returncode == 2 and "other than SOURCE" in done.stderr, done.stderr


def test_openvino_device_asks_for_its_provider(monkeypatch):
    import json as json_module

    import onnxruntime as ort

    from edgeinv.onnx_model import available_providers

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["OpenVINOExecutionProvider", "CPUExecutionProvider"])
    (name, options), fallback = available_providers("openvino", threads=2)
    assert (name, fallback) == ("OpenVINOExecutionProvider", "CPUExecutionProvider")
    assert options["device_type"] == "CPU" and options["num_of_threads"] == "2"
    assert json_module.loads(options["load_config"]) == {"CPU": {"INFERENCE_PRECISION_HINT": "bf16"}}  # the measured setting


def test_openvino_missing_or_with_a_gradient_method_is_one_line(tmp_path):
    import onnxruntime as ort

    if "OpenVINOExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-openvino is installed here")
    for args in (["generate", "a red star", "--device", "openvino", "--out", str(tmp_path / "x.png")],
                 ["invert", str(ONNX_DIR.parent.parent / "examples" / "orange-cross"), "--device", "openvino", "--method", "ti", "--out", str(tmp_path / "run")]):
        result = subprocess.run([sys.executable, "-m", "edgeinv.cli", *args], capture_output=True, text=True)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
        assert "openvino" in result.stderr
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "run").exists()
