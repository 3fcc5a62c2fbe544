"""Samplers in numpy, driven by the exported `scheduler_config.json` (diffusers' format).

Two small objects with diffusers' semantics, so edgeinv's pictures match diffusers':
`DDIMScheduler` (eta = 0) and `EulerDiscreteScheduler`. Both read the noise schedule
(`beta_schedule`, `beta_start`, `beta_end`, `num_train_timesteps`), `prediction_type`
(epsilon or v_prediction), `timestep_spacing` and `steps_offset` from the config.
"""

from __future__ import annotations

import numpy as np


def alphas_cumprod(config: dict) -> np.ndarray:
    n = int(config.get("num_train_timesteps", 1000))
    start, end = float(config.get("beta_start", 0.00085)), float(config.get("beta_end", 0.012))
    schedule = config.get("beta_schedule", "scaled_linear")
    if schedule == "scaled_linear":
        betas = np.linspace(start**0.5, end**0.5, n, dtype=np.float64) ** 2
    elif schedule == "linear":
        betas = np.linspace(start, end, n, dtype=np.float64)
    else:
        raise ValueError(f"beta_schedule {schedule!r} is not supported (scaled_linear, linear)")
    # diffusers computes the schedule in float32; do the same so the numbers agree.
    return np.cumprod(1.0 - betas.astype(np.float32), dtype=np.float32)


def spaced_timesteps(config: dict, steps: int, fractional_linspace: bool = False) -> np.ndarray:
    n = int(config.get("num_train_timesteps", 1000))
    spacing = config.get("timestep_spacing", "leading")
    if spacing == "leading":
        ratio = n // steps
        timesteps = (np.arange(steps) * ratio).round()[::-1].astype(np.int64) + int(config.get("steps_offset", 0))
    elif spacing == "trailing":
        timesteps = np.round(np.arange(n, 0, -n / steps)).astype(np.int64) - 1
    elif spacing == "linspace" and fractional_linspace:  # Euler keeps fractional steps
        timesteps = np.linspace(0, n - 1, steps, dtype=np.float64)[::-1].astype(np.float32)
    elif spacing == "linspace":
        timesteps = np.linspace(0, n - 1, steps).round()[::-1].astype(np.int64)
    else:
        raise ValueError(f"timestep_spacing {spacing!r} is not supported")
    return timesteps


def predicted_original_and_noise(model_output, sample, alpha_prod, prediction_type):
    a, s = np.sqrt(alpha_prod), np.sqrt(1.0 - alpha_prod)
    if prediction_type == "epsilon":
        return (sample - s * model_output) / a, model_output
    if prediction_type == "v_prediction":
        return a * sample - s * model_output, a * model_output + s * sample
    raise ValueError(f"prediction_type {prediction_type!r} is not supported (epsilon, v_prediction)")


class DDIMScheduler:
    """Deterministic DDIM (eta = 0), as diffusers' DDIMScheduler."""

    def __init__(self, config: dict):
        self.config = config
        self.alphas_cumprod = alphas_cumprod(config)
        self.final_alpha_cumprod = np.float32(1.0) if config.get("set_alpha_to_one", True) else self.alphas_cumprod[0]
        self.prediction_type = config.get("prediction_type", "epsilon")
        self.init_noise_sigma = 1.0
        self.timesteps = np.zeros(0, dtype=np.int64)

    def set_timesteps(self, steps: int) -> None:
        self.timesteps = spaced_timesteps(self.config, steps)
        self._ratio = int(self.config.get("num_train_timesteps", 1000)) // steps

    def scale_model_input(self, sample: np.ndarray, timestep: int) -> np.ndarray:
        return sample

    def step(self, model_output: np.ndarray, timestep: int, sample: np.ndarray) -> np.ndarray:
        previous = timestep - self._ratio
        alpha_prod = self.alphas_cumprod[timestep]
        alpha_prev = self.alphas_cumprod[previous] if previous >= 0 else self.final_alpha_cumprod
        original, noise = predicted_original_and_noise(model_output, sample, alpha_prod, self.prediction_type)
        if self.config.get("clip_sample", False):
            limit = float(self.config.get("clip_sample_range", 1.0))
            original = np.clip(original, -limit, limit)
        return (np.sqrt(alpha_prev) * original + np.sqrt(1.0 - alpha_prev) * noise).astype(np.float32)


class EulerDiscreteScheduler:
    """Euler in sigma space, as diffusers' EulerDiscreteScheduler (no churn)."""

    def __init__(self, config: dict):
        self.config = config
        self.alphas_cumprod = alphas_cumprod(config)
        self.prediction_type = config.get("prediction_type", "epsilon")
        self.timesteps = np.zeros(0, dtype=np.int64)
        self.init_noise_sigma = 1.0

    def set_timesteps(self, steps: int) -> None:
        self.timesteps = spaced_timesteps(self.config, steps, fractional_linspace=True).astype(np.float32)
        all_sigmas = np.sqrt((1 - self.alphas_cumprod) / self.alphas_cumprod)
        sigmas = np.interp(self.timesteps.astype(np.float64), np.arange(len(all_sigmas)), all_sigmas)
        self.sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
        top = float(self.sigmas.max())
        spacing = self.config.get("timestep_spacing", "leading")
        self.init_noise_sigma = top if spacing in ("linspace", "trailing") else float(np.sqrt(top**2 + 1))
        self._index = {float(t): i for i, t in enumerate(self.timesteps)}

    def scale_model_input(self, sample: np.ndarray, timestep: int) -> np.ndarray:
        sigma = self.sigmas[self._index[float(timestep)]]
        return (sample / np.sqrt(sigma**2 + 1)).astype(np.float32)

    def step(self, model_output: np.ndarray, timestep: int, sample: np.ndarray) -> np.ndarray:
        i = self._index[float(timestep)]
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        if self.prediction_type == "epsilon":
            original = sample - sigma * model_output
        elif self.prediction_type == "v_prediction":
            original = model_output * (-sigma / np.sqrt(sigma**2 + 1)) + sample / (sigma**2 + 1)
        else:
            raise ValueError(f"prediction_type {self.prediction_type!r} is not supported (epsilon, v_prediction)")
        derivative = (sample - original) / sigma
        return (sample + derivative * (sigma_next - sigma)).astype(np.float32)


SCHEDULERS = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler}


def make_scheduler(name: str, config: dict):
    return SCHEDULERS[name](config)
