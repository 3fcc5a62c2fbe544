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
    edgeinv export MODEL     once: a Stable Diffusion 1.x/2.x checkpoint -> ONNX (needs torch)
    edgeinv generate PROMPT  text-to-image on ONNX Runtime, with learned tokens
    """


@main.command()
@click.argument("source")
@click.option("--out", type=click.Path(path_type=Path), help="output folder (default: SOURCE-onnx; an ONNX SOURCE is adopted in place)")
@click.option("--config", help="for single-file checkpoints offline: a diffusers folder (or hub id) of the same architecture")
def export(source: str, out: Path | None, config: str | None) -> None:
    """Convert a checkpoint to edgeinv's ONNX folder (optimum's layout + inversion extras).

    SOURCE is a diffusers folder, a single .safetensors/.ckpt file, a hub id (needs a
    network), or an existing optimum ONNX export, which is adopted without torch.
    """
    from edgeinv import manifest

    path = Path(source)
    if path.is_dir() and (path / manifest.TEXT_ENCODER_IDS).is_file():
        from edgeinv.onnx_surgery import adopt_optimum_folder

        target = path if out is None else _copy_folder(path, out)
        with console.status(f"adopting {target}"):
            adopt_optimum_folder(target)
            manifest.write_manifest(target, source, {"adopted": "optimum"})
        console.print(f"[green]adopted[/] {target}: added {manifest.TEXT_ENCODER_EMBEDS}, {manifest.TOKEN_EMBEDDINGS}, {manifest.MANIFEST_NAME}")
        return

    from edgeinv_export.load import load_pipeline

    out = out or Path(f"{path.name if path.exists() else source.replace('/', '--')}-onnx")
    with console.status(f"loading {source}"):
        pipeline = load_pipeline(source, config)
    from edgeinv_export.onnx_export import export_pipeline

    start = time.time()
    with console.status(f"exporting to {out}"):
        seconds = export_pipeline(pipeline, out, source)
    detail = ", ".join(f"{k} {v:.1f}s" for k, v in seconds.items())
    console.print(f"[green]exported[/] {out} in {time.time() - start:.1f}s ({detail})")


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


if __name__ == "__main__":
    main()
