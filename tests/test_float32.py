"""float32 end to end: no intermediate of the generated step is silently float64."""

import sys

import numpy as np
import pytest

import symbackprop as sb
from symbackprop.testing import random_inputs


def _locals_at_return(fn, kwargs):
    """Run ``fn`` and capture its local variables just before it returns."""
    seen = {}

    def tracer(frame, event, arg):
        if frame.f_code is fn.__code__ and event == "return":
            seen.update(frame.f_locals)
        return tracer if frame.f_code is fn.__code__ else None

    old = sys.gettrace()
    sys.settrace(tracer)
    try:
        out = fn(**kwargs)
    finally:
        sys.settrace(old)
    return out, seen


def _float_arrays(values):
    return {k: v for k, v in values.items()
            if isinstance(v, (np.ndarray, np.generic)) and v.dtype.kind == "f"}


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "softplus"])
@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "mse"])
def test_no_upcast(activation, loss):
    g = sb.models.mlp([12, 8, 8, 4], activation=activation, loss=loss)
    fn = sb.compile(g, dtype="float32")
    arrays = {k: (v.astype(np.float32) if v.dtype.kind == "f" else v)
              for k, v in random_inputs(g, {"N": 6}).items()}
    (loss_value, grads), local = _locals_at_return(fn.module.value_and_grad, arrays)
    floats = _float_arrays(local)
    assert floats, "the tracer saw no arrays"
    wide = {k: v.dtype for k, v in floats.items() if v.dtype != np.float32}
    assert not wide, f"float64 intermediates: {wide}"
    assert np.asarray(loss_value).dtype == np.float32
    assert all(v.dtype == np.float32 for v in grads.values())
    # and the numbers agree with float64 to float32 precision
    l64, g64 = sb.compile(g).value_and_grad(**random_inputs(g, {"N": 6}))
    np.testing.assert_allclose(loss_value, l64, rtol=1e-4)
    for k in grads:
        np.testing.assert_allclose(grads[k], g64[k], rtol=2e-3, atol=1e-5)


def test_float32_inputs_given_as_float64_are_cast():
    g = sb.models.mlp([5, 3])
    fn = sb.compile(g, dtype="float32")
    loss, grads = fn.value_and_grad(**random_inputs(g, {"N": 4}))
    assert np.asarray(loss).dtype == np.float32
    assert grads["W1"].dtype == np.float32


@pytest.mark.parametrize("sizes", [[6, 5, 3], [6, 200, 3]])  # np.dot and np.matmul products
def test_float32_train_step_casts_a_float64_batch_or_a_list(sizes):
    """The planned train_step takes the data as value_and_grad does: a float64 batch (or
    nested lists) for a float32 step is cast once, and the step is the one for the float32
    batch, whichever NumPy call its products use."""
    g = sb.models.mlp(sizes)
    fn = sb.compile(g, optimizer="sgd", lr=0.1, dtype="float32")
    assert "loss_and_grads_into" in fn.source
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(7, 6)), rng.integers(0, 3, size=7)
    results = []
    for batch in (X.astype(np.float32), X, X.tolist()):
        params = fn.init_params(0)
        loss = fn.train_step(params, fn.init_state(params), X=batch, y=list(y))
        results.append((loss, params))
    for loss, params in results[1:]:
        assert loss == results[0][0]
        for k, v in params.items():
            assert v.dtype == np.float32
            np.testing.assert_array_equal(v, results[0][1][k])
