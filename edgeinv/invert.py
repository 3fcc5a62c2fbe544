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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from edgeinv import manifest
from edgeinv.data import images_digest, load_images
from edgeinv.embedding_files import token_names
from edgeinv.errors import UserError
from edgeinv.evaluators import EVALUATORS, evaluator_name
from edgeinv.files import atomic_path
from edgeinv.objective import FROZEN_SET, HELDOUT_SET, SEARCH_SET, LatentCache, Objective, seeded_evaluation_set, timestep_range
from edgeinv.onnx_model import OnnxStableDiffusion
from edgeinv.optimizers import OPTIMIZERS
from edgeinv.stopping import Dvar, window_in_steps
from edgeinv.subspace import make_basis

CHECKPOINT = "checkpoint.json"  # no pickle: the optimiser is rebuilt by replaying the recorded generations
OLD_CHECKPOINTS = ("checkpoint.pkl",)  # older edgeinv pickled the optimiser; never unpickled
MAX_TOKEN_LENGTH = 100  # characters; the token names a file (<token>.safetensors)


@dataclass(frozen=True)
class MethodDefaults:
    budget: int  # generations (cma-es) or optimiser steps (zo-sgd, gradient methods)
    dvar_window: int  # in UNet sample-evaluations, see edgeinv/stopping.py
    dvar_threshold: float
    lr: float | None = None  # the token's learning rate (gradient methods; zo-sgd: Adam's, in basis units)
    weights_lr: float | None = None  # LoRA / K,V projections
    probes: int | None = None  # zo-sgd: probe directions per step
    mu: float | None = None  # zo-sgd: probe length, in basis units (vocabulary spreads)
    dim: int | None = None  # forward-only: search subspace dimension per vector


# cma-es: measured by benchmarks/token_vs_words.py on the default model (benchmarks/results/token_vs_words.md):
# all 64 directions of its embedding and a 12,000-evaluation DVAR window drew the concepts in 82% of
# pictures; 32 directions with a 4,000-evaluation window (the earlier defaults) in 61%, stopping sooner
# (CMA-ES adapts over a number of generations that grows with the dimension). The gradient methods start
# from the DVAR paper's published settings (window 310 / 440 / 180 steps, at batch 4 here);
# budgets and learning rates are scaled for the tiny default model (benchmarks/gradient_methods.py).
METHOD_DEFAULTS = {
    "cma-es": MethodDefaults(budget=300, dvar_window=12000, dvar_threshold=0.15, dim=64),
    # ti: re-tuned from the published 310 steps / 0.15 (no stop within 1500 steps on one concept)
    "ti": MethodDefaults(budget=1500, dvar_window=150 * 4, dvar_threshold=0.3, lr=5e-3),
    "dreambooth": MethodDefaults(budget=1000, dvar_window=440 * 4, dvar_threshold=0.4, lr=5e-3, weights_lr=5e-4),
    # custom-diffusion's window: 4 samples + 4 prior samples a step
    "custom-diffusion": MethodDefaults(budget=500, dvar_window=180 * 8, dvar_threshold=0.15, lr=5e-3, weights_lr=1e-4),
}
# The forward-only method's defaults per --optimizer (cma-es: METHOD_DEFAULTS["cma-es"]).
# zo-sgd: measured in benchmarks/results/zo_sgd.md (default model v1), with d = 32 and the
# 4000-evaluation window it was measured with (cma-es's at the time).
OPTIMIZER_DEFAULTS = {
    "zo-sgd": MethodDefaults(budget=500, dvar_window=4000, dvar_threshold=0.15, lr=1.0, probes=4, mu=0.1, dim=32),
}


@dataclass
class InvertConfig:
    images: str
    model: str | None = None
    method: str = "cma-es"  # or a gradient method (edgeinv/gradient/train.py, needs torch)
    token: str = "<concept>"
    init: list[str] = field(default_factory=list)  # words; empty: visual initialisation
    property: str = "object"
    seed: int = 0
    budget: int | None = None  # None: the method's default (METHOD_DEFAULTS)
    popsize: int | None = None  # None: pycma's 4 + 3 ln d
    dim: int | None = None  # None: the optimiser's default (64 for cma-es, 32 for zo-sgd)
    subspace: str = "pca"  # or "random", or "none" (the whole embedding, each coordinate scaled by its spread)
    optimizer: str = "cma-es"  # the forward-only method's optimiser: cma-es or zo-sgd (edgeinv/optimizers.py)
    vectors: int = 1  # vectors per token (AUTOMATIC1111's "vectors per token")
    probes: int | None = None  # zo-sgd; None: OPTIMIZER_DEFAULTS
    mu: float | None = None  # zo-sgd
    sigma0: float = 1.0
    samples: int = 8  # evaluation samples per generation, shared by the population
    dvar_window: int | None = None  # in UNet sample-evaluations, see edgeinv/stopping.py
    dvar_threshold: float | None = None
    dvar_batch: int = 4
    heldout: int = 32
    timesteps: tuple[float, float] = (0.0, 1.0)
    # How a set's per-sample losses combine: "log-mse" (the mean of their logs) or "mse" (their
    # mean, the training loss). benchmarks/results/token_vs_words.md: log-mse's tokens drew the
    # concepts in 75% of pictures over two inversion seeds, mse's in 57%.
    loss: str = "log-mse"
    flip: bool = True  # mirrored copies of the pictures; off when left/right matters
    init_candidates: int = 1000
    chunk_size: int = 64
    device: str = "auto"
    threads: int | None = None
    ray: str | None = None  # a Ray cluster's address ("local": start one) to score populations on (edgeinv/ray_pool.py)
    workers: int | None = None  # Ray actors; None: the cluster's CPUs / threads
    # gradient methods only
    lr: float | None = None  # also zo-sgd's Adam step, in basis units
    weights_lr: float | None = None
    batch_size: int = 4
    rank: int = 4  # LoRA rank (dreambooth)
    class_word: str | None = None  # custom-diffusion's prior class; default: the --init words or the visual init's word
    prior_images: int = 8
    prior_weight: float = 1.0
    mixed_precision: str = "no"
    checkpoint_every: int = 25
    images_sha256: str | None = None  # the pictures' names and bytes (None: computed by `resolved`)

    def resolved(self) -> "InvertConfig":
        """This config with every None the method's default, and the pictures hashed."""
        if self.method not in METHOD_DEFAULTS:
            raise UserError(f"--method {self.method}: unknown; choose one of {', '.join(METHOD_DEFAULTS)}")
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"--optimizer {self.optimizer}: unknown; choose one of {', '.join(OPTIMIZERS)}")
        if self.optimizer != "cma-es" and self.method != "cma-es":
            raise UserError(f"--optimizer {self.optimizer} is for the forward-only method; --method {self.method} trains with AdamW")
        zo_only = ("probes", "mu") if self.method != "cma-es" or self.optimizer != "cma-es" else ("probes", "mu", "lr")
        if self.optimizer != "zo-sgd" and (given := [name for name in zo_only if getattr(self, name) is not None]):
            raise UserError(f"--{given[0]} does nothing with {'--method ' + self.method if self.method != 'cma-es' else 'cma-es'}; "
                            "it is a zo-sgd option: add --optimizer zo-sgd or leave it out")
        own_defaults = self.method == "cma-es" and self.optimizer in OPTIMIZER_DEFAULTS  # zo-sgd; cma-es: the method's
        defaults = asdict(OPTIMIZER_DEFAULTS[self.optimizer] if own_defaults else METHOD_DEFAULTS[self.method])
        if self.images_sha256 is None:
            defaults["images_sha256"] = images_digest(self.images)  # also refuses a missing or non-folder path
        return replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})

    def fingerprint(self) -> str:
        """What must match for `--resume` to continue the same run: the settings and the pictures' bytes."""
        excluded = ("images", "budget", "device", "threads", "chunk_size", "checkpoint_every", "ray", "workers")
        keys = {k: v for k, v in asdict(self).items() if k not in excluded}
        return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Generation:
    generation: int
    best_loss: float
    mean_loss: float
    deterministic_loss: float
    dvar_ratio: float | None
    sigma: float
    unet_evaluations: int
    seconds: float

    @property
    def number(self) -> int:
        return self.generation

    def progress_text(self) -> str:
        ratio = "-" if self.dvar_ratio is None else f"{self.dvar_ratio:.2f}"
        return (f"best {self.best_loss:.4f} mean {self.mean_loss:.4f} det {self.deterministic_loss:.4f} dvar {ratio} "
                f"{self.unet_evaluations / max(self.seconds, 1e-9):.0f} evals/s")


@dataclass
class InvertResult:
    vector: np.ndarray  # [n_vectors, hidden]
    history: list[Generation]
    stopped_by: str  # "dvar" or "budget"
    stop_generation: int
    chosen: str  # which contender the held-out loss picked
    heldout_loss: float
    init_loss: float  # held-out loss of the initial vector
    init_seconds: float
    total_seconds: float
    out_dir: Path | None = None
    trajectory: dict[int, np.ndarray] = field(default_factory=dict)  # generation -> token vector of the optimiser's mean


# ---------------------------------------------------------------- initialisation


def vocabulary_shortlist(model: OnnxStableDiffusion, count: int) -> np.ndarray:
    """Whole-word, alphabetic tokens in BPE merge order (roughly by frequency): model-agnostic."""
    tokens = []
    for token_id in range(512, model.tokenizer.base_vocab_size - 2):
        text = model.tokenizer.id_to_token(token_id)
        if text and text.endswith("</w>") and text[:-4].isalpha() and len(text) >= 7:
            tokens.append(token_id)
            if len(tokens) == count:
                break
    return np.array(tokens)


def word_vector(model: OnnxStableDiffusion, words: list[str]) -> np.ndarray:
    specials = (model.tokenizer.pad_id, model.tokenizer.eos_id, model.tokenizer.bos_id)
    ids = [i for word in words for i in model.tokenizer(word)[0] if i not in specials]
    if not ids:
        raise UserError(f"--init {' '.join(words)!r} gives no tokens; use ordinary words such as --init dog")
    return model.token_table[ids].mean(axis=0)


def visual_init(objective, model: OnnxStableDiffusion, frozen, count: int, batch: int = 64) -> tuple[np.ndarray, list[tuple[str, float]]]:
    """Rank vocabulary tokens by the frozen-set loss on the user's images; start from the best.
    A token of N vectors is ranked with the word in all N places and starts from the N best words [N, hidden]."""
    shortlist = vocabulary_shortlist(model, count)
    n_vectors = len(objective.token_ids)

    def candidates(ids):
        return np.repeat(model.token_table[ids][:, None], n_vectors, axis=1)

    losses = np.concatenate([objective.losses(candidates(shortlist[i : i + batch]), frozen) for i in range(0, len(shortlist), batch)])
    order = np.argsort(losses)
    best = [(model.tokenizer.id_to_token(int(shortlist[i]))[:-4], float(losses[i])) for i in order[:5]]
    return model.token_table[shortlist[order[:n_vectors]]].copy(), best


def initial_vectors(config: "InvertConfig", objective, model, frozen) -> tuple[np.ndarray, list[tuple[str, float]]]:
    """e0 [N, hidden]: N copies of the --init words' mean, or the visual initialisation's N best words."""
    if config.init:
        return np.repeat(word_vector(model, config.init)[None], config.vectors, axis=0), []
    return visual_init(objective, model, frozen, config.init_candidates)


# ---------------------------------------------------------------- checkpoints


def write_atomically(path: Path, write: Callable) -> None:
    """`write(file)` into a temporary file beside `path`, synced, then renamed over it; the
    temporary file is removed on any failure (disk full, Ctrl-C)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)


def read_checkpoint(path: Path, config: InvertConfig, read: Callable) -> dict:
    """`read(file)` a checkpoint; one-line errors when it is missing, damaged or from other settings."""
    if not path.is_file():
        old = [path.parent / name for name in OLD_CHECKPOINTS if (path.parent / name).is_file()]
        if old:
            raise UserError(f"{old[0]}: a pickled checkpoint from an older edgeinv, which is never loaded (it could run code); start again with --overwrite")
        raise UserError(f"{path}: no checkpoint to resume; start a new run without --resume")
    try:
        with open(path, "rb") as f:
            state = read(f)
    except Exception:  # a damaged file raises anything
        raise UserError(f"{path}: unreadable checkpoint; delete it and start again without --resume") from None
    if not isinstance(state, dict) or "fingerprint" not in state:
        raise UserError(f"{path}: not an edgeinv checkpoint; delete it and start again without --resume")
    if state.get("fingerprint") != config.fingerprint():
        raise UserError(f"{path}: made with other settings or other pictures (method, images, token, seed, dim, ...); resume with the same options and pictures, or use a new --out")
    return state


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


def check_token(tokenizer, token: str, vectors: int = 1) -> None:
    """Refuse a token that cannot be learned or saved, before any work. A token of N vectors
    also needs its extra names (token_1, ...) free: diffusers expands prompts into them."""
    check_token_text(token)
    for name in token_names(token, vectors):
        if tokenizer.token_id(name) is not None or tokenizer.in_vocabulary(name):
            which = "" if name == token else f" (its vector {name!r})"
            raise UserError(f"--token {token!r}{which} is already a word of the vocabulary; pick another, e.g. '<{token.strip('<>|')}-v1>'")


def check_token_text(token: str) -> None:
    if not token.strip():
        raise UserError("--token is empty; give the new word to learn, e.g. --token '<my-cat>'")
    if len(token) > MAX_TOKEN_LENGTH:
        raise UserError(f"--token is {len(token)} characters long; use at most {MAX_TOKEN_LENGTH}, e.g. --token '<my-cat>'")


def check_dim(config: InvertConfig, model) -> None:
    limit = min(model.hidden_size, model.vocab_size)
    if config.method == "cma-es" and config.subspace != "none" and config.dim > limit:  # --subspace none ignores --dim
        raise UserError(f"--dim {config.dim}: this model's token space has only {limit} directions; use --dim {limit} or less")


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


def contender_generations(deterministic_losses: list[float], best: int = 8) -> list[int]:
    """The generations whose means compete in the final choice: the `best` lowest deterministic
    losses and the last one."""
    if not deterministic_losses:
        return []
    ranked = sorted(range(len(deterministic_losses)), key=lambda g: deterministic_losses[g])[:best]
    return sorted(set(ranked) | {len(deterministic_losses) - 1})


def write_history(out_dir: Path, history: list[Generation]) -> None:
    with atomic_path(out_dir / "history.jsonl") as tmp, open(tmp, "w") as f:
        for record in history:
            f.write(json.dumps(asdict(record)) + "\n")


def append_history(out_dir: Path, record: Generation) -> None:
    with open(out_dir / "history.jsonl", "a") as f:
        f.write(json.dumps(asdict(record)) + "\n")
