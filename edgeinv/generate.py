"""Text-to-image sampling on the ONNX graphs alone (no torch), with classifier-free guidance.

Mirrors diffusers' StableDiffusionPipeline: the same tokenisation, the empty negative prompt
as the unconditional branch, initial noise scaled by the scheduler's `init_noise_sigma`,
latents divided by the VAE's scaling factor before decoding. Given the same initial noise it
gives diffusers' pictures (tests/test_generate.py measures how closely).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edgeinv.embedding_files import token_names
from edgeinv.onnx_model import OnnxStableDiffusion
from edgeinv.schedulers import make_scheduler


def expand_multi_vector_tokens(prompt: str, multi: dict[str, int]) -> str:
    """"a <tok>" -> "a <tok> <tok>_1 <tok>_2" for a 3-vector token, as diffusers does."""
    for token, count in multi.items():
        if count > 1:
            prompt = prompt.replace(token, " ".join(token_names(token, count)))
    return prompt


def add_embedding(model: OnnxStableDiffusion, token: str, vectors: np.ndarray, multi: dict[str, int]) -> None:
    for name, vector in zip(token_names(token, len(vectors)), vectors):
        model.add_token(name, vector)
    multi[token] = len(vectors)


def initial_noise(model: OnnxStableDiffusion, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, model.latent_channels, model.latent_size, model.latent_size)).astype(np.float32)


def generate(model: OnnxStableDiffusion, prompt: str, **options) -> np.ndarray:
    """Images [n, H, W, 3] uint8 for one prompt (`denoise`'s options)."""
    return decode(model, denoise(model, prompt, **options))


def decode(model: OnnxStableDiffusion, latents: np.ndarray) -> np.ndarray:
    """Latents -> images [n, H, W, 3] uint8, one at a time: at 512 px the VAE decoder's
    activations are several hundred MB per picture."""
    return np.concatenate([to_uint8(model.vae_decode(latents[i : i + 1])) for i in range(len(latents))])


def denoise(
    model: OnnxStableDiffusion,
    prompt: str,
    *,
    negative_prompt: str = "",
    steps: int = 25,
    guidance: float = 7.5,
    scheduler: str = "ddim",
    n: int = 1,
    seed: int = 0,
    noise: np.ndarray | None = None,
    multi_vector_tokens: dict[str, int] | None = None,
    progress: Callable[[int, int], None] | None = None,
    max_rows: int | None = None,
) -> np.ndarray:
    """The final latents [n, c, h, w] of sampling one prompt; UNet calls of at most `max_rows`
    rows (each row adds ~0.1 GB of activations at SD 1.5's size; None: all 2n at once)."""
    prompt = expand_multi_vector_tokens(prompt, multi_vector_tokens or {})
    sampler = make_scheduler(scheduler, model.scheduler_config)
    sampler.set_timesteps(steps)
    latents = (initial_noise(model, n, seed) if noise is None else noise.astype(np.float32)) * np.float32(sampler.init_noise_sigma)

    guided = guidance > 1.0
    prompts = ([negative_prompt] * n if guided else []) + [prompt] * n
    text_states = model.encode_prompts(prompts)
    for i, t in enumerate(sampler.timesteps):
        latent_input = np.concatenate([latents, latents]) if guided else latents
        latent_input = sampler.scale_model_input(latent_input, t)
        chunk = max_rows or len(latent_input)
        timesteps = np.full(len(latent_input), t, dtype=np.float32)
        prediction = np.concatenate([model.unet(latent_input[j : j + chunk], timesteps[j : j + chunk], text_states[j : j + chunk])
                                     for j in range(0, len(latent_input), chunk)])
        if guided:
            unconditional, conditional = np.split(prediction, 2)
            prediction = unconditional + guidance * (conditional - unconditional)
        latents = sampler.step(prediction, t, latents)
        if progress:
            progress(i + 1, len(sampler.timesteps))
    return latents


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[b, 3, H, W] in [-1, 1] -> [b, H, W, 3] uint8, rounded as diffusers' numpy_to_pil."""
    images = np.clip(images / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1)
    return (images * 255).round().astype(np.uint8)


def image_grid(images: list[np.ndarray] | np.ndarray, columns: int) -> np.ndarray:
    images = list(images)
    rows = (len(images) + columns - 1) // columns
    height, width, channels = images[0].shape
    grid = np.zeros((rows * height, columns * width, channels), dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[r * height : (r + 1) * height, c * width : (c + 1) * width] = image
    return grid
