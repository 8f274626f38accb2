"""The selecting ops beyond the op harness (tests/test_ops_grad.py): the rules at ties and
bounds against hand-derived values, logsumexp and std at their extremes, masks from
comparisons, max/min in statements, and bad input (one line from the CLI, exit 2)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import symbackprop as sb


def grad_of(build, x, dtype="float64", **inputs):
    """d(build(g, x))/dx at ``x``, with ``build`` returning the scalar loss node."""
    g = sb.Graph()
    xn = g.param("x", shape=np.shape(x))
    g.output("L", build(g, xn))
    fn = sb.compile(g, of="L", wrt=["x"], dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no 0/0, no overflow, even where it is discarded
        loss, grads = fn.value_and_grad(x=np.asarray(x, dtype=float), **inputs)
    return loss, grads["x"]


# -- the rules at ties and bounds, against values worked by hand --------------------------------
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_max_and_min_share_the_gradient_equally_among_ties(dtype):
    # max of [1, 3, 3] is 3, reached twice: each gets half; of [5, 3, 3] the first gets all
    x = np.array([[1.0, 3.0, 3.0], [5.0, 3.0, 3.0]])
    _, d = grad_of(lambda g, x: sb.sum(sb.max(x, axis=1) * g.const(np.array([1.0, 2.0]))),
                   x, dtype)
    np.testing.assert_array_equal(d, [[0, 0.5, 0.5], [2, 0, 0]])
    _, d = grad_of(lambda g, x: sb.min(x), np.array([2.0, -1.0, 4.0, -1.0, -1.0]), dtype)
    np.testing.assert_array_equal(d, (np.array([0, 1, 0, 1, 1]) / 3).astype(dtype))
    assert d.dtype == np.dtype(dtype)
    # all entries equal, over every axis with keepdims: a quarter each
    loss, d = grad_of(lambda g, x: sb.sum(sb.max(x, axis=None, keepdims=True)), np.ones((2, 2)))
    assert float(loss) == 1.0
    np.testing.assert_array_equal(d, np.full((2, 2), 0.25))


def test_maximum_and_minimum_split_a_tie_in_half():
    # d/da max(a, b) = 1[a > b] + 1/2 1[a = b]; entries: a > b, a = b, a < b
    b = np.array([0.0, 2.0, 5.0])
    for op, want in ((sb.maximum, [1.0, 0.5, 0.0]), (sb.minimum, [0.0, 0.5, 1.0])):
        _, d = grad_of(lambda g, x, op=op: sb.sum(op(x, g.input("b", shape=(3,)))),
                       [1.0, 2.0, 3.0], b=b)
        np.testing.assert_array_equal(d, want)


def test_clip_passes_the_gradient_inside_and_at_the_bounds():
    x = [-2.0, -1.0, 0.0, 1.0, 2.0]
    loss, d = grad_of(lambda g, x: sb.sum(sb.clip(x, lo=-1, hi=1) * g.const(3.0)), x)
    assert float(loss) == 0.0
    np.testing.assert_array_equal(d, [0, 3, 3, 3, 0])  # 1 for lo <= x <= hi, as PyTorch
    _, d = grad_of(lambda g, x: sb.sum(sb.clip(x, lo=0.5)), x)
    np.testing.assert_array_equal(d, [0, 0, 0, 1, 1])


def test_where_routes_the_gradient_by_the_condition():
    # L = sum(where(x > 0, 3x, x**2)): 3 where x > 0, 2x elsewhere
    x = np.array([-2.0, 0.0, 0.5, 4.0])
    loss, d = grad_of(lambda g, x: sb.sum(sb.where(x > 0, 3 * x, x * x)), x)
    assert float(loss) == 4 + 0 + 1.5 + 12
    np.testing.assert_array_equal(d, [-4.0, 0.0, 3.0, 3.0])
    # a condition given as an input of 0.0/1.0, broadcast against a scalar branch
    g = sb.Graph()
    c, a = g.input("c", shape=(3,)), g.param("a", shape=(3,))
    bb = g.param("b")
    g.output("L", sb.sum(sb.where(c, a, bb) * g.const(np.array([1.0, 2.0, 3.0]))))
    _, grads = sb.compile(g).value_and_grad(c=np.array([1.0, 0.0, 0.0]), a=np.zeros(3), b=0.0)
    np.testing.assert_array_equal(grads["a"], [1.0, 0.0, 0.0])
    assert float(grads["b"]) == 5.0


def test_comparisons_are_float_masks_with_no_gradient():
    g = sb.Graph()
    x, y = g.param("x", shape=(4,)), g.input("y", shape=(4,))
    masks = {"gt": x > y, "lt": x < y, "ge": x >= y, "le": x <= y, "r": 0 < x}
    assert [m.op for m in masks.values()] == ["greater", "less", "greater_equal", "less_equal",
                                              "greater"]
    masks = {k: g.output(k, m) for k, m in masks.items()}
    g.output("L", sb.sum(masks["gt"] * x))  # d/dx (1[x > y] x) = 1[x > y]
    fn = sb.compile(g)
    xv, yv = np.array([1.0, 2.0, 3.0, -1.0]), np.array([2.0, 2.0, 1.0, 0.0])
    out = fn.forward(x=xv, y=yv)
    for k, want in (("gt", xv > yv), ("lt", xv < yv), ("ge", xv >= yv), ("le", xv <= yv),
                    ("r", xv > 0)):
        assert out[k].dtype == np.float64
        np.testing.assert_array_equal(out[k], want.astype(float))
    _, grads = fn.value_and_grad(x=xv, y=yv)
    np.testing.assert_array_equal(grads["x"], [0.0, 0.0, 1.0, 0.0])
    # == stays identity of nodes: nodes are dict keys and list members
    same = g["x"]
    assert (x == same) is True and (x == y) is False and {x: 1}[same] == 1
    assert sb.Graph().input("x") != x


# -- logsumexp and std at their extremes -----------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_logsumexp_is_finite_at_a_thousand(dtype):
    x = np.array([[1000.0, 1001.0, -1000.0], [-1000.0, -1000.0, -1002.0]])
    g = sb.Graph()
    xn = g.param("x", shape=(2, 3))
    out = g.output("lse", sb.logsumexp(xn, axis=1))
    g.output("L", sb.sum(out * g.const(np.array([1.0, 2.0]))))
    fn = sb.compile(g, of="L", dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lse = fn.forward(x=x)["lse"]
        _, grads = fn.value_and_grad(x=x)
    # by hand: 1001 + log(1 + e^-1 + e^-2001), -1000 + log(2 + e^-2)
    want = [1001 + np.log1p(np.exp(-1.0)), -1000 + np.log(2 + np.exp(-2.0))]
    tol = 1e-12 if dtype == "float64" else 1e-4
    np.testing.assert_allclose(lse, want, rtol=tol)
    p0 = np.array([np.exp(-1.0), 1.0, 0.0]) / (1 + np.exp(-1.0))
    p1 = 2 * np.array([1.0, 1.0, np.exp(-2.0)]) / (2 + np.exp(-2.0))
    np.testing.assert_allclose(grads["x"], [p0, p1], rtol=tol, atol=tol)
    assert grads["x"].dtype == np.dtype(dtype)


def test_logsumexp_keepdims_and_all_minus_infinity():
    g = sb.Graph()
    xn = g.input("x", shape=(2, 2))
    g.output("lse", sb.logsumexp(xn, axis=0, keepdims=True))
    g.output("L", sb.sum(xn))
    with np.errstate(divide="ignore"):  # log(0) = -inf, as NumPy warns
        lse = sb.compile(g, wrt=[]).forward(x=np.array([[-np.inf, 0.0], [-np.inf, 0.0]]))["lse"]
    np.testing.assert_array_equal(lse, [[-np.inf, np.log(2.0)]])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_std_gradient_is_zero_where_the_deviation_is_zero(dtype):
    # row 0 constant (std 0: gradient 0, no NaN); row 1 by hand: (x - mean) / (n std)
    x = np.array([[2.0, 2.0, 2.0, 2.0], [1.0, 3.0, 1.0, 3.0]])
    _, d = grad_of(lambda g, x: sb.sum(sb.std(x, axis=1)), x, dtype)
    np.testing.assert_array_equal(d[0], [0, 0, 0, 0])
    np.testing.assert_allclose(d[1], [-0.25, 0.25, -0.25, 0.25], rtol=1e-6)
    _, d = grad_of(lambda g, x: sb.sum(sb.var(x, axis=1)), x, dtype)
    np.testing.assert_allclose(d, [[0, 0, 0, 0], [-0.5, 0.5, -0.5, 0.5]], rtol=1e-6)


def test_var_and_std_are_the_population_ones():
    g = sb.Graph()
    xn = g.input("x", shape=(5,))
    g.output("v", sb.var(xn))
    g.output("s", sb.std(xn))
    g.output("L", sb.sum(xn))
    out = sb.compile(g, wrt=[]).forward(x=np.arange(5.0))
    assert float(out["v"]) == 2.0 and float(out["s"]) == pytest.approx(np.sqrt(2.0), rel=1e-15)


# -- statements -----------------------------------------------------------------------------------
def test_max_and_min_in_statements():
    g = sb.parse("h = max(w*x, 0); m = min(h, y); r = max(h, axis=None); L = m + r",
                 params=["w"])
    assert [g[n].op for n in ("h", "m", "r")] == ["maximum", "minimum", "max"]
    fn = sb.compile(g, of="L", wrt=["w"])
    L, grads = fn.value_and_grad(w=2.0, x=1.5, y=10.0)
    assert float(L) == 6.0 and float(grads["w"]) == 3.0  # d/dw 2 max(wx, 0) = 2x
    L, grads = fn.value_and_grad(w=-2.0, x=1.5, y=10.0)
    assert float(L) == 0.0 and float(grads["w"]) == 0.0
    g = sb.parse("c = clip(x, lo=0, hi=1); s = where(c, x, 2*x)")
    assert g["c"].op == "clip" and g["s"].op == "where"


def test_statements_are_parsed_never_evaluated():
    with pytest.raises(sb.ParseError):
        sb.parse("y = max(x, __import__('os'))")


# -- display ----------------------------------------------------------------------------------------
def test_formulas_show_masks_and_reductions():
    g = sb.Graph()
    x, y = g.param("x", shape=(3,)), g.input("y", shape=(3,))
    g.output("L", sb.max(x) + sb.sum(sb.where(x > y, x, y)) + sb.logsumexp(x))
    text = str(sb.grad(g))
    assert "1[x ≥ max(x)]" in text or "1[x ≥ " in text
    assert "logsumexp(x)" in text and "where(" in text
    dot = sb.to_dot(g)
    assert "1[x &gt; y]" in dot and "max(x)" in dot


# -- bad input ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("build", "needles"), [
    (lambda g: sb.max(g.input("x", shape=(2, 3)), axis=2),
     ["node 'max_1' = max(x)", "axis 2 is out of range for 2 dimension(s)"]),
    (lambda g: sb.logsumexp(g.input("x", shape=(2, 3)), axis=(0, -3)),
     ["node 'logsumexp_1'", "out of range"]),
    (lambda g: sb.clip(g.input("x", shape=(3,)), lo=2, hi=1),
     ["node 'clip_1' = clip(x)", "lo=2 is greater than hi=1", "Pass lo <= hi"]),
    (lambda g: sb.clip(g.input("x", shape=(3,))), ["node 'clip_1'", "clip needs a bound"]),
    (lambda g: sb.where(g.input("c", shape=(4,)), g.input("a", shape=(3,)), 0.0),
     ["node 'where_1' = where(c, a, const_1)", "c is (4,)", "a is (3,)",
      "sizes 3 and 4, which do not broadcast"]),
    (lambda g: sb.maximum(g.input("a", shape=(2,)), g.input("b", shape=(3,))),
     ["node 'maximum_1'", "do not broadcast"]),
])
def test_bad_input_raises_a_shape_error_naming_the_node(build, needles):
    with pytest.raises(sb.ShapeError) as e:
        build(sb.Graph())
    for s in needles:
        assert s in str(e.value), str(e.value)


BAD_WHERE = """
import symbackprop as sb

def build():
    g = sb.Graph()
    c, a = g.input("c", shape=(4,)), g.input("a", shape=(3,))
    return g.output("L", sb.sum(sb.where(c, a, 0.0)))
"""


@pytest.mark.parametrize(("spec", "needle"), [
    ("y = max(x, axis=1)", "ShapeError: node 'max_1' = max(x)"),
    ("y = clip(x, lo=1, hi=0)", "lo=1 is greater than hi=0"),
    ("y = logsumexp(x, axis=(0, 1))", "out of range"),
    ("where.py", "ShapeError: node 'where_1' = where(c, a, const_1)"),
])
def test_cli_prints_one_line_and_exits_2(spec, needle, tmp_path):
    if spec.endswith(".py"):
        (tmp_path / spec).write_text(textwrap.dedent(BAD_WHERE))
        spec = str(tmp_path / spec)
    r = subprocess.run([sys.executable, "-m", "symbackprop.cli", "codegen", spec],
                       capture_output=True, text=True, check=False, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("error: ") and needle in r.stderr, r.stderr


def test_logsumexp_helper_against_mpmath():
    """The generated module's helper, run directly: axes as int, tuple and None, float32 in,
    float32 out, against mpmath at 30 digits."""
    import mpmath

    from symbackprop.codegen.runtime.numpy_ops import _logsumexp

    rng = np.random.default_rng(7)
    x = rng.uniform(-900, 900, size=(3, 4, 2))

    def exact(v):
        with mpmath.workdps(30):
            return float(mpmath.log(mpmath.fsum(mpmath.exp(mpmath.mpf(float(t))) for t in v)))

    np.testing.assert_allclose(_logsumexp(x, axis=1),
                               np.apply_along_axis(exact, 1, x), rtol=1e-14)
    got = _logsumexp(x, axis=(0, 2), keepdims=True)
    assert got.shape == (1, 4, 1)
    np.testing.assert_allclose(got.ravel(), [exact(x[:, j, :].ravel()) for j in range(4)],
                               rtol=1e-14)
    assert float(_logsumexp(x)) == pytest.approx(exact(x.ravel()), rel=1e-14)
    x32 = x.astype(np.float32)
    assert _logsumexp(x32, axis=-1).dtype == np.float32


def test_max_of_two_nodes_points_to_maximum():
    g = sb.Graph()
    a, b = g.input("a", shape=(3,)), g.input("b", shape=(3,))
    with pytest.raises(sb.ArityError, match="takes 1 argument.*For 2 arguments use sb.maximum"):
        sb.max(a, b)
    with pytest.raises(sb.ArityError, match="For 2 arguments use sb.minimum"):
        sb.min(a, b)
    with pytest.raises(sb.ArityError) as e:
        sb.sum(a, b)
    assert "For 2" not in str(e.value)  # no op of sum's family takes two
