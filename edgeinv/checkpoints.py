"""What every method's checkpoints share: atomic writes, and the one-line refusals of a
checkpoint that is missing, damaged, pickled by an older edgeinv or made with other settings.
Each method keeps its own format (invert.py: JSON; gradient/train.py: torch weights-only)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from edgeinv.config import InvertConfig
from edgeinv.errors import UserError
from edgeinv.files import atomic_path

OLD_CHECKPOINTS = ("checkpoint.pkl",)  # older edgeinv pickled the optimiser; never unpickled


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
