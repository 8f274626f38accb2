"""The JAX helper functions that structural ops call in generated JAX code (issue 15).

The counterparts of :mod:`~symbackprop.codegen.runtime.numpy_ops` for the ``jax`` backend
(:mod:`symbackprop.codegen.backends`): the same mathematics, written functionally (JAX
arrays are immutable: no ``out=``, no in-place update; ``.at[...].add`` for a scatter),
so that ``jax.jit`` traces them. Code generation copies a helper's source into a module
that calls it; ``jnp`` and ``DTYPE`` are what such a module defines. JAX is imported only
when it is installed: the source can be copied without it.
"""

from __future__ import annotations

try:
    import jax.numpy as jnp
except ImportError:  # generating JAX source needs no JAX; running these helpers does
    jnp = None

DTYPE = "float64"  # the generated module's is jnp.float64 or jnp.float32


def _softmax(x, axis=-1):
    """Softmax along axis, shifted by the maximum so exp never overflows."""
    e = jnp.exp(x - jnp.max(x, axis=axis, keepdims=True))
    return e / jnp.sum(e, axis=axis, keepdims=True)


def _log_softmax(x, axis=-1):
    """log(softmax(x)) along axis, computed without forming softmax."""
    z = x - jnp.max(x, axis=axis, keepdims=True)
    return z - jnp.log(jnp.sum(jnp.exp(z), axis=axis, keepdims=True))


def _softmax_cross_entropy(logits, labels):
    """Mean over the batch of -log softmax(logits)[i, labels[i]]: each row's logsumexp
    (shifted by the row's maximum, never inf) less its logit at the label."""
    m = jnp.max(logits, axis=1, keepdims=True)
    lse = jnp.log(jnp.sum(jnp.exp(logits - m), axis=1)) + m[:, 0]
    picked = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
    return jnp.mean(lse - picked)


def _softmax_cross_entropy_grad(logits, labels, g):
    """dL/dlogits of the mean cross-entropy: (softmax(logits) - onehot(labels)) * g / N."""
    onehot = labels[:, None] == jnp.arange(logits.shape[1])
    return (_softmax(logits, axis=1) - onehot) * (g / logits.shape[0])


def _layer_norm(x, eps=1e-5):
    """(x - mean) / sqrt(var + eps) over the last axis."""
    xc = x - jnp.mean(x, axis=-1, keepdims=True)
    return xc / jnp.sqrt(jnp.mean(xc * xc, axis=-1, keepdims=True) + eps)


# The stable functions of symbackprop.ops.stable, printed as calls of these helpers.
def _sigmoid(x):
    """1 / (1 + exp(-x)) without overflow: exp(-|x|) <= 1 on both sides of 0."""
    t = jnp.exp(-jnp.abs(x))
    return jnp.where(x >= 0, 1, t) / (1 + t)


def _softplus(x):
    """log(1 + exp(x)) without overflow: max(x, 0) + log1p(exp(-|x|))."""
    return jnp.maximum(x, 0) + jnp.log1p(jnp.exp(-jnp.abs(x)))


def _sech2(x):
    """1 - tanh(x)**2 without cancellation: 4t / (1 + t)**2 with t = exp(-2|x|) <= 1."""
    t = jnp.exp(-2 * jnp.abs(x))
    return 4 * t / (1 + t) ** 2


def _logsumexp(x, axis=None, keepdims=False):
    """log(sum(exp(x))) over axis, shifted by the maximum so exp never overflows (by 0
    where a slice is all -inf: -inf - -inf is NaN)."""
    m = jnp.max(x, axis=axis, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0)
    out = jnp.log(jnp.sum(jnp.exp(x - m), axis=axis, keepdims=True)) + m
    return out if keepdims else jnp.squeeze(out, axis=axis)


def _unslice(g, shape, index):
    """Zeros of ``shape`` with ``g`` at ``index``: the gradient of a slice."""
    return jnp.zeros(shape, g.dtype).at[index].set(g)


def _take_grad(g, idx, size, axis):
    """The gradient of ``jnp.take(x, idx, axis)``: zeros with ``size`` entries along
    ``axis``, and ``g`` added at the indices, repeated indices accumulating (one scatter-add
    on a 3-D view: leading axes, the indexed axis, trailing axes)."""
    lead, trail = g.shape[:axis], g.shape[axis + idx.ndim:]
    rows, cols = 1, 1
    for d in lead:
        rows *= d
    for d in trail:
        cols *= d
    out = jnp.zeros((rows, size, cols), g.dtype)
    out = out.at[:, idx.reshape(-1)].add(g.reshape(rows, idx.size, cols))
    return out.reshape(lead + (size,) + trail)
