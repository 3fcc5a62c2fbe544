"""Test helper: write a diffusers SD pipeline as an original (LDM) single-file checkpoint.

Real single-file checkpoints (v1-5-pruned.safetensors and the like) use the original
Stable Diffusion key names. No such file of the tiny model exists offline, so the tests
make one with this inverse of diffusers' own single-file key conversion; loading it back
through `from_single_file` must give the same weights (tests/test_single_file.py).
"""

from __future__ import annotations

RESNET_NAMES = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
                "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
VAE_ATTENTION_NAMES = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename_first(rest: str, names: dict[str, str]) -> str:
    for new, old in names.items():
        if rest.startswith(new + "."):
            return old + rest[len(new):]
    return rest


def unet_to_original(state: dict, layers_per_block: int) -> dict:
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    fixed = DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"]
    per_block = layers_per_block + 1
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if key in fixed:
            name = fixed[key]
        elif parts[0] == "down_blocks":
            block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            if kind == "downsamplers":
                name = f"input_blocks.{(block + 1) * per_block}.0.op.{rest.removeprefix('conv.')}"
            else:
                slot = 1 + block * per_block + index
                name = f"input_blocks.{slot}.{0 if kind == 'resnets' else 1}.{_rename_first(rest, RESNET_NAMES) if kind == 'resnets' else rest}"
        elif parts[0] == "mid_block":
            kind, index, rest = parts[1], int(parts[2]), ".".join(parts[3:])
            slot = 0 if (kind, index) == ("resnets", 0) else 1 if kind == "attentions" else 2
            name = f"middle_block.{slot}.{_rename_first(rest, RESNET_NAMES) if kind == 'resnets' else rest}"
        elif parts[0] == "up_blocks":
            block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            if kind == "upsamplers":
                has_attention = any(k.startswith(f"up_blocks.{block}.attentions.") for k in state)
                name = f"output_blocks.{block * per_block + layers_per_block}.{2 if has_attention else 1}.{rest}"
            else:
                slot = block * per_block + index
                name = f"output_blocks.{slot}.{0 if kind == 'resnets' else 1}.{_rename_first(rest, RESNET_NAMES) if kind == 'resnets' else rest}"
        else:
            raise KeyError(f"no original name for UNet key {key}")
        out["model.diffusion_model." + name] = value
    return out


def vae_to_original(state: dict, num_blocks: int) -> dict:
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    fixed = DIFFUSERS_TO_LDM_MAPPING["vae"]
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        coder = parts[0]
        if key in fixed:
            name = fixed[key]
        elif parts[1] == "down_blocks":
            block, kind, rest = int(parts[2]), parts[3], ".".join(parts[5:])
            name = f"encoder.down.{block}.downsample.{rest}" if kind == "downsamplers" else f"encoder.down.{block}.block.{parts[4]}.{rest.replace('conv_shortcut', 'nin_shortcut')}"
        elif parts[1] == "up_blocks":
            block = num_blocks - 1 - int(parts[2])  # the original counts decoder blocks bottom-up
            kind, rest = parts[3], ".".join(parts[5:])
            name = f"decoder.up.{block}.upsample.{rest}" if kind == "upsamplers" else f"decoder.up.{block}.block.{parts[4]}.{rest.replace('conv_shortcut', 'nin_shortcut')}"
        elif parts[1] == "mid_block" and parts[2] == "resnets":
            name = f"{coder}.mid.block_{int(parts[3]) + 1}.{'.'.join(parts[4:]).replace('conv_shortcut', 'nin_shortcut')}"
        elif parts[1] == "mid_block" and parts[2] == "attentions":
            name = f"{coder}.mid.attn_1.{_rename_first('.'.join(parts[4:]), VAE_ATTENTION_NAMES)}"
            if value.ndim == 2:  # the original uses 1x1 convolutions
                value = value[:, :, None, None]
        else:
            raise KeyError(f"no original name for VAE key {key}")
        out["first_stage_model." + name] = value
    return out


def text_encoder_to_original(state: dict) -> dict:
    # transformers 5 drops the `text_model.` prefix when saving; the original keeps it.
    return {"cond_stage_model.transformer." + (k if k.startswith("text_model.") else "text_model." + k): v for k, v in state.items()}


def pipeline_to_original(pipeline) -> dict:
    state = unet_to_original(pipeline.unet.state_dict(), pipeline.unet.config.layers_per_block)
    state.update(vae_to_original(pipeline.vae.state_dict(), len(pipeline.vae.config.block_out_channels)))
    state.update(text_encoder_to_original(pipeline.text_encoder.state_dict()))
    return {k: v.contiguous() for k, v in state.items()}
