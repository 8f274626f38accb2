"""Values at the edge of a domain: where a node stops being a finite real number, and why.

SymPy evaluates ``log(0)`` as ``zoo`` (complex infinity), ``sqrt(-1)`` as ``I`` and
the derivative ``1/(2*sqrt(x))`` at 0 as ``zoo``. For derivations, :func:`real_value`
turns such values into what real analysis says: the one-sided limit where the op is
real on one side of the point only (log(0) = −∞ from the right, √′(0) = +∞), ``zoo``
(shown ±∞) where the limits from the two sides are infinite with opposite signs
(1/0), and ``nan`` (shown "undefined") where no real value is near (√−1), and it
names the argument responsible.

For values computed with NumPy (a gradient check, a tensor derivation),
:func:`origin` finds the first node, in topological order, whose value is not
finite while its arguments are, and :func:`explain` says why: an argument at the
edge of the op's domain ("log's argument is 0") or an overflow of the dtype
("exp's argument is 800: its value, 2.7e+347, overflows float64").

Nothing here branches on an op's name: the op's SymPy expression and local
derivatives, from its declaration, decide.
"""

from __future__ import annotations

import numpy as np
import sympy as sp

from .display import exact, fmt, special
from .graph import Graph
from .ops.elementwise import Y

_NEAR = sp.Rational(1, 10**20)  # how far from the point a side is probed, relative
_ORDINALS = ("first", "second", "third")


# -- exact values (derivations) ------------------------------------------------------------
def _real_near(f: sp.Expr, s: sp.Symbol, a, sign: int) -> bool:
    """Whether ``f`` is a finite real number just beside ``s = a`` on one side."""
    try:
        v = sp.N(f.xreplace({s: a + sign * _NEAR * max(1, abs(a))}), 30)
    except (TypeError, ValueError, ZeroDivisionError):
        return False
    return special(v) is None


def one_sided(f: sp.Expr, s: sp.Symbol, a, domain: sp.Expr | None = None) -> sp.Basic | None:
    """The infinite value ``f`` tends to as ``s → a`` from the side(s) where it is real
    (and where ``domain``, the op's own value when ``f`` is its derivative, is real too).

    ``oo`` or ``-oo`` when the sides where ``f`` is real agree, ``zoo`` when they are
    infinite with opposite signs; ``None`` when ``f`` is real on neither side, or its
    limit is finite (a removable gap such as 0·log 0 stays undefined: the op is not
    defined at the point) or cannot be found.

    Examples
    --------
    >>> import sympy
    >>> x = sympy.Symbol("x", real=True)
    >>> one_sided(sympy.log(x), x, 0), one_sided(1 / x, x, 0), one_sided(sympy.sqrt(x), x, -1)
    (-oo, zoo, None)
    >>> one_sided(1 / x, x, 0, domain=sympy.log(x))  # log's derivative, right of 0 only
    oo
    """
    sides = [d for d, sign in (("+", 1), ("-", -1)) if _real_near(f, s, a, sign)
             and (domain is None or _real_near(domain, s, a, sign))]
    limits = set()
    for side in sides:
        try:
            limits.add(sp.limit(f, s, a, side))
        except Exception:  # noqa: BLE001 -- SymPy's limit fails in many ways; then we say undefined
            return None
    if limits and limits <= {sp.oo, -sp.oo}:
        return limits.pop() if len(limits) == 1 else sp.zoo
    return None


def real_value(e: sp.Expr, syms, args, domain: sp.Expr | None = None
               ) -> tuple[sp.Basic, int | None]:
    """``e`` at ``syms = args`` as a real number, and the argument to blame if it is not
    finite. For a derivative, ``domain`` is the op's value: only sides where it is real
    count.

    Where the plain value is finite and real it is returned as is, with no blame.
    Otherwise, when every argument is finite, each argument in turn is moved off the
    point: the first one beside which ``e`` is real and tends to ±∞ is blamed, and
    that limit is the value. A value that stays not real becomes ``nan``.

    Returns
    -------
    value : sympy number
        Finite, ``oo``, ``-oo``, ``zoo`` (infinite, no sign) or ``nan``.
    cause : int or None
        Index of the argument at the edge of the domain, when one was found.

    Examples
    --------
    >>> from symbackprop.ops.elementwise import X
    >>> import sympy
    >>> real_value(sympy.log(X[0]), X[:1], [sympy.Integer(0)])
    (-oo, 0)
    >>> real_value(X[0] / X[1], X[:2], [sympy.Integer(1), sympy.Integer(0)])
    (zoo, 1)
    >>> real_value(sympy.sqrt(X[0]), X[:1], [sympy.Integer(-1)])
    (nan, None)
    """
    v = sp.sympify(e).xreplace(dict(zip(syms, args))).doit()
    kind = special(v)
    if kind is None:
        return v, None
    plain = v if kind in ("∞", "−∞", "±∞") else sp.nan
    if any(special(a) is not None for a in args):
        return plain, None  # carried from an argument: the cause lies upstream
    for i, (s, a) in enumerate(zip(syms, args)):
        if s not in e.free_symbols:
            continue
        others = {t: b for j, (t, b) in enumerate(zip(syms, args)) if j != i}
        limit = one_sided(e.xreplace(others), s, a,
                          None if domain is None else domain.xreplace(others))
        if limit is not None:
            return limit, i
    return plain, None


def why(op: str, args: list, cause: int | None) -> str:
    """Why ``op`` is not finite: ``"log's argument is 0"``.

    ``args`` lists ``(label, value text)`` per argument, the label ``None`` for a
    constant; ``cause`` is the argument to blame, if known (else the non-constant
    arguments are named).

    Examples
    --------
    >>> why("log", [("x", "0")], 0), why("div", [(None, "1"), ("x", "0")], 1)
    ("log's argument is 0", "div's argument x is 0")
    >>> why("pow", [("x", "−4"), (None, "1/2")], None)
    "pow's argument x is −4"
    """
    if len(args) == 1:
        return f"{op}'s argument is {args[0][1]}"
    picked = [cause] if cause is not None else [i for i, (lab, _) in enumerate(args) if lab]
    picked = picked or list(range(len(args)))
    if len(picked) == 1:
        (i,) = picked
        lab, val = args[i]
        name = lab if lab else f"{_ORDINALS[i] if i < 3 else f'argument {i + 1}'}"
        return f"{op}'s argument {name} is {val}" if lab else f"{op}'s {name} argument is {val}"
    return f"{op}'s arguments are " + " and ".join(
        f"{lab or f'#{i + 1}'} = {val}" for i, (lab, val) in enumerate(args) if i in picked)


# -- NumPy values (gradient checks, tensor derivations) --------------------------------------
def _finite(v) -> bool:
    return v is None or special(v) is None


def origin(j: Graph, values: dict, target: str | None = None) -> str | None:
    """The first node, in topological order, whose value is not finite while the values
    of its arguments are: where a NaN or an infinity starts. With ``target``, only the
    nodes ``target`` depends on (itself included) are searched.

    Examples
    --------
    >>> g = sb.parse("a = x - 1; b = log(a); L = 2*b")
    >>> with np.errstate(divide="ignore"):
    ...     values = {"x": 1.0, "a": 0.0, "b": np.log(0.0), "L": -np.inf}
    >>> origin(g, values)
    'b'
    """
    among = None if target is None else j.ancestors([target]) | {target}
    for n in j.topo_order():
        if among is not None and n not in among or _finite(values.get(n)):
            continue
        if all(_finite(values.get(a)) for a in j.args(n)):
            return n
    return None


def culprit(j: Graph, n: str) -> str:
    """The forward node to name for node ``n``: ``n`` itself, or for a backward node the
    node whose local derivative it applies."""
    if not j.is_backward(n):
        return n
    f = j.vjp_of(n) or j.via(n) or j.adjoint_of(n)
    return f if f in j.nx else n


def entry(v) -> tuple | None:
    """The index of the first entry of ``v`` that is not finite."""
    a = np.asarray(v, dtype=float)
    bad = np.argwhere(~np.isfinite(a))
    return tuple(int(i) for i in bad[0]) if len(bad) else None


def _number(x: float) -> str:
    return fmt(float(x))


def explain(j: Graph, n: str, values: dict, dtype: str = "float64") -> str:
    """Why node ``n`` of ``j``, evaluated with NumPy into ``values``, is not finite,
    given that its arguments are (``n`` from :func:`origin`).

    A backward node is explained through the forward node whose local derivative it
    applies. For an elementwise op the entry at fault is evaluated exactly: where the
    exact value is finite, the ``dtype`` overflowed; otherwise the argument at the edge
    of the op's domain is named.

    Examples
    --------
    >>> g = sb.parse("L = log(x)")
    >>> with np.errstate(divide="ignore"):
    ...     print(explain(g, "L", {"x": np.array(0.0), "L": np.log(np.array(0.0))}))
    log's argument is 0
    >>> g = sb.parse("L = exp(x)")
    >>> with np.errstate(over="ignore"):
    ...     print(explain(g, "L", {"x": np.array(800.0), "L": np.exp(np.array(800.0))}))
    exp's argument is 800: its value, 2.73e+347, overflows float64
    """
    G = j.nx
    d = G.nodes[n]
    kind = special(values[n])
    if j.is_leaf(n):
        given = "NaN" if np.isnan(np.asarray(values[n], dtype=float)).any() else kind
        return f"the value given for {n} has {given} in it" if np.ndim(values[n]) \
            else f"the value given for {n} is {given}"
    f = culprit(j, n)
    backward = f != n
    if j.is_leaf(f):  # e.g. a sum of a leaf's gradient terms
        return f"{d['op']}'s value is {kind} for finite arguments (an overflow of {dtype}?)"
    fd, args = G.nodes[f], j.args(f)
    opdef = j.opdef(f)
    what = "derivative" if backward else "value"
    idx = entry(values[n])
    shape = np.shape(values[n])
    try:
        entries = [float(np.broadcast_to(values[a], shape)[idx]) for a in args]
    except (ValueError, TypeError, IndexError):
        entries = None
    where = f" at entry {list(idx)}" if idx else ""
    if not opdef.elementwise or opdef.expr is None or entries is None \
            or not all(np.isfinite(entries)):
        big = max((float(np.max(np.abs(values[a]))) for a in args
                   if np.size(values[a]) and np.asarray(values[a]).dtype.kind in "fiu"),
                  default=0.0)
        return (f"{fd['op']}'s {what} is {kind} for finite arguments (largest |argument| "
                f"{big:.3g}: an overflow of {dtype}?){where}")
    syms, e = opdef.expr(fd["attrs"])
    point = [exact(x) for x in entries]
    exprs = [e] if not backward else [sp.sympify(lg).xreplace({Y: e})
                                      for lg in opdef.local_grads(fd["attrs"])]
    exact_values = [real_value(x, syms, point, e if backward else None) for x in exprs]
    labels = [(None if j.role(a) == "const" else a, _number(x))
              for a, x in zip(args, entries)]
    bad = [(v, c) for v, c in exact_values if special(v) is not None]
    if not bad:  # the math is finite: the floating-point type is not wide enough
        v = max((vv for vv, _ in exact_values), key=lambda t: abs(sp.N(t, 20)))
        fits = abs(sp.N(v, 20)) <= np.finfo(dtype).max  # then the product with g did not
        return (f"{why(fd['op'], labels, None)}: its {what}, {str(sp.N(v, 3)).lower()}, "
                f"{'times the incoming gradient ' if fits else ''}overflows {dtype}{where}")
    return why(fd["op"], labels, bad[0][1]) + where
