"""The user's images and the captions they are learned with.

`load_images(folder, size)` reads every picture it can (jpg, png, webp, bmp, tiff), fixes
EXIF rotation, converts odd modes to RGB (transparency over white, CMYK, 16-bit, float),
resizes the short side and centre-crops to the model's resolution. A file it cannot use
is skipped with a warning that names it; an empty result is an error that says why.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edgeinv.errors import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
MAX_PIXELS = Image.MAX_IMAGE_PIXELS  # Pillow's bomb guard (about 89 megapixels); larger pictures are refused by name

# Textual inversion's usual caption templates (the diffusers example's, shortened).
OBJECT_TEMPLATES = (
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}", "a photo of a clean {}",
    "a photo of my {}", "a photo of the cool {}", "a close-up photo of a {}", "a bright photo of the {}", "a good photo of a {}",
    "a photo of one {}", "a rendition of the {}", "a photo of the nice {}", "a good photo of the {}", "a photo of the small {}",
    "a picture of a {}", "a drawing of a {}", "an image of a {}",
)
STYLE_TEMPLATES = (
    "a painting in the style of {}", "a rendering in the style of {}", "a cropped painting in the style of {}",
    "the painting in the style of {}", "a clean painting in the style of {}", "a picture in the style of {}",
    "a cool painting in the style of {}", "a close-up painting in the style of {}", "a bright painting in the style of {}",
    "a good painting in the style of {}", "a rendition in the style of {}", "a nice painting in the style of {}",
)
TEMPLATES = {"object": OBJECT_TEMPLATES, "style": STYLE_TEMPLATES}


@dataclass
class ImageSet:
    images: np.ndarray  # [n, size, size, 3] uint8
    paths: list[Path]
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB: alpha composited over white, 16-bit and float scaled to 8-bit."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if image.mode == "F":
            low, high = float(values.min()), float(values.max())
            values = (values - low) / max(high - low, 1e-12) * 255
        elif values.max() > 65535:  # 32-bit integer pictures: scale their own range
            low, high = min(float(values.min()), 0.0), float(values.max())
            values = (values - low) / (high - low) * 255
        else:
            values = values / (257.0 if values.max() > 255 else 1.0)
        image = Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def resize_and_crop(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    scale = size / min(width, height)
    resized = image.resize((max(size, round(width * scale)), max(size, round(height * scale))), Image.Resampling.LANCZOS)
    left, top = (resized.width - size) // 2, (resized.height - size) // 2
    return resized.crop((left, top, left + size, top + size))


def load_image(path: Path, size: int, min_side: int) -> np.ndarray:
    """One picture as [size, size, 3] uint8; raises ValueError with a reason to skip it."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as opened:
                if opened.width * opened.height > MAX_PIXELS:
                    raise ValueError(f"{opened.width}x{opened.height} pixels is too large; downscale it below {MAX_PIXELS // 1_000_000} megapixels")
                opened.draft("RGB", (size * 2, size * 2))  # JPEG: decode at reduced size
                image = ImageOps.exif_transpose(opened)
                image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ValueError(f"too large (over {MAX_PIXELS // 1_000_000} megapixels); downscale it") from None
        except UnidentifiedImageError as error:
            raise ValueError(f"not a readable image ({type(error).__name__})") from None
        except (OSError, SyntaxError) as error:
            raise ValueError(f"corrupt or truncated ({str(error).splitlines()[0][:80]})") from None
    if min(image.size) < min_side:
        raise ValueError(f"{image.width}x{image.height} is smaller than {min_side} pixels on a side; use a larger picture")
    return np.asarray(resize_and_crop(to_rgb(image), size), dtype=np.uint8)


def picture_folder_entries(folder: str | Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(regular files, unusable entries with a reason) in `folder`; a one-line error when it is not a folder."""
    folder = Path(folder)
    if not folder.exists():
        raise UserError(f"{folder}: no such folder; give a folder of 3-20 pictures of your concept")
    if folder.is_file():
        raise UserError(f"{folder}: is a file; give the folder that holds your pictures")
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder; give the folder that holds your pictures")
    try:
        entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError as error:
        raise UserError(f"{folder}: cannot list it ({error.strerror}); give a folder you can read") from None
    files, broken = [], []
    for path in entries:
        if path.is_file():
            files.append(path)
        elif path.is_symlink():
            broken.append((path, "a broken symbolic link (or a loop); point it at a picture or remove it"))
    return files, broken


def images_digest(folder: str | Path) -> str:
    """sha256 over the names and bytes of the folder's picture files: what `--resume` must find unchanged."""
    files, _ = picture_folder_entries(folder)
    digest = hashlib.sha256()
    for path in files:
        if path.suffix.lower() in IMAGE_SUFFIXES:
            digest.update(path.name.encode() + b"\0")
            try:
                digest.update(hashlib.sha256(path.read_bytes()).digest())
            except OSError as error:
                digest.update(f"unreadable: {error.errno}".encode())
    return digest.hexdigest()


def load_images(folder: str | Path, size: int, min_side: int | None = None, warn=print) -> ImageSet:
    folder = Path(folder)
    candidates, broken = picture_folder_entries(folder)
    min_side = min_side if min_side is not None else max(8, size // 2)
    images, paths, skipped = [], [], list(broken)
    for path in candidates:
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append((path, f"not an image file (expected {', '.join(sorted(IMAGE_SUFFIXES))})"))
            continue
        try:
            images.append(load_image(path, size, min_side))
            paths.append(path)
        except ValueError as reason:
            skipped.append((path, str(reason)))
    if not images:  # one line that gives the reasons, rather than a warning per file and then an error
        if not candidates and not broken:
            raise UserError(f"{folder}: the folder is empty; put 3-20 pictures of your concept in it")
        reasons = "; ".join(f"{path.name}: {reason}" for path, reason in skipped[:3]) + ("; ..." if len(skipped) > 3 else "")
        raise UserError(f"{folder}: no usable picture among {len(candidates) + len(broken)} files ({reasons})")
    for path, reason in skipped:
        warn(f"skipping {path}: {reason}")
    if len(images) < 3:
        warn(f"only {len(images)} picture{'s' if len(images) > 1 else ''} in {folder}; 3-20 give a more faithful concept")
    return ImageSet(np.stack(images), paths, skipped)


def captions(token: str, property: str, count: int) -> list[str]:
    """The first `count` captions for the token, cycling through the templates in order."""
    templates = TEMPLATES[property]
    return [templates[i % len(templates)].format(token) for i in range(count)]
