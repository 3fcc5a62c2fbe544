"""Scale-out on Ray: parallel efficiency of `invert --ray` and `invert-many --ray`, and the
fault test, on the default model and (with --sd15) the SD 1.5-shaped lean model.

    python benchmarks/ray_scaling.py [--sd15 /path/to/int8-folder] [--address HOST:PORT] [--workers 1 2]

E = T(1 worker) / (N x T(N workers)), every worker one ONNX Runtime thread (this machine
has 2 cores). Each `invert --ray` row is the whole `invert()` call in this driver (actor
start, model loading in the actors, VAE encoding, visual initialisation, the search with a
fixed number of generations, held-out choice); the embedding is compared with a
single-process run of the same settings. `invert-many` rows are the whole command over 4
concept folders. Without --address a local cluster with max(--workers) CPUs is started; with
it (e.g. a two-node cluster: `ray start --head --num-cpus 1` and `ray start --address ...
--num-cpus 1`) the actors and tasks spread over its nodes and cross-node transfer is used.
The fault row SIGKILLs one actor's process during generation 2 and checks that the run
finishes with the single-process embedding.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from edgeinv import ray_pool, shapes
from edgeinv.config import InvertConfig
from edgeinv.invert import invert

CONCEPTS = (("blue", "star"), ("red", "circle"), ("green", "square"), ("yellow", "triangle"))


def pictures(folder: Path, color: str, shape: str, size: int, count: int = 4) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([11, shapes.SHAPES.index(shape)])
    for i in range(count):
        image = Image.fromarray(shapes.render(shapes.random_scene(rng, color=color, shape=shape, allow_held_out=True)))
        image.resize((size, size), Image.Resampling.BICUBIC).save(folder / f"{i}.png")
    return folder


def timed_invert(config: InvertConfig, out: Path, progress=None):
    start = time.perf_counter()
    result = invert(config, out, warn=lambda m: None, progress=progress)
    return result, time.perf_counter() - start


def invert_rows(label: str, config: InvertConfig, address: str, workers: list[int], work: Path) -> list[tuple]:
    alone, alone_s = timed_invert(config, work / f"{label}-alone")
    rows, base = [], None
    for n in workers:
        result, seconds = timed_invert(replace(config, ray=address, workers=n), work / f"{label}-ray{n}")
        base = base or seconds * workers[0]
        diff = float(np.abs(result.vector - alone.vector).max())
        rows.append((f"invert --ray, {label}", n, seconds, base / (n * seconds), diff, f"{len(result.history)} generations; one process, 1 thread: {alone_s:.1f} s"))
    return rows


def invert_many_rows(label: str, root: Path, options: list[str], address: str, workers: list[int], work: Path) -> list[tuple]:
    rows, base = [], None
    for n in workers:
        command = [sys.executable, "-m", "edgeinv.cli", "invert-many", str(root), "--out", str(work / f"many-{label}-{n}"),
                   "--ray", address, "--workers", str(n), *options]
        start = time.perf_counter()
        finished = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "RAY_ADDRESS": ""})
        seconds = time.perf_counter() - start
        if finished.returncode != 0:
            raise SystemExit(f"invert-many failed:\n{finished.stderr[-2000:]}\n{finished.stdout[-2000:]}")
        base = base or seconds * workers[0]
        rows.append((f"invert-many, 4 concepts, {label}", n, seconds, base / (n * seconds), None, "whole command"))
    return rows


def fault_row(label: str, config: InvertConfig, address: str, work: Path) -> tuple:
    alone, _ = timed_invert(config, work / f"{label}-fault-alone")
    pools, seen = [], {}
    original = ray_pool.RayPool.__init__

    def remember(self, *args, **kwargs):
        original(self, *args, **kwargs)
        pools.append(self)

    def kill(record, _):
        if record.generation == 1:
            seen["before"] = pools[0].pids()
            threading.Timer(0.05, os.kill, (seen["before"][0], signal.SIGKILL)).start()
        if record.generation == 3:
            seen["after"] = pools[0].pids()

    ray_pool.RayPool.__init__ = remember
    try:
        result, seconds = timed_invert(replace(config, ray=address, workers=2), work / f"{label}-fault", progress=kill)
    finally:
        ray_pool.RayPool.__init__ = original
    replaced = seen["after"][0] != seen["before"][0]
    diff = float(np.abs(result.vector - alone.vector).max())
    return (f"fault: actor SIGKILLed in generation 2, {label}", 2, seconds, None, diff, f"actor replaced: {replaced}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", default=None, help="an existing Ray cluster (default: start a local one)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--generations", type=int, default=30, help="default model: fixed generations (DVAR off)")
    parser.add_argument("--sd15", type=Path, default=None, help="an SD 1.5-shaped edgeinv folder (int8): adds its rows (1 generation)")
    parser.add_argument("--skip-many", action="store_true")
    parser.add_argument("--sd15-many", action="store_true", help="also invert-many on the SD 1.5-shaped folder (minutes per concept)")
    args = parser.parse_args()

    import ray

    if args.address:
        ray.init(address=args.address, logging_level="ERROR")
    else:
        ray.init(num_cpus=max(args.workers), include_dashboard=False, logging_level="ERROR")
    address = args.address or ray.get_runtime_context().gcs_address
    nodes = len([n for n in ray.nodes() if n["Alive"]])
    work = Path(tempfile.mkdtemp(prefix="ray-scaling-"))
    root = work / "concepts"
    for color, shape in CONCEPTS:
        pictures(root / f"{color}-{shape}", color, shape, shapes.IMAGE_SIZE)

    rows = []
    config = InvertConfig(images=str(root / "blue-star"), budget=args.generations, dvar_threshold=0.0, threads=1)
    rows += invert_rows("default model", config, address, args.workers, work)
    rows.append(fault_row("default model", replace(config, budget=8), address, work))
    if not args.skip_many:
        rows += invert_many_rows("default model", root, ["--budget", str(args.generations), "--dvar-threshold", "0", "--no-samples"],
                                 address, args.workers, work)
    if args.sd15:
        big = work / "concepts-512"
        for color, shape in CONCEPTS:
            pictures(big / f"{color}-{shape}", color, shape, 512, count=2)
        lean = InvertConfig(images=str(big / "blue-star"), model=str(args.sd15), budget=1, popsize=8, samples=2, heldout=2, init=["star"],
                            dvar_threshold=0.0, flip=False, threads=1)
        rows += invert_rows("SD 1.5-shaped int8, 512 px", lean, address, args.workers, work)
        if args.sd15_many:
            rows += invert_many_rows("SD 1.5-shaped int8, 512 px", big, ["--model", str(args.sd15), "--budget", "1", "--popsize", "8", "--samples", "2",
                                     "--heldout", "2", "--init", "star", "--dvar-threshold", "0", "--no-flip", "--no-samples"], address, args.workers, work)

    print(f"\nRay {ray.__version__}, {nodes} node(s), {int(ray.cluster_resources().get('CPU', 0))} CPUs; {os.cpu_count()} cores on this machine\n")
    print("| run | workers | wall s | efficiency E | max abs diff to one process | note |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for label, n, seconds, efficiency, diff, note in rows:
        e = "-" if efficiency is None else f"{efficiency:.2f}"
        d = "-" if diff is None else f"{diff:.1e}"
        print(f"| {label} | {n} | {seconds:.1f} | {e} | {d} | {note} |")


if __name__ == "__main__":
    main()
