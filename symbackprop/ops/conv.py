"""Convolution and pooling: conv1d, conv2d, max_pool2d, avg_pool2d (issue 13).

Layouts are PyTorch's: an input ``x`` is ``(N, C, L)`` or ``(N, C, H, W)``, a kernel
``w`` is ``(C_out, C_in/groups, k)`` or ``(C_out, C_in/groups, kh, kw)``. Each spatial
size of the output is ``(H + 2p - d(k - 1) - 1) // s + 1`` for stride ``s``, padding
``p`` (zeros) and dilation ``d``; ``stride``, ``padding`` and ``dilation`` are an int or
one int per spatial axis (a pair for the 2-D ops).

The gradients are ops too, so the backward graph is made of ops:

- ``conv_grad_input(δ, W)``: ∂L/∂x, the *full* correlation of δ (stride undone by
  spreading δ with zeros, ``s - 1`` between entries) with the kernel turned by 180°
  (``rot180``, input and output channels swapped), cropped by the padding;
- ``conv_grad_weight(x, δ)``: ∂L/∂W, the correlation of the (padded) input with δ;
- ``max_pool2d_grad(x, δ)``: δ routed to the arg-max of each window (ties: the first
  maximum in the window in row-major order, as PyTorch), summed where windows overlap;
- ``avg_pool2d_grad(δ)``: δ/(kh·kw) spread over each window, summed where windows
  overlap (the full correlation of δ with a constant kernel).

Average pooling counts the zero padding in its divisor (PyTorch's default,
``count_include_pad=True``): every window divides by ``kh·kw``. Max pooling pads with
−∞ and, as PyTorch, needs ``padding <= k/2`` so that no window is padding only.

The batch size may be a name (``"N"``) and passes through, so a network compiles once
for any batch size. Spatial sizes may be names too (``"H"``, ``"W"``): the output size is
then the expression ``(H + 2p − d(k−1) − 1)//s + 1`` (:mod:`symbackprop.sizes`), so a
network compiles once for any image size. Channels and kernel sizes are integers. Whether
a kernel fits a symbolic size is known only when the code runs: NumPy's window view then
refuses an input smaller than the kernel (``window shape cannot be larger than input array
shape``).

How NumPy computes them is code generation's (:mod:`symbackprop.codegen.lowering`,
helpers in :mod:`symbackprop.codegen.runtime.numpy_ops`).
"""

from __future__ import annotations

import sympy as sp

from .. import sizes
from .registry import OpDef, ShapeMismatch, entries, register

_CONV_ATTRS = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1}


def tuple_attr(value, d: int, what: str, least: int) -> tuple:
    """``value`` (an int or ``d`` ints) as a tuple of ``d`` ints, each ``>= least``.

    Examples
    --------
    >>> tuple_attr(2, 2, "stride", 1), tuple_attr([1, 3], 2, "stride", 1)
    ((2, 2), (1, 3))
    >>> tuple_attr(0, 2, "stride", 1)
    Traceback (most recent call last):
    ...
    symbackprop.ops.registry.ShapeMismatch: stride=0: each entry must be an int >= 1
    """
    vals = (value,) * d if isinstance(value, int) and not isinstance(value, bool) \
        else tuple(value) if isinstance(value, (tuple, list)) else None
    if vals is None or len(vals) != d or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= least for v in vals):
        pair = "an int" if d == 1 else f"an int or {d} ints"
        raise ShapeMismatch(f"{what}={value!r}: each entry must be an int >= {least}",
                            f"Pass {what} as {pair}, each at least {least}.")
    return vals


def _static(shape, axes, what: str, kind: str = "channels") -> None:
    for i in axes:
        if not isinstance(shape[i], int):
            raise ShapeMismatch(
                f"{what} has the symbolic size {shape[i]!r} on axis {i}; the batch and the "
                f"spatial sizes may be names, the {kind} must be integers",
                f"Declare the {kind} as integers.")


def conv_attrs(attrs: dict, d: int) -> tuple:
    """``(stride, padding, dilation, groups)`` of a convolution with ``d`` spatial axes,
    normalised to tuples of ints (groups an int).

    Examples
    --------
    >>> conv_attrs({"stride": 2, "padding": (1, 0), "dilation": 1, "groups": 1}, 2)
    ((2, 2), (1, 0), (1, 1), 1)
    """
    stride = tuple_attr(attrs["stride"], d, "stride", 1)
    padding = tuple_attr(attrs["padding"], d, "padding", 0)
    dilation = tuple_attr(attrs["dilation"], d, "dilation", 1)
    (groups,) = tuple_attr(attrs["groups"], 1, "groups", 1)
    return stride, padding, dilation, groups


def out_size(size, k: int, s: int, p: int, dl: int, axis: int):
    """One output size ``(size + 2p - dl(k - 1) - 1) // s + 1``; the kernel must fit. A
    symbolic ``size`` (a name such as ``"H"``, or an expression) gives an expression; the
    kernel is then checked when the code runs (NumPy refuses a window larger than its
    input).

    Examples
    --------
    >>> out_size(7, 3, 2, 1, 1, 2), out_size("H", 3, 2, 1, 1, 2), out_size("H", 3, 1, 1, 1, 2)
    (4, '(H + 1)//2', 'H')
    """
    span = dl * (k - 1) + 1
    if not isinstance(size, int):
        # (size + 2p - span)//s + 1 written as one floor: ((H - 1)//2 + 1)//2 rather than
        # ((H - 1)//2 - 1)//2 + 1 for a pooling after a strided convolution
        return sizes.from_sympy((sizes.to_sympy(size) + 2 * p - span + s) // s)
    if span > size + 2 * p:
        raise ShapeMismatch(
            f"the kernel spans {span} on axis {axis} (size {k}, dilation {dl}) but the "
            f"padded input has {size + 2 * p} (size {size}, padding {p})",
            "Use a smaller kernel or dilation, or more padding.")
    return (size + 2 * p - span) // s + 1


def _conv_shape(d: int):
    def shape(shapes, attrs, names):
        x, w = (tuple(s) for s in shapes)
        if len(x) != d + 2 or len(w) != d + 2:
            dims = "(N, C, L)" if d == 1 else "(N, C, H, W)"
            kdims = "(C_out, C_in/groups, k)" if d == 1 else "(C_out, C_in/groups, kh, kw)"
            raise ShapeMismatch(f"conv{d}d needs an input {dims} and a kernel {kdims}",
                                f"Give {names[0]} {d + 2} axes and {names[1]} {d + 2} axes.")
        _static(x, (1,), names[0])
        _static(w, range(d + 2), names[1], "kernel's sizes")
        stride, padding, dilation, groups = conv_attrs(attrs, d)
        if x[1] % groups or w[0] % groups:
            raise ShapeMismatch(
                f"groups={groups} does not divide the input channels ({x[1]}) and the "
                f"output channels ({w[0]})", "Choose groups dividing both.")
        if w[1] * groups != x[1]:
            raise ShapeMismatch(
                f"the kernel takes {w[1]} channel(s) per group ({w[1] * groups} in all with "
                f"groups={groups}) but the input has {x[1]}",
                f"Declare {names[1]} as ({w[0]}, {x[1] // groups}, {', '.join(map(str, w[2:]))}).")
        return (x[0], w[0]) + tuple(
            out_size(x[2 + i], w[2 + i], stride[i], padding[i], dilation[i], 2 + i)
            for i in range(d))
    return shape


def _conv_fans(i, shapes, attrs):
    """The kernel (argument 1) of a convolution: each output sums over
    ``C_in/groups · kh · kw`` inputs, each input feeds ``C_out · kh · kw`` outputs (as
    PyTorch's initialisation counts)."""
    if i != 1:
        return None
    w = shapes[1]
    if not all(isinstance(v, int) for v in w):
        return None
    k = 1
    for v in w[2:]:
        k *= v
    return w[1] * k, w[0] * k


def _conv_vjp(g, args, out, attrs):
    x, w = args
    common = dict(attrs)
    gx = g.graph.apply("conv_grad_input", [g, w], {**common, "size": tuple(x.shape[2:])})
    gw = g.graph.apply("conv_grad_weight", [x, g], {**common, "kernel": tuple(w.shape[2:])})
    return [gx, gw]


def _extra(attrs: dict, defaults: dict) -> list:
    return [f"{k}={v!r}" for k, v in attrs.items()
            if k in defaults and v != defaults[k]
            and not (isinstance(v, (tuple, list)) and len(set(v)) == 1
                     and v[0] == defaults[k])]


def _call_notation(name: str, defaults: dict):
    """``conv2d(x, w, stride=2)``: the op's name, its arguments, the attributes that differ
    from their defaults."""
    return lambda t, a: f"{name}({', '.join(list(t) + _extra(a, defaults))})"


class Correlation(sp.Function):
    """Formulas' ``a ⋆ b``: the cross-correlation of a with b; ``rot`` turns b by 180°
    and ``full`` pads a so that every overlap counts (∂L/∂x = δ ⋆ rot180(W) (full))."""

    nargs = 2
    rot = False
    full = False

    def _text(self, p, a, b):
        b = f"rot180({b})" if self.rot else b
        return f"{a} ⋆ {b}" + (" (full)" if self.full else "")

    def _sympystr(self, p):
        return self._text(p, p._print(self.args[0]), p._print(self.args[1]))

    def _latex(self, p):
        a, b = p._print(self.args[0]), p._print(self.args[1])
        b = rf"\operatorname{{rot180}}({b})" if self.rot else b
        return rf"{a} \star {b}" + (r"\ (\text{full})" if self.full else "")


class FullCorrelationRot(Correlation):
    """δ ⋆ rot180(W) (full): the gradient of a convolution's input."""

    rot = True
    full = True


def _conv_flops(arg_shapes, out_shape, attrs):
    """A multiply-add (2) per output entry and kernel entry it sums over, C_in/groups·kh·kw."""
    return 2 * entries(out_shape) * entries(arg_shapes[1][1:])


def _window_flops(arg_shapes, out_shape, attrs):
    """Pooling and its gradients: one operation per entry of the pooled array and window
    entry (kh·kw); the pooled array is the output of a pooling, the gradient argument
    (the last) of a pooling's gradient."""
    k, _, _ = pool_attrs(attrs)
    pooled = out_shape if len(arg_shapes) == 1 and "size" not in attrs else arg_shapes[-1]
    return entries(pooled) * k[0] * k[1]


register(OpDef(
    name="conv2d", arity=2, attrs=dict(_CONV_ATTRS), shape=_conv_shape(2), fans=_conv_fans,
    flops=_conv_flops,
    vjp=_conv_vjp, notation=_call_notation("conv2d", _CONV_ATTRS),
    doc="2-D convolution (cross-correlation, as PyTorch) of x (N, C, H, W) with a kernel "
        "(C_out, C_in/groups, kh, kw); stride, padding (zeros), dilation, groups"))
register(OpDef(
    name="conv1d", arity=2, attrs=dict(_CONV_ATTRS), shape=_conv_shape(1), fans=_conv_fans,
    flops=_conv_flops,
    vjp=_conv_vjp, notation=_call_notation("conv1d", _CONV_ATTRS),
    doc="1-D convolution (cross-correlation, as PyTorch) of x (N, C, L) with a kernel "
        "(C_out, C_in/groups, k); stride, padding (zeros), dilation, groups"))


# -- the convolution's gradients, as ops ---------------------------------------------------
def _grad_input_shape(shapes, attrs, names):
    g, w = (tuple(s) for s in shapes)
    d = len(w) - 2
    size = tuple(attrs["size"])
    _, _, _, groups = conv_attrs(attrs, d)
    x = (g[0], w[1] * groups) + size
    want = _conv_shape(d)([x, w], attrs, ["x", names[1]])
    if tuple(g) != want:
        raise ShapeMismatch(f"the incoming gradient should be {want}",
                            "Pass the gradient of the convolution's output.")
    return x


def _grad_weight_shape(shapes, attrs, names):
    x, g = (tuple(s) for s in shapes)
    d = len(x) - 2
    _, _, _, groups = conv_attrs(attrs, d)
    w = (g[1], x[1] // groups) + tuple(attrs["kernel"])
    want = _conv_shape(d)([x, w], attrs, [names[0], "w"])
    if tuple(g) != want:
        raise ShapeMismatch(f"the incoming gradient should be {want}",
                            "Pass the gradient of the convolution's output.")
    return w


def _conv_op(d: int) -> str:
    return "conv1d" if d == 1 else "conv2d"


def _conv_attrs_only(attrs):
    return {k: attrs[k] for k in _CONV_ATTRS}


def _grad_input_vjp(G, args, out, attrs):
    """conv_grad_input(δ, W) = J_xᵀδ is bilinear: ⟨G, J_xᵀδ⟩ = ⟨δ, conv(G, W)⟩, so
    d/dδ = conv(G, W) and d/dW = conv_grad_weight(G, δ)."""
    g, w = args
    a = _conv_attrs_only(attrs)
    return [G.graph.apply(_conv_op(w.ndim - 2), [G, w], a),
            G.graph.apply("conv_grad_weight", [G, g], {**a, "kernel": tuple(w.shape[2:])})]


def _grad_weight_vjp(G, args, out, attrs):
    """conv_grad_weight(x, δ) = J_Wᵀδ: ⟨G, J_Wᵀδ⟩ = ⟨δ, conv(x, G)⟩, so
    d/dx = conv_grad_input(δ, G) and d/dδ = conv(x, G)."""
    x, g = args
    a = _conv_attrs_only(attrs)
    return [G.graph.apply("conv_grad_input", [g, G], {**a, "size": tuple(x.shape[2:])}),
            G.graph.apply(_conv_op(x.ndim - 2), [x, G], a)]


register(OpDef(
    name="conv_grad_input", arity=2, attrs={**_CONV_ATTRS, "size": None},
    shape=_grad_input_shape, vjp=_grad_input_vjp, internal=True,
    # the forward's count: a multiply-add per entry of δ and of W's (C_in/groups, k...)
    flops=lambda s, out, a: 2 * entries(s[0]) * entries(s[1][1:]),
    notation=lambda t, a: f"{t[0]} ⋆ rot180({t[1]}) (full)",
    display=lambda args, attrs: FullCorrelationRot(*args),
    doc="∂L/∂x of a convolution: δ ⋆ rot180(W) (full), the full correlation of δ "
        "(spread by the stride) with the turned kernel, cropped by the padding"))
register(OpDef(
    name="conv_grad_weight", arity=2, attrs={**_CONV_ATTRS, "kernel": None},
    shape=_grad_weight_shape, vjp=_grad_weight_vjp, internal=True,
    flops=lambda s, out, a: 2 * entries(s[1]) * entries(out[1:]),
    notation="{0} ⋆ {1}", display=lambda args, attrs: Correlation(*args),
    doc="∂L/∂W of a convolution: x ⋆ δ, the correlation of the padded input with δ"))


# -- pooling --------------------------------------------------------------------------------
_POOL_ATTRS = {"k": 2, "stride": None, "padding": 0}


def pool_attrs(attrs: dict) -> tuple:
    """``(k, stride, padding)`` of a 2-D pooling as pairs; the stride defaults to ``k``.

    Examples
    --------
    >>> pool_attrs({"k": 3, "stride": None, "padding": 1})
    ((3, 3), (3, 3), (1, 1))
    """
    k = tuple_attr(attrs["k"], 2, "k", 1)
    stride = k if attrs["stride"] is None else tuple_attr(attrs["stride"], 2, "stride", 1)
    return k, stride, tuple_attr(attrs["padding"], 2, "padding", 0)


def _pool_shape(max_pool: bool):
    def shape(shapes, attrs, names):
        x = tuple(shapes[0])
        if len(x) != 4:
            raise ShapeMismatch("2-D pooling needs an input (N, C, H, W)",
                                f"Give {names[0]} four axes.")
        k, stride, padding = pool_attrs(attrs)
        if max_pool and any(2 * p > kk for p, kk in zip(padding, k)):
            raise ShapeMismatch(f"padding {padding} is more than half the window {k}",
                                "Use padding <= k/2 (as PyTorch), so no window is padding only.")
        return x[:2] + tuple(out_size(x[2 + i], k[i], stride[i], padding[i], 1, 2 + i)
                             for i in range(2))
    return shape


def _pool_notation(name: str):
    """``max_pool2d(h, 2)``, ``avg_pool2d(h, 3, stride=1, padding=1)``: the window always,
    the other attributes where they differ from their defaults."""
    def note(t, a):
        k = a["k"]
        k = k[0] if isinstance(k, (tuple, list)) and len(set(k)) == 1 else k
        k = tuple(k) if isinstance(k, list) else k
        return f"{name}({', '.join([*t, repr(k)] + _extra(a, {'stride': None, 'padding': 0}))})"
    return note


def _max_pool_vjp(g, args, out, attrs):
    return [g.graph.apply("max_pool2d_grad", [args[0], g], dict(attrs))]


def _avg_pool_vjp(g, args, out, attrs):
    return [g.graph.apply("avg_pool2d_grad", [g], {**attrs, "size": tuple(args[0].shape[2:])})]


register(OpDef(
    name="max_pool2d", arity=1, attrs=dict(_POOL_ATTRS), shape=_pool_shape(True),
    flops=_window_flops,
    vjp=_max_pool_vjp, dtype=lambda d, a: d[0],
    notation=_pool_notation("max_pool2d"),
    doc="largest entry of each k×k window of x (N, C, H, W); stride defaults to k, "
        "padding with −∞ (at most k/2)"))
register(OpDef(
    name="avg_pool2d", arity=1, attrs=dict(_POOL_ATTRS), shape=_pool_shape(False),
    flops=_window_flops,
    vjp=_avg_pool_vjp,
    notation=_pool_notation("avg_pool2d"),
    doc="mean of each k×k window of x (N, C, H, W); stride defaults to k, zero padding "
        "counted in the mean (PyTorch's count_include_pad=True)"))


def _max_pool_grad_shape(shapes, attrs, names):
    x, g = (tuple(s) for s in shapes)
    want = _pool_shape(True)([x], attrs, names[:1])
    if g != want:
        raise ShapeMismatch(f"the incoming gradient should be {want}",
                            "Pass the gradient of the pooling's output.")
    return x


def _avg_pool_grad_shape(shapes, attrs, names):
    g = tuple(shapes[0])
    x = g[:2] + tuple(attrs["size"])
    want = _pool_shape(False)([x], attrs, ["x"])
    if g != want:
        raise ShapeMismatch(f"the incoming gradient should be {want}",
                            "Pass the gradient of the pooling's output.")
    return x


def _avg_pool_grad_vjp(G, args, out, attrs):
    """avg_pool2d_grad is avg_pool2d's transpose (both linear): its VJP is avg_pool2d."""
    return [G.graph.apply("avg_pool2d", [G], {k: attrs[k] for k in _POOL_ATTRS})]


# max_pool2d_grad is linear in δ but its routing depends on x; its own VJP (a gather at
# the arg-max) is not declared: second-order gradients through max pooling are not
# supported, so it is declared non-differentiable.
register(OpDef(
    name="max_pool2d_grad", arity=2, attrs=dict(_POOL_ATTRS), shape=_max_pool_grad_shape,
    flops=_window_flops,
    vjp=None, differentiable=False, internal=True,
    notation=lambda t, a: f"route_argmax({t[0]}, {t[1]})",
    display=lambda args, attrs: sp.Function("route_argmax")(*args),
    doc="∂L/∂x of max_pool2d: δ routed to the first arg-max of each window, summed "
        "where windows overlap"))
register(OpDef(
    name="avg_pool2d_grad", arity=1, attrs={**_POOL_ATTRS, "size": None},
    shape=_avg_pool_grad_shape, vjp=_avg_pool_grad_vjp, internal=True,
    flops=_window_flops,
    display=lambda args, attrs: sp.Function("spread")(args[0])
    * sp.Rational(1, pool_attrs(attrs)[0][0] * pool_attrs(attrs)[0][1]),
    notation=lambda t, a: f"spread({t[0]})/{pool_attrs(a)[0][0] * pool_attrs(a)[0][1]}",
    doc="∂L/∂x of avg_pool2d: δ/(kh·kw) spread over each window, summed where windows "
        "overlap"))
