"""Does the learned token draw the concept, and more often than typing words would?

    python benchmarks/token_vs_words.py examples/orange-cross [--never-captioned] [--seeds 16] [--invert-seeds 0 1] [-- INVERT OPTIONS]

For each concept folder (named `<colour>-<shape>`: the pictures' ground truth), runs the real
command, `edgeinv invert FOLDER --token <colour-shape> --out RUNS/<concept> [INVERT OPTIONS]`,
in a fresh process under /usr/bin/time (wall time, peak memory). Then draws
"a photo of a <token>" with `--seeds` fresh seeds (never used by the search) and, with the
same seeds, every word prompt in `word_prompts`, and scores each picture with the shapes
checker: "both" = colour and shape right. The table compares the token with the best word
prompt per concept; with several `--invert-seeds` the inversion runs once per seed and the
table gives each run and their mean. `--never-captioned` adds rendered ground truth of the colour/shape pairs
the default model was never captioned with (edgeinv.shapes.HELD_OUT_PAIRS).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from edgeinv.embedding_files import load_embedding
from edgeinv.generate import image_grid
from edgeinv.onnx_model import OnnxStableDiffusion

sys.path.insert(0, str(Path(__file__).resolve().parent))
from concepts import best_words, concept_folders, run_invert, token_draws  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="*", type=Path)
    parser.add_argument("--never-captioned", action="store_true", help="add rendered pictures of the never-captioned colour/shape pairs")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--seeds", type=int, default=16, help="fresh sampling seeds per prompt")
    parser.add_argument("--invert-seeds", type=int, nargs="+", default=[0],
                        help="run the inversion once per seed (`invert --seed`): one run's result varies a lot with it")
    parser.add_argument("--runs", type=Path, default=Path("runs/token_vs_words"))
    parser.add_argument("--grid", type=Path, default=None, help="save the token's pictures, one row per concept and inversion seed")
    # Everything after `--` goes to edgeinv invert.
    argv = sys.argv[1:]
    invert_options = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    options = invert_options + (["--model", str(args.model)] if args.model else [])

    folders = concept_folders(args.folders, args.never_captioned)
    model = OnnxStableDiffusion(args.model)
    rows, grid_rows = [], []
    for folder in folders:
        color, shape = folder.name.split("-")[:2]
        best_prompt, _, words = best_words(model, color, shape, args.seeds)
        runs = []
        for invert_seed in args.invert_seeds:
            token = f"<{color}-{shape}-s{invert_seed}>"
            out = args.runs / f"{folder.name}-s{invert_seed}"
            run = run_invert(folder, token, out, [*options, "--seed", str(invert_seed)])
            images, scores = token_draws(model, token, load_embedding(out / "learned_embeds.safetensors")[1], color, shape, args.seeds)
            grid_rows.append(images)
            stop = re.search(r"stopped by (\w+) at (?:generation|step) (\d+)", run["log"])
            runs.append({**run, "scores": scores, "stop": f"{stop.group(1)} {stop.group(2)}" if stop else "?"})
            print(f"{folder.name} seed {invert_seed}: token {runs[-1]['scores'][2]:.0%} both right ({run['seconds']:.0f} s, {runs[-1]['stop']}); "
                  f"best words {best_prompt!r} {words[best_prompt][2]:.0%}", flush=True)
        rows.append((folder.name, runs, best_prompt, words[best_prompt]))
        print(f"  all words: {', '.join(f'{p!r} {v[2]:.0%}' for p, v in words.items())}", flush=True)

    seeds = " / ".join(str(s) for s in args.invert_seeds)
    print(f"\nmodel: {model.folder}; invert options: {' '.join(options) or '(defaults)'}; inversion seeds {seeds}; {args.seeds} fresh sampling seeds per prompt\n")
    print(f"| concept | token: both right (seeds {seeds}) | token: mean colour / shape / both | best word prompt | words: both right | invert wall (mean) | peak memory (max) | stops |")
    print("| --- | ---: | ---: | --- | ---: | ---: | ---: | --- |")
    for name, runs, prompt, words in rows:
        c, s, b = np.mean([r["scores"] for r in runs], axis=0)
        per_seed = " / ".join(f"{r['scores'][2]:.0%}" for r in runs)
        print(f"| {name} | {per_seed} | {c:.0%} / {s:.0%} / **{b:.0%}** | {prompt} | {words[2]:.0%} | "
              f"{np.mean([r['seconds'] for r in runs]):.0f} s | {max(r['peak_mb'] for r in runs):.0f} MB | {', '.join(r['stop'] for r in runs)} |")
    token_mean = np.mean([np.mean([r["scores"][2] for r in runs]) for _, runs, _, _ in rows])
    words_mean = np.mean([r[3][2] for r in rows])
    at_least = sum(np.mean([r["scores"][2] for r in runs]) >= words[2] for _, runs, _, words in rows)
    print(f"| **mean** | | **{token_mean:.0%}** | | {words_mean:.0%} | {np.mean([r['seconds'] for _, runs, _, _ in rows for r in runs]):.0f} s | | |")
    print(f"\ntoken at least as good as the best words (mean over seeds) on {at_least} of {len(rows)} concepts")
    if args.grid:
        args.grid.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image_grid([im for row in grid_rows for im in row], columns=args.seeds)).save(args.grid)
        print(f"\ntoken pictures: {args.grid} (one row per concept and inversion seed)")


if __name__ == "__main__":
    main()
