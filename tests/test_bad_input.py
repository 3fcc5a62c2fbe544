"""Every bad input: exit status 2, exactly one line on stderr, no traceback, nothing lost.

Each case builds its inputs in a fresh folder and runs the real command line in a fresh
interpreter. Cases that could destroy earlier files name them; those files must be
byte-identical afterwards, and no temporary file may be left beside them. Disk-full cases
mount a small tmpfs and run only as root.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from safetensors.numpy import save_file

from tests.conftest import DIFFUSERS_DIR, ONNX_DIR

FAST = ["--budget", "2", "--dim", "4", "--popsize", "4", "--samples", "2", "--heldout", "2", "--init", "red", "--no-samples"]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def cli(*args, user: int | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "edgeinv.cli", *map(str, args)]
    if user is not None:
        command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command]
        cwd = Path("/")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def assert_one_line_error(done: subprocess.CompletedProcess, fragment: str) -> None:
    lines = done.stderr.splitlines()  # not stripped: a blank line before the error counts too
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert len(lines) == 1, done.stderr
    assert fragment.lower() in lines[0].lower(), (fragment, lines[0])


def snapshot(paths: list[Path]) -> dict[Path, bytes]:
    files = {}
    for path in paths:
        for file in ([path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())):
            files[file] = file.read_bytes()
    return files


def picture(path: Path, color=(230, 120, 20), size: int = 96) -> Path:
    image = Image.new("RGB", (size, size), (250, 250, 250))
    ImageDraw.Draw(image).ellipse([size // 5, size // 5, size * 4 // 5, size * 4 // 5], fill=color)
    image.save(path)
    return path


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that claims width x height (Pillow reads the size from the header alone)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def concept(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("concept")
    for i, color in enumerate([(230, 120, 20), (240, 130, 30), (220, 110, 10), (235, 125, 25)]):
        picture(folder / f"{i}.png", color)
    return folder


@pytest.fixture(scope="module")
def finished_run(concept, tmp_path_factory) -> Path:
    """A real (tiny) run folder with its checkpoint, for the --resume cases."""
    out = tmp_path_factory.mktemp("finished") / "run"
    done = cli("invert", concept, "--out", out, *FAST)
    assert done.returncode == 0, done.stderr
    return out


class Mounts:
    def __init__(self, base: Path):
        self.base, self.points = base, []

    def tmpfs(self, name: str, size: str, readonly: bool = False) -> Path:
        if not IS_ROOT:
            pytest.skip("mounting a tmpfs needs root")
        point = self.base / name
        point.mkdir()
        options = f"size={size}" + (",ro" if readonly else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        self.points.append(point)
        return point

    def remount_readonly(self, point: Path) -> None:
        subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True)

    def close(self) -> None:
        for point in reversed(self.points):
            subprocess.run(["umount", "-l", str(point)], capture_output=True)


@pytest.fixture
def mounts(tmp_path):
    m = Mounts(tmp_path)
    yield m
    m.close()


def fill(folder: Path, leave: int = 0) -> None:
    """Fill a tmpfs until at most `leave` bytes are free."""
    stat = os.statvfs(folder)
    free = stat.f_bavail * stat.f_frsize - leave
    with open(folder / "filler", "wb") as f:
        try:
            f.write(b"\0" * max(free, 0))
        except OSError:
            pass


def model_copy(tmp: Path) -> Path:
    target = tmp / "model"
    shutil.copytree(ONNX_DIR, target)
    return target


def edit_manifest(model: Path, change) -> None:
    path = model / "edgeinv.json"
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


def embedding(tmp: Path, name: str, tensors: dict, metadata=None) -> Path:
    path = tmp / name
    save_file({k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def folder_with(tmp: Path, *makers) -> Path:
    folder = tmp / "pictures"
    folder.mkdir()
    for make in makers:
        make(folder)
    return folder


class RunCode:
    """Unpickling this would create a file: proof that a checkpoint was (not) unpickled."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


HIDDEN = json.loads((ONNX_DIR / "edgeinv.json").read_text())["architecture"]["hidden_size"]  # the shipped model's text width


def grow_latent_size(record: dict) -> None:
    """A hand-edited manifest: a different latent size (and the image size that goes with it)."""
    arch = record["architecture"]
    arch.update(latent_size=arch["latent_size"] + 8, image_size=(arch["latent_size"] + 8) * arch["vae_scale_factor"])


# Each case: (tmp, concept, finished_run, mounts) -> (args, fragment, preserved paths)
def case(args, fragment, preserved=()):
    return list(args), fragment, list(preserved)


CASES = {
    # ---- invert: the pictures folder
    "images-dev-null": lambda t, c, r, m: case(["invert", "/dev/null", *FAST], "not a folder"),
    "images-missing": lambda t, c, r, m: case(["invert", t / "nowhere", *FAST], "no such folder"),
    "images-a-file": lambda t, c, r, m: case(["invert", picture(t / "one.png"), *FAST], "is a file"),
    "images-empty-folder": lambda t, c, r, m: case(["invert", folder_with(t), *FAST], "empty"),
    "images-zero-byte": lambda t, c, r, m: case(["invert", folder_with(t, lambda f: (f / "a.png").write_bytes(b"")), *FAST], "no usable picture"),
    "images-corrupt": lambda t, c, r, m: case(["invert", folder_with(t, lambda f: (f / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"junk" * 50)), *FAST], "no usable picture"),
    "images-truncated": lambda t, c, r, m: case(["invert", folder_with(t, lambda f: (f / "a.png").write_bytes(picture(t / "full.png").read_bytes()[:60])), *FAST], "no usable picture"),
    "images-1x1": lambda t, c, r, m: case(["invert", folder_with(t, lambda f: Image.new("RGB", (1, 1)).save(f / "a.png")), *FAST], "smaller than"),
    "images-huge-100mp": lambda t, c, r, m: case(["invert", folder_with(t, lambda f: png_header_only(f / "a.png", 10000, 10000)), *FAST], "too large"),
    "images-huge-400mp": lambda t, c, r, m: case(["invert", folder_with(t, lambda f: png_header_only(f / "a.png", 20000, 20000)), *FAST], "too large"),
    "images-only-text-files": lambda t, c, r, m: case(["invert", folder_with(t, lambda f: (f / "notes.txt").write_text("x")), *FAST], "not an image file"),
    "images-symlink-loop": lambda t, c, r, m: case(["invert", folder_with(t, lambda f: os.symlink(f / "loop.png", f / "loop.png")), *FAST], "symbolic link"),
    # ---- invert: options
    "token-empty": lambda t, c, r, m: case(["invert", c, "--token", "", *FAST], "--token is empty"),
    "token-blank": lambda t, c, r, m: case(["invert", c, "--token", "   ", *FAST], "--token is empty"),
    "token-special": lambda t, c, r, m: case(["invert", c, "--token", "<|endoftext|>", "--out", t / "run", *FAST], "already a word"),
    "token-start-special": lambda t, c, r, m: case(["invert", c, "--token", "<|startoftext|>", "--out", t / "run", *FAST], "already a word"),
    "token-300-chars": lambda t, c, r, m: case(["invert", c, "--token", "x" * 300, *FAST], "at most 100"),
    "token-a-word": lambda t, c, r, m: case(["invert", c, "--token", "circle", "--out", t / "run", *FAST], "already a word"),
    "invert-seed-negative": lambda t, c, r, m: case(["invert", c, "--seed", "-1", *FAST], "--seed"),
    "dim-too-large": lambda t, c, r, m: case(["invert", c, "--out", t / "run", *FAST[:2], "--dim", "1000"], "--dim 1000"),
    "timesteps-reversed": lambda t, c, r, m: case(["invert", c, "--timesteps", "0.8", "0.2", "--out", t / "run", *FAST], "--timesteps"),
    "popsize-one": lambda t, c, r, m: case(["invert", c, "--popsize", "1", "--out", t / "run"], "--popsize"),
    "method-unknown": lambda t, c, r, m: case(["invert", c, "--method", "sgd"], "--method"),
    "optimizer-unknown": lambda t, c, r, m: case(["invert", c, "--optimizer", "adam"], "--optimizer"),
    "optimizer-zo-sgd-with-ti": lambda t, c, r, m: case(["invert", c, "--method", "ti", "--optimizer", "zo-sgd", "--out", t / "run"], "--optimizer zo-sgd"),
    "vectors-zero": lambda t, c, r, m: case(["invert", c, "--vectors", "0", *FAST], "--vectors"),
    "mu-zero": lambda t, c, r, m: case(["invert", c, "--optimizer", "zo-sgd", "--mu", "0", *FAST], "--mu"),
    "sigma0-zero": lambda t, c, r, m: case(["invert", c, "--sigma0", "0", *FAST], "--sigma0"),
    "sigma0-with-zo-sgd": lambda t, c, r, m: case(["invert", c, "--optimizer", "zo-sgd", "--sigma0", "2", "--out", t / "run", *FAST], "--sigma0 is CMA-ES"),
    "probes-zero": lambda t, c, r, m: case(["invert", c, "--optimizer", "zo-sgd", "--probes", "0", *FAST], "--probes"),
    "probes-with-cma-es": lambda t, c, r, m: case(["invert", c, "--probes", "8", "--out", t / "run", *FAST], "zo-sgd option"),
    "lr-with-cma-es": lambda t, c, r, m: case(["invert", c, "--lr", "0.5", "--out", t / "run", *FAST], "zo-sgd option"),
    # ---- invert: --out
    "out-existing-file": lambda t, c, r, m: (lambda f: case(["invert", c, "--out", f, *FAST], "existing file", [f]))(picture(t / "keep.png")),
    "out-inside-a-file": lambda t, c, r, m: (lambda f: case(["invert", c, "--out", f / "run", *FAST], "is a file", [f]))(picture(t / "keep.png")),
    "out-name-too-long": lambda t, c, r, m: case(["invert", c, "--out", t / ("r" * 300), *FAST], "longer than 255"),
    "out-read-only": lambda t, c, r, m: case(["invert", c, "--out", m.tmpfs("ro", "1m", readonly=True) / "run", *FAST], "not writable"),
    "out-not-empty": lambda t, c, r, m: (lambda d: case(["invert", c, "--out", d, *FAST], "not empty", [d]))(folder_with(t, lambda f: [picture(f / f"{i}.png") for i in range(5)])),
    "out-earlier-run": lambda t, c, r, m: (lambda d: case(["invert", c, "--out", d, *FAST], "earlier run", [d]))(shutil.copytree(r, t / "run")),
    "resume-and-overwrite": lambda t, c, r, m: case(["invert", c, "--out", shutil.copytree(r, t / "run"), "--resume", "--overwrite", *FAST], "contradict"),
    # ---- invert: --resume
    "resume-without-out": lambda t, c, r, m: case(["invert", c, "--resume", *FAST], "--resume needs --out"),
    "resume-no-checkpoint": lambda t, c, r, m: case(["invert", c, "--out", t / "fresh", "--resume", *FAST], "no checkpoint"),
    "resume-damaged-checkpoint": lambda t, c, r, m: resume_with(t, c, r, lambda p: p.write_bytes(b'{"fingerprint": "abc", "gen'), "unreadable checkpoint"),
    "resume-empty-checkpoint": lambda t, c, r, m: resume_with(t, c, r, lambda p: p.write_bytes(b""), "unreadable checkpoint"),
    "resume-wrong-type": lambda t, c, r, m: resume_with(t, c, r, lambda p: p.write_text("[1, 2, 3]"), "not an edgeinv checkpoint"),
    "resume-missing-fields": lambda t, c, r, m: resume_with(t, c, r, lambda p: p.write_text(json.dumps({k: v for k, v in json.loads(p.read_text()).items() if k != "told"})), "damaged checkpoint"),
    "resume-tampered-losses": lambda t, c, r, m: resume_with(t, c, r, tamper_losses, "does not replay"),
    "resume-old-pickle": lambda t, c, r, m: resume_old_pickle(t, c, r),
    "resume-ti-damaged-checkpoint": lambda t, c, r, m: ti_checkpoint(t, c, lambda p: p.write_bytes(b"PK\x03\x04 not a torch file")),
    "resume-ti-pickled-code": lambda t, c, r, m: ti_checkpoint(t, c, "code"),
    "resume-other-settings": lambda t, c, r, m: case(["invert", c, "--out", shutil.copytree(r, t / "run"), "--resume", *FAST, "--seed", "7"], "other settings", [t / "run"]),
    "resume-changed-pictures": lambda t, c, r, m: resume_changed_pictures(t, c, r),
    "resume-other-optimizer": lambda t, c, r, m: case(["invert", c, "--out", shutil.copytree(r, t / "run"), "--resume", *FAST, "--optimizer", "zo-sgd"], "other settings", [t / "run"]),
    "resume-other-vectors": lambda t, c, r, m: case(["invert", c, "--out", shutil.copytree(r, t / "run"), "--resume", *FAST, "--vectors", "2"], "other settings", [t / "run"]),
    # ---- generate
    "generate-seed-negative": lambda t, c, r, m: case(["generate", "a red circle", "--seed", "-1"], "--seed"),
    "generate-out-txt": lambda t, c, r, m: case(["generate", "a red circle", "--out", t / "x.txt"], "unknown picture extension"),
    "generate-out-read-only": lambda t, c, r, m: case(["generate", "a red circle", "--steps", "2", "--out", m.tmpfs("ro", "1m", readonly=True) / "x.png"], "not writable"),
    "generate-out-inside-a-file": lambda t, c, r, m: (lambda f: case(["generate", "a red circle", "--out", f / "x.png"], "existing file", [f]))(picture(t / "keep.png")),
    "generate-disk-full": lambda t, c, r, m: generate_disk_full(t, m),
    "invert-disk-full": lambda t, c, r, m: invert_disk_full(t, c, m),
    "embedding-missing": lambda t, c, r, m: case(["generate", "a <x>", "--embedding", t / "none.safetensors"], "no such embedding"),
    "embedding-unknown-format": lambda t, c, r, m: case(["generate", "a <x>", "--embedding", picture(t / "x.png")], "unknown embedding format"),
    "embedding-corrupt-safetensors": lambda t, c, r, m: (lambda p: case(["generate", "a <x>", "--embedding", p], "not a readable safetensors"))(write(t / "x.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")),
    "embedding-pt-not-torch": lambda t, c, r, m: (pytest.importorskip("torch"), case(["generate", "a <x>", "--embedding", write(t / "x.pt", b"this is not a torch file")], "not a readable torch"))[1],
    "embedding-pt-pickled-code": lambda t, c, r, m: pt_with_code(t),
    "embedding-empty-name": lambda t, c, r, m: case(["generate", "a <x>", "--embedding", embedding(t, "e.safetensors", {"": np.zeros(HIDDEN)})], "name stored in the file is empty"),
    "embedding-nan": lambda t, c, r, m: case(["generate", "a <x>", "--embedding", embedding(t, "e.safetensors", {"<x>": np.full(HIDDEN, np.nan)})], "NaN"),
    "embedding-zero-vectors": lambda t, c, r, m: case(["generate", "a <x>", "--embedding", embedding(t, "e.safetensors", {"emb_params": np.zeros((0, HIDDEN))})], "shape"),
    "embedding-wrong-width": lambda t, c, r, m: case(["generate", "a <x>", "--embedding", embedding(t, "e.safetensors", {"<x>": np.zeros(HIDDEN + 1)})], f"width {HIDDEN + 1}"),
    "embedding-too-many-tensors": lambda t, c, r, m: case(["generate", "a <x>", "--embedding", embedding(t, "e.safetensors", {"a": np.zeros(HIDDEN), "b": np.zeros(HIDDEN)})], "2 tensors"),
    "more-tokens-than-embeddings": lambda t, c, r, m: case(["generate", "a <x>", "--token", "<x>"], "more --token"),
    # ---- model folders
    "model-missing": lambda t, c, r, m: case(["generate", "x", "--model", t / "nowhere"], "no such model folder"),
    "model-manifest-empty": lambda t, c, r, m: case(["generate", "x", "--model", damaged_model(t, lambda d: (d / "edgeinv.json").write_text(""))], "edgeinv.json: unreadable"),
    "model-manifest-not-object": lambda t, c, r, m: case(["generate", "x", "--model", damaged_model(t, lambda d: (d / "edgeinv.json").write_text("[]"))], "not an edgeinv manifest"),
    "model-manifest-lacks-architecture": lambda t, c, r, m: case(["generate", "x", "--model", damaged_model(t, lambda d: edit_manifest(d, lambda rec: rec.pop("architecture")))], "architecture"),
    "model-manifest-lacks-files": lambda t, c, r, m: case(["generate", "x", "--model", damaged_model(t, lambda d: edit_manifest(d, lambda rec: rec.pop("files")))], "files"),
    "model-manifest-latent-size-edited": lambda t, c, r, m: case(["generate", "x", "--model", damaged_model(t, lambda d: edit_manifest(d, grow_latent_size))], "latent_size"),
    "model-scheduler-broken-json": lambda t, c, r, m: case(["generate", "x", "--model", damaged_model(t, lambda d: (d / "scheduler" / "scheduler_config.json").write_text("{broken"))], "scheduler_config.json: unreadable"),
    "model-tokenizer-broken": lambda t, c, r, m: case(["generate", "x", "--model", damaged_model(t, lambda d: (d / "tokenizer" / "vocab.json").write_text("{broken"))], "unreadable tokenizer"),
    "model-unet-truncated": lambda t, c, r, m: case(["generate", "x", "--model", damaged_model(t, lambda d: truncate(d / "unet" / "model.onnx"))], "truncated"),
    "model-unet-same-size-garbage": lambda t, c, r, m: case(["generate", "x", "--steps", "1", "--model", damaged_model(t, lambda d: garble(d / "unet" / "model.onnx"))], "ONNX Runtime cannot load"),
    "model-token-table-missing": lambda t, c, r, m: case(["generate", "x", "--model", damaged_model(t, lambda d: (d / "text_encoder" / "token_embeddings.safetensors").unlink())], "missing from the model folder"),
    "model-widths-mismatch": lambda t, c, r, m: case(["generate", "x", "--model", damaged_model(t, lambda d: edit_manifest(d, lambda rec: rec["architecture"].update(cross_attention_dim=768)))], "different models"),
    "model-private-files-other-user": lambda t, c, r, m: private_model_other_user(t),
    "model-a-diffusers-folder": lambda t, c, r, m: case(["generate", "x", "--model", DIFFUSERS_DIR], "PyTorch (diffusers) folder"),
    # ---- export
    "export-out-existing-file": lambda t, c, r, m: (lambda f: case(["export", DIFFUSERS_DIR, "--out", f], "existing file", [f]))(picture(t / "keep.png")),
    "export-out-other-model": lambda t, c, r, m: (lambda d: case(["export", DIFFUSERS_DIR, "--out", d], "holds a model exported from", [d]))(model_copy(t)),
    "export-out-other-files": lambda t, c, r, m: (lambda d: case(["export", DIFFUSERS_DIR, "--out", d], "holds other files", [d]))(folder_with(t, lambda f: picture(f / "a.png"))),
    "export-missing-source": lambda t, c, r, m: case(["export", t / "nope"], "no such folder"),
}


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:1000])


def garble(path: Path) -> None:
    path.write_bytes(b"\x07" * path.stat().st_size)


def damaged_model(tmp: Path, damage) -> Path:
    model = model_copy(tmp)
    damage(model)
    return model


def resume_with(tmp: Path, concept: Path, run: Path, damage, fragment: str):
    out = shutil.copytree(run, tmp / "run")
    damage(out / "checkpoint.json")
    return case(["invert", concept, "--out", out, "--resume", *FAST], fragment, [out])


def tamper_losses(path: Path) -> None:
    state = json.loads(path.read_text())
    losses = state["told"][0]
    best, worst = losses.index(min(losses)), losses.index(max(losses))
    losses[best], losses[worst] = losses[worst], losses[best]  # a new ranking: the optimiser asks other points at generation 1
    path.write_text(json.dumps(state))


def resume_old_pickle(tmp: Path, concept: Path, run: Path):
    out = tmp / "old"
    out.mkdir()
    marker = tmp / "unpickled"
    (out / "checkpoint.pkl").write_bytes(pickle.dumps({"fingerprint": RunCode(str(marker))}))
    args, fragment, preserved = case(["invert", concept, "--out", out, "--resume", *FAST], "never loaded", [out])
    return args, fragment, preserved, lambda: not marker.exists()


def resume_changed_pictures(tmp: Path, concept: Path, run: Path):
    pictures = shutil.copytree(concept, tmp / "pictures")
    out = tmp / "run"
    shutil.copytree(run, out)
    state = json.loads((out / "checkpoint.json").read_text())
    assert state["fingerprint"]  # the run was made from `concept`; same names, one picture changed:
    picture(pictures / "0.png", (10, 200, 10))
    # --model points nowhere: the fingerprint must be checked before any model is opened
    return case(["invert", pictures, "--out", out, "--resume", "--model", tmp / "no-model", *FAST], "other pictures", [out])


def ti_checkpoint(tmp: Path, concept: Path, damage):
    """--method ti --resume on a damaged checkpoint.pt, or one whose unpickling would run code."""
    torch = pytest.importorskip("torch")
    out = tmp / "ti-run"
    out.mkdir()
    marker = tmp / "unpickled"
    if damage == "code":
        torch.save({"fingerprint": RunCode(str(marker)), "step": 1}, out / "checkpoint.pt")
    else:
        damage(out / "checkpoint.pt")
    args, fragment, preserved = case(["invert", concept, "--method", "ti", "--out", out, "--resume", "--budget", "2"], "unreadable checkpoint", [out])
    return args, fragment, preserved, lambda: not marker.exists()


def pt_with_code(tmp: Path):
    torch = pytest.importorskip("torch")
    marker = tmp / "unpickled"
    path = tmp / "evil.pt"
    torch.save({"string_to_param": {"*": RunCode(str(marker))}}, path)
    args, fragment, preserved = case(["generate", "a <x>", "--embedding", path], "not a readable torch")
    return args, fragment, preserved, lambda: not marker.exists()


def generate_disk_full(tmp: Path, mounts: Mounts):
    disk = mounts.tmpfs("disk", "256k")
    earlier = picture(disk / "out.png", size=64)
    fill(disk, leave=2048)
    return case(["generate", "a red circle", "--steps", "2", "-n", "4", "--out", earlier], "No space left", [earlier])


def invert_disk_full(tmp: Path, concept: Path, mounts: Mounts):
    disk = mounts.tmpfs("disk", "256k")
    earlier = disk / "notes.txt"
    earlier.write_text("an earlier file on the same disk\n")
    fill(disk)
    args, fragment, preserved = case(["invert", concept, "--out", disk / "run", *FAST], "No space left", [earlier])
    return args, fragment, preserved, lambda: not [p for p in disk.rglob("*") if p.name.endswith(".tmp")]


def private_model_other_user(tmp: Path):
    import tempfile

    if not IS_ROOT or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run as another user")
    shared = Path(tempfile.mkdtemp(prefix="edgeinv-shared-"))  # /tmp/pytest-of-root is private
    os.chmod(shared, 0o755)
    model = model_copy(shared)
    (model / "text_encoder" / "token_embeddings.safetensors").chmod(0o600)  # what safetensors writes
    for folder in [Path(sys.executable).parent, Path(__file__).parent]:
        if not all(os.stat(p).st_mode & 0o001 for p in [folder, *folder.parents]):
            pytest.skip(f"{folder} is not reachable by other users")
    writable = shared / "out"
    writable.mkdir(mode=0o777)
    os.chmod(writable, 0o777)
    args, fragment, preserved = case(["generate", "x", "--steps", "1", "--model", model, "--out", writable / "x.png"], "not readable by this user")
    return args, fragment, preserved, lambda: shutil.rmtree(shared) or True, 65534


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_with_exit_status_2(name, tmp_path, concept, finished_run, mounts):
    built = CASES[name](tmp_path, concept, finished_run, mounts)
    args, fragment, preserved = built[:3]
    check = built[3] if len(built) > 3 else None
    user = built[4] if len(built) > 4 else None
    before = snapshot(preserved)
    done = cli(*args, user=user, cwd=tmp_path)
    assert_one_line_error(done, fragment)
    assert snapshot(preserved) == before, "earlier files changed"
    for path in preserved:
        folder = path if path.is_dir() else path.parent
        assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")], "temporary files left behind"
    if check is not None:
        assert check(), "the checkpoint or embedding was unpickled"


def test_table_covers_the_issue():
    assert len(CASES) >= 40
