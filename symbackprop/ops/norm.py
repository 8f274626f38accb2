"""Normalization and dropout: ``batch_norm`` and ``dropout`` (issue 13).

Both ops behave differently when training and when evaluating, and both keep
something between calls that is not a parameter: batch normalization its running
mean and variance, dropout its random generator. Their mathematics is here; the
code that reads the mode, the running statistics and the generator is code
generation's (:mod:`symbackprop.codegen.lowering`: the entries whose ``context``
names ``training``, ``running`` and ``rng``, the arguments that every generated
function computing them takes). See docs/ops.md, "Normalization and dropout".

* ``sb.batch_norm(x, axis=1)``: ``x̂ = (x − μ_B) / √(σ²_B + ε)`` with the mean and the
  population variance of the batch taken over every axis but ``axis`` (the feature or
  channel axis, as PyTorch: (N, D) per feature over N, (N, C, H, W) per channel over
  N, H, W); no learned scale or shift (write them as ops: ``x̂·γ + β``). Its VJP is the
  textbook's three-term formula, made of sums:
  ``dx = (1/(n σ)) (n δ − Σδ − x̂ Σ(δ x̂))``, ``σ = √(σ²_B + ε)``, ``n`` the number of
  values per channel.
* ``sb.dropout(x, p)``: ``x · m`` with ``m = dropout_mask(x)``: each entry is kept with
  probability ``1 − p`` and scaled by ``1/(1 − p)`` (inverted dropout), else 0. The
  mask is a node of its own whose derivative is 0 (:attr:`OpDef.zero_grad`), so the
  gradient ``δ·m`` comes from the product and reads the very mask of the forward pass.
"""

from __future__ import annotations

import sympy as sp

from .elementwise import count
from .registry import OpDef, ShapeMismatch, apply, per_entry, register
from .tensor import norm_axes


def _apply(ref, op, args, **attrs):
    return ref.graph.apply(op, list(args), attrs)


# -- batch normalization ------------------------------------------------------------------
def bn_axes(attrs: dict, ndim: int) -> tuple:
    """The axes batch norm takes its statistics over: every axis but ``attrs['axis']``.

    Examples
    --------
    >>> bn_axes({"axis": 1}, 4), bn_axes({"axis": -1}, 2)
    ((0, 2, 3), (0,))
    """
    (c,) = norm_axes(attrs["axis"], ndim)
    return tuple(a for a in range(ndim) if a != c)


def _bn_shape(shapes, attrs, names):
    s = tuple(shapes[0])
    axis = attrs["axis"]
    if not isinstance(axis, int) or isinstance(axis, bool):
        raise ShapeMismatch(f"axis={axis!r} is not one int",
                            "Pass the feature (channel) axis, e.g. axis=1 for (N, C, H, W).")
    if len(s) < 2:
        raise ShapeMismatch("batch norm needs a batch axis and a feature axis",
                            "Give x at least 2 axes, e.g. (N, D).")
    axes = bn_axes(attrs, len(s))
    n = count(s, axes)
    if n == 1:
        raise ShapeMismatch(
            f"the statistics over axes {axes} (all but axis {axis}) are taken over 1 value "
            "per feature, whose variance is 0",
            "Normalize over more than one value: a batch of at least 2, or another axis.")
    eps, momentum = attrs["eps"], attrs["momentum"]
    if not isinstance(eps, (int, float)) or not eps > 0:
        raise ShapeMismatch(f"eps={eps!r} is not a number > 0", "Pass eps=1e-5.")
    if not isinstance(momentum, (int, float)) or not 0 <= momentum <= 1:
        raise ShapeMismatch(f"momentum={momentum!r} is outside [0, 1]", "Pass momentum=0.1.")
    return s


def _bn_vjp(g, args, out, attrs):
    """dx = (1/(n σ)) (n δ − Σδ − x̂ Σ(δ x̂)), the sums over the statistics' axes."""
    (x,) = args
    axes = bn_axes(attrs, x.ndim)
    n = count(x.shape, axes)
    total = lambda v: _apply(v, "sum", [v], axis=axes, keepdims=True)
    mean = lambda v: _apply(v, "mean", [v], axis=axes, keepdims=True)
    xc = x - mean(x)
    inv_sigma = (mean(xc * xc) + attrs["eps"]) ** -0.5  # 1/σ
    scale = inv_sigma * g.graph.const(1 / sp.sympify(n))  # 1/(n σ)
    return [scale * (g * g.graph.const(n) - total(g) - out * total(g * out))]


def _bn_notation(texts, attrs):
    return f"BN_{attrs['axis']}({texts[0]})"


register(OpDef(
    name="batch_norm", arity=1, attrs={"axis": 1, "eps": 1e-5, "momentum": 0.1},
    shape=_bn_shape, vjp=_bn_vjp, notation=_bn_notation,
    mixed_float32=True,  # its statistics in float32 in mixed precision, as torch.autocast's
    batch_statistics=True,  # data parallel: over every rank's rows (SyncBatchNorm)
    # per entry: the mean, the centring, its square for the variance, then (x - μ)·(1/σ)
    flops=per_entry(5),
    display=lambda args, attrs: sp.Function("BN")(args[0]),
    doc="batch normalization: (x - batch mean) / sqrt(batch variance + eps) per feature "
        "of axis (statistics over the other axes); running statistics for evaluation"))


def batch_norm(x, axis: int = 1, eps: float = 1e-5, momentum: float = 0.1):
    """Batch normalization of ``x`` per feature of ``axis`` (statistics over the others).

    Training mode (the default of every generated function) uses the batch's mean and
    population variance and updates the running ones, when given, as PyTorch:
    ``running = (1 − momentum)·running + momentum·batch``, the variance unbiased
    (``n/(n − 1)``) there. Evaluation mode (``forward(..., training=False,
    running=...)``) uses the running ones. No learned scale or shift: write them as ops.

    Examples
    --------
    >>> g = sb.Graph()
    >>> x = g.input("x", shape=("N", 3))
    >>> h = g.output("h", sb.batch_norm(x, axis=1))
    >>> _ = g.output("L", sb.sum(h))
    >>> fn = sb.compile(g, wrt=[])
    >>> np.round(fn.forward(x=[[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])["h"], 3)
    array([[-1.,  0.,  1.],
           [ 1.,  0., -1.]])
    """
    return apply("batch_norm", x, axis=axis, eps=eps, momentum=momentum)


# -- dropout ------------------------------------------------------------------------------
def _mask_shape(shapes, attrs, names):
    p = attrs["p"]
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise ShapeMismatch(f"dropout p={p!r} is outside [0, 1)",
                            "Pass the probability of dropping an entry, 0 <= p < 1 "
                            "(p = 0.5 drops half).")
    return tuple(shapes[0])


register(OpDef(
    name="dropout_mask", arity=1, attrs={"p": 0.5, "key": 0}, shape=_mask_shape,
    zero_grad=True, internal=True,  # sb.dropout builds it
    flops=per_entry(2),  # per entry: the comparison with p, the scale 1/(1 - p)
    notation=lambda texts, attrs: f"mask_p={attrs['p']}({texts[0]})",
    display=lambda args, attrs: sp.Function("mask")(args[0]),
    doc="dropout's mask for x: 1/(1-p) with probability 1-p, else 0, drawn from the "
        "generator rng when training; ones when evaluating"))

def dropout(x, p: float = 0.5):
    """Inverted dropout: ``x * dropout_mask(x)``, each entry kept with probability
    ``1 − p`` and scaled by ``1/(1 − p)`` when training, ``x`` itself when evaluating.

    The mask is drawn in the generated code from the generator ``rng`` (an argument of
    every generated function that computes it: a seed or a ``np.random.Generator``,
    default 0). Its own node (``key``, a number unique in the process, keeps two masks of
    one input apart: the count of masks in the graph) has derivative 0, so the gradient ``δ·mask`` reads the mask of the
    forward pass.

    Examples
    --------
    >>> g = sb.Graph()
    >>> x = g.input("x", shape=(2, 4))
    >>> y = g.output("y", sb.dropout(x, 0.5))
    >>> _ = g.output("L", sb.sum(y))
    >>> fn = sb.compile(g, wrt=[])
    >>> np.unique(fn.forward(x=np.ones((2, 4)), rng=0)["y"])  # dropped or kept, scaled
    array([0., 2.])
    >>> float(fn.forward(x=np.ones((2, 4)), training=False)["y"].min())  # identity
    1.0
    """
    nx = x.graph.nx
    key = 1 + sum(nx.nodes[n].get("op") == "dropout_mask" for n in nx)
    mask = apply("dropout_mask", x, p=p, key=key)
    return x * mask


__all__ = ["batch_norm", "bn_axes", "dropout"]
