"""What README.md shows is what the calls do: its `symbackprop ...` command lines run as
written in a new shell with the virtual environment active, the output it prints for a
command is that command's output, and its Python snippet's comments are what the calls
return."""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import symbackprop as sb

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
BIN = Path(sys.executable).parent  # the virtual environment's bin, where pip put the command


def blocks(lang: str) -> list[str]:
    """The bodies of README's ```lang code blocks (``""``: fences with no language)."""
    found, body, inside = [], [], None
    for line in README.splitlines(keepends=True):
        if line.startswith("```"):
            if inside is None:
                inside, body = line[3:].strip(), []
            else:
                if inside == lang:
                    found.append("".join(body))
                inside = None
        elif inside is not None:
            body.append(line)
    return found


COMMANDS = [ln.split("  #")[0].strip() for b in blocks("sh") for ln in b.splitlines()
            if ln.startswith("symbackprop ")]


def new_shell_env() -> dict:
    """A new shell's environment: the venv's bin first on a system PATH, and this checkout
    importable first (the venv may hold an editable install of another checkout)."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = f"{BIN}{os.pathsep}/usr/local/bin{os.pathsep}/usr/bin{os.pathsep}/bin"
    env["PYTHONPATH"] = str(ROOT)
    return env


def test_readme_has_the_commands():
    assert len(COMMANDS) >= 6, COMMANDS
    assert {c.split()[1] for c in COMMANDS} >= {"derive", "codegen", "check", "render",
                                                 "train-script"}
    assert "source .venv/bin/activate" in README  # and says how to get the command


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_runs_as_written(command, tmp_path):
    if " -o " in command and command.split(" -o ")[1].split()[0].endswith(
            (".svg", ".png", ".pdf")) and shutil.which("dot") is None:
        pytest.skip("Graphviz's dot is not installed (make demo installs it)")
    r = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=new_shell_env(),
                       capture_output=True, text=True, check=False, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    if " -o " in command:
        out = tmp_path / shlex.split(command.split(" -o ")[1])[0]
        assert out.stat().st_size > 0


def test_readme_shown_derive_output_is_the_real_one(tmp_path):
    """Each block showing a derive command and its output (stdout and stderr, as a terminal
    shows them; a line "..." for lines left out) is what the command prints."""
    shown = [b for b in blocks("") if b.startswith("$ symbackprop derive")]
    assert shown
    for block in shown:
        command, expected = block.split("\n", 1)
        r = subprocess.run(["bash", "-c", command[2:]], cwd=tmp_path, env=new_shell_env(),
                           capture_output=True, text=True, check=False, timeout=120)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        got, at = r.stdout + r.stderr, 0
        for part in expected.split("...\n"):  # a line "..." stands for lines left out
            found = got.find(part, at)
            assert found >= 0 and (at or found == 0), f"{part!r} not in {got[at:]!r}"
            at = found + len(part)
        assert at == len(got)


def comment(block: str, code: str) -> str:
    """The comment after the line of ``block`` that contains ``code``."""
    line = next(ln for ln in block.splitlines() if code in ln)
    return line.split("# ", 1)[1].strip()


def test_readme_thirty_seconds_snippet():
    block = blocks("python")[0]
    out = io.StringIO()
    ns: dict = {}
    with contextlib.redirect_stdout(out):
        exec(compile(block, "README.md", "exec"), ns)  # noqa: S102 -- the README's own code
    # print(sb.derive(...).text())   # … So dc/dx = 10 · 1 · 2 = 20.
    assert comment(block, "print(sb.derive").lstrip("… ") in out.getvalue().splitlines()
    # loss, grads = fn.value_and_grad(...)      # 16.0, {'w': -24.0}
    assert comment(block, "fn.value_and_grad") == f"{ns['loss']!r}, {ns['grads']!r}"
    assert type(ns["loss"]) is float and type(ns["grads"]["w"]) is float


def test_readme_gradient_formulas_comment():
    block = next(b for b in blocks("python") if "grads.text()" in b)
    grads = sb.grad(sb.models.mlp([784, 256, 256, 256, 10]), of="L")
    lines = [ln.strip() for ln in grads.text().splitlines()]
    claimed = [c.strip() for c in comment(block, "grads.text()").rstrip(" …").split(",  ")]
    assert len(claimed) == 3
    for c in claimed:
        assert c in lines, c
    assert str(grads["W1"]) == "X.T*delta_z1"  # "a SymPy expression (delta form)"


def test_readme_numpy_excerpts_are_generated_code():
    """The plain excerpt (optimize=False) and the planned one (the default) are lines of
    the code they say they come from."""
    plain = next(b for b in blocks("python") if "# dL/dlogits via" in b)
    planned = next(b for b in blocks("python") if "out=dW2)" in b)
    g = sb.models.mlp([784, 256, 10])
    for excerpt, call, kw in ((plain, ", optimize=False)", {"optimize": False}),
                              (planned, ")`", {})):
        assert f"sb.numpy_source(sb.models.mlp([784, 256, 10]){call}" in README
        src = sb.numpy_source(g, **kw).splitlines()
        for line in excerpt.splitlines():
            assert line in src, line




def test_readme_structural_op_with_its_lowering():
    """The README's own structural op: declared, given its NumPy code, compiled and run
    (the registry and the table are restored after)."""
    from symbackprop.codegen import lowering
    from symbackprop.ops import registry

    block = next(b for b in blocks("python") if "cumsum_rows" in b)
    ops, table = dict(registry._OPS), dict(lowering.NUMPY)
    try:
        exec(compile(block, "README.md", "exec"), {"sb": sb})  # noqa: S102 -- the README's code
        g = sb.Graph()
        x = g.input("x", shape=(3, 2))
        y = g.output("y", sb.ops.builder("cumsum_rows")(x))
        g.output("L", sb.sum(y))
        out = sb.compile(g, wrt=[]).forward(x=np.arange(6.0).reshape(3, 2))["y"]
        np.testing.assert_array_equal(out, np.cumsum(np.arange(6.0).reshape(3, 2), axis=0))
    finally:
        registry._OPS.clear()
        registry._OPS.update(ops)
        lowering.NUMPY.clear()
        lowering.NUMPY.update(table)
