"""The gradient methods on the planted concepts: DVAR stop vs the fixed budget, against CMA-ES.

    python benchmarks/gradient_methods.py [--concepts 4] [--methods ti dreambooth custom-diffusion]

Same concepts, pictures, start word ("photo") and recovery R as benchmarks/planted_concepts.py
(R on 128 held-out samples; L_init and L_planted on the untrained model, L_found on the
trained one, so LoRA and Custom Diffusion weights count). Per method, one run to the
method's fixed budget with DVAR watched alongside: the first step where DVAR would stop is
this run's prefix (same seed, same batches), so R, checker colour, steps and wall time are
read there, at the weights of that step, and again at the budget. Wall time is the training
loop's (model loading, latent encoding and prior pictures excluded), DVAR's per-step
evaluation included in both.

Also: wall time until R >= 0.8 with the checker reading the planted colour, for gradient
TI (checked every 10 steps) next to CMA-ES (default settings, every 5 generations), and peak memory (ru_maxrss) of
`edgeinv invert` per method in a fresh process (20 steps / generations, no samples).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from planted_concepts import BLENDS, R_TARGET, START_WORD, Recovery, checker_color, first_reaching, majority, plant, reached, word  # benchmarks/ on sys.path

from edgeinv import shapes
from edgeinv.config import METHOD_DEFAULTS, InvertConfig
from edgeinv.invert import invert
from edgeinv.onnx_model import OnnxStableDiffusion
from edgeinv.stopping import variance_ratio

REPO = Path(__file__).resolve().parents[1]


def run_method(method: str, folder: Path, images, planted, start, planted_color: str, index: int) -> dict:
    from edgeinv.gradient.train import train
    from edgeinv.gradient.torch_model import TorchStableDiffusion

    model = TorchStableDiffusion(device="cpu")
    recovery = Recovery(model, images, planted, start, seed=index)  # losses of the untrained model
    threshold = METHOD_DEFAULTS[method].dvar_threshold
    seen: dict = {"to_target": None, "stop": None}

    def inspect(record, trained) -> None:
        vector = trained.token.detach().numpy().copy()
        if seen["stop"] is None and record.dvar_ratio is not None and record.dvar_ratio < threshold:
            seen["stop"] = {"step": record.step + 1, "seconds": record.seconds, "r": recovery(vector[0]), "color": checker_color(model, vector[0], index)}
        if method == "ti" and seen["to_target"] is None and (record.step + 1) % 10 == 0 and reached(model, recovery, vector[0], planted_color, index)[0]:
            seen["to_target"] = {"steps": record.step + 1, "seconds": record.seconds, "forwards": record.unet_evaluations}

    config = InvertConfig(images=str(folder), method=method, init=[START_WORD], seed=index, token=f"<{method}-{index}>", dvar_threshold=-1.0)
    result, trained = train(config, None, warn=lambda m: None, model=model, inspect=inspect)
    vector = trained.token.detach().numpy().copy()
    out = {"budget": result.stop_generation, "seconds": result.history[-1].seconds, "r": recovery(vector[0]),
           "color": checker_color(model, vector[0], index), **seen}
    if method == "ti":  # re-tuning DVAR offline: TI's snapshots give R at any step of this run
        losses = [s.deterministic_loss for s in result.history]
        out["retune"] = {}
        for window_steps, threshold in DVAR_GRID:
            stop = next((i for i in range(len(losses)) if (v := variance_ratio(losses[: i + 1], window_steps)) is not None and v < threshold), None)
            out["retune"][(window_steps, threshold)] = (stop + 1, recovery(result.trajectory[stop][0])) if stop is not None else None
    return out


DVAR_GRID = [(w, t) for w in (75, 150, 310) for t in (0.15, 0.3, 0.5)]  # window in steps of batch 4


PEAK = """
import json, sys
def peak_mb():  # VmHWM: this process's own peak (ru_maxrss would carry the parent's over fork + exec)
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
from edgeinv.cli import main
sys.argv = ["edgeinv", "invert", {folder!r}, "--method", {method!r}, "--budget", "20", "--init", "photo", "--out", {out!r}, "--no-samples"]
try:
    main()
except SystemExit as e:
    assert e.code in (0, None), e.code
print(json.dumps({{"peak_mb": peak_mb(), "torch": "torch" in sys.modules}}))
"""


def peak_memory(method: str, folder: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([sys.executable, "-c", PEAK.format(folder=str(folder), method=method, out=str(Path(tmp) / "run"))], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concepts", type=int, default=4)
    parser.add_argument("--methods", nargs="+", default=["ti", "dreambooth", "custom-diffusion"])
    parser.add_argument("--workdir", default="/tmp/edgeinv-planted")
    parser.add_argument("--only-memory", action="store_true", help="just the peak-memory table")
    args = parser.parse_args()

    if args.only_memory:
        print_peak_memory(args.methods, Path(args.workdir) / "-".join(BLENDS[0]))
        return

    rows = []
    for index, (a, b) in enumerate(BLENDS[: args.concepts]):
        onnx = OnnxStableDiffusion()
        planted, start = 0.5 * (word(onnx, a) + word(onnx, b)), word(onnx, START_WORD)
        folder = Path(args.workdir) / f"{a}-{b}"
        images = plant(onnx, planted, folder, seed=index)
        planted_color = majority([shapes.read_image(im) for im in images])[0]
        recovery = Recovery(onnx, images, planted, start, seed=index)
        cma = invert(InvertConfig(images=str(folder), init=[START_WORD], seed=index, token=f"<cma-{index}>"), warn=lambda m: None, model=onnx)
        row = {"concept": f"{a}+{b}", "planted_color": planted_color, "cma_to_target": first_reaching(onnx, recovery, cma.trajectory, cma.history, planted_color, index), "cma_r": recovery(cma.vector[0])}
        for method in args.methods:
            row[method] = run_method(method, folder, images, planted, start, planted_color, index)
            print(row["concept"], method, row[method], flush=True)
        rows.append(row)

    print(f"\n### Gradient methods on {len(rows)} planted concepts: DVAR stop vs the fixed budget (default model, 2 CPU threads)\n")
    print("| method | concept | planted colour | DVAR stop (step) | R at stop | draws at stop | wall at stop (s) | budget (steps) | R at budget | draws at budget | wall at budget (s) | steps saved |")
    print("| --- | --- | --- | ---: | ---: | --- | ---: | ---: | ---: | --- | ---: | ---: |")
    for method in args.methods:
        for r in rows:
            m, s = r[method], r[method]["stop"]
            stop = (f"{s['step']} | {s['r']:.3f} | {s['color']} | {s['seconds']:.0f}" if s else "no stop | | |")
            saved = f"{m['budget'] / s['step']:.1f}x" if s else "1.0x"
            print(f"| {method} | {r['concept']} | {r['planted_color']} | {stop} | {m['budget']} | {m['r']:.3f} | {m['color']} | {m['seconds']:.0f} | {saved} |")
        stops = [r[method]["stop"] for r in rows]
        if all(stops):
            r_stop, r_full = np.mean([s["r"] for s in stops]), np.mean([r[method]["r"] for r in rows])
            agree_stop = np.mean([s["color"] == r["planted_color"] for s, r in zip(stops, rows)])
            agree_full = np.mean([r[method]["color"] == r["planted_color"] for r in rows])
            print(f"| **{method} mean** | | | {np.mean([s['step'] for s in stops]):.0f} | {r_stop:.3f} | agree {agree_stop:.0%} | {np.mean([s['seconds'] for s in stops]):.0f} | "
                  f"{np.mean([r[method]['budget'] for r in rows]):.0f} | {r_full:.3f} | agree {agree_full:.0%} | {np.mean([r[method]['seconds'] for r in rows]):.0f} | "
                  f"{np.mean([r[method]['budget'] for r in rows]) / np.mean([s['step'] for s in stops]):.1f}x (R {100 * (r_stop - r_full) / abs(r_full):+.0f}%) |")

    if "ti" in args.methods:
        print(f"\n### Time to R >= {R_TARGET}: forward-only CMA-ES (ONNX Runtime) vs gradient TI (PyTorch), same concepts\n")
        print("| concept | CMA-ES generations | CMA-ES (s) | CMA-ES final R | TI steps | TI (s) | TI / CMA-ES time |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in rows:
            c, t = r["cma_to_target"], r["ti"]["to_target"]
            c_text = f"{c['generations']} | {c['seconds']:.1f}" if c["reached"] else "not reached | "
            t_text = f"{t['steps']} | {t['seconds']:.1f} | {t['seconds'] / c['seconds']:.1f}x" if t and c["reached"] else "not reached | | "
            print(f"| {r['concept']} | {c_text} | {r['cma_r']:.3f} | {t_text} |")

    if "ti" in args.methods:
        print("\n### Re-tuning DVAR for gradient TI on the default model: stop step and R there (same runs, offline)\n")
        print("| window (steps) | threshold | mean stop step | mean R at stop | mean R at budget |")
        print("| ---: | ---: | ---: | ---: | ---: |")
        for key in DVAR_GRID:
            stops = [r["ti"]["retune"][key] for r in rows]
            if all(stops):
                print(f"| {key[0]} | {key[1]} | {np.mean([s[0] for s in stops]):.0f} | {np.mean([s[1] for s in stops]):.3f} | {np.mean([r['ti']['r'] for r in rows]):.3f} |")
            else:
                print(f"| {key[0]} | {key[1]} | no stop on {sum(s is None for s in stops)} of {len(stops)} | | |")

    print_peak_memory(args.methods, Path(args.workdir) / "-".join(BLENDS[0]))


def print_peak_memory(methods: list[str], folder: Path) -> None:
    """`folder`: the first planted concept's pictures (made by a full run of this script)."""
    print("\n### Peak memory of `edgeinv invert` (default model, fresh process, 20 steps/generations)\n")
    print("| method | peak RSS (MB) | torch imported |")
    print("| --- | ---: | --- |")
    for method in ["cma-es", *methods]:
        peak = peak_memory(method, folder)
        print(f"| {method} | {peak['peak_mb']:.0f} | {peak['torch']} |")


if __name__ == "__main__":
    main()
