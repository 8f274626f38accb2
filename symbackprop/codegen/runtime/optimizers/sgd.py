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


def _update_part(part, g, state, lr):
    """_update_flat on one part of the flat buffers (fused update: g is the part's gradient,
    which later steps may still read, so the scratch part["tmp"][0] takes lr * g)."""
    np.multiply(g, lr, out=part["tmp"][0])
    part["P"] -= part["tmp"][0]
