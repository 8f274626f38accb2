"""Adam (Kingma & Ba, 2015), in place on torch tensors: bias-corrected moment estimates
m, v; w <- w - lr * m_hat / (sqrt(v_hat) + eps)."""

try:
    import torch
except ImportError:  # the source is copied without PyTorch
    torch = None

LR = 0.001
BETA1 = 0.9
BETA2 = 0.999
EPS = 1e-08


def init_state(params):
    """Adam state: the step count t and, per parameter, the moment estimates m and v."""
    return {"t": 0, "m": {name: torch.zeros_like(w) for name, w in params.items()},
            "v": {name: torch.zeros_like(w) for name, w in params.items()}}


def update(params, grads, state, lr=LR, beta1=BETA1, beta2=BETA2, eps=EPS):
    """One Adam step, in place (Kingma & Ba, 2015), with g = dL/dw:
    m <- beta1 * m + (1 - beta1) * g, v <- beta2 * v + (1 - beta2) * g**2,
    w <- w - lr * m_hat / (sqrt(v_hat) + eps) where m_hat = m / (1 - beta1**t)
    and v_hat = v / (1 - beta2**t) undo the bias of the zero start. NumPy's rule
    operation by operation, each over all the parameters at once."""
    state["t"] += 1
    t = state["t"]
    names = list(grads)
    gs = [grads[n] for n in names]
    ms, vs = [state["m"][n] for n in names], [state["v"][n] for n in names]
    torch._foreach_mul_(ms, beta1)
    torch._foreach_add_(ms, torch._foreach_mul(gs, 1 - beta1))
    torch._foreach_mul_(vs, beta2)
    torch._foreach_add_(vs, torch._foreach_mul(torch._foreach_mul(gs, 1 - beta2), gs))
    denom = torch._foreach_sqrt(torch._foreach_div(vs, 1 - beta2**t))  # sqrt(v_hat)
    torch._foreach_add_(denom, eps)
    step = torch._foreach_div(ms, 1 - beta1**t)  # m_hat
    torch._foreach_mul_(step, lr)
    torch._foreach_div_(step, denom)
    torch._foreach_sub_([params[n] for n in names], step)
