"""Structural ops: matmul, transpose, reductions, reshapes, softmax and losses.

Each declaration carries the op's shape rule, how formulas show it, and its
vector-Jacobian product, written as a small graph of other ops, so the backward
graph is made of the same ops as the forward one. How an array library computes
the op is code generation's: :mod:`symbackprop.codegen.lowering`.
"""

from __future__ import annotations

import sympy as sp

from .. import sizes
from .elementwise import broadcast_shapes, count, unbroadcast
from .products import BatchedMatMulDisplay
from .registry import OpDef, ShapeMismatch, entries, moves_data, per_entry, register


def norm_axes(axis, ndim: int, what: str = "axis") -> tuple:
    """Normalise ``axis`` (None, int or tuple) to a sorted tuple of non-negative ints.

    Examples
    --------
    >>> norm_axes(-1, 2), norm_axes(None, 3), norm_axes((1, 0), 2)
    ((1,), (0, 1, 2), (0, 1))
    """
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    out = []
    for a in axes:
        if not isinstance(a, int) or not -ndim <= a < ndim:
            raise ShapeMismatch(f"{what} {axis!r} is out of range for {ndim} dimension(s)",
                                f"Use an axis between {-ndim} and {ndim - 1}." if ndim else
                                "A scalar has no axes: use axis=None.")
        out.append(a % ndim)
    return tuple(sorted(set(out)))


def _apply(ref, op, args, **attrs):
    return ref.graph.apply(op, list(args), attrs)


# -- identity ----------------------------------------------------------------------
register(OpDef(
    name="identity", arity=1, shape=lambda s, a, n: s[0], flops=moves_data,
    internal=True,  # g.output() and "b = a" build it to name a node twice
    vjp=lambda g, args, out, attrs: [g], dtype=lambda d, a: d[0], notation="{0}",
    display=lambda args, attrs: args[0], doc="the value itself (names a node twice)"))


# -- matmul ------------------------------------------------------------------------
def _matmul_shape(shapes, attrs, names):
    a, b = shapes
    if len(a) < 2 or len(b) < 2:
        raise ShapeMismatch("matmul needs arguments of at least 2 dimensions",
                            "Reshape 1-D arguments, e.g. sb.reshape(v, shape=(1, n)).")
    if a[-1] != b[-2]:
        fix = (f"The last axis of {names[0]} ({a[-1]}) must match the second last of "
               f"{names[1]} ({b[-2]}).")
        if len(a) == 2 and len(b) == 2:
            fix = (f"Declare {names[1]} as ({b[1]}, {b[0]}) or use {names[1]}.T."
                   if a[1] == b[1] else f"The inner sizes ({a[1]} and {b[0]}) must match.")
        raise ShapeMismatch(f"inner sizes {a[-1]} and {b[-2]} differ", fix)
    if len(a) == 2 and len(b) == 2:
        return (a[0], b[1])
    # N-D: the leading (batch) axes broadcast as NumPy's matmul broadcasts them
    try:
        batch = broadcast_shapes([a[:-2], b[:-2]])
    except ShapeMismatch:
        raise ShapeMismatch(
            f"the batch axes ({', '.join(map(str, a[:-2]))}) and "
            f"({', '.join(map(str, b[:-2]))}) (all but the last two) "
            "do not broadcast", "Make each pair of batch sizes equal, or one of them 1, "
            "as NumPy's matmul broadcasts them.") from None
    return (*batch, a[-2], b[-1])


def _matmul_fans(i, shapes, attrs):
    """A weight W of h @ W is (fan_in, fan_out); of W @ h, (fan_out, fan_in) (the last
    two axes of a batched weight)."""
    rows, cols = shapes[i][-2:]
    return (rows, cols) if i == 1 else (cols, rows)


def _swap_last(x):
    """x with its last two axes swapped (xᵀ for a matrix)."""
    if x.ndim == 2:
        return _apply(x, "transpose", [x])
    return _apply(x, "transpose", [x], axes=(*range(x.ndim - 2), x.ndim - 1, x.ndim - 2))


def _matmul_vjp(g, args, out, attrs):
    """δ bᵀ and aᵀ δ; for batched arguments over their last two axes, summed over the
    batch axes an argument was broadcast along (so each gradient has its argument's
    shape)."""
    a, b = args
    if a.ndim == 2 and b.ndim == 2:
        return [_apply(g, "matmul", [g, _swap_last(b)]),
                _apply(g, "matmul", [_swap_last(a), g])]
    if 2 in (a.ndim, b.ndim):
        return _matrix_and_stack_vjp(g, a, b)
    return [unbroadcast(_apply(g, "matmul", [g, _swap_last(b)]), a.shape),
            unbroadcast(_apply(g, "matmul", [_swap_last(a), g]), b.shape)]


def _matrix_and_stack_vjp(g, a, b):
    """The VJP of a stack of matrices times one matrix (``x @ W``, x (N, T, K)) or of one
    matrix times a stack, as einsums over the stack's axes: the matrix's gradient is one
    contraction over every row of the stack (``Σ_n x[n]ᵀ δ[n]``, one BLAS product on the
    (N·T, K) rows) where a batched product would first write an (N, K, M) array and sum
    it, and the stack's gradient is one product on its rows, not N small ones."""
    stack = b if a.ndim == 2 else a
    batch = "pqrstuvw"[:stack.ndim - 2]
    if a.ndim == 2:  # W @ h: a (i, k), b (..., k, j), g (..., i, j)
        return [_apply(g, "einsum", [g, b], spec=f"{batch}ij,{batch}kj->ik"),
                _apply(g, "einsum", [a, g], spec=f"ik,{batch}ij->{batch}kj")]
    # h @ W: a (..., i, k), b (k, j), g (..., i, j)
    return [_apply(g, "einsum", [g, b], spec=f"{batch}ij,kj->{batch}ik"),
            _apply(g, "einsum", [a, g], spec=f"{batch}ik,{batch}ij->kj")]


def _matmul_display(args, attrs):
    """A product of matrices in formulas; of stacks of matrices, ``A @ B``."""
    if all(isinstance(x, sp.MatrixExpr) for x in args):
        return sp.MatMul(*args)
    return BatchedMatMulDisplay(*args)


register(OpDef(
    name="matmul", arity=2, shape=_matmul_shape, fans=_matmul_fans,
    flops=lambda s, out, a: 2 * entries(out) * int(s[0][-1]),  # 2 m k n
    vjp=_matmul_vjp, notation="{0} @ {1}", display=_matmul_display,
    doc="matrix product a @ b; N-D arguments are stacks of matrices whose leading "
        "axes broadcast as in NumPy"))


# -- transpose ----------------------------------------------------------------------
def _transpose_shape(shapes, attrs, names):
    s, axes = shapes[0], attrs["axes"]
    if axes is None:
        return tuple(reversed(s))
    if sorted(axes) != list(range(len(s))):
        raise ShapeMismatch(f"axes {tuple(axes)} are not a permutation of {len(s)} axes",
                            f"Pass a permutation of 0..{len(s) - 1}.")
    return tuple(s[i] for i in axes)


def _transpose_vjp(g, args, out, attrs):
    axes = attrs["axes"]
    inv = None if axes is None else tuple(sorted(range(len(axes)), key=list(axes).__getitem__))
    return [_apply(g, "transpose", [g], axes=inv)]


register(OpDef(
    name="transpose", arity=1, attrs={"axes": None}, shape=_transpose_shape, flops=moves_data,
    vjp=_transpose_vjp, dtype=lambda d, a: d[0],
    notation=lambda t, a: f"{t[0]}ᵀ" if a["axes"] is None else None,
    display=lambda args, attrs: sp.Function("transpose")(*args)
    if attrs["axes"] not in (None, (1, 0)) else args[0].arg
    if isinstance(args[0], sp.Transpose) else sp.Transpose(args[0]),
    doc="reverse (or permute) the axes"))


# -- reductions -------------------------------------------------------------------------
def _reduce_shape(shapes, attrs, names):
    s = shapes[0]
    axes = norm_axes(attrs["axis"], len(s))
    if attrs["keepdims"]:
        return tuple(1 if i in axes else d for i, d in enumerate(s))
    return tuple(d for i, d in enumerate(s) if i not in axes)


def _unreduce(g, a, attrs, scale=None):
    """Spread the gradient of a reduction back over the reduced axes."""
    axes = norm_axes(attrs["axis"], a.ndim)
    if scale is not None:
        g = g * g.graph.const(scale)
    if not attrs["keepdims"] and g.ndim != a.ndim:
        g = _apply(g, "reshape", [g], shape=tuple(1 if i in axes else d
                                                   for i, d in enumerate(a.shape)))
    return _apply(g, "broadcast_to", [g], shape=tuple(a.shape)) if g.shape != a.shape else g


class _Ones(sp.MatrixSymbol):
    """𝟙, a column of ones, for formulas: 𝟙ᵀA sums the rows of A."""

    def _sympystr(self, p):
        return "𝟙"

    def _latex(self, p):
        return r"\mathbb{1}"

    def _pretty(self, p):
        from sympy.printing.pretty.stringpict import prettyForm
        return prettyForm("𝟙")


def _reduce_display(method):
    """Formulas: a 2-D sum over rows is 𝟙ᵀA, over columns A𝟙; a mean divides by the count.
    (A 1-D node is shown as a 1×n row, so a matrix with one row may be 1-D: no rule.)"""
    def display(args, attrs):
        a = args[0]
        if not isinstance(a, sp.MatrixExpr) or a.rows == 1 or attrs["axis"] is None \
                or len(norm_axes(attrs["axis"], 2)) != 1:
            return sp.Function(method)(a)
        if norm_axes(attrs["axis"], 2) == (0,):
            out, n = sp.Transpose(_Ones("1", a.rows, 1)) * a, a.rows
        else:
            out, n = a * _Ones("1", a.cols, 1), a.cols
            out = out if attrs["keepdims"] else sp.Transpose(out)
        return out / n if method == "mean" else out
    return display


register(OpDef(
    name="sum", arity=1, attrs={"axis": None, "keepdims": False}, shape=_reduce_shape,
    flops=per_entry(1, of=0),
    vjp=lambda g, args, out, attrs: [_unreduce(g, args[0], attrs)],
    over_shards="sum",  # over shards of the rows: the sum of their sums (data parallel)
    display=_reduce_display("sum"), doc="sum over axis (all axes when None)"))
register(OpDef(
    name="mean", arity=1, attrs={"axis": None, "keepdims": False}, shape=_reduce_shape,
    flops=per_entry(1, of=0),
    vjp=lambda g, args, out, attrs: [_unreduce(
        g, args[0], attrs, 1 / sp.sympify(count(args[0].shape, norm_axes(attrs["axis"], args[0].ndim))))],
    over_shards="mean",  # over shards of the rows: their means weighted by their rows
    display=_reduce_display("mean"), doc="mean over axis (all axes when None)"))


# -- reshapes -------------------------------------------------------------------------
def _reshape_shape(shapes, attrs, names):
    s, new = shapes[0], attrs["shape"]
    if new is None:
        raise ShapeMismatch("reshape needs a shape", "Pass shape=(...).")
    try:
        new = tuple(sizes.canonical(d) for d in new)
    except ValueError as e:
        raise ShapeMismatch(f"shape {tuple(new)}: {e}", "Use ints, names and expressions of "
                            "them such as 'C*H*W'.") from None
    if sum(d == -1 for d in new) > 1:
        raise ShapeMismatch(f"shape {new} has more than one -1", "Use at most one -1.")
    total, known = sp.sympify(count(s)), sp.sympify(count(tuple(d for d in new if d != -1)))
    if -1 in new:
        rest = sp.simplify(total / known)
        try:
            rest = sizes.from_sympy(rest)
        except ValueError:
            raise ShapeMismatch(f"cannot infer -1 in {new} from {s}", "Give every size.") from None
        return tuple(rest if d == -1 else d for d in new)
    if sp.simplify(total - known) != 0:
        raise ShapeMismatch(f"cannot reshape {total} elements into {new}",
                            "Keep the number of elements the same.")
    return new


register(OpDef(
    name="reshape", arity=1, attrs={"shape": None}, shape=_reshape_shape, flops=moves_data,
    vjp=lambda g, args, out, attrs: [_apply(g, "reshape", [g], shape=tuple(args[0].shape))],
    dtype=lambda d, a: d[0], display=lambda args, attrs: args[0],
    doc="same elements, new shape (sizes may be names such as N)"))


def _broadcast_to_shape(shapes, attrs, names):
    from .elementwise import broadcast_shapes

    target = tuple(attrs["shape"])
    if broadcast_shapes([shapes[0], target]) != target:
        raise ShapeMismatch(f"cannot broadcast to {target}", "Check the target shape.")
    return target


register(OpDef(
    name="broadcast_to", arity=1, attrs={"shape": None}, shape=_broadcast_to_shape,
    flops=moves_data,
    vjp=lambda g, args, out, attrs: [unbroadcast(g, args[0].shape)],
    display=lambda args, attrs: args[0],
    doc="repeat along axes of size 1 or new leading axes, as NumPy broadcasting does"))


# -- softmax family -------------------------------------------------------------------
def _axis_shape(shapes, attrs, names):
    norm_axes(attrs["axis"], len(shapes[0]))
    return shapes[0]


def _softmax_vjp(g, args, out, attrs):
    ax = attrs["axis"]
    return [out * (g - _apply(g, "sum", [g * out], axis=ax, keepdims=True))]


def _log_softmax_vjp(g, args, out, attrs):
    ax = attrs["axis"]
    return [g - _apply(g, "exp", [out]) * _apply(g, "sum", [g], axis=ax, keepdims=True)]


register(OpDef(
    name="softmax", arity=1, attrs={"axis": -1}, shape=_axis_shape,
    flops=per_entry(5),  # max, subtract, exp, sum, divide
    vjp=_softmax_vjp, doc="exp(x) / sum(exp(x)) along axis"))
register(OpDef(
    name="log_softmax", arity=1, attrs={"axis": -1}, shape=_axis_shape,
    flops=per_entry(5),  # max, subtract, exp, sum, subtract the log
    vjp=_log_softmax_vjp,
    doc="log(softmax(x)) along axis, stable"))


def _xent_shape(shapes, attrs, names):
    lg, lb = shapes
    if len(lg) != 2 or len(lb) != 1 or lg[0] != lb[0]:
        raise ShapeMismatch("expected logits (N, C) and integer labels (N,)",
                            f"Declare {names[1]} with shape ({lg[0] if lg else 'N'},) "
                            "and dtype='int'.")
    return ()


def _xent_vjp(g, args, out, attrs):
    logits, labels = args
    return [_apply(g, "softmax_cross_entropy_grad", [logits, labels, g],
                   batch=logits.shape[0]), None]


register(OpDef(
    name="softmax_cross_entropy", arity=2, shape=_xent_shape,
    flops=per_entry(5, of=0),  # log_softmax of the logits; picking and the mean are O(N)
    vjp=_xent_vjp,
    doc="mean over the batch of -log softmax(logits)[label]; labels are integers"))

# Its gradient, (softmax(logits) - onehot(labels)) * g / N, is one op so the code computes
# it in one pass, in place, never dividing by a probability.
def _xent_grad_shape(shapes, attrs, names):
    _xent_shape(shapes[:2], attrs, names)
    if tuple(shapes[2]) != ():
        raise ShapeMismatch("the incoming gradient must be a scalar", "Pass dL/dL.")
    return shapes[0]


def _xent_grad_vjp(G, args, out, attrs):
    """Second order: out = g/N (P - Y), so d/dlogits is softmax's VJP of G g/N, and
    d/dg is sum(G (P - Y))/N."""
    logits, labels, g = args
    n = G.graph.const(1 / sp.sympify(count((attrs["batch"],))))
    p = _apply(G, "softmax", [logits], axis=-1)
    gs = G * (g * n)
    dz = p * (gs - _apply(G, "sum", [gs * p], axis=-1, keepdims=True))
    y = _apply(G, "onehot", [labels], num=logits.shape[1])
    return [dz, None, _apply(G, "sum", [G * (p - y)]) * n]


register(OpDef(
    name="softmax_cross_entropy_grad", arity=3, attrs={"batch": "N"}, shape=_xent_grad_shape,
    flops=per_entry(7),  # softmax (5), minus the one-hot, times g / N
    internal=True,  # softmax_cross_entropy's VJP builds it
    vjp=_xent_grad_vjp,
    display=lambda args, attrs: sp.Mul(
        args[2] / sp.sympify(count((attrs["batch"],))),
        sp.Add(sp.Function("softmax")(args[0]), -sp.Function("onehot")(args[1]),
               evaluate=False), evaluate=False),
    doc="(softmax(logits) - onehot(labels)) * g / N: the gradient of softmax_cross_entropy"))


def _onehot_shape(shapes, attrs, names):
    if not isinstance(attrs["num"], int) or attrs["num"] < 1:
        raise ShapeMismatch(f"num={attrs['num']!r} is not a positive int",
                            "Pass num=<number of classes>.")
    return tuple(shapes[0]) + (attrs["num"],)


register(OpDef(
    name="onehot", arity=1, attrs={"num": None}, shape=_onehot_shape, flops=moves_data,
    vjp=None, differentiable=False, doc="one-hot rows of integer labels"))
register(OpDef(
    name="argmax", arity=1, attrs={"axis": -1}, flops=per_entry(1, of=0),
    shape=lambda s, a, n: _reduce_shape(
        s, {"axis": a["axis"], "keepdims": False}, n),
    vjp=None, differentiable=False,
    dtype=lambda d, a: "int", doc="index of the largest entry along axis"))


# -- losses and normalisation ----------------------------------------------------------
def _mse_shape(shapes, attrs, names):
    if tuple(shapes[0]) != tuple(shapes[1]):
        raise ShapeMismatch("mse needs pred and target of the same shape",
                            f"Give {names[1]} the shape of {names[0]}.")
    return ()


def _mse_vjp(g, args, out, attrs):
    pred, target = args
    d = (pred - target) * (g * g.graph.const(2 / sp.sympify(count(pred.shape))))
    return [d if pred.dtype == "float" else None, -d if target.dtype == "float" else None]


register(OpDef(
    name="mse", arity=2, shape=_mse_shape,
    flops=per_entry(3, of=0),  # subtract, square, sum
    vjp=_mse_vjp,
    doc="mean squared error over all elements (PyTorch's default reduction)"))

def _layer_norm_vjp(g, args, out, attrs):
    (x,) = args
    mean = lambda v: _apply(v, "mean", [v], axis=-1, keepdims=True)
    xc = x - mean(x)
    rstd = (mean(xc * xc) + attrs["eps"]) ** -0.5
    return [rstd * (g - mean(g) - out * mean(g * out))]


register(OpDef(
    name="layer_norm", arity=1, attrs={"eps": 1e-5}, shape=lambda s, a, n: s[0],
    flops=per_entry(5),  # mean, subtract, square, sum, divide
    vjp=_layer_norm_vjp,
    mixed_float32=True,  # its statistics in float32 in mixed precision, as torch.autocast's
    doc="normalise over the last axis to mean 0, variance 1 (eps = 1e-5), no scale/shift"))
