"""Step-by-step derivations (sb.derive) and the `symbackprop derive` command."""

import subprocess
import sys

import numpy as np
import pytest
import sympy as sp

import symbackprop as sb
from symbackprop import cli

CHAIN = "a = 2*x; b = a + 3; c = b**2"
SQUARED = "L = (w*x - y)**2"

CHAIN_TEXT = """\
Forward pass at x = 1:
  a = 2x = 2
  b = a + 3 = 5
  c = b² = 25
Backward pass (chain rule, from c back to x):
  dc/dc = 1
  dc/db = 2b = 10
  dc/da = dc/db · db/da = 10 · 1 = 10
  dc/dx = dc/da · da/dx = 10 · 2 = 20
So dc/dx = 10 · 1 · 2 = 20.
Finite-difference check (forward pass only):
  forward, h = 0.01: x = 1.01 gives c = 25.2004; (25.2004 − 25)/0.01 = 20.04
  central, h = 1e-06: (c(x + h) − c(x − h))/(2h) ≈ 20.000000
"""

SQUARED_TEXT = """\
Forward pass at w = 2, x = 3, y = 10:
  w·x = 6
  w·x − y = −4
  L = (w·x − y)² = 16
Backward pass (chain rule, from L back to w):
  dL/dL = 1
  dL/d(w·x − y) = 2(w·x − y) = −8
  dL/d(w·x) = dL/d(w·x − y) · d(w·x − y)/d(w·x) = −8 · 1 = −8
  dL/dw = dL/d(w·x) · d(w·x)/dw = −8 · x = −8 · 3 = −24
So dL/dw = −8 · 1 · 3 = −24.
Finite-difference check (forward pass only):
  forward, h = 0.01: w = 2.01 gives L = 15.7609; (15.7609 − 16)/0.01 = −23.91
  central, h = 1e-06: (L(w + h) − L(w − h))/(2h) ≈ −24.000000
"""


@pytest.fixture(scope="module")
def chain():
    return sb.derive(sb.parse(CHAIN), of="c", wrt="x", at={"x": 1})


@pytest.fixture(scope="module")
def squared():
    return sb.derive(sb.parse(SQUARED), wrt="w", at={"w": 2, "x": 3, "y": 10})


# -- the lessons' numbers ---------------------------------------------------------------
def test_chain_forward_values_are_exact(chain):
    assert {k: chain.values[k] for k in "xabc"} == {"x": 1, "a": 2, "b": 5, "c": 25}
    assert all(isinstance(chain.values[k], sp.Integer) for k in "xabc")


def test_chain_backward_steps(chain):
    steps = {s.node: s for s in chain.steps}
    assert [s.node for s in chain.steps] == ["c", "b", "a", "x"]
    (tb,) = steps["b"].terms
    assert (tb.consumer, tb.arg, tb.local, tb.local_value) == ("c", 0, 2 * sp.Symbol("b"), 10)
    (ta,) = steps["a"].terms
    assert (ta.local, ta.upstream_value, ta.product_value) == (1, 10, 10)
    (tx,) = steps["x"].terms
    assert (tx.local, tx.upstream_value, tx.product_value) == (2, 10, 20)
    assert chain.grads == {"c": 1, "b": 10, "a": 10, "x": 20}
    assert steps["x"].value == 1 and steps["x"].grad_value == 20
    assert steps["b"].formula == 2 * sp.Symbol("b") * sp.Symbol("delta_c")


def test_chain_text(chain):
    assert chain.text() + "\n" == CHAIN_TEXT
    assert str(chain) == chain.text()


def test_chain_finite_differences(chain):
    fd = chain.finite_difference(0.01)
    assert fd.f_plus == sp.Rational("25.2004") and fd.f_minus == 25
    assert fd.slope == sp.Rational("20.04")
    central = chain.finite_difference(1e-6, central=True)
    assert abs(float(central.slope) - 20) < 1e-9


def test_squared_error(squared):
    v = squared.values
    assert (v["mul_1"], v["sub_1"], v["L"]) == (6, -4, 16)
    assert (squared.grads["sub_1"], squared.grads["mul_1"], squared.grads["w"]) == (-8, -8, -24)
    labels = [s.label for s in squared.steps]
    assert labels == ["L", "w·x − y", "w·x", "w"]
    (tw,) = squared.steps[-1].terms
    assert (tw.local, tw.local_value, tw.upstream_value) == (sp.Symbol("x"), 3, -8)
    assert squared.text() + "\n" == SQUARED_TEXT


def test_fan_out_sums_the_paths():
    d = sb.derive(sb.parse("b = a + a"), wrt="a", at={"a": 3})
    step = d.steps[-1]
    assert [(t.consumer, t.arg, t.local) for t in step.terms] == [("b", 0, 1), ("b", 1, 1)]
    assert step.grad_value == 2
    assert "db/da = 1 + 1 = 2" in d.text()
    assert "b = a + a = 6" in d.text()  # as written, not 2a


def test_fan_out_through_a_product():
    d = sb.derive(sb.parse("b = a + a; c = b*b"), wrt="a", at={"a": 3})
    assert d.grads["b"] == 12 and d.grads["a"] == 24
    assert "dc/db = b + b = 6 + 6 = 12" in d.text()


def test_float_point_becomes_exact():
    d = sb.derive(sb.parse(CHAIN), wrt="x", at={"x": 1.0})
    assert d.values["c"] == 25 and isinstance(d.values["c"], sp.Integer)
    d = sb.derive(sb.parse(SQUARED), wrt="w", at={"w": 0.5, "x": 0.1, "y": 1})
    assert d.values["L"] == sp.Rational(361, 400)  # (0.05 - 1)**2 = 0.9025
    assert "L = (w·x − y)² = 0.9025" in d.text()


def test_tanh_chain_local_through_output():
    d = sb.derive(sb.parse("h = tanh(w*x); L = h**2"), wrt="w", at={"w": 0.5, "x": 2})
    step = next(s for s in d.steps if s.node == "mul_1")
    assert step.terms[0].local == 1 - sp.Symbol("h") ** 2
    assert "(1 − h²)" in d.text()
    exact = sp.diff(sp.tanh(sp.Symbol("w") * 2) ** 2, "w").subs("w", sp.Rational(1, 2))
    assert abs(float(d.grads["w"] - exact)) < 1e-12
    assert abs(float(d.finite_difference(1e-6, central=True).slope - exact)) < 1e-9


def test_sigmoid_and_relu_agree_with_generated_code():
    g = sb.parse("h = tanh(w*x + b); s = sigmoid(h*v); r = relu(s - 0.1); L = (r - y)**2")
    at = {"w": 0.5, "x": 2, "b": 0.1, "v": -1.5, "y": 1}
    d = sb.derive(g, at=at)
    _, grads = sb.compile(g).value_and_grad(**{k: float(v) for k, v in at.items()})
    for k, v in grads.items():
        assert abs(float(d.grads[k]) - float(v)) < 1e-12
    assert "s·(1 − s)" in d.text()  # σ' = s(1 − s)
    assert "1[r > 0]" in d.text()


def test_without_a_point_the_steps_are_symbolic():
    d = sb.derive(sb.parse(SQUARED), wrt="w")
    assert d.values == {} and d.grads == {}
    assert "dL/dw = dL/d(w·x) · d(w·x)/dw = dL/d(w·x) · x" in d.text()
    assert "Finite-difference" not in d.text()
    with pytest.raises(sb.GradError, match="point"):
        d.finite_difference()


# -- LaTeX and Markdown ----------------------------------------------------------------------
def test_latex(chain, squared):
    tex = chain.latex()
    assert tex.startswith("\\begin{align*}") and tex.endswith("\\end{align*}")
    assert r"\frac{dc}{db} &= 2 b = 10" in tex
    assert r"\text{So } \frac{dc}{dx} &= 10 \cdot 1 \cdot 2 = 20" in tex
    assert r"\frac{25.2004 - 25}{0.01} = 20.04" in tex
    assert r"&\approx 20.000000" in tex
    assert r"\frac{dL}{d\left(w x - y\right)} &= 2 \left(w x - y\right) = -8" in squared.latex()
    assert chain._repr_latex_().startswith("$$\\begin{aligned}")


def test_markdown(chain, squared):
    md = chain.markdown()
    assert "| c | b² | 25 |" in md
    assert "| dc/db | 2b | 10 |" in md
    assert "| dc/dx | dc/da · da/dx = 10 · 2 | 20 |" in md
    assert "So dc/dx = 10 · 1 · 2 = 20." in md
    assert "(25.2004 − 25)/0.01 = 20.04" in md
    assert "| dL/dw | dL/d(w·x) · d(w·x)/dw = −8 · x = −8 · 3 | −24 |" in squared.markdown()
    assert chain._repr_markdown_() == md


# -- tensor graphs ---------------------------------------------------------------------------
def test_mlp_derivation_without_point():
    d = sb.derive(sb.models.mlp([784, 256, 256, 256, 10]))
    text = d.text()
    assert "dL/dW₁ = Xᵀ δ_z1" in text
    assert "dL/dz₁ = δ_h1 ∘ 1[h₁ > 0]" in text
    assert all(t.vjp for s in d.steps for t in s.terms)
    d.latex(), d.markdown()


def test_mlp_derivation_at_a_point_matches_generated_code():
    g = sb.models.mlp([4, 3, 2])
    at = sb.testing.random_inputs(g, {"N": 5})
    d = sb.derive(g, at=at)
    loss, grads = sb.compile(g).value_and_grad(**at)
    assert np.isclose(float(d.values["L"]), float(loss))
    for k, v in grads.items():
        np.testing.assert_allclose(d.grads[k], v, atol=1e-12)
    assert "dL/dW₁ = Xᵀ δ_z1 = [4×3, ‖·‖ = " in d.text()
    assert "[length 3" in d.text()
    d.latex(), d.markdown()


# -- errors ------------------------------------------------------------------------------------
def test_missing_value_names_the_input():
    with pytest.raises(sb.GradError, match="no value for 'y'"):
        sb.derive(sb.parse(SQUARED), wrt="w", at={"w": 2, "x": 3})


def test_unknown_point_name():
    with pytest.raises(sb.GradError, match="'ww'.*Did you mean 'w'"):
        sb.derive(sb.parse(SQUARED), wrt="w", at={"ww": 2, "x": 3, "y": 1})


def test_unknown_wrt():
    with pytest.raises(sb.GradError, match="wrt 'q' is not in the graph"):
        sb.derive(sb.parse(SQUARED), wrt="q", at={"w": 2, "x": 3, "y": 1})


# -- command line ------------------------------------------------------------------------------
def test_cli_chain(capsys):
    assert cli.main(["derive", CHAIN, "--wrt", "x", "--at", "x=1"]) == 0
    assert capsys.readouterr().out == CHAIN_TEXT


def test_cli_squared(capsys):
    assert cli.main(["derive", SQUARED, "--wrt", "w", "--at", "w=2,x=3,y=10"]) == 0
    out = capsys.readouterr().out
    assert out == SQUARED_TEXT
    assert "L = (w·x − y)² = 16" in out and "dL/dw = " in out and "= −24" in out


@pytest.mark.parametrize("fmt, needle", [
    ("latex", r"\frac{dc}{dx} &= \frac{dc}{da} \cdot \frac{da}{dx} = 10 \cdot 2 = 20"),
    ("markdown", "| dc/db | 2b | 10 |"),
])
def test_cli_formats(capsys, fmt, needle):
    assert cli.main(["derive", CHAIN, "--wrt", "x", "--at", "x=1", "--format", fmt]) == 0
    assert needle in capsys.readouterr().out


def test_cli_errors_are_one_line(capsys):
    assert cli.main(["derive", SQUARED, "--wrt", "q", "--at", "w=2,x=3,y=10"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: GradError: wrt 'q' is not in the graph") and err.count("\n") == 1
    assert cli.main(["derive", SQUARED, "--wrt", "w", "--at", "w=2,x=3"]) == 2
    assert "no value for 'y'" in capsys.readouterr().err


def test_cli_as_a_program():
    out = subprocess.run([sys.executable, "-m", "symbackprop.cli", "derive", SQUARED,
                          "--wrt", "w", "--at", "w=2,x=3,y=10"],
                         capture_output=True, text=True, encoding="utf-8", check=True).stdout
    assert out == SQUARED_TEXT


def _tensor_graph(kind):
    g = sb.Graph()
    X = g.input("X", shape=("N", 4))
    W, b = g.param("W", shape=(4, 3)), g.param("b", shape=(3,))
    z = g.name(X @ W + b, "z")
    out = {"softmax": lambda: sb.mean(sb.softmax(z) * z),
           "layer_norm": lambda: sb.mean(sb.layer_norm(z) ** 2 * z),
           "mean0": lambda: sb.sum(sb.mean(sb.tanh(z), axis=0) * b),
           "transpose": lambda: sb.sum(z.T @ z)}[kind]()
    g.output("L", out)
    return g


@pytest.mark.parametrize("kind", ["softmax", "layer_norm", "mean0", "transpose"])
def test_tensor_ops_derive_and_print(kind):
    g = _tensor_graph(kind)
    at = sb.testing.random_inputs(g, {"N": 3})
    d = sb.derive(g, at=at)
    _, grads = sb.compile(g).value_and_grad(**at)
    for k, v in grads.items():
        np.testing.assert_allclose(d.grads[k], v, atol=1e-12)
    assert "dL/dW = Xᵀ δ_z" in d.text()
    d.latex(), d.markdown(), str(d.gradients)
