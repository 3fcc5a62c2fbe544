"""`--vectors N`: tokens of several vectors, searched, trained, saved, loaded by diffusers and drawn."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file

from edgeinv.embedding_files import save_embedding
from edgeinv.generate import add_embedding, expand_multi_vector_tokens, generate
from edgeinv.config import InvertConfig
from edgeinv.invert import invert
from edgeinv.onnx_model import OnnxStableDiffusion

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "orange-cross"
FAST = dict(images=str(EXAMPLE), budget=4, dim=4, samples=2, heldout=4, init=["red"], dvar_window=40)


def onnx_states(folder, token: str, vectors: np.ndarray, prompt: str) -> np.ndarray:
    model = OnnxStableDiffusion(folder)
    multi: dict[str, int] = {}
    add_embedding(model, token, vectors, multi)
    return model.encode_prompts([expand_multi_vector_tokens(prompt, multi)])


def diffusers_states(pipeline, path: Path, prompt: str, token: str | None = None) -> np.ndarray:
    """diffusers' own loader and its own multi-vector prompt expansion (maybe_convert_prompt)."""
    import torch

    pipeline.load_textual_inversion(str(path), token=token)
    try:
        expanded = pipeline.maybe_convert_prompt(prompt, pipeline.tokenizer)
        ids = pipeline.tokenizer([expanded], padding="max_length", max_length=77, return_tensors="pt").input_ids
        with torch.no_grad():
            return pipeline.text_encoder(ids).last_hidden_state.numpy()
    finally:
        pipeline.unload_textual_inversion()


@pytest.fixture(scope="module", params=["cma-es", "zo-sgd"])
def three_vector_run(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    config = InvertConfig(**FAST, optimizer=request.param, token="<tri>", vectors=3, popsize=4 if request.param == "cma-es" else None,
                          lr=0.2 if request.param == "zo-sgd" else None)
    result = invert(config, out, warn=lambda m: None)
    return result, save_embedding(out, "<tri>", result.vector)


def test_each_vector_searches_its_own_subspace(three_vector_run, sd):
    result, _ = three_vector_run
    start = sd.token_table[sd.tokenizer.token_id("red</w>")]
    assert result.vector.shape == (3, 64)
    last = result.trajectory[max(result.trajectory)]
    moves = last - start  # all three started as copies of "red"
    assert all(np.linalg.norm(m) > 0 for m in moves)
    assert not np.allclose(moves[0], moves[1]) and not np.allclose(moves[1], moves[2])  # independent coordinates


def test_three_vector_files_load_in_diffusers_like_onnx(three_vector_run, sd, torch_pipeline):
    pytest.importorskip("torch")
    result, paths = three_vector_run
    assert load_file(str(paths["a1111"]))["emb_params"].shape == (3, 64)
    assert load_file(str(paths["diffusers"]))["<tri>"].shape == (3, 64)
    prompt = "a photo of a <tri> on the left"
    ours = onnx_states(sd.folder, "<tri>", result.vector, prompt)
    np.testing.assert_allclose(ours, diffusers_states(torch_pipeline, paths["diffusers"], prompt), atol=1e-4)
    np.testing.assert_allclose(ours, diffusers_states(torch_pipeline, paths["a1111"], prompt, token="<tri>"), atol=1e-4)
    # all three vectors condition the prompt: dropping the last two changes the states
    assert np.abs(ours - onnx_states(sd.folder, "<tri>", result.vector[:1], prompt)).max() > 1e-3


def test_visual_init_starts_from_the_best_n_words(sd):
    from edgeinv.data import load_images
    from edgeinv.embedding_files import token_names
    from edgeinv.initialisation import initial_vectors, visual_init
    from edgeinv.objective import LatentCache, Objective, draw_evaluation_set

    model = OnnxStableDiffusion(sd.folder)
    ids = [model.tokenizer.add_token(name) for name in token_names("<vis>", 2)]
    objective = Objective(model, ids, "<vis>", "object")
    cache = LatentCache.encode(model, load_images(EXAMPLE, model.image_size).images)
    frozen = draw_evaluation_set(cache, len(objective.captions), 4, np.random.default_rng(0), model.vae_scaling_factor, in_order=True)
    config = InvertConfig(images=str(EXAMPLE), vectors=2, init_candidates=30)
    e0, ranking = initial_vectors(config, objective, model, frozen)
    assert e0.shape == (2, 64)
    words = [w for w, _ in ranking[:2]]
    np.testing.assert_array_equal(e0, np.stack([model.token_table[model.tokenizer.token_id(w + "</w>")] for w in words]))
    assert words[0] != words[1] and ranking[0][1] <= ranking[1][1]
    _, ranking_again = visual_init(objective, model, frozen, 30)
    assert ranking_again == ranking


def test_generate_draws_a_multi_vector_file(three_vector_run, sd, tmp_path):
    result, paths = three_vector_run
    picture = tmp_path / "tri.png"
    done = subprocess.run([sys.executable, "-m", "edgeinv.cli", "generate", "a photo of a <tri>", "--embedding", str(paths["a1111"]), "--token", "<tri>",
                           "-n", "1", "--steps", "3", "--seed", "4", "--out", str(picture)], capture_output=True, text=True)
    assert done.returncode == 0 and "warning" not in done.stderr, done.stderr
    drawn = np.asarray(Image.open(picture))
    model = OnnxStableDiffusion(sd.folder)
    multi: dict[str, int] = {}
    add_embedding(model, "<tri>", result.vector, multi)
    np.testing.assert_array_equal(drawn, generate(model, "a photo of a <tri>", steps=3, n=1, seed=4, multi_vector_tokens=multi)[0])
    assert not np.array_equal(drawn, generate(model, "a photo of a <tri>", steps=3, n=1, seed=4)[0])  # unexpanded: only the first vector


def test_textual_inversion_learns_every_vector(tmp_path, torch_pipeline, sd):
    pytest.importorskip("torch")
    from edgeinv.gradient.torch_model import TorchStableDiffusion
    from edgeinv.gradient.train import train
    from tests.conftest import DIFFUSERS_DIR

    model = TorchStableDiffusion(DIFFUSERS_DIR, device="cpu")
    config = InvertConfig(images=str(EXAMPLE), method="ti", init=["star"], token="<ti3>", vectors=3, budget=4, heldout=8, seed=3, lr=2e-2)
    result, method = train(config, tmp_path / "run", model=model)
    start = sd.token_table[sd.tokenizer.token_id("star</w>")]
    assert tuple(method.token.shape) == (3, 64) and result.vector.shape == (3, 64)
    assert all(np.abs(row - start).max() > 1e-3 for row in result.trajectory[3])  # every vector learned
    path = save_embedding(tmp_path, "<ti3>", result.vector)["diffusers"]
    prompt = "a photo of a <ti3>"
    np.testing.assert_allclose(onnx_states(sd.folder, "<ti3>", result.vector, prompt), diffusers_states(torch_pipeline, path, prompt), atol=1e-4)
