"""The PyTorch helper functions that structural ops call in generated torch code (issue 15).

The counterparts of :mod:`~symbackprop.codegen.runtime.numpy_ops` for the ``torch``
backend (:mod:`symbackprop.codegen.torch_backend`): the same mathematics with plain
tensor functions (``torch.nn.functional``'s convolutions and pools, ``torch.nn.grad``'s
convolution gradients), run under ``torch.inference_mode()`` by the generated functions:
no autograd, the gradients are symbackprop's. Every tensor a helper makes takes the
device and dtype of the tensors it is given. Code generation copies a helper's source
into a module that calls it; ``torch`` and ``DTYPE`` are what such a module defines.
PyTorch is imported only when it is installed: the source can be copied without it.
"""

from __future__ import annotations

try:
    import torch
except ImportError:  # generating torch source needs no PyTorch; running these helpers does
    torch = None

DTYPE = None  # the generated module's: torch.float64 or torch.float32


def _device(*args):
    """The device of the first tensor among args (the default device when none is a
    tensor): where the function computes and makes its tensors."""
    for a in args:
        if isinstance(a, torch.Tensor):
            return a.device
    return torch.get_default_device()


def _constant(name, device):
    """The module's constant array ``name`` (made at import, on PyTorch's default device)
    on ``device``: the tensor itself when it is there, else a copy made once for that
    device and kept, so that a function computes on its inputs' device without copying
    the constant on every call."""
    t = globals()[name]
    if t.device == device:
        return t
    copies = _constant.__dict__.setdefault("copies", {})
    if (name, device) not in copies:
        copies[name, device] = t.to(device)
    return copies[name, device]


def _softmax(x, axis=-1):
    """Softmax along axis (PyTorch's, shifted by the maximum: exp never overflows)."""
    return torch.softmax(x, dim=axis)


def _log_softmax(x, axis=-1):
    """log(softmax(x)) along axis, computed without forming softmax."""
    return torch.log_softmax(x, dim=axis)


def _softmax_cross_entropy(logits, labels):
    """Mean over the batch of -log softmax(logits)[i, labels[i]] (PyTorch's cross_entropy:
    each row's logsumexp shifted by its maximum, never inf)."""
    return torch.nn.functional.cross_entropy(logits, labels)


def _softmax_cross_entropy_grad(logits, labels, g):
    """dL/dlogits of the mean cross-entropy: (softmax(logits) - onehot(labels)) * g / N,
    computed in the new softmax: the one-hot subtracted at each row's label, then scaled."""
    p = torch.softmax(logits, dim=1)
    minus_one = torch.full((len(labels), 1), -1, dtype=p.dtype, device=p.device)
    p.scatter_add_(1, labels[:, None], minus_one)
    return p.mul_(g / logits.shape[0])


def _layer_norm(x, eps=1e-5):
    """(x - mean) / sqrt(var + eps) over the last axis (no scale or shift)."""
    return torch.nn.functional.layer_norm(x, x.shape[-1:], eps=eps)


# The stable functions of symbackprop.ops.stable, printed as calls of these helpers: the
# NumPy helpers' formulas.
def _sigmoid(x):
    """1 / (1 + exp(-x)) without overflow: exp(-|x|) <= 1 on both sides of 0."""
    t = torch.exp(-torch.abs(x))
    return torch.where(x >= 0, 1, t) / (1 + t)


def _softplus(x):
    """log(1 + exp(x)) without overflow: max(x, 0) + log1p(exp(-|x|))."""
    return torch.clamp(x, min=0) + torch.log1p(torch.exp(-torch.abs(x)))


def _sech2(x):
    """1 - tanh(x)**2 without cancellation: 4t / (1 + t)**2 with t = exp(-2|x|) <= 1."""
    t = torch.exp(-2 * torch.abs(x))
    return 4 * t / (1 + t) ** 2


def _heaviside(x, at0):
    """The step of x as x's floats: 1 where x > 0, at0 where x == 0, 0 below."""
    return (x > 0).to(x.dtype) + (x == 0).to(x.dtype) * at0


def _step_grad(g, x):
    """g where x > 0, else 0: ``g * (x > 0)`` in one pass, without the boolean array
    (PyTorch's threshold_backward, the kernel of its own relu gradient)."""
    return torch.ops.aten.threshold_backward(g, x, 0)


def _gamma(x):
    """The gamma function: exp(lgamma(x)) with the sign of gamma, negative on the
    intervals (-2k - 1, -2k) left of 0."""
    sign = torch.where((x < 0) & (torch.floor(x) % 2 != 0), -1.0, 1.0).to(x.dtype)
    return sign * torch.exp(torch.lgamma(x))


def _logsumexp(x, axis=None, keepdims=False):
    """log(sum(exp(x))) over axis (PyTorch's, shifted by the maximum; -inf for a slice
    that is all -inf); axis None: every axis."""
    dims = tuple(range(x.ndim)) if axis is None else axis
    return torch.logsumexp(x, dim=dims, keepdim=keepdims)


def _forward_index(shape, index):
    """``index`` (a tuple) for an array of ``shape`` with every slice that steps backwards
    (torch's slices step forwards only) made the forward slice that picks the same entries
    of the axis flipped, and the axes to flip."""
    used = sum(e is not None and e is not Ellipsis for e in index)
    axis, flips, out = 0, [], []
    for e in index:
        if e is Ellipsis:
            axis += len(shape) - used
        elif isinstance(e, slice) and e.step is not None and e.step < 0:
            n = shape[axis]
            start, stop, step = e.indices(n)
            flips.append(axis)
            e = slice(n - 1 - start, n - 1 - stop, -step)
        if e is not None and e is not Ellipsis:
            axis += 1
        out.append(e)
    return tuple(out), flips


def _slice(x, index):
    """``x[index]`` for an index with a slice that steps backwards: those axes flipped,
    then sliced forwards."""
    index, flips = _forward_index(x.shape, index)
    return torch.flip(x, flips)[index]


def _unslice(g, shape, index):
    """Zeros of ``shape`` with ``g`` at ``index``: the gradient of a slice (a slice that
    steps backwards: written into the flipped zeros, flipped back)."""
    index, flips = _forward_index(shape, index)
    out = g.new_zeros(shape)
    out[index] = g
    return torch.flip(out, flips) if flips else out


def _take(x, idx, axis):
    """``np.take(x, idx, axis)``: the entries of x at the indices idx along axis, idx's
    axes in its place."""
    picked = x.index_select(axis, idx.reshape(-1))
    return picked.reshape(x.shape[:axis] + idx.shape + x.shape[axis + 1:])


def _take_grad(g, idx, size, axis):
    """The gradient of ``take(x, idx, axis)``: zeros with ``size`` entries along ``axis``,
    and ``g`` added at the indices, repeated indices accumulating (one index_add_ on a 3-D
    view: leading axes, the indexed axis, trailing axes)."""
    lead, trail = g.shape[:axis], g.shape[axis + idx.ndim:]
    rows, cols = lead.numel(), trail.numel()
    out = g.new_zeros((rows, size, cols))
    out.index_add_(1, idx.reshape(-1), g.reshape(rows, idx.numel(), cols))
    return out.reshape(lead + (size,) + trail)


# -- convolution and pooling: torch.nn.functional and torch.nn.grad, the NumPy helpers'
# names and arguments (attributes as tuples, one int per spatial axis; conv1d and conv2d
# share the helpers)
def _conv(x, w, stride, padding, dilation, groups):
    """Convolution (cross-correlation) of x (N, C, *S) with w (C_out, C/groups, *kernel):
    (N, C_out, *out)."""
    conv = torch.nn.functional.conv1d if len(stride) == 1 else torch.nn.functional.conv2d
    return conv(x, w, stride=stride, padding=padding, dilation=dilation, groups=groups)


def _conv_grad_input(g, w, size, stride, padding, dilation, groups):
    """dL/dx of _conv for dL/dy = g, x of spatial sizes ``size`` (the positions no window
    reaches get zeros)."""
    grad = torch.nn.grad.conv1d_input if len(size) == 1 else torch.nn.grad.conv2d_input
    shape = (g.shape[0], w.shape[1] * groups) + tuple(size)
    return grad(shape, w, g, stride=stride, padding=padding, dilation=dilation, groups=groups)


def _conv_grad_weight(x, g, kernel, stride, padding, dilation, groups):
    """dL/dw of _conv for dL/dy = g: (C_out, C/groups, *kernel)."""
    grad = torch.nn.grad.conv1d_weight if len(kernel) == 1 else torch.nn.grad.conv2d_weight
    shape = (g.shape[1], x.shape[1] // groups) + tuple(kernel)
    return grad(x, shape, g, stride=stride, padding=padding, dilation=dilation, groups=groups)


def _max_pool2d(x, k, stride, padding):
    """The largest entry of each window of x (N, C, H, W), padding with -inf."""
    return torch.nn.functional.max_pool2d(x, k, stride, padding)


def _max_pool2d_grad(x, g, k, stride, padding):
    """dL/dx of _max_pool2d for dL/dy = g: each g to the first arg-max of its window
    (row-major, as NumPy's helper), added up where windows overlap (one scatter-add of g
    at the arg-max's flat index)."""
    _, at = torch.nn.functional.max_pool2d(x, k, stride, padding, return_indices=True)
    dx = x.new_zeros(x.shape[:2] + (x.shape[2] * x.shape[3],))
    dx.scatter_add_(2, at.flatten(2), g.flatten(2))
    return dx.reshape(x.shape)


def _avg_pool2d(x, k, stride, padding):
    """The mean of each window of x (N, C, H, W); zero padding counts in the mean."""
    return torch.nn.functional.avg_pool2d(x, k, stride, padding)


def _avg_pool2d_grad(g, k, stride, padding, size):
    """dL/dx of _avg_pool2d for dL/dy = g: g / (kh * kw) spread over each window, added up
    where windows overlap: the input gradient of a convolution with a constant kernel,
    one channel per group."""
    c = g.shape[1]
    w = g.new_full((c, 1) + tuple(k), 1 / (k[0] * k[1]))
    return torch.nn.grad.conv2d_input((g.shape[0], c) + tuple(size), w, g, stride=stride,
                                      padding=padding, groups=c)


# -- batch norm and dropout: NumPy's helpers' semantics (running statistics updated in
# place, inverted dropout), with tensors and a torch.Generator
def _batch_norm(x, axis, eps, momentum, training, running, key):
    """x normalized per feature of axis, the statistics taken over the other axes. Training:
    the batch's mean and population variance, and, when running is given, its tensors
    key + '.mean' and key + '.var' updated in place as PyTorch does:
    running = (1 - momentum) * running + momentum * batch, the variance unbiased (n/(n-1)).
    Evaluation: the running statistics (NumPy's helper, operation for operation)."""
    axes = tuple(a for a in range(x.ndim) if a != axis % x.ndim)
    if training:
        n = x.numel() // x.shape[axis]
        if n < 2:
            raise ValueError(f"batch norm {key!r}: 1 value per feature in this batch (shape "
                             f"{tuple(x.shape)}); training needs at least 2 to take a variance")
        mean = x.mean(dim=axes, keepdim=True)
        xc = x - mean
        var = (xc * xc).mean(dim=axes, keepdim=True)
        if running is not None:
            rm, rv = running[key + ".mean"], running[key + ".var"]
            rm *= 1 - momentum
            rm += momentum * mean.reshape(-1).to(rm.device)
            rv *= 1 - momentum
            rv += (momentum * n / (n - 1)) * var.reshape(-1).to(rv.device)
        return xc / torch.sqrt(var + eps)
    if running is None:
        raise ValueError(f"batch norm {key!r} in evaluation mode (training=False) needs the "
                         "running statistics: pass running=init_running(), updated by training")
    shape = [1] * x.ndim
    shape[axis] = -1  # a feature vector, broadcast along the other axes
    mean = running[key + ".mean"].to(x.device, x.dtype).reshape(shape)
    var = running[key + ".var"].to(x.device, x.dtype).reshape(shape)
    return (x - mean) / torch.sqrt(var + eps)


def _generator(rng):
    """The torch.Generator that draws the dropout masks: rng itself, or a new one on the
    CPU seeded with rng (an int): the same seed gives the same masks on every device."""
    if isinstance(rng, torch.Generator):
        return rng
    if isinstance(rng, bool) or not hasattr(rng, "__index__"):  # an int, or NumPy's
        kind = f"{type(rng).__module__}.{type(rng).__qualname__}".removeprefix("builtins.")
        raise TypeError(f"rng={kind} given; expected a seed (an int) or a torch.Generator, "
                        "which draws the torch backend's dropout masks: pass rng=SEED or "
                        "rng=torch.Generator().manual_seed(SEED)")
    return torch.Generator().manual_seed(int(rng))


def _dropout_mask(x, p, rng, training):
    """Inverted dropout's mask for x: 1/(1-p) with probability 1-p, else 0, one float64 draw
    of the generator rng per entry (the same mask in float32 and float64) on rng's device,
    moved to x's, when training (and p > 0); ones otherwise."""
    if not training or p == 0:
        return torch.ones_like(x)
    keep = torch.rand(x.shape, generator=rng, dtype=torch.float64, device=rng.device) >= p
    return (keep.to(x.dtype) * (1 / (1 - p))).to(x.device)
