"""Structural ops: matmul, transpose, reductions, reshapes, softmax and losses.

Each declaration carries its shape rule, its NumPy form and its
vector-Jacobian product, written as a small graph of other ops, so the
backward graph is made of the same ops as the forward one.
"""

from __future__ import annotations

import math

import sympy as sp

from .elementwise import count, unbroadcast
from .registry import OpDef, ShapeMismatch, register, transposable


def _same(a, b) -> bool:
    return a == b


def _axes(axis, ndim: int, what: str = "axis") -> tuple:
    """Normalise ``axis`` (None, int or tuple) to a sorted tuple of non-negative ints."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    out = []
    for a in axes:
        if not isinstance(a, int) or not -ndim <= a < ndim:
            raise ShapeMismatch(f"{what} {axis!r} is out of range for {ndim} dimension(s)",
                                f"Use an axis between {-ndim} and {ndim - 1}.")
        out.append(a % ndim)
    return tuple(sorted(set(out)))


def _axis_code(axis) -> str:
    return repr(axis if not isinstance(axis, list) else tuple(axis))


def _apply(ref, op, args, **attrs):
    return ref.graph.apply(op, list(args), attrs)


# -- identity ----------------------------------------------------------------------
register(OpDef(
    name="identity", arity=1, shape=lambda s, a, n: s[0], numpy=lambda c, a: c[0],
    internal=True,  # g.output() and "b = a" build it to name a node twice
    vjp=lambda g, args, out, attrs: [g], dtype=lambda d, a: d[0], notation="{0}",
    display=lambda args, attrs: args[0], doc="the value itself (names a node twice)"))


# -- matmul ------------------------------------------------------------------------
def _matmul_shape(shapes, attrs, names):
    a, b = shapes
    if len(a) != 2 or len(b) != 2:
        raise ShapeMismatch("matmul needs two 2-D arguments",
                            "Reshape 1-D arguments, e.g. sb.reshape(v, shape=(1, n)).")
    if not _same(a[1], b[0]):
        fix = (f"Declare {names[1]} as ({b[1]}, {b[0]}) or use {names[1]}.T."
               if _same(a[1], b[1]) else f"The inner sizes ({a[1]} and {b[0]}) must match.")
        raise ShapeMismatch(f"inner sizes {a[1]} and {b[0]} differ", fix)
    return (a[0], b[1])


def _product(shapes) -> str:
    """The NumPy call for a product into a planned buffer. np.dot is the same product for
    2-D arrays with less call overhead than np.matmul (0.3-0.7 us of 1.5-8 us on small
    layers), but it needs a C-contiguous out of the result's dtype, and OpenBLAS runs
    np.matmul's call of a large product faster: 10-25% with a transposed first operand (a
    weight gradient h.T @ dz, 256x256 and 784x256 results), about 4% for 1024x784 @
    784x256 (float32 and float64). So np.matmul where the sizes known at generation (all
    but the batch) multiply to 2**15 or more, and where the planner may store the result
    transposed (see transposable), which np.dot cannot write into."""
    (rows, inner), (_, cols) = shapes
    known = [d for d in (rows, inner, cols) if isinstance(d, int)]
    large = len(known) >= 2 and math.prod(known) >= 2**15
    return "np.matmul" if large or transposable((rows, cols)) else "np.dot"


register(OpDef(
    name="matmul", arity=2, shape=_matmul_shape, numpy=lambda c, a: f"{c[0]} @ {c[1]}",
    numpy_out=lambda c, a, o, s: f"{_product(s)}({c[0]}, {c[1]}, out={o})",
    vjp=lambda g, args, out, attrs: [
        _apply(g, "matmul", [g, _apply(g, "transpose", [args[1]])]),
        _apply(g, "matmul", [_apply(g, "transpose", [args[0]]), g])],
    notation="{0} @ {1}", display=lambda args, attrs: sp.MatMul(*args), bias_fold=True,
    out_any_layout=True, doc="matrix product a @ b of 2-D arrays"))


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
    name="transpose", arity=1, attrs={"axes": None}, shape=_transpose_shape,
    numpy=lambda c, a: f"{c[0]}.T" if a["axes"] is None
    else f"np.transpose({c[0]}, {_axis_code(a['axes'])})",
    vjp=_transpose_vjp, dtype=lambda d, a: d[0], inline=True,
    notation=lambda t, a: f"{t[0]}ᵀ" if a["axes"] is None else None,
    display=lambda args, attrs: sp.Function("transpose")(*args)
    if attrs["axes"] not in (None, (1, 0)) else args[0].arg
    if isinstance(args[0], sp.Transpose) else sp.Transpose(args[0]),
    doc="reverse (or permute) the axes"))


# -- reductions -------------------------------------------------------------------------
def _reduce_shape(shapes, attrs, names):
    s = shapes[0]
    axes = _axes(attrs["axis"], len(s))
    if attrs["keepdims"]:
        return tuple(1 if i in axes else d for i, d in enumerate(s))
    return tuple(d for i, d in enumerate(s) if i not in axes)


def _unreduce(g, a, attrs, scale=None):
    """Spread the gradient of a reduction back over the reduced axes."""
    axes = _axes(attrs["axis"], a.ndim)
    if scale is not None:
        g = g * g.graph.const(scale)
    if not attrs["keepdims"] and g.ndim != a.ndim:
        g = _apply(g, "reshape", [g], shape=tuple(1 if i in axes else d
                                                   for i, d in enumerate(a.shape)))
    return _apply(g, "broadcast_to", [g], shape=tuple(a.shape)) if g.shape != a.shape else g


def _reduce_code(method):
    def code(c, a):
        parts = [] if a["axis"] is None else [f"axis={_axis_code(a['axis'])}"]
        if a["keepdims"]:
            parts.append("keepdims=True")
        return f"{c[0]}.{method}({', '.join(parts)})"
    return code


def _reduce_out(fn):
    def code(c, a, out, shapes):
        axes = _axes(a["axis"], len(shapes[0]))
        if fn == "sum" and len(shapes[0]) == 2 and not a["keepdims"] and len(axes) == 1:
            # One matrix-vector product with ones is 2-3x faster than NumPy's
            # reduction over a 2-D axis (db = dz.sum(axis=0) in every layer).
            if axes == (0,):
                return f"np.dot(_ones(len({c[0]}), {c[0]}.dtype), {c[0]}, out={out})"
            return f"np.dot({c[0]}, _ones({c[0]}.shape[1], {c[0]}.dtype), out={out})"
        keep = ", keepdims=True" if a["keepdims"] else ""
        return f"np.{fn}({c[0]}, axis={_axis_code(a['axis'])}{keep}, out={out})"
    return code


_ROWS = '''_ROWS = {}


def _rows(n):
    """A read-only np.arange(n), made once: the row of each label."""
    v = _ROWS.get(n)
    if v is None:
        v = _ROWS[n] = np.arange(n)
        v.flags.writeable = False
    return v
'''

_ONES = '''_ONES = {}


def _ones(n, dtype):
    """A read-only vector of n ones, made once: ones @ x sums the rows of x."""
    v = _ONES.get((n, dtype))
    if v is None:
        v = _ONES[n, dtype] = np.ones(n, dtype)
        v.flags.writeable = False
    return v
'''


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
                or len(_axes(attrs["axis"], 2)) != 1:
            return sp.Function(method)(a)
        if _axes(attrs["axis"], 2) == (0,):
            out, n = sp.Transpose(_Ones("1", a.rows, 1)) * a, a.rows
        else:
            out, n = a * _Ones("1", a.cols, 1), a.cols
            out = out if attrs["keepdims"] else sp.Transpose(out)
        return out / n if method == "mean" else out
    return display


register(OpDef(
    name="sum", arity=1, attrs={"axis": None, "keepdims": False}, shape=_reduce_shape,
    numpy=_reduce_code("sum"), numpy_out=_reduce_out("sum"), helpers={"_ones": _ONES}, vjp=lambda g, args, out, attrs: [_unreduce(g, args[0], attrs)],
    display=_reduce_display("sum"), doc="sum over axis (all axes when None)"))
register(OpDef(
    name="mean", arity=1, attrs={"axis": None, "keepdims": False}, shape=_reduce_shape,
    numpy=_reduce_code("mean"), numpy_out=_reduce_out("mean"),
    vjp=lambda g, args, out, attrs: [_unreduce(
        g, args[0], attrs, 1 / sp.sympify(count(args[0].shape, _axes(attrs["axis"], args[0].ndim))))],
    display=_reduce_display("mean"), doc="mean over axis (all axes when None)"))


# -- reshapes -------------------------------------------------------------------------
def _reshape_shape(shapes, attrs, names):
    s, new = shapes[0], attrs["shape"]
    if new is None:
        raise ShapeMismatch("reshape needs a shape", "Pass shape=(...).")
    new = tuple(new)
    if sum(d == -1 for d in new) > 1:
        raise ShapeMismatch(f"shape {new} has more than one -1", "Use at most one -1.")
    total, known = sp.sympify(count(s)), sp.sympify(count(tuple(d for d in new if d != -1)))
    if -1 in new:
        rest = sp.simplify(total / known)
        if not (rest.is_Integer or rest.is_Symbol):
            raise ShapeMismatch(f"cannot infer -1 in {new} from {s}", "Give every size.")
        return tuple((int(rest) if rest.is_Integer else str(rest)) if d == -1 else d
                     for d in new)
    if sp.simplify(total - known) != 0:
        raise ShapeMismatch(f"cannot reshape {total} elements into {new}",
                            "Keep the number of elements the same.")
    return new


def _shape_code(shape) -> str:
    inner = ", ".join(str(d) for d in shape)
    return f"({inner},)" if len(shape) == 1 else f"({inner})"


register(OpDef(
    name="reshape", arity=1, attrs={"shape": None}, shape=_reshape_shape,
    numpy=lambda c, a: f"{c[0]}.reshape({_shape_code(a['shape'])})",
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
    numpy=lambda c, a: f"np.broadcast_to({c[0]}, {_shape_code(a['shape'])})",
    vjp=lambda g, args, out, attrs: [unbroadcast(g, args[0].shape)],
    display=lambda args, attrs: args[0],
    doc="repeat along axes of size 1 or new leading axes, as NumPy broadcasting does"))


# -- softmax family -------------------------------------------------------------------
_SOFTMAX = '''def _softmax(x, axis=-1):
    """Softmax along axis, shifted by the maximum so exp never overflows."""
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)
'''
_LOG_SOFTMAX = '''def _log_softmax(x, axis=-1):
    """log(softmax(x)) along axis, computed without forming softmax."""
    z = x - x.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))
'''
# The cross-entropy helpers shift the logits by one maximum for the whole batch (a row
# maximum costs a slow reduction per row) and fall back to row maxima when a row would
# underflow: exp never overflows, and no row sum is ever near 0. Row sums are a product
# with ones, 2-3x faster than NumPy's reduction along rows.
_SHIFTED_EXP = '''def _shifted_exp(logits, out=None):
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
'''
_XENT = '''def _softmax_cross_entropy(logits, labels):
    """Mean over the batch of -log softmax(logits)[i, labels[i]]."""
    n = len(labels)
    at = np.ravel_multi_index((_rows(n), labels), logits.shape)  # checks 0 <= label < C
    _, sums, m = _shifted_exp(logits)
    # -log softmax at the labels, never inf
    return m + (np.log(sums) - logits.reshape(-1)[at]).sum() / n
'''


def _axis_shape(shapes, attrs, names):
    _axes(attrs["axis"], len(shapes[0]))
    return shapes[0]


def _softmax_vjp(g, args, out, attrs):
    ax = attrs["axis"]
    return [out * (g - _apply(g, "sum", [g * out], axis=ax, keepdims=True))]


def _log_softmax_vjp(g, args, out, attrs):
    ax = attrs["axis"]
    return [g - _apply(g, "exp", [out]) * _apply(g, "sum", [g], axis=ax, keepdims=True)]


register(OpDef(
    name="softmax", arity=1, attrs={"axis": -1}, shape=_axis_shape,
    numpy=lambda c, a: f"_softmax({c[0]}, axis={a['axis']})", helpers={"_softmax": _SOFTMAX},
    vjp=_softmax_vjp, doc="exp(x) / sum(exp(x)) along axis"))
register(OpDef(
    name="log_softmax", arity=1, attrs={"axis": -1}, shape=_axis_shape,
    numpy=lambda c, a: f"_log_softmax({c[0]}, axis={a['axis']})",
    helpers={"_log_softmax": _LOG_SOFTMAX}, vjp=_log_softmax_vjp,
    doc="log(softmax(x)) along axis, stable"))


def _xent_shape(shapes, attrs, names):
    lg, lb = shapes
    if len(lg) != 2 or len(lb) != 1 or not _same(lg[0], lb[0]):
        raise ShapeMismatch("expected logits (N, C) and integer labels (N,)",
                            f"Declare {names[1]} with shape ({lg[0] if lg else 'N'},) "
                            "and dtype='int'.")
    return ()


def _xent_vjp(g, args, out, attrs):
    logits, labels = args
    return [_apply(g, "softmax_cross_entropy_grad", [logits, labels, g],
                   batch=logits.shape[0]), None]


_XENT_WITH_GRAD = '''def _softmax_cross_entropy_with_grad(logits, labels, g, out):
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
'''

register(OpDef(
    name="softmax_cross_entropy", arity=2, shape=_xent_shape,
    numpy=lambda c, a: f"_softmax_cross_entropy({c[0]}, {c[1]})",
    numpy_with_grad=lambda c, a, g, o: f"_softmax_cross_entropy_with_grad({c[0]}, {c[1]}, {g}, {o})",
    helpers={"_softmax_cross_entropy": _XENT, "_shifted_exp": _SHIFTED_EXP, "_ones": _ONES,
             "_rows": _ROWS, "_softmax_cross_entropy_with_grad": _XENT_WITH_GRAD},
    vjp=_xent_vjp,
    doc="mean over the batch of -log softmax(logits)[label]; labels are integers"))

# Its gradient, (softmax(logits) - onehot(labels)) * g / N, is one op so the code computes
# it in one pass, in place, never dividing by a probability.
_XENT_GRAD = '''def _softmax_cross_entropy_grad(logits, labels, g, out=None):
    """dL/dlogits of the mean cross-entropy: (softmax(logits) - onehot(labels)) * g / N,
    the gradient that _softmax_cross_entropy_with_grad writes."""
    if out is None:
        out = np.empty(logits.shape, logits.dtype)  # C-contiguous, as that call needs
    _softmax_cross_entropy_with_grad(logits, labels, g, out)
    return out
'''


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
    internal=True,  # softmax_cross_entropy's VJP builds it
    numpy=lambda c, a: f"_softmax_cross_entropy_grad({c[0]}, {c[1]}, {c[2]})",
    numpy_out=lambda c, a, o, s: f"_softmax_cross_entropy_grad({c[0]}, {c[1]}, {c[2]}, out={o})",
    helpers={"_softmax_cross_entropy_grad": _XENT_GRAD, "_shifted_exp": _SHIFTED_EXP,
             "_softmax_cross_entropy_with_grad": _XENT_WITH_GRAD, "_ones": _ONES,
             "_rows": _ROWS},
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
    name="onehot", arity=1, attrs={"num": None}, shape=_onehot_shape,
    numpy=lambda c, a: f"np.eye({a['num']}, dtype=DTYPE)[{c[0]}]",
    vjp=None, differentiable=False, doc="one-hot rows of integer labels"))
register(OpDef(
    name="argmax", arity=1, attrs={"axis": -1}, shape=lambda s, a, n: _reduce_shape(
        s, {"axis": a["axis"], "keepdims": False}, n),
    numpy=lambda c, a: f"{c[0]}.argmax(axis={a['axis']})", vjp=None, differentiable=False,
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
    numpy=lambda c, a: f"np.mean(({c[0]} - {c[1]}) ** 2)", vjp=_mse_vjp,
    doc="mean squared error over all elements (PyTorch's default reduction)"))

_LAYER_NORM = '''def _layer_norm(x, eps=1e-5):
    """(x - mean) / sqrt(var + eps) over the last axis."""
    xc = x - x.mean(axis=-1, keepdims=True)
    return xc / np.sqrt((xc * xc).mean(axis=-1, keepdims=True) + eps)
'''


def _layer_norm_vjp(g, args, out, attrs):
    (x,) = args
    mean = lambda v: _apply(v, "mean", [v], axis=-1, keepdims=True)
    xc = x - mean(x)
    rstd = (mean(xc * xc) + attrs["eps"]) ** -0.5
    return [rstd * (g - mean(g) - out * mean(g * out))]


register(OpDef(
    name="layer_norm", arity=1, attrs={"eps": 1e-5}, shape=lambda s, a, n: s[0],
    numpy=lambda c, a: f"_layer_norm({c[0]}, eps={a['eps']!r})",
    helpers={"_layer_norm": _LAYER_NORM}, vjp=_layer_norm_vjp,
    doc="normalise over the last axis to mean 0, variance 1 (eps = 1e-5), no scale/shift"))
