"""SGD with momentum, in place on torch tensors (PyTorch's convention):
v <- momentum * v + dL/dw; w <- w - lr * v."""

try:
    import torch
except ImportError:  # the source is copied without PyTorch
    torch = None

LR = 0.01
MOMENTUM = 0.9


def init_state(params):
    """Momentum state: a velocity v per parameter, zero at the start."""
    return {"v": {name: torch.zeros_like(w) for name, w in params.items()}}


def update(params, grads, state, lr=LR, momentum=MOMENTUM):
    """One momentum step, in place (PyTorch's convention):
    v <- momentum * v + dL/dw, then w <- w - lr * v."""
    names = list(grads)
    vs = [state["v"][n] for n in names]
    torch._foreach_mul_(vs, momentum)
    torch._foreach_add_(vs, [grads[n] for n in names])
    torch._foreach_add_([params[n] for n in names], vs, alpha=-lr)
