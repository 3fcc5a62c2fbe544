"""ONNX generation against diffusers' StableDiffusionPipeline, same scheduler, seed and noise."""

import numpy as np
import pytest

from edgeinv.generate import decode, denoise, generate, initial_noise
from tests.conftest import diffusers_text_states

torch = pytest.importorskip("torch")
# Two runtimes, two sets of kernels: a pixel may round the other way.
MAX_PIXEL_DIFFERENCE = 2  # of 255
MEAN_PIXEL_DIFFERENCE = 0.05


@pytest.mark.parametrize("scheduler", ["ddim", "euler"])
def test_images_match_diffusers(sd, torch_pipeline, scheduler):
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    classes = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler}
    torch_pipeline.scheduler = classes[scheduler].from_config(torch_pipeline.scheduler.config)
    prompt = "a photo of a large green square on the right"
    noise = initial_noise(sd, 2, seed=11)
    ours = generate(sd, prompt, steps=12, guidance=6.0, scheduler=scheduler, n=2, noise=noise)
    theirs = torch_pipeline(prompt, num_inference_steps=12, guidance_scale=6.0, num_images_per_prompt=2,
                            latents=torch.from_numpy(noise), output_type="np").images
    difference = np.abs(ours.astype(int) - (theirs * 255).round().astype(int))
    assert difference.max() <= MAX_PIXEL_DIFFERENCE and difference.mean() <= MEAN_PIXEL_DIFFERENCE, (difference.max(), difference.mean())


def test_same_seed_same_images_other_seed_other_images(sd):
    a = generate(sd, "a red circle", steps=4, n=1, seed=5)
    b = generate(sd, "a red circle", steps=4, n=1, seed=5)
    c = generate(sd, "a red circle", steps=4, n=1, seed=6)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_learned_token_matches_diffusers_load_textual_inversion(sd, torch_pipeline, tmp_path):
    """A file edgeinv writes, loaded by diffusers, conditions the model exactly as edgeinv does."""
    from edgeinv.embedding_files import save_embedding
    from edgeinv.onnx_model import OnnxStableDiffusion

    table = sd.token_table
    red, yellow = sd.tokenizer.token_id("red</w>"), sd.tokenizer.token_id("yellow</w>")
    vector = 0.5 * (table[red] + table[yellow])
    paths = save_embedding(tmp_path, "<mix>", vector)

    model = OnnxStableDiffusion(sd.folder)
    model.add_token("<mix>", vector)
    prompt = "a photo of a <mix> star"
    np.testing.assert_allclose(model.encode_prompts([prompt]), diffusers_text_states(torch_pipeline, paths["diffusers"], prompt), atol=1e-4)


def test_unet_calls_of_one_row_give_the_same_pictures(sd):
    # How `invert`'s samples and `generate` stay under --max-memory on large models.
    whole = denoise(sd, "a photo of a blue square", n=2, steps=4, seed=3)
    one_row_at_a_time = denoise(sd, "a photo of a blue square", n=2, steps=4, seed=3, max_rows=1)
    np.testing.assert_allclose(one_row_at_a_time, whole, atol=1e-5)
    np.testing.assert_array_equal(decode(sd, whole), generate(sd, "a photo of a blue square", n=2, steps=4, seed=3))
