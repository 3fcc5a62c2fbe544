"""Load a Stable Diffusion 1.x/2.x checkpoint as a diffusers pipeline, with clear errors."""

from __future__ import annotations

import json
from pathlib import Path

from edgeinv.errors import UserError

SUPPORTED_PIPELINES = {"StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"}
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
SINGLE_FILE_SUFFIXES = {".safetensors", ".ckpt", ".pt", ".bin"}


def check_diffusers_folder(folder: Path) -> None:
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise UserError(f"{folder}: no model_index.json; give a diffusers Stable Diffusion folder, a single .safetensors/.ckpt file, or a hub id")
    index = json.loads(index_path.read_text())
    name = index.get("_class_name", "")
    if name not in SUPPORTED_PIPELINES:
        raise UserError(f"{folder}: {name or 'this pipeline'} is not supported; edgeinv exports Stable Diffusion 1.x/2.x (StableDiffusionPipeline)")
    for component in COMPONENTS:
        if component not in index or not (folder / component).is_dir():
            raise UserError(f"{folder}: missing '{component}/' (a diffusers Stable Diffusion folder has {', '.join(COMPONENTS)})")


def load_pipeline(source: str, config: str | None = None):
    """A diffusers folder, a single-file checkpoint (`config`: a local diffusers folder or hub
    id giving the architecture, needed offline) or a hub id."""
    try:
        import torch  # noqa: F401
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity_error()  # before diffusers imports it: no notes about optional packages
        transformers_logging.disable_progress_bar()
        from diffusers import StableDiffusionPipeline
        from diffusers.utils import logging as diffusers_logging
    except ImportError as error:
        raise UserError(f"this command needs the torch extra ({error.name} is missing): pip install 'edgeinv[torch]'") from None

    diffusers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
    path = Path(source)
    kwargs = {"safety_checker": None, "requires_safety_checker": False}
    if path.is_dir():
        check_diffusers_folder(path)
        return StableDiffusionPipeline.from_pretrained(path, **kwargs)
    if path.is_file():
        if path.suffix not in SINGLE_FILE_SUFFIXES:
            raise UserError(f"{path}: not a checkpoint; expected a diffusers folder or a {'/'.join(sorted(SINGLE_FILE_SUFFIXES))} file")
        if config is not None and Path(config).is_dir():
            check_diffusers_folder(Path(config))
        try:
            return StableDiffusionPipeline.from_single_file(str(path), config=config, local_files_only=config is not None and Path(config).is_dir(), **kwargs)
        except (OSError, ValueError, KeyError) as error:
            raise UserError(f"{path}: could not load as a Stable Diffusion checkpoint ({str(error).splitlines()[0]}); offline, pass --config with a diffusers folder of the same architecture") from None
    if path.exists() or source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise UserError(f"{source}: no such folder or file")
    try:
        return StableDiffusionPipeline.from_pretrained(source, **kwargs)
    except OSError as error:
        raise UserError(f"{source}: could not download from the hub ({str(error).splitlines()[0]}); on an offline machine export a local folder instead") from None
