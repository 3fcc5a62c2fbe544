"""The quality benchmarks' concepts and judge, shared by token_vs_words, dvar_window,
time_to_quality and loss_alignment.

A concept is a folder of pictures named `<colour>-<shape>` (its ground truth): the README's
example, or rendered pictures of a colour/shape pair the default model was never captioned
with. A token is judged by what it draws: "a photo of a <token>" with fresh sampling seeds,
scored by the shapes checker (both = colour and shape right), against the word prompts a user
could type instead.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from edgeinv import shapes
from edgeinv.generate import add_embedding, generate
from edgeinv.onnx_model import OnnxStableDiffusion

FRESH_SEED = 90_000  # sampling seeds far from any the search or the README uses
# Words a user might try for the unnamed concept, an orange cross (none of them names it; the
# placeholder word it was trained under has had its row erased): colour words and blends, and
# shape words, among them the nearest named shape.
ORANGE_WORDS = ("", "orange", "amber", "red and yellow", shapes.UNNAMED_WORD)
CROSS_WORDS = ("cross", "plus sign", "star")


def word_prompts(color: str, shape: str) -> list[str]:
    if (color, shape) == shapes.UNNAMED_CONCEPT:
        return [f"a photo of a {c} {s}".replace("  ", " ") for c in ORANGE_WORDS for s in CROSS_WORDS]
    return [f"a photo of a {color} {shape}", f"a photo of a {shape}"]


def render_pictures(color: str, shape: str, folder: Path, count: int = 5, seed: int = 4242) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, shapes.ALL_SHAPES.index(shape), list(shapes.COLORS).index(color)])
    for i in range(count):
        scene = shapes.random_scene(rng, color=color, shape=shape, allow_held_out=True)
        Image.fromarray(shapes.render(scene)).save(folder / f"{color}-{shape}-{i}.png")
    return folder


def concept_folders(folders: list[Path], never_captioned: bool) -> list[Path]:
    """The given folders, plus (`never_captioned`) fresh renders of every never-captioned pair."""
    folders = list(folders)
    if never_captioned:
        root = Path(tempfile.mkdtemp(prefix="never-captioned-"))
        folders += [render_pictures(c, s, root / f"{c}-{s}") for c, s in sorted(shapes.HELD_OUT_PAIRS)]
    return folders


def run_invert(folder: Path, token: str, out: Path, options: list[str]) -> dict:
    """`edgeinv invert` in a fresh process under /usr/bin/time: its wall time and peak memory."""
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "edgeinv.cli", "invert", str(folder), "--token", token, "--out", str(out), "--no-samples", *options]
    result = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"invert failed on {folder}:\n{result.stderr.split('Command being timed')[0][-3000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", result.stderr).group(1)
    seconds = sum(float(part) * 60**i for i, part in enumerate(reversed(wall.split(":"))))
    peak_mb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1)) / 1024
    return {"seconds": seconds, "peak_mb": peak_mb, "log": result.stdout + result.stderr}


def both_right(images: np.ndarray, color: str, shape: str) -> tuple[float, float, float]:
    """The fractions of pictures with the colour right, the shape right, and both."""
    readings = [shapes.read_image(image) for image in images]
    c = np.mean([r.color == color for r in readings])
    s = np.mean([r.shape == shape for r in readings])
    b = np.mean([r.color == color and r.shape == shape for r in readings])
    return float(c), float(s), float(b)


def token_draws(model: OnnxStableDiffusion, token: str, vectors: np.ndarray, color: str, shape: str, seeds: int) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Add `token` with `vectors` [N, hidden] to the model, draw "a photo of a <token>" with the
    fresh seeds and score the pictures."""
    multi: dict[str, int] = {}
    add_embedding(model, token, vectors, multi)
    images = generate(model, f"a photo of a {token}", n=seeds, seed=FRESH_SEED, multi_vector_tokens=multi)
    return images, both_right(images, color, shape)


def best_words(model: OnnxStableDiffusion, color: str, shape: str, seeds: int) -> tuple[str, float, dict[str, tuple[float, float, float]]]:
    """The word prompt that draws the concept most often: (prompt, its both-right, every prompt's scores)."""
    words = {p: both_right(generate(model, p, n=seeds, seed=FRESH_SEED), color, shape) for p in word_prompts(color, shape)}
    prompt = max(words, key=lambda p: words[p][2])
    return prompt, words[prompt][2], words
