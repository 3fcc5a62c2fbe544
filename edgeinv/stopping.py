"""When to stop: the deterministic-loss variance ratio (DVAR; Voronov et al. 2023).

Every step the caller records the loss on one frozen evaluation batch (fixed images,
captions, noise and timesteps), so the number moves only when the embedding does. Once the
history holds `window` values,

    ratio = var(history[-window:]) / var(history)        (population variances)

and training stops when ratio < threshold: the recent values vary little compared with the
whole descent. The published rule counts the window in optimiser steps, which does not
transfer between optimisers whose steps cost differently; `window_in_steps` converts a
window expressed in UNet sample-evaluations (the unit of cost) to steps of a given optimiser.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def variance_ratio(history: list[float] | np.ndarray, window: int) -> float | None:
    """var(last `window`) / var(all); None until the history holds `window` values."""
    values = np.asarray(history, dtype=np.float64)
    if window < 2 or len(values) < window:
        return None
    total = values.var()
    if total == 0.0:
        return 0.0  # a flat history has stopped moving
    return float(values[-window:].var() / total)


def window_in_steps(window_evaluations: int, evaluations_per_step: int, minimum: int = 5) -> int:
    """A window of UNet sample-evaluations, as a number of steps of one optimiser."""
    return max(minimum, int(round(window_evaluations / max(1, evaluations_per_step))))


@dataclass
class Dvar:
    window: int
    threshold: float
    history: list[float] = field(default_factory=list)

    def update(self, value: float) -> bool:
        """Record one deterministic-loss value; True when it is time to stop."""
        self.history.append(float(value))
        ratio = self.ratio
        return ratio is not None and ratio < self.threshold

    @property
    def ratio(self) -> float | None:
        return variance_ratio(self.history, self.window)

    def state(self) -> dict:
        return {"window": self.window, "threshold": self.threshold, "history": list(self.history)}

    @classmethod
    def from_state(cls, state: dict) -> "Dvar":
        return cls(int(state["window"]), float(state["threshold"]), [float(v) for v in state["history"]])
