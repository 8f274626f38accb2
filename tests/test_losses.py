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


@pytest.mark.parametrize("label", [5, -1])
def test_cross_entropy_rejects_a_label_outside_the_classes(label):
    """A label is a position in 0..C-1: one outside (even -1, which NumPy indexing would
    wrap to the last class) raises instead of reading another row's logit."""
    step = sb.compile(sb.models.mlp([3, 4, 5]), optimizer="sgd")
    params = step.init_params(0)
    X, y = np.ones((2, 3)), np.array([0, label])
    for call in (lambda: step.forward(X=X, y=y, **params),
                 lambda: step.value_and_grad(X=X, y=y, **params),
                 lambda: step.train_step(params, step.init_state(params), X=X, y=y)):
        with pytest.raises(ValueError, match="invalid entry"):
            call()


@pytest.mark.parametrize("batch", [1, 7, 300])
def test_planned_cross_entropy_matches_the_reference(batch):
    """The training step's fused loss-and-gradient call (flat label positions, row sums by
    a product with ones) against the float64 reference, rows far apart included."""
    step = sb.compile(sb.models.softmax_regression(4, 6), optimizer="sgd", lr=1.0)
    rng = np.random.default_rng(batch)
    X, y = rng.normal(size=(batch, 4)), rng.integers(0, 6, batch)
    X[0] *= 300  # a row far above the others: the per-row shift fallback
    params = step.init_params(1)
    W, b = params["W"].copy(), params["b"].copy()
    loss = step.train_step(params, step.init_state(params), X=X, y=y)
    want_loss, dz = _reference(X @ W + b, y)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-12)
    np.testing.assert_allclose(W - params["W"], X.T @ dz, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(b - params["b"], dz.sum(0), rtol=1e-10, atol=1e-13)
