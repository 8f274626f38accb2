"""SGD, in place on torch tensors: w <- w - lr * dL/dw."""

try:
    import torch
except ImportError:  # the source is copied without PyTorch
    torch = None

LR = 0.01


def init_state(params):
    """SGD keeps no state."""
    return {}


def update(params, grads, state, lr=LR):
    """One SGD step, in place: w <- w - lr * dL/dw for every parameter with a gradient (one
    multi-tensor call)."""
    names = list(grads)
    torch._foreach_add_([params[n] for n in names], [grads[n] for n in names], alpha=-lr)
