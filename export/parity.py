"""How far each exported graph is from its PyTorch module (used by tests and benchmarks)."""

from __future__ import annotations

import numpy as np

from edgeinv import manifest
from edgeinv.onnx_model import OnnxStableDiffusion

PROMPTS = ["a photo of a large red circle on the left", "a small blue star", ""]


def graph_differences(pipeline, folder, seed: int = 0) -> dict[str, float]:
    """Max absolute difference, ONNX Runtime vs PyTorch, per graph, on random inputs."""
    import torch

    model = OnnxStableDiffusion(folder, device="cpu")
    rng = np.random.default_rng(seed)
    ids = model.tokenizer(PROMPTS)
    with torch.no_grad():
        states = pipeline.text_encoder(torch.from_numpy(ids)).last_hidden_state.numpy()
    diffs = {"text_encoder (inputs_embeds)": np.abs(model.encode_prompts(PROMPTS) - states).max()}
    ids_outputs = model.session(manifest.TEXT_ENCODER_IDS).run(["last_hidden_state"], {"input_ids": ids})[0]
    diffs["text_encoder (input_ids)"] = np.abs(ids_outputs - states).max()

    latents = rng.standard_normal((3, model.latent_channels, model.latent_size, model.latent_size)).astype(np.float32)
    timesteps = np.array([1, 500, 999], np.float32)
    with torch.no_grad():
        expected = pipeline.unet(torch.from_numpy(latents), torch.from_numpy(timesteps), torch.from_numpy(states)).sample.numpy()
    diffs["unet"] = np.abs(model.unet(latents, timesteps, states) - expected).max()

    images = rng.uniform(-1, 1, (2, 3, model.image_size, model.image_size)).astype(np.float32)
    with torch.no_grad():
        posterior = pipeline.vae.encode(torch.from_numpy(images)).latent_dist
        decoded = pipeline.vae.decode(torch.from_numpy(latents[:2])).sample.numpy()
    mean, std = model.vae_encode(images)
    diffs["vae_encoder"] = max(np.abs(mean - posterior.mean.numpy()).max(), np.abs(std - posterior.std.numpy()).max())
    diffs["vae_decoder"] = np.abs(model.vae_decode(latents[:2] * model.vae_scaling_factor) - decoded).max()
    return {k: float(v) for k, v in diffs.items()}
