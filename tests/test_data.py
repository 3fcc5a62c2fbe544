"""Image folders as users have them: odd modes, EXIF rotation, junk files, tiny and empty."""

import numpy as np
import pytest
from PIL import Image

from edgeinv.data import captions, load_images, to_rgb
from edgeinv.errors import UserError


def save(path, image, **kwargs):
    image.save(path, **kwargs)
    return path


@pytest.fixture
def warnings_seen():
    return []


def test_modes_become_rgb(tmp_path, warnings_seen):
    red = Image.new("RGB", (80, 80), (200, 10, 10))
    save(tmp_path / "a.png", red.convert("RGBA"))
    save(tmp_path / "b.jpg", red.convert("CMYK"))
    save(tmp_path / "c.png", Image.fromarray(np.full((80, 80), 40000, np.uint16)))  # 16-bit grey
    save(tmp_path / "d.png", red.convert("P"))
    save(tmp_path / "e.webp", red)
    save(tmp_path / "f.bmp", red.convert("L"))
    result = load_images(tmp_path, 64, warn=warnings_seen.append)
    assert result.images.shape == (6, 64, 64, 3) and result.images.dtype == np.uint8
    assert [p.name for p in result.paths] == ["a.png", "b.jpg", "c.png", "d.png", "e.webp", "f.bmp"]
    assert abs(int(result.images[2, 0, 0, 0]) - round(40000 / 257)) <= 1  # 16-bit scaled, not clipped
    assert result.images[0, 32, 32].tolist() == [200, 10, 10]


def test_transparency_goes_over_white():
    clear = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert np.asarray(to_rgb(clear))[0, 0].tolist() == [255, 255, 255]


def test_exif_rotation_is_applied(tmp_path, warnings_seen):
    wide = Image.new("RGB", (120, 60), (0, 0, 255))
    wide.paste((255, 0, 0), (0, 0, 60, 60))  # red on the left half
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    save(tmp_path / "rotated.jpg", wide, exif=exif, quality=95)
    image = load_images(tmp_path, 60, warn=warnings_seen.append).images[0].astype(int)
    # Shown upright the picture is 60 wide, 120 tall, red above blue; the centre crop keeps
    # red at the top and blue at the bottom. Ignoring EXIF would give red left, blue right.
    assert image[5, 30, 0] > 200 and image[5, 30, 2] < 60
    assert image[55, 30, 2] > 200 and image[55, 30, 0] < 60


def test_junk_and_corrupt_files_are_skipped_by_name(tmp_path, warnings_seen):
    for i in range(3):
        save(tmp_path / f"good{i}.png", Image.new("RGB", (64, 64), (i * 50, 0, 0)))
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    (tmp_path / "truncated.jpg").write_bytes((tmp_path / "good0.png").read_bytes()[:40])
    (tmp_path / ".DS_Store").write_bytes(b"\0\0")
    save(tmp_path / "tiny.png", Image.new("RGB", (10, 10)))
    result = load_images(tmp_path, 64, warn=warnings_seen.append)
    assert len(result.images) == 3
    skipped = {p.name for p, _ in result.skipped}
    assert skipped == {"notes.txt", "broken.png", "truncated.jpg", "tiny.png"}
    assert all(any(name in w for w in warnings_seen) for name in skipped)
    assert not any(".DS_Store" in w for w in warnings_seen)


def test_big_images_are_reduced(tmp_path, warnings_seen):
    save(tmp_path / "big.jpg", Image.new("RGB", (4000, 3000), (0, 128, 0)))
    assert load_images(tmp_path, 64, warn=warnings_seen.append).images.shape == (1, 64, 64, 3)


@pytest.mark.parametrize("setup, message", [
    (lambda d: None, "no such folder"),
    (lambda d: d.mkdir(), "folder is empty"),
    (lambda d: (d.mkdir(), (d / "a.txt").write_text("x")), "no usable picture"),
    (lambda d: d.write_text("x"), "is a file"),
])
def test_unusable_folders_are_one_line_errors(tmp_path, setup, message):
    folder = tmp_path / "images"
    setup(folder)
    with pytest.raises(UserError, match=message) as error:
        load_images(folder, 64, warn=lambda m: None)
    assert "\n" not in str(error.value)


def test_few_images_warn(tmp_path, warnings_seen):
    save(tmp_path / "only.png", Image.new("RGB", (64, 64)))
    load_images(tmp_path, 64, warn=warnings_seen.append)
    assert any("only 1 picture" in w for w in warnings_seen)


def test_captions_cycle_through_templates():
    texts = captions("<x>", "object", 20)
    assert texts[0] == "a photo of a <x>" and len(set(texts)) == 18 and texts[18] == texts[0]
    assert captions("<s>", "style", 1) == ["a painting in the style of <s>"]


def test_32_bit_integer_tiff_keeps_its_contrast(tmp_path, warnings_seen):
    values = np.zeros((80, 80), np.int32)
    values[:, 40:] = 5_000_000  # a mode-I TIFF far past 16 bits: right half bright, left half dark
    Image.fromarray(values, "I").save(tmp_path / "deep.tif")
    image = load_images(tmp_path, 64, warn=warnings_seen.append).images[0]
    assert image[32, 5].max() < 10 and image[32, 60].min() > 245  # not all white


def test_symlink_loop_is_named(tmp_path, warnings_seen):
    import os

    for i in range(3):
        save(tmp_path / f"good{i}.png", Image.new("RGB", (64, 64), (i * 50, 0, 0)))
    os.symlink(tmp_path / "loop.png", tmp_path / "loop.png")
    result = load_images(tmp_path, 64, warn=warnings_seen.append)
    assert len(result.paths) == 3
    assert any("loop.png" in w and "symbolic link" in w for w in warnings_seen), warnings_seen


@pytest.mark.parametrize("kind", ["cmyk-jpeg", "16-bit-png", "animated-png", "animated-webp", "palette-transparent"])
def test_odd_but_valid_pictures_are_used(tmp_path, warnings_seen, kind):
    red = Image.new("RGB", (80, 80), (200, 10, 10))
    if kind == "cmyk-jpeg":
        save(tmp_path / "a.jpg", red.convert("CMYK"))
    elif kind == "16-bit-png":
        save(tmp_path / "a.png", Image.fromarray(np.full((80, 80), 60000, np.uint16)))
    elif kind.startswith("animated"):
        frames = [red, Image.new("RGB", (80, 80), (10, 200, 10))]
        save(tmp_path / ("a.png" if kind.endswith("png") else "a.webp"), frames[0], save_all=True, append_images=frames[1:], duration=100)
    else:
        save(tmp_path / "a.png", red.convert("P"), transparency=0)
    result = load_images(tmp_path, 64, warn=warnings_seen.append)
    assert result.images.shape == (1, 64, 64, 3) and not result.skipped, warnings_seen


def test_images_digest_follows_the_bytes_not_the_path(tmp_path):
    import shutil

    from edgeinv.data import images_digest

    a = tmp_path / "a"
    a.mkdir()
    save(a / "1.png", Image.new("RGB", (64, 64), (1, 2, 3)))
    b = tmp_path / "b"
    shutil.copytree(a, b)
    assert images_digest(a) == images_digest(b)
    save(b / "1.png", Image.new("RGB", (64, 64), (1, 2, 4)))
    assert images_digest(a) != images_digest(b)
