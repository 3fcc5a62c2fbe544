"""Forward-only textual inversion: CMA-ES (or zeroth-order SGD) in a subspace of the token-embedding space.

The loop, top to bottom (`invert`):

    images -> VAE latents (once) -> initial vectors e0 [N, hidden] -> subspace basis
    each generation (a step, for zo-sgd):
        draw one evaluation set (common random numbers for the whole population)
        ask the optimiser for a population z_1..z_k;   e_i = e0 + z_i @ basis (each of the
        token's N vectors has its own d coordinates: z_i is N*d long)
        score all e_i in batched ONNX Runtime calls (in process, or spread over Ray actors:
        edgeinv/evaluators.py)  -> tell the optimiser
        deterministic loss of the optimiser's mean on the frozen DVAR set -> stop?
        checkpoint (atomic JSON: the losses told so far)
    choose, by a held-out loss, among the best means and the final mean
    write embedding files, config, history, loss plot, samples

Everything random derives from `seed` and the generation number, and an optimiser's state is a
function of its seed and the losses it was told, so `--resume` rebuilds it by replaying ask/tell
with the recorded losses (`replay`) and reproduces the uninterrupted run exactly.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from edgeinv import manifest
from edgeinv.checkpoints import read_checkpoint, write_atomically
from edgeinv.config import InvertConfig, check_dim, check_token, check_token_text
from edgeinv.data import load_images
from edgeinv.embedding_files import token_names
from edgeinv.errors import UserError
from edgeinv.evaluators import EVALUATORS, evaluator_name
from edgeinv.history import Generation, InvertResult, append_history, contender_generations, write_history
from edgeinv.initialisation import initial_vectors
from edgeinv.objective import FROZEN_SET, HELDOUT_SET, SEARCH_SET, LatentCache, Objective, seeded_evaluation_set, timestep_range
from edgeinv.onnx_model import OnnxStableDiffusion
from edgeinv.optimizers import OPTIMIZERS
from edgeinv.stopping import Dvar, window_in_steps
from edgeinv.subspace import make_basis

CHECKPOINT = "checkpoint.json"  # no pickle: the optimiser is rebuilt by replaying the recorded generations


# ---------------------------------------------------------------- checkpoints


def points_digest(points: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(points, dtype=np.float64).tobytes()).hexdigest()[:16]


def save_checkpoint(out_dir: Path, state: dict) -> None:
    """JSON, no pickle: the settings' fingerprint, each generation's told losses (and a hash of
    the points asked), DVAR's state and the history. Floats round-trip exactly through JSON."""
    write_atomically(out_dir / CHECKPOINT, lambda f: f.write(json.dumps(state).encode()))


def load_checkpoint(out_dir: Path, config: InvertConfig) -> dict:
    state = read_checkpoint(out_dir / CHECKPOINT, config, json.load)
    required = {"generation": int, "told": list, "asked": list, "dvar": dict, "history": list, "unet_evaluations": int, "seconds": float}
    if any(not isinstance(state.get(k), t) for k, t in required.items()) or not (len(state["told"]) == len(state["asked"]) == state["generation"]):
        raise UserError(f"{out_dir / CHECKPOINT}: damaged checkpoint (missing or inconsistent fields); delete it and start again without --resume")
    return state


def replay(optimizer, state: dict, path: Path) -> dict[int, np.ndarray]:
    """Bring a freshly seeded ask/tell optimiser to the checkpoint's generation by asking and
    re-telling the recorded losses; returns its mean after each generation."""
    means = {}
    for generation, (digest, losses) in enumerate(zip(state["asked"], state["told"])):
        points = optimizer.ask()
        if points_digest(points) != digest or len(losses) != len(points):
            raise UserError(f"{path}: generation {generation} does not replay (another edgeinv or pycma version?); start again with --overwrite")
        optimizer.tell(points, np.asarray(losses, dtype=np.float64))
        means[generation] = optimizer.mean.copy()
    return means


# ---------------------------------------------------------------- the loop


def invert(
    config: InvertConfig,
    out_dir: Path | None = None,
    resume: bool = False,
    progress: Callable[[Generation, InvertConfig], None] | None = None,
    warn: Callable[[str], None] = print,
    model: OnnxStableDiffusion | None = None,
) -> InvertResult:
    start = time.time()
    config = config.resolved()
    if config.method != "cma-es":
        raise UserError(f"--method {config.method} is a gradient method: edgeinv.gradient.train runs it (needs the torch extra)")
    check_token_text(config.token)
    saved = load_checkpoint(out_dir, config) if resume else None  # the pictures and settings must match: check before any work
    model = model or OnnxStableDiffusion(config.model, device=config.device, threads=config.threads)
    check_token(model.tokenizer, config.token, config.vectors)
    check_dim(config, model)
    image_set = load_images(config.images, model.image_size, warn=warn)
    token_ids = [model.tokenizer.add_token(name) for name in token_names(config.token, config.vectors)]
    # The evaluation backend scores candidates (edgeinv/evaluators.py): in this process, or a
    # Ray pool whose actors start loading the model now, while the pictures are encoded here.
    objective = EVALUATORS[evaluator_name(config)](config, Objective(model, token_ids, config.token, config.property, chunk_size=config.chunk_size, loss=config.loss))
    try:
        return search(config, out_dir, saved, progress, warn, model, image_set, objective, start)
    finally:
        objective.close()


def search(config: InvertConfig, out_dir: Path | None, saved: dict | None, progress, warn, model: OnnxStableDiffusion, image_set, objective,
           start: float) -> InvertResult:
    """Initialise, search, stop, choose: everything after the model and the evaluator are ready."""
    cache = LatentCache.encode(model, image_set.images)
    model.release(manifest.VAE_ENCODER)  # encoded once; its activations are the largest after the UNet's
    # Before the UNet's session opens: the PCA's temporary arrays (~0.4 GB at SD 1.5's
    # vocabulary) would otherwise sit on top of the loaded UNet and set the run's peak.
    basis = make_basis(config.subspace, model.token_table, config.dim, config.seed)

    steps = timestep_range(*config.timesteps, int(model.scheduler_config.get("num_train_timesteps", 1000)))

    def evaluation_set(purpose: int, size: int, generation: int = 0, in_order: bool = False):
        return seeded_evaluation_set(cache, len(objective.captions), size, config.seed, purpose, generation,
                                     scaling_factor=model.vae_scaling_factor, timesteps=steps, flip=config.flip, in_order=in_order)

    frozen = evaluation_set(FROZEN_SET, config.dvar_batch, in_order=True)  # DVAR's deterministic batch
    heldout = evaluation_set(HELDOUT_SET, config.heldout)  # only for the final choice

    init_start = time.time()
    e0, ranking = initial_vectors(config, objective, model, frozen)
    init_seconds = time.time() - init_start
    if ranking:
        warn(f"visual initialisation ({config.init_candidates} words ranked in {init_seconds:.1f}s): closest {', '.join(f'{w} ({l:.4f})' for w, l in ranking[:3])}")
    search_dim = config.vectors * basis.shape[0]  # each of the token's vectors moves in its own copy of the subspace

    def vectors(points: np.ndarray) -> np.ndarray:
        points = np.asarray(points, dtype=np.float32).reshape(-1, config.vectors, basis.shape[0])
        return e0[None] + points @ basis  # [k, N, hidden]

    optimizer = OPTIMIZERS[config.optimizer].from_config(np.zeros(search_dim), config)
    window = window_in_steps(config.dvar_window, optimizer.popsize * config.samples)
    state = {"format": "edgeinv-checkpoint-1", "fingerprint": config.fingerprint(), "optimizer": config.optimizer, "generation": 0,
             "told": [], "asked": [], "dvar": Dvar(window, config.dvar_threshold).state(), "history": [], "unet_evaluations": 0, "seconds": 0.0}
    means: dict[int, np.ndarray] = {}  # generation -> optimiser mean, kept for the final choice
    if saved is not None:
        state = saved
        means = replay(optimizer, state, out_dir / CHECKPOINT)
    dvar = Dvar.from_state(state["dvar"])
    history = [Generation(**g) for g in state["history"]]
    objective.unet_rows = state["unet_evaluations"]
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_history(out_dir, history)

    stopped_by = "budget"
    generation = state["generation"]
    run_start = time.time() - state["seconds"]
    while generation < config.budget:
        if history and dvar.ratio is not None and dvar.ratio < dvar.threshold:
            stopped_by = "dvar"  # resumed after the stopping generation
            break
        evaluation = evaluation_set(SEARCH_SET, config.samples, generation)
        points = optimizer.ask()
        losses = objective.losses(vectors(points), evaluation)
        if not np.isfinite(losses).any():
            raise UserError(f"every candidate's loss is NaN/inf at generation {generation}; the model in {model.folder} gives non-finite outputs (re-export it in fp32)")
        losses = np.where(np.isfinite(losses), losses, np.nanmax(np.where(np.isfinite(losses), losses, np.nan)) * 10)
        losses = losses.astype(np.float64)  # what the checkpoint records and `replay` tells again, bit for bit
        optimizer.tell(points, losses)
        state["asked"].append(points_digest(points))
        state["told"].append([float(v) for v in losses])
        deterministic = float(objective.losses(vectors(optimizer.mean[None]), frozen)[0])
        stop = dvar.update(deterministic)
        means[generation] = optimizer.mean.copy()
        record = Generation(generation, float(losses.min()), float(losses.mean()), deterministic, dvar.ratio, optimizer.sigma,
                            objective.unet_rows, time.time() - run_start)
        history.append(record)
        generation += 1
        state.update(generation=generation, dvar=dvar.state(), history=[asdict(g) for g in history],
                     unet_evaluations=objective.unet_rows, seconds=float(record.seconds))
        if out_dir is not None:
            save_checkpoint(out_dir, state)
            append_history(out_dir, record)
        if progress:
            progress(record, config)
        if stop:
            stopped_by = "dvar"
            break

    # The final choice: the means with the lowest deterministic loss, and the last mean,
    # judged on held-out noise and timesteps that neither the search nor DVAR has seen.
    contenders = {f"mean@{g}": means[g] for g in contender_generations([h.deterministic_loss for h in history])}
    contenders["init"] = np.zeros(search_dim)
    names = list(contenders)
    heldout_losses = objective.losses(vectors(np.stack([contenders[n] for n in names])), heldout)
    best = int(np.argmin(heldout_losses))
    vector = vectors(contenders[names[best]][None])[0]
    return InvertResult(
        vector=vector, history=history, stopped_by=stopped_by, stop_generation=generation, chosen=names[best],
        heldout_loss=float(heldout_losses[best]), init_loss=float(heldout_losses[names.index("init")]),
        init_seconds=init_seconds, total_seconds=time.time() - start, out_dir=out_dir,
        trajectory={g: vectors(z[None])[0] for g, z in means.items()},
    )
