"""Embedding files round-trip and load in the formats other tools read."""

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from edgeinv.embedding_files import file_stem, load_embedding, save_embedding
from edgeinv.errors import UserError


def test_single_vector_is_1d_in_diffusers_format_and_2d_in_emb_params(tmp_path, rng):
    vector = rng.standard_normal(64).astype(np.float32)
    paths = save_embedding(tmp_path, "<my-cat>", vector)
    assert paths["a1111"].name == "my-cat.safetensors"
    diffusers = load_file(str(paths["diffusers"]))
    assert list(diffusers) == ["<my-cat>"] and diffusers["<my-cat>"].shape == (64,)
    assert load_file(str(paths["a1111"]))["emb_params"].shape == (1, 64)
    for path in paths.values():
        token, vectors = load_embedding(path)
        np.testing.assert_array_equal(vectors, vector[None])
    assert load_embedding(paths["a1111"])[0] == "<my-cat>"
    assert load_embedding(paths["a1111"], token="trigger")[0] == "trigger"


def test_multi_vector_keeps_its_rows(tmp_path, rng):
    vectors = rng.standard_normal((3, 64)).astype(np.float32)
    paths = save_embedding(tmp_path, "<style>", vectors)
    np.testing.assert_array_equal(load_embedding(paths["diffusers"])[1], vectors)


def test_a1111_pt_files_load_with_torch(tmp_path, rng):
    torch = pytest.importorskip("torch")
    vectors = rng.standard_normal((2, 64)).astype(np.float32)
    path = tmp_path / "thing.pt"
    torch.save({"string_to_param": {"*": torch.from_numpy(vectors)}, "string_to_token": {"*": 265}, "name": "thing", "step": 10}, path)
    token, loaded = load_embedding(path)
    assert token == "<thing>"
    np.testing.assert_array_equal(loaded, vectors)


def test_unreadable_and_ambiguous_files(tmp_path, rng):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="bad.safetensors"):
        load_embedding(bad)
    many = tmp_path / "many.safetensors"
    save_file({"a": np.zeros(4, np.float32), "b": np.zeros(4, np.float32)}, str(many))
    with pytest.raises(UserError, match="2 tensors"):
        load_embedding(many)
    with pytest.raises(UserError, match="no such embedding file"):
        load_embedding(tmp_path / "absent.safetensors")
    with pytest.raises(UserError, match="unknown embedding format"):
        (tmp_path / "x.txt").write_text("hi")
        load_embedding(tmp_path / "x.txt")


def test_file_stem_is_safe_on_every_os():
    assert file_stem("<my cat>") == "my-cat"
    assert file_stem("<a/b\\\\c:d>") == "a-b-c-d"
    assert file_stem("<>") == "learned-token"
