"""Score each population on a Ray cluster: one concept's candidates spread over actors.

Each actor opens the ONNX Runtime sessions once (`threads` intra-op threads, and it reserves
that many CPUs from Ray, so actors on a node never ask for more cores than it has). Each
generation the driver puts the evaluation set (cached latents, noise, timesteps: a few MB at
SD scale) in the object store once; every actor reads it by reference and scores a contiguous
slice of the population; the driver concatenates the losses in order. ONNX Runtime's
per-row results do not depend on how rows are batched, so the losses, and so the whole run,
equal the in-process ones bit for bit.

Faults: actors restart without limit and their calls are retried (Ray's `max_restarts`,
`max_task_retries`): an actor killed mid-generation is replaced (it reloads the model) and
its slice scored again with the same inputs, so the run continues unchanged. The optimiser,
DVAR, checkpoints and outputs stay in the driver, so `--resume` works as in one process.
"""

from __future__ import annotations

import os

import numpy as np

from edgeinv.errors import UserError
from edgeinv.objective import combine_samples


def require_ray():
    try:
        import ray
    except ImportError:
        raise UserError("--ray needs the ray extra: pip install 'edgeinv[ray]' (on every node of the cluster)") from None
    return ray


def connect(address: str):
    """Join the cluster at `address` ("local": start one on this machine; "auto": the one
    `ray start` made here). Returns the ray module."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    try:
        if address == "local":
            ray.init(include_dashboard=False, logging_level="ERROR", configure_logging=True)
        else:
            ray.init(address=address, logging_level="ERROR", configure_logging=True)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise UserError(f"--ray {address}: no Ray cluster there ({' '.join(str(error).split())[:160]}); "
                        "start one with `ray start --head`, or use --ray local") from None
    return ray


class ObjectiveActor:
    """One worker: the model's sessions and the objective, built once per (re)start."""

    def __init__(self, model: str | None, device: str, threads: int, token_names: list[str], token: str, property: str, chunk_size: int, loss: str):
        from edgeinv.objective import Objective
        from edgeinv.onnx_model import OnnxStableDiffusion

        sd = OnnxStableDiffusion(model, device=device, threads=threads)
        token_ids = [sd.tokenizer.add_token(name) for name in token_names]
        self.objective = Objective(sd, token_ids, token, property, chunk_size=chunk_size, loss=loss)

    def losses(self, vectors: np.ndarray, evaluation) -> np.ndarray:
        return self.objective.losses(vectors, evaluation)

    def row_losses(self, vectors: np.ndarray, evaluation) -> np.ndarray:
        return self.objective.row_losses(vectors, evaluation)

    def pid(self) -> int:
        return os.getpid()


class RayPool:
    """The "ray" evaluator (edgeinv/evaluators.py): same interface as `Objective`."""

    def __init__(self, config, objective):
        from edgeinv.embedding_files import token_names

        ray = connect(config.ray)
        self.ray = ray
        threads = config.threads or 1
        cpus = int(ray.cluster_resources().get("CPU", 0))
        workers = config.workers or max(1, cpus // threads)
        if workers * threads > cpus:
            raise UserError(f"--workers {workers} x --threads {threads} needs {workers * threads} CPUs; the Ray cluster has {cpus}: "
                            f"use --workers {max(1, cpus // threads)} or fewer")
        actor = ray.remote(num_cpus=threads, max_restarts=-1, max_task_retries=-1)(ObjectiveActor)
        names = token_names(config.token, config.vectors)
        self.actors = [actor.remote(config.model, config.device, threads, names, config.token, config.property, config.chunk_size, objective.loss)
                       for _ in range(workers)]
        self.captions = objective.captions
        self.loss = objective.loss
        self.token_ids = objective.token_ids
        self.unet_rows = 0

    def losses(self, vectors: np.ndarray, evaluation) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float32)
        self.unet_rows += len(vectors) * len(evaluation)
        if len(vectors) < len(self.actors):
            # Fewer candidates than actors (DVAR's one mean each generation): split the
            # samples instead; the per-sample losses are combined here, in the same order.
            parts = [p for p in np.array_split(np.arange(len(evaluation)), len(self.actors)) if len(p)]
            futures = [actor.row_losses.remote(vectors, evaluation.subset(p)) for actor, p in zip(self.actors, parts)]
            return combine_samples(np.concatenate(self.ray.get(futures), axis=1), self.loss)
        shared = self.ray.put(evaluation)  # once per call, read by every actor
        slices = [s for s in np.array_split(np.arange(len(vectors)), len(self.actors)) if len(s)]
        futures = [actor.losses.remote(vectors[s], shared) for actor, s in zip(self.actors, slices)]
        return np.concatenate(self.ray.get(futures))

    def pids(self) -> list[int]:
        return self.ray.get([actor.pid.remote() for actor in self.actors])

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []
