"""The NumPy helper functions that structural ops call in generated code.

Code generation copies a helper's source into a generated module only when the module
calls it (see :data:`symbackprop.codegen.lowering.NUMPY`); here they are ordinary,
importable functions that tests run directly. ``DTYPE`` and the module-level caches
(``_ROWS``, ``_ONES``) are what a generated module defines around them.

The cross-entropy helpers shift the logits by one maximum for the whole batch (a row
maximum costs a slow reduction per row) and fall back to row maxima when a row would
underflow: exp never overflows, and no row sum is ever near 0. Row sums are a product
with ones, 2-3x faster than NumPy's reduction along rows.
"""

from __future__ import annotations

import numpy as np

DTYPE = np.float64

_ROWS = {}
_ONES = {}


def _rows(n):
    """A read-only np.arange(n), made once: the row of each label."""
    v = _ROWS.get(n)
    if v is None:
        v = _ROWS[n] = np.arange(n)
        v.flags.writeable = False
    return v


def _ones(n, dtype):
    """A read-only vector of n ones, made once: ones @ x sums the rows of x."""
    v = _ONES.get((n, dtype))
    if v is None:
        v = _ONES[n, dtype] = np.ones(n, dtype)
        v.flags.writeable = False
    return v


def _softmax(x, axis=-1):
    """Softmax along axis, shifted by the maximum so exp never overflows."""
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _log_softmax(x, axis=-1):
    """log(softmax(x)) along axis, computed without forming softmax."""
    z = x - x.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def _shifted_exp(logits, out=None):
    """exp(logits - m), its row sums, and the mean of m: the largest logit (of each row
    where needed)."""
    ones = _ones(logits.shape[1], logits.dtype)
    m = logits.max()
    out = np.subtract(logits, m, out=out)
    np.exp(out, out=out)
    sums = np.dot(out, ones)
    if sums.min() < 1e-20:  # a row far below the batch maximum: shift each row by its own
        m = logits.max(axis=1, keepdims=True)
        np.exp(np.subtract(logits, m, out=out), out=out)
        sums, m = np.dot(out, ones), m.mean()
    return out, sums, m


def _softmax_cross_entropy(logits, labels):
    """Mean over the batch of -log softmax(logits)[i, labels[i]]."""
    n = len(labels)
    at = np.ravel_multi_index((_rows(n), labels), logits.shape)  # checks 0 <= label < C
    _, sums, m = _shifted_exp(logits)
    # -log softmax at the labels, never inf
    return m + (np.log(sums) - logits.reshape(-1)[at]).sum() / n


def _softmax_cross_entropy_with_grad(logits, labels, g, out):
    """The mean cross-entropy; writes its gradient (softmax - onehot(labels)) * g / N
    into out (C-contiguous). One shifted exp serves both."""
    n = len(labels)
    # flat positions of the labels (2x faster to index than [rows, labels]); checks 0 <= label < C
    at = np.ravel_multi_index((_rows(n), labels), logits.shape)
    picked = logits.reshape(-1)[at]
    out, sums, m = _shifted_exp(logits, out)
    logs = np.log(sums)
    logs -= picked
    loss = m + np.dot(logs, _ones(n, logs.dtype)) / n  # a product with ones: a fast sum
    np.divide(g / n, sums, out=sums)  # each row's scale
    out *= sums[:, None]
    out.reshape(-1)[at] -= g / n
    return loss


def _softmax_cross_entropy_grad(logits, labels, g, out=None):
    """dL/dlogits of the mean cross-entropy: (softmax(logits) - onehot(labels)) * g / N,
    the gradient that _softmax_cross_entropy_with_grad writes."""
    if out is None:
        out = np.empty(logits.shape, logits.dtype)  # C-contiguous, as that call needs
    _softmax_cross_entropy_with_grad(logits, labels, g, out)
    return out


def _layer_norm(x, eps=1e-5):
    """(x - mean) / sqrt(var + eps) over the last axis."""
    xc = x - x.mean(axis=-1, keepdims=True)
    return xc / np.sqrt((xc * xc).mean(axis=-1, keepdims=True) + eps)


# The stable functions of symbackprop.ops.stable, printed as calls of these helpers.
def _sigmoid(x):
    """1 / (1 + exp(-x)) without overflow: exp(-|x|) <= 1 on both sides of 0."""
    t = np.exp(-np.abs(x))
    return np.where(x >= 0, 1, t) / (1 + t)


# np.logaddexp(0, x) is stable too, but ran 5x slower here (no SIMD loop)
def _softplus(x):
    """log(1 + exp(x)) without overflow: max(x, 0) + log1p(exp(-|x|))."""
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


def _sech2(x):
    """1 - tanh(x)**2 without cancellation: 4t / (1 + t)**2 with t = exp(-2|x|) <= 1."""
    t = np.exp(-2 * np.abs(x))
    return 4 * t / (1 + t) ** 2


# -- selecting ops (issue 13)
def _logsumexp(x, axis=None, keepdims=False):
    """log(sum(exp(x))) over axis, shifted by the maximum so exp never overflows. A slice
    that is all -inf gives -inf (shifted by 0, not by -inf: -inf - -inf is NaN), with
    NumPy's divide warning of log(0)."""
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    out = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return out if keepdims else np.squeeze(out, axis=axis)


# -- arrays (issue 13): the gradients of slicing and gathering
def _unslice(g, shape, index, out=None):
    """Zeros of ``shape`` with ``g`` written at ``index``: the gradient of a slice
    (into ``out`` when given)."""
    if out is None:
        out = np.zeros(shape, g.dtype)
    else:
        out[...] = 0
    out[index] = g
    return out


def _take_grad(g, idx, size, axis, out=None):
    """The gradient of ``np.take(x, idx, axis)``: zeros with ``size`` entries along
    ``axis``, and ``g`` added at the indices, repeated indices accumulating. One
    ``np.add.at`` on a 3-D view (leading axes, the indexed axis, trailing axes), into
    ``out`` (C-contiguous) when given."""
    lead, trail = g.shape[:axis], g.shape[axis + idx.ndim:]
    rows, cols = int(np.prod(lead)), int(np.prod(trail))
    if out is None:
        out = np.zeros(lead + (size,) + trail, g.dtype)
    else:
        out[...] = 0
    np.add.at(out.reshape(rows, size, cols), np.s_[:, idx.reshape(-1)],
              g.reshape(rows, idx.size, cols))
    return out
