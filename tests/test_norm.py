"""Batch normalization and dropout (issue 13): modes, running statistics, the dropout
generator, errors, and the CNN with both. The op harness (tests/test_ops_grad.py) checks
their forward values against loops and batch norm's gradient against central
differences; this file checks what the harness does not: state kept between calls."""

from __future__ import annotations

import numpy as np
import pytest
from central import assert_central_differences
from standalone import assert_ruff_clean, run_script_without_symbackprop, run_without_symbackprop

import symbackprop as sb
from symbackprop.cli import main as cli_main

EPS = 1e-5


def bn_graph(shape=("N", 3, 2, 2), axis=1, name="bn"):
    """``h = batch_norm(x)``, ``L = sum(h * C)``."""
    g = sb.Graph("bn_case")
    x = g.input("x", shape=shape)
    h = g.output("h", g.name(sb.batch_norm(x, axis=axis), name))
    C = g.input("C", shape=shape)
    g.output("L", sb.sum(h * C))
    return g


def drop_graph(p=0.25, shape=(50, 40)):
    """``y = dropout(x, p)``, ``L = sum(y * C)``."""
    g = sb.Graph("drop_case")
    x = g.input("x", shape=shape)
    y = g.output("y", sb.dropout(x, p))
    C = g.input("C", shape=shape)
    g.output("L", sb.sum(y * C))
    return g


def by_hand(x, axis):
    """Batch mean and population variance per feature, by a loop over the features."""
    xs = np.moveaxis(x, axis, 0)
    mean = np.array([v.mean() for v in xs])
    var = np.array([((v - v.mean()) ** 2).mean() for v in xs])
    return mean, var, xs[0].size


# -- batch norm ---------------------------------------------------------------------------
@pytest.mark.parametrize("optimize", [True, False], ids=["optimized", "raw"])
@pytest.mark.parametrize(("shape", "axis"), [(("N", 3, 2, 2), 1), (("N", 4), 1), (("N", 2, 5), -1)])
def test_running_statistics_after_k_steps_and_evaluation_mode(shape, axis, optimize):
    """Three training-mode calls update the running statistics as PyTorch does (momentum
    0.1, unbiased variance); evaluation mode then normalizes with them."""
    fn = sb.compile(bn_graph(shape, axis), of="L", wrt=["x"], optimize=optimize)
    running = fn.init_running()
    assert sorted(running) == ["bn.mean", "bn.var"]
    c = shape[axis]
    mean, var = np.zeros(c), np.ones(c)
    rng = np.random.default_rng(0)
    for k in range(3):
        x = rng.normal(k, 1 + k, size=tuple(5 if d == "N" else d for d in shape))
        C = rng.normal(size=x.shape)
        call = fn.forward if k % 2 else fn.value_and_grad  # both train and update
        call(x=x, C=C, running=running)
        m, v, n = by_hand(x, axis)
        mean = 0.9 * mean + 0.1 * m
        var = 0.9 * var + 0.1 * v * n / (n - 1)
    np.testing.assert_allclose(running["bn.mean"], mean, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(running["bn.var"], var, rtol=1e-13)
    x = rng.normal(size=x.shape)
    h = fn.forward(x=x, C=C, training=False, running=running)["h"]
    bshape = [1] * x.ndim
    bshape[axis] = c
    want = (x - mean.reshape(bshape)) / np.sqrt(var.reshape(bshape) + EPS)
    np.testing.assert_allclose(h, want, rtol=1e-12, atol=1e-12)
    # training mode without running statistics: the batch's, nothing kept
    h = fn.forward(x=x, C=C)["h"]
    m, v, _ = by_hand(x, axis)
    np.testing.assert_allclose(h, (x - m.reshape(bshape)) / np.sqrt(v.reshape(bshape) + EPS),
                               rtol=1e-12, atol=1e-12)


def test_evaluation_mode_needs_the_running_statistics():
    fn = sb.compile(bn_graph(), of="L", wrt=["x"])
    x = np.ones((2, 3, 2, 2))
    with pytest.raises(ValueError, match="batch norm 'bn' in evaluation mode.*running="):
        fn.forward(x=x, C=x, training=False)


def test_gradient_formula_is_the_textbook_three_terms():
    """dx = (1/(n σ)) (n δ − Σδ − x̂ Σ(δ x̂)), written out here, against value_and_grad."""
    rng = np.random.default_rng(3)
    x, C = rng.normal(size=(6, 3, 2, 2)), rng.normal(size=(6, 3, 2, 2))
    _, grads = sb.compile(bn_graph(), of="L", wrt=["x"]).value_and_grad(x=x, C=C)
    axes, n = (0, 2, 3), 6 * 2 * 2
    sigma = np.sqrt(x.var(axis=axes, keepdims=True) + EPS)
    xh = (x - x.mean(axis=axes, keepdims=True)) / sigma
    d = C  # dL/dh
    want = (n * d - d.sum(axis=axes, keepdims=True)
            - xh * (d * xh).sum(axis=axes, keepdims=True)) / (n * sigma)
    np.testing.assert_allclose(grads["x"], want, rtol=1e-10, atol=1e-12)


def test_float32_running_statistics_stay_float32():
    fn = sb.compile(bn_graph(), of="L", wrt=["x"], dtype="float32")
    running = fn.init_running()
    x = np.random.default_rng(0).normal(size=(4, 3, 2, 2)).astype(np.float32)
    _loss, grads = fn.value_and_grad(x=x, C=x, running=running)
    assert grads["x"].dtype == np.float32 and running["bn.var"].dtype == np.float32
    assert fn.forward(x=x, C=x, training=False, running=running)["h"].dtype == np.float32


@pytest.mark.parametrize(("shape", "axis", "match"), [
    ((1, 3), 1, (r"node 'batch_norm_1' = batch_norm\(x\): x is \(1, 3\); the statistics over "
                r"axes \(0,\) \(all but axis 1\) are taken over 1 value")),
    ((4, 1, 1, 1), 0, "taken over 1 value"),
    (("N",), 0, "needs a batch axis and a feature axis"),
    (("N", 3), 2, "axis 2 is out of range"),
])
def test_batch_norm_bad_input_names_the_node(shape, axis, match):
    g = sb.Graph()
    x = g.input("x", shape=shape)
    with pytest.raises(sb.ShapeError, match=match):
        sb.batch_norm(x, axis=axis)


def test_training_needs_two_values_per_feature_at_run_time():
    """A symbolic batch of 1 is only known when the code runs."""
    fn = sb.compile(bn_graph(("N", 3)), of="L", wrt=["x"])
    with pytest.raises(ValueError, match="batch norm 'bn': 1 value per feature"):
        fn.forward(x=np.ones((1, 3)), C=np.ones((1, 3)))


# -- dropout ------------------------------------------------------------------------------
def test_dropout_mask_statistics_and_scaling():
    p = 0.25
    fn = sb.compile(drop_graph(p, (200, 100)), of="L", wrt=["x"])
    x = np.random.default_rng(0).uniform(1, 2, size=(200, 100))
    y = fn.forward(x=x, C=x, rng=7)["y"]
    kept = y != 0
    n = x.size
    # the kept fraction within 4 standard deviations of 1 - p
    assert abs(kept.mean() - (1 - p)) < 4 * np.sqrt(p * (1 - p) / n)
    np.testing.assert_array_equal(y[kept], x[kept] * (1 / (1 - p)))  # inverted: scaled when kept
    assert abs(y.mean() / x.mean() - 1) < 0.02  # the expectation is kept


def test_dropout_same_seed_same_mask_and_a_generator_moves_on():
    fn = sb.compile(drop_graph(), of="L", wrt=["x"])
    x = np.ones((50, 40))
    a, b = fn.forward(x=x, C=x, rng=3)["y"], fn.forward(x=x, C=x, rng=3)["y"]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, fn.forward(x=x, C=x, rng=4)["y"])
    np.testing.assert_array_equal(fn.forward(x=x, C=x)["y"], fn.forward(x=x, C=x, rng=0)["y"])
    gen = np.random.default_rng(3)
    first, second = fn.forward(x=x, C=x, rng=gen)["y"], fn.forward(x=x, C=x, rng=gen)["y"]
    np.testing.assert_array_equal(first, a)  # a Generator of seed 3 draws the same first
    assert not np.array_equal(first, second)  # and then moves on


def test_two_dropouts_of_one_input_draw_two_masks():
    """The masks' keys keep common-subexpression elimination from merging them."""
    g = sb.Graph()
    x = g.input("x", shape=(30, 30))
    a, b = g.output("a", sb.dropout(x, 0.5)), g.output("b", sb.dropout(x, 0.5))
    g.output("L", sb.sum(a * b))
    out = sb.compile(g, of="L", wrt=["x"]).forward(x=np.ones((30, 30)))
    assert not np.array_equal(out["a"], out["b"])


def test_dropout_is_the_identity_in_evaluation_mode():
    fn = sb.compile(drop_graph(0.9), of="L", wrt=["x"])
    x = np.random.default_rng(0).normal(size=(50, 40))
    np.testing.assert_array_equal(fn.forward(x=x, C=x, training=False)["y"], x)


@pytest.mark.parametrize("optimize", [True, False], ids=["optimized", "raw"])
def test_dropout_gradient_with_the_mask_held_fixed(optimize):
    """The gradient reads the forward pass's mask: with one seed for every call, the mask
    is fixed and central differences of the loss agree with it."""
    fn = sb.compile(drop_graph(0.3, (6, 5)), of="L", wrt=["x"], optimize=optimize)
    rng = np.random.default_rng(1)
    arrays = {"x": rng.normal(size=(6, 5)), "C": rng.normal(size=(6, 5)), "rng": 11}
    _, grads = fn.value_and_grad(**arrays)
    mask = fn.forward(**arrays)["y"] / arrays["x"]
    np.testing.assert_allclose(grads["x"], arrays["C"] * mask, rtol=1e-14)
    assert_central_differences(fn, arrays, ["x"], grads, count=30, seed=2)


@pytest.mark.parametrize("p", [1.0, -0.1, 1.5, True])
def test_dropout_bad_p_names_the_node(p):
    g = sb.Graph()
    x = g.input("x", shape=("N", 3))
    with pytest.raises(sb.ShapeError, match=r"node 'dropout_mask_1' = dropout_mask\(x\): "
                                            r"x is \(N, 3\); dropout p=.* is outside \[0, 1\)"):
        sb.dropout(x, p)


@pytest.mark.parametrize("body, match", [
    ("sb.dropout(x, 1.0)", "dropout p=1.0 is outside [0, 1)"),
    ("sb.batch_norm(g.input('z', shape=(1, 4)), axis=1)", "taken over 1 value"),
])
def test_cli_one_line_exit_2(tmp_path, capsys, body, match):
    spec = tmp_path / "net.py"
    spec.write_text("import symbackprop as sb\n\ng = sb.Graph()\nx = g.input('x', "
                    f"shape=('N', 4))\n{body}\ngraph = g\n")
    assert cli_main(["train-script", str(spec), "-o", str(tmp_path / "t.py")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and match in err


# -- the CNN with both --------------------------------------------------------------------
def small_cnn(**kw):
    return sb.models.cnn((1, 6, 6), channels=(3, 4), hidden=(8,), classes=3, batch_norm=True,
                         dropout=0.25, **kw)


def test_cnn_structure():
    g = small_cnn()
    assert g.nodes("param") == ["K1", "g1", "c1", "K2", "g2", "c2", "W1", "b1", "W2", "b2"]
    assert g.nx.graph["name"] == "cnn_1x6x6_c3_c4_8_3_bn_dropout0p25"
    assert g.opdef("bn1").name == "batch_norm" and g["bn2"].shape == ("N", 4, 3, 3)
    assert g["drop0"].shape == ("N", 4) and g["drop1"].shape == ("N", 8)
    with pytest.raises(sb.GraphError, match=r"dropout=1\.0; expected a number in \[0, 1\)"):
        sb.models.cnn(dropout=1.0)


def test_cnn_gradients_against_central_differences():
    g = small_cnn()
    fn = sb.compile(g, of="L")
    rng = np.random.default_rng(0)
    arrays = {"X": rng.normal(size=(5, 1, 6, 6)), "y": rng.integers(0, 3, 5), "rng": 4}
    arrays |= {p: rng.normal(size=g[p].shape) * 0.5 for p in g.nodes("param")}
    _, grads = fn.value_and_grad(**arrays)
    assert_central_differences(fn, arrays, g.nodes("param"), grads, count=6, seed=1)


def test_cnn_train_step_keeps_running_statistics_and_evaluates(tmp_path):
    """sb.compile(..., optimizer=) with running= and one Generator; the generated module
    runs without symbackprop and is ruff-clean."""
    g = small_cnn()
    step = sb.compile(g, optimizer="adam", lr=0.01)
    params, running = step.init_params(0), step.init_running()
    state, gen = step.init_state(params), np.random.default_rng(0)
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(16, 1, 6, 6)), rng.integers(0, 3, 16)
    losses = [step.train_step(params, state, running=running, rng=gen, X=X, y=y)
              for _ in range(15)]
    assert losses[-1] < losses[0]
    assert not np.array_equal(running["bn1.mean"], np.zeros(3))
    out = step.forward(X=X, y=y, training=False, running=running, **params)
    again = step.forward(X=X, y=y, training=False, running=running, **params)
    np.testing.assert_array_equal(out["logits"], again["logits"])  # no dropout, no update
    (tmp_path / "step.py").write_text(step.source)
    assert_ruff_clean(tmp_path, "step.py")
    run_without_symbackprop(tmp_path, """
        import numpy as np
        import step
        params = step.init_params(0)
        state, running = step.init_state(params), step.init_running()
        gen = np.random.default_rng(0)
        X = np.random.default_rng(1).normal(size=(8, 1, 6, 6))
        y = np.arange(8) % 3
        for _ in range(3):
            step.train_step(params, state, X, y, running=running, rng=gen)
        out = step.forward(X=X, y=y, **params, training=False, running=running)
        assert np.isfinite(out["L"])
    """)


def test_compiled_step_keeps_its_own_generator_and_running_statistics():
    """Called without rng= and running=, the compiled step draws a new mask each time (from
    its own generator) and keeps the running statistics itself."""
    g = small_cnn()
    def losses(step, k=3):  # each step from the same parameters: only the mask differs
        p0 = step.init_params(0)
        return [step.train_step({n: v.copy() for n, v in p0.items()}, step.init_state(p0),
                                X=X, y=y) for _ in range(k)]

    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(8, 1, 6, 6)), rng.integers(0, 3, 8)
    step = sb.compile(g, optimizer="sgd", lr=0.1)
    first = losses(step)
    assert len(set(first)) == 3
    assert step.running["bn1.mean"].shape == (3,)
    assert not np.array_equal(step.running["bn1.mean"], np.zeros(3))
    assert losses(sb.compile(g, optimizer="sgd", lr=0.1)) == first  # seed 0 again


@pytest.mark.slow
def test_cnn_script_trains_on_a_digits_subset(tmp_path):
    """The generated script for cnn(batch_norm=True, dropout=0.25) on 400 digits: the loss
    drops and the test accuracy is well above chance."""
    datasets = pytest.importorskip("sklearn.datasets")
    X, y = datasets.load_digits(return_X_y=True)
    X = (X / 16).reshape(-1, 1, 8, 8)[:500]
    y = y[:500]
    np.savez(tmp_path / "d.npz", X=X[:400], y=y[:400], X_test=X[400:], y_test=y[400:])
    src = sb.training_script(sb.models.cnn(channels=(8, 16), hidden=(32,), batch_norm=True,
                                           dropout=0.25), optimizer="adam", lr=3e-3,
                             epochs=8, batch_size=32, dtype="float32")
    (tmp_path / "train.py").write_text(src)
    assert_ruff_clean(tmp_path, "train.py")
    res = run_script_without_symbackprop(tmp_path, "--data", "d.npz", "--out", "ck.npz")
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("epoch")]
    loss = [float(ln.split()[3]) for ln in lines]
    acc = float(lines[-1].split()[5])
    assert loss[-1] < 0.5 * loss[0] and acc > 0.8, res.stdout
