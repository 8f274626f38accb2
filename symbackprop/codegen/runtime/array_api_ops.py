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


# -- convolution, pooling and batch norm (issue 15). The standard has no convolution, no
# windows and no pad: the windows are strided slices of the padded array, one per kernel
# offset (a Python loop over the kh*kw offsets only, never over the batch, channels or
# positions), and the products one matmul per call. Spatial axes are the last x.ndim - 2
# (conv1d and conv2d share the helpers); attributes are tuples, one int per spatial axis.
def _offsets(kernel):
    """Every offset in a kernel of sizes ``kernel``, row-major."""
    out = [()]
    for k in kernel:
        out = [o + (i,) for o in out for i in range(k)]
    return out


def _window_at(offset, dilation, stride, out):
    """The index of the entries at kernel ``offset`` of every window: strided slices."""
    return (slice(None), slice(None)) + tuple(
        slice(i * dl, i * dl + s * (o - 1) + 1, s)
        for i, dl, s, o in zip(offset, dilation, stride, out))


def _pad(x, padding, value=0.0):
    """x (N, C, *S) with ``padding`` entries of ``value`` on both sides of each spatial
    axis (a new array, x written into its middle)."""
    if not any(padding):
        return x
    xp = x.__array_namespace__()
    shape = x.shape[:2] + tuple(s + 2 * p for s, p in zip(x.shape[2:], padding))
    out = xp.full(shape, value, dtype=x.dtype)
    out[(slice(None), slice(None)) + tuple(slice(p, p + s) for p, s in
                                           zip(padding, x.shape[2:]))] = x
    return out


def _conv_out(size, kernel, stride, padding, dilation):
    """The output's spatial sizes: (S + 2p - dl(k - 1) - 1) // s + 1 per axis."""
    return tuple((n + 2 * p - dl * (k - 1) - 1) // s + 1
                 for n, k, s, p, dl in zip(size, kernel, stride, padding, dilation))


def _conv_cols(x, kernel, stride, padding, dilation, groups):
    """im2col: the windows of the padded x as (N, groups, C/groups * K, positions), one
    strided slice per kernel offset stacked (K = the kernel's entries), and the output's
    spatial sizes."""
    xp = x.__array_namespace__()
    n, c = x.shape[:2]
    out = _conv_out(x.shape[2:], kernel, stride, padding, dilation)
    positions = 1
    for o in out:
        positions *= o
    padded = _pad(x, padding)
    parts = [xp.reshape(padded[_window_at(offset, dilation, stride, out)],
                        (n, groups, c // groups, positions)) for offset in _offsets(kernel)]
    cols = xp.stack(parts, axis=3)  # (N, groups, C/groups, K, positions)
    return xp.reshape(cols, (n, groups, (c // groups) * len(parts), positions)), out


def _conv(x, w, stride, padding, dilation, groups):
    """Convolution (cross-correlation, as PyTorch) of x (N, C, *S) with w
    (C_out, C/groups, *kernel): (N, C_out, *out), one matmul of the kernel, per group,
    with the windows (im2col)."""
    xp = x.__array_namespace__()
    cols, out = _conv_cols(x, w.shape[2:], stride, padding, dilation, groups)
    co = w.shape[0]
    wg = xp.reshape(w, (groups, co // groups, cols.shape[2]))
    return xp.reshape(wg @ cols, (x.shape[0], co) + out)  # (N, groups, C_out/groups, P)


def _conv_grad_weight(x, g, kernel, stride, padding, dilation, groups):
    """dL/dw of _conv for dL/dy = g: the correlation of the padded x with g,
    (C_out, C/groups, *kernel): per group, g (C_out/groups, N * positions) times the
    windows' transpose (N * positions, C/groups * K)."""
    xp = x.__array_namespace__()
    cols, _ = _conv_cols(x, kernel, stride, padding, dilation, groups)
    n, co = g.shape[:2]
    rows = cols.shape[2]
    cols = xp.reshape(xp.permute_dims(cols, (1, 2, 0, 3)), (groups, rows, -1))
    gg = xp.reshape(xp.permute_dims(xp.reshape(g, (n, groups, co // groups, -1)), (1, 2, 0, 3)),
                    (groups, co // groups, -1))
    dw = gg @ xp.matrix_transpose(cols)  # (groups, C_out/groups, C/groups * K)
    return xp.reshape(dw, (co, x.shape[1] // groups) + tuple(kernel))


def _conv_grad_input(g, w, size, stride, padding, dilation, groups):
    """dL/dx of _conv for dL/dy = g, x of spatial sizes ``size``: col2im. One matmul per
    group, the kernel's transpose (C/groups * K, C_out/groups) times g, gives what every
    kernel offset sends back from every output position; each offset's part is added
    into the padded gradient at its strided place, one addition per offset. Positions of
    x that no window reaches get zeros; the padding is cropped."""
    xp = g.__array_namespace__()
    kernel = tuple(w.shape[2:])
    n, co = g.shape[:2]
    out = tuple(g.shape[2:])
    cg = w.shape[1]
    offsets = _offsets(kernel)
    wg = xp.reshape(w, (groups, co // groups, cg * len(offsets)))
    gg = xp.reshape(g, (n, groups, co // groups, -1))
    cols = xp.reshape(xp.matrix_transpose(wg) @ gg, (n, groups * cg, len(offsets), -1))
    dxp = xp.zeros((n, groups * cg) + tuple(s + 2 * p for s, p in zip(size, padding)),
                   dtype=g.dtype)
    for k, offset in enumerate(offsets):
        at = _window_at(offset, dilation, stride, out)
        dxp[at] = dxp[at] + xp.reshape(cols[:, :, k, :], (n, groups * cg) + out)
    return dxp[(slice(None), slice(None)) + tuple(slice(p, p + s) for p, s in
                                                  zip(padding, size))]


def _max_pool2d(x, k, stride, padding):
    """The largest entry of each window of x (N, C, H, W), padding with -inf: the maximum
    of the window's strided slices, offset by offset."""
    xp = x.__array_namespace__()
    out = _conv_out(x.shape[2:], k, stride, padding, (1, 1))
    padded = _pad(x, padding, -xp.inf)
    m = None
    for offset in _offsets(k):
        v = padded[_window_at(offset, (1, 1), stride, out)]
        m = v if m is None else xp.maximum(m, v)
    return m


def _max_pool2d_grad(x, g, k, stride, padding):
    """dL/dx of _max_pool2d for dL/dy = g: each g to the first arg-max of its window
    (row-major, as PyTorch and the NumPy helper), added up where windows overlap: the
    window's entries at its offsets stacked, xp.argmax (the first maximum) picks an
    offset per window, and offset by offset the windows that chose it add g at their
    strided place."""
    xp = x.__array_namespace__()
    h, w = x.shape[2:]
    out = tuple(g.shape[2:])
    padded = _pad(x, padding, -xp.inf)
    at = [_window_at(offset, (1, 1), stride, out) for offset in _offsets(k)]
    first = xp.argmax(xp.stack([padded[a] for a in at], axis=0), axis=0)
    dxp = xp.zeros(padded.shape, dtype=g.dtype)
    for offset, a in enumerate(at):
        dxp[a] = dxp[a] + g * xp.astype(first == offset, g.dtype)
    return dxp[:, :, padding[0]:padding[0] + h, padding[1]:padding[1] + w]


def _avg_pool2d(x, k, stride, padding):
    """The mean of each window of x (N, C, H, W); zero padding counts in the mean."""
    out = _conv_out(x.shape[2:], k, stride, padding, (1, 1))
    padded = _pad(x, padding)
    total = None
    for offset in _offsets(k):
        v = padded[_window_at(offset, (1, 1), stride, out)]
        total = v if total is None else total + v
    return total / (k[0] * k[1])


def _avg_pool2d_grad(g, k, stride, padding, size):
    """dL/dx of _avg_pool2d for dL/dy = g: g / (kh * kw) added over each window, offset
    by offset, where windows overlap summing up."""
    xp = g.__array_namespace__()
    n, c = g.shape[:2]
    out = tuple(g.shape[2:])
    dxp = xp.zeros((n, c) + tuple(s + 2 * p for s, p in zip(size, padding)), dtype=g.dtype)
    part = g / (k[0] * k[1])
    for offset in _offsets(k):
        at = _window_at(offset, (1, 1), stride, out)
        dxp[at] = dxp[at] + part
    return dxp[:, :, padding[0]:padding[0] + size[0], padding[1]:padding[1] + size[1]]


def _batch_norm(x, axis, eps, momentum, training, running, key):
    """x normalized per feature of axis, the statistics taken over the other axes. Training:
    the batch's mean and population variance, and, when running is given (the calling
    function's own copy of the dict, which it returns), its entries key + '.mean' and
    key + '.var' replaced by new arrays as PyTorch updates them:
    running = (1 - momentum) * running + momentum * batch, the variance unbiased (n/(n-1)).
    Evaluation: the running statistics."""
    xp = x.__array_namespace__()
    axes = tuple(a for a in range(x.ndim) if a != axis % x.ndim)
    if training:
        n = 1
        for a in axes:
            n *= x.shape[a]
        if n < 2:
            raise ValueError(f"batch norm {key!r}: 1 value per feature in this batch (shape "
                             f"{x.shape}); training needs at least 2 to take a variance")
        mean = xp.mean(x, axis=axes, keepdims=True)
        xc = x - mean
        var = xp.mean(xc * xc, axis=axes, keepdims=True)
        if running is not None:
            rm, rv = running[key + ".mean"], running[key + ".var"]
            running[key + ".mean"] = rm * (1 - momentum) + momentum * xp.reshape(mean, (-1,))
            running[key + ".var"] = (rv * (1 - momentum)
                                     + (momentum * n / (n - 1)) * xp.reshape(var, (-1,)))
        return xc / xp.sqrt(var + eps)
    if running is None:
        raise ValueError(f"batch norm {key!r} in evaluation mode (training=False) needs the "
                         "running statistics: pass running=init_running(xp), updated by "
                         "training")
    shape = [1] * x.ndim
    shape[axis] = -1  # a feature vector, broadcast along the other axes
    mean = xp.reshape(running[key + ".mean"], tuple(shape))
    return (x - mean) / xp.sqrt(xp.reshape(running[key + ".var"], tuple(shape)) + eps)
