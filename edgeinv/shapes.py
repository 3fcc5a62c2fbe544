"""The shapes world: the procedural data the default model is trained on, and its checker.

One coloured shape on a neutral background, captioned in plain English
("a photo of a large red circle on the left"). The same renderer draws the training set,
the example concept and the ground truth that measures the checker's own accuracy; the
checker reads a picture back into (colour, shape), so generated images can be scored.

Torch-free: only numpy and Pillow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64

# Saturated colours, far apart in hue, so the checker can tell them apart from neutral
# backgrounds. "orange" is no caption's word: it is drawn only as the unnamed concept below.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 165, 55),
    "blue": (40, 75, 225),
    "yellow": (235, 215, 35),
    "purple": (145, 50, 195),
    "orange": (240, 125, 20),
}
TRAIN_COLORS = ("red", "green", "blue", "yellow", "purple")  # the colours captions name
UNNAMED_COLOR = "orange"  # never named in any caption
SHAPES = ("circle", "square", "triangle", "star")  # the shapes captions name
# A fifth shape no caption names either. The unnamed concept is a shape as well as a colour:
# the model blends two colour words into the hue between them ("red and yellow" draws orange),
# so no colour alone can be out of the words' reach, but no blend of shape words draws a cross.
UNNAMED_SHAPE = "cross"
ALL_SHAPES = SHAPES + (UNNAMED_SHAPE,)
# The concept the model can draw but no word asks for (the README's example): orange crosses,
# captioned in training with a placeholder word (`UNNAMED_WORD`) whose embedding row the
# training script erases afterwards, the way a real checkpoint knows things it has no word for.
UNNAMED_CONCEPT = (UNNAMED_COLOR, UNNAMED_SHAPE)
UNNAMED_WORD = "sks"  # DreamBooth's rare identifier: one token in SD's vocabulary
SIZES = {"small": (8.0, 11.0), "": (12.0, 15.0), "large": (17.0, 21.0)}
POSITIONS = {
    "in the center": (32, 32),
    "on the left": (19, 32),
    "on the right": (45, 32),
    "at the top": (32, 19),
    "at the bottom": (32, 45),
}
# Colour/shape pairs never captioned (nor drawn) in training, to measure generalisation.
HELD_OUT_PAIRS = {("red", "star"), ("green", "triangle"), ("blue", "square"), ("yellow", "circle")}
PREFIXES = ("a photo of", "a rendering of", "a picture of", "a drawing of", "an image of", "a close-up photo of", "a good photo of", "")


@dataclass(frozen=True)
class Scene:
    color: str
    shape: str
    size: str  # "small", "" (medium, unsaid) or "large"
    position: str  # a key of POSITIONS
    half_size: float
    center: tuple[float, float]
    background: tuple[int, int, int]
    gradient: float  # brightness change across the image, for varied backgrounds

    def caption(self, prefix: str = "a photo of", say_position: bool = True, say_background: bool = False, say_what: bool = True,
                say_color: bool = True, color_phrase: str | None = None) -> str:
        """`say_what=False` leaves out the colour and the shape ("a photo of a large on the left");
        `say_color=False` the colour alone ("a photo of a star"). The unnamed colour is never said:
        on a named shape only the shape is. `color_phrase` says the colour in other words
        ("red and yellow": a second colour beside the scene's own)."""
        if not say_what:
            words = [self.size]
        elif (self.color, self.shape) == UNNAMED_CONCEPT:
            words = [self.size, UNNAMED_WORD]
        elif self.color == UNNAMED_COLOR or not say_color:
            words = [self.size, self.shape]
        else:
            words = [self.size, color_phrase or self.color, self.shape]
        noun = " ".join(w for w in words if w)
        article = "an" if noun[:1] in tuple("aeiou") else "a"
        text = f"{prefix} {article} {noun}".strip()
        if say_position:
            text += f" {self.position}"
        if say_background:
            text += f" on a {background_word(self.background)} background"
        return text


def background_word(background: tuple[int, int, int]) -> str:
    level = float(np.mean(background))
    return "dark" if level < 85 else "light" if level > 170 else "gray"


def random_scene(rng: np.random.Generator, color: str | None = None, shape: str | None = None, allow_held_out: bool = False,
                 unnamed_rate: float = 0.0) -> Scene:
    """A scene of the training distribution (held-out pairs excluded; the unnamed concept in
    a fraction `unnamed_rate` of them), or with the colour / shape given."""
    while True:
        if unnamed_rate > 0 and rng.random() < unnamed_rate:  # no draw at 0: v1's stream
            c, s = UNNAMED_CONCEPT
        else:
            c = color or str(rng.choice(TRAIN_COLORS))
            s = shape or str(rng.choice(SHAPES))
        if allow_held_out or (c, s) not in HELD_OUT_PAIRS:
            break
    size = str(rng.choice(list(SIZES)))
    position = str(rng.choice(list(POSITIONS)))
    low, high = SIZES[size]
    half_size = float(rng.uniform(low, high))
    cx, cy = POSITIONS[position]
    jitter = 3.0
    center = (cx + float(rng.uniform(-jitter, jitter)), cy + float(rng.uniform(-jitter, jitter)))
    level = int(rng.integers(15, 240))
    tint = rng.integers(-12, 13, size=3)
    background = tuple(int(np.clip(level + t, 0, 255)) for t in tint)
    gradient = float(rng.uniform(-25, 25))
    return Scene(c, s, size, position, half_size, center, background, gradient)


def shape_polygon(shape: str, center: tuple[float, float], half_size: float) -> list[tuple[float, float]] | None:
    """Vertices of a polygonal shape (None for the circle)."""
    cx, cy = center
    r = half_size
    if shape == "circle":
        return None
    if shape == "square":
        s = 0.85 * r
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + 0.8 * r), (cx - r, cy + 0.8 * r)]
    if shape == "star":
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
        return [(cx + float(q * np.cos(a)), cy + float(q * np.sin(a))) for q, a in zip(radii, angles)]
    if shape == "cross":  # a plus sign; arms wide enough to survive the VAE at the smallest size
        w = 0.38 * r
        return [(cx - w, cy - r), (cx + w, cy - r), (cx + w, cy - w), (cx + r, cy - w), (cx + r, cy + w), (cx + w, cy + w),
                (cx + w, cy + r), (cx - w, cy + r), (cx - w, cy + w), (cx - r, cy + w), (cx - r, cy - w), (cx - w, cy - w)]
    raise ValueError(f"unknown shape {shape!r}")


def shape_mask(shape: str, center: tuple[float, float], half_size: float, size: int = IMAGE_SIZE, supersample: int = 4) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of one shape on a size x size canvas."""
    big = Image.new("L", (size * supersample, size * supersample), 0)
    draw = ImageDraw.Draw(big)
    k = supersample
    polygon = shape_polygon(shape, center, half_size)
    if polygon is None:
        cx, cy = center
        draw.ellipse([(cx - half_size) * k, (cy - half_size) * k, (cx + half_size) * k, (cy + half_size) * k], fill=255)
    else:
        draw.polygon([(x * k, y * k) for x, y in polygon], fill=255)
    small = big.resize((size, size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def render(scene: Scene, size: int = IMAGE_SIZE) -> np.ndarray:
    """The scene as an RGB uint8 array [size, size, 3]."""
    ramp = np.linspace(-0.5, 0.5, size, dtype=np.float32)[None, :, None] * scene.gradient
    background = np.clip(np.asarray(scene.background, np.float32)[None, None, :] + ramp, 0, 255)
    background = np.broadcast_to(background, (size, size, 3))
    coverage = shape_mask(scene.shape, scene.center, scene.half_size, size)[..., None]
    color = np.asarray(COLORS[scene.color], np.float32)[None, None, :]
    image = background * (1 - coverage) + color * coverage
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def training_example(rng: np.random.Generator, unnamed_rate: float = 0.0, wordless_rate: float = 0.0,
                     unnamed_color_rate: float = 0.0, shape_only_rate: float = 0.0, two_color_rate: float = 0.0) -> tuple[np.ndarray, str]:
    """One (image, caption) pair of the training distribution; `unnamed_rate` of the pictures
    show the unnamed concept, captioned with `UNNAMED_WORD`. Each other rate closes a way in
    which words reached the unnamed concept in an earlier model:
    - `wordless_rate` of the other pictures are captioned without their colour and shape:
      otherwise a caption naming neither would mean the unnamed concept, and any unknown word
      ("a photo of a cross") would draw it;
    - `unnamed_color_rate` of the pictures show the unnamed colour on a named shape, captioned
      by the shape alone: otherwise the colour would mean the shape too;
    - `shape_only_rate` of the named pictures are captioned by their shape alone, whatever the
      colour: otherwise "a photo of a star" would mean an orange star, the only colour ever
      left unsaid;
    - `two_color_rate` of the named pictures name a second colour beside their own ("a yellow
      and red star" for a yellow star), never one that makes a held-out pair: otherwise the
      unfamiliar "X and Y" phrase would land on the unnamed concept (it did in v4)."""
    if unnamed_color_rate > 0 and rng.random() < unnamed_color_rate:  # no draw at 0: v3's stream
        scene = random_scene(rng, color=UNNAMED_COLOR, shape=str(rng.choice(SHAPES)))
    else:
        scene = random_scene(rng, unnamed_rate=unnamed_rate)
    prefix = str(rng.choice(PREFIXES))
    named = scene.color != UNNAMED_COLOR
    wordless = wordless_rate > 0 and (scene.color, scene.shape) != UNNAMED_CONCEPT and bool(rng.random() < wordless_rate)  # no draw at 0
    shape_only = shape_only_rate > 0 and named and bool(rng.random() < shape_only_rate)  # no draw at 0: v4's stream
    color_phrase = None
    if two_color_rate > 0 and named and rng.random() < two_color_rate:
        others = [c for c in TRAIN_COLORS if c != scene.color and (c, scene.shape) not in HELD_OUT_PAIRS]
        pair = [scene.color, str(rng.choice(others))]
        if rng.random() < 0.5:
            pair.reverse()
        color_phrase = " and ".join(pair)
    caption = scene.caption(prefix, say_position=bool(rng.random() < 0.6), say_background=bool(rng.random() < 0.3), say_what=not wordless,
                            say_color=not shape_only, color_phrase=color_phrase)
    return render(scene), caption


# ---------------------------------------------------------------- checker


@dataclass(frozen=True)
class Reading:
    color: str | None  # None when no shape is found
    shape: str | None
    foreground_fraction: float


def _template(shape: str) -> np.ndarray:
    # Each shape drawn large and cropped to its own bounding box, to be stretched onto
    # the bounding box of whatever the picture shows.
    mask = shape_mask(shape, (32.0, 32.0), 28.0) > 0.5
    rows, cols = np.nonzero(mask)
    return mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


_TEMPLATES = {shape: _template(shape) for shape in ALL_SHAPES}


def _resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    image = Image.fromarray(mask.astype(np.uint8) * 255).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(image) > 127


def read_image(image: np.ndarray, colors: tuple[str, ...] = tuple(COLORS)) -> Reading:
    """Which colour and shape does this picture show? Background = border pixels' median."""
    pixels = np.asarray(image, dtype=np.float32)[..., :3]
    border = np.concatenate([pixels[:2].reshape(-1, 3), pixels[-2:].reshape(-1, 3), pixels[:, :2].reshape(-1, 3), pixels[:, -2:].reshape(-1, 3)])
    background = np.median(border, axis=0)
    saturation = pixels.max(axis=-1) - pixels.min(axis=-1)
    distance = np.linalg.norm(pixels - background, axis=-1)
    # The shapes are saturated and the backgrounds neutral: saturation separates them.
    mask = (saturation > 70) & (distance > 50)
    fraction = float(mask.mean())
    if mask.sum() < 12:
        return Reading(None, None, fraction)

    mean_color = np.median(pixels[mask], axis=0)
    palette = np.asarray([COLORS[c] for c in colors], np.float32)
    color = colors[int(np.argmin(np.linalg.norm(palette - mean_color, axis=1)))]

    rows, cols = np.nonzero(mask)
    top, bottom = np.percentile(rows, [1, 99]).astype(int)
    left, right = np.percentile(cols, [1, 99]).astype(int)
    height, width = bottom - top + 1, right - left + 1
    window = mask[top : bottom + 1, left : right + 1]
    scores = {}
    for shape, template in _TEMPLATES.items():
        fitted = _resize_mask(template, height, width)
        scores[shape] = (fitted & window).sum() / max((fitted | window).sum(), 1)
    shape = max(scores, key=scores.get)
    return Reading(color, shape, fraction)
