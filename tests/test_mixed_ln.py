"""Layer norm in mixed precision, on every backend that has it (numpy, jax, torch): the op
declares ``mixed_float32`` (as ``torch.autocast`` runs ``layer_norm`` in float32), so its
mean and variance, and the statistics and sums of its backward, are computed in float32
from the float16 values, its output and the gradient it passes on rounded to float16; the
statistics that a statement outside them reads (relu's, with layer norm's gradient fused
into it) stay float32, and that statement computes in float32 and rounds once.

The references are independent: layer norm's forward and the network's gradients by
hand in float64 NumPy, from the float16 values the mixed step computes with. What
float16 statistics would give instead is computed here with NumPy's float16 arithmetic,
not with the code under test: rows with a large common offset (the mean rounded to
float16 leaves the centred values off by up to half its spacing) and rows whose squared
deviations pass float16's largest number (65504: the variance inf, the output 0).
"""

from __future__ import annotations

import functools
import importlib.util

import numpy as np
import pytest
from central import softmax_cross_entropy_grad
from mixed_steps import host, step_arrays, unscaled_grads
from standalone import assert_ruff_clean

import symbackprop as sb
from symbackprop.models import dense

BACKENDS = [b for b in ("numpy", "jax", "torch")
            if b == "numpy" or importlib.util.find_spec(b) is not None]
D, CLASSES, EPS = 16, 4, 1e-5
TOL = 1e-2  # gradients, relative to their largest entry: float16 rounds after every op
TOL_H = 2e-3  # layer norm's output (|h| < 4): float16's half spacing below 4 is 2**-10


def _net(first_dense: bool) -> sb.Graph:
    """``h = layer_norm(X)`` (or of ``z = X @ W1 + b1`` with ``first_dense``), an output;
    then a learned scale ``1 + g1`` and shift ``c1``, ``@ W2 + b2``, softmax
    cross-entropy."""
    g = sb.Graph("ln_dense" if first_dense else "ln_head")
    X = g.input("X", shape=("N", D))
    z = dense(g, X, D, D, 1) if first_dense else X
    h = g.output("h", sb.layer_norm(z))
    u = h * (g.param("g1", shape=(D,)) + 1.0) + g.param("c1", shape=(D,))
    logits = g.output("logits", dense(g, u, D, CLASSES, 2))
    y = g.input("y", shape=("N",), dtype="int")
    g.output("L", sb.softmax_cross_entropy(logits, y))
    return g


@functools.cache
def _module(backend: str, first_dense: bool):
    return sb.compile(_net(first_dense), optimizer="sgd", lr=0.05, backend=backend,
                      precision="mixed").module


def _mixed(backend: str, first_dense: bool, params: dict, X, y, scale=2.0**10):
    """The mixed module's layer norm output (float16) and its gradients, unscaled to
    float64, for float32 parameters and data."""
    M = _module(backend, first_dense)
    p = step_arrays(backend, params)
    data = step_arrays(backend, {"X": X, "y": y})
    h = host(M.forward(**data, **p)["h"])
    step = "planned" if backend == "numpy" else "value_and_grad"
    return h, unscaled_grads(M, backend, step, p, data, scale)


def _ln64(x: np.ndarray):
    """Layer norm over the last axis in float64: (output, 1/sqrt(variance + eps))."""
    x = x.astype(np.float64)
    xc = x - x.mean(axis=-1, keepdims=True)
    rstd = 1 / np.sqrt((xc * xc).mean(axis=-1, keepdims=True) + EPS)
    return xc * rstd, rstd


def _ln16(x16: np.ndarray) -> np.ndarray:
    """Layer norm computed in float16 arithmetic (NumPy: each op rounded to float16)."""
    assert x16.dtype == np.float16
    xc = x16 - x16.mean(axis=-1, keepdims=True, dtype=np.float16)
    with np.errstate(over="ignore", invalid="ignore"):
        var = (xc * xc).mean(axis=-1, keepdims=True, dtype=np.float16)
        return xc / np.sqrt(var + np.float16(EPS))


def _grads64(params: dict, X: np.ndarray, y: np.ndarray, z: np.ndarray | None = None):
    """The network's gradients by hand in float64, layer norm's input ``z`` given (the
    float16 values the mixed step normalizes) or ``X``."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    X = X.astype(np.float64)
    h, rstd = _ln64(X if z is None else z)
    u = h * (1 + p["g1"]) + p["c1"]
    logits = u @ p["W2"] + p["b2"]
    dlogits = softmax_cross_entropy_grad(logits, y)
    du = dlogits @ p["W2"].T
    grads = {"W2": u.T @ dlogits, "b2": dlogits.sum(axis=0), "g1": (du * h).sum(axis=0),
             "c1": du.sum(axis=0)}
    if "W1" in p:  # layer norm's backward: rstd (dh - mean(dh) - h mean(dh h))
        dh = du * (1 + p["g1"])
        dz = rstd * (dh - dh.mean(axis=-1, keepdims=True)
                     - h * (dh * h).mean(axis=-1, keepdims=True))
        grads |= {"W1": X.T @ dz, "b1": dz.sum(axis=0)}
    return h, grads


def _params(first_dense: bool, seed: int = 0) -> dict:
    return {k: np.asarray(host(v), np.float32)
            for k, v in _module("numpy", first_dense).init_params(seed).items()}


def _data(n=32, seed=0, offset=0.0, spread=1.0):
    rng = np.random.default_rng(seed)
    X = (rng.normal(size=(n, D)) * spread + offset).astype(np.float32)
    return X, X[:, :CLASSES].argmax(axis=1)


def _assert_grads_close(backend, g16: dict, g64: dict) -> None:
    assert sorted(g16) == sorted(g64)
    for k, ref in g64.items():
        assert np.isfinite(g16[k]).all(), (backend, k)
        err = np.abs(g16[k] - ref).max() / np.abs(ref).max()
        assert err <= TOL, (backend, k, err)


# -- a large common offset: the float16 mean's rounding off-centres every value ------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_layer_norm_of_offset_rows_in_float32(backend):
    """Rows of mean ~100, spread 0.5 (float16's spacing at 100 is 1/16): the mixed step's
    layer norm is float64's of the same float16 input to float16's rounding of the
    output, and the gradients float64's within float16's tolerance; NumPy's float16
    arithmetic, whose mean is rounded to the spacing, is visibly worse."""
    X, y = _data(offset=100.0, spread=0.5)
    X16 = X.astype(np.float16)  # what the mixed step normalizes
    params = _params(False)
    h, g16 = _mixed(backend, False, params, X, y)
    ref, g64 = _grads64(params, X16, y)
    assert h.dtype == np.float16 and np.abs(ref).max() < 4  # TOL_H's range
    err = np.abs(h.astype(np.float64) - ref).max()
    assert err <= TOL_H, (backend, err)
    half = np.abs(_ln16(X16).astype(np.float64) - ref).max()
    assert half > 10 * TOL_H, half  # what float16 statistics would have given
    _assert_grads_close(backend, g16, g64)


# -- deviations above 256: their squares pass float16's largest number ---------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_layer_norm_of_wide_rows_in_float32_backward_included(backend):
    """``z = X @ W1 + b1`` spread by hundreds: float16 holds z, but its squared deviations
    pass 65504, so a float16 variance is inf and the output 0; in float32 the mixed
    step's layer norm is float64's of the same float16 z, and every gradient, W1's and
    b1's through layer norm's backward included, float64's within float16's tolerance."""
    X, y = _data(seed=1)
    params = _params(True)
    params["W1"] = params["W1"] * np.float32(400.0)
    z16 = (X.astype(np.float16) @ params["W1"].astype(np.float16)
           + params["b1"].astype(np.float16))  # NumPy float16: each op rounded once
    assert np.abs(z16 - z16.mean(axis=-1, keepdims=True)).max() > 256
    h, g16 = _mixed(backend, True, params, X, y)
    ref, g64 = _grads64(params, X, y, z=z16.astype(np.float64))
    assert np.abs(ref).max() < 4  # TOL_H's range
    err = np.abs(h.astype(np.float64) - ref).max()
    assert err <= TOL_H, (backend, err)
    half = _ln16(z16)
    assert not np.isfinite(half).all() or np.abs(half.astype(np.float64) - ref).max() > 0.5
    _assert_grads_close(backend, g16, g64)


# -- relu before layer norm: its gradient fused into relu's statement -----------------------
STEPS = [(b, f) for b in BACKENDS for f in (("planned", "value_and_grad") if b == "numpy"
                                               else ("value_and_grad",))]


@functools.cache
def _mlp_module(backend: str):
    return sb.compile(sb.models.mlp([D, 2 * D, CLASSES], layer_norm=True), optimizer="sgd",
                      lr=0.05, backend=backend, precision="mixed").module


def _mlp_mixed(backend: str, step: str, params: dict, X, y, scale=2.0**10) -> dict:
    """The gradients of the mixed layer-norm MLP, unscaled to float64: NumPy's planned step
    (scaled_grads) or value_and_grad (NumPy's unscaled, JAX's and torch's times scale)."""
    M = _mlp_module(backend)
    p = step_arrays(backend, params)
    data = step_arrays(backend, {"X": X, "y": y})
    return unscaled_grads(M, backend, step, p, data, scale)


def _mlp_grads64(params: dict, X: np.ndarray, y: np.ndarray):
    """``h1 = layer_norm(relu(X @ W1 + b1))``, ``h1 @ W2 + b2``, softmax cross-entropy: its
    gradients by hand in float64, from ``a1 = relu(X @ W1 + b1)`` as float16 computes it
    (the values the mixed step normalizes). Returns (a1, gradients)."""
    p16 = {k: np.asarray(v).astype(np.float16) for k, v in params.items()}
    a16 = np.maximum(X.astype(np.float16) @ p16["W1"] + p16["b1"], np.float16(0))
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    a = a16.astype(np.float64)
    h, rstd = _ln64(a)
    logits = h @ p["W2"] + p["b2"]
    dlogits = softmax_cross_entropy_grad(logits, y)
    dh = dlogits @ p["W2"].T
    dz = rstd * (dh - dh.mean(axis=-1, keepdims=True)
                 - h * (dh * h).mean(axis=-1, keepdims=True)) * (a > 0)
    Xd = X.astype(np.float16).astype(np.float64)
    return a16, {"W1": Xd.T @ dz, "b1": dz.sum(axis=0), "W2": h.T @ dlogits,
                 "b2": dlogits.sum(axis=0)}


@pytest.mark.parametrize(("backend", "step"), STEPS)
def test_mlp_layer_norm_after_relu_of_wide_rows_backward_in_float32(backend, step):
    """``mlp(layer_norm=True)``: layer norm's gradient is fused into relu's statement
    (``dz1 = (var + eps)**-0.5 * (...) * (a1 > 0)``), which reads the backward's
    statistics. With W1 scaled by 400, rows of a1 spread by more than 256: the variance
    passes float16's largest number (65504), so read in float16 it is inf and dz1 0; read
    in float32, every gradient (W1's and b1's through that statement) is float64's
    within float16's tolerance, on the planned NumPy step and every value_and_grad."""
    X, y = _data(seed=3)
    params = {k: np.asarray(host(v), np.float32)
              for k, v in _mlp_module("numpy").init_params(0).items()}
    params["W1"] = params["W1"] * np.float32(400.0)
    a16, g64 = _mlp_grads64(params, X, y)
    var = a16.astype(np.float64).var(axis=-1)
    assert var.max() > 65504 and np.isfinite(a16).all()  # float16 holds a1, not its variance
    g16 = _mlp_mixed(backend, step, params, X, y)
    _assert_grads_close(f"{backend} {step}", g16, g64)


# -- training -------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_mlp_with_layer_norm_trains_in_mixed_precision_on_offset_data(backend):
    """``sb.models.mlp(..., layer_norm=True)`` trained by the mixed step on four clusters
    shifted away from 0: at most the first scale's overflows skipped, the loss a tenth
    of its start after 40 steps (the float32 step's falls as far)."""
    g = sb.models.mlp([D, 32, 32, CLASSES], layer_norm=True)
    M = sb.compile(g, optimizer="adam", lr=0.01, backend=backend, precision="mixed").module
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(CLASSES, D)) * 2.0
    params = M.init_params(0)
    state = M.init_state(params)
    losses = []
    for t in range(40):
        yv = rng.integers(0, CLASSES, 32)
        Xv = (centres[yv] + rng.normal(size=(32, D)) + 5.0).astype(np.float32)
        batch = step_arrays(backend, {"X": Xv, "y": yv})
        out = M.train_step(params, state, batch["X"], batch["y"])
        if backend == "jax":
            loss, params, state = out
        else:
            loss = out
        losses.append(float(loss))
    assert int(state["skipped"]) <= 2  # the first scale, 2**16, may overflow once or twice
    assert np.mean(losses[-5:]) < 0.1 * np.mean(losses[:5]), losses


def test_generated_code_runs_layer_norm_in_float32_and_passes_ruff(tmp_path):
    """The forward's call reads its input cast to float32 and is rounded back (its eps is
    a keyword, which _in_float32(f, *args) does not pass); the float32 module has no
    cast."""
    g = _net(True)
    casts = {"numpy": ".astype", "jax": ".astype", "torch": ".to"}
    for backend in BACKENDS:
        c = casts[backend]
        src = sb.train_step(g, optimizer="adam", precision="mixed", backend=backend)
        assert (f"h = _layer_norm(add_1{c}(MASTER), eps=1e-05){c}(DTYPE)  # in float32, "
                "rounded to DTYPE") in src, backend
        assert "_in_float32(_layer_norm" not in src
        (tmp_path / f"step_{backend}.py").write_text(src)
        plain = sb.train_step(g, optimizer="adam", dtype="float32", backend=backend)
        assert "MASTER" not in plain and "h = _layer_norm(add_1, eps=1e-05)" in plain
    assert_ruff_clean(tmp_path, *(f"step_{b}.py" for b in BACKENDS))


def test_a_keyword_call_with_no_half_precision_array_to_cast_is_refused():
    """A float32 op's call with keywords runs in float32 by casting its half-precision
    arguments; one that reads none would stay in the half dtype unseen: refused."""
    from symbackprop.codegen.mixed import _rewrite_float32, float32_nodes
    from symbackprop.codegen.module import build_model
    from symbackprop.errors import CodegenError

    m = build_model(_net(True), optimizer="sgd", precision="mixed")
    ops, vjp = float32_nodes(m.em.j)
    (h,) = ops
    line = f"{m.em.namer(h)} = _layer_norm(np.ones((2, 16)), eps=1e-05)"
    with pytest.raises(CodegenError, match=r"computes .* in float32, but its call reads no "
                                           r"half-precision array to cast"):
        _rewrite_float32(m.em, [line], ops, vjp, ".astype({})", ("_in_float32", ""))
    body = [f"{m.em.namer(h)} = _layer_norm(add_1, eps=1e-05)"]
    _rewrite_float32(m.em, body, ops, vjp, ".astype({})", ("_in_float32", ""))
    assert body[0].startswith("h = _layer_norm(add_1.astype(MASTER), eps=1e-05).astype(DTYPE)")


def test_a_statement_reading_a_float32_statistic_is_rewritten_or_refused():
    """The statement that reads the backward's float32 statistics (relu's, layer norm's
    gradient fused into it) computes in float32 and is rounded once to DTYPE; one that
    writes into a buffer (out=) would round to float16 unseen: refused instead."""
    from symbackprop.codegen.mixed import _rewrite_float32, float32_nodes
    from symbackprop.codegen.module import build_model
    from symbackprop.errors import CodegenError

    m = build_model(sb.models.mlp([6, 8, 3], layer_norm=True), optimizer="sgd",
                    precision="mixed")
    ops, vjp = float32_nodes(m.em.j)
    body = ["dz1 = (mean_2 + 1e-05)**(-0.5) * (dh1 - h1 * mean_4) * (a1 > 0)  # dL/dz1",
            "dz1[...] = mean_2 * dh1"]
    _rewrite_float32(m.em, body, ops, vjp, ".astype({})", ("_in_float32", ""))
    assert body == [("dz1 = ((mean_2 + 1e-05)**(-0.5) * (dh1.astype(MASTER) - h1.astype(MASTER) "
                     "* mean_4) "
                     "* (a1.astype(MASTER) > 0)).astype(DTYPE)  # dL/dz1; in float32, "
                     "rounded to DTYPE"),
                    "dz1[...] = mean_2 * dh1.astype(MASTER)  # in float32, rounded to DTYPE"]
    with pytest.raises(CodegenError, match=r"keeps 'mean_2' in float32, but a statement that "
                                           r"is not rewritten reads it"):
        _rewrite_float32(m.em, ["np.add((1e-05), mean_2, out=_ws[6])"], ops, vjp,
                         ".astype({})", ("_in_float32", ""))
