"""`edgeinv.json`: what an exported ONNX folder holds, written by export and read by every run.

The folder itself keeps optimum's Stable Diffusion ONNX layout; the manifest adds what
inversion needs to know without torch (the embedding-input text encoder, the token table,
prediction type, VAE scaling) and sizes + hashes that catch mismatched or truncated files.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

MANIFEST_NAME = "edgeinv.json"
FORMAT_VERSION = 1

# Files of optimum's layout plus edgeinv's additions, relative to the model folder.
TEXT_ENCODER_IDS = "text_encoder/model.onnx"
TEXT_ENCODER_EMBEDS = "text_encoder/inputs_embeds.onnx"
TOKEN_EMBEDDINGS = "text_encoder/token_embeddings.safetensors"
TOKEN_EMBEDDINGS_KEY = "token_embedding"
UNET = "unet/model.onnx"
VAE_ENCODER = "vae_encoder/model.onnx"
VAE_DECODER = "vae_decoder/model.onnx"
SCHEDULER_CONFIG = "scheduler/scheduler_config.json"
TOKENIZER_DIR = "tokenizer"


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_record(folder: Path, relative: str) -> dict:
    path = folder / relative
    return {"path": relative, "bytes": path.stat().st_size, "sha256": sha256(path)}


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON so that a crash leaves either the old file or the new one, never half."""
    from edgeinv.files import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def read_manifest(folder: Path) -> dict | None:
    path = folder / MANIFEST_NAME
    if not path.is_file():
        return None
    from edgeinv.errors import UserError

    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: unreadable ({type(error).__name__}: {str(error)[:80]}); re-export the model with `edgeinv export`") from None
    if not isinstance(record, dict):
        raise UserError(f"{path}: not an edgeinv manifest (empty or not a JSON object); re-export the model with `edgeinv export`")
    return record


def write_manifest(folder: Path, source: str, exported_with: dict, export_seconds: dict | None = None) -> dict:
    """Describe an exported folder from its own config files and graphs."""
    import onnx
    from safetensors import safe_open

    from edgeinv import __version__

    with safe_open(folder / TOKEN_EMBEDDINGS, framework="numpy") as f:
        vocab_size, hidden_size = f.get_slice(TOKEN_EMBEDDINGS_KEY).get_shape()
    unet_config = json.loads((folder / "unet" / "config.json").read_text())
    vae_config = json.loads((folder / "vae_decoder" / "config.json").read_text())
    scheduler_config = json.loads((folder / SCHEDULER_CONFIG).read_text())
    vae_scale_factor = 2 ** (len(vae_config.get("block_out_channels", [0] * 4)) - 1)
    latent_size = int(unet_config.get("sample_size", 64))
    files = [TEXT_ENCODER_IDS, TEXT_ENCODER_EMBEDS, TOKEN_EMBEDDINGS, UNET, VAE_ENCODER, VAE_DECODER]
    files += [str(p.relative_to(folder)) for p in folder.rglob("*.onnx_data")]
    record = {
        "format_version": FORMAT_VERSION,
        "source": str(source),
        "exported_with": {"edgeinv": __version__, "onnx": onnx.__version__, **exported_with},
        "architecture": {
            "vocab_size": int(vocab_size),
            "hidden_size": int(hidden_size),
            "max_length": 77,
            "cross_attention_dim": int(unet_config.get("cross_attention_dim", hidden_size)),
            "latent_channels": int(unet_config.get("in_channels", 4)),
            "latent_size": latent_size,
            "image_size": latent_size * vae_scale_factor,
            "vae_scale_factor": vae_scale_factor,
        },
        "prediction_type": scheduler_config.get("prediction_type", "epsilon"),
        "vae_scaling_factor": float(vae_config.get("scaling_factor", 0.18215)),
        "files": [file_record(folder, f) for f in sorted(set(files))],
        "export_seconds": {k: round(v, 2) for k, v in (export_seconds or {}).items()},
    }
    write_json_atomic(folder / MANIFEST_NAME, record)
    return record
