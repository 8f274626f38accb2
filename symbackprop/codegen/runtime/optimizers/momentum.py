"""SGD with momentum (PyTorch's convention): v <- momentum * v + dL/dw; w <- w - lr * v."""

import numpy as np

from ..flat import flat_views

DTYPE = np.float64
LR = 0.01
MOMENTUM = 0.9


def init_state(params):
    """Momentum state: a velocity v per parameter, zero at the start."""
    return {"v": flat_views({name: np.zeros_like(w) for name, w in params.items()})}


def update(params, grads, state, lr=LR, momentum=MOMENTUM):
    """One momentum step, in place (PyTorch's convention):
    v <- momentum * v + dL/dw, then w <- w - lr * v."""
    for name, grad in grads.items():
        v = state["v"][name]
        v *= momentum
        v += grad
        params[name] -= lr * v


def _update_flat(flat, g, state, lr, momentum=MOMENTUM):
    """update() on the flat buffers (g: the gradients), in place:
    v <- momentum * v + g; w <- w - lr * v."""
    v = flat["S"]["v"]
    v *= momentum
    v += g
    np.multiply(v, lr, out=g)
    flat["P"] -= g



def _update_part(flat, at, g, state, lr, momentum=MOMENTUM):
    """_update_flat on the part of the flat buffers from at (g's size and shape): the fused
    update's rule. g is left as it is (later steps may read it): lr * v goes to scratch."""
    w = flat["P"][at:at + g.size].reshape(g.shape)
    v = flat["S"]["v"][at:at + g.size].reshape(g.shape)
    tmp = flat["scratch"][0][:g.size].reshape(g.shape)
    v *= momentum
    v += g
    np.multiply(v, lr, out=tmp)
    w -= tmp
