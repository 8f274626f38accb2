"""SGD with momentum, functional (PyTorch's convention):
v <- momentum * v + dL/dw; w <- w - lr * v."""

LR = 0.01
MOMENTUM = 0.9


def init_state(params):
    """Momentum state: a velocity v per parameter, zero at the start (w * 0: zeros of w's
    shape and dtype in any array library)."""
    return {"v": {name: w * 0 for name, w in params.items()}}


def update(params, grads, state, lr=LR, momentum=MOMENTUM):
    """One momentum step: v <- momentum * v + dL/dw, then w <- w - lr * v. Returns the new
    parameters and state."""
    new, v = dict(params), dict(state["v"])
    for name, grad in grads.items():
        v[name] = momentum * v[name] + grad
        new[name] = params[name] - lr * v[name]
    return new, {"v": v}
