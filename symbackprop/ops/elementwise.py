"""Elementwise ops, one line each: the forward is a SymPy expression and
SymPy derives the derivative.

Each op's derivative is taken by :func:`sympy.diff` on its scalar expression,
then rewritten through the op's output ``y`` where that is no longer than the
input form and agrees with it numerically (σ' = y(1 − y), tanh' = 1 − y²,
exp' = y). Conventions at non-smooth points: relu'(0) = 0 (``Heaviside(x, 0)``,
not SymPy's ½), |x|'(0) = sign(0) = 0.

All elementwise ops broadcast like NumPy; their VJP is one elementwise node
``g * f'(x, y)`` followed by a sum back to each input's shape.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from functools import lru_cache

import sympy as sp

from .. import sizes
from .registry import OpDef, ShapeMismatch, register

X = sp.symbols("x0:16", real=True)  # argument symbols of every elementwise expression
Y = sp.Symbol("y", real=True)  # the op's output, for derivatives through it
G = sp.Symbol("g", real=True)  # the incoming adjoint, in VJP expressions


# -- shapes ---------------------------------------------------------------------
def broadcast_shapes(shapes, attrs=None, names=None) -> tuple:
    """NumPy broadcasting on shapes whose entries may be size names ('N')."""
    ndim = max((len(s) for s in shapes), default=0)
    out = []
    for i in range(ndim):
        dims = {s[len(s) - ndim + i] for s in shapes if len(s) - ndim + i >= 0}
        dims.discard(1)
        if len(dims) > 1:
            raise ShapeMismatch(
                f"axis {i - ndim} has sizes {' and '.join(map(str, sorted(dims, key=str)))}, "
                "which do not broadcast",
                "Make the sizes equal or 1 (reshape, or transpose one argument).")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def count(shape, axes=None):
    """Number of elements of ``shape`` over ``axes`` (all when None): an int, or a
    SymPy product when a size is a name."""
    axes = range(len(shape)) if axes is None else axes
    n = sp.Integer(1)
    for a in axes:
        d = shape[a]
        n *= sizes.to_sympy(d) if isinstance(d, str) else d
    return int(n) if n.is_Integer else n


def unbroadcast(g, shape):
    """Sum ``g`` (a node of the broadcast shape) back down to ``shape``."""
    lead = g.ndim - len(shape)
    kept = [lead + i for i, d in enumerate(shape) if d == 1 and g.shape[lead + i] != 1]
    axes = tuple(range(lead)) + tuple(kept)
    if not axes:
        return g
    axis = axes[0] if len(axes) == 1 else axes
    s = g.graph.apply("sum", [g], {"axis": None if len(axes) == g.ndim else axis})
    return s if not kept else g.graph.apply("reshape", [s], {"shape": tuple(shape)})


# -- derivatives ----------------------------------------------------------------
_SAMPLES = (0.3, 0.7, 1.3, 2.1, -0.4, -1.7, -2.9)
SOLVE_MAX_OPS = 12  # larger forward expressions are not inverted at all
# Why an op's derivative is not written through its output, by op name (--explain shows it).
NOTES: dict[str, str] = {}


def _agree(a: sp.Expr, b: sp.Expr, x: sp.Symbol, f: sp.Expr) -> bool:
    """``a(x)`` and ``b(x, y=f(x))`` agree at sample points (checks a branch choice)."""
    seen = 0
    for v in _SAMPLES:
        try:
            va = complex(a.subs(x, v).evalf())
            vb = complex(b.subs(Y, f.subs(x, v)).subs(x, v).evalf())
        except (TypeError, ValueError, ZeroDivisionError):
            continue
        if any(map(math.isnan, (va.real, vb.real))) or abs(va.imag) > 1e-12:
            continue
        if abs(va - vb) > 1e-9 * (1 + abs(va)):
            return False
        seen += 1
    return seen >= 3


def _attempt(fn):
    """``fn()``, or ``None`` when SymPy raises (it raises many kinds on what it cannot
    solve or simplify). No timer: which expressions get here is decided by rules
    (:func:`through_output`), so the result never depends on the machine's speed or on the
    thread deriving it."""
    try:
        return fn()
    except Exception:  # noqa: BLE001 -- SymPy raises many kinds on what it cannot solve
        return None


def through_output(f: sp.Expr, d: sp.Expr, x: sp.Symbol, name: str = "") -> sp.Expr:
    """Rewrite the derivative ``d`` of ``f(x)`` through the output ``y = f(x)`` when that
    is no longer and agrees numerically; otherwise return ``d``. The search is bounded by
    rules on ``f`` alone, never by time, so the result is the same on any machine: ``y =
    f(x)`` is inverted only when it has at most :data:`SOLVE_MAX_OPS` operations and ``x``
    occurs once (SymPy inverts those by unwinding, at once; the fast GELU, with x three
    times, hung in ``sympy.solve``). Why no output form is used is kept in ``NOTES[name]``.

    An output form is as exact as the stored output allows: where ``y`` rounds (tanh(20)
    is 1.0 in float64), ``1 - y**2`` gives 0 for 1.7e-17, an error below float64's
    resolution of the derivative's scale, as in PyTorch and JAX. Computing in ``x``
    instead would keep every pre-activation for the backward pass (docs/formulas.md).

    Examples
    --------
    >>> from symbackprop.ops.elementwise import through_output, X
    >>> x = X[0]
    >>> through_output(sp.exp(2 * x), sp.diff(sp.exp(2 * x), x), x)
    2*y
    >>> through_output(sp.tanh(x), sp.diff(sp.tanh(x), x), x)
    1 - y**2
    """
    why = []

    def candidates():  # cheapest first: solving y = f(x) takes SymPy about a second
        yield d.subs(f, Y)
        if f.count_ops() > SOLVE_MAX_OPS:
            why.append(f"y = f(x) has more than {SOLVE_MAX_OPS} operations: not inverted")
            return
        if f.count(x) > 1:  # x + exp(x), x*sigmoid(x): no inverse in closed form, or one
            # that SymPy may search for minutes
            why.append("x occurs more than once in y = f(x): not inverted")
            return
        if f.free_symbols == {x} and f.count_ops() > 0:
            sols = _attempt(lambda: sp.solve(sp.Eq(Y, f), x))
            if sols is None:
                why.append("SymPy could not invert y = f(x)")
                return
            for sol in sols:  # the numeric check rejects a wrong branch
                c = _attempt(lambda sol=sol: _minus_inside(sp.factor(sp.simplify(
                    d.subs(x, sol)))))
                if c is not None:
                    yield c

    for c in candidates():
        if x not in c.free_symbols and c.count_ops() <= d.count_ops() and _agree(d, c, x, f):
            return c
    if name:
        NOTES[name] = "; ".join(why) or "no form through the output y found"
    return d


def derivative_notes(g) -> list[tuple[str, str]]:
    """``(op, why)`` for each op of ``g`` whose derivative is computed in its input because
    no form through its output was found (``codegen --explain`` prints them)."""
    ops = {op.name: op for op in map(g.opdef, g.nx) if op is not None}
    for op in ops.values():  # the derivatives are derived on first use: derive them now
        if op.elementwise and op.local_grads is not None:
            op.local_grads({})
    return [(n, NOTES[n]) for n in sorted(ops) if n in NOTES]


def _minus_inside(c: sp.Expr) -> sp.Expr:
    """``-y*(y - 1)`` -> ``y*(1 - y)``: the textbook form, as factor() leaves a -1 outside."""
    coeff, rest = c.as_coeff_Mul()
    if coeff == -1 and rest.is_Mul:
        fs = list(rest.args)
        for i, f in enumerate(fs):
            if f.is_Add:
                return sp.Mul(*fs[:i], -f, *fs[i + 1:])
    return c


def _kinks(e: sp.Expr) -> sp.Expr:
    """The conventions at non-smooth points. A step of one argument (``Heaviside(x)``,
    from Max(x, 0), Abs or Piecewise) is 0 at its kink: relu'(0) = 0, as PyTorch and JAX.
    A step between arguments (``Heaviside(a - b)``, from Max(a, b)) is 1/2 at a tie: each
    side gets half the gradient, as PyTorch and JAX do for maximum and minimum. The
    derivative of a step (DiracDelta, from d/dx Heaviside or sign) is 0 wherever it is
    defined."""
    e = e.replace(lambda t: isinstance(t, sp.DiracDelta), lambda t: sp.S.Zero)

    def convention(t):
        tie = len(t.args[0].free_symbols & set(X)) > 1
        return sp.Heaviside(t.args[0], sp.S.Half if tie else sp.S.Zero)
    return e.replace(lambda t: isinstance(t, sp.Heaviside), convention)


# -- declaring ops -----------------------------------------------------------------
def _display_as_function(expr: sp.Expr) -> bool:
    plain = expr.count_ops() <= 1 and not expr.has(sp.Max, sp.Min, sp.Heaviside)
    return not plain


def elementwise(name: str, fn: Callable, grad: Callable | None = None,
                numpy: Callable | None = None, stable: Callable | None = None,
                doc: str = "") -> Callable:
    """Declare an elementwise op from a SymPy expression and return its builder.

    Parameters
    ----------
    name : str
        The op's name (an identifier), also the name of the returned function.
    fn : callable
        Takes one SymPy symbol per argument and returns the scalar expression,
        e.g. ``lambda x: x / (1 + sympy.exp(-x))``.
    grad : callable, optional
        ``grad(*xs, y)`` returning the derivative (one argument) or a tuple of
        them; only where SymPy's own form is poor (``relu``). By default SymPy
        differentiates ``fn`` and rewrites the result through the output.
    numpy : callable, optional
        ``numpy(*codes) -> str``: NumPy source for the forward, where no SymPy
        expression prints a stable form (``np.logaddexp(0, x)``). Such an op is not
        fused with its neighbours. A shorthand for registering its
        :class:`~symbackprop.codegen.lowering.Lowering` for the ``"numpy"`` backend
        (:func:`symbackprop.codegen.lowering.register`), which other backends use.
    stable : callable, optional
        Like ``fn``, an equal expression that is safer to compute and is the
        one printed (sigmoid as ``(1 + tanh(x/2))/2``, which never overflows).
    doc : str
        One line of description.

    Returns
    -------
    callable
        ``f(*nodes)`` adding a node of this op, usable like ``sb.relu``.

    Examples
    --------
    >>> import sympy
    >>> swish = sb.elementwise("swish", lambda x: x / (1 + sympy.exp(-x)))
    >>> g = sb.Graph(); z = g.input("z")
    >>> swish(z).op
    'swish'
    >>> sb.ops.get("swish").local_grads({})[0]
    x0*exp(-x0)/(1 + exp(-x0))**2 + 1/(1 + exp(-x0))
    """
    from .registry import builder

    if not name.isidentifier():
        raise ValueError(f"op name {name!r} must be a Python identifier, e.g. 'swish'.")
    # Required positional parameters only: sp.log(arg, base=None) and
    # sp.sqrt(arg, evaluate=None) take one argument, not two.
    k = sum(p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            for p in inspect.signature(fn).parameters.values())
    expr = sp.sympify(fn(*X[:k]))
    @lru_cache(maxsize=1)  # derived on first use: SymPy takes a while for some ops
    def derivatives() -> tuple:
        if grad is not None:
            gs = grad(*X[:k], Y)
            return tuple(map(sp.sympify, gs if isinstance(gs, (tuple, list)) else (gs,)))
        return tuple(through_output(expr, _kinks(sp.diff(expr, x)), x, name) if k == 1
                     else _kinks(sp.diff(expr, x)) for x in X[:k])

    def local(attrs):
        return list(derivatives())

    fun = sp.Function(name)
    display = ((lambda args, attrs: fun(*args)) if _display_as_function(expr)
               else (lambda args, attrs: expr.subs(dict(zip(X, args)), simultaneous=True)))
    code = None if stable is None else sp.sympify(stable(*X[:k]))
    register(OpDef(name=name, arity=k, shape=broadcast_shapes, vjp=_vjp,
                   expr=lambda attrs: (X[:k], expr), local_grads=local, opaque=numpy is not None,
                   code=None if code is None else (lambda attrs: (X[:k], code)),
                   elementwise=True, display=display, doc=doc or f"elementwise {expr}",
                   grad_declared=grad is not None,
                   # swapping the arguments leaves a + b and a*b unchanged, not a - b
                   commutative=k > 1 and expr == expr.xreplace(
                       {X[i]: X[(i + 1) % k] for i in range(k)})
                   and expr == expr.xreplace({X[0]: X[1], X[1]: X[0]})))
    if numpy is not None:
        # The one place ops/ reaches into code generation, at the user's call and not at
        # import: the NumPy code is code generation's to keep (codegen/lowering.py).
        from ..codegen import lowering

        lowering.register("numpy", name, lowering.Lowering(lambda codes, attrs: numpy(*codes)))
    return builder(name)


def _ew_expr(attrs):
    e = attrs["expr"]
    syms = sorted((s for s in e.free_symbols if s in X), key=X.index)
    n = X.index(syms[-1]) + 1 if syms else 0
    return X[:n], e


def _ew_grads(attrs):
    syms, e = _ew_expr(attrs)
    return [_kinks(sp.diff(e, x)) for x in syms]


# The generic elementwise node: any SymPy expression of its arguments x0, x1, ...
# VJPs build these (``g * y * (1 - y)`` is one node, one NumPy statement), and
# since their derivative is again taken by SymPy, gradients can be differentiated.
register(OpDef(
    name="ew", arity=None, attrs={"expr": None}, shape=broadcast_shapes,
    internal=True,  # VJPs and passes build it; users write sb.elementwise ops instead
    elementwise=True, expr=_ew_expr, local_grads=_ew_grads,
    vjp=lambda g, args, out, attrs: _vjp(g, args, out, attrs),  # defined below
    display=lambda args, attrs: attrs["expr"].subs(dict(zip(X, args)), simultaneous=True),
    doc="elementwise SymPy expression of its arguments x0, x1, ..."))


def ew(args, expr: sp.Expr):
    """Add one elementwise node computing ``expr`` (in ``X[0..]``) of ``args``."""
    graph = next(a.graph for a in args)
    return graph.apply("ew", list(args), {"expr": expr})


def scaled(g, d: sp.Expr, args, out):
    """The node ``g * d`` where ``d`` is a local derivative in ``X`` and ``Y``.

    Scalar constant arguments are folded in as numbers (``2*b``, not ``c*b``);
    ``g * 1`` is ``g`` itself.
    """
    subs = {}
    free = d.free_symbols  # SymPy walks the expression for each call: once is enough
    for x, a in zip(X, args):
        if a.graph.role(a.name) == "const" and a.shape == () and x in free:
            subs[x] = sp.sympify(a.data["value"])
    d = d.xreplace(subs)
    if d == 1:
        return g
    free = d.free_symbols
    leaves = [(G, g)] + [(x, a) for x, a in zip(X, args) if x in free]
    if Y in free:
        leaves.append((Y, out))
    # One argument per distinct node, so x*x passes x once.
    nodes, rename = [], {}
    for s, n in leaves:
        if n not in nodes:
            nodes.append(n)
        rename[s] = X[nodes.index(n)]
    return ew(nodes, (G * d).xreplace(rename))


def _vjp(g, args, out, attrs):
    grads = out.graph.opdef(out.name).local_grads(attrs)
    res = []
    for a, d in zip(args, grads):
        if a.dtype == "int" or d == 0:
            res.append(None)
        else:
            res.append(unbroadcast(scaled(g, d, args, out), a.shape))
    return res


# -- the built-in set -----------------------------------------------------------------
elementwise("add", lambda a, b: a + b, doc="a + b")
elementwise("sub", lambda a, b: a - b, doc="a - b")
elementwise("mul", lambda a, b: a * b, doc="a * b")
elementwise("div", lambda a, b: a / b, doc="a / b")
elementwise("pow", lambda a, b: a ** b, doc="a ** b")
elementwise("neg", lambda a: -a, doc="-a")
elementwise("exp", sp.exp, doc="exponential")
elementwise("log", sp.log, doc="natural logarithm")
elementwise("sqrt", sp.sqrt, doc="square root")
elementwise("abs", sp.Abs, doc="absolute value; |x|'(0) = 0")
elementwise("sin", sp.sin, doc="sine")
elementwise("cos", sp.cos, doc="cosine")
elementwise("tanh", sp.tanh, doc="hyperbolic tangent; tanh' = 1 - y**2")
elementwise("sigmoid", lambda a: 1 / (1 + sp.exp(-a)),
            doc="logistic sigmoid 1/(1+exp(-x)); sigmoid' = y*(1 - y)")
elementwise("relu", lambda a: sp.Max(a, 0), grad=lambda a, y: sp.Heaviside(y, 0),
            doc="max(x, 0); relu'(x) = [y > 0], so relu'(0) = 0")
elementwise("softplus", lambda a: sp.log(1 + sp.exp(a)),
            # SymPy's through-output form (exp(y) - 1)*exp(-y) overflows for large y;
            # 1 - exp(-y) is the same number (computed as -expm1(-y): ops/stable.py)
            grad=lambda a, y: 1 - sp.exp(-y),
            doc="log(1 + exp(x))")
elementwise("square", lambda a: a ** 2, doc="x**2")
