"""Shared fixtures. Everything runs offline on the shipped tiny-sd-shapes model."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DIFFUSERS_DIR = REPO / "models" / "tiny-sd-shapes"
ONNX_DIR = REPO / "models" / "tiny-sd-shapes-onnx"


@pytest.fixture(scope="session")
def onnx_dir() -> Path:
    return ONNX_DIR


@pytest.fixture(scope="session")
def sd():
    from edgeinv.onnx_model import OnnxStableDiffusion

    return OnnxStableDiffusion(ONNX_DIR)


@pytest.fixture(scope="session")
def torch_pipeline():
    pytest.importorskip("torch")
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(DIFFUSERS_DIR, safety_checker=None, requires_safety_checker=False)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="session")
def fresh_export(tmp_path_factory, torch_pipeline) -> Path:
    """The default model exported anew by this checkout's exporter."""
    from edgeinv_export.onnx_export import export_pipeline

    out = tmp_path_factory.mktemp("export") / "onnx"
    export_pipeline(torch_pipeline, out, str(DIFFUSERS_DIR))
    return out


@pytest.fixture
def onnx_copy(tmp_path) -> Path:
    """A private copy of the shipped ONNX folder, for tests that damage it."""
    target = tmp_path / "model"
    shutil.copytree(ONNX_DIR, target)
    return target


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def write_pictures(folder: Path, color: str, shape: str, count: int, rng: np.random.Generator) -> Path:
    """`count` rendered pictures of one colour/shape pair (held-out pairs allowed) as PNGs in `folder`."""
    from PIL import Image

    from edgeinv.shapes import random_scene, render

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(render(random_scene(rng, color=color, shape=shape, allow_held_out=True))).save(folder / f"{i}.png")
    return folder


def run_cli_without_torch(args: list[str]):
    """Run `edgeinv ARGS` in a fresh interpreter and fail if torch got imported."""
    import subprocess
    import sys

    script = (
        "import sys\nfrom edgeinv.cli import main\n"
        f"sys.argv = ['edgeinv', *{list(map(str, args))!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\nprint('torch-free')"
    )
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)


def diffusers_text_states(pipeline, embedding_path, prompt: str) -> np.ndarray:
    """Text-encoder states for `prompt` after diffusers' own load_textual_inversion."""
    import torch

    pipeline.load_textual_inversion(str(embedding_path))
    try:
        ids = pipeline.tokenizer([prompt], padding="max_length", max_length=77, return_tensors="pt").input_ids
        with torch.no_grad():
            return pipeline.text_encoder(ids).last_hidden_state.numpy()
    finally:
        pipeline.unload_textual_inversion()
