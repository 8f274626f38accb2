"""Adam in a generated JAX training module: the functional runtime's
(:mod:`symbackprop.codegen.runtime.functional.adam`), with the step count ``t`` an int32
array (``update`` adds 1 to it and returns int32 again) instead of a Python ``0`` (see the
package's docstring), and the bias corrections in each moment's dtype: ``beta1**t`` of an
int32 ``t`` is float64 in JAX's 64-bit mode (which a float64 module turns on for the whole
process), and would turn float32 parameters float64 after the first step."""

LR = 0.001
BETA1 = 0.9
BETA2 = 0.999
EPS = 1e-08

try:
    import jax.numpy as jnp
except ImportError:  # generating JAX source needs no JAX; running this function does
    jnp = None


def init_state(params):
    """Adam state: the step count t and, per parameter, the moment estimates m and v, zero
    at the start (w * 0: zeros of w's shape, dtype and placement). t is an int32 array, as
    every step returns it: a Python 0 would give the jitted train_step a second signature
    after the first step."""
    return {"t": jnp.zeros((), jnp.int32), "m": {name: w * 0 for name, w in params.items()},
            "v": {name: w * 0 for name, w in params.items()}}


def update(params, grads, state, lr=LR, beta1=BETA1, beta2=BETA2, eps=EPS):
    """One Adam step (Kingma & Ba, 2015), with g = dL/dw: m <- beta1 * m + (1 - beta1) * g,
    v <- beta2 * v + (1 - beta2) * g**2, w <- w - lr * m_hat / (sqrt(v_hat) + eps) where
    m_hat = m / (1 - beta1**t) and v_hat = v / (1 - beta2**t) undo the bias of the zero
    start, the corrections cast to the moments' dtype. Returns the new parameters and
    state."""
    t = state["t"] + 1
    new, m, v = dict(params), dict(state["m"]), dict(state["v"])
    for name, grad in grads.items():
        m[name] = beta1 * m[name] + (1 - beta1) * grad
        v[name] = beta2 * v[name] + (1 - beta2) * grad * grad
        m_hat = m[name] / (1 - beta1**t).astype(m[name].dtype)
        v_hat = v[name] / (1 - beta2**t).astype(v[name].dtype)
        new[name] = params[name] - lr * m_hat / (v_hat**0.5 + eps)
    return new, {"t": t, "m": m, "v": v}
