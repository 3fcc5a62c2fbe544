"""`edgeinv invert-many ROOT --out RUNS`: one inversion per subfolder of ROOT.

Each concept is an ordinary `edgeinv invert` in its own process (`RUNS/<folder>`), so it
behaves exactly as the single command does: its options, checks, checkpoints and files. A
folder that fails (bad pictures, ...) is reported with its one-line error and the others go
on. Rerunning skips finished runs and resumes interrupted ones (the decision is taken when a
concept starts, so a retried Ray task resumes too). With `--ray` the concepts are Ray tasks
spread over the cluster (each reserves `--threads` CPUs); without it they run one after another.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from edgeinv.data import IMAGE_SUFFIXES
from edgeinv.errors import UserError
from edgeinv.manifest import write_json_atomic

FINISHED = ("config.json", "learned_embeds.safetensors")  # written last by `invert`
RESUMABLE = "checkpoint.json"
SUMMARY = "summary.json"


@dataclass
class ConceptRun:
    concept: str
    status: str  # "done", "skipped" (finished earlier), "failed"
    out: str
    seconds: float = 0.0
    stopped_by: str | None = None
    stop: int | None = None
    heldout_loss: float | None = None
    resumed: bool = False
    error: str | None = None


def concept_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        raise UserError(f"{root}: not a folder; give a folder with one subfolder of pictures per concept")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        pictures = [p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
        hint = "it holds pictures: use `edgeinv invert` for one concept" if pictures else "add one subfolder of pictures per concept"
        raise UserError(f"{root}: no concept subfolders; {hint}")
    return folders


def is_finished(out: Path) -> bool:
    return all((out / name).is_file() for name in FINISHED)


def run_concept(images: str, out: str, invert_args: list[str]) -> dict:
    """One concept, in its own `edgeinv invert` process. Runs on the driver or as a Ray task."""
    out_path = Path(out)
    record = ConceptRun(Path(images).name, "done", out)
    if is_finished(out_path):
        record.status = "skipped"
        return asdict(read_result(out_path, record))
    command = [sys.executable, "-m", "edgeinv.cli", "invert", images, "--out", out, *invert_args]
    if (out_path / RESUMABLE).is_file():
        command.append("--resume")
        record.resumed = True
    start = time.time()
    finished = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    record.seconds = time.time() - start
    if finished.returncode != 0:
        lines = [line for line in finished.stderr.strip().splitlines() if line.strip()]
        record.status = "failed"
        record.error = (lines[-1] if lines else f"exit status {finished.returncode}").removeprefix("error: ")
        return asdict(record)
    return asdict(read_result(out_path, record))


def read_result(out: Path, record: ConceptRun) -> ConceptRun:
    result = json.loads((out / "config.json").read_text())["result"]
    record.stopped_by, record.stop, record.heldout_loss = result["stopped_by"], result["stop_generation"], result["heldout_loss"]
    if record.status == "skipped":
        record.seconds = result["total_seconds"]
    return record


def invert_many(root: Path, runs: Path, invert_args: list[str], ray_address: str | None = None, threads: int = 1,
                workers: int | None = None) -> list[ConceptRun]:
    """Every concept folder of `root` inverted into `runs/<folder>`; at most `workers` at once on Ray."""
    folders = concept_folders(root)
    runs.mkdir(parents=True, exist_ok=True)
    jobs = [(str(folder), str(runs / folder.name), invert_args) for folder in folders]
    if ray_address is None:
        records = [run_concept(*job) for job in jobs]
    else:
        from edgeinv.ray_pool import connect

        ray = connect(ray_address)
        task = ray.remote(num_cpus=threads)(run_concept)
        index, pending = {}, []
        for i, job in enumerate(jobs):
            if workers and len(pending) >= workers:
                _, pending = ray.wait(pending, num_returns=1)
            ref = task.remote(*job)
            index[ref] = i
            pending.append(ref)
        refs = sorted(index, key=index.get)
        records = ray.get(refs)
    runs_records = [ConceptRun(**r) for r in records]
    write_json_atomic(runs / SUMMARY, {"root": str(root), "concepts": [asdict(r) for r in runs_records]})
    return runs_records
