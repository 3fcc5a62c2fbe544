"""A diffusers Stable Diffusion pipeline behind the same interface as `OnnxStableDiffusion`.

The PyTorch methods (edgeinv/gradient/train.py) train on this model. Because it answers the same
calls as the ONNX model (`tokenizer`, `token_table`, `token_vectors`, `encode_vectors`,
`unet`, `vae_encode`, ...), the objective, the evaluation sets, the visual initialisation
and `generate` run on it unchanged: one definition of the loss for both backends. The
`*_torch` methods are the differentiable versions the optimisers need.

Needs the torch extra; nothing on the forward-only path imports this module.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from edgeinv.errors import UserError
from edgeinv.onnx_model import lookup_token_vectors
from edgeinv.tokenizer import ClipTokenizer


def default_torch_model_dir() -> Path:
    """The shipped tiny model in diffusers layout (repository checkout or installed copy)."""
    import os

    from edgeinv.onnx_model import packaged_model_dir

    candidates = [Path(os.environ["EDGEINV_TORCH_MODEL"])] if os.environ.get("EDGEINV_TORCH_MODEL") else []
    candidates += [c for c in (Path(__file__).resolve().parents[2] / "models" / "tiny-sd-shapes", packaged_model_dir("default_torch_model")) if c is not None]
    for candidate in candidates:
        if (candidate / "model_index.json").is_file():
            return candidate
    raise UserError("no default PyTorch model found; pass --model with a diffusers folder, a .safetensors checkpoint or a hub id")


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: this torch has no CUDA device; use --device cpu")
    return torch.device(device)


class TorchStableDiffusion:
    def __init__(self, source: str | Path | None = None, device: str = "auto", config: str | None = None):
        from edgeinv_export.load import load_pipeline
        from edgeinv_export.onnx_export import TextEncoderFromEmbeddings

        self.source = str(source) if source is not None else str(default_torch_model_dir())
        if (Path(self.source) / "edgeinv.json").is_file():
            raise UserError(f"{self.source}: an ONNX export; the gradient methods train the PyTorch checkpoint it came from (a diffusers folder or .safetensors file)")
        self.device = pick_device(device)
        self.pipeline = load_pipeline(self.source, config).to(self.device)
        self.pipeline.set_progress_bar_config(disable=True)
        for module in (self.pipeline.unet, self.pipeline.vae, self.pipeline.text_encoder):
            module.requires_grad_(False).eval()
        self.unet_module = self.pipeline.unet
        self.text_from_embeddings = TextEncoderFromEmbeddings(self.pipeline.text_encoder)
        with tempfile.TemporaryDirectory() as folder:  # our tokenizer reads the files every SD checkpoint ships
            self.pipeline.tokenizer.save_pretrained(folder)
            self.tokenizer = ClipTokenizer(Path(folder))
        self._table = self.pipeline.text_encoder.get_input_embeddings().weight.detach().float().cpu().numpy()
        self.hidden_size = self._table.shape[1]
        self.vocab_size = self._table.shape[0]
        self.scheduler_config = dict(self.pipeline.scheduler.config)
        self.prediction_type = self.scheduler_config.get("prediction_type", "epsilon")
        self.vae_scaling_factor = float(self.pipeline.vae.config.scaling_factor)
        self.latent_channels = int(self.pipeline.unet.config.in_channels)
        self.latent_size = int(self.pipeline.unet.config.sample_size)
        self.image_size = self.latent_size * self.pipeline.vae_scale_factor
        self.learned: dict[int, np.ndarray] = {}
        self.folder = self.source

    # ------------------------------------------------------------ the ONNX model's interface (numpy in, numpy out)

    @property
    def token_table(self) -> np.ndarray:
        return self._table

    def add_token(self, token: str, vector: np.ndarray) -> int:
        token_id = self.tokenizer.add_token(token)
        self.learned[token_id] = np.asarray(vector, dtype=np.float32).reshape(-1)
        return token_id

    def token_vectors(self, ids: np.ndarray, overrides: dict[int, np.ndarray] | None = None) -> np.ndarray:
        return lookup_token_vectors(self._table, {**self.learned, **(overrides or {})}, ids)

    @torch.no_grad()
    def encode_vectors(self, vectors: np.ndarray, ids: np.ndarray | None = None) -> np.ndarray:
        return self.text_states_torch(torch.from_numpy(np.asarray(vectors, dtype=np.float32))).float().cpu().numpy()

    def encode_prompts(self, prompts: list[str]) -> np.ndarray:
        ids = self.tokenizer(prompts)
        return self.encode_vectors(self.token_vectors(ids), ids)

    @torch.no_grad()
    def unet(self, latents: np.ndarray, timesteps: np.ndarray, text_states: np.ndarray) -> np.ndarray:
        timesteps = np.broadcast_to(np.asarray(timesteps, dtype=np.float32), (latents.shape[0],))
        out = self.unet_torch(torch.from_numpy(np.ascontiguousarray(latents, dtype=np.float32)), torch.from_numpy(timesteps.copy()),
                              torch.from_numpy(np.asarray(text_states, dtype=np.float32)))
        return out.float().cpu().numpy()

    @torch.no_grad()
    def vae_encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        distribution = self.pipeline.vae.encode(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(self.device)).latent_dist
        return distribution.mean.float().cpu().numpy(), distribution.std.float().cpu().numpy()

    def release(self, relative: str) -> None:
        """The ONNX model drops a session here; PyTorch modules stay (the run may still train them)."""

    @torch.no_grad()
    def vae_decode(self, latents: np.ndarray) -> np.ndarray:
        images = self.pipeline.vae.decode(torch.from_numpy(np.asarray(latents, dtype=np.float32) / self.vae_scaling_factor).to(self.device)).sample
        return images.float().cpu().numpy()

    # ------------------------------------------------------------ differentiable versions

    def text_states_torch(self, vectors: torch.Tensor) -> torch.Tensor:
        """Token vectors [b, 77, d] -> text-encoder states, through CLIP's own layers."""
        return self.text_from_embeddings(vectors.to(self.device))

    def unet_torch(self, latents: torch.Tensor, timesteps: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        return self.unet_module(latents.to(self.device), timesteps.to(self.device), states.to(self.device)).sample

