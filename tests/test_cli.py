"""Every kind of SPEC reaches every command: statements, .json, .py (graph or build()),
and mlp: shorthands."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import symbackprop as sb
from symbackprop.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def specs(tmp_path):
    py_build = tmp_path / "net_build.py"
    py_build.write_text("import symbackprop as sb\n\n\ndef build():\n"
                        "    return sb.parse('y = tanh(w*x) + b', params=['w', 'b'])\n")
    py_graph = tmp_path / "net_graph.py"
    py_graph.write_text("import symbackprop as sb\n\ngraph = sb.models.mlp([5, 4, 3])\n")
    js = tmp_path / "net.json"
    sb.models.mlp([5, 4, 3], activation="tanh").save(js)
    return {"statements": "L = (w*x - y)**2", "build": str(py_build), "graph": str(py_graph),
            "json": str(js), "mlp": "mlp:5-4-3"}


@pytest.mark.parametrize("kind", ["statements", "build", "graph", "json", "mlp"])
def test_check_and_codegen_take_every_spec(kind, specs, capsys, tmp_path):
    assert main(["check", specs[kind]]) == 0  # random inputs, scalar parameters included
    out, err = capsys.readouterr()
    assert "all ok" in out and "Traceback" not in err
    out = tmp_path / "model.py"
    assert main(["codegen", specs[kind], "-o", str(out)]) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert "def value_and_grad(" in out.read_text()


def test_py_spec_without_graph_is_an_error(tmp_path, capsys):
    bad = tmp_path / "empty.py"
    bad.write_text("x = 1\n")
    assert main(["codegen", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "".join(err)
    assert len(err) == 1 and "defines neither 'graph' nor 'build()'" in err[0]


@pytest.mark.parametrize("fmt, needle", [("latex", r"\frac"), ("markdown", "| dL/dw |")])
def test_derive_formats(fmt, needle, capsys):
    assert main(["derive", "L = (w*x - y)**2", "--wrt", "w", "--at", "w=2,x=3,y=10",
                 "--format", fmt]) == 0
    out, err = capsys.readouterr()
    assert needle in out and "24" in out and "Traceback" not in err


# -- the installed command ------------------------------------------------------------------

def test_entry_point_is_installed_and_runs(tmp_path):
    """pip puts `symbackprop` next to the venv's python (pyproject's [project.scripts])."""
    exe = Path(sys.executable).parent / "symbackprop"
    assert exe.exists(), f"{exe} is missing: install the package with pip install -e ."
    env = dict(os.environ, PYTHONPATH=str(ROOT))  # this checkout, whatever pip installed
    r = subprocess.run([str(exe), "--help"], capture_output=True, text=True, env=env,
                       cwd=tmp_path, check=False)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert r.stdout.startswith("usage: symbackprop") and "A compiler for backpropagation" in \
        r.stdout
    r = subprocess.run([str(exe), "derive", "L = (w*x - y)**2", "--wrt", "w", "--at", "nope"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: ParseError: --at 'nope'") and r.stderr.count("\n") == 1


def test_activating_the_venv_puts_the_command_on_the_path(tmp_path):
    """The README's way: `source .venv/bin/activate` in a new shell."""
    activate = Path(sys.prefix) / "bin" / "activate"
    if sys.prefix == sys.base_prefix or not activate.exists():
        pytest.skip("not running in a virtual environment (make test makes one)")
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    script = f'source "{activate}" && command -v symbackprop && symbackprop --help'
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env,
                       cwd=tmp_path, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[0] == str(Path(sys.prefix) / "bin" / "symbackprop")


def test_python_m_symbackprop_is_the_command():
    """``python -m symbackprop`` runs the CLI: its help, and a bad command's exit status 2."""
    run = subprocess.run([sys.executable, "-m", "symbackprop", "--help"], capture_output=True,
                         text=True, timeout=120, cwd=ROOT, check=False)
    assert run.returncode == 0 and run.stdout.startswith("usage: symbackprop"), run.stderr
    bad = subprocess.run([sys.executable, "-m", "symbackprop", "no-such-command"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)
    assert bad.returncode == 2 and "no-such-command" in bad.stderr


@pytest.mark.parametrize("argv", [["no-such-command"], ["codegen", "mlp:4-8-3", "--no-such-option"],
                                  ["train-script", "mlp:4-8-3", "--epochs"], []])
def test_usage_errors_are_one_line(argv, capsys):
    """A bad command, option or missing value: one line naming the fix, exit status 2."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert "error:" in err and "--help" in err
