"""Mixed precision's fixed parts, as a generated training module carries them.

The forward and backward pass run in float16 (``DTYPE``) on float16 copies of float32
master parameters (``MASTER``); the optimizer updates the masters and keeps its state in
float32. Dynamic loss scaling follows ``torch.amp.GradScaler``: the loss is multiplied by
``state["scale"]`` before backprop (the gradients come out multiplied by it, so that
small ones stay above float16's smallest number); a step whose scaled gradients hold
inf or nan is skipped and the scale halved; after ``GROWTH_INTERVAL`` good steps in a
row the scale doubles. :mod:`symbackprop.codegen.mixed` copies these functions; the
globals below stand in for the ones a generated module defines.
"""

import math

import numpy as np

from .check import check_finite

DTYPE = np.float16  # the forward and backward pass
MASTER = np.float32  # master parameters, optimizer state, the update
LOSS_SCALE = 65536.0  # the first scale: 2**16, as torch.amp.GradScaler
GROWTH_FACTOR = 2.0
BACKOFF_FACTOR = 0.5
GROWTH_INTERVAL = 2000  # good steps in a row before the scale grows
TRAINED = ()  # the parameters train_step updates
FOLDED = ()  # layers with the bias in the product


def _optimizer_state(params):
    """Stand-in for the optimizer's init_state (a generated module copies the real one)."""
    return {}


def _update_flat(flat, g, state, lr):
    """Stand-in for the optimizer's flat rule: SGD."""
    g *= lr
    flat["P"] -= g


def init_state(params):
    """The optimizer's state (_optimizer_state, float32) and the dynamic loss scaler's:
    scale (the loss is multiplied by it before backprop), good_steps (steps since the
    scale last changed) and skipped (steps skipped on overflow, in all)."""
    return {**_optimizer_state(params), "scale": LOSS_SCALE, "good_steps": 0, "skipped": 0}


def _loss_in_float32(with_grad, *args):
    """with_grad(*args, out): a loss that writes its gradient into out, computed in
    float32 from float16 arguments (exp and its sums need float32's range: a row sum of
    exp(logits - max) can fall below float16's smallest number), the gradient then
    rounded into out (float16). Returns the loss, float32."""
    *args, out = args
    args = [a.astype(MASTER) if isinstance(a, np.ndarray) and a.dtype == DTYPE else a
            for a in args]
    grad = np.empty(out.shape, MASTER)
    loss = with_grad(*args, grad)
    out[...] = grad
    return loss


def _in_float32(f, *args):
    """f(*args) computed in float32: the DTYPE arrays among args cast to MASTER first
    (batch norm: its mean and variance, and the float32 running statistics it updates,
    want float32's range and precision). The caller rounds the result to DTYPE."""
    return f(*(a.astype(MASTER) if isinstance(a, np.ndarray) and a.dtype == DTYPE else a
               for a in args))


def _half(flat, params):
    """The float16 copies of the parameters for one forward and backward pass: the
    trained ones (and their [W; b] blocks) are views of one DTYPE buffer, cast from the
    masters' flat buffer in one call every step; the others are cast on every call."""
    h = flat.get("half")
    if h is None:
        H = np.empty(flat["P"].size, DTYPE)
        h, at, start = {"H": H}, {}, 0
        for name in TRAINED:
            n = np.size(params[name])
            h[name], at[name], start = H[start:start + n].reshape(np.shape(params[name])), \
                start, start + n
        if FOLDED:  # variant: folded
            for w, b in FOLDED:  # [W; b], as _flat makes it from the masters
                h[w, b] = H[at[w]:at[b] + np.size(params[b])].reshape(-1, np.size(params[b]))
        flat["half"] = h
    h["H"][...] = flat["P"]  # float32 -> float16, rounded to nearest
    half = dict(h)
    for name, w in params.items():
        if name not in half:
            half[name] = np.asarray(w, dtype=DTYPE)
    return half


def _scaled_update(flat, G, grads, loss, state, lr):
    """The update from the scaled float16 gradients G (grads: views of G by parameter).
    Inf or nan in G (overflow): halve the scale and skip the step, leaving the parameters
    and the optimizer state untouched. Else unscale into float32 (G / scale), run the
    optimizer's flat rule on the masters, and double the scale after GROWTH_INTERVAL good
    steps in a row. A nan or inf loss raises FloatingPointError, changing nothing: the
    scale does not enter the loss, so a smaller one cannot help."""
    if not math.isfinite(loss):
        check_finite(loss, grads)
    overflow = not np.isfinite(G).all()
    g = flat.get("g32")
    if g is None:  # the unscaled gradients, made once
        g = flat["g32"] = np.empty(G.size, MASTER)
    if not overflow:
        np.multiply(G, 1.0 / state["scale"], out=g, dtype=MASTER)  # in float32: no underflow
    _scaler_step(flat, g, state, lr, overflow)
    return float(loss)


def _scaler_step(flat, g, state, lr, overflow):
    """The loss scaler's decision. On overflow: halve the scale and skip the step, leaving
    the parameters and the optimizer state untouched. Else: the optimizer's flat rule on
    the masters with the unscaled float32 gradients g, and the scale doubled after
    GROWTH_INTERVAL good steps in a row."""
    if overflow:
        state["scale"] *= BACKOFF_FACTOR
        state["good_steps"] = 0
        state["skipped"] += 1
        return
    _update_flat(flat, g, state, lr)
    state["good_steps"] += 1
    if state["good_steps"] >= GROWTH_INTERVAL:
        state["scale"] *= GROWTH_FACTOR
        state["good_steps"] = 0


def allreduce(G, loss, share):
    """Stand-in for the MPI training script's allreduce (runtime/script.py): G times share,
    summed over the ranks in place; one process has nothing to add."""
    if share != 1.0:
        G *= share
    return loss


def _summed_update(flat, G, grads, loss, state, lr):
    """_scaled_update under MPI (a data-parallel script), where every rank takes the same
    decision on the same numbers. G: this rank's float16 gradients scaled by its share of
    the global batch times the scale (train_step seeds backprop with both, so that every
    float16 value of the backward pass is the one process's for the same rows), or None
    for a rank with no rows, which adds zeros. G is unscaled into float32, with one more
    entry that carries the loss when it is nan or inf, and one Allreduce (allreduce) sums
    the ranks' buffers: every rank then holds the global batch's float32 gradient. A nan
    or inf in the last entry (some rank's loss) raises FloatingPointError on every rank,
    changing nothing. The step is skipped on every rank, and the scale halved, when the
    sum holds an inf or nan (an overflow on some rank survives the sum) or an entry that
    the one process's float16 gradient could not hold (its scaled magnitude rounds to
    inf in float16); else every rank runs the optimizer's flat rule on the masters. The
    scaler's state thus stays the same on every rank, and its decisions are the one
    process's."""
    g = flat.get("g32")
    if g is None:  # the unscaled gradients and the loss's entry, made once
        g = flat["g32"] = np.empty(flat["P"].size + 1, MASTER)
    if G is None:
        g[...] = 0.0
    else:  # in float32 before the sum: a float16 sum of K ranks' gradients could overflow
        np.multiply(G, 1.0 / state["scale"], out=g[:-1], dtype=MASTER)
        g[-1] = 0.0 if math.isfinite(loss) else loss
    allreduce(g, 0.0, 1.0)  # in place, over every rank
    if not math.isfinite(g[-1]):
        if not math.isfinite(loss):
            check_finite(loss, grads)
        raise FloatingPointError(f"the loss is {float(g[-1])} on another rank's rows")
    info = np.finfo(DTYPE)  # float16 rounds to inf from max + half its last step: 65520
    limit = float(info.max) + 2.0 ** (info.maxexp - info.nmant - 2)
    overflow = not float(np.max(np.abs(g[:-1]))) * state["scale"] < limit  # nan, inf too
    _scaler_step(flat, g[:-1], state, lr, overflow)
    return float(loss)


def _flushed(reference, plain, scaled):
    """Per parameter: (entries, nonzero in the float32 reference gradient, of those zero
    in the float16 gradient without loss scaling, zero in the scaled float16 gradient)."""
    out = {}
    for name, ref in reference.items():
        nonzero = np.asarray(ref) != 0
        out[name] = (int(np.size(ref)), int(np.count_nonzero(nonzero)),
                     int(np.count_nonzero(nonzero & (plain[name] == 0))),
                     int(np.count_nonzero(nonzero & (scaled[name] == 0))))
    return out


def underflow_line(counts, state):
    """One log line from underflow()'s counts: how many gradient entries float16 flushes
    to zero without and with loss scaling, the scale and the steps skipped."""
    _, nonzero, plain, scaled = (sum(c[k] for c in counts.values()) for k in range(4))
    share = 100.0 / max(nonzero, 1)
    return (f"  float16 gradients: {plain} of {nonzero} nonzero entries ({plain * share:.1f}%) "
            f"flush to zero without loss scaling, {scaled} ({scaled * share:.1f}%) with scale "
            f"{state['scale']:g}; {state['skipped']} steps skipped on overflow so far")
