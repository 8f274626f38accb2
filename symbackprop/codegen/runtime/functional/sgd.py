"""SGD, functional: w <- w - lr * dL/dw."""

LR = 0.01


def init_state(params):
    """SGD keeps no state."""
    return {}


def update(params, grads, state, lr=LR):
    """One SGD step: new parameters w - lr * dL/dw (those without a gradient as they are)
    and the state."""
    new = dict(params)
    for name, grad in grads.items():
        new[name] = params[name] - lr * grad
    return new, state
