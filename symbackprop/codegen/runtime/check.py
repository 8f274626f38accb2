"""The exact nan/inf check of a training step (``train_step`` raises through it)."""

import numpy as np


def check_finite(loss, grads):
    """Raise FloatingPointError if the loss or a gradient holds nan or inf."""
    if not np.isfinite(loss):
        raise FloatingPointError(f"the loss is {float(loss)}")
    for name, grad in grads.items():
        bad = np.size(grad) - np.count_nonzero(np.isfinite(grad))
        if bad:
            raise FloatingPointError(f"the gradient dL/d{name} has {bad} nan or inf entries")
