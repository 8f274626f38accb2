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


# -- convolution and pooling (issue 13) --------------------------------------------------
# Windows are strided views of the padded input (sliding_window_view); each product is
# one np.matmul over all groups at once (a batch axis of size groups), so no Python loop
# runs over the batch, channels or positions (max pooling loops over the kh*kw offsets of
# its window: see _max_pool2d). Spatial axes are the last
# x.ndim - 2 axes: the same helpers serve conv1d and conv2d. Attributes arrive as tuples
# with one int per spatial axis.
def _pad(x, padding, value=0):
    """x with ``padding[i]`` entries of ``value`` on both sides of spatial axis i."""
    if not any(padding):
        return x
    return np.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in padding], constant_values=value)


def _conv_windows(xp, kernel, stride, dilation):
    """The windows of xp (N, C, *S) as a view (N, C, *out, *kernel): window o holds
    xp[..., o*stride + i*dilation] at kernel offset i."""
    d = len(kernel)
    span = tuple(dl * (k - 1) + 1 for k, dl in zip(kernel, dilation))
    v = np.lib.stride_tricks.sliding_window_view(xp, span, axis=tuple(range(2, 2 + d)))
    steps = tuple(slice(None, None, s) for s in stride + dilation)
    return v[(slice(None), slice(None)) + steps]


def _conv_cols(x, kernel, stride, padding, dilation, groups):
    """im2col: the windows of the padded x as (groups, N * positions, C/groups * K),
    and the output's spatial sizes."""
    d = len(kernel)
    v = _conv_windows(_pad(x, padding), kernel, stride, dilation)
    n, c = v.shape[:2]
    out = v.shape[2:2 + d]
    v = v.reshape((n, groups, c // groups) + v.shape[2:])
    order = (1, 0) + tuple(range(3, 3 + d)) + (2,) + tuple(range(3 + d, 3 + 2 * d))
    return v.transpose(order).reshape(groups, -1, (c // groups) * int(np.prod(kernel))), out


def _group_matmul(a, b):
    """a @ b for stacks (groups, m, k) @ (groups, k, n); one group as a 2-D product, which
    NumPy hands to BLAS in one call (its stacked matmul of one group ran slower)."""
    if len(a) == 1:
        return np.matmul(a[0], b[0])[None]
    return np.matmul(a, b)


def _conv(x, w, stride, padding, dilation, groups):
    """Convolution (cross-correlation, as PyTorch) of x (N, C, *S) with w
    (C_out, C/groups, *kernel): (N, C_out, *out)."""
    cols, out = _conv_cols(x, w.shape[2:], stride, padding, dilation, groups)
    co = w.shape[0]
    wg = w.reshape(groups, co // groups, -1).transpose(0, 2, 1)
    y = _group_matmul(cols, wg).reshape((groups, x.shape[0]) + out + (co // groups,))
    d = len(out)
    order = (1, 0, 2 + d) + tuple(range(2, 2 + d))
    return y.transpose(order).reshape((x.shape[0], co) + out)


def _conv_grad_weight(x, g, kernel, stride, padding, dilation, groups):
    """dL/dw of _conv for dL/dy = g: the correlation of the padded x with g,
    (C_out, C/groups, *kernel)."""
    cols, _ = _conv_cols(x, kernel, stride, padding, dilation, groups)
    n, co = g.shape[:2]
    cog = co // groups
    gg = g.reshape(n, groups, cog, -1).transpose(1, 0, 3, 2).reshape(groups, -1, cog)
    dw = _group_matmul(cols.transpose(0, 2, 1), gg)
    return dw.transpose(0, 2, 1).reshape((co, x.shape[1] // groups) + tuple(kernel))


def _conv_grad_input(g, w, size, stride, padding, dilation, groups):
    """dL/dx of _conv for dL/dy = g, x of spatial sizes ``size``: the full correlation of
    g (spread by the stride) with the kernel turned by 180 degrees, cropped by the
    padding, computed as col2im. One product per group, (positions * N, C_out/groups) @
    (C_out/groups, K * C/groups), gives what every kernel offset sends back from every
    output position; each offset's part is then added into the padded gradient at its
    strided place, one np.add per offset (kh*kw of them). While adding, the gradient is
    laid out (*spatial, N, C), so each add runs over rows of N*C entries (laid out as
    (N, C, *spatial), an add over a 4x4 output runs over rows of 4). Positions of x that
    no window reaches get zeros."""
    kernel = tuple(w.shape[2:])
    d = len(kernel)
    n, co = g.shape[:2]
    out = g.shape[2:]
    cog, cg = co // groups, w.shape[1]
    gg = np.moveaxis(g.reshape((n, groups, cog) + out), (0, 2), (-2, -1)).reshape(groups, -1, cog)
    wg = np.moveaxis(w.reshape((groups, cog, cg) + kernel), 2, -1).reshape(groups, cog, -1)
    cols = _group_matmul(gg, wg).reshape((groups,) + out + (n,) + kernel + (cg,))
    dxp = np.zeros(tuple(s + 2 * p for s, p in zip(size, padding)) + (n, groups, cg), g.dtype)
    every = (slice(None),) * (d + 2)  # the group, the output positions and the batch
    for offset in np.ndindex(*kernel):
        at = dxp[tuple(slice(i * dl, i * dl + s * (o - 1) + 1, s)
                       for i, dl, s, o in zip(offset, dilation, stride, out))]
        np.add(at, np.moveaxis(cols[every + offset], 0, -2), out=at)
    dx = dxp[tuple(slice(p, p + s) for p, s in zip(padding, size))]
    dx = dx.reshape(dx.shape[:d + 1] + (groups * cg,))
    return np.ascontiguousarray(np.moveaxis(dx, (d, d + 1), (0, 1)))


def _max_pool2d(x, k, stride, padding):
    """The largest entry of each window of x (N, C, H, W), padding with -inf. A loop over
    the kh*kw offsets in the window, each one np.maximum over the whole batch: NumPy's
    reduction over the two short window axes of a strided view runs several times slower."""
    v = _conv_windows(_pad(x, padding, -np.inf), k, stride, (1, 1))
    out = v[..., 0, 0].copy()
    for i in range(k[0]):
        for j in range(k[1]):
            np.maximum(out, v[..., i, j], out=out)
    return out


def _max_pool2d_grad(x, g, k, stride, padding):
    """dL/dx of _max_pool2d for dL/dy = g: each g to the first arg-max of its window
    (row-major, as PyTorch), added up where windows overlap. The maximum is taken again
    as _max_pool2d takes it; then, offset by offset in the window in row-major order, the
    entries equal to it that no earlier offset claimed (so a tie goes to the first) get g
    at their strided place: kh*kw vectorized steps, with no gather of the windows and no
    np.add.at. Windows that do not overlap (stride >= k) copy g there; overlapping ones
    add it. The steps run on views with the spatial axes first and (N, C) last (x copied
    once so), so each runs over rows of N*C entries rather than rows of the output's
    width; the gradient is written through such a view of an (N, C, H, W) array."""
    n, c, h, w = x.shape
    ho, wo = g.shape[2:]
    xt = np.moveaxis(x, (0, 1), (2, 3))  # (H, W, N, C)
    pads = [(padding[0],) * 2, (padding[1],) * 2, (0, 0), (0, 0)]
    xt = np.pad(xt, pads, constant_values=-np.inf) if any(padding) else np.ascontiguousarray(xt)
    gt = np.moveaxis(g, (0, 1), (2, 3))
    dxp = np.zeros((n, c, h + 2 * padding[0], w + 2 * padding[1]), g.dtype)
    dxt = np.moveaxis(dxp, (0, 1), (2, 3))
    # the entries at offset (i, j) of every window: [rows[i], cols[j]]
    rows = [slice(i, i + stride[0] * (ho - 1) + 1, stride[0]) for i in range(k[0])]
    cols = [slice(j, j + stride[1] * (wo - 1) + 1, stride[1]) for j in range(k[1])]
    m = xt[rows[0], cols[0]].copy()
    for i in range(k[0]):
        for j in range(k[1]):
            np.maximum(m, xt[rows[i], cols[j]], out=m)
    free = np.ones(m.shape, bool)  # windows whose maximum no offset has claimed yet
    hit = np.empty(m.shape, bool)
    overlap = stride[0] < k[0] or stride[1] < k[1]
    part = np.empty(m.shape, g.dtype) if overlap else None
    for i in range(k[0]):
        for j in range(k[1]):
            np.equal(xt[rows[i], cols[j]], m, out=hit)
            np.logical_and(hit, free, out=hit)
            np.logical_xor(free, hit, out=free)
            into = dxt[rows[i], cols[j]]
            if overlap:
                np.multiply(gt, hit, out=part)
                np.add(into, part, out=into)
            else:
                np.copyto(into, gt, where=hit)
    return dxp[:, :, padding[0]:padding[0] + h, padding[1]:padding[1] + w]


def _avg_pool2d(x, k, stride, padding):
    """The mean of each window of x (N, C, H, W); zero padding counts in the mean."""
    return _conv_windows(_pad(x, padding), k, stride, (1, 1)).mean(axis=(-2, -1))


def _avg_pool2d_grad(g, k, stride, padding, size):
    """dL/dx of _avg_pool2d for dL/dy = g: g / (kh * kw) spread over each window, added
    up where windows overlap; the full correlation of g with a constant kernel, one
    channel per group."""
    c = g.shape[1]
    w = np.full((c, 1) + tuple(k), 1 / (k[0] * k[1]), dtype=g.dtype)
    return _conv_grad_input(g, w, size, stride, padding, (1, 1), c)


# -- normalization and dropout (issue 13)
def _batch_norm(x, axis, eps, momentum, training, running, key):
    """x normalized per feature of axis, the statistics taken over the other axes. Training:
    the batch's mean and population variance, and the running statistics, when given,
    updated (_update_running). Evaluation: the running statistics."""
    axes = tuple(a for a in range(x.ndim) if a != axis % x.ndim)
    if training:
        n = x.size // x.shape[axis]
        if n < 2:
            raise ValueError(f"batch norm {key!r}: 1 value per feature in this batch (shape "
                             f"{x.shape}); training needs at least 2 to take a variance")
        mean = x.mean(axis=axes, keepdims=True)
        xc = x - mean
        var = (xc * xc).mean(axis=axes, keepdims=True)
        _update_running(running, key, momentum, mean, var, n)
        return xc / np.sqrt(var + eps)
    if running is None:
        raise ValueError(f"batch norm {key!r} in evaluation mode (training=False) needs the "
                         "running statistics: pass running=init_running(), updated by training")
    shape = [1] * x.ndim
    shape[axis] = -1  # a feature vector, broadcast along the other axes
    mean = running[key + ".mean"].reshape(shape)
    return (x - mean) / np.sqrt(running[key + ".var"].reshape(shape) + eps)


def _update_running(running, key, momentum, mean, var, n):
    """running's entries key + '.mean' and key + '.var' (one value per feature) updated in
    place from a batch's mean and population variance over n values per feature, as
    PyTorch does: running = (1 - momentum) * running + momentum * batch, the variance
    unbiased (n/(n-1)). Nothing when running is None (no running statistics kept)."""
    if running is None:
        return
    rm, rv = running[key + ".mean"], running[key + ".var"]
    rm *= 1 - momentum
    rm += momentum * mean.reshape(-1)
    rv *= 1 - momentum
    rv += (momentum * n / (n - 1)) * var.reshape(-1)


def _dropout_mask(x, p, rng, training):
    """Inverted dropout's mask for x: 1/(1-p) with probability 1-p, else 0, one draw of the
    generator rng per entry (float64 draws: the same mask in float32 and float64), when
    training (and p > 0); ones otherwise."""
    if not training or p == 0:
        return np.ones(x.shape, x.dtype)
    keep = rng.random(x.shape) >= p
    return np.multiply(keep, 1 / (1 - p), dtype=x.dtype)


# -- synchronised batch norm: data parallel (MPI) training scripts (issue 15) --------------
def _sync_batch_norm(x, axis, eps, momentum, training, running, key, sync):
    """_batch_norm with the statistics of the global batch, of which x holds this rank's
    rows (SyncBatchNorm): sync.sum sums an array over the ranks holding rows, sync.rows
    is the global batch's. Two passes, as _batch_norm: the mean from the sums, then the
    variance from the sums of squares of the centred values (a sum of squares less the
    squared sum would lose digits when the mean is large beside the spread)."""
    axes = tuple(a for a in range(x.ndim) if a != axis % x.ndim)
    if not training or 0 not in axes:  # running statistics, or statistics of each row
        return _batch_norm(x, axis, eps, momentum, training, running, key)
    # values per feature over every rank's rows: the global batch's rows times the rest
    n = int(np.prod([x.shape[a] for a in axes[1:]])) * sync.rows
    if n < 2:
        raise ValueError(f"batch norm {key!r}: 1 value per feature in this batch (shape "
                         f"{x.shape}); training needs at least 2 to take a variance")
    mean = sync.sum(x.sum(axis=axes, keepdims=True)) / n
    xc = x - mean
    var = sync.sum((xc * xc).sum(axis=axes, keepdims=True)) / n
    _update_running(running, key, momentum, mean, var, n)
    return xc / np.sqrt(var + eps)


class _OneProcess:
    """The step's sync when it holds the whole batch (called without a data-parallel
    script's RowSums): sums over its own rows, which are every row."""

    def __init__(self, rows):
        self.rows = rows  # the batch's rows

    def sum(self, a):
        return a

    def mean(self, a):
        return a

    def grad_sum(self, a):
        return a
