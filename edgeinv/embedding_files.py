"""Textual-inversion embedding files that diffusers, AUTOMATIC1111, ComfyUI and InvokeAI load.

Written:
- `learned_embeds.safetensors`: diffusers' format, one key `{token: vector}`; the vector is
  1-D for one token vector (what InvokeAI reads), [n, dim] for several.
- `<name>.safetensors`: `{"emb_params": [n, dim]}`, the format AUTOMATIC1111, ComfyUI and
  InvokeAI read; those UIs take the token from the file name.
Read: both of those, and the A1111 `.pt` layout (`string_to_param`) when torch is installed.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from edgeinv.errors import UserError

DIFFUSERS_FILE = "learned_embeds.safetensors"
# Fixed names in a run folder (lower case): a token-derived file name must never be one of them.
RESERVED_STEMS = {"learned_embeds", "pytorch_lora_weights", "pytorch_custom_diffusion_weights", "checkpoint", "config", "history", "loss", "samples"}


def file_stem(token: str) -> str:
    """A file name that UIs turn back into a usable trigger word: "<my cat>" -> "my-cat"."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", token.strip().strip("<>")).strip("-.")[:100]
    stem = stem or "learned-token"
    return f"{stem}-token" if stem.lower() in RESERVED_STEMS else stem


def save_safetensors_atomic(tensors: dict[str, np.ndarray], path: Path, metadata: dict[str, str] | None = None) -> None:
    from edgeinv.files import atomic_path

    with atomic_path(path) as tmp:
        save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}, str(tmp), metadata=metadata)


def save_embedding(out_dir: Path, token: str, vectors: np.ndarray) -> dict[str, Path]:
    """Write the learned vectors [n, dim] in every format; returns the paths by format."""
    vectors = np.asarray(vectors, dtype=np.float32)
    vectors = vectors.reshape(1, -1) if vectors.ndim == 1 else vectors
    diffusers_value = vectors[0] if len(vectors) == 1 else vectors
    paths = {"diffusers": out_dir / DIFFUSERS_FILE, "a1111": out_dir / f"{file_stem(token)}.safetensors"}
    save_safetensors_atomic({token: diffusers_value}, paths["diffusers"])
    save_safetensors_atomic({"emb_params": vectors}, paths["a1111"], metadata={"name": token})
    return paths


def load_embedding(path: str | Path, token: str | None = None) -> tuple[str, np.ndarray]:
    """(token, vectors [n, dim]) from any supported file. `token` overrides the stored name."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such embedding file")
    if path.suffix == ".safetensors":
        try:
            tensors = load_file(str(path))
        except Exception as error:  # safetensors raises its own error types
            raise UserError(f"{path}: not a readable safetensors file ({error})") from None
    elif path.suffix in (".pt", ".bin"):
        tensors = _load_torch_file(path)
    else:
        raise UserError(f"{path}: unknown embedding format; expected .safetensors (or .pt/.bin with torch installed)")

    if not tensors:
        raise UserError(f"{path}: holds no tensor; expected one token (diffusers) or 'emb_params' (AUTOMATIC1111)")
    if "emb_params" in tensors:  # A1111 / ComfyUI / InvokeAI: the name is the file's
        name, value = token or f"<{file_stem(path.stem)}>", tensors["emb_params"]
    elif "string_to_param" in tensors:
        name, value = token or f"<{file_stem(str(tensors.get('name', path.stem)))}>", tensors["string_to_param"]
    elif len(tensors) == 1:
        (stored_name, value), = tensors.items()
        name = token or stored_name
    else:
        raise UserError(f"{path}: {len(tensors)} tensors ({', '.join(list(tensors)[:4])}); expected one token (diffusers) or 'emb_params' (AUTOMATIC1111)")
    if not isinstance(name, str) or not name.strip():
        raise UserError(f"{path}: the token name stored in the file is empty; give one with --token '<my-token>'")
    try:
        value = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise UserError(f"{path}: the embedding is not a numeric tensor; re-create the file") from None
    value = value.reshape(1, -1) if value.ndim == 1 else value
    if value.ndim != 2 or value.shape[0] == 0 or value.shape[1] == 0:
        raise UserError(f"{path}: embedding of shape {list(value.shape)}; expected [vectors, width] with at least one vector")
    if not np.isfinite(value).all():
        raise UserError(f"{path}: the embedding holds NaN or infinite values (a diverged run?); re-create it")
    return name, value


def _load_torch_file(path: Path) -> dict:
    try:
        import torch
    except ImportError:
        raise UserError(f"{path}: .pt/.bin embeddings need torch (pip install 'edgeinv[torch]'); or use the .safetensors file") from None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # not a torch file, truncated, or pickled code that weights_only refuses
        raise UserError(f"{path}: not a readable torch embedding file ({type(error).__name__}); use a .safetensors file or re-save it") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: holds a {type(data).__name__}, not an embedding dictionary; expected the AUTOMATIC1111 or diffusers layout")
    if "string_to_param" in data:  # A1111 layout: {"string_to_param": {"*": tensor}, "name": ...}
        params = data["string_to_param"]
        if not isinstance(params, dict) or not params or not hasattr(next(iter(params.values())), "float"):
            raise UserError(f"{path}: string_to_param holds no tensor; expected the AUTOMATIC1111 layout")
        return {"string_to_param": next(iter(params.values())).float().numpy(), "name": data.get("name", path.stem)}
    return {k: v.float().numpy() for k, v in data.items() if hasattr(v, "numpy")}


def token_names(token: str, count: int) -> list[str]:
    """Names for a multi-vector token, as diffusers expands them: tok, tok_1, tok_2 ..."""
    return [token] + [f"{token}_{i}" for i in range(1, count)]
