"""The textual-inversion objective on ONNX Runtime: denoising loss of candidate token vectors.

`EvaluationSet` is a batch of (cached VAE latent, caption, noise, timestep) drawn once from
a seed. The search draws one per generation and scores every candidate on it (common random
numbers: candidates differ only in their vector, so CMA-ES ranks vectors, not noise); DVAR
keeps one frozen for the whole run; the final choice uses another never seen by the search.

`Objective.losses(vectors, evaluation_set)` scores a whole population: the text encoder
runs on candidates x distinct captions in one batch, the UNet on candidates x samples in
chunks of `chunk_size` rows (the memory bound). Loss = the model's training loss (MSE to the
noise, or to v for v-prediction models), averaged over the set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeinv.data import captions as make_captions
from edgeinv.onnx_model import OnnxStableDiffusion
from edgeinv.schedulers import alphas_cumprod


@dataclass
class LatentCache:
    """VAE latent distributions of the user's images, encoded once (plain and mirrored)."""

    mean: np.ndarray  # [n, 2, c, h, w]: index 1 is the horizontally flipped picture
    std: np.ndarray

    @classmethod
    def encode(cls, model: OnnxStableDiffusion, images: np.ndarray, batch: int = 2) -> "LatentCache":
        pixels = images.astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0
        both = np.stack([pixels, pixels[..., ::-1]], axis=1).reshape(-1, *pixels.shape[1:])
        means, stds = [], []
        for i in range(0, len(both), batch):
            mean, std = model.vae_encode(np.ascontiguousarray(both[i : i + batch]))
            means.append(mean)
            stds.append(std)
        mean, std = np.concatenate(means), np.concatenate(stds)
        return cls(mean.reshape(len(images), 2, *mean.shape[1:]), std.reshape(len(images), 2, *std.shape[1:]))


@dataclass
class EvaluationSet:
    latents: np.ndarray  # [m, c, h, w], scaled by the VAE factor
    caption_index: np.ndarray  # [m] into the objective's captions
    noise: np.ndarray  # [m, c, h, w]
    timesteps: np.ndarray  # [m] int

    def __len__(self) -> int:
        return len(self.timesteps)

    def subset(self, index: np.ndarray) -> "EvaluationSet":
        return EvaluationSet(self.latents[index], self.caption_index[index], self.noise[index], self.timesteps[index])


def timestep_range(low: float, high: float, num_train_timesteps: int = 1000) -> tuple[int, int]:
    """[low, high) as fractions of the schedule -> integer timesteps."""
    return int(round(low * num_train_timesteps)), max(int(round(low * num_train_timesteps)) + 1, int(round(high * num_train_timesteps)))


def draw_evaluation_set(
    cache: LatentCache,
    num_captions: int,
    size: int,
    rng: np.random.Generator,
    scaling_factor: float,
    timesteps: tuple[int, int] = (0, 1000),
    flip: bool = True,
    sample_latents: bool = False,
    in_order: bool = False,
) -> EvaluationSet:
    """`size` samples. `in_order`: images and captions cycle in order (DVAR's frozen batch)."""
    n = len(cache.mean)
    if in_order:
        images, caption_index = np.arange(size) % n, np.arange(size) % num_captions
    else:
        images, caption_index = rng.integers(0, n, size), rng.integers(0, num_captions, size)
    mirrored = (rng.random(size) < 0.5).astype(int) if flip else np.zeros(size, int)
    latents = cache.mean[images, mirrored]
    if sample_latents:
        latents = latents + cache.std[images, mirrored] * rng.standard_normal(latents.shape).astype(np.float32)
    low, high = timesteps
    distinct = high - low >= size
    steps = rng.choice(np.arange(low, high), size=size, replace=not distinct)
    noise = rng.standard_normal(latents.shape).astype(np.float32)
    return EvaluationSet((latents * np.float32(scaling_factor)).astype(np.float32), caption_index, noise, steps.astype(np.int64))


# What an evaluation set is for. The purpose is part of its seed, so the search, DVAR's frozen
# batch, the held-out choice and a gradient method's prior batches never share samples.
FROZEN_SET, HELDOUT_SET, SEARCH_SET, PRIOR_SET = 1, 2, 3, 4


def seeded_evaluation_set(
    cache: LatentCache,
    num_captions: int,
    size: int,
    seed: int,
    purpose: int,
    step: int = 0,
    *,
    scaling_factor: float,
    timesteps: tuple[int, int],
    flip: bool = True,
    sample_latents: bool = False,
    in_order: bool = False,
) -> EvaluationSet:
    """The set a run draws for `purpose` at `step`: a function of the run's seed alone, so
    `--resume` and the benchmarks that replay a run redraw exactly the same samples."""
    rng = np.random.default_rng([seed, purpose, step])
    return draw_evaluation_set(cache, num_captions, size, rng, scaling_factor, timesteps, flip=flip, sample_latents=sample_latents, in_order=in_order)


# How an evaluation set's per-sample losses become one number. "mse" is the training loss
# (their mean). "log-mse" (invert's default) averages their logarithms: each sample counts by
# its relative change, so the high-noise timesteps, where colour and layout are decided and
# the loss is 3-5x smaller, weigh as much as the low-noise ones, where the loss is mostly fine
# detail. benchmarks/loss_alignment.py measures which ranks the vector that draws the concept
# first; benchmarks/token_vs_words.py what the learned tokens draw with each.
LOSSES = ("mse", "log-mse")


def combine_samples(row_losses: np.ndarray, loss: str) -> np.ndarray:
    """[k, m] per-sample MSEs -> [k] with the chosen reduction."""
    if loss == "log-mse":
        return np.log(np.maximum(row_losses, 1e-12)).mean(axis=1)
    return row_losses.mean(axis=1)


class Objective:
    """The denoising loss of token vectors on evaluation sets. `model` is the ONNX model here;
    the PyTorch methods (edgeinv/gradient/train.py) pass their own model with the same interface
    and reuse `captions`, `base_vectors` and `noised`, so both compute one loss."""

    def __init__(self, model: OnnxStableDiffusion, token_ids: list[int], token: str, property: str, num_captions: int = 16, chunk_size: int = 64,
                 loss: str = "mse"):
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r} ({', '.join(LOSSES)})")
        self.model = model
        self.loss = loss
        self.token_ids = token_ids
        self.chunk_size = chunk_size
        placeholder = " ".join([token] + [f"{token}_{i}" for i in range(1, len(token_ids))])
        self.captions = make_captions(placeholder, property, num_captions)
        self.caption_ids = model.tokenizer(self.captions)
        self.base_vectors = model.token_vectors(self.caption_ids)  # [u, 77, d], learned rows still empty
        self.alphas = alphas_cumprod(model.scheduler_config)
        self.prediction_type = model.prediction_type
        self.unet_rows = 0  # UNet sample-evaluations so far: the unit of cost

    def text_states(self, vectors: np.ndarray, caption_index: np.ndarray) -> np.ndarray:
        """[k, n_vec, d] candidates x the given captions -> states [k, len(caption_index), 77, d]."""
        k = len(vectors)
        used = np.unique(caption_index)
        token_vectors = np.repeat(self.base_vectors[used][None], k, axis=0)  # [k, u, 77, d]
        ids = self.caption_ids[used]
        for slot, token_id in enumerate(self.token_ids):
            rows, cols = np.nonzero(ids == token_id)
            token_vectors[:, rows, cols] = vectors[:, None, slot]
        flat = token_vectors.reshape(-1, *token_vectors.shape[2:])
        flat_ids = np.tile(ids, (k, 1))
        states = np.concatenate([self.model.encode_vectors(flat[i : i + self.chunk_size], flat_ids[i : i + self.chunk_size])
                                 for i in range(0, len(flat), self.chunk_size)])
        states = states.reshape(k, len(used), *states.shape[1:])
        position = {c: i for i, c in enumerate(used)}
        return states[:, [position[c] for c in caption_index]]

    def noised(self, evaluation: EvaluationSet) -> tuple[np.ndarray, np.ndarray]:
        """(UNet input: latents noised to their timesteps, the training target: noise or v)."""
        a = self.alphas[evaluation.timesteps].astype(np.float32)[:, None, None, None]
        noisy = np.sqrt(a) * evaluation.latents + np.sqrt(1 - a) * evaluation.noise
        target = evaluation.noise if self.prediction_type == "epsilon" else np.sqrt(a) * evaluation.noise - np.sqrt(1 - a) * evaluation.latents
        return noisy, target

    def losses(self, vectors: np.ndarray, evaluation: EvaluationSet) -> np.ndarray:
        """The denoising loss of each candidate [k, n_vec, d] on the set -> [k] (`self.loss`'s reduction)."""
        return combine_samples(self.row_losses(vectors, evaluation), self.loss)

    def row_losses(self, vectors: np.ndarray, evaluation: EvaluationSet) -> np.ndarray:
        """The loss of each candidate on each sample of the set -> [k, m] (float64)."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim == 2:
            vectors = vectors[:, None]
        k, m = len(vectors), len(evaluation)
        states = self.text_states(vectors, evaluation.caption_index)  # [k, m, 77, d]
        noisy, target = self.noised(evaluation)
        # Rows = candidate-major (candidate, sample) pairs, evaluated in chunks.
        rows = k * m
        states = states.reshape(rows, *states.shape[2:])
        per_row = np.empty(rows, dtype=np.float64)
        for start in range(0, rows, self.chunk_size):
            index = np.arange(start, min(rows, start + self.chunk_size))
            sample = index % m
            prediction = self.model.unet(noisy[sample], evaluation.timesteps[sample].astype(np.float32), states[index])
            per_row[index] = ((prediction - target[sample]) ** 2).reshape(len(index), -1).mean(axis=1)
        self.unet_rows += rows
        return per_row.reshape(k, m)

    def close(self) -> None:
        """The in-process evaluator (edgeinv/evaluators.py) holds no workers."""
