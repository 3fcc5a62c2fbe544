"""The gradient methods in PyTorch: textual inversion, DreamBooth-LoRA, Custom Diffusion.

They share everything with the forward-only search except the optimiser: the images are
encoded once (`LatentCache`), the captions, evaluation sets and the loss come from
edgeinv/objective.py, and DVAR from edgeinv/stopping.py. The loop (`train`):

    images -> VAE latents (once) -> initial token vector e0 (--init words or visual init)
    each step:
        draw a training batch (seed, step): latents sampled from the cached distributions
        loss = the objective's denoising loss, differentiable in the trainable parameters
        (+ prior-preservation loss on the model's own class pictures for custom-diffusion)
        AdamW step
        deterministic loss on the frozen DVAR set -> stop?
        checkpoint every `checkpoint_every` steps (atomic)
    textual inversion: choose by held-out loss among the best snapshots; the other methods
    keep the last weights (their snapshots would be large)

A method is a class that owns its trainable parameters and knows how to save them; add one
by writing such a class and registering it in METHODS.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from edgeinv.data import load_images
from edgeinv.errors import UserError
from edgeinv.embedding_files import token_names
from edgeinv.checkpoints import read_checkpoint, write_atomically
from edgeinv.config import InvertConfig
from edgeinv.history import InvertResult, append_history, contender_generations, write_history
from edgeinv.initialisation import initial_vectors
from edgeinv.objective import FROZEN_SET, HELDOUT_SET, PRIOR_SET, SEARCH_SET, EvaluationSet, LatentCache, Objective, seeded_evaluation_set, timestep_range
from edgeinv.stopping import Dvar, window_in_steps
from edgeinv.gradient.torch_model import TorchStableDiffusion

CHECKPOINT = "checkpoint.pt"


@dataclass
class Step:
    step: int
    loss: float  # the training batch's loss
    deterministic_loss: float
    dvar_ratio: float | None
    unet_evaluations: int
    seconds: float

    @property
    def number(self) -> int:
        return self.step

    def progress_text(self) -> str:
        ratio = "-" if self.dvar_ratio is None else f"{self.dvar_ratio:.2f}"
        return f"loss {self.loss:.4f} det {self.deterministic_loss:.4f} dvar {ratio} {self.unet_evaluations / max(self.seconds, 1e-9):.0f} evals/s"


# ---------------------------------------------------------------- the differentiable loss


def training_loss(objective: Objective, model: TorchStableDiffusion, token: torch.Tensor, evaluation: EvaluationSet) -> torch.Tensor:
    """The objective's loss (objective.py: `Objective.losses`) for one token [n_vec, d], with gradients."""
    noisy, target = objective.noised(evaluation)
    ids = objective.caption_ids[evaluation.caption_index]
    vectors = torch.from_numpy(objective.base_vectors[evaluation.caption_index]).to(model.device)
    for slot, token_id in enumerate(objective.token_ids):
        mask = torch.from_numpy(ids == token_id).to(model.device)[..., None]
        vectors = torch.where(mask, token[slot].to(vectors.dtype), vectors)
    states = model.text_states_torch(vectors)
    prediction = model.unet_torch(torch.from_numpy(noisy), torch.from_numpy(evaluation.timesteps.astype(np.float32)), states)
    per_sample = (prediction.float() - torch.from_numpy(target).to(model.device)).pow(2).flatten(1).mean(dim=1)
    return per_sample.clamp_min(1e-12).log().mean() if objective.loss == "log-mse" else per_sample.mean()


# ---------------------------------------------------------------- methods


class TextualInversion:
    """Only the new token's vector learns. It is a separate parameter, so no other row of the
    table can move: the diffusers example's "restore every other row after each step", by construction."""

    name = "ti"

    def __init__(self, model: TorchStableDiffusion, config: InvertConfig, e0: np.ndarray):
        self.model = model
        self.config = config
        self.token = torch.nn.Parameter(torch.from_numpy(np.atleast_2d(np.asarray(e0, dtype=np.float32)).copy()).to(model.device))  # [N, hidden]

    def parameter_groups(self) -> list[dict]:
        return [{"params": [self.token], "lr": self.config.lr, "weight_decay": 1e-2}]

    def trainables(self) -> dict[str, torch.Tensor]:
        return {"token": self.token}

    def save_weights(self, out_dir: Path) -> dict[str, Path]:
        return {}


class DreamBoothLora(TextualInversion):
    """LoRA (peft) on the UNet's attention projections, plus the token."""

    name = "dreambooth"
    TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]

    def __init__(self, model, config, e0):
        super().__init__(model, config, e0)
        from peft import LoraConfig

        torch.manual_seed(config.seed)  # the LoRA A matrices' initial values
        model.unet_module.add_adapter(LoraConfig(r=config.rank, lora_alpha=config.rank, init_lora_weights="gaussian", target_modules=self.TARGETS))
        self.weights = {name: p for name, p in model.unet_module.named_parameters() if p.requires_grad}

    def parameter_groups(self):
        return super().parameter_groups() + [{"params": list(self.weights.values()), "lr": self.config.weights_lr, "weight_decay": 1e-2}]

    def trainables(self):
        return {**super().trainables(), **{f"unet.{n}": p for n, p in self.weights.items()}}

    def save_weights(self, out_dir: Path) -> dict[str, Path]:
        from diffusers import StableDiffusionPipeline
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(self.model.unet_module))
        return {"lora": _save_atomically(out_dir, "pytorch_lora_weights.safetensors",
                                         lambda folder: StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=layers, safe_serialization=True))}


class CustomDiffusion(TextualInversion):
    """The cross-attention K and V projections plus the token, with prior preservation on
    pictures the model itself draws for the class word (offline: no retrieval)."""

    name = "custom-diffusion"

    def __init__(self, model, config, e0):
        super().__init__(model, config, e0)
        from diffusers.models.attention_processor import CustomDiffusionAttnProcessor

        unet = model.unet_module
        processors = {}
        for name in unet.attn_processors:
            layer = unet.get_submodule(name.removesuffix(".processor"))
            if name.endswith("attn2.processor"):  # cross-attention: K and V read the text
                processor = CustomDiffusionAttnProcessor(train_kv=True, train_q_out=False, hidden_size=layer.to_k.out_features,
                                                         cross_attention_dim=layer.to_k.in_features)
                processor.load_state_dict({"to_k_custom_diffusion.weight": layer.to_k.weight, "to_v_custom_diffusion.weight": layer.to_v.weight})
            else:
                processor = CustomDiffusionAttnProcessor(train_kv=False, train_q_out=False, hidden_size=None, cross_attention_dim=None)
            processors[name] = processor
        unet.set_attn_processor(processors)
        self.weights = {}
        for name, processor in unet.attn_processors.items():
            for key, parameter in processor.named_parameters():
                parameter.requires_grad_(True)
                self.weights[f"{name}.{key}"] = parameter

    def parameter_groups(self):
        return super().parameter_groups() + [{"params": list(self.weights.values()), "lr": self.config.weights_lr, "weight_decay": 1e-2}]

    def trainables(self):
        return {**super().trainables(), **{f"unet.{n}": p for n, p in self.weights.items()}}

    def save_weights(self, out_dir: Path) -> dict[str, Path]:
        # The .bin that diffusers' own Custom Diffusion example writes: safetensors cannot hold the
        # empty entries of the self-attention layers, and load_attn_procs needs one per layer.
        name = "pytorch_custom_diffusion_weights.bin"
        return {"custom_diffusion": _save_atomically(out_dir, name, lambda folder: self.model.unet_module.save_attn_procs(folder, weight_name=name, safe_serialization=False))}


METHODS = {method.name: method for method in (TextualInversion, DreamBoothLora, CustomDiffusion)}


def _save_atomically(out_dir: Path, name: str, write: Callable[[str], None]) -> Path:
    """Let a library write `name` into a private folder, then move it into place in one step."""
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".save.") as folder:
        write(folder)
        os.replace(Path(folder) / name, out_dir / name)
    return out_dir / name


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(out_dir: Path, state: dict) -> None:
    """Tensors, numbers, strings, lists and dicts only, so it loads with `weights_only=True`."""
    write_atomically(out_dir / CHECKPOINT, lambda f: torch.save(state, f))


def load_checkpoint(out_dir: Path, config: InvertConfig) -> dict:
    """Never unpickles code: torch's weights-only loader refuses anything but tensors and plain data."""
    state = read_checkpoint(out_dir / CHECKPOINT, config, lambda f: torch.load(f, map_location="cpu", weights_only=True))
    required = ("step", "optimizer", "trainables", "dvar", "history", "snapshots", "unet_evaluations", "seconds")
    if any(k not in state for k in required) or not isinstance(state["snapshots"], dict):
        raise UserError(f"{out_dir / CHECKPOINT}: damaged checkpoint (missing fields); delete it and start again without --resume")
    return state


# ---------------------------------------------------------------- the loop


def autocast(config: InvertConfig, device: torch.device):
    if config.mixed_precision == "no":
        return nullcontext()
    if config.mixed_precision == "fp16" and device.type != "cuda":
        raise UserError("--mixed-precision fp16 needs a CUDA device; on CPU use --mixed-precision bf16 or no")
    return torch.autocast(device.type, dtype=torch.float16 if config.mixed_precision == "fp16" else torch.bfloat16)


def prior_pictures(model: TorchStableDiffusion, class_word: str, count: int, seed: int) -> np.ndarray:
    """The model's own pictures of the class word (Custom Diffusion's prior-preservation set)."""
    from edgeinv.generate import generate

    return generate(model, f"a photo of a {class_word}", n=count, seed=seed, steps=25)


def train(
    config: InvertConfig,
    out_dir: Path | None = None,
    resume: bool = False,
    progress: Callable[[Step, InvertConfig], None] | None = None,
    warn: Callable[[str], None] = print,
    model: TorchStableDiffusion | None = None,
    inspect: Callable[[Step, TextualInversion], None] | None = None,
) -> tuple[InvertResult, TextualInversion]:
    """`inspect` (for benchmarks) sees the live method after every step."""
    start = time.time()
    config = config.resolved()
    if config.method not in METHODS:
        raise UserError(f"--method {config.method}: not a gradient method ({', '.join(METHODS)})")
    torch.manual_seed(config.seed)
    saved = load_checkpoint(out_dir, config) if resume else None  # settings and pictures must match: check before any work
    model = model or TorchStableDiffusion(config.model, device=config.device)
    precision = autocast(config, model.device)  # refuses fp16 without CUDA before any work
    image_set = load_images(config.images, model.image_size, warn=warn)
    token_ids = [model.tokenizer.add_token(name) for name in token_names(config.token, config.vectors)]
    objective = Objective(model, token_ids, config.token, config.property, chunk_size=config.chunk_size, loss=config.loss)
    cache = LatentCache.encode(model, image_set.images)
    steps = timestep_range(*config.timesteps, int(model.scheduler_config.get("num_train_timesteps", 1000)))

    def evaluation_set(source_cache, purpose: int, size: int, step: int = 0, in_order: bool = False, sample_latents: bool = False, captions: int | None = None):
        return seeded_evaluation_set(source_cache, captions or len(objective.captions), size, config.seed, purpose, step,
                                     scaling_factor=model.vae_scaling_factor, timesteps=steps, flip=config.flip, sample_latents=sample_latents, in_order=in_order)

    frozen = evaluation_set(cache, FROZEN_SET, config.dvar_batch, in_order=True)
    heldout = evaluation_set(cache, HELDOUT_SET, config.heldout)

    init_start = time.time()
    e0, ranking = initial_vectors(config, objective, model, frozen)  # [N, hidden]
    if ranking:
        warn(f"visual initialisation ({config.init_candidates} words ranked in {time.time() - init_start:.1f}s): closest {', '.join(f'{w} ({l:.4f})' for w, l in ranking[:3])}")
    init_seconds = time.time() - init_start

    prior = None
    if config.method == "custom-diffusion":
        class_word = config.class_word or (" ".join(config.init) if config.init else ranking[0][0])
        prior_objective = Objective(model, [], class_word, config.property, chunk_size=config.chunk_size, loss=config.loss)
        prior_cache = LatentCache.encode(model, prior_pictures(model, class_word, config.prior_images, config.seed))
        prior = (prior_objective, prior_cache)

    init_heldout = float(objective.losses(np.asarray(e0, dtype=np.float32)[None], heldout)[0])  # before any weight moves
    method = METHODS[config.method](model, config, e0)
    optimizer = torch.optim.AdamW(method.parameter_groups())
    scaler = torch.amp.GradScaler("cuda") if config.mixed_precision == "fp16" else None
    rows_per_step = config.batch_size * (2 if prior else 1)
    dvar = Dvar(window_in_steps(config.dvar_window, rows_per_step), config.dvar_threshold)
    history: list[Step] = []
    snapshots: dict[int, np.ndarray] = {}  # step -> token vector (textual inversion's final choice)
    step, unet_rows, seconds_before = 0, 0, 0.0
    if saved is not None:
        state = saved
        with torch.no_grad():
            for name, tensor in method.trainables().items():
                tensor.copy_(state["trainables"][name])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        dvar = Dvar.from_state(state["dvar"])
        history = [Step(**s) for s in state["history"]]
        snapshots = {int(s): t.numpy() for s, t in state["snapshots"].items()}
        step, unet_rows, seconds_before = int(state["step"]), int(state["unet_evaluations"]), float(state["seconds"])
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_history(out_dir, history)

    def checkpoint() -> None:
        if out_dir is not None:
            save_checkpoint(out_dir, {
                "fingerprint": config.fingerprint(), "step": step, "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                "trainables": {n: t.detach().cpu().clone() for n, t in method.trainables().items()}, "dvar": dvar.state(),
                "history": [asdict(s) for s in history], "snapshots": {s: torch.from_numpy(v) for s, v in snapshots.items()}, "unet_evaluations": unet_rows, "seconds": history[-1].seconds if history else 0.0,
            })

    stopped_by = "budget"
    run_start = time.time() - seconds_before
    while step < config.budget:
        if history and dvar.ratio is not None and dvar.ratio < dvar.threshold:
            stopped_by = "dvar"  # resumed after the stopping step
            break
        with precision:
            batch = evaluation_set(cache, SEARCH_SET, config.batch_size, step, sample_latents=True)
            loss = training_loss(objective, model, method.token, batch)
            if prior:
                prior_objective, prior_cache = prior
                prior_batch = evaluation_set(prior_cache, PRIOR_SET, config.batch_size, step, sample_latents=True, captions=len(prior_objective.captions))
                loss = loss + config.prior_weight * training_loss(prior_objective, model, method.token, prior_batch)
        if not torch.isfinite(loss):
            raise UserError(f"the training loss is NaN/inf at step {step}; lower --lr (now {config.lr:g}) or use --mixed-precision no")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        token = method.token.detach().float().cpu().numpy().copy()
        deterministic = float(objective.losses(token[None], frozen)[0])  # the same numbers the forward-only method tracks
        unet_rows += rows_per_step + len(frozen)
        stop = dvar.update(deterministic)
        snapshots[step] = token
        history.append(Step(step, float(loss.detach()), deterministic, dvar.ratio, unet_rows, time.time() - run_start))
        if out_dir is not None:
            append_history(out_dir, history[-1])
        step += 1
        if step % config.checkpoint_every == 0 or stop:
            checkpoint()
        if progress:
            progress(history[-1], config)
        if inspect:
            tick = time.time()
            inspect(history[-1], method)
            run_start += time.time() - tick  # a benchmark's judging is not training time
        if stop:
            stopped_by = "dvar"
            break
    checkpoint()

    if config.method == "ti":  # choose among the best snapshots by held-out loss, as the forward-only method does
        contenders = {f"step@{s}": snapshots[s] for s in contender_generations([h.deterministic_loss for h in history])}
        contenders["init"] = np.asarray(e0, dtype=np.float32)
    else:  # the token and the weights learned together: keep the last pair
        contenders = {f"step@{step - 1}": method.token.detach().float().cpu().numpy().copy()}
    names = list(contenders)
    heldout_losses = objective.losses(np.stack([contenders[n] for n in names]), heldout)
    best = names[int(np.argmin(heldout_losses))]
    with torch.no_grad():
        method.token.copy_(torch.from_numpy(contenders[best]))
    result = InvertResult(
        vector=contenders[best], history=history, stopped_by=stopped_by, stop_generation=step, chosen=best,
        heldout_loss=float(heldout_losses[names.index(best)]), init_loss=init_heldout,
        init_seconds=init_seconds, total_seconds=time.time() - start, out_dir=out_dir, trajectory=dict(snapshots),
    )
    return result, method

