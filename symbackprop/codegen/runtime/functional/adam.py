"""Adam (Kingma & Ba, 2015), functional: bias-corrected moment estimates m, v;
w <- w - lr * m_hat / (sqrt(v_hat) + eps)."""

LR = 0.001
BETA1 = 0.9
BETA2 = 0.999
EPS = 1e-08


def init_state(params):
    """Adam state: the step count t and, per parameter, the moment estimates m and v, zero
    at the start (w * 0: zeros of w's shape and dtype in any array library)."""
    return {"t": 0, "m": {name: w * 0 for name, w in params.items()},
            "v": {name: w * 0 for name, w in params.items()}}


def update(params, grads, state, lr=LR, beta1=BETA1, beta2=BETA2, eps=EPS):
    """One Adam step (Kingma & Ba, 2015), with g = dL/dw: m <- beta1 * m + (1 - beta1) * g,
    v <- beta2 * v + (1 - beta2) * g**2, w <- w - lr * m_hat / (sqrt(v_hat) + eps) where
    m_hat = m / (1 - beta1**t) and v_hat = v / (1 - beta2**t) undo the bias of the zero
    start. Returns the new parameters and state."""
    t = state["t"] + 1
    new, m, v = dict(params), dict(state["m"]), dict(state["v"])
    for name, grad in grads.items():
        m[name] = beta1 * m[name] + (1 - beta1) * grad
        v[name] = beta2 * v[name] + (1 - beta2) * grad * grad
        m_hat = m[name] / (1 - beta1**t)
        v_hat = v[name] / (1 - beta2**t)
        new[name] = params[name] - lr * m_hat / (v_hat**0.5 + eps)
    return new, {"t": t, "m": m, "v": v}
