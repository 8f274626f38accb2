"""Convolution and pooling beyond the op harness (issue 13): a tiny CNN against central
differences, its generated code (ruff, a fresh interpreter), a training step, ties in
max pooling, PyTorch's conventions, initialisation fans, display and bad input.

The harness (tests/test_ops_grad.py, cases in tests/conv_cases.py) checks each op alone.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import scipy.signal
from central import assert_central_differences
from conv_cases import conv_grad_input_ref, conv_ref, max_pool_grad_ref, pool_ref
from standalone import assert_ruff_clean, run_without_symbackprop

import symbackprop as sb
from symbackprop.codegen.init import plan_init
from symbackprop.codegen.runtime import numpy_ops
from symbackprop.display.labels import NodeText


def tiny_cnn(channels=3, classes=3):
    """conv -> relu -> max pool -> reshape -> matmul -> softmax cross-entropy, on
    (N, 2, 6, 6) images: the batch is the name N."""
    g = sb.Graph(name="tiny_cnn")
    x = g.input("X", shape=("N", 2, 6, 6))
    y = g.input("y", shape=("N",), dtype="int")
    k = g.param("K", shape=(channels, 2, 3, 3))
    b = g.param("b", shape=(channels, 1, 1))
    h = g.output("h", sb.relu(sb.conv2d(x, k, stride=1, padding=1) + b))
    p = g.output("p", sb.max_pool2d(h, 2))
    flat = sb.reshape(p, shape=("N", channels * 9))
    W = g.param("W", shape=(channels * 9, classes))
    g.output("L", sb.softmax_cross_entropy(flat @ W, y))
    return g


def _arrays(n=2, seed=0, channels=3, classes=3):
    rng = np.random.default_rng(seed)
    return {"X": rng.standard_normal((n, 2, 6, 6)), "y": rng.integers(0, classes, n),
            "K": rng.standard_normal((channels, 2, 3, 3)) * 0.5,
            "b": rng.standard_normal((channels, 1, 1)) * 0.1,
            "W": rng.standard_normal((channels * 9, classes)) * 0.3}


# -- the tiny CNN -------------------------------------------------------------------------------
def test_tiny_cnn_gradients_match_central_differences():
    g = tiny_cnn()
    fn = sb.compile(g)
    arrays = _arrays()
    _, grads = fn.value_and_grad(**arrays)
    assert sorted(grads) == ["K", "W", "b"]
    assert_central_differences(fn, arrays, ("K", "b", "W"), grads, count=15, seed=7)


def test_tiny_cnn_compiles_once_for_any_batch_size():
    fn = sb.compile(tiny_cnn())
    for n in (1, 2, 5):
        loss, grads = fn.value_and_grad(**_arrays(n=n, seed=n))
        assert np.isfinite(loss) and grads["K"].shape == (3, 2, 3, 3)


def test_tiny_cnn_float32_stays_float32():
    arrays = {k: v.astype(np.float32) if v.dtype.kind == "f" else v
              for k, v in _arrays().items()}
    loss, grads = sb.compile(tiny_cnn(), dtype="float32").value_and_grad(**arrays)
    assert np.asarray(loss).dtype == np.float32
    assert all(v.dtype == np.float32 for v in grads.values())
    loss64, grads64 = sb.compile(tiny_cnn()).value_and_grad(**_arrays())
    assert float(loss) == pytest.approx(float(loss64), rel=1e-5)
    np.testing.assert_allclose(grads["K"], grads64["K"], rtol=1e-3, atol=1e-5)


def test_tiny_cnn_source_is_ruff_clean_and_runs_without_symbackprop(tmp_path):
    """The generated module passes ruff and gives the same loss and gradients in a fresh
    interpreter (-I -S: no site-packages, so no symbackprop) as sb.compile here."""
    fn = sb.compile(tiny_cnn())
    (tmp_path / "tiny_cnn.py").write_text(fn.source)
    assert_ruff_clean(tmp_path, "tiny_cnn.py")
    arrays = _arrays()
    np.savez(tmp_path / "inputs.npz", **{fn.arg_names[k]: v for k, v in arrays.items()})
    run_without_symbackprop(tmp_path, """
        import numpy as np
        import tiny_cnn
        a = dict(np.load("inputs.npz"))
        loss, grads = tiny_cnn.value_and_grad(**a)
        np.savez("outputs.npz", loss=loss, **{"d" + k: v for k, v in grads.items()})
    """)
    out = np.load(tmp_path / "outputs.npz")
    loss, grads = fn.value_and_grad(**arrays)
    np.testing.assert_array_equal(out["loss"], loss)
    for k, v in grads.items():
        np.testing.assert_array_equal(out["d" + fn.arg_names[k]], v)


def test_sgd_training_step_lowers_the_loss():
    g = tiny_cnn()
    step = sb.compile(g, optimizer="sgd", lr=0.1)
    params = step.init_params(0)
    state = step.init_state(params)
    a = _arrays(n=8, seed=3)
    losses = [float(step.train_step(params, state, X=a["X"], y=a["y"])) for _ in range(8)]
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0] * 0.8, losses


# -- conventions ----------------------------------------------------------------------------------
def test_conv2d_is_scipys_correlation():
    """One more independent reference: a single-channel conv2d is SciPy's 'valid'
    correlation; a multi-channel one sums them over the input channels."""
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((2, 3, 7, 6)), rng.standard_normal((4, 3, 3, 2))
    y = numpy_ops._conv(x, w, (1, 1), (0, 0), (1, 1), 1)
    want = np.array([[sum(scipy.signal.correlate(x[n, c], w[o, c], mode="valid")
                          for c in range(3)) for o in range(4)] for n in range(2)])
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)


def test_max_pool_ties_send_the_gradient_to_the_first_maximum():
    """Ties: the first maximum of each window in row-major order gets all of δ (as
    PyTorch); where overlapping windows share it, their δ add up."""
    g = sb.Graph()
    x = g.param("x", shape=(1, 1, 4, 4))
    g.output("L", sb.sum(sb.max_pool2d(x, 2)))
    _, grads = sb.compile(g).value_and_grad(x=np.ones((1, 1, 4, 4)))
    want = np.zeros((4, 4))
    want[::2, ::2] = 1
    np.testing.assert_array_equal(grads["x"][0, 0], want)
    # overlapping windows (k=3, stride 1) on a constant: every window picks its corner
    g = sb.Graph()
    x = g.param("x", shape=(1, 1, 4, 4))
    g.output("L", sb.sum(sb.max_pool2d(x, 3, stride=1)))
    _, grads = sb.compile(g).value_and_grad(x=np.full((1, 1, 4, 4), 2.0))
    want = np.zeros((4, 4))
    want[:2, :2] = 1
    np.testing.assert_array_equal(grads["x"][0, 0], want)
    # a tie of two entries in one window: the first in row-major order
    v = np.zeros((1, 1, 2, 2))
    v[0, 0, 0, 1] = v[0, 0, 1, 0] = 5.0
    g = sb.Graph()
    x = g.param("x", shape=(1, 1, 2, 2))
    g.output("L", sb.sum(sb.max_pool2d(x, 2)))
    _, grads = sb.compile(g).value_and_grad(x=v)
    np.testing.assert_array_equal(grads["x"][0, 0], [[0, 1], [0, 0]])


def test_avg_pool_counts_the_padding_as_pytorch_default():
    g = sb.Graph()
    x = g.input("x", shape=(1, 1, 3, 3))
    g.output("L", sb.sum(g.output("y", sb.avg_pool2d(x, 3, stride=1, padding=1))))
    y = sb.compile(g, wrt=[]).forward(x=np.ones((1, 1, 3, 3)))["y"][0, 0]
    np.testing.assert_allclose(y, [[4 / 9, 6 / 9, 4 / 9], [6 / 9, 1, 6 / 9],
                                   [4 / 9, 6 / 9, 4 / 9]])
    np.testing.assert_allclose(
        sb.compile(g, wrt=[]).forward(x=np.arange(9.0).reshape(1, 1, 3, 3))["y"],
        pool_ref("avg", np.arange(9.0).reshape(1, 1, 3, 3), 3, 1, 1))


def test_attributes_by_position_as_pytorch_orders_them():
    g = sb.Graph()
    x = g.input("x", shape=("N", 3, 8, 8))
    w = g.input("w", shape=(4, 3, 3, 3))
    assert sb.conv2d(x, w, 2, 1).shape == sb.conv2d(x, w, stride=2, padding=1).shape \
        == ("N", 4, 4, 4)
    assert sb.max_pool2d(x, 2).shape == ("N", 3, 4, 4)
    assert sb.avg_pool2d(x, 3, 1, 1).shape == ("N", 3, 8, 8)
    with pytest.raises(TypeError, match="by position and by name"):
        sb.max_pool2d(x, 2, k=3)
    xs = np.random.default_rng(2).standard_normal((2, 3, 8, 8))
    ws = np.random.default_rng(3).standard_normal((4, 3, 3, 3))
    g.output("L", sb.sum(g.output("y", sb.conv2d(x, w, (2, 1), (1, 0), dilation=(1, 2)))))
    got = sb.compile(g, wrt=[]).forward(x=xs, w=ws)["y"]
    np.testing.assert_allclose(got, conv_ref(xs, ws, (2, 1), (1, 0), (1, 2)), rtol=1e-12)


def test_kernel_fans_for_he_and_xavier():
    """fan_in = C_in/groups · kh · kw, fan_out = C_out · kh · kw (as PyTorch)."""
    g = sb.Graph()
    x = g.input("x", shape=("N", 4, 8, 8))
    w1 = g.param("w1", shape=(6, 2, 3, 3))
    w2 = g.param("w2", shape=(5, 6, 3))
    h = sb.relu(sb.conv2d(x, w1, groups=2))
    z = sb.conv1d(sb.reshape(h, shape=("N", 6, 36)), w2)
    g.output("L", sb.sum(z))
    plan = {p.name: p for p in plan_init(g)}
    assert (plan["w1"].kind, plan["w1"].fan_in, plan["w1"].fan_out) == ("he", 18, 54)
    assert (plan["w2"].kind, plan["w2"].fan_in, plan["w2"].fan_out) == ("xavier", 18, 15)


def test_symbolic_spatial_sizes_give_expressions_and_symbolic_channels_are_refused():
    """Spatial sizes may be names (tests/test_symbolic_sizes.py runs such a network);
    channels and kernel sizes stay integers."""
    g = sb.Graph()
    x = g.input("x", shape=("N", 3, "H", 8))
    w = g.input("w", shape=(4, 3, 3, 3))
    assert sb.conv2d(x, w).shape == ("N", 4, "H - 2", 6)
    assert sb.max_pool2d(x, 2).shape == ("N", 3, "H//2", 4)
    with pytest.raises(sb.ShapeError, match="symbolic size 'C' on axis 1.*channels must be "
                                            "integers"):
        sb.conv2d(g.input("c", shape=("N", "C", 8, 8)), w)
    with pytest.raises(sb.ShapeError, match="symbolic size 'K'.*kernel's sizes must be"):
        sb.conv2d(x, g.input("k", shape=(4, 3, "K", 3)))


# -- display ---------------------------------------------------------------------------------------
def test_diagram_notation_and_gradient_formulas_as_correlations():
    g = sb.Graph()
    x = g.param("x", shape=(2, 3, 7, 7))
    w = g.param("w", shape=(4, 3, 3, 3))
    y = g.output("y", sb.conv2d(x, w, stride=2))
    g.output("L", sb.sum(sb.avg_pool2d(y, 2) * sb.max_pool2d(y, 3, stride=1, padding=1)))
    text = NodeText(g)
    assert text.formula("y")[0] == "conv2d(x, w, stride=2)"
    pools = sorted(text.formula(n)[0] for n in g.nx if "pool" in n)
    assert pools == ["avg_pool2d(y, 2)", "max_pool2d(y, 3, stride=1, padding=1)"]
    text = str(sb.grad(g))
    assert "∂L/∂x = δ_y ⋆ rot180(w) (full)" in text
    assert "∂L/∂w = x ⋆ δ_y" in text
    assert "route_argmax(y, δ_(max_pool2d(y)))" in text
    assert "spread(δ_(avg_pool2d(y)))/4" in text


# -- bad input ---------------------------------------------------------------------------------------
def _conv_graph(x_shape, w_shape, **attrs):
    g = sb.Graph()
    x = g.input("x", shape=x_shape)
    w = g.param("w", shape=w_shape)
    return g, sb.conv2d(x, w, **attrs) if len(x_shape) == 4 else sb.conv1d(x, w, **attrs)


BAD = {
    "kernel-too-large": (((1, 3, 4, 4), (2, 3, 5, 5), {"padding": 0}),
                         ["'conv2d_1'", "spans 5", "padded input has 4"]),
    "kernel-too-large-dilated": (((1, 3, 9), (2, 3, 3), {"dilation": 5}),
                                 ["'conv1d_1'", "spans 11", "dilation 5"]),
    "channels": (((1, 3, 6, 6), (2, 4, 3, 3), {}),
                 ["'conv2d_1'", "x is (1, 3, 6, 6)", "w is (2, 4, 3, 3)", "(2, 3, 3, 3)"]),
    "stride-0": (((1, 3, 6, 6), (2, 3, 3, 3), {"stride": 0}), ["'conv2d_1'", "stride=0"]),
    "groups": (((1, 4, 6, 6), (6, 2, 3, 3), {"groups": 3}),
               ["'conv2d_1'", "groups=3 does not divide", "(4)"]),
}


@pytest.mark.parametrize("key", list(BAD))
def test_bad_input_is_a_shape_error_naming_the_node(key):
    (xs, ws, attrs), needles = BAD[key]
    with pytest.raises(sb.ShapeError) as e:
        _conv_graph(xs, ws, **attrs)
    for needle in needles:
        assert needle in str(e.value), (needle, str(e.value))


@pytest.mark.parametrize(("attrs", "needle"), [
    ({"k": 5}, "spans 5"), ({"k": 2, "stride": 0}, "stride=0"),
    ({"k": 2, "padding": 2}, "more than half the window")])
def test_bad_pooling_is_a_shape_error_naming_the_node(attrs, needle):
    g = sb.Graph()
    x = g.input("x", shape=(1, 2, 4, 4))
    with pytest.raises(sb.ShapeError, match=needle) as e:
        sb.max_pool2d(x, **attrs)
    assert "'max_pool2d_1'" in str(e.value)


def test_cli_prints_one_line_and_exits_2(tmp_path, capsys):
    from symbackprop import cli

    spec = tmp_path / "bad_cnn.py"
    spec.write_text(textwrap.dedent("""
        import symbackprop as sb

        graph = sb.Graph()
        x = graph.input("x", shape=("N", 3, 6, 6))
        w = graph.param("w", shape=(4, 3, 3, 3))
        graph.output("L", sb.sum(sb.conv2d(x, w, stride=0)))
    """))
    code = cli.main(["codegen", str(spec)])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "ShapeError" in lines[0] and "stride=0" in lines[0] and "conv2d_1" in lines[0]


def test_the_docs_example_runs():
    """docs/ops.md's example builds and compiles as written."""
    import pathlib
    import re

    doc = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "ops.md").read_text()
    block = re.search(r"## Convolution and pooling.*?```python\n(.*?)```", doc,
                      re.DOTALL).group(1)
    ns: dict = {}
    exec(compile(block, "docs/ops.md", "exec"), ns)  # noqa: S102 -- the docs' own example
    assert ns["p"].shape == ("N", 8, 4, 4)
    params = ns["step"].init_params(0)
    assert params["K"].shape == (8, 1, 3, 3) and params["K"].std() > 0


@pytest.mark.parametrize("k, stride, padding", [((2, 2), (2, 2), (0, 0)), ((3, 3), (1, 1), (1, 1)),
                                                ((3, 2), (2, 1), (1, 1)), ((2, 2), (3, 3), (1, 0))])
def test_max_pool_grad_helper_routes_ties_as_the_loop_reference(k, stride, padding):
    """The helper (arg-max found offset by offset, no np.add.at) on entries with many ties,
    overlapping and gapped windows, padding: equal to the loop reference, float32 kept."""
    rng = np.random.default_rng(3)
    x = rng.integers(0, 3, (2, 3, 7, 8)).astype(np.float32)
    y = numpy_ops._max_pool2d(x, k, stride, padding)
    g = rng.standard_normal(y.shape).astype(np.float32)
    got = numpy_ops._max_pool2d_grad(x, g, k, stride, padding)
    assert got.dtype == np.float32 and got.shape == x.shape
    want = max_pool_grad_ref(x.astype(float), g.astype(float), k, stride, padding)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("groups, stride, padding, dilation", [(1, (1, 1), (1, 1), (1, 1)),
                                                               (2, (2, 1), (0, 2), (2, 1)),
                                                               (3, (3, 2), (1, 0), (1, 2))])
def test_conv_grad_input_helper_is_the_loop_reference(groups, stride, padding, dilation):
    """col2im (one product, then one add per kernel offset) against the loop scatter,
    with groups, strides that skip positions, padding and dilation, float32 kept."""
    rng = np.random.default_rng(4)
    w = rng.standard_normal((6, 6 // groups, 3, 2)).astype(np.float32)
    size = (9, 8)
    out = tuple((s + 2 * p - dl * (k - 1) - 1) // st + 1
                for s, p, dl, k, st in zip(size, padding, dilation, (3, 2), stride))
    g = rng.standard_normal((2, 6) + out).astype(np.float32)
    got = numpy_ops._conv_grad_input(g, w, size, stride, padding, dilation, groups)
    assert got.dtype == np.float32 and got.shape == (2, 6) + size and got.flags.c_contiguous
    want = conv_grad_input_ref(g.astype(float), w.astype(float), stride, padding, dilation,
                               groups, size)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
