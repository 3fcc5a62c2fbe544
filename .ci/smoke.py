"""CI: an installed edgeinv (wheel, --target or --user), run from outside the source tree.

    python .ci/smoke.py --torch yes|no --location DIR PICTURES

Checks that edgeinv is imported from DIR (not from the checkout), finds its default models
as package data, generates, inverts, and runs `--method ti` (with the torch extra) or asks
for the torch extra in one line (without it).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--torch", choices=["yes", "no"], required=True)
parser.add_argument("--location", required=True, help="where edgeinv must be imported from")
parser.add_argument("pictures")
args = parser.parse_args()

import edgeinv  # noqa: E402
from edgeinv.onnx_model import default_model_dir  # noqa: E402

location = Path(args.location).resolve()
assert Path(edgeinv.__file__).resolve().is_relative_to(location), f"edgeinv imported from {edgeinv.__file__}, not {location}"
assert default_model_dir().resolve().is_relative_to(location), f"default model {default_model_dir()} is not the installed package data"
assert (importlib.util.find_spec("torch") is not None) == (args.torch == "yes"), "torch presence differs from what this install should have"
assert importlib.util.find_spec("edgeinv.gradient") is not None, "edgeinv.gradient is missing from the install"


def edgeinv_cli(*arguments: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "edgeinv.cli", *arguments], capture_output=True, text=True)
    if check and done.returncode != 0:
        sys.exit(f"edgeinv {' '.join(arguments)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done


work = Path(tempfile.mkdtemp())
os.chdir(work)
edgeinv_cli("generate", "a photo of a red circle", "--steps", "3", "-n", "1", "--out", "x.png")
assert (work / "x.png").stat().st_size > 0
small = ["--budget", "3", "--dim", "4", "--popsize", "4", "--samples", "2", "--heldout", "4", "--init", "red", "--no-samples"]
edgeinv_cli("invert", args.pictures, "--out", "run", *small)
assert (work / "run" / "learned_embeds.safetensors").stat().st_size > 0
ti = edgeinv_cli("invert", args.pictures, "--method", "ti", "--out", "ti", "--budget", "3", "--heldout", "4", "--init", "red", "--no-samples", check=args.torch == "yes")
if args.torch == "yes":
    assert (work / "ti" / "learned_embeds.safetensors").stat().st_size > 0
else:
    assert ti.returncode == 2 and "needs the torch extra" in ti.stderr and "'edgeinv[torch]'" in ti.stderr and "Traceback" not in ti.stderr, ti.stderr
print(f"{location}: generate, invert and --method ti ({'trained' if args.torch == 'yes' else 'asks for the torch extra'}) OK from {work}")
