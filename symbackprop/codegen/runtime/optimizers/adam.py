"""Adam (Kingma & Ba, 2015): bias-corrected moment estimates m, v;
w <- w - lr * m_hat / (sqrt(v_hat) + eps)."""

import numpy as np

from ..flat import flat_views

DTYPE = np.float64
LR = 0.001
BETA1 = 0.9
BETA2 = 0.999
EPS = 1e-08


def init_state(params):
    """Adam state: the step count t and, per parameter, the moment estimates m and v."""
    return {
        "t": 0,
        "m": flat_views({name: np.zeros_like(w) for name, w in params.items()}),
        "v": flat_views({name: np.zeros_like(w) for name, w in params.items()}),
    }


def update(params, grads, state, lr=LR, beta1=BETA1, beta2=BETA2, eps=EPS):
    """One Adam step, in place (Kingma & Ba, 2015), with g = dL/dw:
    m <- beta1 * m + (1 - beta1) * g, v <- beta2 * v + (1 - beta2) * g**2,
    w <- w - lr * m_hat / (sqrt(v_hat) + eps) where m_hat = m / (1 - beta1**t)
    and v_hat = v / (1 - beta2**t) undo the bias of the zero start."""
    state["t"] += 1
    t = state["t"]
    for name, grad in grads.items():
        m, v = state["m"][name], state["v"][name]
        m *= beta1
        m += (1 - beta1) * grad
        v *= beta2
        v += (1 - beta2) * grad * grad
        m_hat = m / (1 - beta1**t)
        v_hat = v / (1 - beta2**t)
        params[name] -= lr * m_hat / (np.sqrt(v_hat) + eps)


def _update_flat(flat, g, state, lr, beta1=BETA1, beta2=BETA2, eps=EPS):
    """update() on the flat buffers (g: the gradients), in place, the same arithmetic in
    the same order."""
    state["t"] += 1
    t = state["t"]
    m, v, tmp = flat["S"]["m"], flat["S"]["v"], flat.get("tmp")
    if tmp is None:  # scratch for the moments, made once
        tmp = flat["tmp"] = np.empty_like(g)
    m *= beta1
    np.multiply(g, 1 - beta1, out=tmp)
    m += tmp
    v *= beta2
    np.multiply(g, 1 - beta2, out=tmp)
    tmp *= g
    v += tmp
    np.divide(v, 1 - beta2**t, out=tmp)  # v_hat
    np.sqrt(tmp, out=tmp)
    tmp += eps
    np.divide(m, 1 - beta1**t, out=g)  # m_hat
    g *= lr
    g /= tmp
    flat["P"] -= g



def _update_part(flat, at, g, state, lr, beta1=BETA1, beta2=BETA2, eps=EPS):
    """_update_flat on the part of the flat buffers from at (g's size and shape): the fused
    update's rule, the same arithmetic in the same order. The step count t was counted
    once for the step, after the loss check; g is left as it is (later steps may read
    it): what _update_flat writes into tmp and g goes to two scratch arrays."""
    t = state["t"]
    part = slice(at, at + g.size)
    w = flat["P"][part].reshape(g.shape)
    m, v = (flat["S"][k][part].reshape(g.shape) for k in ("m", "v"))
    tmp, step = (s[:g.size].reshape(g.shape) for s in flat["scratch"])
    m *= beta1
    np.multiply(g, 1 - beta1, out=tmp)
    m += tmp
    v *= beta2
    np.multiply(g, 1 - beta2, out=tmp)
    tmp *= g
    v += tmp
    np.divide(v, 1 - beta2**t, out=tmp)  # v_hat
    np.sqrt(tmp, out=tmp)
    tmp += eps
    np.divide(m, 1 - beta1**t, out=step)  # m_hat
    step *= lr
    step /= tmp
    w -= step
