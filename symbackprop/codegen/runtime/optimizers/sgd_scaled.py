"""SGD's flat rule when train_step passes lr as the seed of backprop (gradients
arrive as lr * dL/dw)."""

import numpy as np

DTYPE = np.float64
LR = 0.01


def _update_flat(flat, g, state, lr):
    """update() on the flat buffers, in place: w <- w - g, where g already holds
    lr * dL/dw (train_step passes lr as the seed of backprop, which is linear in it)."""
    flat["P"] -= g



def _update_part(flat, at, g, state, lr):
    """_update_flat on the part of the flat buffers from at (g's size and shape): the fused
    update's rule, w <- w - g."""
    w = flat["P"][at:at + g.size].reshape(g.shape)
    w -= g
