"""The `edgeinv` command line: one verb per job.

User errors (`UserError`) print one line naming the file and the fix and exit with 2;
Ctrl-C exits with 130. Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click
from rich.console import Console

from edgeinv import __version__
from edgeinv.errors import UserError

console = Console(stderr=True)

MODEL_HELP = "exported ONNX model folder (default: the shipped tiny-sd-shapes model)"


class Main(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as error:
            console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
            sys.exit(2)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]")
            sys.exit(130)


@click.group(cls=Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgeinv")
def main() -> None:
    """Teach Stable Diffusion a new concept on machines that cannot train.

    \b
    edgeinv invert IMAGES    learn a new token from 3-20 pictures, forward passes only
    edgeinv generate PROMPT  text-to-image on ONNX Runtime, with learned tokens
    edgeinv export MODEL     once: a Stable Diffusion 1.x/2.x checkpoint -> ONNX (needs torch)
    """


@main.command()
@click.argument("source")
@click.option("--out", type=click.Path(path_type=Path), help="output folder (default: SOURCE-onnx, or SOURCE-int8 with --quantize; an ONNX SOURCE is adopted in place)")
@click.option("--config", help="for single-file checkpoints offline: a diffusers folder (or hub id) of the same architecture")
@click.option("--quantize", type=click.Choice(["int8", "int4"]), default=None,
              help="weight-only quantisation (MatMul 8/4-bit, Conv int8): about 1/3 of the memory; refused below cosine 0.999 to fp32")
@click.option("--min-cosine", default=0.999, show_default=True, type=click.FloatRange(0, 1), help="with --quantize: refuse a graph whose output cosine to fp32 is lower")
def export(source: str, out: Path | None, config: str | None, quantize: str | None, min_cosine: float) -> None:
    """Convert a checkpoint to edgeinv's ONNX folder (optimum's layout + inversion extras).

    SOURCE is a diffusers folder, a single .safetensors/.ckpt file, a hub id (needs a
    network), or an existing ONNX export: an optimum one is adopted, and with --quantize an
    edgeinv one is quantised, both without torch.
    """
    import shutil
    import tempfile

    from edgeinv import manifest

    path = Path(source)
    onnx_source = path.is_dir() and (path / manifest.TEXT_ENCODER_IDS).is_file()
    if onnx_source and quantize is None:
        from edgeinv.onnx_surgery import adopt_optimum_folder

        target = path if out is None else _copy_folder(path, out)
        with console.status(f"adopting {target}"):
            adopt_optimum_folder(target)
            manifest.write_manifest(target, source, {"adopted": "optimum"})
        console.print(f"[green]adopted[/] {target}: added {manifest.TEXT_ENCODER_EMBEDS}, {manifest.TOKEN_EMBEDDINGS}, {manifest.MANIFEST_NAME}")
        return

    stem = path.name if path.exists() else source.replace("/", "--")
    out = out or Path(f"{stem}-{quantize or 'onnx'}")
    if quantize and out.exists() and any(out.iterdir()):
        raise UserError(f"{out}: already exists and is not empty; choose a new --out")
    start = time.time()
    scratch = None
    try:
        if onnx_source:
            fp32 = path
            if manifest.read_manifest(path) is None:  # an optimum export: adopt a scratch copy first
                from edgeinv.onnx_surgery import adopt_optimum_folder

                scratch = Path(tempfile.mkdtemp(dir=out.parent if out.parent.exists() else None, prefix=".edgeinv-adopt-"))
                fp32 = scratch / "model"
                shutil.copytree(path, fp32)
                adopt_optimum_folder(fp32)
                manifest.write_manifest(fp32, source, {"adopted": "optimum"})
        else:
            from edgeinv_export.load import load_pipeline
            from edgeinv_export.onnx_export import export_pipeline

            with console.status(f"loading {source}"):
                pipeline = load_pipeline(source, config)
            if quantize:  # the fp32 export is only a step: keep it out of `out` until the check passes
                out.parent.mkdir(parents=True, exist_ok=True)
                scratch = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.fp32-"))
                fp32 = scratch / "model"
            else:
                fp32 = out
            with console.status(f"exporting to {fp32 if not quantize else 'a scratch fp32 folder'}"):
                seconds = export_pipeline(pipeline, fp32, source)
            del pipeline
            detail = ", ".join(f"{k} {v:.1f}s" for k, v in seconds.items())
            console.print(f"[green]exported[/] {fp32 if not quantize else 'fp32 graphs'} in {time.time() - start:.1f}s ({detail})")
        if quantize:
            from edgeinv.quantize import describe, quantize_folder

            with console.status(f"quantising to {quantize}"):
                record = quantize_folder(fp32, out, quantize, min_cosine=min_cosine, log=lambda line: console.print(f"  {line}", highlight=False, soft_wrap=True), source_label=source)
            console.print(f"[green]quantised[/] {out} in {time.time() - start:.1f}s: {describe(record)}", soft_wrap=True)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


# Mean DVAR stop on the 8 planted concepts, in UNet sample-evaluations (generation 96 at the
# default population: benchmarks/results/planted_concepts.md).
TYPICAL_DVAR_STOP_EVALUATIONS = 11180


def projection(first, second, config) -> str:
    """After two generations: the measured time per generation and the projected run time."""
    from edgeinv.stopping import window_in_steps

    per_generation = second.seconds - first.seconds
    evaluations = max(1, second.unet_evaluations - first.unet_evaluations)
    window = window_in_steps(config.dvar_window, evaluations)
    typical = min(config.budget, max(window, round(TYPICAL_DVAR_STOP_EVALUATIONS / evaluations)))
    remaining = lambda generations: _duration(max(0, generations - second.generation - 1) * per_generation)  # noqa: E731
    return (f"measured {per_generation:.1f}s per generation after the first ({evaluations} UNet evaluations, chunk {config.chunk_size}); "
            f"projected: {remaining(config.budget)} more to the budget of {config.budget} generations, "
            f"~{remaining(typical)} to a typical DVAR stop (~generation {typical})")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _copy_folder(source: Path, out: Path) -> Path:
    import shutil

    if out.exists():
        raise UserError(f"{out}: already exists; choose a new --out or omit it to adopt {source} in place")
    shutil.copytree(source, out)
    return out


@main.command()
@click.argument("prompt")
@click.option("--model", type=click.Path(path_type=Path), help=MODEL_HELP)
@click.option("--embedding", "embeddings", multiple=True, type=click.Path(path_type=Path), help="learned token file (diffusers, A1111/emb_params); repeatable")
@click.option("--token", "tokens", multiple=True, help="trigger word for the matching --embedding (default: the name stored in the file)")
@click.option("--negative", default="", help="negative prompt")
@click.option("--steps", default=25, show_default=True, type=click.IntRange(1, 1000))
@click.option("--guidance", default=7.5, show_default=True, type=float, help="classifier-free guidance scale (1 = off)")
@click.option("--scheduler", default="ddim", show_default=True, type=click.Choice(["ddim", "euler"]))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("-n", "count", default=4, show_default=True, type=click.IntRange(1, 64), help="number of images")
@click.option("--out", type=click.Path(path_type=Path), default=Path("generated.png"), show_default=True, help="PNG file: one image, or a grid of all")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
def generate(prompt, model, embeddings, tokens, negative, steps, guidance, scheduler, seed, count, out, device) -> None:
    """Draw PROMPT with the ONNX model (torch is not used)."""
    from PIL import Image

    from edgeinv.embedding_files import load_embedding
    from edgeinv.generate import add_embedding, generate as run, image_grid
    from edgeinv.onnx_model import OnnxStableDiffusion

    if len(tokens) > len(embeddings):
        raise UserError("more --token than --embedding options; give one --token per --embedding")
    sd = OnnxStableDiffusion(model, device=device)
    multi: dict[str, int] = {}
    for i, path in enumerate(embeddings):
        token, vectors = load_embedding(path, tokens[i] if i < len(tokens) else None)
        add_embedding(sd, token, vectors, multi)
        if token not in prompt:
            console.print(f"[yellow]warning:[/] {path} adds {token!r}, which PROMPT does not use")
    from rich.progress import Progress

    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("sampling", total=steps)
        images = run(sd, prompt, negative_prompt=negative, steps=steps, guidance=guidance, scheduler=scheduler, n=count, seed=seed,
                     multi_vector_tokens=multi, progress=lambda i, total: bar.update(task, completed=i))
    picture = images[0] if count == 1 else image_grid(images, columns=min(count, 4))
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture).save(out)
    console.print(f"[green]saved[/] {out} ({count} image{'s' if count > 1 else ''}, {images.shape[2]}x{images.shape[1]})")


METHOD_HELP = ("cma-es: forward passes only on ONNX Runtime (no torch). ti, dreambooth (LoRA), custom-diffusion: "
               "the gradient methods in PyTorch (torch extra; --model is then a diffusers folder, .safetensors file or hub id)")


@main.command()
@click.argument("images", type=click.Path(path_type=Path))
@click.option("--method", default="cma-es", show_default=True, type=click.Choice(["cma-es", "ti", "dreambooth", "custom-diffusion"]), help=METHOD_HELP)
@click.option("--model", help=MODEL_HELP + "; for the gradient methods the shipped model's diffusers folder")
@click.option("--token", default="<concept>", show_default=True, help="the new word to learn; use it in prompts afterwards")
@click.option("--init", "init_words", multiple=True, help="start from these words' vectors (repeatable); default: the closest vocabulary word by loss on your images")
@click.option("--init-candidates", default=1000, show_default=True, type=click.IntRange(1), help="vocabulary words ranked by the visual initialisation")
@click.option("--property", "concept_kind", default="object", show_default=True, type=click.Choice(["object", "style"]), help="caption templates")
@click.option("--out", type=click.Path(path_type=Path), help="run folder (default: runs/<token>-<time>)")
@click.option("--resume", is_flag=True, help="continue the run in --out from its last checkpoint")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--budget", default=None, type=click.IntRange(1), help="maximum generations (cma-es) or steps [default: the method's, see README]")
@click.option("--popsize", default=None, type=click.IntRange(2), help="cma-es: candidates per generation [default: 4 + 3 ln dim]")
@click.option("--dim", default=32, show_default=True, type=click.IntRange(1), help="cma-es: search subspace dimension")
@click.option("--subspace", default="pca", show_default=True, type=click.Choice(["pca", "random"]), help="cma-es: search subspace")
@click.option("--samples", default=8, show_default=True, type=click.IntRange(1), help="cma-es: evaluation samples per generation (shared by all candidates)")
@click.option("--heldout", default=32, show_default=True, type=click.IntRange(1), help="held-out samples that choose the final vector")
@click.option("--dvar-window", default=None, type=click.IntRange(1), help="DVAR window in UNet sample-evaluations [default: the method's]")
@click.option("--dvar-threshold", default=None, type=float, help="stop when var(window)/var(history) falls below this [default: the method's]")
@click.option("--timesteps", default=(0.0, 1.0), show_default=True, type=(float, float), help="train on this fraction range of the schedule")
@click.option("--flip/--no-flip", default=True, show_default=True, help="also learn from mirrored pictures")
@click.option("--chunk-size", default=None, type=click.IntRange(1), help="UNet rows per call [default: the most that fit --max-memory, up to 64]")
@click.option("--max-memory", default=2.0, show_default=True, type=click.FloatRange(0.1), help="GB of memory to stay under when sizing --chunk-size")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--threads", default=None, type=click.IntRange(1), help="ONNX Runtime threads [default: all cores]")
@click.option("--lr", default=None, type=float, help="gradient methods: the token's learning rate [default: the method's]")
@click.option("--weights-lr", default=None, type=float, help="dreambooth / custom-diffusion: learning rate of the UNet weights")
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(1), help="gradient methods: samples per step")
@click.option("--rank", default=4, show_default=True, type=click.IntRange(1), help="dreambooth: LoRA rank")
@click.option("--class-word", default=None, help="custom-diffusion: the class the prior pictures show [default: the --init words]")
@click.option("--prior-images", default=8, show_default=True, type=click.IntRange(1), help="custom-diffusion: prior pictures the model draws")
@click.option("--mixed-precision", default="no", show_default=True, type=click.Choice(["no", "bf16", "fp16"]), help="gradient methods (fp16 needs CUDA)")
@click.option("--checkpoint-every", default=25, show_default=True, type=click.IntRange(1), help="gradient methods: steps between checkpoints")
@click.option("--no-samples", is_flag=True, help="skip drawing samples.png")
def invert(images, method, model, token, init_words, init_candidates, concept_kind, out, resume, seed, budget, popsize, dim, subspace, samples,
           heldout, dvar_window, dvar_threshold, timesteps, flip, chunk_size, max_memory, device, threads, lr, weights_lr, batch_size, rank, class_word,
           prior_images, mixed_precision, checkpoint_every, no_samples) -> None:
    """Learn TOKEN from the pictures in IMAGES (default method: forward passes only, no torch).

    Writes learned_embeds.safetensors (diffusers), <token>.safetensors (AUTOMATIC1111,
    ComfyUI, InvokeAI), config.json, history.jsonl, loss.png and samples.png, plus
    pytorch_lora_weights.safetensors (dreambooth) or pytorch_custom_diffusion_weights.safetensors
    (custom-diffusion). Ctrl-C keeps the last checkpoint; --resume continues it exactly.
    """
    from edgeinv.embedding_files import file_stem, save_embedding
    from edgeinv.invert import InvertConfig
    from edgeinv.report import plot_loss, write_config, write_samples

    if resume and out is None:
        raise UserError("--resume needs --out RUN_FOLDER (the folder of the run to continue)")
    if not resume and out is not None and any((out / name).exists() for name in ("checkpoint.pkl", "checkpoint.pt")):
        raise UserError(f"{out}: holds an earlier run; add --resume to continue it, or choose another --out")
    out = out or Path("runs") / f"{file_stem(token)}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not (0.0 <= timesteps[0] < timesteps[1] <= 1.0):
        raise UserError(f"--timesteps {timesteps[0]} {timesteps[1]}: give 0 <= low < high <= 1")
    sd = None
    if method == "cma-es":
        from edgeinv.onnx_model import OnnxStableDiffusion

        sd = OnnxStableDiffusion(model, device=device, threads=threads)
        if chunk_size is None:
            chunk_size = sd.chunk_size_for(max_memory)
            if sd.weights_exceed(max_memory):
                console.print(f"[yellow]warning:[/] {sd.folder}: the UNet's weights alone exceed --max-memory {max_memory:g} GB; "
                              f"UNet rows go one at a time. A quantised copy is about 1/4 the size: edgeinv export {sd.folder} --out {sd.folder}-int8 --quantize int8",
                              highlight=False, soft_wrap=True)
    config = InvertConfig(images=str(images), model=model, method=method, token=token, init=list(init_words), init_candidates=init_candidates,
                          property=concept_kind, seed=seed, budget=budget, popsize=popsize, dim=dim, subspace=subspace, samples=samples, heldout=heldout,
                          dvar_window=dvar_window, dvar_threshold=dvar_threshold, timesteps=tuple(timesteps), flip=flip, chunk_size=chunk_size or 64,
                          device=device, threads=threads, lr=lr, weights_lr=weights_lr, batch_size=batch_size, rank=rank, class_word=class_word,
                          prior_images=prior_images, mixed_precision=mixed_precision, checkpoint_every=checkpoint_every).resolved()
    if method == "cma-es":
        from edgeinv.invert import invert

        def run(*args, **kwargs):  # the forward-only search has no trained weights besides the token
            return invert(*args, **kwargs), None

        unit = "generation"
    else:
        try:
            from edgeinv.gradient.train import train as run
            from edgeinv.gradient.torch_model import TorchStableDiffusion
        except ImportError as error:
            raise UserError(f"--method {method} needs the torch extra ({error.name} is missing): pip install torch==2.13.0 'edgeinv[torch]'") from None

        with console.status(f"loading {model or 'the default model'} in PyTorch"):
            sd = TorchStableDiffusion(model, device=device)
        unit = "step"
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = [TextColumn(f"[bold]{method}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("invert", total=config.budget, stats="encoding images")

        seen = []

        def show(record, _config) -> None:
            seen.append(record)
            bar.update(task, completed=record.number + 1, stats=record.progress_text())
            if method == "cma-es" and len(seen) == 2 and config.budget > 2:
                console.print(projection(seen[0], seen[1], config), highlight=False, soft_wrap=True)

        try:
            result, trained = run(config, out, resume=resume, progress=show, warn=lambda m: console.print(f"[yellow]{m}[/]", highlight=False), model=sd)
        except KeyboardInterrupt:
            bar.stop()
            console.print(f"[yellow]interrupted[/]; the last checkpoint is saved. Continue with: edgeinv invert {images} --method {method} --out {out} --resume")
            sys.exit(130)
        bar.update(task, completed=config.budget if result.stopped_by == "budget" else result.stop_generation)

    paths = save_embedding(out, token, result.vector)
    if trained is not None:
        paths.update(trained.save_weights(out))
    plot_loss(out / "loss.png", [g.deterministic_loss for g in result.history], result.stop_generation - 1 if result.stopped_by == "dvar" else None,
              f"deterministic loss per {unit} ({result.stopped_by} stop at {unit} {result.stop_generation})", x_label=unit)
    write_config(out, config, result)
    if not no_samples:
        sd.learned[sd.tokenizer.token_id(token)] = result.vector[0]
        write_samples(out / "samples.png", sd, token, concept_kind, seed)
    console.print(f"[green]learned[/] {token} in {result.total_seconds:.0f}s: stopped by {result.stopped_by} at {unit} {result.stop_generation}, "
                  f"held-out loss {result.heldout_loss:.4f} (start {result.init_loss:.4f})")
    console.print(f"  {paths['diffusers']}  (diffusers: pipe.load_textual_inversion)")
    console.print(f"  {paths['a1111']}  (AUTOMATIC1111 / ComfyUI / InvokeAI: embeddings folder)")
    if "lora" in paths:
        console.print(f"  {paths['lora']}  (diffusers: pipe.load_lora_weights; with the token file above)")
    if "custom_diffusion" in paths:
        console.print(f"  {paths['custom_diffusion']}  (diffusers: pipe.unet.load_attn_procs(folder, weight_name=..., _pipeline=pipe); with the token file above)")
    if method == "cma-es":
        console.print(f"  try: edgeinv generate \"a photo of a {token}\" --embedding {paths['diffusers']}")


if __name__ == "__main__":
    main()
