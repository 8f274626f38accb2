"""Generated code checked as a user gets it: ruff-clean, and run in a fresh interpreter
that can import NumPy and nothing of ours.

``python -I -S`` skips site-packages (so symbackprop, installed there, cannot be found;
.pth files are not read either); the runner puts NumPy's own folder back on the path and
the test's folder first, asserts that symbackprop cannot be found, runs the test's code,
and asserts that nothing of symbackprop, SymPy or networkx was imported by it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

PRELUDE = """\
import importlib.util, sys
sys.path.append(sys.argv[1])
sys.path.insert(0, ".")
assert importlib.util.find_spec("symbackprop") is None, "symbackprop is importable"
"""
EPILOGUE = """
bad = [m for m in sys.modules if m.split(".")[0] in ("symbackprop", "sympy", "networkx")]
assert not bad, bad
"""


def _ruff() -> str:
    """The venv's ruff, or one on the PATH (the extra ``dev`` installs it: make test has it)."""
    ruff = shutil.which("ruff", path=os.path.dirname(sys.executable)) or shutil.which("ruff")
    assert ruff is not None, "ruff is not installed: pip install -e '.[dev]'"
    return ruff


def assert_ruff_clean(folder: Path, *paths: str) -> None:
    """ruff finds nothing in ``paths`` of ``folder``."""
    res = subprocess.run([_ruff(), "check", "--isolated", "--no-cache",
                          "--output-format=concise", *paths], cwd=folder, capture_output=True,
                         text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def assert_source_ruff_clean(src: str) -> None:
    """ruff finds nothing in the Python source ``src``."""
    res = subprocess.run([_ruff(), "check", "--isolated", "--no-cache",
                          "--output-format=concise", "--stdin-filename", "generated.py", "-"],
                         input=src, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def run_without_symbackprop(folder: Path, body: str,
                            timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``body`` (Python source, in ``folder``, which holds the generated modules) in a
    fresh interpreter without symbackprop; assert it succeeded and return the process."""
    (folder / "runner.py").write_text(PRELUDE + textwrap.dedent(body) + EPILOGUE)
    numpy_dir = os.path.dirname(os.path.dirname(np.__file__))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    res = subprocess.run([sys.executable, "-I", "-S", "runner.py", numpy_dir], cwd=folder,
                         env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def run_script_without_symbackprop(folder: Path, *argv: str,
                                   timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the generated ``train.py`` in ``folder`` with the command-line arguments ``argv``,
    as :func:`run_without_symbackprop` runs its body; assert it exited with 0."""
    return run_without_symbackprop(folder, f"""
        import runpy, sys
        sys.argv = ["train.py", *{list(argv)!r}]
        try:
            runpy.run_path("train.py", run_name="__main__")
        except SystemExit as e:
            assert e.code == 0, e.code
    """, timeout=timeout)


def run_with_numpy_only(folder: Path, script: Path, *argv: str,
                        timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``python script argv`` in ``folder`` in a fresh interpreter that finds NumPy and
    no other installed package (mpi4py, JAX, PyTorch, CuPy: a user's machine without
    them): ``-I -S``, with a folder linking NumPy's own entries of site-packages alone on
    the path. The process is returned, whatever its exit status."""
    site = Path(np.__file__).resolve().parent.parent
    only = folder / "numpy_only"
    only.mkdir(exist_ok=True)
    for entry in site.iterdir():
        numpy = entry.name == "numpy" or entry.name.startswith(("numpy.", "numpy-"))
        if numpy and not (only / entry.name).exists():
            (only / entry.name).symlink_to(entry)
    runner = ("import runpy, sys; sys.path.insert(0, sys.argv[1]); sys.argv = sys.argv[2:]; "
              "runpy.run_path(sys.argv[0], run_name='__main__')")
    return subprocess.run([sys.executable, "-I", "-S", "-c", runner, str(only), str(script),
                           *argv], cwd=folder, capture_output=True, text=True, timeout=timeout,
                          check=False)
