"""A run's record, the same for every method: one `Generation` per generation or step
(history.jsonl), the rule for which of them compete in the final choice, and the result."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgeinv.files import atomic_path


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
