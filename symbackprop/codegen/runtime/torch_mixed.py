"""Mixed precision's fixed parts in a generated torch training module (issue 15).

The torch counterpart of :mod:`~symbackprop.codegen.runtime.mixed` (NumPy's) and
:mod:`~symbackprop.codegen.runtime.jax_mixed`: ``value_and_grad`` computes in ``DTYPE``
(float16, or bfloat16) on copies of float32 master parameters (``MASTER``) that its
first lines cast; the optimizer updates the masters and keeps its state in float32, in
place, as torch's float32 step does. Dynamic loss scaling follows ``torch.amp.GradScaler``
(and NumPy's step): the scaler's state (``scale``, ``good_steps``, ``skipped``) lives in
the state dict with the optimizer's. :mod:`symbackprop.codegen.torch_mixed` copies these
functions; the globals below stand in for the ones a generated module defines.
"""

import math

try:
    import torch
except ImportError:  # the source is copied without PyTorch
    torch = None

DTYPE = "float16"  # the generated module's: torch.float16 or torch.bfloat16, the step
MASTER = "float32"  # the generated module's torch.float32: masters, optimizer state, update
LR = 0.01
LOSS_SCALE = 65536.0  # the first scale: 2**16, as torch.amp.GradScaler
GROWTH_FACTOR = 2.0
BACKOFF_FACTOR = 0.5
GROWTH_INTERVAL = 2000  # good steps in a row before the scale grows


def _optimizer_state(params):
    """Stand-in for the optimizer's init_state (a generated module copies the real one)."""
    return {}


def update(params, grads, state, lr=LR):
    """Stand-in for the optimizer's in-place update: SGD."""
    for name, g in grads.items():
        params[name] -= lr * g


def check_finite(loss, grads):
    """Stand-in for the module's check_finite (runtime/torch_script.py)."""
    raise FloatingPointError(f"the loss is {float(loss)}")


def init_state(params):
    """The optimizer's state (_optimizer_state, float32) and the dynamic loss scaler's:
    scale (the loss is multiplied by it before backprop), good_steps (steps since the
    scale last changed) and skipped (steps skipped on overflow, in all)."""
    return {**_optimizer_state(params), "scale": LOSS_SCALE, "good_steps": 0, "skipped": 0}


def _in_float32(f, *args):
    """f(*args) computed in float32: the DTYPE tensors among args cast to MASTER first (the
    loss and its own gradient: exp and the row sums of the softmax want float32's
    precision, and the loss scale, 2**16, is above float16's largest number)."""
    return f(*(a.to(MASTER) if isinstance(a, torch.Tensor) and a.dtype == DTYPE else a
               for a in args))


def _screen(loss, grads):
    """(loss, sum of every gradient entry) as Python floats, in one transfer. Each
    gradient's sum runs in float32: the entries of DTYPE gradients are at most 65504
    (float16) or float32's range (bfloat16), so it is finite exactly when every entry is
    (no overflow of the sum itself at any size a tensor can have, for float16); the sums
    are added in Python's float64, which no float32 numbers overflow."""
    sums = torch.stack([loss.to(MASTER)] + [g.sum(dtype=MASTER) for g in grads.values()])
    loss, *sums = sums.tolist()
    return loss, sum(sums)


def _scaled_update(params, grads, loss, state, lr):
    """The update from the DTYPE gradients times state["scale"], in place. Inf or nan in
    them (an overflow): the step is skipped (the parameters and the optimizer state
    untouched), the scale halved. Else the optimizer updates the masters from the
    gradients unscaled in float32 (g * (1 / scale): no underflow there), and after
    GROWTH_INTERVAL good steps in a row the scale doubles. A nan or inf loss raises
    FloatingPointError, changing nothing: the scale does not enter the loss, so a smaller
    one cannot help. Returns the loss (a Python float)."""
    loss, screen = _screen(loss, grads)
    if not math.isfinite(loss):
        check_finite(loss, grads)
    if not math.isfinite(screen):
        state["scale"] *= BACKOFF_FACTOR
        state["good_steps"] = 0
        state["skipped"] += 1
        return loss
    inv = 1.0 / state["scale"]
    update(params, {name: g.to(MASTER).mul_(inv) for name, g in grads.items()}, state, lr=lr)
    state["good_steps"] += 1
    if state["good_steps"] >= GROWTH_INTERVAL:
        state["scale"] *= GROWTH_FACTOR
        state["good_steps"] = 0
    return loss


def _master_update(params, grads, loss, state, lr):
    """bfloat16 (no loss scaling): the update of the masters, in place, from the gradients
    cast to float32. A nan or inf loss or gradient raises FloatingPointError before
    anything changes, as the float32 step. Returns the loss (a Python float)."""
    loss, screen = _screen(loss, grads)
    if not math.isfinite(loss + screen):
        check_finite(loss, grads)  # says which gradient
    update(params, {name: g.to(MASTER) for name, g in grads.items()}, state, lr=lr)
    return loss


def _flushed(reference, plain, scaled):
    """Per parameter: (entries, nonzero in the float32 reference gradient, of those zero
    in the DTYPE gradient without loss scaling, zero in the scaled DTYPE gradient)."""
    out = {}
    for name, ref in reference.items():
        nonzero = ref != 0
        out[name] = (int(ref.numel()), int(nonzero.sum()),
                     int((nonzero & (plain[name] == 0)).sum()),
                     int((nonzero & (scaled[name] == 0)).sum()))
    return out


def underflow_line(counts, state):
    """One log line from underflow()'s counts: how many gradient entries the step's
    dtype flushes to zero without and with loss scaling, the scale and the steps skipped
    (bfloat16, whose state has no scale: without loss scaling alone)."""
    _, nonzero, plain, scaled = (sum(c[k] for c in counts.values()) for k in range(4))
    share = 100.0 / max(nonzero, 1)
    half = str(DTYPE).replace("torch.", "")
    line = (f"  {half} gradients: {plain} of {nonzero} nonzero entries ({plain * share:.1f}%) "
            "flush to zero")
    if "scale" not in state:
        return line + f" (no loss scaling: {half} has float32's exponent range)"
    return (line + f" without loss scaling, {scaled} ({scaled * share:.1f}%) with scale "
            f"{float(state['scale']):g}; {int(state['skipped'])} steps skipped on overflow so far")
