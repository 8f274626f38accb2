"""SGD: w <- w - lr * dL/dw."""

import numpy as np

DTYPE = np.float64
LR = 0.01


def init_state(params):
    """SGD keeps no state."""
    return {}


def update(params, grads, state, lr=LR):
    """One SGD step, in place: w <- w - lr * dL/dw for every parameter with a gradient."""
    for name, grad in grads.items():
        params[name] -= lr * grad


def _update_flat(flat, g, state, lr):
    """update() on the flat buffers (g: the gradients), in place with no temporary:
    w <- w - lr * g."""
    g *= lr
    flat["P"] -= g



def _update_part(flat, at, g, state, lr):
    """_update_flat on the part of the flat buffers from at (g's size and shape): the fused
    update's rule. g is left as it is (later steps may read it): lr * g goes to scratch."""
    w = flat["P"][at:at + g.size].reshape(g.shape)
    tmp = flat["scratch"][0][:g.size].reshape(g.shape)
    np.multiply(g, lr, out=tmp)
    w -= tmp
