"""What a finished run would have returned had it stopped earlier.

`edgeinv invert` ends with a final choice: among the vectors with the eight lowest deterministic
(DVAR) losses so far and the last one, plus the start vector, the one with the lowest loss on
the run's held-out evaluation set. A run's files hold everything needed to redo that choice at
any earlier stop:
- the forward-only method (`ForwardOnlyRun`): its JSON checkpoint records every generation's
  losses, so replaying ask/tell (`edgeinv.invert.replay`) rebuilds the optimiser's mean at
  every generation;
- textual inversion (`GradientRun`): its checkpoint keeps the token at every step.
Both report the time and UNet evaluations spent by any stop, from the run's history (visual
initialisation included, the process's start and model loading not).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgeinv.data import load_images
from edgeinv.embedding_files import load_embedding, token_names
from edgeinv.config import InvertConfig
from edgeinv.history import contender_generations
from edgeinv.invert import CHECKPOINT, replay
from edgeinv.objective import HELDOUT_SET, LatentCache, Objective, seeded_evaluation_set, timestep_range
from edgeinv.onnx_model import OnnxStableDiffusion
from edgeinv.optimizers import OPTIMIZERS
from edgeinv.stopping import Dvar
from edgeinv.subspace import make_basis


def dvar_stop(deterministic: list[float], window: int, threshold: float) -> int | None:
    """The number of steps run before DVAR (edgeinv/stopping.py) stops (None: it never does)."""
    dvar = Dvar(window, threshold)
    for step, value in enumerate(deterministic):
        if dvar.update(value):
            return step + 1
    return None


class FinishedRun:
    """The parts both kinds of run share: settings, history, and the held-out final choice."""

    def __init__(self, model: OnnxStableDiffusion, out: Path, images: Path | None = None):
        saved = json.loads((out / "config.json").read_text())
        settings = {k: tuple(v) if k == "timesteps" else v for k, v in saved["settings"].items() if k in InvertConfig.__dataclass_fields__}
        self.config = InvertConfig(**settings)
        self.result = saved["result"]
        self.history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
        self.deterministic = [h["deterministic_loss"] for h in self.history]
        # The pictures: the run's own folder, or the same pictures elsewhere (renders are redrawn per benchmark).
        pictures = load_images(images or self.config.images, model.image_size)
        token = self.config.token + "-replay"
        ids = [model.tokenizer.token_id(n) or model.tokenizer.add_token(n) for n in token_names(token, self.config.vectors)]
        self.objective = Objective(model, ids, token, self.config.property, chunk_size=self.config.chunk_size, loss=self.config.loss)
        steps = timestep_range(*self.config.timesteps, int(model.scheduler_config.get("num_train_timesteps", 1000)))
        self.heldout = seeded_evaluation_set(LatentCache.encode(model, pictures.images), len(self.objective.captions), self.config.heldout,
                                             self.config.seed, HELDOUT_SET, scaling_factor=model.vae_scaling_factor, timesteps=steps, flip=self.config.flip)

    @property
    def steps(self) -> int:
        return len(self.history)

    def seconds_at(self, stop: int) -> float:
        """Initialisation plus search time by the end of `stop` steps (generations)."""
        return self.result["init_seconds"] + (self.history[stop - 1]["seconds"] if stop else 0.0)

    def unet_at(self, stop: int) -> int:
        return self.history[stop - 1]["unet_evaluations"] if stop else 0

    def vector_at(self, step: int) -> np.ndarray:
        raise NotImplementedError

    def start_vector(self) -> np.ndarray:
        raise NotImplementedError

    def choice(self, stop: int) -> tuple[str, np.ndarray]:
        """invert's final choice had the run stopped after `stop` steps: (its name, vectors [N, hidden])."""
        names = [f"@{s}" for s in contender_generations(self.deterministic[:stop])] + ["init"]
        candidates = np.stack([self.start_vector() if n == "init" else self.vector_at(int(n[1:])) for n in names])
        losses = self.objective.losses(candidates, self.heldout)
        best = int(np.argmin(losses))
        return names[best], candidates[best]


class ForwardOnlyRun(FinishedRun):
    """A cma-es / zo-sgd run: the optimiser's mean at every generation, rebuilt by replay."""

    def __init__(self, model: OnnxStableDiffusion, out: Path, images: Path | None = None):
        super().__init__(model, out, images)
        self.basis = make_basis(self.config.subspace, model.token_table, self.config.dim, self.config.seed)
        self.optimizer = OPTIMIZERS[self.config.optimizer].from_config(np.zeros(self.config.vectors * self.basis.shape[0]), self.config)
        self.means = replay(self.optimizer, json.loads((out / CHECKPOINT).read_text()), out / CHECKPOINT)
        # The start vector e0, from the run's output: what it chose = e0 + mean[chosen] @ basis.
        _, final = load_embedding(out / "learned_embeds.safetensors")
        chosen = self.result["chosen"]
        self.e0 = final - (self.means[int(chosen.split("@")[1])].reshape(self.config.vectors, -1) @ self.basis if "@" in chosen else 0.0)

    def vector_at(self, step: int) -> np.ndarray:
        return self.e0 + self.means[step].reshape(self.config.vectors, -1) @ self.basis

    def start_vector(self) -> np.ndarray:
        return self.e0


class GradientRun(FinishedRun):
    """A `--method ti` run: its checkpoint keeps the token at every step (needs torch to read)."""

    def __init__(self, model: OnnxStableDiffusion, out: Path, images: Path | None = None):
        import torch

        super().__init__(model, out, images)
        state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
        self.snapshots = {int(s): t.numpy().reshape(self.config.vectors, -1) for s, t in state["snapshots"].items()}
        _, final = load_embedding(out / "learned_embeds.safetensors")
        chosen = self.result["chosen"]
        # The start vector is not in the checkpoint; a run that chose it wrote it as its output.
        self.e0 = final if chosen == "init" else None

    def vector_at(self, step: int) -> np.ndarray:
        return self.snapshots[step]

    def start_vector(self) -> np.ndarray:
        return self.e0 if self.e0 is not None else self.snapshots[0]  # after one step of 5e-3: as near the start as the files allow
