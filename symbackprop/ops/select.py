"""Selecting ops: elementwise maximum and minimum, ``where``, ``clip``, comparisons,
and the reductions max, min, logsumexp, var and std.

The conventions at non-smooth points, one rule each (docs/ops.md, "Selecting ops"):

- ``maximum(a, b)`` / ``minimum(a, b)``: at a tie ``a == b`` each argument gets half
  the gradient (the ``Max`` convention of :func:`symbackprop.ops.elementwise._kinks`,
  as PyTorch and JAX).
- ``max(x, axis)`` / ``min(x, axis)``: the gradient goes to the entries equal to the
  result; when several tie, they share it equally (``[1, 3, 3]`` gets ``[0, ½, ½]``),
  as PyTorch's ``amax`` and JAX's ``max``.
- ``clip(x, lo, hi)``: derivative 1 for ``lo <= x <= hi`` (bounds included, as
  PyTorch's ``clamp``), 0 outside.
- ``std(x)``: where the standard deviation is 0 (all entries equal) the gradient is 0,
  the subgradient of least norm (std is a convex function of ``x``), never 0/0.
- Comparisons ``a > b`` ... are float masks of 0 and 1 (``1[a > b]``) with derivative
  0: they select, they are not differentiated through.
"""

from __future__ import annotations

import sympy as sp

from .elementwise import X, _vjp, broadcast_shapes, count, elementwise, unbroadcast
from .registry import OpDef, ShapeMismatch, get, per_entry, register
from .tensor import _reduce_shape, norm_axes

# Python's max(a, b) / min(a, b) in statements: with two arguments, the elementwise op
# (build.py); with one, the reduction of that name.
TWO_ARGUMENT_FORMS = {"max": "maximum", "min": "minimum"}


# -- display helpers ----------------------------------------------------------------------
class _Mask(sp.Function):
    """``1[a > b]``: a comparison's 0/1 mask, as formulas show it. ``entrywise``: on
    matrices it is shown as it is, entry by entry (display/expressions.py)."""

    rel = ">"
    entrywise = True

    def _sympystr(self, p):
        return f"1[{p._print(self.args[0])} {self.rel} {p._print(self.args[1])}]"

    def _latex(self, p):
        rel = {"≥": r"\geq", "≤": r"\leq"}.get(self.rel, self.rel)
        return (rf"\mathbb{{1}}\left[{p._print(self.args[0])} {rel} "
                rf"{p._print(self.args[1])}\right]")

    def _pretty(self, p):
        from sympy.printing.pretty.stringpict import prettyForm

        return prettyForm(self._sympystr(p))


# relation -> its display function: MASKS[">="](a, b) shows 1[a ≥ b]
MASKS = {rel: type(f"Mask_{name}", (_Mask,), {"rel": rel}) for name, rel in (
    ("greater", ">"), ("less", "<"), ("greater_equal", "≥"), ("less_equal", "≤"))}
MASKS[">="], MASKS["<="] = MASKS["≥"], MASKS["≤"]


def _shown_as(cls):
    return lambda args, attrs: cls(*args)


# -- maximum, minimum, comparisons ----------------------------------------------------------
elementwise("maximum", lambda a, b: sp.Max(a, b),
            doc="elementwise max(a, b), broadcasting; at a tie each side gets half the gradient")
elementwise("minimum", lambda a, b: sp.Min(a, b),
            doc="elementwise min(a, b), broadcasting; at a tie each side gets half the gradient")

# name -> (relation, expression): Heaviside(u, 0) is 1[u > 0], Heaviside(u, 1) is 1[u >= 0]
# (a - b > 0 exactly when a > b for floats: a difference of unequal floats is never 0).
_COMPARISONS = {
    "greater": (">", lambda a, b: sp.Heaviside(a - b, 0)),
    "less": ("<", lambda a, b: sp.Heaviside(b - a, 0)),
    "greater_equal": (">=", lambda a, b: sp.Heaviside(a - b, 1)),
    "less_equal": ("<=", lambda a, b: sp.Heaviside(b - a, 1)),
}
for _name, (_rel, _fn) in _COMPARISONS.items():
    elementwise(_name, _fn, doc=f"mask 1[a {_rel} b] of 0.0 and 1.0, broadcasting; "
                "derivative 0 (it selects, it is not differentiated through)")
    _op = get(_name)
    _op.display = _shown_as(MASKS[_rel])
    _op.notation = f"{{0}} {_rel} {{1}}"
    _op.zero_grad = True


# -- where ---------------------------------------------------------------------------------
def _where_vjp(g, args, out, attrs):
    cond, a, b = args
    zero = g.graph.const(0)
    ga = g.graph.apply("where", [cond, g, zero]) if a.dtype == "float" else None
    gb = g.graph.apply("where", [cond, zero, g]) if b.dtype == "float" else None
    return [None,
            None if ga is None else unbroadcast(ga, a.shape),
            None if gb is None else unbroadcast(gb, b.shape)]


register(OpDef(
    name="where", arity=3, shape=broadcast_shapes, vjp=_where_vjp, flops=per_entry(1),
    dtype=lambda d, a: "int" if d[1] == d[2] == "int" else "float",
    notation="where({0}, {1}, {2})",
    display=lambda args, attrs: sp.Function("where")(*args),
    doc="a where cond is nonzero, else b (broadcasting); the gradient goes to a where "
        "cond holds, to b elsewhere, none to cond"))


# -- clip ----------------------------------------------------------------------------------
def _bound(v, which: str):
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ShapeMismatch(f"{which}={v!r} is not a number",
                            f"Pass {which}=<a number> (or None for no bound).")
    return sp.Float(v) if isinstance(v, float) else sp.Integer(v)


def _clip_shape(shapes, attrs, names):
    lo, hi = _bound(attrs.get("lo"), "lo"), _bound(attrs.get("hi"), "hi")
    if lo is None and hi is None:
        raise ShapeMismatch("clip needs a bound", "Pass lo=..., hi=... or both.")
    if lo is not None and hi is not None and lo > hi:
        raise ShapeMismatch(f"lo={attrs['lo']!r} is greater than hi={attrs['hi']!r}",
                            "Pass lo <= hi.")
    return shapes[0]


def _clip_expr(attrs):
    x = X[0]
    lo, hi = _bound(attrs.get("lo"), "lo"), _bound(attrs.get("hi"), "hi")
    e = x if lo is None else sp.Max(x, lo)
    return X[:1], e if hi is None else sp.Min(e, hi)


def _clip_grads(attrs):
    x = X[0]
    lo, hi = _bound(attrs.get("lo"), "lo"), _bound(attrs.get("hi"), "hi")
    d = sp.S.One if lo is None else sp.Heaviside(x - lo, 1)  # 1 at the bound itself
    return [d if hi is None else d * sp.Heaviside(hi - x, 1)]


register(OpDef(
    name="clip", arity=1, attrs={"lo": None, "hi": None}, shape=_clip_shape, vjp=_vjp,
    elementwise=True, expr=_clip_expr, local_grads=_clip_grads, grad_declared=True,
    display=lambda args, attrs: sp.Function("clip")(
        args[0], *(sp.nan if v is None else sp.sympify(v) for v in (attrs["lo"], attrs["hi"]))),
    doc="x limited to [lo, hi] (either may be None); derivative 1 for lo <= x <= hi "
        "(bounds included, as PyTorch's clamp), 0 outside"))


# -- reductions -------------------------------------------------------------------------------
_REDUCE = {"axis": None, "keepdims": False}


def _kept(v, x, attrs):
    """``v`` (a reduction's result or its adjoint) with the reduced axes kept as size 1, so
    that it broadcasts against ``x``."""
    if attrs["keepdims"] or v.ndim == x.ndim:
        return v
    axes = norm_axes(attrs["axis"], x.ndim)
    return v.graph.apply("reshape", [v], {"shape": tuple(
        1 if i in axes else d for i, d in enumerate(x.shape))})


def _extreme_vjp(compare: str):
    """max/min: δ routed to the entries equal to the result, shared equally among ties."""
    def vjp(g, args, out, attrs):
        (x,) = args
        if x.dtype != "float":
            return [None]
        hit = x.graph.apply(compare, [x, _kept(out, x, attrs)])  # 1 where x is the extreme
        ties = x.graph.apply("sum", [hit], {"axis": attrs["axis"], "keepdims": True})
        return [hit * _kept(g, x, attrs) / ties]
    return vjp


def _logsumexp_vjp(g, args, out, attrs):
    """δ · softmax(x): exp(x − logsumexp(x)) never overflows (the exponent is <= 0)."""
    (x,) = args
    return [_kept(g, x, attrs) * x.graph.apply("exp", [x - _kept(out, x, attrs)])]


def _centred(x, attrs):
    return x - x.graph.apply("mean", [x], {"axis": attrs["axis"], "keepdims": True})


def _n(x, attrs):
    return sp.sympify(count(x.shape, norm_axes(attrs["axis"], x.ndim)))


def _var_vjp(g, args, out, attrs):
    """(2/n)(x − mean x) δ."""
    (x,) = args
    return [_centred(x, attrs) * (_kept(g, x, attrs) * x.graph.const(2 / _n(x, attrs)))]


def _std_vjp(g, args, out, attrs):
    """(x − mean x) δ / (n σ), and 0 where σ = 0: there x − mean x is 0 and σ is replaced by
    1 in the denominator (σ + 1[σ <= 0]), so no 0/0 is ever computed."""
    (x,) = args
    s = _kept(out, x, attrs)
    safe = s + x.graph.apply("less_equal", [s, 0])
    return [_centred(x, attrs) * _kept(g, x, attrs) / (safe * x.graph.const(_n(x, attrs)))]


# FLOPs per entry of the argument: a comparison (max, min); max, subtract, exp, sum
# (logsumexp); mean, subtract, square, sum (var, std)
for _name, _vjp_fn, _dtype, _flops, _doc in (
        ("max", _extreme_vjp("greater_equal"), lambda d, a: d[0], 1,
         ("largest entry over axis (all axes when None); the gradient goes to the arg-max, "
          "shared equally among ties")),
        ("min", _extreme_vjp("less_equal"), lambda d, a: d[0], 1,
         ("smallest entry over axis (all axes when None); the gradient goes to the arg-min, "
          "shared equally among ties")),
        ("logsumexp", _logsumexp_vjp, lambda d, a: "float", 4,
         "log(sum(exp(x))) over axis, shifted by the maximum (never overflows)"),
        ("var", _var_vjp, lambda d, a: "float", 4,
         "population variance over axis (ddof=0, NumPy's default)"),
        ("std", _std_vjp, lambda d, a: "float", 4,
         "population standard deviation over axis (ddof=0); gradient 0 where it is 0")):
    register(OpDef(name=_name, arity=1, attrs=dict(_REDUCE), shape=_reduce_shape,
                   vjp=_vjp_fn, dtype=_dtype, flops=per_entry(_flops, of=0), doc=_doc))
