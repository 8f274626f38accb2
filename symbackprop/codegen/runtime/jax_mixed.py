"""Mixed precision's fixed parts in a generated JAX training module (issue 15).

The JAX counterpart of :mod:`~symbackprop.codegen.runtime.mixed`: the forward and
backward pass run in ``DTYPE`` (float16, or bfloat16) on copies of float32 master
parameters (``MASTER``) cast inside ``value_and_grad``; the optimizer updates the masters
and keeps its state in float32. Dynamic loss scaling follows ``torch.amp.GradScaler``
(and NumPy's step), written functionally so that ``jax.jit`` compiles it: the scaler's
state (``scale``, ``good_steps``, ``skipped``) goes into the jitted step with the
optimizer's and comes out new, and what would be a Python ``if`` on a traced value is a
``jnp.where``. :mod:`symbackprop.codegen.jax_mixed` copies these functions; the globals
below stand in for the ones a generated module defines.
"""

try:
    import jax
    import jax.numpy as jnp
except ImportError:  # generating JAX source needs no JAX; running these functions does
    jax = jnp = None

DTYPE = "float16"  # the generated module's: jnp.float16 or jnp.bfloat16, the step
MASTER = "float32"  # the generated module's jnp.float32: masters, optimizer state, update
LOSS_SCALE = 65536.0  # the first scale: 2**16, as torch.amp.GradScaler
GROWTH_FACTOR = 2.0
BACKOFF_FACTOR = 0.5
GROWTH_INTERVAL = 2000  # good steps in a row before the scale grows
SCALER = ("scale", "good_steps", "skipped")  # the loss scaler's keys in the state


def _optimizer_state(params):
    """Stand-in for the optimizer's init_state (a generated module copies the real one)."""
    return {}


def update(params, grads, state, lr=0.01):
    """Stand-in for the optimizer's functional update: SGD."""
    return {name: w - lr * grads[name] for name, w in params.items()}, state


def init_state(params):
    """The optimizer's state (_optimizer_state, float32) and the dynamic loss scaler's:
    scale (the loss is multiplied by it before backprop), good_steps (steps since the
    scale last changed) and skipped (steps skipped on overflow, in all). The scaler's
    numbers are arrays of the dtypes every step returns (float32, int32): Python numbers
    would give the jitted train_step a second signature after the first step."""
    return {**_optimizer_state(params), "scale": jnp.asarray(LOSS_SCALE, MASTER),
            "good_steps": jnp.zeros((), jnp.int32), "skipped": jnp.zeros((), jnp.int32)}


def _in_float32(f, *args):
    """f(*args) computed in float32: the DTYPE arrays among args cast to MASTER first (the
    loss and its own gradient: exp and the row sums of the softmax want float32's
    precision, and the loss scale, 2**16, is above float16's largest number)."""
    return f(*(a.astype(MASTER) if getattr(a, "dtype", None) == DTYPE else a for a in args))


def _scaled_update(params, grads, loss, state, lr):
    """The update from the gradients times state["scale"] (DTYPE), functionally. Inf or
    nan in them (an overflow): the step is skipped (the parameters and the optimizer state
    as they were), the scale halved. Else the optimizer updates the masters from the
    gradients unscaled in float32 (g * (1 / scale): no underflow there), and after
    GROWTH_INTERVAL good steps in a row the scale doubles. A nan or inf loss changes
    nothing at all, the scale included: the scale does not enter the loss, so a smaller
    one cannot help (NumPy's step raises there; inside jax.jit nothing can, so the caller
    checks the loss returned). Returns (params, state)."""
    scale = state["scale"]
    finite_loss = jnp.isfinite(loss)
    finite_grads = jnp.all(jnp.array([jnp.isfinite(g).all() for g in grads.values()]))
    good = finite_loss & finite_grads
    overflow = finite_loss & ~finite_grads
    unscaled = {name: g.astype(MASTER) * (1.0 / scale) for name, g in grads.items()}
    optimizer = {k: v for k, v in state.items() if k not in SCALER}
    new_params, new_optimizer = update(params, unscaled, optimizer, lr=lr)

    def keep(new, old):  # the new value on a good step, the old one otherwise
        return jnp.where(good, new, old)
    params = jax.tree_util.tree_map(keep, new_params, params)
    optimizer = jax.tree_util.tree_map(keep, new_optimizer, optimizer)
    grow = good & (state["good_steps"] + 1 >= GROWTH_INTERVAL)
    scale = jnp.where(overflow, scale * BACKOFF_FACTOR,
                      jnp.where(grow, scale * GROWTH_FACTOR, scale))
    good_steps = jnp.where(overflow | grow, 0,
                           jnp.where(good, state["good_steps"] + 1, state["good_steps"]))
    skipped = jnp.where(overflow, state["skipped"] + 1, state["skipped"])
    return params, {**optimizer, "scale": scale, "good_steps": good_steps, "skipped": skipped}


def _to_master(grads):
    """The DTYPE gradients in float32, for the optimizer (bfloat16: no loss scale)."""
    return {name: g.astype(MASTER) for name, g in grads.items()}


def _flushed(reference, plain, scaled):
    """Per parameter: (entries, nonzero in the float32 reference gradient, of those zero
    in the DTYPE gradient without loss scaling, zero in the scaled DTYPE gradient)."""
    out = {}
    for name, ref in reference.items():
        nonzero = ref != 0
        out[name] = (int(ref.size), int(jnp.count_nonzero(nonzero)),
                     int(jnp.count_nonzero(nonzero & (plain[name] == 0))),
                     int(jnp.count_nonzero(nonzero & (scaled[name] == 0))))
    return out


def underflow_line(counts, state):
    """One log line from underflow()'s counts: how many gradient entries the step's
    dtype flushes to zero without and with loss scaling, the scale and the steps skipped
    (bfloat16, whose state has no scale: without loss scaling alone)."""
    _, nonzero, plain, scaled = (sum(c[k] for c in counts.values()) for k in range(4))
    share = 100.0 / max(nonzero, 1)
    half = jnp.dtype(DTYPE).name
    line = (f"  {half} gradients: {plain} of {nonzero} nonzero entries ({plain * share:.1f}%) "
            "flush to zero")
    if "scale" not in state:
        return line + f" (no loss scaling: {half} has float32's exponent range)"
    return (line + f" without loss scaling, {scaled} ({scaled * share:.1f}%) with scale "
            f"{float(state['scale']):g}; {int(state['skipped'])} steps skipped on overflow so far")
