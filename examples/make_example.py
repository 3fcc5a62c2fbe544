"""Render an example concept with the shapes world: pictures the default model never saw.

    python examples/make_example.py orange cross examples/orange-cross

The default model drew orange crosses in training under a placeholder word whose row was then
erased (models/train_default_model.py): it can draw them but has no word for them, and
`edgeinv invert examples/orange-cross` teaches it one. These five pictures are rendered from
their own seed, not taken from the training set.
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from edgeinv import shapes


def main(color: str, shape: str, out: Path, count: int = 5, seed: int = 2024) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        scene = shapes.random_scene(rng, color=color, shape=shape, allow_held_out=True)
        Image.fromarray(shapes.render(scene)).save(out / f"{color}-{shape}-{i}.png")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
