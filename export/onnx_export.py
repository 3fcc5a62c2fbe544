"""Turn a diffusers Stable Diffusion pipeline into edgeinv's ONNX folder (optimum's layout + extras).

Each component is traced with torch.onnx's TorchScript exporter (the fastest here). The
UNet's and VAE's attention layers are written as ONNX Runtime's fused
`com.microsoft.MultiHeadAttention` (export/fused_attention.py: flash attention on CPU, no
materialised score matrix). Graphs over protobuf's 2 GB limit are gathered into one
`model.onnx_data` file beside `model.onnx`.
"""

from __future__ import annotations

import inspect
import json
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from safetensors.numpy import save_file

from edgeinv import manifest
from edgeinv.onnx_surgery import point_initializer_at_safetensors
from edgeinv_export.fused_attention import DOMAIN as FUSED_DOMAIN, fused_attention

OPSET = 17
TWO_GB = 2**31 - 1


class TextEncoderFromEmbeddings(torch.nn.Module):
    """CLIP's text transformer fed token vectors instead of ids, so a new token's vector can
    be injected: position embeddings -> causal encoder layers -> final layer norm."""

    def __init__(self, text_encoder):
        super().__init__()
        # transformers 5 keeps the layers at the top level; 4.x under `.text_model`.
        self.text = getattr(text_encoder, "text_model", text_encoder)
        self.legacy_mask_argument = "causal_attention_mask" in inspect.signature(self.text.encoder.forward).parameters

    def forward(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        batch, length, _ = inputs_embeds.shape
        hidden = self.text.embeddings(inputs_embeds=inputs_embeds)
        blocked = torch.ones(length, length, dtype=torch.bool, device=hidden.device).triu(1)
        mask = torch.zeros(length, length, dtype=hidden.dtype, device=hidden.device).masked_fill(blocked, torch.finfo(hidden.dtype).min)
        mask = mask[None, None].expand(batch, 1, length, length)
        if self.legacy_mask_argument:
            out = self.text.encoder(inputs_embeds=hidden, attention_mask=None, causal_attention_mask=mask)
        else:
            out = self.text.encoder(inputs_embeds=hidden, attention_mask=mask)
        return self.text.final_layer_norm(out[0])


class TextEncoderFromIds(torch.nn.Module):
    def __init__(self, text_encoder):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids):
        out = self.text_encoder(input_ids=input_ids, return_dict=True)
        return out.last_hidden_state, out.pooler_output


class UNetForOnnx(torch.nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states):
        return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]


class VaeEncoderForOnnx(torch.nn.Module):
    """Image in [-1, 1] -> the latent distribution's parameters (mean and log-variance)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, sample):
        moments = self.vae.encoder(sample)
        if self.vae.quant_conv is not None:
            moments = self.vae.quant_conv(moments)
        return moments


class VaeDecoderForOnnx(torch.nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, latent_sample):
        return self.vae.decode(latent_sample, return_dict=False)[0]


def _export(module: torch.nn.Module, args: tuple, path: Path, input_names: list[str], output_names: list[str], dynamic_axes: dict) -> float:
    """Export one graph; returns seconds taken."""
    start = time.time()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes
        raw = Path(tmp) / "model.onnx"
        with torch.no_grad():
            torch.onnx.export(
                module, args, str(raw), input_names=input_names, output_names=output_names,
                dynamic_axes=dynamic_axes, opset_version=OPSET, do_constant_folding=True, dynamo=False,
                custom_opsets={FUSED_DOMAIN: 1},
            )
        model = onnx.load(str(raw), load_external_data=True)
        # ByteSize() itself fails past 2 GB, so add up the weights instead.
        weight_bytes = sum(len(t.raw_data) for t in model.graph.initializer)
        if weight_bytes > TWO_GB - (64 << 20) or any(p.name != "model.onnx" for p in Path(tmp).iterdir()):
            # Over protobuf's limit: one external-data file, not hundreds of loose tensors.
            onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="model.onnx_data", size_threshold=1024)
        else:
            onnx.save_model(model, str(path))
    return time.time() - start


def _save_config(module, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    config = module.config
    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    (folder / "config.json").write_text(json.dumps(data, indent=2, default=str))


def export_pipeline(pipeline, out: Path, source: str, sample_batch: int = 2, fused: bool = True) -> dict:
    """Write the ONNX folder for `pipeline` into `out`; returns export seconds per graph.

    `fused`: UNet and VAE attention as com.microsoft.MultiHeadAttention (False: the plain
    MatMul/Softmax graph that any ONNX runtime can run, as edgeinv exported before)."""
    if not fused:
        return _export_pipeline(pipeline, out, source, sample_batch, attention="matmul-softmax")
    with fused_attention(pipeline.unet, pipeline.vae):
        return _export_pipeline(pipeline, out, source, sample_batch, attention=f"{FUSED_DOMAIN}.MultiHeadAttention")


def _export_pipeline(pipeline, out: Path, source: str, sample_batch: int, attention: str) -> dict:
    torch.manual_seed(0)
    pipeline.unet.eval()
    pipeline.vae.eval()
    pipeline.text_encoder.eval()
    text_config = pipeline.text_encoder.config
    unet_config = pipeline.unet.config
    vae_config = pipeline.vae.config
    length = pipeline.tokenizer.model_max_length
    hidden_size = text_config.hidden_size
    latent_channels = unet_config.in_channels
    vae_factor = 2 ** (len(vae_config.block_out_channels) - 1)
    latent_size = unet_config.sample_size
    image_size = latent_size * vae_factor
    b = sample_batch

    out.mkdir(parents=True, exist_ok=True)
    seconds = {}
    ids = torch.full((b, length), pipeline.tokenizer.pad_token_id or 0, dtype=torch.int64)
    ids[:, 0] = pipeline.tokenizer.bos_token_id
    ids[:, 5] = pipeline.tokenizer.eos_token_id
    seconds["text_encoder"] = _export(
        TextEncoderFromIds(pipeline.text_encoder), (ids,), out / manifest.TEXT_ENCODER_IDS,
        ["input_ids"], ["last_hidden_state", "pooler_output"],
        {"input_ids": {0: "batch", 1: "sequence"}, "last_hidden_state": {0: "batch", 1: "sequence"}, "pooler_output": {0: "batch"}},
    )
    embeds = torch.randn(b, length, hidden_size) * 0.02
    seconds["text_encoder_embeds"] = _export(
        TextEncoderFromEmbeddings(pipeline.text_encoder), (embeds,), out / manifest.TEXT_ENCODER_EMBEDS,
        ["inputs_embeds"], ["last_hidden_state"],
        {"inputs_embeds": {0: "batch", 1: "sequence"}, "last_hidden_state": {0: "batch", 1: "sequence"}},
    )
    table = pipeline.text_encoder.get_input_embeddings().weight.detach().cpu().numpy().astype(np.float32)
    save_file({manifest.TOKEN_EMBEDDINGS_KEY: np.ascontiguousarray(table)}, str(out / manifest.TOKEN_EMBEDDINGS))
    # Store the table once: the ids-input graph reads its Gather weights from the safetensors file.
    point_initializer_at_safetensors(out / manifest.TEXT_ENCODER_IDS, out / manifest.TOKEN_EMBEDDINGS, table)
    _save_config(pipeline.text_encoder, out / "text_encoder")

    sample = torch.randn(b, latent_channels, latent_size, latent_size)
    timestep = torch.tensor([999.0] * b, dtype=torch.float32)
    context = torch.randn(b, length, unet_config.cross_attention_dim)
    seconds["unet"] = _export(
        UNetForOnnx(pipeline.unet), (sample, timestep, context), out / manifest.UNET,
        ["sample", "timestep", "encoder_hidden_states"], ["out_sample"],
        {"sample": {0: "batch", 2: "height", 3: "width"}, "timestep": {0: "batch"}, "encoder_hidden_states": {0: "batch", 1: "sequence"}, "out_sample": {0: "batch", 2: "height", 3: "width"}},
    )
    _save_config(pipeline.unet, out / "unet")

    image = torch.rand(1, vae_config.in_channels, image_size, image_size) * 2 - 1
    seconds["vae_encoder"] = _export(
        VaeEncoderForOnnx(pipeline.vae), (image,), out / manifest.VAE_ENCODER, ["sample"], ["latent_parameters"],
        {"sample": {0: "batch", 2: "height", 3: "width"}, "latent_parameters": {0: "batch", 2: "height_latent", 3: "width_latent"}},
    )
    _save_config(pipeline.vae, out / "vae_encoder")
    latent = torch.randn(1, vae_config.latent_channels, latent_size, latent_size)
    seconds["vae_decoder"] = _export(
        VaeDecoderForOnnx(pipeline.vae), (latent,), out / manifest.VAE_DECODER, ["latent_sample"], ["sample"],
        {"latent_sample": {0: "batch", 2: "height_latent", 3: "width_latent"}, "sample": {0: "batch", 2: "height", 3: "width"}},
    )
    _save_config(pipeline.vae, out / "vae_decoder")

    pipeline.scheduler.save_config(out / "scheduler")
    tokenizer_dir = out / manifest.TOKENIZER_DIR
    shutil.rmtree(tokenizer_dir, ignore_errors=True)
    pipeline.tokenizer.save_pretrained(tokenizer_dir)
    backend = getattr(pipeline.tokenizer, "backend_tokenizer", None)
    if not (tokenizer_dir / "vocab.json").is_file() and backend is not None:
        # transformers 5 writes tokenizer.json only; SD's vocab.json + merges.txt layout is
        # what transformers 4.x and optimum read.
        backend.model.save(str(tokenizer_dir))
    if (tokenizer_dir / "vocab.json").is_file() and (tokenizer_dir / "tokenizer.json").is_file():
        (tokenizer_dir / "tokenizer.json").unlink()  # vocab.json + merges.txt say the same, 3x smaller

    model_index = {
        "_class_name": "ORTStableDiffusionPipeline",
        "_diffusers_version": _version("diffusers"),
        "scheduler": ["diffusers", type(pipeline.scheduler).__name__],
        "text_encoder": ["optimum", "ORTModelTextEncoder"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["optimum", "ORTModelUnet"],
        "vae_decoder": ["optimum", "ORTModelVaeDecoder"],
        "vae_encoder": ["optimum", "ORTModelVaeEncoder"],
        "requires_safety_checker": False,
    }
    (out / "model_index.json").write_text(json.dumps(model_index, indent=2))

    exported_with = {"torch": torch.__version__, "diffusers": _version("diffusers"), "transformers": _version("transformers"), "opset": OPSET, "attention": attention}
    manifest.write_manifest(out, source, exported_with, seconds)
    return seconds


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)
