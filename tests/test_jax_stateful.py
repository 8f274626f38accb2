"""Batch norm and dropout on the functional backends (issue 15): JAX code for both, with
their state passed in and returned (running statistics, a ``jax.random`` key), and the
array API's batch norm, convolution and pooling, checked against the NumPy backend.

* batch norm: gradients against central differences and the NumPy backend's values and
  gradients (training mode normalizes with the batch's statistics: deterministic); the
  running statistics after K steps equal NumPy's (float64, 1e-10); evaluation mode uses
  them;
* dropout: the mask's rate and values, the identity in evaluation, a new mask for a new
  key, and the gradient given the same mask equal to NumPy's (the mask made an input);
* the CNN with both: sb.compile(..., backend="jax") and its training step train step by
  step, and with dropout=0 the losses and running statistics equal NumPy's;
* the JAX training script of that CNN: running statistics and dropout's key in the
  checkpoints (buffers/), --resume bit-identical, 4 simulated devices equal to one,
  --metrics and --log-grad-norms, .csv data;
* the array API: convolution, pooling and batch norm on array_api_strict against NumPy.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from central import assert_central_differences
from standalone import assert_ruff_clean, run_without_symbackprop

import symbackprop as sb
from symbackprop.cli import main as cli_main

needs_jax = pytest.mark.skipif(importlib.util.find_spec("jax") is None,
                               reason="JAX is not installed (pip install 'symbackprop[jax]')")
needs_strict = pytest.mark.skipif(importlib.util.find_spec("array_api_strict") is None,
                                  reason="array-api-strict is not installed (pip install "
                                  "'symbackprop[dev]')")


def _np(v) -> np.ndarray:
    """A backend's array as NumPy (array_api_strict's through DLPack)."""
    return np.from_dlpack(v) if hasattr(v, "__dlpack__") else np.asarray(v)


def bn_graph(shape=("N", 3, 2, 2), axis=1, name="bn"):
    """``h = batch_norm(x)``, ``L = sum(h * C)``."""
    g = sb.Graph("bn_case")
    x = g.input("x", shape=shape)
    h = g.output("h", g.name(sb.batch_norm(x, axis=axis), name))
    C = g.input("C", shape=shape)
    g.output("L", sb.sum(h * C))
    return g


def drop_graph(p=0.25, shape=(50, 40)):
    """``y = dropout(x, p)``, ``L = sum(y * C)``, the mask an output too (``mask``)."""
    g = sb.Graph("drop_case")
    x = g.input("x", shape=shape)
    y = g.output("y", sb.dropout(x, p))
    C = g.input("C", shape=shape)
    g.output("L", sb.sum(y * C))
    mask = next(n for n in g.nx if g.nx.nodes[n].get("op") == "dropout_mask")
    g.nx.graph["outputs"].insert(0, mask)
    return g, mask


BN_CASES = [(("N", 3, 2, 2), 1), (("N", 4), 1), (("N", 2, 5), -1), ((6, 3), 0)]


def _bn_arrays(shape, seed=0):
    rng = np.random.default_rng(seed)
    size = tuple(5 if d == "N" else d for d in shape)
    return {"x": rng.normal(1.0, 2.0, size=size), "C": rng.normal(size=size)}


class AsNumPy:
    """A compiled function whose forward returns NumPy values (central differences
    subtract them as floats)."""

    def __init__(self, fn):
        self.fn = fn

    def forward(self, **arrays):
        return {k: _np(v) for k, v in self.fn.forward(**arrays).items()}


# -- JAX: batch norm ----------------------------------------------------------------------
@needs_jax
@pytest.mark.parametrize(("shape", "axis"), BN_CASES)
def test_jax_batch_norm_gradient_against_central_differences(shape, axis):
    fn = sb.compile(bn_graph(shape, axis), of="L", wrt=["x"], backend="jax")
    arrays = _bn_arrays(shape)
    _, grads = fn.value_and_grad(**arrays)
    assert_central_differences(AsNumPy(fn), arrays, ["x"], {"x": _np(grads["x"])}, count=8,
                               seed=1)


@needs_jax
@pytest.mark.parametrize("optimize", [True, False], ids=["optimized", "raw"])
@pytest.mark.parametrize(("shape", "axis"), BN_CASES)
def test_jax_batch_norm_values_gradients_and_running_statistics_equal_numpy(shape, axis,
                                                                          optimize):
    """Three training-mode calls of value_and_grad: the same values and gradients as the
    NumPy backend (the batch's statistics), and the same running statistics (JAX returns
    new ones, which sb.compile's wrapper puts into the dict passed); then evaluation
    mode with them gives NumPy's output."""
    g = bn_graph(shape, axis)
    fj = sb.compile(g, of="L", wrt=["x"], backend="jax", optimize=optimize)
    fn = sb.compile(g, of="L", wrt=["x"], optimize=optimize)
    rj, rn = fj.init_running(), fn.init_running()
    for k in range(3):
        arrays = _bn_arrays(shape, seed=k)
        lj, gj = fj.value_and_grad(**arrays, running=rj)
        ln, gn = fn.value_and_grad(**arrays, running=rn)
        assert float(lj) == pytest.approx(ln, rel=1e-12, abs=1e-12)
        np.testing.assert_allclose(_np(gj["x"]), gn["x"], rtol=1e-10, atol=1e-12)
    for key in rn:
        np.testing.assert_allclose(_np(rj[key]), rn[key], rtol=1e-10, atol=1e-12, err_msg=key)
    assert not np.allclose(rn["bn.mean"], 0)  # they moved
    arrays = _bn_arrays(shape, seed=7)
    out_j = fj.forward(**arrays, training=False, running=rj)
    out_n = fn.forward(**arrays, training=False, running=rn)
    np.testing.assert_allclose(_np(out_j["h"]), out_n["h"], rtol=1e-10, atol=1e-12)


@needs_jax
def test_jax_functions_return_running_statistics_and_leave_the_dict_passed_alone():
    """The generated module is functional: value_and_grad returns the new statistics
    after the gradients and leaves the dict passed and its arrays as they were; jitted,
    the mode is static (evaluation traces other code) and a missing running in
    evaluation mode is one ValueError."""
    fj = sb.compile(bn_graph(), of="L", wrt=["x"], backend="jax")
    m = fj.module
    running = m.init_running()
    before = {k: np.array(v) for k, v in running.items()}
    arrays = _bn_arrays(("N", 3, 2, 2))
    *_, new = m.value_and_grad(arrays["x"], arrays["C"], running=running)
    assert sorted(new) == ["bn.mean", "bn.var"] and new is not running
    for k, was in before.items():
        np.testing.assert_array_equal(np.asarray(running[k]), was)
    mean = arrays["x"].mean(axis=(0, 2, 3))
    np.testing.assert_allclose(np.asarray(new["bn.mean"]), 0.1 * mean, rtol=1e-12)
    n = arrays["x"].size // 3
    var = arrays["x"].var(axis=(0, 2, 3)) * n / (n - 1)
    np.testing.assert_allclose(np.asarray(new["bn.var"]), 0.9 + 0.1 * var, rtol=1e-12)
    _, same = m.forward(arrays["x"], arrays["C"], training=False, running=new)
    assert same is not None and sorted(same) == ["bn.mean", "bn.var"]
    with pytest.raises(ValueError, match="evaluation mode .* needs the running statistics"):
        m.forward(arrays["x"], arrays["C"], training=False)
    src = fj.source
    assert '@functools.partial(jax.jit, static_argnames=("training",))\ndef forward(' in src
    assert "running = None if running is None else dict(running)" in src


# -- JAX: dropout -------------------------------------------------------------------------
@needs_jax
@pytest.mark.parametrize("p", [0.25, 0.6])
def test_jax_dropout_mask_rate_values_and_keys(p):
    import jax

    g, mask = drop_graph(p, shape=(200, 150))
    fj = sb.compile(g, of="L", wrt=["x"], backend="jax")
    arrays = {"x": np.ones((200, 150)), "C": np.ones((200, 150))}
    m = _np(fj.forward(**arrays, rng=jax.random.key(3))[mask])
    assert set(np.unique(m)) == {0.0, 1 / (1 - p)}
    assert (m == 0).mean() == pytest.approx(p, abs=0.01)  # 30000 draws: sd 0.003
    assert m.mean() == pytest.approx(1.0, abs=0.03)  # inverted: the mean kept
    same = _np(fj.forward(**arrays, rng=jax.random.key(3))[mask])
    np.testing.assert_array_equal(m, same)
    other = _np(fj.forward(**arrays, rng=jax.random.key(4))[mask])
    assert (m != other).mean() > 0.2
    seeded = _np(fj.forward(**arrays, rng=3)[mask])  # a seed is jax.random.key(seed)
    np.testing.assert_array_equal(m, seeded)
    raw = _np(fj.forward(**arrays, rng=jax.random.PRNGKey(3))[mask])  # a raw key
    assert set(np.unique(raw)) == {0.0, 1 / (1 - p)}


@needs_jax
def test_jax_dropout_is_the_identity_in_evaluation_and_two_masks_differ():
    import jax

    g = sb.Graph("two")
    x = g.input("x", shape=(40, 30))
    a, b = g.output("a", sb.dropout(x, 0.5)), g.output("b", sb.dropout(x, 0.5))
    g.output("L", sb.sum(a * b))
    fj = sb.compile(g, of="L", wrt=["x"], backend="jax")
    X = np.random.default_rng(0).normal(size=(40, 30))
    out = fj.forward(x=X, training=False, rng=jax.random.key(0))
    np.testing.assert_array_equal(_np(out["a"]), X)
    np.testing.assert_array_equal(_np(out["b"]), X)
    out = fj.forward(x=X, rng=jax.random.key(0))
    assert ((_np(out["a"]) == 0) != (_np(out["b"]) == 0)).mean() > 0.3


@needs_jax
@pytest.mark.parametrize("optimize", [True, False], ids=["optimized", "raw"])
def test_jax_dropout_gradient_equals_numpy_given_the_same_mask(optimize):
    """JAX's mask (an output of the graph) fed to the NumPy backend as an input of the
    graph y = x * M: the same loss and gradients, and dL/dx = C * M by hand."""
    import jax

    p = 0.3
    g, mask = drop_graph(p, shape=(20, 15))
    fj = sb.compile(g, of="L", wrt=["x"], backend="jax", optimize=optimize)
    rng = np.random.default_rng(0)
    arrays = {"x": rng.normal(size=(20, 15)), "C": rng.normal(size=(20, 15))}
    key = jax.random.key(11)
    M = _np(fj.forward(**arrays, rng=key)[mask])
    lj, gj = fj.value_and_grad(**arrays, rng=key)
    h = sb.Graph("fixed_mask")
    x, Mi, C = (h.input(n, shape=(20, 15)) for n in ("x", "M", "C"))
    h.output("L", sb.sum(x * Mi * C))
    ln, gn = sb.compile(h, of="L", wrt=["x"]).value_and_grad(**arrays, M=M)
    assert float(lj) == pytest.approx(ln, rel=1e-12)
    np.testing.assert_allclose(_np(gj["x"]), gn["x"], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(_np(gj["x"]), arrays["C"] * M, rtol=1e-12, atol=1e-14)


# -- JAX: the CNN with both ---------------------------------------------------------------
def _cnn(dropout):
    return sb.models.cnn((1, 6, 6), channels=(3, 4), hidden=(8,), classes=3, batch_norm=True,
                         dropout=dropout)


def _batch(seed=1, n=16):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 1, 6, 6)), rng.integers(0, 3, n)


@needs_jax
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_jax_cnn_without_dropout_trains_like_numpy(optimizer):
    """From NumPy's initial parameters, K steps of the JAX step give NumPy's losses step
    by step, and NumPy's running statistics (float64, 1e-10); evaluation mode agrees."""
    g = _cnn(0.0)
    sj = sb.compile(g, optimizer=optimizer, lr=0.05, backend="jax")
    sn = sb.compile(g, optimizer=optimizer, lr=0.05)
    pn = sn.init_params(0)
    pj = {k: v.copy() for k, v in pn.items()}
    stn, stj = sn.init_state(pn), sj.init_state(pj)
    rn, rj = sn.init_running(), sj.init_running()
    X, y = _batch()
    for k in range(6):
        ln = sn.train_step(pn, stn, X=X[k:k + 10], y=y[k:k + 10], running=rn)
        lj, pj, stj = sj.train_step(pj, stj, X=X[k:k + 10], y=y[k:k + 10], running=rj)
        assert float(lj) == pytest.approx(ln, rel=1e-10), k
    for name in pn:
        np.testing.assert_allclose(_np(pj[name]), pn[name], rtol=1e-9, atol=1e-10, err_msg=name)
    for key in rn:
        np.testing.assert_allclose(_np(rj[key]), rn[key], rtol=1e-10, atol=1e-10, err_msg=key)
    out_j = sj.forward(X=X, y=y, training=False, running=rj, **pj)
    out_n = sn.forward(X=X, y=y, training=False, running=rn, **pn)
    np.testing.assert_allclose(_np(out_j["logits"]), out_n["logits"], rtol=1e-9, atol=1e-10)


@needs_jax
def test_jax_cnn_with_batch_norm_and_dropout_trains_step_by_step(tmp_path):
    """The compiled step keeps its running statistics and draws a new mask every step;
    the loss falls; evaluation is deterministic; the module's own train_step returns the
    new running statistics; the training module is ruff-clean and runs without
    symbackprop."""
    g = _cnn(0.25)
    step = sb.compile(g, optimizer="adam", lr=0.01, backend="jax")
    params = step.init_params(0)
    state = step.init_state(params)
    X, y = _batch(n=32)
    losses = []
    for _ in range(40):
        loss, params, state = step.train_step(params, state, X=X, y=y)
        losses.append(float(loss))
    assert np.mean(losses[-5:]) < 0.75 * np.mean(losses[:5]), losses
    assert len(set(losses[:5])) == 5
    assert not np.allclose(_np(step.running["bn1.mean"]), 0)
    out = step.forward(X=X, y=y, training=False, running=step.running, **params)
    again = step.forward(X=X, y=y, training=False, running=step.running, **params)
    np.testing.assert_array_equal(_np(out["logits"]), _np(again["logits"]))
    src = sb.train_step(g, optimizer="adam", lr=0.01, backend="jax")
    assert ("def train_step(params, state, X, y, lr=LR, running=None, rng=0):" in src
            and "return loss, params, state, running" in src)
    (tmp_path / "step.py").write_text(src)
    assert_ruff_clean(tmp_path, "step.py")
    run_without_symbackprop(tmp_path, """
        import jax
        import numpy as np
        import step
        params = step.init_params(0)
        state, running = step.init_state(params), step.init_running()
        key = jax.random.key(0)
        rng = np.random.default_rng(1)
        X, y = rng.normal(size=(8, 1, 6, 6)), np.arange(8) % 3
        for t in range(3):
            loss, params, state, running = step.train_step(
                params, state, X, y, running=running, rng=jax.random.fold_in(key, t))
        out, _ = step.forward(X, *(params[k] for k in ("K1", "g1", "c1", "K2", "g2", "c2",
                              "W1", "b1", "W2", "b2")), y, training=False, running=running)
        assert np.isfinite(float(out["L"]))
    """)


# -- the array API: convolution, pooling and batch norm, on array_api_strict --------------
# (the op harness, tests/test_backends.py, checks every convolution and pooling case:
# stride, padding, dilation, groups, unreached rows; here: ties, whole networks, state)
def _strict(arrays: dict) -> dict:
    import array_api_strict as xp

    return {k: xp.asarray(np.array(v)) for k, v in arrays.items()}  # copies: NumPy steps in place


@needs_strict
@pytest.mark.parametrize("padding", [0, 1])
@pytest.mark.parametrize("pool", ["max_pool2d", "avg_pool2d"])
def test_array_api_pool_ties_route_like_numpy(pool, padding):
    """Windows full of ties and overlapping windows: the array API pooling gradient goes
    to the same entries as NumPy's (max pooling: the first arg-max, row-major)."""
    g = sb.Graph()
    x = g.input("x", shape=(2, 2, 6, 6))
    y = getattr(sb, pool)(x, k=3, stride=2, padding=padding)
    g.output("L", sb.sum(y * y))
    rng = np.random.default_rng(3)
    xs = rng.integers(-2, 2, (2, 2, 6, 6)).astype(np.float64)
    xs[0, 0] = -1.0  # one channel constant and negative: every window a tie
    xs[1, 1, :3, :3] = 5.0
    want = sb.compile(g, wrt=["x"]).value_and_grad(x=xs)[1]["x"]
    got = sb.compile(g, wrt=["x"], backend="array_api").value_and_grad(**_strict({"x": xs}))
    np.testing.assert_allclose(_np(got[1]["x"]), want, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(_np(got[1]["x"]) != 0, want != 0)  # the same entries


@needs_strict
@pytest.mark.parametrize(("shape", "axis"), BN_CASES)
def test_array_api_batch_norm_and_running_statistics_equal_numpy(shape, axis):
    g = bn_graph(shape, axis)
    fa = sb.compile(g, of="L", wrt=["x"], backend="array_api")
    fn = sb.compile(g, of="L", wrt=["x"])
    import array_api_strict as xp

    ra, rn = fa.init_running(xp=xp), fn.init_running()
    for k in range(3):
        arrays = _bn_arrays(shape, seed=k)
        la, ga = fa.value_and_grad(**_strict(arrays), running=ra)
        ln, gn = fn.value_and_grad(**arrays, running=rn)
        assert float(_np(la)) == pytest.approx(ln, rel=1e-12, abs=1e-12)
        np.testing.assert_allclose(_np(ga["x"]), gn["x"], rtol=1e-10, atol=1e-12)
    for key in rn:
        np.testing.assert_allclose(_np(ra[key]), rn[key], rtol=1e-10, atol=1e-12, err_msg=key)
    arrays = _bn_arrays(shape, seed=7)
    out_a = fa.forward(**_strict(arrays), training=False, running=ra)
    out_n = fn.forward(**arrays, training=False, running=rn)
    np.testing.assert_allclose(_np(out_a["h"]), out_n["h"], rtol=1e-10, atol=1e-12)


@needs_strict
@pytest.mark.parametrize("batch_norm", [False, True])
def test_array_api_cnn_trains_like_numpy_on_array_api_strict(batch_norm):
    """A CNN (two conv blocks, max pooling; with batch norm, its running statistics) as
    an array API training module on array_api_strict: NumPy's losses step by step,
    parameters and running statistics (float64)."""
    g = sb.models.cnn((1, 6, 6), channels=(3, 4), hidden=(8,), classes=3,
                      batch_norm=batch_norm)
    ref = sb.compile(g, optimizer="adam", lr=0.05)
    fa = sb.compile(g, optimizer="adam", lr=0.05, backend="array_api")
    params = ref.init_params(0)
    pa = _strict(params)
    state, sa = ref.init_state(params), fa.init_state(pa)
    X, y = _batch()
    for k in range(4):
        want = ref.train_step(params, state, X=X[k:k + 10], y=y[k:k + 10])
        loss, pa, sa = fa.train_step(pa, sa, **_strict({"X": X[k:k + 10], "y": y[k:k + 10]}))
        assert float(_np(loss)) == pytest.approx(want, rel=1e-10), k
    for name in params:
        np.testing.assert_allclose(_np(pa[name]), params[name], rtol=1e-9, atol=1e-10,
                                   err_msg=name)
    if batch_norm:
        for key in ref.running:
            np.testing.assert_allclose(_np(fa.running[key]), ref.running[key], rtol=1e-10,
                                       atol=1e-12, err_msg=key)
        out_a = fa.forward(**_strict({"X": X, "y": y}), training=False, running=fa.running,
                           **pa)
        out_n = ref.forward(X=X, y=y, training=False, running=ref.running, **params)
        np.testing.assert_allclose(_np(out_a["logits"]), out_n["logits"], rtol=1e-9,
                                   atol=1e-10)


def test_array_api_helpers_loop_over_kernel_offsets_only():
    """The array API's convolution and pooling helpers loop over _offsets(kernel) alone
    (never the batch, channels or positions): every for statement in them iterates over
    the offsets or over the kernel's sizes."""
    import ast
    import inspect

    from symbackprop.codegen.runtime import array_api_ops as ops

    for fn in (ops._conv_cols, ops._conv, ops._conv_grad_weight, ops._conv_grad_input,
               ops._max_pool2d, ops._max_pool2d_grad, ops._avg_pool2d, ops._avg_pool2d_grad):
        for node in ast.walk(ast.parse(inspect.getsource(fn))):
            if isinstance(node, ast.For):
                text = ast.unparse(node.iter)
                assert "_offsets(" in text or text in ("at", "out") or "enumerate(at)" in text \
                    or "enumerate(offsets)" in text, (fn.__name__, text)


# -- the JAX training script ---------------------------------------------------------------
def _run(folder, devices, *args, timeout=240):
    """python train.py ARGS on `devices` simulated CPU devices, without symbackprop."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "XLA", "JAX"))}
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "train.py", *args], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def _load(path) -> dict:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _epoch_lines(stdout: str) -> list[str]:
    return [re.sub(r"/\d+  ", "  ", re.sub(r"  [0-9.]+ s$", "", ln))
            for ln in stdout.splitlines() if ln.startswith("epoch ")]


@pytest.fixture(scope="module")
def cnn_script(tmp_path_factory):
    """The JAX script (Adam, float64) of a CNN with batch norm and dropout, written by the
    CLI, and 96 images of a task the CNN can learn (which halves of the image are bright)."""
    folder = tmp_path_factory.mktemp("jax_stateful_script")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(96, 1, 6, 6))
    y = (X[:, 0, :3].sum(axis=(1, 2)) > 0).astype(int) + (X[:, 0, 3:].sum(axis=(1, 2)) > 0)
    np.savez(folder / "d.npz", X=X[:64], y=y[:64], X_test=X[64:], y_test=y[64:])
    np.savez(folder / "train_only.npz", X=X[:64], y=y[:64])
    with open(folder / "d.csv", "w") as f:
        f.write(",".join([f"p{i}" for i in range(36)] + ["label"]) + "\n")  # a header
        f.writelines(",".join(map(repr, row.tolist())) + f",{label}\n"
                     for row, label in zip(X[:64].reshape(64, -1), y[:64]))
    g = sb.models.cnn((1, 6, 6), channels=(3,), hidden=(6,), classes=3, batch_norm=True,
                      dropout=0.25)
    sb.save(g, str(folder / "net.json"))
    assert cli_main(["train-script", str(folder / "net.json"), "--backend", "jax",
                     "--optimizer", "adam", "--lr", "0.01", "--batch-size", "16", "--dtype",
                     "float64", "-o", str(folder / "train.py")]) == 0
    return folder


@needs_jax
@pytest.mark.slow
def test_jax_script_keeps_buffers_resumes_bit_identical_and_splits_over_devices(cnn_script):
    """The script's checkpoint holds the running statistics and dropout's key under
    buffers/; 2 epochs then --resume to 4 give the uninterrupted run's parameters,
    optimizer state, running statistics, key and epoch lines to the bit; 4 simulated
    devices give the one-device run's parameters and running statistics (one key for
    all: each device draws its rows' masks); --metrics and --log-grad-norms write the
    NumPy script's rows and lines."""
    folder = cnn_script
    src = (folder / "train.py").read_text()
    assert_ruff_clean(folder, "train.py")
    assert "import symbackprop" not in src and "def train_batch(" in src
    full = _run(folder, 1, "--data", "d.npz", "--epochs", "4", "--out", "full.npz",
                "--metrics", "m.csv", "--log-grad-norms")
    assert full.returncode == 0, full.stderr[-3000:]
    saved = _load(folder / "full.npz")
    assert {k for k in saved if k.startswith("buffers/")} == {
        "buffers/running/bn1.mean", "buffers/running/bn1.var", "buffers/key"}
    assert not np.allclose(saved["buffers/running/bn1.mean"], 0)
    assert saved["buffers/key"].dtype == np.uint32
    lines = _epoch_lines(full.stdout)
    assert len(lines) == 4 and all("test_acc" in ln for ln in lines), full.stdout
    losses = [float(ln.split()[3]) for ln in lines]
    assert losses[-1] < losses[0], losses
    assert full.stdout.count("  grad norms  conv1 ") == 4
    with open(folder / "m.csv") as f:
        rows = [ln.strip().split(",") for ln in f]
    assert rows[0] == ["epoch", "loss", "test_acc", "grad_norm_conv1", "grad_norm_layer1",
                       "grad_norm_layer2"]
    assert [r[0] for r in rows[1:]] == ["1", "2", "3", "4"]
    assert [float(r[1]) for r in rows[1:]] == pytest.approx(losses, rel=1e-5)
    half = _run(folder, 1, "--data", "d.npz", "--epochs", "2", "--out", "half.npz")
    assert half.returncode == 0, half.stderr[-3000:]
    rest = _run(folder, 1, "--data", "d.npz", "--epochs", "4", "--resume", "half.npz",
                "--out", "resumed.npz")
    assert rest.returncode == 0, rest.stderr[-3000:]
    assert _epoch_lines(half.stdout) + _epoch_lines(rest.stdout) == lines
    resumed = _load(folder / "resumed.npz")
    assert sorted(resumed) == sorted(saved)
    for k in saved:
        assert np.array_equal(saved[k], resumed[k]), k
    four = _run(folder, 4, "--data", "d.npz", "--epochs", "4", "--out", "four.npz")
    assert four.returncode == 0, four.stderr[-3000:]
    assert "4 device(s)" in four.stdout
    b = _load(folder / "four.npz")
    for k in (k for k in saved if k.startswith(("params/", "buffers/running/"))):
        scale = float(np.abs(saved[k]).max())
        np.testing.assert_allclose(b[k], saved[k], rtol=0, atol=1e-10 * scale, err_msg=k)


@needs_jax
@pytest.mark.slow
def test_jax_script_reads_csv_as_the_npz_and_refuses_a_bad_cell(cnn_script):
    folder = cnn_script
    for data, out in (("d.csv", "csv.npz"), ("train_only.npz", "npz.npz")):
        r = _run(folder, 1, "--data", data, "--epochs", "1", "--out", out)
        assert r.returncode == 0, r.stderr[-3000:]
        assert "train_acc" in r.stdout
    a, b = _load(folder / "csv.npz"), _load(folder / "npz.npz")
    for k in (k for k in a if k.startswith("params/")):
        assert np.array_equal(a[k], b[k]), k
    (folder / "bad.csv").write_text("a,b\n1,x\n")
    r = _run(folder, 1, "--data", "bad.csv")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert "bad.csv, line 2, column 2: 'x' is not a number" in r.stderr
