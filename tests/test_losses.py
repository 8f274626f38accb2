"""The cross-entropy helpers stay finite and exact where naive formulas overflow or
underflow: rows far apart, a label far below its row's maximum, float32."""

import numpy as np
import pytest

import symbackprop as sb


def _reference(z, y):
    z = z.astype(np.float64)
    lp = z - z.max(1, keepdims=True)
    lp -= np.log(np.exp(lp).sum(1, keepdims=True))
    p = np.exp(lp)
    p[np.arange(len(y)), y] -= 1
    return -lp[np.arange(len(y)), y].mean(), p / len(y)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cross_entropy_extreme_logits(dtype):
    g = sb.Graph()
    z = g.param("z", shape=("N", 5))
    y = g.input("y", shape=("N",), dtype="int")
    g.output("L", sb.softmax_cross_entropy(z, y))
    fn = sb.compile(g, dtype=dtype)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 5))
    labels = np.array([0, 1, 2, 3, 4, 0])
    logits[0] += 500  # rows hundreds apart: one batch-wide shift would underflow row 1
    logits[1] -= 500
    logits[2, 2] -= 150  # a confident wrong prediction: exp underflows at the label
    want_loss, want_grad = _reference(logits.astype(dtype), labels)
    loss, grads = fn.value_and_grad(z=logits, y=labels)
    assert np.isfinite(loss)
    rtol = 1e-12 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(loss, want_loss, rtol=rtol)
    np.testing.assert_allclose(grads["z"], want_grad, rtol=rtol, atol=1e-7)
