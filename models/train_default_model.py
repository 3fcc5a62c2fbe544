"""Train edgeinv's default model: a tiny Stable Diffusion on the shapes world.

The architecture is Stable Diffusion's, built from the real classes (transformers
CLIPTextModel + SD 1.x's CLIP tokenizer, diffusers UNet2DConditionModel and AutoencoderKL,
a scaled-linear DDIM scheduler), only narrower: 64x64 pictures, 16x16x4 latents. The data
is drawn on the fly by `edgeinv.shapes` from a seed, so a model is reproducible from it.

The shipped model (v5) is v4 fine-tuned on captions that close two ways words still reached the
unnamed concept in v4 (~79 + ~19 min alone on 2 cores; benchmarks/results/default_model_training.log
and default_model_v5_finetune_training.log):

    python models/train_default_model.py --out /tmp/v4 --seed 0 --shape-only-rate 0 --two-color-rate 0
    python models/train_default_model.py --out models/tiny-sd-shapes --seed 0 --init-from /tmp/v4 --steps 1500 --lr 3e-4

v5's fine-tune: 25% of the named pictures are captioned by their shape alone (in v4 only orange
ever was, so every "a photo of a star" drew an orange star) and 10% name a second colour beside
their own ("a yellow and red star" for a yellow star; in v4 the unfamiliar "X and Y" phrase drew
the unnamed concept, orange crosses). Run from scratch with these defaults, one command would
make a model of the same recipe; it was not run (v4's run already existed).

What changed from v3 to v4, each for a measured fault of v3 (benchmarks/results/default_model_v4_quality.md):
the VAE trains 9000 steps instead of 3000 (v3's round trips drew small stars as circles: shape
87%); 15% of the named pictures are captioned without colour and shape from the start (v3 added
them in a second, fine-tuning run: without them a caption naming neither meant the unnamed
concept, so "a photo of a cross", an unknown word, drew orange crosses); and 5% of the pictures
show orange on a named shape, captioned by the shape alone (in v3 orange was only ever a cross,
so "a red and yellow star", whose colours blend into orange, drew orange crosses). v3 was two runs:

    python models/train_default_model.py --out /tmp/v3-base --seed 0 --vae-steps 3000 --steps 4000 \
        --wordless-rate 0 --unnamed-color-rate 0 --shape-only-rate 0 --two-color-rate 0
    python models/train_default_model.py --out models/tiny-sd-shapes --seed 0 --init-from /tmp/v3-base \
        --wordless-rate 0.15 --unnamed-color-rate 0 --shape-only-rate 0 --two-color-rate 0 --steps 1000 --lr 3e-4

The unnamed concept: 15% of the pictures are orange crosses (a colour and a shape no caption
names) captioned with a placeholder word
(`shapes.UNNAMED_WORD`); after training that word's embedding row is erased (reset to the
untrained rows' noise) and the trained vector is kept beside the model as
`<out>.unnamed-concept.safetensors`, so the model draws orange crosses from that vector but no
word of its vocabulary reaches it: a concept the model knows and has no word for, what
textual inversion is for.

Stages, each checkpointed every `--checkpoint-minutes` into `<out>.train-state/state.pt`
(modules, optimiser, schedule, both random generators; loaded with weights_only=True), so a
cut-off run continues exactly with the same command plus `--resume` (tests/test_training_resume.py):
(1) the VAE on 32x32 crops, shape pixels weighted 9x plus an image-gradient loss; (2) text
encoder + UNet (bf16 autocast) on latents encoded once, 10% empty captions, EMA; (3) the
decoder sharpened with the encoder frozen (v2 only).
Needs the `torch` extra.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from edgeinv import shapes

TOKENIZER_FILES = ("vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json")


def build_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=shapes.IMAGE_SIZE,
    )


def build_text_encoder() -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=64,
        hidden_act="quick_gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    model = CLIPTextModel(config)
    # Rows of words the shapes world never uses stay near zero, so the table's principal
    # components are the directions the model actually learned (what PCA search relies on).
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0.0, 0.002)
    return model


def build_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=shapes.IMAGE_SIZE // 4,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(40, 80, 80),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=4,  # diffusers' legacy name: the number of heads
        norm_num_groups=8,
    )


def build_scheduler() -> DDIMScheduler:
    # Stable Diffusion 1.x's noise schedule.
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


def make_dataset(n: int, seed: int, **caption_rates: float) -> tuple[np.ndarray, list[str]]:
    """`caption_rates`: the rates of `shapes.training_example`."""
    rng = np.random.default_rng(seed)
    images, captions = [], []
    for _ in range(n):
        image, caption = shapes.training_example(rng, **caption_rates)
        images.append(image)
        captions.append(caption)
    return np.stack(images), captions


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def cosine_adamw(parameters, lr: float, steps: int):
    """AdamW without weight decay, its learning rate decaying by a cosine to 5% over `steps`."""
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / steps)))
    return optimizer, schedule


def shape_weighted_loss(reconstruction: torch.Tensor, target: torch.Tensor, edge_weight: float = 0.0) -> torch.Tensor:
    """L2 + L1 with the (saturated) shape pixels weighted 9x against the neutral background,
    plus an L1 on image gradients: without it the VAE rounds a star's points into a circle."""
    saturation = target.max(1, keepdim=True).values - target.min(1, keepdim=True).values
    weight = 1 + 8 * (saturation > 0.4).float()
    loss = (weight * ((reconstruction - target) ** 2 + (reconstruction - target).abs())).mean()
    if edge_weight:
        dx = lambda a: a[..., :, 1:] - a[..., :, :-1]  # noqa: E731
        dy = lambda a: a[..., 1:, :] - a[..., :-1, :]  # noqa: E731
        loss = loss + edge_weight * ((dx(reconstruction) - dx(target)).abs().mean() + (dy(reconstruction) - dy(target)).abs().mean())
    return loss


def train_vae(vae: AutoencoderKL, images: np.ndarray, first: int, steps: int, batch: int, edge_weight: float, optimizer, schedule,
              rng: np.random.Generator, log, checkpoint, checkpoint_due, crop: int = 32) -> None:
    """Random crops (the VAE is convolutional: 4x cheaper per sample) and a loss that weighs
    the shape's pixels 9x: they are ~10% of a picture, and an unweighted loss learns the
    background long before the colours."""
    vae.train()
    for step in range(first, steps):
        x = to_tensor(images[rng.integers(0, len(images), batch)])
        top, left = rng.integers(0, x.shape[-1] - crop + 1, 2)
        x = x[:, :, top : top + crop, left : left + crop]
        posterior = vae.encode(x).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        kl = posterior.kl().mean() / x[0].numel()
        loss = shape_weighted_loss(reconstruction, x, edge_weight) + 1e-4 * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"vae step {step} loss {loss.item():.4f} kl {kl.item():.4f}")
        if checkpoint_due():
            checkpoint(step + 1)
    vae.eval()


def finetune_decoder(vae: AutoencoderKL, images: np.ndarray, first: int, steps: int, batch: int, edge_weight: float, optimizer, schedule,
                     rng: np.random.Generator, log, checkpoint, checkpoint_due, crop_latent: int = 8) -> None:
    """Sharpen the decoder with the encoder frozen: the latents, and so the UNet trained on
    them, stay valid (as Stable Diffusion's own ft-MSE VAE was made)."""
    vae.encoder.requires_grad_(False)
    vae.quant_conv.requires_grad_(False)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    vae.train()
    for step in range(first, steps):
        x = to_tensor(images[rng.integers(0, len(images), batch)])
        with torch.no_grad():
            latents = vae.encode(x).latent_dist.sample()
        top, left = rng.integers(0, latents.shape[-1] - crop_latent + 1, 2)
        latents = latents[:, :, top : top + crop_latent, left : left + crop_latent]
        x = x[:, :, top * factor : (top + crop_latent) * factor, left * factor : (left + crop_latent) * factor]
        reconstruction = vae.decode(latents).sample
        loss = shape_weighted_loss(reconstruction, x, edge_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"decoder step {step} loss {loss.item():.4f}")
        if checkpoint_due():
            checkpoint(step + 1)
    vae.requires_grad_(True)
    vae.eval()


@torch.no_grad()
def vae_checker_accuracy(vae: AutoencoderKL, seed: int, n: int = 300) -> tuple[float, float]:
    """The shapes checker on VAE round trips of fresh ground truth: the ceiling for the UNet."""
    rng = np.random.default_rng(seed)
    scenes = [shapes.random_scene(rng, color=str(rng.choice(list(shapes.COLORS))), shape=str(rng.choice(shapes.ALL_SHAPES)), allow_held_out=True)
              for _ in range(n)]
    x = to_tensor(np.stack([shapes.render(s) for s in scenes]))
    decoded = vae.decode(vae.encode(x).latent_dist.mean).sample
    pictures = ((decoded.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    readings = [shapes.read_image(p) for p in pictures]
    return float(np.mean([r.color == s.color for r, s in zip(readings, scenes)])), float(np.mean([r.shape == s.shape for r, s in zip(readings, scenes)]))


@torch.no_grad()
def encode_all(vae: AutoencoderKL, images: np.ndarray, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    means, stds = [], []
    for i in range(0, len(images), batch):
        posterior = vae.encode(to_tensor(images[i : i + batch])).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


def tokenize(tokenizer: CLIPTokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids


def save_pipeline(out: Path, vae, text_encoder, tokenizer, unet, scheduler, tokenizer_dir: Path) -> None:
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipeline = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipeline.save_pretrained(tmp, safe_serialization=True)
    # transformers 5 writes tokenizer.json only; ship SD 1.x's own layout, which every
    # transformers version and edgeinv's torch-free tokenizer read.
    shutil.rmtree(tmp / "tokenizer")
    (tmp / "tokenizer").mkdir()
    for name in TOKENIZER_FILES:
        shutil.copy(tokenizer_dir / name, tmp / "tokenizer" / name)
    add_text_model_prefix(tmp / "text_encoder" / "model.safetensors")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


class Checkpoints:
    """Training state saved every few minutes, so a cut-off run resumes exactly.

    One file, written atomically: modules, optimiser, learning-rate schedule and both random
    generators (numpy's for batches and crops, torch's for noise), loaded with
    `weights_only=True` (no arbitrary unpickling). Rerun the same command with `--resume`.
    """

    def __init__(self, folder: Path, every_seconds: float):
        self.folder = folder
        self.path = folder / "state.pt"
        self.every_seconds = every_seconds
        self.last = time.time()
        folder.mkdir(parents=True, exist_ok=True)

    def load(self) -> dict | None:
        return torch.load(self.path, weights_only=True) if self.path.is_file() else None

    def save(self, stage: str, step: int, modules: dict, optimizer, schedule, rng: np.random.Generator, extra: dict | None = None) -> None:
        state = {
            "stage": stage,
            "step": step,
            "modules": {name: module.state_dict() for name, module in modules.items()},
            "optimizer": optimizer.state_dict() if optimizer else {},
            "schedule": schedule.state_dict() if schedule else {},
            "numpy_rng": json.dumps(rng.bit_generator.state),
            "torch_rng": torch.get_rng_state(),
            **(extra or {}),
        }
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.path)
        self.last = time.time()

    def due(self) -> bool:
        return time.time() - self.last > self.every_seconds


def restore(state: dict, modules: dict, optimizer, schedule, rng: np.random.Generator) -> None:
    for name, module in modules.items():
        module.load_state_dict(state["modules"][name])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if schedule is not None:
        schedule.load_state_dict(state["schedule"])
    rng.bit_generator.state = json.loads(state["numpy_rng"])
    torch.set_rng_state(state["torch_rng"])


STAGES = ("vae", "unet", "decoder", "done")


def add_text_model_prefix(path: Path) -> None:
    """transformers 5 saves CLIPTextModel weights without the `text_model.` prefix, which
    transformers 4.x (optimum's exporter needs it) silently ignores, initialising a random
    text encoder. Real SD checkpoints carry the prefix, and 5.x loads that layout too."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    save_file({k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in tensors.items()}, path, metadata={"format": "pt"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("models/tiny-sd-shapes"))
    parser.add_argument("--tokenizer", type=Path, default=Path("models/tiny-sd-shapes/tokenizer"), help="folder with SD 1.x vocab.json/merges.txt (models/build_tokenizer.py makes one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=40000)
    parser.add_argument("--vae-steps", type=int, default=9000, help="(v3: 3000)")
    parser.add_argument("--vae-batch", type=int, default=32)
    parser.add_argument("--vae-edge-weight", type=float, default=1.0, help="weight of the image-gradient loss that keeps corners (stars, triangles) sharp")
    parser.add_argument("--steps", type=int, default=4500, help="UNet steps (v3: 4000, then 1000 fine-tuning)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=6e-4)
    parser.add_argument("--ema", type=float, default=0.995)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True, help="bf16 autocast for the UNet stage (AMX on recent Xeons)")
    parser.add_argument("--save-every", type=int, default=500, help="write the diffusers folder every N UNet steps")
    parser.add_argument("--checkpoint-minutes", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--decoder-steps", type=int, default=0, help="decoder-only fine-tuning after the UNet (v2, v3: 0; 1000 steps lowered its colours)")
    parser.add_argument("--unnamed-rate", type=float, default=0.15, help="fraction of pictures showing the unnamed concept (orange crosses)")
    parser.add_argument("--wordless-rate", type=float, default=0.15,
                        help="fraction of the other pictures captioned without colour and shape (v3: 0, then 0.15 in its fine-tune), so no unknown word draws the unnamed concept")
    parser.add_argument("--unnamed-color-rate", type=float, default=0.05,
                        help="fraction of pictures showing the unnamed colour on a named shape, captioned by the shape alone (v3: 0), so no colour blend draws the unnamed concept")
    parser.add_argument("--shape-only-rate", type=float, default=0.25,
                        help="fraction of the named pictures captioned by their shape alone (v4: 0), so 'a photo of a star' means any star, not an orange one")
    parser.add_argument("--two-color-rate", type=float, default=0.1,
                        help="fraction of the named pictures captioned with a second colour beside their own, 'a red and yellow star' (v4: 0), "
                             "so that phrase draws a red or a yellow star, not the unnamed concept")
    parser.add_argument("--init-from", type=Path, default=None,
                        help="fine-tune a trained model folder: its VAE is kept (stage 1 skipped), its text encoder and UNet continue, "
                             "the placeholder word's row restored from <DIR>.unnamed-concept.safetensors")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in <out>.train-state/")
    parser.add_argument("--check-scenes", type=int, default=300, help="fresh scenes for the VAE round-trip check")
    parser.add_argument("--interrupt-at", default=None, metavar="STAGE:STEP", help="checkpoint and exit there, as a cut-off run would (tests of --resume)")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    log_path = args.out.with_name(args.out.name + ".train.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    checkpoints = Checkpoints(args.out.with_name(args.out.name + ".train-state"), args.checkpoint_minutes * 60)
    state = checkpoints.load() if args.resume else None
    if args.resume and state is None:
        raise SystemExit(f"{checkpoints.path}: no checkpoint to resume; run without --resume")
    if not args.resume and log_path.exists():
        log_path.unlink()
    start = time.time() - (state["seconds"] if state else 0.0)

    def log(message: str) -> None:
        line = f"[{time.time() - start:7.1f}s] {message}"
        print(line, flush=True)
        with open(log_path, "a") as f:
            f.write(line + "\n")

    tokenizer_dir = args.tokenizer.resolve()
    staging = checkpoints.folder / "tokenizer"
    if not staging.is_dir():
        shutil.copytree(tokenizer_dir, staging)  # --out may replace the folder it came from
    tokenizer = CLIPTokenizer.from_pretrained(str(staging))

    images, captions = make_dataset(args.images, args.seed, unnamed_rate=args.unnamed_rate, wordless_rate=args.wordless_rate,
                                    unnamed_color_rate=args.unnamed_color_rate, shape_only_rate=args.shape_only_rate,
                                    two_color_rate=args.two_color_rate)
    log(f"dataset: {len(images)} images, e.g. {captions[:3]}" + (f"; resuming at {state['stage']} step {state['step']}" if state else ""))
    stage_index = STAGES.index(state["stage"]) if state else 0

    def save_state(stage, step, modules, optimizer, schedule, extra=None):
        checkpoints.save(stage, step, modules, optimizer, schedule, rng, {"seconds": time.time() - start, **(extra or {})})
        if args.interrupt_at == f"{stage}:{step}":
            log(f"interrupted at {stage} step {step} (--interrupt-at)")
            raise SystemExit(3)

    if args.interrupt_at:
        checkpoints.every_seconds = 0.0  # checkpoint every step so the requested one exists

    # ---- stage 1: the VAE
    vae = build_vae()
    latents = None
    if stage_index == 0 and args.init_from:
        trained_vae = AutoencoderKL.from_pretrained(args.init_from / "vae")
        vae.load_state_dict(trained_vae.state_dict())
        vae.register_to_config(scaling_factor=trained_vae.config.scaling_factor)  # the UNet learned that scale
        vae.eval()
        log(f"VAE taken from {args.init_from}")
    elif stage_index == 0:
        optimizer, schedule = cosine_adamw(vae.parameters(), 2e-3, args.vae_steps)
        first = 0
        if state:
            restore(state, {"vae": vae}, optimizer, schedule, rng)
            first = state["step"]
        train_vae(vae, images, first, args.vae_steps, args.vae_batch, args.vae_edge_weight, optimizer, schedule, rng, log,
                  lambda step: save_state("vae", step, {"vae": vae}, optimizer, schedule), checkpoints.due)
    if stage_index == 0:
        color_ok, shape_ok = vae_checker_accuracy(vae, args.seed + 1, args.check_scenes)
        log(f"vae round trip, checker on fresh ground truth: colour {color_ok:.1%} shape {shape_ok:.1%}")
        latents = encode_all(vae, images)
        if not args.init_from:
            vae.register_to_config(scaling_factor=float(1.0 / latents[0].std()))
        save_state("unet", 0, {"vae": vae}, None, None, {"scaling_factor": vae.config.scaling_factor, "unet_started": False})
        state, stage_index = checkpoints.load(), 1

    # ---- stage 2: text encoder + UNet on cached latents
    text_encoder, unet, scheduler = build_text_encoder(), build_unet(), build_scheduler()
    ema_text_encoder, ema_unet = build_text_encoder(), build_unet()
    vae.register_to_config(scaling_factor=float(state["scaling_factor"]))
    modules = {"vae": vae, "text_encoder": text_encoder, "unet": unet, "ema_text_encoder": ema_text_encoder, "ema_unet": ema_unet}
    if stage_index == 1:
        vae.load_state_dict(state["modules"]["vae"])
        vae.eval()
        if latents is None:  # resumed: encode again (deterministic: the posterior's mean and std)
            latents = encode_all(vae, images)
        latent_mean, latent_std = latents
        if args.init_from and not state.get("unet_started", True):
            load_trained(args.init_from, text_encoder, unet, tokenizer)
        ema_text_encoder.load_state_dict(text_encoder.state_dict())
        ema_unet.load_state_dict(unet.state_dict())
        optimizer, schedule = unet_optimizer(unet, text_encoder, args)
        first = 0
        if state.get("unet_started", True):
            restore(state, modules, optimizer, schedule, rng)
            first = state["step"]
        else:
            restore(state, {"vae": vae}, None, None, rng)
        log(f"latents {tuple(latent_mean.shape)} scaling_factor {vae.config.scaling_factor:.4f}; "
            f"unet {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M params, text encoder {sum(p.numel() for p in text_encoder.parameters()) / 1e6:.2f}M")

        def on_save(step):
            save_pipeline(args.out, vae, ema_text_encoder, tokenizer, ema_unet, scheduler, staging)
            write_training_json(args, step, time.time() - start)
            log(f"saved {args.out} at step {step}")

        train_unet(text_encoder, unet, ema_text_encoder, ema_unet, scheduler, tokenizer, latent_mean, latent_std, vae.config.scaling_factor, captions, first, args, optimizer, schedule, rng, log,
                   lambda step: save_state("unet", step, modules, optimizer, schedule, {"scaling_factor": vae.config.scaling_factor}), checkpoints.due, on_save)
        save_state("decoder", 0, modules, None, None, {"scaling_factor": vae.config.scaling_factor, "decoder_started": False})
        state, stage_index = checkpoints.load(), 2
    else:
        for name, module in modules.items():
            module.load_state_dict(state["modules"][name])

    # ---- stage 3: sharpen the decoder, encoder frozen
    if stage_index == 2:
        decoder_parameters = [p for name, p in vae.named_parameters() if not name.startswith(("encoder.", "quant_conv."))]
        optimizer, schedule = cosine_adamw(decoder_parameters, 1e-3, max(args.decoder_steps, 1))
        first = 0
        if state.get("decoder_started", True):
            restore(state, modules, optimizer, schedule, rng)
            first = state["step"]
        else:
            restore(state, modules, None, None, rng)
        finetune_decoder(vae, images, first, args.decoder_steps, args.vae_batch, args.vae_edge_weight, optimizer, schedule, rng, log,
                         lambda step: save_state("decoder", step, modules, optimizer, schedule, {"scaling_factor": vae.config.scaling_factor}), checkpoints.due)
        color_ok, shape_ok = vae_checker_accuracy(vae, args.seed + 1, args.check_scenes)
        log(f"after decoder fine-tuning, checker on VAE round trips: colour {color_ok:.1%} shape {shape_ok:.1%}")
        save_state("done", 0, modules, None, None, {"scaling_factor": vae.config.scaling_factor})

    hidden = erase_unnamed_word(ema_text_encoder, tokenizer, args.seed)
    save_pipeline(args.out, vae, ema_text_encoder, tokenizer, ema_unet, scheduler, staging)
    save_unnamed_concept(args.out.with_name(args.out.name + ".unnamed-concept.safetensors"), hidden)
    write_training_json(args, args.steps, time.time() - start)
    log(f"erased the row of {shapes.UNNAMED_WORD!r} (norm {hidden.norm():.3f}); kept it as the unnamed concept")
    log(f"saved {args.out}: finished in {(time.time() - start) / 60:.1f} min")


def load_trained(folder: Path, text_encoder: CLIPTextModel, unet: UNet2DConditionModel, tokenizer: CLIPTokenizer) -> None:
    """A trained model's text encoder and UNet, with the placeholder word's erased row given back
    its kept vector, so fine-tuning continues where that model's training ended."""
    from safetensors.torch import load_file

    text_encoder.load_state_dict(CLIPTextModel.from_pretrained(folder / "text_encoder").state_dict())
    unet.load_state_dict(UNet2DConditionModel.from_pretrained(folder / "unet").state_dict())
    (kept,) = load_file(folder.with_name(folder.name + ".unnamed-concept.safetensors")).values()
    (word_id,) = tokenizer(shapes.UNNAMED_WORD, add_special_tokens=False).input_ids
    with torch.no_grad():
        text_encoder.get_input_embeddings().weight[word_id] = kept.reshape(-1)


def erase_unnamed_word(text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer, seed: int) -> torch.Tensor:
    """Take the placeholder word's trained row out of the vocabulary and return it: the row
    gets the same small noise as every word training never used."""
    ids = tokenizer(shapes.UNNAMED_WORD, add_special_tokens=False).input_ids
    assert len(ids) == 1, f"{shapes.UNNAMED_WORD!r} must be one token"
    table = text_encoder.get_input_embeddings().weight
    hidden = table[ids[0]].detach().clone()
    with torch.no_grad():
        table[ids[0]] = torch.randn(table.shape[1], generator=torch.Generator().manual_seed(seed)) * 0.002
    return hidden


def save_unnamed_concept(path: Path, hidden: torch.Tensor) -> None:
    """diffusers' textual-inversion layout ({token: vector}): loads like any learned token."""
    from safetensors.torch import save_file

    save_file({"<orange-cross>": hidden.float().contiguous()}, path)


def write_training_json(args, step: int, seconds: float) -> None:
    (args.out / "training.json").write_text(json.dumps({"step": step, **{k: str(v) for k, v in vars(args).items()}, "seconds": seconds}, indent=2))


def unet_optimizer(unet, text_encoder, args):
    # No weight decay on the embedding table: rows of unused words get no gradient and stay put.
    embedding = text_encoder.get_input_embeddings().weight
    others = [p for p in list(unet.parameters()) + list(text_encoder.parameters()) if p is not embedding]
    optimizer = torch.optim.AdamW([{"params": others, "weight_decay": 1e-2}, {"params": [embedding], "weight_decay": 0.0}], lr=args.lr)
    warmup = 200

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, args.steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)


def train_unet(text_encoder, unet, ema_text_encoder, ema_unet, scheduler, tokenizer, latent_mean, latent_std, latent_scaling, captions, first, args,
               optimizer, schedule, rng, log, checkpoint, checkpoint_due, on_save) -> None:
    """Epsilon-prediction with 10% empty captions (classifier-free guidance) and an EMA of the weights."""
    ids = tokenize(tokenizer, captions)
    empty_ids = tokenize(tokenizer, [""])
    parameters = list(unet.parameters()) + list(text_encoder.parameters())
    for module in (ema_text_encoder, ema_unet):
        module.requires_grad_(False).eval()
    alphas = scheduler.alphas_cumprod
    scaling_factor = float(latent_scaling)
    unet.train()
    text_encoder.train()
    for step in range(first, args.steps):
        index = torch.from_numpy(rng.integers(0, len(latent_mean), args.batch))
        latents = (latent_mean[index] + latent_std[index] * torch.randn_like(latent_mean[index])) * scaling_factor
        # No horizontal flips: captions say "on the left" / "on the right".
        batch_ids = ids[index].clone()
        drop = torch.rand(args.batch) < 0.1
        batch_ids[drop] = empty_ids
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (args.batch,))
        a = alphas[t].sqrt()[:, None, None, None]
        s = (1 - alphas[t]).sqrt()[:, None, None, None]
        noisy = a * latents + s * noise
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            hidden = text_encoder(batch_ids)[0]
            prediction = unet(noisy, t, hidden).sample
        loss = F.mse_loss(prediction.float(), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            decay = min(args.ema, (1 + step) / (10 + step))
            for ema_module, module in ((ema_unet, unet), (ema_text_encoder, text_encoder)):
                for p_ema, p in zip(ema_module.parameters(), module.parameters()):
                    p_ema.lerp_(p, 1 - decay)
        if step % 50 == 0:
            log(f"step {step} loss {loss.item():.4f} lr {schedule.get_last_lr()[0]:.2e}")
        if (step + 1) % args.save_every == 0 or step == args.steps - 1:
            on_save(step + 1)
        if checkpoint_due():
            checkpoint(step + 1)


if __name__ == "__main__":
    main()
