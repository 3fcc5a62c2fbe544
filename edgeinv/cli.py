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
from rich.markup import escape

from edgeinv import __version__
from edgeinv.errors import UserError

console = Console(stderr=True)

MODEL_HELP = "exported ONNX model folder (default: the shipped tiny-sd-shapes model)"


class Main(click.Group):
    argv: list[str] = []  # this invocation's arguments, for the resume command printed after Ctrl-C

    def main(self, args=None, *rest, **kwargs):
        Main.argv = list(args) if args is not None else sys.argv[1:]
        return super().main(args, *rest, **kwargs)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as error:
            fail(str(error))
        except click.UsageError as error:  # a bad option value: one line too, not click's usage block
            command = error.ctx.command_path if error.ctx else "edgeinv"
            fail(f"{error.format_message().rstrip('.')}; see `{command} --help`")
        except OSError as error:  # disk full, permissions, ... anywhere: still one line
            from edgeinv.files import DISK_ERRNOS, disk_error

            if error.errno not in DISK_ERRNOS:
                raise
            fail(str(disk_error(error.filename or "output", error)))
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]")
            sys.exit(130)


def fail(message: str) -> None:
    """One line on stderr (however long), exit status 2."""
    console.print(f"[bold red]error:[/] {escape(' '.join(message.split()))}", highlight=False, soft_wrap=True)
    sys.exit(2)


def status(text: str):
    """A spinner on a terminal, nothing elsewhere: a transient rich display that stops on a
    non-terminal prints a blank line, which would come before a one-line error."""
    from contextlib import nullcontext

    return console.status(escape(text)) if console.is_terminal else nullcontext()


def warning(message: str) -> None:
    console.print(f"[yellow]{escape(message)}[/]", highlight=False, soft_wrap=True)


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
@click.option("--overwrite", is_flag=True, help="replace an --out that holds a different model or other files")
@click.option("--quantize", type=click.Choice(["int8", "int4"]), default=None,
              help="weight-only quantisation (MatMul 8/4-bit, Conv int8): about 1/4 of the weights' memory; refused below cosine 0.999 to fp32")
@click.option("--min-cosine", default=0.999, show_default=True, type=click.FloatRange(0, 1), help="with --quantize: refuse a graph whose output cosine to fp32 is lower")
def export(source: str, out: Path | None, config: str | None, overwrite: bool, quantize: str | None, min_cosine: float) -> None:
    """Convert a checkpoint to edgeinv's ONNX folder (optimum's layout + inversion extras).

    SOURCE is a diffusers folder, a single .safetensors/.ckpt file, a hub id (needs a
    network), or an existing ONNX export: an optimum one is adopted, and with --quantize an
    edgeinv one is quantised, both without torch. The folder is written beside --out and
    swapped in when complete, so an interrupted export leaves the earlier --out as it was.
    """
    import shutil
    import tempfile

    from edgeinv import manifest
    from edgeinv.files import check_writable_folder

    path = Path(source)
    is_edgeinv = path.is_dir() and (path / manifest.MANIFEST_NAME).is_file()
    is_optimum = path.is_dir() and not is_edgeinv and (path / manifest.TEXT_ENCODER_IDS).is_file()
    if is_edgeinv:
        from edgeinv.onnx_model import OnnxStableDiffusion

        OnnxStableDiffusion._check_folder(path)  # a damaged folder says so
    if is_optimum:
        try:
            from edgeinv.onnx_surgery import adopt_optimum_folder
        except ImportError as error:  # the Docker image leaves `onnx` out
            raise UserError(f"adopting {path} needs the onnx package ({error.name} is missing): pip install onnx, or adopt it outside the container") from None
    if quantize:
        try:
            import onnx  # noqa: F401
            from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer  # noqa: F401
        except ImportError as error:  # the Docker image leaves both out
            raise UserError(f"--quantize needs the onnx package and onnxruntime.quantization ({error.name} is missing): pip install onnx, or quantise outside the container") from None

    same_folder = out is None or (out.exists() and path.exists() and out.resolve() == path.resolve())
    if same_folder and not quantize:
        if is_edgeinv:
            console.print(f"{escape(str(path))}: already an edgeinv model folder; nothing to do", highlight=False, soft_wrap=True)
            return
        if is_optimum:  # in place: only adds files (the manifest last), so an interrupted adoption can be rerun
            check_writable_folder(path, "SOURCE")
            with status(f"adopting {path}"):
                adopt_optimum_folder(path)
                for added in (manifest.TEXT_ENCODER_EMBEDS, manifest.TOKEN_EMBEDDINGS):
                    (path / added).chmod(0o644)  # readable by the folder's other users, like the rest of it
                manifest.write_manifest(path, source, {"adopted": "optimum"})
            console.print(f"[green]adopted[/] {escape(str(path))}: added {manifest.TEXT_ENCODER_EMBEDS}, {manifest.TOKEN_EMBEDDINGS}, {manifest.MANIFEST_NAME}", highlight=False)
            return

    out = out or Path(f"{path.name if path.exists() else source.replace('/', '--')}-{quantize or 'onnx'}")
    if quantize and path.exists() and out.exists() and out.resolve() == path.resolve():
        raise UserError(f"{out}: --quantize writes a new folder; give an --out other than SOURCE (default: {path.name}-{quantize})")
    check_export_out(out, source, overwrite, quantize)  # before torch loads anything
    pipeline = None if is_edgeinv or is_optimum else load_torch_pipeline(source, config)
    start = time.time()
    # Everything is built in `tmp` beside --out and swapped in at the end. With --quantize the
    # fp32 folder is only a step: it is built in `scratch`, which goes away in any case.
    with staged_folder(out) as tmp, tempfile.TemporaryDirectory(dir=tmp.parent, prefix=f"{tmp.name}.fp32-") as scratch:
        fp32 = Path(scratch) if quantize else tmp
        if is_edgeinv:
            if quantize:
                fp32 = path
            else:
                shutil.copytree(path, tmp, dirs_exist_ok=True)
            done = f"[green]copied[/] {escape(str(path))} to {escape(str(out))}"
        elif is_optimum:
            with status(f"adopting {path} into {out}"):
                shutil.copytree(path, fp32, dirs_exist_ok=True)
                adopt_optimum_folder(fp32)
                manifest.write_manifest(fp32, source, {"adopted": "optimum"})
            done = f"[green]adopted[/] {escape(str(out))}: added {manifest.TEXT_ENCODER_EMBEDS}, {manifest.TOKEN_EMBEDDINGS}, {manifest.MANIFEST_NAME}"
        else:
            from edgeinv_export.onnx_export import export_pipeline

            with status(f"exporting to {out}"):
                seconds = export_pipeline(pipeline, fp32, source)
            del pipeline  # its memory, before quantising
            detail = ", ".join(f"{k} {v:.1f}s" for k, v in seconds.items())
            done = f"[green]exported[/] {escape(str(out) if not quantize else 'fp32 graphs')} in {time.time() - start:.1f}s ({detail})"
            if quantize:
                console.print(done, highlight=False)
        if quantize:
            from edgeinv.quantize import describe, quantize_folder

            cosines: list[str] = []  # shown once the export is accepted: a refusal stays one line
            with status(f"quantising to {quantize}"):
                record = quantize_folder(fp32, tmp, quantize, min_cosine=min_cosine, source_label=source, log=cosines.append)
            for line in cosines:
                console.print(f"  {escape(line)}", highlight=False, soft_wrap=True)
            done = f"[green]quantised[/] {escape(str(out))} in {time.time() - start:.1f}s: {describe(record)}"
    console.print(done, highlight=False, soft_wrap=True)


def load_torch_pipeline(source: str, config: str | None):
    """The diffusers pipeline to export (the torch extra)."""
    try:
        from edgeinv_export.load import load_pipeline
    except ImportError as error:
        raise UserError(f"export needs the torch extra ({error.name} is missing): pip install torch==2.13.0 'edgeinv[torch]'") from None
    with status(f"loading {source}"):
        return load_pipeline(source, config)


# Mean DVAR stop of the defaults in the token-against-words race, in UNet sample-evaluations
# (generation 205 of 300 at d = 64; default model v3: benchmarks/results/token_vs_words.md).
TYPICAL_DVAR_STOP_EVALUATIONS = 27100


def projection(first, second, config, unit: str = "generation") -> str:
    """After two generations (zo-sgd: steps): the measured time per one and the projected run
    time. The typical DVAR stop is CMA-ES's measurement; zo-sgd gets the budget only."""
    from edgeinv.stopping import window_in_steps

    per_generation = second.seconds - first.seconds
    evaluations = max(1, second.unet_evaluations - first.unet_evaluations)
    remaining = lambda generations: _duration(max(0, generations - second.generation - 1) * per_generation)  # noqa: E731
    text = (f"measured {per_generation:.1f}s per {unit} after the first ({evaluations} UNet evaluations, chunk {config.chunk_size}); "
            f"projected: {remaining(config.budget)} more to the budget of {config.budget} {unit}s")
    if config.optimizer == "cma-es":
        window = window_in_steps(config.dvar_window, evaluations)
        typical = min(config.budget, max(window, round(TYPICAL_DVAR_STOP_EVALUATIONS / evaluations)))
        text += f", ~{remaining(typical)} to a typical DVAR stop (~{unit} {typical})"
    return text


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def check_export_out(out: Path, source: str, overwrite: bool, quantize: str | None = None) -> None:
    """Refuse an --out that is a file, unwritable, or holds something else (another model, or
    the same one quantised otherwise), unless --overwrite."""
    from edgeinv import manifest
    from edgeinv.files import check_writable_folder

    check_writable_folder(out)
    if overwrite or not out.is_dir() or not any(out.iterdir()):
        return
    try:
        record = manifest.read_manifest(out)
    except UserError:
        record = None
    scheme = (record.get("quantization") or {}).get("scheme") if record is not None else None
    if record is not None and str(record.get("source")) == str(source) and scheme == quantize:
        return  # the same model exported again: replaced whole when the new one is complete
    what = f"a model exported from {record.get('source')} ({scheme or 'fp32'})" if record is not None else "other files"
    raise UserError(f"{out}: holds {what}; choose another --out, or add --overwrite to replace it")


def widen_permissions(folder: Path) -> None:
    """Model folders are shared: files 0644, folders 0755 (safetensors and mkdtemp write private ones)."""
    import os

    os.chmod(folder, 0o755)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o755)
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)


class staged_folder:
    """Build a folder beside `out`, then swap it in; on any failure the temporary folder goes
    and `out` is left as it was."""

    def __init__(self, out: Path):
        self.out = Path(out)

    def __enter__(self) -> Path:
        import tempfile

        from edgeinv.files import disk_error

        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = Path(tempfile.mkdtemp(dir=self.out.parent, prefix=f".{self.out.name}.", suffix=".tmp"))
        except OSError as error:
            raise disk_error(self.out, error) from None
        return self.tmp

    def __exit__(self, kind, value, traceback) -> None:
        import os
        import shutil

        if kind is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        widen_permissions(self.tmp)
        old = None
        if self.out.exists():
            old = self.out.parent / f"{self.tmp.name}.old"
            os.replace(self.out, old)
        try:
            os.replace(self.tmp, self.out)
        except BaseException:
            if old is not None:
                os.replace(old, self.out)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


@main.command()
@click.argument("prompt")
@click.option("--model", type=click.Path(path_type=Path), help=MODEL_HELP)
@click.option("--embedding", "embeddings", multiple=True, type=click.Path(path_type=Path), help="learned token file (diffusers, A1111/emb_params); repeatable")
@click.option("--token", "tokens", multiple=True, help="trigger word for the matching --embedding (default: the name stored in the file)")
@click.option("--negative", default="", help="negative prompt")
@click.option("--steps", default=25, show_default=True, type=click.IntRange(1, 1000))
@click.option("--guidance", default=7.5, show_default=True, type=float, help="classifier-free guidance scale (1 = off)")
@click.option("--scheduler", default="ddim", show_default=True, type=click.Choice(["ddim", "euler"]))
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0))
@click.option("-n", "count", default=4, show_default=True, type=click.IntRange(1, 64), help="number of images")
@click.option("--out", type=click.Path(path_type=Path), default=Path("generated.png"), show_default=True,
              help="picture file (.png .jpg .webp ...; no extension: .png): one image, or a grid of all. A folder: one PNG per image plus the grid")
@click.option("--max-memory", default=2.0, show_default=True, type=click.FloatRange(0.1), help="GB of memory to stay under when sizing UNet calls")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda", "openvino"]), help="openvino: the OpenVINO provider on this CPU (the openvino extra)")
def generate(prompt, model, embeddings, tokens, negative, steps, guidance, scheduler, seed, count, out, max_memory, device) -> None:
    """Draw PROMPT with the ONNX model (torch is not used)."""
    from PIL import Image

    from edgeinv import manifest
    from edgeinv.embedding_files import load_embedding
    from edgeinv.files import atomic_path
    from edgeinv.generate import add_embedding, decode, denoise, image_grid
    from edgeinv.onnx_model import OnnxStableDiffusion

    if len(tokens) > len(embeddings):
        raise UserError("more --token than --embedding options; give one --token per --embedding")
    targets, grid_path = output_paths(out, count)  # before any sampling: a bad --out costs nothing
    sd = OnnxStableDiffusion(model, device=device)
    multi: dict[str, int] = {}
    for i, path in enumerate(embeddings):
        token, vectors = load_embedding(path, tokens[i] if i < len(tokens) else None)
        add_embedding(sd, token, vectors, multi)
        if token not in prompt:
            warning(f"warning: {path} adds {token!r}, which PROMPT does not use")
    from rich.progress import Progress

    with Progress(console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("sampling", total=steps)
        latents = denoise(sd, prompt, negative_prompt=negative, steps=steps, guidance=guidance, scheduler=scheduler, n=count, seed=seed,
                          multi_vector_tokens=multi, progress=lambda i, total: bar.update(task, completed=i), max_rows=sd.chunk_size_for(max_memory))
    sd.release(manifest.UNET)  # before the decoder's activations: at SD 1.5's size both together set the peak
    images = decode(sd, latents)
    pictures = list(zip(targets, images)) if targets else []
    if grid_path is not None:
        pictures.append((grid_path, images[0] if count == 1 else image_grid(images, columns=min(count, 4))))
    for path, picture in pictures:
        with atomic_path(path) as tmp:  # the earlier file stays whole until the new one is complete
            Image.fromarray(picture).save(tmp, format=IMAGE_FORMATS[path.suffix.lower()])
    saved = grid_path if not targets else out
    console.print(f"[green]saved[/] {escape(str(saved))} ({count} image{'s' if count > 1 else ''}, {images.shape[2]}x{images.shape[1]})", highlight=False)


IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}


def output_paths(out: Path, count: int) -> tuple[list[Path], Path | None]:
    """(one file per image, the single picture or grid) for `generate --out`, checked before sampling.

    A folder (existing, or given with a trailing slash) receives image-NNNN.png per image,
    numbered after the ones already there, plus grid-NNNN.png; a file name without an
    extension gets .png."""
    import re

    from edgeinv.files import check_writable_folder

    if out.is_dir() or str(out).endswith(("/", "\\")):
        check_writable_folder(out)
        taken = [int(m.group(1)) for p in (out.glob("image-*.png") if out.is_dir() else []) if (m := re.fullmatch(r"image-(\d+)\.png", p.name))]
        first = max(taken, default=0) + 1
        return [out / f"image-{first + i:04d}.png" for i in range(count)], (out / f"grid-{first:04d}.png" if count > 1 else None)
    if out.suffix == "":
        out = out.with_name(out.name + ".png")
    if out.suffix.lower() not in IMAGE_FORMATS:
        raise UserError(f"{out}: unknown picture extension {out.suffix!r}; use one of {', '.join(IMAGE_FORMATS)} (or a folder)")
    if out.is_dir():
        raise UserError(f"{out}: is a folder; give a file name or the folder without an extension")
    check_writable_folder(out.parent, "the folder of --out")
    if len(out.name.encode()) > 250:
        raise UserError(f"{out.name[:40]}...: --out name is too long; choose a shorter one")
    return [], out


METHOD_HELP = ("cma-es: forward passes only on ONNX Runtime (no torch; --optimizer picks CMA-ES or zeroth-order SGD). ti, dreambooth (LoRA), "
               "custom-diffusion: the gradient methods in PyTorch (torch extra; --model is then a diffusers folder, .safetensors file or hub id)")


@main.command()
@click.argument("images", type=click.Path(path_type=Path))
@click.option("--method", default="cma-es", show_default=True, type=click.Choice(["cma-es", "ti", "dreambooth", "custom-diffusion"]), help=METHOD_HELP)
@click.option("--model", help=MODEL_HELP + "; for the gradient methods the shipped model's diffusers folder")
@click.option("--optimizer", default="cma-es", show_default=True, type=click.Choice(["cma-es", "zo-sgd"]),
              help="forward-only method: CMA-ES, or zeroth-order SGD (ZOODiP's random-gradient estimator, Adam, history subspace)")
@click.option("--token", default="<concept>", show_default=True, help="the new word to learn; use it in prompts afterwards")
@click.option("--vectors", default=1, show_default=True, type=click.IntRange(1, 75), help="vectors per token (AUTOMATIC1111's 'vectors per token')")
@click.option("--init", "init_words", multiple=True, help="start from these words' vectors (repeatable); default: the closest vocabulary word by loss on your images")
@click.option("--init-candidates", default=1000, show_default=True, type=click.IntRange(1), help="vocabulary words ranked by the visual initialisation")
@click.option("--property", "concept_kind", default="object", show_default=True, type=click.Choice(["object", "style"]), help="caption templates")
@click.option("--out", type=click.Path(path_type=Path), help="run folder (default: runs/<token>-<time>)")
@click.option("--resume", is_flag=True, help="continue the run in --out from its last checkpoint")
@click.option("--overwrite", is_flag=True, help="start again in an --out that holds files (an earlier run's outputs are replaced)")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0))
@click.option("--budget", default=None, type=click.IntRange(1), help="maximum generations (cma-es) or steps [default: the method's, see README]")
@click.option("--popsize", default=None, type=click.IntRange(2), help="cma-es: candidates per generation [default: 4 + 3 ln dim]")
@click.option("--probes", default=None, type=click.IntRange(1), help="zo-sgd: probe directions per step [default: 4]")
@click.option("--mu", default=None, type=click.FloatRange(min=0.0, min_open=True), help="zo-sgd: probe length in vocabulary spreads [default: 0.1]")
@click.option("--sigma0", default=None, type=click.FloatRange(min=0.0, min_open=True), help="cma-es: initial step size, in vocabulary spreads along each subspace direction [default: 1]")
@click.option("--dim", default=None, type=click.IntRange(1), help="forward-only: search subspace dimension (per vector) [default: 64]")
@click.option("--subspace", default="pca", show_default=True, type=click.Choice(["pca", "random", "none"]), help="forward-only: search subspace (none: the whole embedding)")
@click.option("--samples", default=8, show_default=True, type=click.IntRange(1), help="forward-only: evaluation samples per generation or step (shared by all candidates)")
@click.option("--heldout", default=32, show_default=True, type=click.IntRange(1), help="held-out samples that choose the final vector")
@click.option("--dvar-window", default=None, type=click.IntRange(1), help="DVAR window in UNet sample-evaluations [default: the method's]")
@click.option("--dvar-threshold", default=None, type=float, help="stop when var(window)/var(history) falls below this [default: the method's]")
@click.option("--timesteps", default=(0.0, 1.0), show_default=True, type=(float, float), help="train on this fraction range of the schedule")
@click.option("--loss", default="log-mse", show_default=True, type=click.Choice(["log-mse", "mse"]), help="how a batch's per-sample denoising losses combine: the mean of their logs (every timestep weighs alike), or their mean (the training loss)")
@click.option("--flip/--no-flip", default=True, show_default=True, help="also learn from mirrored pictures")
@click.option("--chunk-size", default=None, type=click.IntRange(1), help="UNet rows per call [default: the most that fit --max-memory, up to 64]")
@click.option("--max-memory", default=2.0, show_default=True, type=click.FloatRange(0.1), help="GB of memory to stay under when sizing --chunk-size")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda", "openvino"]), help="openvino: the OpenVINO provider on this CPU (the openvino extra)")
@click.option("--threads", default=None, type=click.IntRange(1), help="ONNX Runtime threads [default: all cores; with --ray: 1 per worker]")
@click.option("--ray", "ray_address", default=None, metavar="ADDRESS", help="score each population on a Ray cluster: its address, 'auto' (the one `ray start` made here) or 'local' (start one); needs the ray extra")
@click.option("--workers", default=None, type=click.IntRange(1), help="with --ray: evaluator actors [default: the cluster's CPUs / --threads]")
@click.option("--lr", default=None, type=float, help="gradient methods: the token's learning rate; zo-sgd: Adam's, in vocabulary spreads [default: the method's]")
@click.option("--weights-lr", default=None, type=float, help="dreambooth / custom-diffusion: learning rate of the UNet weights")
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(1), help="gradient methods: samples per step")
@click.option("--rank", default=4, show_default=True, type=click.IntRange(1), help="dreambooth: LoRA rank")
@click.option("--class-word", default=None, help="custom-diffusion: the class the prior pictures show [default: the --init words]")
@click.option("--prior-images", default=8, show_default=True, type=click.IntRange(1), help="custom-diffusion: prior pictures the model draws")
@click.option("--mixed-precision", default="no", show_default=True, type=click.Choice(["no", "bf16", "fp16"]), help="gradient methods (fp16 needs CUDA)")
@click.option("--checkpoint-every", default=25, show_default=True, type=click.IntRange(1), help="gradient methods: steps between checkpoints")
@click.option("--no-samples", is_flag=True, help="skip drawing samples.png")
def invert(images, method, optimizer, model, token, vectors, init_words, init_candidates, concept_kind, out, resume, overwrite, seed, budget, popsize,
           probes, mu, sigma0, dim, subspace, samples, heldout, dvar_window, dvar_threshold, timesteps, loss, flip, chunk_size, max_memory, device, threads, ray_address, workers, lr, weights_lr,
           batch_size, rank, class_word,
           prior_images, mixed_precision, checkpoint_every, no_samples) -> None:
    """Learn TOKEN from the pictures in IMAGES (default method: forward passes only, no torch).

    Writes learned_embeds.safetensors (diffusers), <token>.safetensors (AUTOMATIC1111,
    ComfyUI, InvokeAI), config.json, history.jsonl, loss.png and samples.png, plus
    pytorch_lora_weights.safetensors (dreambooth) or pytorch_custom_diffusion_weights.safetensors
    (custom-diffusion). Ctrl-C keeps the last checkpoint; --resume continues it exactly.
    """
    from edgeinv.embedding_files import file_stem, save_embedding, token_names
    from edgeinv.files import check_writable_folder
    from edgeinv.checkpoints import OLD_CHECKPOINTS
    from edgeinv.config import InvertConfig, check_dim, check_token, check_token_text
    from edgeinv.invert import CHECKPOINT, load_checkpoint
    from edgeinv.report import plot_loss, write_config, write_samples

    from dataclasses import replace

    # Everything a user can get wrong is checked here, before a model is loaded or a picture encoded.
    if resume and out is None:
        raise UserError("--resume needs --out RUN_FOLDER (the folder of the run to continue)")
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other; give one")
    check_token_text(token)
    out = out or Path("runs") / f"{file_stem(token)}-{time.strftime('%Y%m%d-%H%M%S')}"
    check_writable_folder(out)
    checkpoints = ("checkpoint.pt",) if method != "cma-es" else (CHECKPOINT,)
    if not resume and out.is_dir() and any(out.iterdir()) and not overwrite:
        if any((out / name).exists() for name in ("checkpoint.json", "checkpoint.pt", *OLD_CHECKPOINTS)):
            raise UserError(f"{out}: holds an earlier run; add --resume to continue it, --overwrite to start again, or choose another --out")
        raise UserError(f"{out}: not empty; choose a new or empty --out, or add --overwrite to replace the files edgeinv writes there")
    if resume and not any((out / name).is_file() for name in checkpoints):
        if any((out / name).is_file() for name in OLD_CHECKPOINTS):
            raise UserError(f"{out / OLD_CHECKPOINTS[0]}: a pickled checkpoint from an older edgeinv, which is never loaded (it could run code); start again with --overwrite")
        raise UserError(f"{out}: no checkpoint to resume ({', '.join(checkpoints)}); start a new run without --resume")
    if not (0.0 <= timesteps[0] < timesteps[1] <= 1.0):
        raise UserError(f"--timesteps {timesteps[0]} {timesteps[1]}: give 0 <= low < high <= 1")
    if device == "openvino" and method != "cma-es":
        raise UserError(f"--device openvino runs ONNX graphs; --method {method} trains in PyTorch: use --device cpu or auto")
    if sigma0 is not None and (method != "cma-es" or optimizer != "cma-es"):
        raise UserError(f"--sigma0 is CMA-ES's initial step size; it does nothing with {'--method ' + method if method != 'cma-es' else '--optimizer ' + optimizer}: leave it out")
    if workers is not None and ray_address is None:
        raise UserError("--workers sets the Ray actors; add --ray ADDRESS (or --ray local)")
    if ray_address is not None:
        if method != "cma-es":
            raise UserError(f"--ray spreads the forward-only search; --method {method} trains in one process: leave --ray out")
        from edgeinv.ray_pool import require_ray

        require_ray()
    config = InvertConfig(images=str(images), model=model, method=method, optimizer=optimizer, token=token, vectors=vectors, init=list(init_words),
                          init_candidates=init_candidates, property=concept_kind, seed=seed, budget=budget, popsize=popsize, probes=probes, mu=mu, sigma0=1.0 if sigma0 is None else sigma0,
                          dim=dim, subspace=subspace, samples=samples, heldout=heldout,
                          dvar_window=dvar_window, dvar_threshold=dvar_threshold, timesteps=tuple(timesteps), loss=loss, flip=flip, chunk_size=chunk_size or 64,
                          device=device, threads=threads, ray=ray_address, workers=workers, lr=lr, weights_lr=weights_lr, batch_size=batch_size, rank=rank, class_word=class_word,
                          prior_images=prior_images, mixed_precision=mixed_precision, checkpoint_every=checkpoint_every).resolved()  # hashes the pictures
    if method == "cma-es":
        from edgeinv.invert import invert
        from edgeinv.onnx_model import OnnxStableDiffusion

        if resume:
            load_checkpoint(out, config)  # same settings, same pictures?

        def run(*args, **kwargs):  # the forward-only search has no trained weights besides the token
            return invert(*args, **kwargs), None

        sd = OnnxStableDiffusion(model, device=device, threads=threads)
        check_token(sd.tokenizer, token, vectors)
        check_dim(config, sd)
        if chunk_size is None:  # the most UNet rows per call that fit --max-memory, now that the model's size is known
            config = replace(config, chunk_size=sd.chunk_size_for(max_memory))
            if sd.weights_exceed(max_memory):
                warning(f"warning: {sd.folder}: the UNet's weights alone exceed --max-memory {max_memory:g} GB; UNet rows go one at a time. "
                        f"A quantised copy is about 1/4 the size: edgeinv export {sd.folder} --out {sd.folder}-int8 --quantize int8")
        unit = "generation" if optimizer == "cma-es" else "step"
    else:
        try:
            from edgeinv.gradient.train import load_checkpoint as load_gradient_checkpoint, train as run
            from edgeinv.gradient.torch_model import TorchStableDiffusion
        except ImportError as error:
            raise UserError(f"--method {method} needs the torch extra ({error.name} is missing): pip install torch==2.13.0 'edgeinv[torch]'") from None

        if resume:
            load_gradient_checkpoint(out, config)
        with status(f"loading {model or 'the default model'} in PyTorch"):
            sd = TorchStableDiffusion(model, device=device)
        check_token(sd.tokenizer, token, vectors)
        unit = "step"
    if overwrite:
        for name in (*checkpoints, *OLD_CHECKPOINTS):
            (out / name).unlink(missing_ok=True)  # a fresh run must not be resumable as the old one
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = [TextColumn(f"[bold]{optimizer if method == 'cma-es' else method}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    with Progress(*columns, console=console, disable=not console.is_terminal) as bar:
        task = bar.add_task("invert", total=config.budget, stats="encoding images")

        seen = []  # the first two records, for the projected run time

        def show(record, _config) -> None:
            seen.append(record)
            bar.update(task, completed=record.number + 1, stats=record.progress_text())
            if method == "cma-es" and len(seen) == 2 and config.budget > 2:
                console.print(projection(seen[0], seen[1], config, unit), highlight=False, soft_wrap=True)

        try:
            result, trained = run(config, out, resume=resume, progress=show, warn=warning, model=sd)
        except KeyboardInterrupt:
            bar.stop()
            if any((out / name).is_file() for name in checkpoints):
                console.print(f"[yellow]interrupted[/]; the last checkpoint is saved. Continue with: {escape(resume_command(out))}", highlight=False, soft_wrap=True)
            else:
                console.print("[yellow]interrupted[/] before the first checkpoint; nothing to resume, run the same command again", highlight=False, soft_wrap=True)
            sys.exit(130)
        except BaseException:
            bar.live.transient = True  # the error is the only line
            raise
        bar.update(task, completed=config.budget if result.stopped_by == "budget" else result.stop_generation)

    paths = save_embedding(out, token, result.vector)
    if trained is not None:
        paths.update(trained.save_weights(out))
    plot_loss(out / "loss.png", [g.deterministic_loss for g in result.history], result.stop_generation - 1 if result.stopped_by == "dvar" else None,
              f"deterministic loss per {unit} ({result.stopped_by} stop at {unit} {result.stop_generation})", x_label=unit)
    write_config(out, config, result)
    if not no_samples:
        for name, vector in zip(token_names(token, len(result.vector)), result.vector):
            sd.learned[sd.tokenizer.token_id(name)] = vector
        write_samples(out / "samples.png", sd, token, concept_kind, seed, multi_vector_tokens={token: len(result.vector)}, max_rows=config.chunk_size)
    console.print(f"[green]learned[/] {token} in {result.total_seconds:.0f}s: stopped by {result.stopped_by} at {unit} {result.stop_generation}, "
                  f"held-out loss {result.heldout_loss:.4f} (start {result.init_loss:.4f})")
    console.print(f"  {paths['diffusers']}  (diffusers: pipe.load_textual_inversion)")
    console.print(f"  {paths['a1111']}  (AUTOMATIC1111 / ComfyUI / InvokeAI: embeddings folder)")
    if len(result.vector) > 1:
        console.print(f"  ({len(result.vector)} vectors: InvokeAI needs {paths['a1111'].name}; its installer misreads a multi-vector {paths['diffusers'].name})")
    if "lora" in paths:
        console.print(f"  {paths['lora']}  (diffusers: pipe.load_lora_weights; with the token file above)")
    if "custom_diffusion" in paths:
        console.print(f"  {paths['custom_diffusion']}  (diffusers: pipe.unet.load_attn_procs(folder, weight_name=..., _pipeline=pipe); with the token file above)")
    if method == "cma-es":
        console.print(f"  try: edgeinv generate \"a photo of a {token}\" --embedding {paths['diffusers']}")


MANAGED_BY_INVERT_MANY = ("--out", "--resume", "--overwrite", "--ray", "--workers", "--threads")


@main.command("invert-many", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("root", type=click.Path(path_type=Path))
@click.option("--out", "runs", type=click.Path(path_type=Path), default=Path("runs"), show_default=True, help="one run folder per concept goes here")
@click.option("--ray", "ray_address", default=None, metavar="ADDRESS", help="run the concepts as Ray tasks on this cluster ('local': start one here)")
@click.option("--workers", default=None, type=click.IntRange(1), help="with --ray: at most this many concepts at once [default: as many as the cluster's CPUs allow]")
@click.option("--threads", default=None, type=click.IntRange(1), help="ONNX Runtime threads per concept [default: all cores; with --ray: 1]")
@click.pass_context
def invert_many(ctx, root: Path, runs: Path, ray_address: str | None, workers: int | None, threads: int | None) -> None:
    """Invert every subfolder of ROOT (one concept each) into --out/<subfolder>.

    Other options are `edgeinv invert`'s and apply to every concept. A folder that fails is
    reported in the summary (also written to --out/summary.json) and the others go on;
    rerunning skips finished concepts and resumes interrupted ones. Exit status 2 when a
    concept failed on bad input.
    """
    from rich.table import Table

    from edgeinv.files import check_writable_folder
    from edgeinv.invert_many import concept_folders, invert_many as run_all

    invert_args = list(ctx.args)
    if given := [a for a in invert_args if a.split("=")[0] in MANAGED_BY_INVERT_MANY]:
        raise UserError(f"{given[0]}: invert-many sets it for every concept; give it before ROOT's options as invert-many's own option, or leave it out")
    if workers is not None and ray_address is None:
        raise UserError("--workers sets how many concepts run at once on Ray; add --ray ADDRESS (or --ray local)")
    folders = concept_folders(root)
    invert.make_context("invert", [str(folders[0]), *invert_args])  # a bad option: one line now, not once per concept
    check_writable_folder(runs)
    if ray_address is not None:
        from edgeinv.ray_pool import require_ray

        require_ray()
        threads = threads or 1
    if threads:
        invert_args += ["--threads", str(threads)]
    with status(f"inverting {len(folders)} concepts"):
        records = run_all(root, runs, invert_args, ray_address, threads or 1, workers)
    table = Table("concept", "status", "stop", "held-out loss", "wall", "files / error", title=f"invert-many {root}")
    for r in records:
        stop = f"{r.stopped_by} @ {r.stop}" if r.stop is not None else "-"
        loss = f"{r.heldout_loss:.4f}" if r.heldout_loss is not None else "-"
        state = r.status + (" (resumed)" if r.resumed and r.status == "done" else "")
        table.add_row(escape(r.concept), state, stop, loss, f"{r.seconds:.0f}s", escape(r.error or r.out))
    Console().print(table)
    if any(r.status == "failed" for r in records):
        sys.exit(2)


def resume_command(out: Path) -> str:
    """The command line that continues this run: the user's own options, --out, --resume."""
    import shlex

    args = [str(a) for a in Main.argv if a != "--overwrite"]
    if "--out" not in args and not any(a.startswith("--out=") for a in args):
        args += ["--out", str(out)]
    if "--resume" not in args:
        args.append("--resume")
    return shlex.join(["edgeinv", *args])


if __name__ == "__main__":
    main()
