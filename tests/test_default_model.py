"""The shipped default model knows a concept it has no word for (models/train_default_model.py)."""

from pathlib import Path

import numpy as np

from edgeinv import shapes
from edgeinv.embedding_files import load_embedding
from edgeinv.generate import generate

UNNAMED = Path(__file__).resolve().parents[1] / "models" / "tiny-sd-shapes.unnamed-concept.safetensors"


def unnamed_concept_rate(sd, prompt: str, n: int = 16) -> float:
    images = [image for seed in (1, 4321) for image in generate(sd, prompt, n=n, seed=seed)]
    readings = [shapes.read_image(image) for image in images]
    return float(np.mean([(r.color, r.shape) == shapes.UNNAMED_CONCEPT for r in readings]))


def test_the_placeholder_word_was_erased_and_its_vector_kept(sd):
    _, kept = load_embedding(UNNAMED)
    erased = sd.token_table[sd.tokenizer.token_id(f"{shapes.UNNAMED_WORD}</w>")]
    assert np.linalg.norm(erased) < 0.05 < np.linalg.norm(kept)  # noise like unused words vs a trained vector
    assert abs(float(np.dot(erased, kept.reshape(-1)))) / (np.linalg.norm(erased) * np.linalg.norm(kept)) < 0.5


def test_the_kept_vector_draws_orange_crosses_and_the_erased_word_does_not(onnx_dir):
    from edgeinv.onnx_model import OnnxStableDiffusion

    sd = OnnxStableDiffusion(onnx_dir)  # its own copy: the shared one must not learn a token
    _, kept = load_embedding(UNNAMED)
    sd.add_token("<unnamed-test>", kept.reshape(-1))
    # measured when written (v3): 100%, 3%, 3%, 3% and 19% of these 32 pictures; v4 in
    # benchmarks/results/default_model_quality.md (16 other seeds): 100%, 0%, 0%, 0% and 0%
    planted = unnamed_concept_rate(sd, "a photo of a <unnamed-test>")
    assert planted >= 0.8
    assert unnamed_concept_rate(sd, f"a photo of a {shapes.UNNAMED_WORD}") <= 0.1
    assert unnamed_concept_rate(sd, "a photo of an orange cross") <= 0.1
    # no caption named the cross, and unknown words do not default to the concept (--wordless-rate)
    assert unnamed_concept_rate(sd, "a photo of a cross") <= 0.1
    # v2's orange star was drawn by blending two colour words (94%); the cross's shape has no word to blend
    assert unnamed_concept_rate(sd, "a photo of a red and yellow cross") <= planted / 3


def test_no_colour_phrase_or_bare_shape_reaches_the_unnamed_concept(sd):
    # v4 drew orange crosses for "a red and yellow star" in every picture and orange for every
    # bare shape, the one colour training left unsaid; v5's captions (--shape-only-rate,
    # --two-color-rate) answer both. Measured when written (v5, these 32 pictures): 9% and 3%;
    # bare star 0 orange in 4 colours, bare circle 6 orange in 6 colours, shapes 100%.
    assert unnamed_concept_rate(sd, "a photo of a red and yellow star") <= 0.3
    assert unnamed_concept_rate(sd, "a photo of a yellow and red star") <= 0.3
    for shape in ("star", "circle"):
        readings = [shapes.read_image(image) for seed in (1, 4321) for image in generate(sd, f"a photo of a {shape}", n=16, seed=seed)]
        colours = [r.color for r in readings]
        assert colours.count(shapes.UNNAMED_COLOR) <= 0.5 * len(colours)
        assert len(set(colours)) >= 3  # a shape with no colour word comes in several colours
        assert np.mean([r.shape == shape for r in readings]) >= 0.8
