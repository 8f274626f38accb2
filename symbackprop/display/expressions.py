"""Display expressions of graph nodes.

What :mod:`~symbackprop.formulas` and :mod:`~symbackprop.derivation` show is built
here; SymPy only builds and prints display expressions. Tensor nodes become matrix
expressions (``MatrixSymbol``, ``Transpose``, ``HadamardProduct``); a 1-D node
of shape ``(n,)``, such as a bias, is shown as a row vector 1×n, so that
``X W₁ + b₁`` reads as NumPy broadcasts it. Nodes the user did not name
(``auto=True``, e.g. ``mul_1``) are shown by their expression in terms of named
nodes, so ``L = (w*x - y)**2`` shows ∂L/∂(w·x − y).

Each op's display lives in its declaration (``OpDef.display``); elementwise
ops over matrices are lifted here from their scalar display, products becoming
Hadamard products (∘) and the step ``Heaviside(y, 0)`` the mask ``1[y > 0]``.
Numbers are shown exactly where they can be (:func:`~.numbers.exact`).
"""

from __future__ import annotations

import sympy as sp
from sympy.core.function import AppliedUndef
from sympy.printing.pretty.stringpict import prettyForm

from .. import sizes
from ..autodiff import Adjoints
from ..ops import registry
from ..ops.elementwise import X
from ..ops.select import MASKS
from .numbers import exact
from .printers import latex, text


# -- display objects ----------------------------------------------------------------
class Indicator(sp.Function):
    """``1[u > 0]``: the step ``Heaviside(u, 0)`` (relu's derivative, 0 at 0), as shown."""

    @classmethod
    def eval(cls, u):
        if isinstance(u, sp.MatrixExpr):
            return None
        if u.is_extended_positive:
            return sp.S.One
        if u.is_extended_nonpositive:
            return sp.S.Zero
        return None

    def _sympystr(self, p):
        return f"1[{p._print(self.args[0])} > 0]"

    def _latex(self, p):
        return rf"\mathbb{{1}}\left[{p._print(self.args[0])} > 0\right]"

    def _pretty(self, p):
        form = p._print(self.args[0])
        form = prettyForm(*form.left("1["))
        return prettyForm(*form.right(" > 0]"))


_LATEX_NAMES: dict[str, str] = {}  # label symbol name -> its LaTeX form


class _PrintedAsGiven:
    """Print the symbol's name as it is (its LaTeX from :data:`_LATEX_NAMES`)."""

    def _sympystr(self, p):
        return self.name

    def _latex(self, p):
        return _LATEX_NAMES.get(self.name, self.name)

    def _pretty(self, p):
        return prettyForm(self.name)


class Label(_PrintedAsGiven, sp.Symbol):
    """A scalar symbol printed as given: ``δ_(w·x − y)`` (LaTeX ``\\delta_{w x - y}``)."""

    @classmethod
    def class_key(cls):
        return sp.Symbol.class_key()  # sorted among symbols by name: x·δ_(w·x)


class MatLabel(_PrintedAsGiven, sp.MatrixSymbol):
    """A matrix symbol printed as given: the δ of an unnamed matrix node."""


def label_symbol(text: str, latex: str, shape=None):
    """A :class:`Label` (or a :class:`MatLabel` of ``shape``) shown as ``text``/``latex``."""
    _LATEX_NAMES[text] = latex
    return Label(text) if shape is None else MatLabel(text, *shape)


class AsMatrix(sp.MatrixExpr):
    """A matrix-valued display expression that SymPy sees as a scalar one, e.g.
    ``softmax(Z)`` or ``tanh(Z)`` applied entrywise; printed as its inner expression."""

    def __new__(cls, expr, rows, cols):
        return sp.Basic.__new__(cls, sp.sympify(expr), sp.sympify(rows), sp.sympify(cols))

    @property
    def shape(self):
        return self.args[1], self.args[2]

    def _sympystr(self, p):
        return p._print(self.args[0])

    def _latex(self, p):
        return p._print(self.args[0])

    def _pretty(self, p):
        return p._print(self.args[0])


def _is_mat(e) -> bool:
    return isinstance(e, sp.MatrixExpr)


def _indicators(e):
    """Show ``Heaviside(u, 0)`` as ``1[u > 0]`` and ``Heaviside(u, 1)`` as ``1[u ≥ 0]``."""
    if not isinstance(e, sp.Basic) or _is_mat(e):
        return e
    e = e.replace(lambda t: isinstance(t, sp.Heaviside) and len(t.args) == 2
                  and t.args[1] == 1, lambda t: MASKS["≥"](t.args[0], 0))
    return e.replace(lambda t: isinstance(t, sp.Heaviside) and len(t.args) == 2
                     and t.args[1] == 0, lambda t: Indicator(t.args[0]))


def _lift(e, args: dict):
    """Lift a scalar display expression in placeholder symbols to matrices: products
    of matrices become Hadamard products, powers Hadamard powers, scalars in sums
    multiples of the all-ones matrix, functions entrywise applications."""
    if e in args:
        return args[e]
    if not e.args or not isinstance(e, sp.Expr):
        return e
    parts = [_lift(a, args) for a in (e.as_ordered_terms() if e.is_Add else e.args)]
    mats = [p for p in parts if _is_mat(p)]
    if not mats:
        return e.func(*parts)
    shape = max((m.shape for m in mats), key=lambda s: (s[0] != 1, s[1] != 1))
    if e.is_Add:
        return build(sp.MatAdd, *[p if _is_mat(p) else p * sp.OneMatrix(*shape) for p in parts])
    if e.is_Mul:
        scale = sp.Mul(*[p for p in parts if not _is_mat(p)])
        prod = mats[0] if len(mats) == 1 else build(sp.HadamardProduct, *mats)
        return prod if scale == 1 else build(sp.MatMul, scale, prod)
    if e.is_Pow and _is_mat(parts[0]) and not _is_mat(parts[1]):
        return sp.HadamardPower(parts[0], parts[1])
    if isinstance(e, Indicator):
        return AsMatrix(Indicator(parts[0]), *shape)
    if getattr(e, "entrywise", False):  # a display function of its own (1[a > b])
        return AsMatrix(e.func(*parts), *shape)
    name = getattr(e.func, "__name__", type(e).__name__)
    return AsMatrix(sp.Function(name)(*parts), *shape)


def build(cls, *args):
    """``cls(*args)``, or the same node unchecked where NumPy broadcasting (an N×3
    matrix minus an N×1 column) fails SymPy's shape check: for display only."""
    try:
        return cls(*args)
    except (ValueError, TypeError):  # sympy's ShapeError is a ValueError
        return sp.Basic.__new__(cls, *args)


def substitute(e, mapping: dict):
    """``e.xreplace(mapping)`` that rebuilds matrix nodes with :func:`build`."""
    if e in mapping:
        return mapping[e]
    if not e.args or isinstance(e, sp.MatrixSymbol):
        return e
    args = [substitute(a, mapping) for a in e.args]
    if all(a is b for a, b in zip(args, e.args)):
        return e
    return build(e.func, *args) if _is_mat(e) else e.func(*args)


def put(e, mapping: dict):
    """Substitute ``mapping`` into ``e`` without re-evaluating, so what was written
    stays: ``a + a`` (not ``2a``), ``2(w·x − y)`` (not ``2w·x − 2y``)."""
    with sp.evaluate(False):
        e = e.xreplace(mapping)
    e = e.replace(lambda t: (t.is_Mul or t.is_Add or t.is_Pow) and t.args
                  and all(a.is_Number for a in t.args), lambda t: t.func(*t.args))  # 1·1
    return e.replace(lambda t: t.is_Mul and any(a.is_Mul for a in t.args), _flat_mul)


def _flat_mul(t):
    factors = [f for a in t.args for f in (a.args if a.is_Mul else (a,))]
    nums = [f for f in factors if f.is_Number]
    return sp.Mul(*nums, *[f for f in factors if not f.is_Number], evaluate=False)


def canonical(e):
    """SymPy's own form of a display expression (``a + a`` is ``2*a`` again), for
    comparing and computing."""
    return e if _is_mat(e) or not isinstance(e, sp.Basic) else e.doit()


def realize(e):
    """Replace display functions such as ``sigmoid(z)`` or ``relu(z)`` by their
    op's SymPy expression, so the result can be evaluated and simplified."""
    if _is_mat(e) or not isinstance(e, sp.Basic):
        return e

    def op_expr(t):
        try:
            opdef = registry.get(t.func.__name__)
        except KeyError:
            return None
        if not opdef.elementwise or opdef.expr is None or opdef.arity != len(t.args):
            return None
        syms, body = opdef.expr({})
        return body.xreplace(dict(zip(syms, t.args)))

    def is_op(t):
        return isinstance(t, AppliedUndef) and op_expr(t) is not None

    return e.replace(is_op, op_expr)


def display_dims(shape) -> tuple | None:
    """The matrix shape a node of ``shape`` is shown with (None: a scalar symbol)."""
    dims = tuple(sizes.to_sympy(d) if isinstance(d, str) else d for d in shape)
    if len(dims) == 1:
        return (1, dims[0])  # a row vector, as a bias broadcasts
    return dims if len(dims) == 2 else None


def apply_display(opdef: registry.OpDef, args: list, attrs: dict, shape) -> sp.Basic:
    """The display expression of ``opdef`` applied to the display ``args``."""
    try:
        if opdef.elementwise and opdef.display is not None:
            ph = X[:len(args)]
            e = _indicators(opdef.display(list(ph), attrs))
            e = _lift(e, dict(zip(ph, args))) if any(map(_is_mat, args)) \
                else put(e, dict(zip(ph, args)))
        elif opdef.display is not None:
            e = _indicators(opdef.display(list(args), attrs))
        else:
            e = sp.Function(opdef.name)(*args)
    except (TypeError, ValueError, AttributeError):  # a hook that cannot show these args
        e = sp.Function(opdef.name)(*args)
    return shaped(e, shape)


def shaped(e, shape):
    """``e`` as a matrix expression when the node it shows is 1-D or 2-D."""
    dims = display_dims(shape)
    if dims is None or _is_mat(e):
        return e
    return sp.ZeroMatrix(*dims) if e == 0 else AsMatrix(e, *dims)


# -- reading the graph -----------------------------------------------------------------
class _Display:
    """Display expressions of the nodes of a joint graph (forward and backward)."""

    def __init__(self, adj: Adjoints):
        self.adj = adj
        self.j = adj.graph
        self.G = adj.graph.nx
        self._fwd: dict[str, sp.Basic] = {}
        self._delta: dict[str, sp.Basic] = {}

    def auto(self, n: str) -> bool:
        return bool(self.G.nodes[n].get("auto"))

    def symbol(self, n: str):
        """The symbol of a named node (a ``MatrixSymbol`` for 1-D and 2-D nodes)."""
        dims = display_dims(self.G.nodes[n]["shape"])
        return sp.Symbol(n) if dims is None else sp.MatrixSymbol(n, *dims)

    def definition(self, n: str):
        """The node as its op applied to its arguments' display forms."""
        d = self.G.nodes[n]
        if self.j.role(n) == "const":
            v = d["value"]
            if isinstance(v, (list, tuple)):
                return self.symbol(n)
            return sp.sympify(v) if isinstance(v, sp.Basic) else exact(v)
        if self.j.is_leaf(n):
            return self.symbol(n)
        args = [self.expr(a) for a in self.j.args(n)]
        return apply_display(self.j.opdef(n), args, d["attrs"], d["shape"])

    def expr(self, n: str):
        """A forward node as shown: its symbol if named, else its definition (or,
        where that is its argument's own form, as for a reshape, ``op(arg)``)."""
        if n not in self._fwd:
            d = self.G.nodes[n]
            role = self.j.role(n)
            named = not d.get("auto") and role != "const" or role in ("input", "param")
            e = self.symbol(n) if named else self.definition(n)
            args = [self.expr(a) for a in self.j.args(n)]
            if not named and e in args:
                e = shaped(sp.Function(d["op"])(*args), d["shape"])
            self._fwd[n] = e
        return self._fwd[n]

    def label(self, n: str) -> str:
        """``w`` for a named node, ``w·x − y`` for an unnamed one."""
        return text(self.expr(n))

    def label_latex(self, n: str) -> str:
        return latex(self.expr(n))

    def delta(self, n: str):
        """δ_n, the symbol of ∂L/∂n."""
        if n not in self._delta:
            dims = display_dims(self.G.nodes[n]["shape"])
            if not self.auto(n) or self.j.role(n) in ("input", "param"):
                name = "delta_" + n
                self._delta[n] = sp.Symbol(name) if dims is None else sp.MatrixSymbol(name, *dims)
            else:
                lab, lat = self.label(n), self.label_latex(n)
                self._delta[n] = label_symbol(f"δ_({lab})", rf"\delta_{{{lat}}}", dims)
        return self._delta[n]

    def delta_owner(self, m: str) -> str:
        """Whose δ to show for the adjoint of consumer ``m``: ``m`` itself if named,
        else the named node that adjoint was first built for (δ_z1, not δ_(X W₁))."""
        if not self.auto(m):
            return m
        owner = self.j.adjoint_of(self.adj.adjoint[m])
        return owner if owner is not None and not self.auto(owner) else m

    def backward(self, n: str, stop: dict, memo: dict):
        """A backward node as an expression of forward nodes and the δ in ``stop``."""
        if n in stop:
            return stop[n]
        if n in memo:
            return memo[n]
        d = self.G.nodes[n]
        if not self.j.is_backward(n):
            e = self.expr(n)
        elif self.j.is_leaf(n):
            e = self.definition(n)
        else:
            args = [self.backward(a, stop, memo) for a in self.j.args(n)]
            e = apply_display(self.j.opdef(n), args, d["attrs"], d["shape"])
        memo[n] = e
        return e

    def contribution(self, consumer: str, term: str):
        """One term of an adjoint: the VJP of ``consumer`` in terms of its δ."""
        stop = {self.adj.adjoint[consumer]: self.delta(self.delta_owner(consumer))}
        return self.backward(term, stop, {})
