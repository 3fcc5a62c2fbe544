import numpy as np
import pytest

from edgeinv.errors import UserError
from edgeinv.tokenizer import ClipTokenizer
from tests.conftest import ONNX_DIR

PROMPTS = ["a photo of a cat", "A Photo of  a RED circle!", "an orange star, on the left's side 123", "x " * 100, "", "café naïve — ok"]


@pytest.fixture(scope="module")
def tokenizer():
    return ClipTokenizer(ONNX_DIR / "tokenizer")


def test_ids_match_stable_diffusion_1x(tokenizer):
    # The ids SD 1.x's tokenizer gives (openai/clip-vit-large-patch14).
    ids = tokenizer("a photo of a cat")[0]
    assert ids[:7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert (ids[7:] == 49407).all() and ids.shape == (77,)
    assert tokenizer.base_vocab_size == 49408


def test_matches_transformers_clip_tokenizer(tokenizer):
    transformers = pytest.importorskip("transformers")
    reference = transformers.CLIPTokenizer.from_pretrained(str(ONNX_DIR / "tokenizer"))
    expected = reference(PROMPTS, padding="max_length", max_length=77, truncation=True)["input_ids"]
    np.testing.assert_array_equal(tokenizer(PROMPTS), np.array(expected))


def test_long_prompts_are_truncated_with_eos(tokenizer):
    ids = tokenizer("x " * 100)[0]
    assert len(ids) == 77 and ids[0] == 49406 and ids[-1] == 49407


def test_added_token_takes_the_next_id_like_diffusers(tokenizer):
    tok = ClipTokenizer(ONNX_DIR / "tokenizer")
    token_id = tok.add_token("<shape-x>")
    assert token_id == 49408
    ids = tok("a photo of a <shape-x> on the left")[0]
    assert ids[:6].tolist() == [49406, 320, 1125, 539, 320, 49408]
    assert tok.add_token("<shape-y>") == 49409


def test_existing_word_cannot_be_a_new_token():
    tok = ClipTokenizer(ONNX_DIR / "tokenizer")
    with pytest.raises(UserError, match="already a word"):
        tok.add_token("circle")
    tok.add_token("<x>")
    with pytest.raises(UserError, match="already"):
        tok.add_token("<x>")


def test_missing_tokenizer_files_name_the_folder(tmp_path):
    with pytest.raises(UserError, match=str(tmp_path)):
        ClipTokenizer(tmp_path)
