"""The helper functions of generated array API code (the ``array_api`` backend, issue 15).

Generated ``array_api`` modules use only the Python array API standard
(https://data-apis.org/array-api/): every function takes the namespace of the arrays it
is given (``x.__array_namespace__()``), so the same module runs on NumPy 2, CuPy, JAX,
PyTorch (through a compatible namespace) or ``array_api_strict``. These are the
counterparts of :mod:`~symbackprop.codegen.runtime.numpy_ops`, written with the
standard's functions alone (no ``out=``, no ``np.add.at``, no ``einsum``): a scatter-add
becomes a product with a one-hot matrix. Code generation copies a helper's source into a
module that calls it; this module imports only the standard library.
"""

from __future__ import annotations

import math

FLOAT = "float64"  # the generated module's floating dtype, by its name in the namespace


def _namespace(*arrays):
    """The array API namespace of the first argument that has one, and its FLOAT dtype:
    every generated function starts here."""
    for a in arrays:
        if hasattr(a, "__array_namespace__"):
            xp = a.__array_namespace__()
            return xp, getattr(xp, FLOAT)
    raise TypeError("array API code takes arrays of an array API library (arrays with "
                    "__array_namespace__, such as NumPy 2's); got "
                    f"{', '.join(type(a).__name__ for a in arrays) or 'no arrays'}.")


def _heaviside(x, at0):
    """The step function: 1 where x > 0, at0 where x == 0, 0 elsewhere, in x's dtype."""
    xp = x.__array_namespace__()
    return xp.astype(x > 0, x.dtype) + at0 * xp.astype(x == 0, x.dtype)


def _onehot(labels, num, dtype):
    """One row of ``num`` entries per label: 1 at the label, 0 elsewhere."""
    xp = labels.__array_namespace__()
    return xp.astype(xp.expand_dims(labels, axis=-1) == xp.arange(num), dtype)


def _softmax(x, axis=-1):
    """Softmax along axis, shifted by the maximum so exp never overflows."""
    xp = x.__array_namespace__()
    e = xp.exp(x - xp.max(x, axis=axis, keepdims=True))
    return e / xp.sum(e, axis=axis, keepdims=True)


def _log_softmax(x, axis=-1):
    """log(softmax(x)) along axis, computed without forming softmax."""
    xp = x.__array_namespace__()
    z = x - xp.max(x, axis=axis, keepdims=True)
    return z - xp.log(xp.sum(xp.exp(z), axis=axis, keepdims=True))


def _softmax_cross_entropy(logits, labels):
    """Mean over the batch of -log softmax(logits)[i, labels[i]]: each row's logsumexp
    (shifted by the row's maximum, never inf) less its logit at the label."""
    xp = logits.__array_namespace__()
    m = xp.max(logits, axis=1, keepdims=True)
    lse = xp.log(xp.sum(xp.exp(logits - m), axis=1)) + m[:, 0]
    picked = xp.sum(logits * _onehot(labels, logits.shape[1], logits.dtype), axis=1)
    return xp.mean(lse - picked)


def _softmax_cross_entropy_grad(logits, labels, g):
    """dL/dlogits of the mean cross-entropy: (softmax(logits) - onehot(labels)) * g / N."""
    onehot = _onehot(labels, logits.shape[1], logits.dtype)
    return (_softmax(logits, axis=1) - onehot) * (g / logits.shape[0])


def _layer_norm(x, eps=1e-5):
    """(x - mean) / sqrt(var + eps) over the last axis."""
    xp = x.__array_namespace__()
    xc = x - xp.mean(x, axis=-1, keepdims=True)
    return xc / xp.sqrt(xp.mean(xc * xc, axis=-1, keepdims=True) + eps)


# The stable functions of symbackprop.ops.stable, printed as calls of these helpers.
def _sigmoid(x):
    """1 / (1 + exp(-x)) without overflow: exp(-|x|) <= 1 on both sides of 0."""
    xp = x.__array_namespace__()
    t = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1.0, t) / (1 + t)


def _softplus(x):
    """log(1 + exp(x)) without overflow: max(x, 0) + log1p(exp(-|x|))."""
    xp = x.__array_namespace__()
    return xp.maximum(x, 0.0) + xp.log1p(xp.exp(-xp.abs(x)))


def _sech2(x):
    """1 - tanh(x)**2 without cancellation: 4t / (1 + t)**2 with t = exp(-2|x|) <= 1."""
    xp = x.__array_namespace__()
    t = xp.exp(-2 * xp.abs(x))
    return 4 * t / (1 + t) ** 2


def _logsumexp(x, axis=None, keepdims=False):
    """log(sum(exp(x))) over axis, shifted by the maximum so exp never overflows (by 0
    where a slice is all -inf: -inf - -inf is NaN)."""
    xp = x.__array_namespace__()
    m = xp.max(x, axis=axis, keepdims=True)
    m = xp.where(xp.isfinite(m), m, 0.0)
    out = xp.log(xp.sum(xp.exp(x - m), axis=axis, keepdims=True)) + m
    if keepdims:
        return out
    return xp.reshape(out, ()) if axis is None else xp.squeeze(out, axis=axis)


def _unslice(g, shape, index):
    """Zeros of ``shape`` with ``g`` at ``index``: the gradient of a slice (a new array,
    written once)."""
    xp = g.__array_namespace__()
    out = xp.zeros(shape, dtype=g.dtype)
    out[index] = g
    return out


def _take(x, idx, axis):
    """``x`` gathered at the integer array ``idx`` along ``axis`` (any number of index
    axes: the standard's take wants one)."""
    xp = x.__array_namespace__()
    out = xp.take(x, xp.reshape(idx, (-1,)), axis=axis)
    return xp.reshape(out, x.shape[:axis] + idx.shape + x.shape[axis + 1:])


def _take_grad(g, idx, size, axis):
    """The gradient of ``_take(x, idx, axis)``: zeros with ``size`` entries along
    ``axis``, and ``g`` added at the indices, repeated indices accumulating. The standard
    has no scatter-add: one product with the one-hot matrix of the indices (size x K)
    sums the rows of each index, on a 3-D view (leading axes, the indexed axis, trailing
    axes)."""
    xp = g.__array_namespace__()
    lead, trail = g.shape[:axis], g.shape[axis + idx.ndim:]
    rows, cols = 1, 1
    for d in lead:
        rows *= d
    for d in trail:
        cols *= d
    k = 1
    for d in idx.shape:
        k *= d
    onehot = _onehot(xp.reshape(idx, (-1,)), size, g.dtype)  # (K, size)
    out = xp.matrix_transpose(onehot) @ xp.reshape(g, (rows, k, cols))
    return xp.reshape(out, lead + (size,) + trail)


def _einsum(spec, *operands):
    """np.einsum for the standard, which has none (for the specs that are no matrix
    product): each operand laid out on every letter of ``spec`` (its own axes permuted
    into the letters' order, size-1 axes for the others), the broadcast product of all,
    summed over the letters the output lacks, then permuted into the output's order.
    One array over all the letters lives at once: fine for the small contractions of the
    gradients (a batch summed out), not for a large product."""
    xp = operands[0].__array_namespace__()
    ins, out = spec.split("->")
    letters = []
    for sub in ins.split(","):
        letters += [c for c in sub if c not in letters]
    total = None
    for sub, x in zip(ins.split(","), operands):
        order = sorted(range(len(sub)), key=lambda i: letters.index(sub[i]))
        x = xp.permute_dims(x, tuple(order))
        size = {sub[i]: x.shape[k] for k, i in enumerate(order)}
        x = xp.reshape(x, tuple(size.get(c, 1) for c in letters))
        total = x if total is None else total * x
    summed = tuple(i for i, c in enumerate(letters) if c not in out)
    if summed:
        total = xp.sum(total, axis=summed)
    kept = [c for c in letters if c in out]
    return xp.permute_dims(total, tuple(kept.index(c) for c in out))


# -- initial parameters of the training module: the standard has no random generator, so
# the draws come from Python's random module (seeded), one number at a time, then one array
def he_normal(xp, rng, shape, fan_in, gain2=2.0):
    """He (Kaiming) normal for rectifiers: N(0, gain2 / fan_in); gain2 = 2 for relu."""
    std = (gain2 / fan_in) ** 0.5
    values = [rng.gauss(0.0, std) for _ in range(math.prod(shape))]
    return xp.reshape(xp.asarray(values, dtype=getattr(xp, FLOAT)), shape)


def xavier_uniform(xp, rng, shape, fan_in, fan_out):
    """Xavier/Glorot uniform: U(-a, a) with a = sqrt(6 / (fan_in + fan_out))."""
    a = (6.0 / (fan_in + fan_out)) ** 0.5
    values = [rng.uniform(-a, a) for _ in range(math.prod(shape))]
    return xp.reshape(xp.asarray(values, dtype=getattr(xp, FLOAT)), shape)


def uniform_fan_in(xp, rng, shape, fan_in):
    """U(-a, a) with a = 1 / sqrt(fan_in): PyTorch's default for nn.Linear weights."""
    a = 1.0 / fan_in**0.5
    values = [rng.uniform(-a, a) for _ in range(math.prod(shape))]
    return xp.reshape(xp.asarray(values, dtype=getattr(xp, FLOAT)), shape)
