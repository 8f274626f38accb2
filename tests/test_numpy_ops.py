"""The NumPy helpers of generated code (codegen/runtime/numpy_ops.py), imported and run
directly, each against an independent computation: mpmath at 50 digits for values,
central finite differences for the cross-entropy gradient."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
import sympy as sp

from symbackprop.codegen import runtime
from symbackprop.codegen.lowering import NUMPY
from symbackprop.codegen.runtime import numpy_ops as ops

mpmath.mp.dps = 50
RNG = np.random.default_rng(7)


def _mp_softmax_rows(x: np.ndarray) -> np.ndarray:
    out = np.empty(x.shape)
    for i, row in enumerate(x):
        e = [mpmath.exp(mpmath.mpf(float(v))) for v in row]
        s = mpmath.fsum(e)
        out[i] = [float(v / s) for v in e]
    return out


def _mp_logsumexp(row) -> mpmath.mpf:
    return mpmath.log(mpmath.fsum(mpmath.exp(mpmath.mpf(float(v))) for v in row))


def _mp_xent(logits, labels) -> float:
    terms = [_mp_logsumexp(row) - mpmath.mpf(float(row[k])) for row, k in zip(logits, labels)]
    return float(mpmath.fsum(terms) / len(labels))


# Logits of ordinary size, of a size where exp overflows, and with one row far below
# the batch maximum (the cross-entropy helpers' fallback to row maxima).
CASES = {
    "plain": RNG.normal(size=(5, 4)),
    "large": RNG.normal(size=(5, 4)) * 3 + 1000.0,
    "row_far_below": RNG.normal(size=(5, 4)) + np.array([[0.0], [0], [-100], [0], [0]]),
}


@pytest.mark.parametrize("x", CASES.values(), ids=CASES)
def test_softmax_and_log_softmax(x):
    ref = _mp_softmax_rows(x)
    np.testing.assert_allclose(ops._softmax(x), ref, rtol=1e-13, atol=1e-300)
    np.testing.assert_allclose(ops._softmax(x.T, axis=0), ref.T, rtol=1e-13, atol=1e-300)
    logref = np.array([[float(mpmath.mpf(float(v)) - _mp_logsumexp(row)) for v in row]
                       for row in x])
    np.testing.assert_allclose(ops._log_softmax(x), logref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("x", CASES.values(), ids=CASES)
def test_shifted_exp(x):
    out, sums, m = ops._shifted_exp(x)
    # out / sums is softmax whichever shift was taken, and mean(log sums) + m is the mean
    # of the rows' log-sum-exp (what the loss needs)
    np.testing.assert_allclose(out / sums[:, None], _mp_softmax_rows(x), rtol=1e-13)
    lse = float(mpmath.fsum(_mp_logsumexp(row) for row in x) / len(x))
    np.testing.assert_allclose(np.log(sums).mean() + m, lse, rtol=1e-14)
    assert sums.min() >= 1e-20  # no row sum near 0 (the fallback shifts each row)
    buf = np.empty_like(x)
    assert ops._shifted_exp(x, buf)[0] is buf


@pytest.mark.parametrize("x", CASES.values(), ids=CASES)
def test_softmax_cross_entropy(x):
    labels = RNG.integers(0, x.shape[1], size=len(x))
    assert ops._softmax_cross_entropy(x, labels) == pytest.approx(_mp_xent(x, labels),
                                                                  rel=1e-13)


@pytest.mark.parametrize("x", CASES.values(), ids=CASES)
def test_cross_entropy_gradient_against_finite_differences(x):
    labels = RNG.integers(0, x.shape[1], size=len(x))
    g = 0.7
    out = np.empty_like(x)
    loss = ops._softmax_cross_entropy_with_grad(x, labels, g, out)
    assert loss == pytest.approx(_mp_xent(x, labels), rel=1e-13)
    h = 1e-5
    fd = np.empty_like(x)
    for idx in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += h
        down[idx] -= h
        fd[idx] = g * (ops._softmax_cross_entropy(up, labels)
                       - ops._softmax_cross_entropy(down, labels)) / (2 * h)
    np.testing.assert_allclose(out, fd, atol=1e-8)
    # the gradient op gives the same, into a new array or into out
    np.testing.assert_array_equal(ops._softmax_cross_entropy_grad(x, labels, g), out)
    buf = np.empty_like(x)
    assert ops._softmax_cross_entropy_grad(x, labels, g, out=buf) is buf
    np.testing.assert_array_equal(buf, out)


def test_cross_entropy_checks_labels():
    with pytest.raises(ValueError):
        ops._softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 3]))


def test_float32_stays_float32():
    x = RNG.normal(size=(4, 3)).astype(np.float32)
    labels = np.array([0, 1, 2, 0])
    out = np.empty_like(x)
    loss = ops._softmax_cross_entropy_with_grad(x, labels, np.float32(1), out)
    assert out.dtype == np.float32 and np.asarray(loss).dtype == np.float32
    assert loss == pytest.approx(_mp_xent(x.astype(float), labels), rel=1e-6)


def test_layer_norm():
    x = RNG.normal(size=(3, 5)) * 4 + 2
    eps = 1e-5
    ref = np.empty_like(x)
    for i, row in enumerate(x):
        r = [mpmath.mpf(float(v)) for v in row]
        mean = mpmath.fsum(r) / len(r)
        var = mpmath.fsum((v - mean) ** 2 for v in r) / len(r)
        ref[i] = [float((v - mean) / mpmath.sqrt(var + eps)) for v in r]
    np.testing.assert_allclose(ops._layer_norm(x, eps=eps), ref, rtol=1e-13)


def test_rows_and_ones_are_cached_and_read_only():
    r = ops._rows(4)
    np.testing.assert_array_equal(r, [0, 1, 2, 3])
    assert ops._rows(4) is r and not r.flags.writeable
    o = ops._ones(3, np.float32)
    assert o.dtype == np.float32 and o.tolist() == [1, 1, 1]
    assert ops._ones(3, np.float32) is o and not o.flags.writeable
    assert ops._ones(3, np.float64) is not o


def test_generated_helpers_are_these_functions():
    """What a generated module carries is the source of numpy_ops' functions (the caches'
    definitions first), so the tests above test the generated code."""
    for how in NUMPY.values():
        for name, src in how.helpers.items():
            fn = getattr(ops, name)
            cache = {"_rows": "_ROWS = {}\n\n\n", "_ones": "_ONES = {}\n\n\n"}.get(name, "")
            assert src == cache + runtime.source(fn)
            ns = {"np": np, "DTYPE": np.float64}
            exec(src, ns)  # noqa: S102 -- our own helper source
            assert callable(ns[name])


STABLE = {
    "_sigmoid": lambda v: 1 / (1 + mpmath.exp(-v)),
    "_softplus": lambda v: mpmath.log(1 + mpmath.exp(v)),
    "_sech2": lambda v: mpmath.sech(v) ** 2,
}


@pytest.mark.parametrize("name", STABLE)
def test_stable_functions(name):
    """Accurate to a few ulps everywhere, where the textbook forms overflow or cancel."""
    x = np.array([-1000.0, -710.0, -40.0, -3.0, -1e-8, 0.0, 1e-8, 2.5, 40.0, 710.0, 1000.0])
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # none on the way
        got = getattr(ops, name)(x)
    ref = np.array([float(STABLE[name](mpmath.mpf(float(v)))) for v in x])
    # (mpmath converts a subnormal result such as softplus(-710) to 0.0: the atol)
    np.testing.assert_allclose(got, ref, rtol=4e-16 * 8, atol=1e-300)


def test_every_stable_function_has_a_helper():
    from symbackprop.codegen.lowering import NUMPY_FUNCTIONS, function_helpers
    from symbackprop.ops.stable import FUNCTIONS

    assert set(NUMPY_FUNCTIONS) == {f.__name__ for f in FUNCTIONS}
    for f in FUNCTIONS:
        u = mpmath.mpf("0.3")
        ns = {"np": np, "DTYPE": np.float64}
        for src in function_helpers(f(sp.Symbol("x"))).values():
            exec(src, ns)  # noqa: S102 -- our own helper source
        got = ns[f"_{f.__name__}"](np.array([0.3]))[0]
        want = float(f(sp.Float(u)).evalf(30))
        assert got == pytest.approx(want, rel=1e-14), f.__name__
