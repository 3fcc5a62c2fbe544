"""A run's settings, the same for every method: what the user asked for, each method's defaults,
and the checks that refuse impossible settings before any work is done."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace

from edgeinv.data import images_digest
from edgeinv.embedding_files import token_names
from edgeinv.errors import UserError
from edgeinv.optimizers import OPTIMIZERS

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
# zo-sgd: probes, mu and lr measured in benchmarks/results/zo_sgd.md (default model v1), with the
# 4000-evaluation window it was measured with (cma-es's at the time). d = 64, as cma-es: on v5 its
# tokens drew the race's concepts in 73% of pictures against 60% with v1's d = 32, and 8000 evaluations
# of window drew no more at a longer run (benchmarks/results/token_vs_words.md).
OPTIMIZER_DEFAULTS = {
    "zo-sgd": MethodDefaults(budget=500, dvar_window=4000, dvar_threshold=0.15, lr=1.0, probes=4, mu=0.1, dim=64),
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
    dim: int | None = None  # None: the optimiser's default (64 for both cma-es and zo-sgd)
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
