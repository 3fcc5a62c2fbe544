"""The PyTorch methods: one objective with the ONNX path, outputs that diffusers loads, exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgeinv.errors import UserError  # noqa: E402
from edgeinv.config import InvertConfig  # noqa: E402
from edgeinv.objective import LatentCache, Objective, draw_evaluation_set  # noqa: E402
from tests.conftest import DIFFUSERS_DIR, diffusers_text_states  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "orange-cross"


def torch_model():
    from edgeinv.gradient.torch_model import TorchStableDiffusion

    return TorchStableDiffusion(DIFFUSERS_DIR, device="cpu")


def config(method: str, **overrides) -> InvertConfig:
    settings = dict(images=str(EXAMPLE), method=method, init=["star"], token=f"<{method}>", budget=4, heldout=8, seed=3)
    return InvertConfig(**{**settings, **overrides})


def frozen_set(model, objective, images, seed=5):
    cache = LatentCache.encode(model, images)
    return draw_evaluation_set(cache, len(objective.captions), 12, np.random.default_rng(seed), model.vae_scaling_factor)


def test_pytorch_and_onnx_give_the_same_loss(sd):
    from edgeinv.data import load_images
    from edgeinv.gradient.train import training_loss

    model = torch_model()
    images = load_images(EXAMPLE, sd.image_size).images
    vectors = np.stack([sd.token_table[sd.tokenizer.token_id(w + "</w>")] for w in ("star", "red", "photo")])[:, None]
    losses = {}
    for name, backend in (("onnx", sd), ("torch", model)):
        objective = Objective(backend, [backend.tokenizer.add_token("<same>")], "<same>", "object")
        losses[name] = objective.losses(vectors, frozen_set(backend, objective, images))
    np.testing.assert_allclose(losses["torch"], losses["onnx"], rtol=1e-4)
    assert np.ptp(losses["onnx"]) > 1e-4  # the three words really score differently

    # The differentiable loss the optimisers use is the same number again.
    objective = Objective(model, [model.tokenizer.token_id("<same>")], "<same>", "object")
    evaluation = frozen_set(model, objective, images)
    differentiable = training_loss(objective, model, torch.from_numpy(vectors[1]), evaluation)
    assert float(differentiable) == pytest.approx(float(objective.losses(vectors[1:2], evaluation)[0]), rel=1e-5)
    objective.loss = "log-mse"  # and so is the log-mse variant (--loss log-mse)
    differentiable = training_loss(objective, model, torch.from_numpy(vectors[1]), evaluation)
    assert float(differentiable) == pytest.approx(float(objective.losses(vectors[1:2], evaluation)[0]), rel=1e-5)
    assert float(differentiable) < 0  # logs of MSEs below 1: really the other reduction


def test_textual_inversion_moves_only_the_token(tmp_path):
    from edgeinv.gradient.train import train

    model = torch_model()
    table = model.pipeline.text_encoder.get_input_embeddings().weight.detach().clone()
    unet = {k: v.clone() for k, v in model.unet_module.state_dict().items()}
    result, method = train(config("ti", budget=6, lr=2e-2), tmp_path / "run", model=model)
    start = model.token_table[model.tokenizer.token_id("star</w>")]
    assert np.abs(result.trajectory[5][0] - start).max() > 1e-3  # the token learned
    assert torch.equal(model.pipeline.text_encoder.get_input_embeddings().weight, table)  # no other row moved
    assert all(torch.equal(v, model.unet_module.state_dict()[k]) for k, v in unet.items())
    assert [s.step for s in result.history] == list(range(6))
    assert result.chosen.startswith(("step@", "init"))
    assert len((tmp_path / "run" / "history.jsonl").read_text().splitlines()) == 6


def test_textual_inversion_file_loads_in_diffusers(tmp_path, torch_pipeline):
    from edgeinv.embedding_files import save_embedding
    from edgeinv.gradient.train import train

    model = torch_model()
    result, _ = train(config("ti", lr=2e-2), None, model=model)
    paths = save_embedding(tmp_path, "<ti>", result.vector)
    model.learned[model.tokenizer.token_id("<ti>")] = result.vector[0]
    ours = model.encode_prompts(["a photo of a <ti>"])
    theirs = diffusers_text_states(torch_pipeline, paths["diffusers"], "a photo of a <ti>")
    np.testing.assert_allclose(theirs, ours, atol=1e-4)


def unet_output(unet, states, seed=0):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(2, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size, generator=generator)
    with torch.no_grad():
        return unet(latents, torch.tensor([300.0, 700.0]), torch.from_numpy(states)).sample.numpy()


@pytest.mark.parametrize("method", ["dreambooth", "custom-diffusion"])
def test_weights_load_through_diffusers_own_loaders(tmp_path, method):
    """The saved weights + token, loaded by diffusers into a fresh pipeline, reproduce the trained
    model's prediction, which differs from the base model's."""
    from diffusers import StableDiffusionPipeline

    from edgeinv.embedding_files import save_embedding
    from edgeinv.gradient.train import train

    model = torch_model()
    result, trained = train(config(method, budget=5, weights_lr=5e-2, prior_images=2), tmp_path, model=model)
    paths = {**save_embedding(tmp_path, f"<{method}>", result.vector), **trained.save_weights(tmp_path)}
    prompt = f"a photo of a <{method}>"
    model.learned[model.tokenizer.token_id(f"<{method}>")] = result.vector[0]
    ours = unet_output(model.unet_module, model.encode_prompts([prompt] * 2))

    pipeline = StableDiffusionPipeline.from_pretrained(DIFFUSERS_DIR, safety_checker=None, requires_safety_checker=False)
    pipeline.load_textual_inversion(str(paths["diffusers"]))
    ids = pipeline.tokenizer([prompt] * 2, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        states = pipeline.text_encoder(ids).last_hidden_state.numpy()
    base = unet_output(pipeline.unet, states)
    if method == "dreambooth":
        assert paths["lora"].name == "pytorch_lora_weights.safetensors"
        pipeline.load_lora_weights(str(tmp_path))
    else:
        assert paths["custom_diffusion"].name == "pytorch_custom_diffusion_weights.bin"
        # diffusers 0.42 sets the loaded processors only when it is given the pipeline
        pipeline.unet.load_attn_procs(str(tmp_path), weight_name=paths["custom_diffusion"].name, _pipeline=pipeline)
    theirs = unet_output(pipeline.unet, states)
    np.testing.assert_allclose(theirs, ours, atol=1e-5)
    assert np.abs(theirs - base).max() > 1e-3  # the learned weights change what the model draws


def test_resume_after_interruption_reaches_the_same_token(tmp_path):
    from edgeinv.gradient.train import train

    settings = config("ti", budget=7, checkpoint_every=2, lr=2e-2)
    whole, _ = train(settings, tmp_path / "whole", model=torch_model())

    def interrupt(record, _config):
        if record.step == 4:  # the last checkpoint holds steps 0-3
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(settings, tmp_path / "cut", progress=interrupt, model=torch_model())
    resumed, _ = train(settings, tmp_path / "cut", resume=True, model=torch_model())
    np.testing.assert_array_equal(resumed.vector, whole.vector)
    assert [s.deterministic_loss for s in resumed.history] == [s.deterministic_loss for s in whole.history]
    assert len((tmp_path / "cut" / "history.jsonl").read_text().splitlines()) == 7

    with pytest.raises(UserError, match="other settings"):
        train(config("ti", budget=7, lr=1e-3), tmp_path / "cut", resume=True, model=torch_model())


def test_dvar_stops_a_gradient_run(tmp_path):
    from edgeinv.gradient.train import train

    result, _ = train(config("ti", budget=40, dvar_window=20, dvar_threshold=0.9, lr=2e-2), None, model=torch_model())
    assert result.stopped_by == "dvar" and result.stop_generation < 40
    assert result.history[-1].dvar_ratio < 0.9


def test_fp16_on_cpu_is_a_clear_error():
    from edgeinv.gradient.train import train

    with pytest.raises(UserError, match="fp16 needs a CUDA device"):
        train(config("ti", mixed_precision="fp16"), None, model=torch_model())


def test_bf16_autocast_trains_on_cpu():
    from edgeinv.gradient.train import train

    result, _ = train(config("ti", mixed_precision="bf16", budget=2), None, model=torch_model())
    assert np.isfinite(result.vector).all() and len(result.history) == 2


def test_cli_runs_a_gradient_method_end_to_end(tmp_path):
    """`edgeinv invert --method ti` with the visual initialisation on the PyTorch model."""
    from click.testing import CliRunner

    from edgeinv.cli import main

    out = tmp_path / "run"
    done = CliRunner().invoke(main, ["invert", str(EXAMPLE), "--method", "ti", "--budget", "3", "--init-candidates", "20", "--heldout", "4",
                                     "--token", "<cli-ti>", "--out", str(out), "--no-samples"])
    assert done.exit_code == 0, done.output
    assert {"learned_embeds.safetensors", "cli-ti.safetensors", "config.json", "history.jsonl", "loss.png", "checkpoint.pt"} <= {p.name for p in out.iterdir()}
    settings = json.loads((out / "config.json").read_text())["settings"]
    assert settings["method"] == "ti" and settings["budget"] == 3 and settings["dvar_threshold"] == 0.3  # the method's defaults filled in
    again = CliRunner().invoke(main, ["invert", str(EXAMPLE), "--method", "ti", "--out", str(out)])
    assert again.exit_code == 2 and "--resume" in again.output


def test_cli_refuses_an_onnx_folder_for_a_gradient_method(tmp_path, onnx_dir):
    from click.testing import CliRunner

    from edgeinv.cli import main

    done = CliRunner().invoke(main, ["invert", str(EXAMPLE), "--method", "dreambooth", "--model", str(onnx_dir), "--out", str(tmp_path / "r")])
    assert done.exit_code == 2
    assert "ONNX export" in done.output and "Traceback" not in done.output
