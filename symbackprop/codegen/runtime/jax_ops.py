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
    import jax
    import jax.numpy as jnp
except ImportError:  # generating JAX source needs no JAX; running these helpers does
    jax = jnp = None

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


# -- convolution and pooling (issue 15): the NumPy helpers' mathematics with jax.lax.
# Spatial axes are the last x.ndim - 2 axes (conv1d and conv2d share the helpers);
# attributes arrive as tuples with one int per spatial axis.
def _conv_dims(d):
    """Dimension numbers of jax.lax.conv_general_dilated for arrays laid out (N, C, *S)
    and kernels (O, I, *K) with d spatial axes."""
    s = "DHW"[-d:]
    return ("NC" + s, "OI" + s, "NC" + s)


def _conv(x, w, stride, padding, dilation, groups):
    """Convolution (cross-correlation, as PyTorch) of x (N, C, *S) with w
    (C_out, C/groups, *kernel): (N, C_out, *out)."""
    return jax.lax.conv_general_dilated(
        x, w, window_strides=stride, padding=[(p, p) for p in padding],
        rhs_dilation=dilation, feature_group_count=groups,
        dimension_numbers=_conv_dims(len(stride)))


def _conv_grad_input(g, w, size, stride, padding, dilation, groups):
    """dL/dx of _conv for dL/dy = g, x of spatial sizes ``size``: the full correlation of
    g spread by the stride (lhs_dilation) with the kernel turned by 180 degrees, its input
    and output channels swapped within each group, cropped by the padding (a negative
    pad crops). The high side's pad reaches the last positions of x that no window
    reaches: they get zeros."""
    kernel = w.shape[2:]
    d = len(kernel)
    co, cg = w.shape[:2]
    wt = w.reshape((groups, co // groups, cg) + kernel).swapaxes(1, 2)
    wt = jnp.flip(wt.reshape((groups * cg, co // groups) + kernel), axis=tuple(range(2, 2 + d)))
    pads = [(dl * (k - 1) - p, s_in + p - s * (o - 1) - 1)
            for k, dl, p, s, o, s_in in zip(kernel, dilation, padding, stride, g.shape[2:], size)]
    return jax.lax.conv_general_dilated(
        g, wt, window_strides=(1,) * d, padding=pads, lhs_dilation=stride,
        rhs_dilation=dilation, feature_group_count=groups, dimension_numbers=_conv_dims(d))


def _conv_grad_weight(x, g, kernel, stride, padding, dilation, groups):
    """dL/dw of _conv for dL/dy = g: the correlation of the padded x with g,
    (C_out, C/groups, *kernel). The batch axis is the one summed over (x's channels
    and g's output channels take the places of batch and features); the stride dilates
    g, the dilation strides the windows; each output channel meets the channels of its
    own group (batch_group_count)."""
    d = len(kernel)
    s = "DHW"[-d:]
    pads = [(p, dl * (k - 1) + st * (o - 1) + 1 - n - p)
            for k, dl, p, st, o, n in zip(kernel, dilation, padding, stride, g.shape[2:],
                                          x.shape[2:])]
    return jax.lax.conv_general_dilated(
        x, g, window_strides=dilation, padding=pads, rhs_dilation=stride,
        batch_group_count=groups, dimension_numbers=("CN" + s, "IO" + s, "CN" + s))


def _max_pool2d(x, k, stride, padding):
    """The largest entry of each window of x (N, C, H, W), padding with -inf."""
    return jax.lax.reduce_window(
        x, -jnp.inf, jax.lax.max, (1, 1) + tuple(k), (1, 1) + tuple(stride),
        ((0, 0), (0, 0)) + tuple((p, p) for p in padding))


def _max_pool2d_grad(x, g, k, stride, padding):
    """dL/dx of _max_pool2d for dL/dy = g: each g to the first arg-max of its window
    (row-major, as PyTorch and the NumPy helper), added up where windows overlap. The
    window's entries at its kh*kw offsets are stacked and jnp.argmax (the first maximum)
    picks the offset of each window, so that the choice never compares x with a maximum
    computed apart (XLA may compute x again inside another fusion, rounded otherwise);
    then, offset by offset, the windows that chose it get g at their strided place."""
    h, w = x.shape[2:]
    ho, wo = g.shape[2:]
    pads = ((0, 0), (0, 0)) + tuple((p, p) for p in padding)
    xp = jnp.pad(x, pads, constant_values=-jnp.inf)
    at = [(slice(None), slice(None), slice(i, i + stride[0] * (ho - 1) + 1, stride[0]),
           slice(j, j + stride[1] * (wo - 1) + 1, stride[1]))
          for i in range(k[0]) for j in range(k[1])]
    first = jnp.argmax(jnp.stack([xp[a] for a in at]), axis=0)  # row-major offset
    dxp = jnp.zeros(xp.shape, g.dtype)
    for offset, a in enumerate(at):
        dxp = dxp.at[a].add(jnp.where(first == offset, g, 0))
    return dxp[:, :, padding[0]:padding[0] + h, padding[1]:padding[1] + w]


def _avg_pool2d(x, k, stride, padding):
    """The mean of each window of x (N, C, H, W); zero padding counts in the mean."""
    total = jax.lax.reduce_window(
        x, jnp.zeros((), x.dtype), jax.lax.add, (1, 1) + tuple(k), (1, 1) + tuple(stride),
        ((0, 0), (0, 0)) + tuple((p, p) for p in padding))
    return total / (k[0] * k[1])


def _avg_pool2d_grad(g, k, stride, padding, size):
    """dL/dx of _avg_pool2d for dL/dy = g: g / (kh * kw) spread over each window, added
    up where windows overlap; the full correlation of g with a constant kernel, one
    channel per group."""
    c = g.shape[1]
    w = jnp.full((c, 1) + tuple(k), 1 / (k[0] * k[1]), dtype=g.dtype)
    return _conv_grad_input(g, w, size, stride, padding, (1, 1), c)


# -- normalization and dropout (issue 15): batch norm's running statistics and dropout's
# key are arguments, and what changes comes back as new arrays (nothing is updated in place)
def _batch_norm(x, axis, eps, momentum, training, running, key):
    """x normalized per feature of axis, the statistics taken over the other axes. Training:
    the batch's mean and population variance, and, when running is given (the calling
    function's own copy of the dict, which it returns), its entries key + '.mean' and
    key + '.var' replaced by new arrays as PyTorch updates them:
    running = (1 - momentum) * running + momentum * batch, the variance unbiased (n/(n-1)).
    Evaluation: the running statistics. training is a Python bool (static under jax.jit)."""
    axes = tuple(a for a in range(x.ndim) if a != axis % x.ndim)
    if training:
        n = x.size // x.shape[axis]
        if n < 2:
            raise ValueError(f"batch norm {key!r}: 1 value per feature in this batch (shape "
                             f"{x.shape}); training needs at least 2 to take a variance")
        mean = x.mean(axis=axes, keepdims=True)
        xc = x - mean
        var = (xc * xc).mean(axis=axes, keepdims=True)
        if running is not None:
            rm, rv = running[key + ".mean"], running[key + ".var"]
            running[key + ".mean"] = rm * (1 - momentum) + momentum * mean.reshape(-1)
            running[key + ".var"] = rv * (1 - momentum) + (momentum * n / (n - 1)) * var.reshape(-1)
        return xc / jnp.sqrt(var + eps)
    if running is None:
        raise ValueError(f"batch norm {key!r} in evaluation mode (training=False) needs the "
                         "running statistics: pass running=init_running(), updated by training")
    shape = [1] * x.ndim
    shape[axis] = -1  # a feature vector, broadcast along the other axes
    mean = running[key + ".mean"].reshape(shape)
    return (x - mean) / jnp.sqrt(running[key + ".var"].reshape(shape) + eps)


def _prng_key(rng):
    """A jax.random key from rng: a seed (an int, traced or not), a key (jax.random.key)
    or the raw uint32 pair of jax.random.PRNGKey."""
    if isinstance(rng, int):
        return jax.random.key(rng)
    if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
        return rng
    if rng.ndim == 0:
        return jax.random.key(rng)
    return jax.random.wrap_key_data(rng)


def _dropout_mask(x, p, rng, number, training):
    """Inverted dropout's mask for x: 1/(1-p) with probability 1-p, else 0, when training
    (and p > 0); ones otherwise. Drawn with jax.random from the key rng folded with the
    mask's number in the graph, so that every mask of one call has a stream of its own
    (pass a new rng every step: jax.random.fold_in(key, step))."""
    if not training or p == 0:
        return jnp.ones(x.shape, x.dtype)
    keep = jax.random.bernoulli(jax.random.fold_in(rng, number), 1 - p, x.shape)
    return keep.astype(x.dtype) * (1 / (1 - p))
