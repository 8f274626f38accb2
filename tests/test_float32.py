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
