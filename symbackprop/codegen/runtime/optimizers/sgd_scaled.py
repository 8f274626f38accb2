"""SGD's flat rule when train_step passes lr as the seed of backprop (gradients
arrive as lr * dL/dw)."""

import numpy as np

DTYPE = np.float64
LR = 0.01


def _update_flat(flat, g, state, lr):
    """update() on the flat buffers, in place: w <- w - g, where g already holds
    lr * dL/dw (train_step passes lr as the seed of backprop, which is linear in it)."""
    flat["P"] -= g


def _update_part(part, g, state, lr):
    """_update_flat on one part of the flat buffers (fused update): w <- w - g."""
    part["P"] -= g
