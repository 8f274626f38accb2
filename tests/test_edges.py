"""At the edge of a domain: checks that fail honestly, derivations that show ∞ and
"undefined" and say why, and never a traceback (issue 11, points 2 and 3).

Expected values are worked by hand: log(0) = −∞ (the limit from the right, the only
side where log is real) and log'(0) = 1/0⁺ = +∞; 1/x at 0 is ±∞ (+∞ from the right,
−∞ from the left) and its derivative −1/x² is −∞ from both sides; √0 = 0 and
√′(0) = 1/(2√0⁺) = +∞; √−1 and (−4)^0.5 are not real.
"""

import math
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import sympy as sp

import symbackprop as sb
from symbackprop.cli import main
from symbackprop.edges import explain, origin, real_value
from symbackprop.ops.elementwise import X

ROOT = pathlib.Path(__file__).resolve().parent.parent  # where `-m symbackprop.cli` finds this copy
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz 'dot' missing")

# statement, point, the value of L, dL/dx, and why the first value that is not finite
# starts (all worked by hand, see the module notes)
EDGES = {
    "log at 0": ("L = log(x)", "x=0", -sp.oo, sp.oo, "log's argument is 0"),
    "1/x at 0": ("L = 1/x", "x=0", sp.zoo, -sp.oo, "div's argument x is 0"),
    "sqrt at 0": ("L = sqrt(x)", "x=0", 0, sp.oo, "sqrt's argument is 0"),
    "sqrt at -1": ("L = sqrt(x)", "x=-1", sp.nan, sp.nan, "sqrt's argument is −1"),
    "x**0.5 at -4": ("L = x**0.5", "x=-4", sp.nan, sp.nan, "pow's argument x is −4"),
}
SHOWN = {-sp.oo: "−∞", sp.oo: "∞", sp.zoo: "±∞", sp.nan: "undefined"}


def _point(text: str) -> dict:
    name, value = text.split("=")
    return {name: float(value)}


def _same(a, b) -> bool:
    return (a is sp.nan and b is sp.nan) or a == b


def _run(argv, capsys) -> tuple[int, str, str]:
    """``main(argv)`` in this process: an exception escaping it fails the test."""
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


# -- point 2: honest checks --------------------------------------------------------------------
@pytest.mark.parametrize("spec, at, lines", [
    ("L = log(x)", "x=0", ["loss L is −∞ at x = 0: log's argument is 0 (node 'L')",
                           "dL/dx is ∞ at x = 0: log's argument is 0 (node 'L')"]),
    ("L = sqrt(x)", "x=-1", ["loss L is undefined at x = −1: sqrt's argument is −1 (node 'L')"]),
    ("L = sqrt(x)", "x=0", ["dL/dx is ∞ at x = 0: sqrt's argument is 0 (node 'L')"]),
    ("L = 1/x", "x=0", ["div's argument x is 0 (node 'L')"]),
])
def test_check_cli_fails_on_values_that_are_not_finite(spec, at, lines, capsys):
    code, out, _ = _run(["check", spec, "--at", at], capsys)
    assert code == 1  # the mismatch exit
    assert "all ok" not in out and "NOT FINITE" in out
    assert out.strip().splitlines()[-1].startswith("not finite")
    for line in lines:
        assert line in out


def test_check_fails_on_a_non_finite_loss_naming_the_node():
    report = sb.check_grad(sb.parse("a = x - 1; b = log(a); L = 2*b + w"), at={"x": 1, "w": 2})
    assert not report.ok and math.isnan(report.errors["x"])
    assert report.loss == -math.inf
    assert report.not_finite[0] == ("loss L is −∞ at x = 1, w = 2: log's argument is 0 "
                                    "(node 'b')")
    assert "dL/dx is ∞" in report.not_finite[1] and "(node 'b')" in report.not_finite[1]
    assert "not finite" in str(report)


def test_check_fails_on_a_non_finite_gradient_of_a_finite_loss():
    report = sb.check_grad(sb.parse("L = sqrt(x) + w"), at={"x": 0, "w": 1})
    assert report.loss == 1.0 and report.errors["w"] < 1e-8  # w itself is fine
    assert not report.ok and math.isnan(report.errors["x"])
    assert report.not_finite == [("dL/dx is ∞ at x = 0, w = 1: sqrt's argument is 0 "
                                  "(node 'sqrt_1')")]


def test_check_fails_on_a_non_finite_finite_difference():
    # log(1e-7) and its gradient 1e7 are finite, but x - eps = -9e-7 leaves log's domain
    report = sb.check_grad(sb.parse("L = log(x)"), at={"x": 1e-7})
    assert math.isfinite(report.loss) and not report.ok
    (line,) = report.not_finite
    assert line.startswith("the finite-difference estimate of dL/dx is undefined at x = 1e−7")
    assert "log's argument is −9e−7 (node 'L')" in line and "smaller eps" in line
    smaller = sb.check_grad(sb.parse("L = log(x)"), at={"x": 1e-7}, eps=1e-9)
    assert smaller.not_finite == [] and smaller.errors["x"] < 1e-3  # as the message advises


def test_check_names_an_overflow():
    report = sb.check_grad(sb.parse("h = exp(w*x); L = h"), at={"x": 800, "w": 1})
    assert not report.ok
    assert ("exp's argument is 800: its value, 2.73e+347, overflows float64 (node 'h')"
            in report.not_finite[0])


def test_check_names_the_entry_of_a_tensor():
    g = sb.Graph("t")
    Xn, W = g.input("X", ("N", 3)), g.param("W", (3, 2))
    g.output("L", sb.sum(g.apply("log", [Xn @ W], name="h")))
    W0 = np.ones((3, 2))
    W0[:, 1] = [1, -1, 0]  # column 1 of X @ W is 0 for a row of ones
    report = sb.check_grad(g, at={"X": np.ones((2, 3)), "W": W0})
    assert not report.ok
    assert "log's argument is 0 at entry [0, 1] (node 'h')" in report.not_finite[0]
    assert report.not_finite[1].startswith("dL/dW[0, 1] is ∞")
    given = sb.testing.random_inputs(g)
    given["X"][1, 2] = np.nan
    report = sb.check_grad(g, at={"X": given["X"]})
    assert "the value given for X has NaN in it (node 'X')" in report.not_finite[0]


def test_finite_checks_still_pass(capsys):
    code, out, _ = _run(["check", "L = (w*x - y)**2", "--at", "w=2,x=3,y=10"], capsys)
    assert code == 0 and "all ok" in out
    assert sb.check_grad(sb.parse("L = log(x)"), at={"x": 0.5}).ok


# -- point 3: derivations at the edge of a domain --------------------------------------------
@pytest.mark.parametrize("case", EDGES)
def test_derive_api_at_the_edge(case):
    spec, at, value, grad, why = EDGES[case]
    d = sb.derive(sb.parse(spec), at=_point(at))
    assert _same(d.values["L"], sp.sympify(value)) and _same(d.grads["x"], grad)
    text = d.text()
    assert f"So dL/dx = {SHOWN[grad]}." in text
    shown = SHOWN.get(sp.sympify(value), str(value))
    assert f"= {shown}\n" in text  # the forward line of L
    assert d.warnings and all(f"(node 'L': {why})" in w for w in d.warnings)
    assert d.warnings[-1].startswith(f"dL/dx is {SHOWN[grad]} at x = ")
    if value in SHOWN:
        assert d.warnings[0].startswith(f"L is {SHOWN[value]} at x = ")
    assert "\\infty" in d.latex() or "\\text{undefined}" in d.latex()
    assert SHOWN[grad] in d.markdown()
    assert SHOWN[grad] in sb.render(d).source


@pytest.mark.parametrize("case", EDGES)
def test_derive_cli_at_the_edge(case, capsys):
    spec, at, _, grad, why = EDGES[case]
    code, out, err = _run(["derive", spec, "--at", at], capsys)
    assert code == 0
    assert f"So dL/dx = {SHOWN[grad]}." in out
    warnings = err.strip().splitlines()
    assert warnings and all(w.startswith("warning: ") and f"(node 'L': {why})" in w
                            for w in warnings)
    for fmt in ("latex", "markdown"):
        code, out, err = _run(["derive", spec, "--at", at, "--format", fmt], capsys)
        assert code == 0 and "warning: " in err


@pytest.mark.parametrize("case", EDGES)
def test_render_derivation_cli_at_the_edge(case, capsys):
    spec, at, _, grad, why = EDGES[case]
    code, out, err = _run(["render", spec, "--kind", "derivation", "--at", at], capsys)
    assert code == 0 and out.startswith("digraph")
    assert f"∂L/∂x = {SHOWN[grad]} at x" in out  # the title
    assert f"warning: dL/dx is {SHOWN[grad]}" in out  # the warnings under it
    assert f"(node 'L': {why})" in err and err.startswith("warning: ")


@needs_dot
@pytest.mark.parametrize("case", ["log at 0", "x**0.5 at -4"])
def test_render_derivation_cli_writes_the_file(case, capsys, tmp_path):
    spec, at, *_ = EDGES[case]
    out = tmp_path / "edge.svg"
    code, _, err = _run(["render", spec, "--kind", "derivation", "--at", at, "-o", str(out)],
                        capsys)
    assert code == 0 and "<svg" in out.read_text() and "warning: " in err


def test_render_api_at_the_edge():
    g = sb.parse("L = log(x)")
    source = sb.render(g, "derivation", at={"x": 0}).source
    assert "log(x) = <FONT COLOR=\"#1d4ed8\"><B>−∞</B>" in source
    assert "warning: L is −∞ at x = 0" in source
    d = sb.derive(g, at={"x": 0})
    assert "−∞" in sb.render(d, grads=True).source  # gradients colour the graph: ∞ is red


def test_an_infinite_point_is_one_line_and_exit_2(capsys):
    code, out, err = _run(["derive", "L = log(x)", "--at", "x=inf"], capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "'x'" in err and "not a finite number" in err


@pytest.mark.parametrize("argv", [
    ["check", "L = log(x)", "--at", "x=0"],
    ["derive", "L = sqrt(x)", "--at", "x=-1"],
    ["render", "L = 1/x", "--kind", "derivation", "--at", "x=0"],
])
def test_the_command_prints_no_traceback(argv):
    """The real entry point, in a new process."""
    run = subprocess.run([sys.executable, "-m", "symbackprop.cli", *argv], capture_output=True,
                         text=True, timeout=120, check=False, cwd=ROOT)
    assert "Traceback" not in run.stdout + run.stderr
    assert run.returncode == (1 if argv[0] == "check" else 0)
    assert run.stderr.startswith("warning: ") or argv[0] == "check"


def test_tensor_derivation_warns_naming_the_node():
    g = sb.models.mlp([3, 4, 2])
    point = sb.testing.random_inputs(g, {"N": 3})
    point["X"][1, 2] = np.inf
    d = sb.derive(g, at=point)
    assert d.warnings[0] == ("X is not finite (∞) at the point (node 'X': the value given "
                             "for X has ∞ in it)")
    assert any(w.startswith("dL/dW₁ is not finite") for w in d.warnings)
    assert "‖·‖ = undefined" in d.text()
    point["X"][1, 2] = 1e300  # finite: the norms shown must not overflow to ∞
    assert "∞" not in sb.derive(g, at=point).text()


# -- the pieces -------------------------------------------------------------------------------
def test_real_value_takes_the_side_where_the_op_is_real():
    x = X[0]
    zero = [sp.Integer(0)]
    assert real_value(1 / x, X[:1], zero, domain=sp.log(x)) == (sp.oo, 0)  # log'(0+)
    assert real_value(1 / x, X[:1], zero) == (sp.zoo, 0)  # two sides, two signs
    assert real_value(-1 / x**2, X[:1], zero) == (-sp.oo, 0)
    assert real_value(x * sp.log(x), X[:1], zero)[0] is sp.nan  # 0·log 0: not defined at 0
    assert real_value(sp.exp(x), X[:1], zero) == (1, None)


def test_origin_and_explain_on_numpy_values():
    g = sb.parse("a = x - 1; b = sqrt(a); L = b + 2")
    with np.errstate(invalid="ignore"):
        values = {"x": np.array(0.5), "a": np.array(-0.5), "b": np.sqrt(np.array(-0.5))}
    values["L"] = values["b"] + 2
    values["const_1"], values["const_2"] = np.array(1.0), np.array(2.0)
    assert origin(g, values) == "b"
    assert explain(g, "b", values) == "sqrt's argument is −0.5"
