"""The command line: help, version, generate, and one-line errors without tracebacks."""

import subprocess
import sys

import numpy as np
from click.testing import CliRunner
from PIL import Image

from edgeinv import __version__
from edgeinv.cli import main
from tests.conftest import run_cli_without_torch


def run(*args):
    return CliRunner().invoke(main, list(args))


def test_help_lists_every_verb():
    result = run("--help")
    assert result.exit_code == 0
    for verb in ("export", "generate"):
        assert verb in result.output


def test_version():
    assert run("--version").output.strip().endswith(__version__)


def test_generate_writes_a_grid(tmp_path):
    out = tmp_path / "grid.png"
    result = run("generate", "a photo of a red circle", "--steps", "3", "-n", "2", "--out", str(out))
    assert result.exit_code == 0, result.output
    image = np.asarray(Image.open(out))
    assert image.shape == (64, 128, 3) and image.std() > 5  # two pictures, not blank


def test_generate_with_embedding_file(tmp_path, sd):
    from edgeinv.embedding_files import save_embedding

    paths = save_embedding(tmp_path, "<blue-ish>", sd.token_table[sd.tokenizer.token_id("blue</w>")])
    out = tmp_path / "one.png"
    result = run("generate", "a <blue-ish> circle", "--embedding", str(paths["a1111"]), "--token", "<blue-ish>", "--steps", "3", "-n", "1", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (64, 64)


def test_user_errors_are_one_line_with_exit_code_2(tmp_path):
    done = subprocess.run([sys.executable, "-m", "edgeinv.cli", "generate", "x", "--model", str(tmp_path / "nowhere")], capture_output=True, text=True)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "no such model folder" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_generate_never_imports_torch(tmp_path):
    done = run_cli_without_torch(["generate", "a blue star", "--steps", "2", "-n", "1", "--out", tmp_path / "x.png"])
    assert done.returncode == 0 and "torch-free" in done.stdout, done.stderr


def test_install_hints_keep_their_brackets(tmp_path):
    """rich must not swallow `[torch]` as markup."""
    script = ("import sys\nsys.modules['torch'] = None\nfrom edgeinv.cli import main\n"
              f"sys.argv = ['edgeinv', 'invert', 'examples/orange-cross', '--method', 'ti', '--out', {str(tmp_path / 'run')!r}]\nmain()")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 2 and "'edgeinv[torch]'" in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_base_install_invert_prints_no_matplotlib_warning(tmp_path):
    """pycma warns when matplotlib is missing (the base install); edgeinv silences it."""
    script = ("import sys\nsys.modules['matplotlib'] = None\nsys.modules['matplotlib.pyplot'] = None\n"
              "from edgeinv.optimizers import CmaEs\nCmaEs([0.0, 0.0], 1.0, 4, 0)\nprint('ok')")
    done = subprocess.run([sys.executable, "-W", "default", "-c", script], capture_output=True, text=True)
    assert done.returncode == 0 and "matplotlib" not in done.stderr, done.stderr
