"""Symbolic spatial sizes (issue 13): shapes whose sizes are expressions in names
(``(H + 1)//2`` for a stride-2 convolution of an input ``H`` high), so a CNN compiles once
for any image size; the size expressions themselves (symbackprop.sizes)."""

from __future__ import annotations

import numpy as np
import pytest
from central import assert_central_differences
from standalone import assert_ruff_clean, run_without_symbackprop

import symbackprop as sb
from symbackprop import sizes


# -- size expressions ------------------------------------------------------------------------
def test_expressions_are_canonical_python():
    h = sizes.to_sympy("H")
    assert sizes.from_sympy((h + 2 - 3) // 2 + 1) == "(H - 1)//2 + 1"
    assert sizes.from_sympy(h // 1) == "H"
    assert sizes.canonical("H*2") == sizes.canonical("2*H") == "2*H"
    assert sizes.canonical("H + 0") == "H"
    # a floor with a negative coefficient keeps its parentheses (-H//2 is (-H)//2)
    e = sizes.to_sympy("W - (H//2)") - sizes.to_sympy("W")
    text = sizes.from_sympy(e)
    assert sizes.to_sympy(text) == e
    for H in range(1, 9):
        assert eval(text, {"H": H}) == -(H // 2)
    assert sizes.value("((H - 1)//2 + 1)//2", {"H": 13}) == 3
    # the canonical text is Python code with the value of the expression it was made from
    for t in ("8*(((H + 1)//2)//2)*(((W + 1)//2)//2)", "W - (H//2)", "-(H//2)",
              "3*(H//2) - 2*(W//3)", "(H//2)*(W//2)", "((H - 1)//2 - 1)//2 + 1"):
        c = sizes.canonical(t)
        assert all(eval(c, {"H": h, "W": w}) == eval(t, {"H": h, "W": w})
                   for h in range(1, 9) for w in range(1, 9)), (t, c)
    assert sizes.canonical("8*(((H + 1)//2)//2)") == "8*(((H + 1)//2)//2)"
    assert sizes.names(("N", 3, "(H + 1)//2*W")) == ["H", "N", "W"]


@pytest.mark.parametrize("bad", ["H/2", "H**2", "f(H)", "H // W", "1 +"])
def test_bad_size_expressions_are_refused(bad):
    g = sb.Graph()
    with pytest.raises(sb.ShapeError, match="is not a size"):
        g.input("x", shape=("N", bad))


def test_output_sizes_of_conv_and_pool_are_expressions():
    g = sb.Graph()
    x = g.input("X", shape=("N", 1, "H", "W"))
    h = sb.conv2d(x, g.param("K", shape=(4, 1, 3, 3)), stride=2, padding=1)
    assert h.shape == ("N", 4, "(H + 1)//2", "(W + 1)//2")
    assert sb.conv2d(x, g.param("K1", shape=(4, 1, 3, 3)), padding=1).shape == ("N", 4, "H", "W")
    p = sb.max_pool2d(h, 2)
    assert p.shape == ("N", 4, "((H + 1)//2)//2", "((W + 1)//2)//2")
    assert sb.avg_pool2d(x, 3, stride=1).shape == ("N", 1, "H - 2", "W - 2")
    d = sb.conv2d(x, g.param("K2", shape=(2, 1, 3, 3)), dilation=2)  # span 5
    assert d.shape == ("N", 2, "H - 4", "W - 4")
    v = sb.conv1d(g.input("s", shape=("N", 2, "L")), g.param("k", shape=(3, 2, 4)), stride=3)
    assert v.shape == ("N", 3, "(L - 1)//3")
    # the same size computed twice is the same text: shapes compare with ==
    assert (h + h).shape == h.shape
    # flatten: C*H'*W' is a size, and -1 is inferred as one
    f = sb.reshape(p, shape=("N", -1))
    assert f.shape == ("N", "4*(((H + 1)//2)//2)*(((W + 1)//2)//2)")
    assert sb.reshape(p, shape=("N", f.shape[1])).shape == f.shape


def test_shape_rules_combine_expression_sizes():
    g = sb.Graph()
    x = g.input("x", shape=("N", "H"))
    y = g.input("y", shape=("N", 3))
    assert sb.concat([x, y], axis=1).shape == ("N", "H + 3")
    c = sb.concat([y, x, y, y], axis=1)
    assert c.shape == ("N", "H + 9")
    with pytest.raises(sb.ShapeError, match="more than one symbolic size"):
        sb.concat([x, y, x], axis=1)
    a = g.input("a", shape=("H", "2*W"))
    assert (x @ a).shape == ("N", "2*W")
    with pytest.raises(sb.ShapeError, match="inner sizes"):
        x @ g.input("b", shape=("W", 2))
    assert (a + g.input("r", shape=("W*2",))).shape == ("H", "2*W")
    assert x[:, 1:].shape == ("N", "H - 1")
    assert x[:, :-2].shape == ("N", "H - 2")
    assert x[:, ::2].shape == ("N", "(H + 1)//2")
    assert x[:, 2:5].shape == ("N", 3)


def test_spec_and_json_round_trip(tmp_path):
    g = sb.Graph()
    x = g.input("X", shape=("N", 1, "H", "W"))
    g.output("L", sb.sum(sb.conv2d(x, g.param("K", shape=(2, 1, 3, 3)), stride=2)))
    g.save(tmp_path / "g.json")
    back = sb.load(tmp_path / "g.json")
    assert [back.nx.nodes[n]["shape"] for n in back.nx] == [g.nx.nodes[n]["shape"] for n in g.nx]


# -- a CNN compiled once, run on several image sizes ---------------------------------------
def fully_conv(channels=3, classes=3):
    """conv (stride 2, padding 1) -> relu -> max pool -> conv -> global mean -> dense: any
    image size H x W (at least 4 x 4)."""
    g = sb.Graph(name="fully_conv")
    x = g.input("X", shape=("N", 1, "H", "W"))
    y = g.input("y", shape=("N",), dtype="int")
    k1 = g.param("K1", shape=(channels, 1, 3, 3))
    b1 = g.param("b1", shape=(channels, 1, 1))
    h = sb.relu(sb.conv2d(x, k1, stride=2, padding=1) + b1)
    p = sb.max_pool2d(h, 2)
    k2 = g.param("K2", shape=(channels, channels, 3, 3))
    h2 = sb.tanh(sb.conv2d(p, k2, padding=1))
    pooled = sb.mean(h2, axis=(2, 3))  # (N, channels): the mean over H'' x W''
    z = pooled @ g.param("W", shape=(channels, classes))
    g.output("L", sb.softmax_cross_entropy(z, y))
    return g


def _arrays(H, W, n=3, channels=3, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return {"X": rng.standard_normal((n, 1, H, W)), "y": rng.integers(0, classes, n),
            "K1": rng.standard_normal((channels, 1, 3, 3)) * 0.5,
            "b1": rng.standard_normal((channels, 1, 1)) * 0.1,
            "K2": rng.standard_normal((channels, channels, 3, 3)) * 0.3,
            "W": rng.standard_normal((channels, classes))}


def _loop_loss(a, channels=3):
    """The same network written with loops (an independent evaluation)."""
    X, K1, b1, K2, W = a["X"], a["K1"], a["b1"], a["K2"], a["W"]
    n, _, H, Wd = X.shape
    xp = np.pad(X, ((0, 0), (0, 0), (1, 1), (1, 1)))
    H1, W1 = (H + 1) // 2, (Wd + 1) // 2
    h = np.zeros((n, channels, H1, W1))
    for i in range(H1):
        for j in range(W1):
            h[:, :, i, j] = np.einsum("nckl,ockl->no", xp[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3], K1)
    h = np.maximum(h + b1, 0)
    H2, W2 = H1 // 2, W1 // 2
    p = h[:, :, :2 * H2, :2 * W2].reshape(n, channels, H2, 2, W2, 2).max(axis=(3, 5))
    pp = np.pad(p, ((0, 0), (0, 0), (1, 1), (1, 1)))
    h2 = np.zeros((n, channels, H2, W2))
    for i in range(H2):
        for j in range(W2):
            h2[:, :, i, j] = np.einsum("nckl,ockl->no", pp[:, :, i:i + 3, j:j + 3], K2)
    z = np.tanh(h2).mean(axis=(2, 3)) @ W
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -logp[np.arange(n), a["y"]].mean()


@pytest.mark.parametrize("optimize", [True, False])
def test_cnn_with_symbolic_image_size_compiles_once(optimize):
    fn = sb.compile(fully_conv(), optimize=optimize, wrt=["K1", "b1", "K2", "W", "X"])
    for H, W in ((8, 8), (12, 12), (9, 14)):
        a = _arrays(H, W, seed=H + W)
        loss, grads = fn.value_and_grad(**a)
        assert loss == pytest.approx(_loop_loss(a), rel=1e-12)
        assert fn.forward(**a)["L"] == pytest.approx(loss, rel=1e-12)
        assert_central_differences(fn, a, ("K1", "b1", "K2", "W", "X"), grads, count=6,
                                   seed=H * W)
    # no image size is baked in: the sizes are read from X
    assert "H = X.shape[2]" in fn.source and "W = X.shape[3]" in fn.source


def test_training_step_with_symbolic_image_size():
    step = sb.compile(fully_conv(), optimizer="sgd", lr=0.1)
    for H in (8, 12, 8):  # the workspace of each size is made once and kept
        a = _arrays(H, H, seed=H)
        params = {k: a.pop(k) for k in ("K1", "b1", "K2", "W")}
        state = step.init_state(params)
        before = step.forward(**a, **params)["L"]
        step.train_step(params, state, **a)
        assert step.forward(**a, **params)["L"] < before
    assert "_workspace(H, N, W)" in step.source


def test_generated_code_runs_without_symbackprop(tmp_path):
    """The compiled module, run in a fresh interpreter without symbackprop on two image
    sizes, gives the same numbers as here."""
    fn = sb.compile(fully_conv())
    (tmp_path / "fully_conv.py").write_text(fn.source)
    assert_ruff_clean(tmp_path, "fully_conv.py")
    sizes_ = ((10, 7), (8, 6))
    for i, (H, W) in enumerate(sizes_):
        # the parameter W is renamed in the code (W is also a size name): fn.arg_names
        np.savez(tmp_path / f"in{i}.npz",
                 **{fn.arg_names.get(k, k): v for k, v in _arrays(H, W, seed=i).items()})
    run_without_symbackprop(tmp_path, """
        import numpy as np
        import fully_conv
        for i in range(2):
            loss, grads = fully_conv.value_and_grad(**dict(np.load(f"in{i}.npz")))
            np.savez(f"out{i}.npz", loss=loss, **{"d" + k: v for k, v in grads.items()})
    """)
    for i, (H, W) in enumerate(sizes_):
        loss, grads = fn.value_and_grad(**_arrays(H, W, seed=i))
        out = np.load(tmp_path / f"out{i}.npz")
        np.testing.assert_array_equal(out["loss"], loss)
        for k, v in grads.items():
            np.testing.assert_array_equal(out["d" + k], v)


def test_too_small_image_fails_clearly_when_run():
    fn = sb.compile(fully_conv())
    a = _arrays(1, 1)
    with pytest.raises(ValueError, match="window shape cannot be larger than input"):
        fn.value_and_grad(**a)


def test_channels_must_stay_integers():
    g = sb.Graph()
    x = g.input("X", shape=("N", "C", "H", "W"))
    with pytest.raises(sb.ShapeError, match="channels must be integers"):
        sb.conv2d(x, g.param("K", shape=(4, 1, 3, 3)))


def test_expression_sizes_in_diagrams_and_formulas():
    g = fully_conv()
    assert "(N, 3, (H + 1)//2, (W + 1)//2)" in sb.to_dot(g)
    text = str(sb.grad(g))
    assert "1/(⌊⌊(H + 1)/2⌋/2⌋·⌊⌊(W + 1)/2⌋/2⌋)" in text
    assert "floor" not in text
    d = sb.derive(g, wrt=["K1"], at=_arrays(8, 8))  # sizes bound from X: evaluated at a point
    assert "3×3×4×4" in str(d)


def test_check_grad_binds_the_size_names():
    """sb.check_grad draws inputs with the names bound (H = 9, W = 12; N = 4 by default)
    and the expression sizes evaluated; training scripts need fixed image sizes."""
    from symbackprop.testing import resolve_shape
    assert resolve_shape(("N", "(H + 1)//2", "W", 3), {"H": 9}) == (4, 5, 4, 3)
    report = sb.check_grad(fully_conv(), sizes={"H": 9, "W": 12})
    assert report.ok, str(report)
    with pytest.raises(sb.CodegenError, match="expected a batch size name first and fixed"):
        sb.training_script(fully_conv())
