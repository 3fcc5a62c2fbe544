"""numpy samplers against diffusers' own, step by step, on random model outputs."""

import numpy as np
import pytest

from edgeinv.schedulers import DDIMScheduler, EulerDiscreteScheduler, alphas_cumprod

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

SD_CONFIG = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
             "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}


def test_noise_schedule_matches():
    reference = diffusers.DDIMScheduler(**SD_CONFIG).alphas_cumprod.numpy()
    np.testing.assert_allclose(alphas_cumprod(SD_CONFIG), reference, rtol=1e-5)  # float32 rounding


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("name", ["ddim", "euler"])
def test_trajectory_matches_diffusers(name, prediction, spacing, rng):
    config = {**SD_CONFIG, "prediction_type": prediction, "timestep_spacing": spacing}
    ours = (DDIMScheduler if name == "ddim" else EulerDiscreteScheduler)(config)
    theirs = (diffusers.DDIMScheduler if name == "ddim" else diffusers.EulerDiscreteScheduler).from_config(config)
    ours.set_timesteps(12)
    theirs.set_timesteps(12)
    np.testing.assert_allclose(ours.timesteps, theirs.timesteps.numpy(), rtol=1e-6)
    assert ours.init_noise_sigma == pytest.approx(float(theirs.init_noise_sigma), rel=1e-5)
    sample = rng.standard_normal((2, 4, 8, 8)).astype(np.float32) * np.float32(ours.init_noise_sigma)
    reference = torch.from_numpy(sample.copy())
    for t, their_t in zip(ours.timesteps, theirs.timesteps):
        output = rng.standard_normal(sample.shape).astype(np.float32)
        model_in = ours.scale_model_input(sample, t)
        np.testing.assert_allclose(model_in, theirs.scale_model_input(reference, their_t).numpy(), rtol=1e-4, atol=1e-4)
        sample = ours.step(output, t, sample)
        reference = theirs.step(torch.from_numpy(output), their_t, reference).prev_sample
        np.testing.assert_allclose(sample, reference.numpy(), rtol=1e-4, atol=1e-4)
