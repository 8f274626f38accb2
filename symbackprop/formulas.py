"""Gradient formulas and step-by-step derivations, for display only.

:func:`grad` reads the joint forward + backward graph built by
:func:`~symbackprop.autodiff.differentiate` and gives every node on the
gradient path its adjoint ∂L/∂node as a SymPy expression in δ-form, in terms
of the adjoints of its consumers (δ_b = 2b·δ_c), as textbooks write it.
:func:`derive` walks the same backward sweep and returns each step with its
local derivatives and, at a given point, every number, as a teacher works an
example on the board.

Nothing here differentiates: the formulas are *read* from the adjoint graph,
and local derivatives come from each op's declaration (``OpDef.local_grads``).
SymPy only builds and prints display expressions. Tensor nodes become matrix
expressions (``MatrixSymbol``, ``Transpose``, ``HadamardProduct``); a 1-D node
of shape ``(n,)``, such as a bias, is shown as a row vector 1×n, so that
``X W₁ + b₁`` reads as NumPy broadcasts it. Nodes the user did not name
(``auto=True``, e.g. ``mul_1``) are shown by their expression in terms of named
nodes, so ``L = (w*x - y)**2`` shows ∂L/∂(w·x − y).

Each op's display lives in its declaration (``OpDef.display``); elementwise
ops over matrices are lifted here from their scalar display, products becoming
Hadamard products (∘) and the step ``Heaviside(y, 0)`` the mask ``1[y > 0]``.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

import sympy as sp
from sympy.core.function import AppliedUndef
from sympy.printing.latex import LatexPrinter
from sympy.printing.pretty.stringpict import prettyForm
from sympy.printing.str import StrPrinter

from .autodiff import Adjoints, check_of_wrt, differentiate
from .errors import GradError
from .graph import Graph, dim_symbol
from .ops import registry
from .ops.elementwise import X, Y

#: Largest joint graph (nodes) for which :meth:`Gradients.expanded` substitutes fully.
MAX_EXPANDED_NODES = 200

__all__ = ["Derivation", "FiniteDifference", "Gradients", "Step", "Term", "derive", "grad"]


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


class Label(sp.Symbol):
    """A scalar symbol printed as given: ``δ_(w·x − y)`` (LaTeX ``\\delta_{w x - y}``)."""

    @classmethod
    def class_key(cls):
        return sp.Symbol.class_key()  # sorted among symbols by name: x·δ_(w·x)

    def _sympystr(self, p):
        return self.name

    def _latex(self, p):
        return _LATEX_NAMES.get(self.name, self.name)

    def _pretty(self, p):
        return prettyForm(self.name)


class MatLabel(sp.MatrixSymbol):
    """A matrix symbol printed as given: the δ of an unnamed matrix node."""

    def _sympystr(self, p):
        return self.name

    def _latex(self, p):
        return _LATEX_NAMES.get(self.name, self.name)

    def _pretty(self, p):
        return prettyForm(self.name)


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
    """Show ``Heaviside(u, 0)`` as ``1[u > 0]``."""
    if not isinstance(e, sp.Basic) or _is_mat(e):
        return e
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
    dims = tuple(dim_symbol(d) if isinstance(d, str) else d for d in shape)
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


# -- printing --------------------------------------------------------------------------
_SUB = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")
_SUP = str.maketrans("0123456789-", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻")


def pretty_name(name: str) -> str:
    """``W1`` -> ``W₁``, ``delta_z1`` -> ``δ_z1``; other names unchanged."""
    if name.startswith("delta_"):
        return "δ_" + name[6:]
    m = re.fullmatch(r"([A-Za-z]+)(\d+)", name)
    return m.group(1) + m.group(2).translate(_SUB) if m else name


class TextPrinter(StrPrinter):
    """One-line Unicode: ``2b·δ_c``, ``Xᵀ δ_z1``, ``δ_h1 ∘ 1[h₁ > 0]``, ``(w·x − y)²``.

    Minus signs are ASCII while printing (SymPy's printer tests for them) and
    become ``−`` in :func:`text`.
    """

    def _print_Symbol(self, expr):
        return pretty_name(expr.name)

    _print_MatrixSymbol = _print_Symbol

    def _print_Mul(self, expr):
        s = super()._print_Mul(expr).replace("*", "·")
        return re.sub(r"^(-?\d+(?:\.\d+)?)·(?=[^\d.])", r"\1", s)  # 2·b -> 2b

    def _print_Pow(self, expr):
        b, e = expr.args
        if e.is_Integer and e > 1:
            return self.parenthesize(b, sp.printing.precedence.PRECEDENCE["Pow"],
                                     strict=True) + str(e).translate(_SUP)
        return super()._print_Pow(expr).replace("**", "^")

    def _print_Float(self, expr):
        return format(float(expr), ".6g")

    def _print_Transpose(self, expr):
        return self.parenthesize(expr.arg, sp.printing.precedence.PRECEDENCE["Pow"],
                                 strict=True) + "ᵀ"

    def _factor(self, e, loose: tuple) -> str:
        s = self._print(e)
        return f"({s})" if isinstance(e, (*loose, sp.Add)) else s

    def _print_MatMul(self, expr):
        c, mats = expr.as_coeff_mmul()
        body = " ".join(self._factor(m, (sp.MatAdd, sp.HadamardProduct)) for m in mats.args)
        if c == 1:
            return body
        if c == -1:
            return "-" + body
        cs = self._print(c)
        return f"{cs}{body}" if c.is_Integer else (cs if c.is_Symbol else f"({cs})") + "·" + body

    def _print_MatAdd(self, expr):
        out = []
        printed = sorted((self._print(t) for t in expr.args), key=lambda s: s.startswith("-"))
        for i, s in enumerate(printed):  # subtracted terms last: P − Y
            if s.startswith("-"):
                out.append(("-" if i == 0 else " - ") + s[1:])
            else:
                out.append(("" if i == 0 else " + ") + s)
        return "".join(out)

    def _print_HadamardProduct(self, expr):
        loose = (sp.MatAdd, sp.MatMul, sp.HadamardProduct)
        return " ∘ ".join(self._factor(a, loose) for a in expr.args)

    def _print_HadamardPower(self, expr):
        base = self.parenthesize(expr.base, sp.printing.precedence.PRECEDENCE["Pow"],
                                 strict=True)
        e = expr.exp
        return base + "∘" + (str(e).translate(_SUP) if e.is_Integer else f"({self._print(e)})")

    def _print_OneMatrix(self, expr):
        return "𝟙"

    def _print_ZeroMatrix(self, expr):
        return "0"


def text(expr) -> str:
    """One-line Unicode form of a display expression.

    Examples
    --------
    >>> from symbackprop.formulas import text
    >>> import sympy
    >>> b, d = sympy.symbols("b delta_c")
    >>> text(2 * b * d), text(sympy.Symbol("W1") - 3)
    ('2b·δ_c', 'W₁ − 3')
    """
    return TextPrinter().doprint(expr).replace("-", "−")


class TeXPrinter(LatexPrinter):
    """SymPy's LaTeX, with matrix sums in the order written and op names kept whole
    (``\\operatorname{softmax\\_cross\\_entropy}``)."""

    def _print_MatAdd(self, expr):
        out = []
        printed = sorted((self._print(t) for t in expr.args), key=lambda s: s.startswith("-"))
        for i, s in enumerate(printed):  # subtracted terms last: P − Y
            if s.startswith("-"):
                out.append(("-" if i == 0 else " - ") + s[1:].lstrip())
            else:
                out.append(("" if i == 0 else " + ") + s)
        return "".join(out)

    def _print_MatMul(self, expr):  # SymPy's re-checks shapes, which broadcasting fails
        c, mats = expr.as_coeff_mmul()
        parts = []
        for m in mats.args:
            s = self._print(m)
            parts.append(rf"\left({s}\right)" if isinstance(m, (sp.MatAdd, sp.HadamardProduct))
                         else s)
        body = " ".join(parts)
        if c == 1:
            return body
        if c == -1:
            return "-" + body
        cs = self._print(c)
        return f"{cs} {body}" if c.is_Atom else rf"\left({cs}\right) {body}"

    def _print_Function(self, expr, exp=None):
        name = expr.func.__name__
        if "_" not in name or not isinstance(expr.func, sp.core.function.UndefinedFunction):
            return super()._print_Function(expr, exp)
        args = ", ".join(self._print(a) for a in expr.args)
        op = name.replace("_", r"\_")
        return rf"\operatorname{{{op}}}\left({args}\right)" + (f"^{{{exp}}}" if exp else "")


def latex(expr) -> str:
    """LaTeX of a display expression."""
    return TeXPrinter().doprint(expr)


# -- numbers -----------------------------------------------------------------------------
def exact(v, where: str = "value"):
    """A number as an exact SymPy number where possible: ``1.01`` -> ``101/100``."""
    import numpy as np

    if isinstance(v, sp.Basic):
        return v
    if isinstance(v, (bool, np.bool_)):
        raise GradError(f"{where}: {v!r} is a bool; pass a number.")
    if isinstance(v, (int, np.integer)):
        return sp.Integer(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        return sp.Integer(int(v)) if v.is_integer() else sp.Rational(repr(v))
    try:
        return sp.Rational(str(v))
    except (TypeError, ValueError):
        raise GradError(f"{where}: {v!r} is not a number.") from None


def _decimal(r: sp.Rational) -> str | None:
    """``Rational(50401, 2000)`` -> ``'25.2004'`` when the decimal is finite and short."""
    q = int(r.q)
    k = 0
    while q % 10 == 0 or q % 2 == 0 or q % 5 == 0:
        if q % 10 == 0:
            q //= 10
        elif q % 2 == 0:
            q //= 2
        else:
            q //= 5
        k += 1
    if q != 1 or k > 12:
        return None
    scaled = abs(int(r.p)) * 10 ** k // int(r.q)
    digits = str(scaled).rjust(k + 1, "0")
    s = (digits[:-k] + "." + digits[-k:]).rstrip("0").rstrip(".")
    return ("-" if r < 0 else "") + s


def fmt(v, unicode: bool = True) -> str:
    """A value as shown in derivations: exact integers and short decimals, fractions,
    6 significant digits otherwise, or an array's shape and norm."""
    import numpy as np

    if v is None:
        s = "?"
    elif isinstance(v, np.ndarray) and v.ndim > 0:
        shape = "×".join(map(str, v.shape)) if v.ndim > 1 else f"length {v.shape[0]}"
        s = f"[{shape}, ‖·‖ = {np.linalg.norm(v):.4g}]"
    elif isinstance(v, sp.Basic) and v.is_Rational:
        s = str(v) if v.is_Integer else (_decimal(v) or str(v))
    elif isinstance(v, sp.Basic) and v.is_number:
        s = format(float(sp.N(v, 20)), ".6g")
    else:
        s = format(float(v), ".6g")
    return s.replace("-", "−") if unicode else s


def fmt_latex(v) -> str:
    if isinstance(v, sp.Basic) and v.is_Rational and not v.is_Integer and _decimal(v) is None:
        return sp.latex(v)
    s = fmt(v, unicode=False)
    if not s.startswith("["):
        return s
    shape, norm = s[1:-1].split(", ‖·‖ = ")
    shape = shape.replace("×", r" \times ").replace("length ", r"\text{length }")
    return rf"\left[{shape},\ \lVert\cdot\rVert = {norm}\right]"


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
        if d["op"] == "const":
            v = d["value"]
            if isinstance(v, (list, tuple)):
                return self.symbol(n)
            return sp.sympify(v) if isinstance(v, sp.Basic) else exact(v)
        if d["op"] in registry.LEAVES:
            return self.symbol(n)
        args = [self.expr(a) for a in self.j.args(n)]
        return apply_display(registry.get(d["op"]), args, d["attrs"], d["shape"])

    def expr(self, n: str):
        """A forward node as shown: its symbol if named, else its definition (or,
        where that is its argument's own form, as for a reshape, ``op(arg)``)."""
        if n not in self._fwd:
            d = self.G.nodes[n]
            named = not d.get("auto") and d["op"] != "const" or d["op"] in ("input", "param")
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
            if not self.auto(n) or self.G.nodes[n]["op"] in ("input", "param"):
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
        owner = self.G.nodes[self.adj.adjoint[m]].get("adjoint_of")
        return owner if owner is not None and not self.auto(owner) else m

    def backward(self, n: str, stop: dict, memo: dict):
        """A backward node as an expression of forward nodes and the δ in ``stop``."""
        if n in stop:
            return stop[n]
        if n in memo:
            return memo[n]
        d = self.G.nodes[n]
        if d.get("phase") != "backward":
            e = self.expr(n)
        elif d["op"] in registry.LEAVES:
            e = self.definition(n)
        else:
            args = [self.backward(a, stop, memo) for a in self.j.args(n)]
            e = apply_display(registry.get(d["op"]), args, d["attrs"], d["shape"])
        memo[n] = e
        return e

    def contribution(self, consumer: str, term: str):
        """One term of an adjoint: the VJP of ``consumer`` in terms of its δ."""
        stop = {self.adj.adjoint[consumer]: self.delta(self.delta_owner(consumer))}
        return self.backward(term, stop, {})


# -- Gradients -------------------------------------------------------------------------
class Gradients:
    """∂L/∂node for every node on the gradient path, as SymPy expressions.

    Made by :func:`grad`. ``grads[name]`` (or ``grads.formula(name)``) is the
    δ-form: the adjoint in terms of the adjoints δ of the node's consumers;
    ``grads.expanded(name)`` substitutes every δ, for small graphs.

    Attributes
    ----------
    graph : Graph
        The joint forward + backward graph.
    adjoints : Adjoints
        The outcome of :func:`~symbackprop.autodiff.differentiate`.
    of : str
        The scalar differentiated.
    wrt : list of str
        The nodes the gradient was asked for.
    nodes : list of str
        The nodes with a formula, in the order the backward sweep visits them.
    """

    def __init__(self, adj: Adjoints):
        self.adjoints = adj
        self.graph = adj.graph
        self.of = adj.of
        self.wrt = list(adj.wrt)
        self._d = _Display(adj)
        self.nodes = list(adj.order) + [w for w in adj.wrt if w not in adj.order]
        self._terms: dict[str, list] = {}
        self._expanded: dict[str, sp.Basic] = {}
        self._shown = {n: self._formula(n) for n in self.nodes}  # as written, for printing
        self._formulas = {n: canonical(e) for n, e in self._shown.items()}

    def _formula(self, n: str):
        if n == self.of:
            return sp.Integer(1)
        terms = [(c, i, self._d.contribution(c, t))
                 for c, i, t in self.adjoints.contributions.get(n, [])]
        self._terms[n] = terms
        if not terms:  # no path: the adjoint node is a zero
            return self._d.backward(self.adjoints.adjoint[n], {}, {})
        exprs = [e for _, _, e in terms]
        if len(exprs) == 1:
            return exprs[0]
        return build(sp.MatAdd, *exprs) if any(map(_is_mat, exprs)) else sp.Add(*exprs)

    def _check(self, name: str) -> str:
        if name not in self._formulas:
            close = difflib.get_close_matches(str(name), self.nodes, n=3)
            hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
            raise GradError(f"node {name!r} is not on the gradient path from "
                            f"{', '.join(self.wrt)} to {self.of!r}.{hint} "
                            f"Nodes with gradients: {', '.join(self.nodes)}.")
        return name

    def __getitem__(self, name: str):
        return self._formulas[self._check(name)]

    def __contains__(self, name) -> bool:
        return name in self._formulas

    def __iter__(self):
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def keys(self) -> list[str]:
        return list(self.nodes)

    def formula(self, name: str):
        """∂of/∂name in δ-form (the same as ``grads[name]``).

        Examples
        --------
        >>> grads = sb.grad(sb.parse("a = 2*x; b = a + 3; c = b**2"), wrt="x")
        >>> grads.formula("b"), grads.formula("x")
        (2*b*delta_c, 2*delta_a)
        """
        return self[name]

    def terms(self, name: str) -> list:
        """``(consumer, arg position, expression)`` for each term summed into δ_name."""
        self._check(name)
        return list(self._terms.get(name, []))

    def delta(self, name: str):
        """The symbol δ_name standing for ∂of/∂name in other formulas."""
        return self._d.delta(name)

    def symbol(self, name: str):
        """How node ``name`` appears in formulas: its symbol, or its expression if unnamed."""
        return canonical(self._d.expr(name))

    def label(self, name: str) -> str:
        """``W₁`` for a named node, ``w·x − y`` for an unnamed one."""
        return self._d.label(name)

    def expanded(self, name: str):
        """∂of/∂name with every δ substituted: in terms of forward nodes only.

        Raises
        ------
        GradError
            If the joint graph has more than ``MAX_EXPANDED_NODES`` nodes
            (the fully substituted formula grows too large to read).

        Examples
        --------
        >>> import sympy
        >>> grads = sb.grad(sb.parse("L = (w*x - y)**2"), wrt="w")
        >>> e = grads.expanded("w"); e
        x*(2*w*x - 2*y)
        >>> w, x, y = sympy.symbols("w x y")
        >>> sympy.expand(e - 2*x*(w*x - y))
        0
        """
        self._check(name)
        size = len(self.graph)
        if size > MAX_EXPANDED_NODES:
            raise GradError(f"graph for {self.of!r} has {size} nodes; expanded formulas are "
                            f"built only up to {MAX_EXPANDED_NODES} nodes. Use the δ-form "
                            f"grads[{name!r}] instead.")
        if not self._expanded:
            fwd = {}  # named forward nodes -> their definitions in inputs and parameters
            for n in self.adjoints.forward.topo_order():
                if not self._d.auto(n) and self.graph.role(n) == "op":
                    fwd[self._d.symbol(n)] = substitute(self._d.definition(n), fwd)
            subs = {self.delta(self.of): sp.Integer(1)}
            for n in self.nodes:  # backward order: every δ used is already expanded
                e = substitute(self._formulas[n], subs)
                subs[self.delta(n)] = e
                self._expanded[n] = realize(canonical(substitute(e, fwd)))
        return self._expanded[name]

    def _lhs(self, n: str) -> tuple[str, str]:
        lab, lat = self.label(n), self._d.label_latex(n)
        if not _simple(lab):
            lab, lat = f"({lab})", rf"\left({lat}\right)"
        of_t, of_l = self.label(self.of), self._d.label_latex(self.of)
        return f"∂{of_t}/∂{lab}", rf"\frac{{\partial {of_l}}}{{\partial {lat}}}"

    def line(self, name: str) -> str:
        """``∂L/∂W₁ = Xᵀ δ_z1``: one formula on one line."""
        return f"{self._lhs(self._check(name))[0]} = {text(self._shown[name])}"

    def text(self) -> str:
        """Every node's formula on one line each, in backward-sweep order."""
        of = self.label(self.of)
        lines = [f"Gradients of {of} (δ_n stands for ∂{of}/∂n):"]
        lines += ["  " + self.line(n) for n in self.nodes]
        return "\n".join(lines)

    def latex(self) -> str:
        """The formulas as a LaTeX ``aligned`` block."""
        rows = [rf"{self._lhs(n)[1]} &= {latex(self._shown[n])}" for n in self.nodes]
        return "\\begin{aligned}\n" + " \\\\\n".join(rows) + "\n\\end{aligned}"

    def __str__(self) -> str:
        return self.text()

    def __repr__(self) -> str:
        return f"<Gradients of {self.of!r} for {len(self.nodes)} nodes>"

    def _repr_latex_(self) -> str:
        return "$$" + self.latex() + "$$"


def _simple(label: str) -> bool:
    return re.fullmatch(r"[\w₀-₉]+", label) is not None


def grad(g: Graph, of: str | None = None, wrt=None) -> Gradients:
    """Gradient formulas: ∂of/∂node for every node on the gradient path.

    Parameters
    ----------
    g : Graph
        The network.
    of : str, optional
        A scalar node; by default the last scalar output.
    wrt : str or list of str, optional
        Nodes to differentiate with respect to; by default the parameters
        (or, with none, the float inputs).

    Returns
    -------
    Gradients
        ``grads[name]`` is the δ-form SymPy expression of ∂of/∂name,
        ``grads.expanded(name)`` the fully substituted one, ``print(grads)``
        lists them all.

    Raises
    ------
    GradError
        If ``of`` is not a scalar or a name is not in the graph.

    See Also
    --------
    derive : the same backward sweep, step by step, with numbers.
    symbackprop.differentiate : the joint graph the formulas are read from.

    Notes
    -----
    A δ-form formula refers to the adjoints of the node's consumers: for a
    node used by an unnamed node, the δ shown is that of the named node the
    adjoint was built for (the MLP's ``∂L/∂W₁ = Xᵀ δ_z1``, since
    ``δ_(X W₁) = δ_z1``).

    Examples
    --------
    >>> grads = sb.grad(sb.parse("a = 2*x; b = a + 3; c = b**2"), wrt="x")
    >>> print(grads)
    Gradients of c (δ_n stands for ∂c/∂n):
      ∂c/∂c = 1
      ∂c/∂b = 2b·δ_c
      ∂c/∂a = δ_b
      ∂c/∂x = 2δ_a
    >>> grads.expanded("x")
    8*x + 12
    >>> grads = sb.grad(sb.models.mlp([784, 256, 10]))
    >>> grads["W1"]
    X.T*delta_z1
    >>> for name in ("W1", "z1", "b1"):
    ...     print(grads.line(name))
    ∂L/∂W₁ = Xᵀ δ_z1
    ∂L/∂z₁ = δ_h1 ∘ 1[h₁ > 0]
    ∂L/∂b₁ = 𝟙ᵀ δ_z1
    """
    return Gradients(differentiate(g, of, wrt))


# -- derivations -----------------------------------------------------------------------
@dataclass
class Term:
    """One use of a node by ``consumer`` (argument position ``arg``).

    ``local`` is ∂consumer/∂node (e.g. ``2*b``) for scalar elementwise
    consumers; for tensor ops (``vjp=True``) it is the whole vector-Jacobian
    product in terms of the consumer's δ (e.g. ``Xᵀ δ_z1``).
    """

    consumer: str
    arg: int
    local: sp.Basic
    local_value: object
    upstream_value: object
    product_value: object
    vjp: bool = False


@dataclass
class Step:
    """Computing the adjoint of one node, in backward-sweep order."""

    node: str
    label: str
    terms: list
    formula: sp.Basic
    value: object
    grad_value: object


@dataclass
class FiniteDifference:
    """A slope of ``of`` along ``wrt`` from the forward pass alone.

    ``f_plus`` is ``of`` at ``wrt + h``; ``f_minus`` at ``wrt`` (forward
    difference) or ``wrt - h`` (central); ``slope`` their quotient.
    """

    wrt: str
    h: float
    central: bool
    f_plus: object
    f_minus: object
    slope: object


@dataclass
class Derivation:
    """The chain rule worked node by node; made by :func:`derive`.

    Attributes
    ----------
    graph : Graph
        The network differentiated.
    of : str
        The scalar differentiated.
    wrt : list of str
    at : dict
        The point: input and parameter values (exact SymPy numbers for
        scalar graphs), empty when none was given.
    values : dict
        Node -> forward value at the point.
    grads : dict
        Node -> d(of)/d(node) at the point.
    steps : list of Step
        One per node on the gradient path, in backward-sweep order.
    gradients : Gradients
        The formulas the steps show.
    """

    graph: Graph
    of: str
    wrt: list
    at: dict
    values: dict
    grads: dict
    steps: list
    gradients: Gradients = field(repr=False, default=None)
    scalar: bool = field(repr=False, default=True)

    # -- the numbers ------------------------------------------------------------------
    def finite_difference(self, h: float = 0.01, wrt: str | None = None,
                          central: bool = False) -> FiniteDifference:
        """The slope of ``of`` along ``wrt`` by finite differences of the forward pass.

        Independent of the backward pass: only the forward graph is evaluated,
        exactly, at ``wrt + h`` and at ``wrt`` (or ``wrt - h`` when ``central``).

        Examples
        --------
        >>> d = sb.derive(sb.parse("a = 2*x; b = a + 3; c = b**2"), wrt="x", at={"x": 1})
        >>> fd = d.finite_difference(0.01)
        >>> fd.f_plus, fd.slope
        (63001/2500, 501/25)
        >>> float(fd.slope), round(float(d.finite_difference(1e-6, central=True).slope), 6)
        (20.04, 20.0)
        """
        if not self.scalar or not self.at:
            raise GradError("finite differences here need a scalar graph and a point; "
                            "pass at={...} to derive(), or use sb.check_grad() for tensors.")
        wrt = self.wrt[0] if wrt is None else wrt
        if wrt not in self.at:
            raise GradError(f"wrt {wrt!r} has no value in the point; pass at={{{wrt!r}: ...}}.")
        step = exact(h, "h")

        def f(shift):
            at = dict(self.at)
            at[wrt] = at[wrt] + shift
            return point_values(self.graph, at, True)[self.of]

        plus = f(step)
        minus = f(-step) if central else self.values[self.of]
        slope = (plus - minus) / (2 * step if central else step)
        return FiniteDifference(wrt, h, central, plus, minus, slope)

    # -- text ---------------------------------------------------------------------------
    def _lines(self, tex: bool) -> list[tuple[str, str]]:
        return _derivation_lines(self, tex)

    def text(self) -> str:
        """The derivation in Unicode text, one line per forward node and backward step."""
        return "\n".join(a if not b else f"  {a} = {b}" for a, b in self._lines(False))

    def markdown(self) -> str:
        """The derivation as Markdown: a table per pass (Unicode math)."""
        return _markdown(self)

    def latex(self) -> str:
        """The derivation as a LaTeX ``align*`` environment."""
        return "\\begin{align*}\n" + self._latex_body() + "\n\\end{align*}"

    def _latex_body(self) -> str:
        rows = []
        for a, b in self._lines(True):
            if not b:
                rows.append(f"&{a}")
            else:
                rows.append(f"{a} &{b}" if b.startswith("\\approx") else f"{a} &= {b}")
        return " \\\\\n".join(rows)

    def __str__(self) -> str:
        return self.text()

    def _repr_latex_(self) -> str:
        return "$$\\begin{aligned}\n" + self._latex_body() + "\n\\end{aligned}$$"

    def _repr_markdown_(self) -> str:
        return self.markdown()


def _leaves_needed(g: Graph, of: str) -> list[str]:
    return [n for n in g.topo_order() if n in g.ancestors([of])
            and g.nx.nodes[n]["op"] in ("input", "param")]


def _check_point(g: Graph, at: dict, of: str) -> None:
    for name in at:
        if name not in g:
            close = difflib.get_close_matches(str(name), list(g.nx), n=3)
            hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
            raise GradError(f"at= names {name!r}, which is not in the graph.{hint} "
                            f"Give values for: {', '.join(_leaves_needed(g, of))}.")
    missing = [n for n in _leaves_needed(g, of) if n not in at]
    if missing:
        raise GradError(f"at= gives no value for {', '.join(map(repr, missing))}, which "
                        f"{of!r} depends on. Add one, e.g. {missing[0]}=1 (--at) or "
                        f"at={{{missing[0]!r}: 1, ...}}.")


class _NotExact(Exception):
    """An op on the way has no SymPy form to evaluate (use NumPy instead)."""


def point_values(g: Graph, at: dict, scalar: bool) -> dict:
    """Every node's value at the point: exact SymPy numbers for scalar graphs where
    every op has a SymPy form, else NumPy arrays (0-d ones made SymPy floats)."""
    if scalar:
        try:
            return _exact_values(g, at)
        except _NotExact:
            pass
    vals = _numeric_values(g, at)
    if scalar:
        vals = {k: None if v is None else sp.Float(float(v), 17) for k, v in vals.items()}
    return vals


def _exact_values(g: Graph, at: dict) -> dict:
    """SymPy values: exact for rationals, others kept to 30 digits so that finite
    differences stay accurate."""
    vals = {}
    G = g.nx
    for n in g.topo_order():
        d = G.nodes[n]
        if d["op"] in ("input", "param"):
            v = at.get(n)
        elif d["op"] == "const":
            v = exact(d["value"], f"constant {n!r}")
        else:
            opdef = registry.get(d["op"])
            args = [vals[a] for a in g.args(n)]
            if any(a is None for a in args):
                v = None
            elif opdef.expr is not None:
                syms, e = opdef.expr(d["attrs"])
                v = e.xreplace(dict(zip(syms, args)))
            elif opdef.display is not None:
                v = opdef.display(args, d["attrs"])
            else:
                raise _NotExact(n)
            if v is not None:
                v = sp.sympify(v).doit()
                if not v.is_number:
                    raise _NotExact(n)
                v = v if v.is_Rational else sp.N(v, 30)
        vals[n] = v
    return vals


def _numeric_values(j: Graph, at: dict) -> dict:
    """Values of every node of the joint graph with NumPy (tensor derivations),
    evaluating each op's own NumPy form."""
    import numpy as np

    G = j.nx
    vals, sizes = {}, {}
    for n in j.topo_order():
        d = G.nodes[n]
        if d["op"] in ("input", "param"):
            if n not in at:
                vals[n] = None
                continue
            v = np.asarray(at[n], dtype=int if d["dtype"] == "int" else float)
            for dim, k in zip(d["shape"], v.shape):
                if isinstance(dim, str):
                    sizes.setdefault(dim, k)
        elif d["op"] == "const":
            v = d["value"]
            if isinstance(v, sp.Basic):
                v = v.xreplace({dim_symbol(k): s for k, s in sizes.items()})
            v = np.asarray(v if not isinstance(v, sp.Basic) else float(v), dtype=float)
        else:
            args = [vals[a] for a in j.args(n)]
            if any(a is None for a in args):
                vals[n] = None
                continue
            v = _numeric_op(registry.get(d["op"]), args, d["attrs"], sizes)
        vals[n] = v
    return vals


def _numeric_op(opdef, args, attrs, sizes):
    import numpy as np

    if opdef.numpy is not None:
        ns = {"np": np, "DTYPE": np.float64, **sizes}
        for src in opdef.helpers.values():
            exec(src, ns)  # noqa: S102 -- the op's own helper source, e.g. _softmax
        codes = [f"_a{i}" for i in range(len(args))]
        ns.update(zip(codes, args))
        return np.asarray(eval(opdef.numpy(codes, attrs), ns))
    syms, e = opdef.code_expr(attrs)
    return np.asarray(sp.lambdify(syms, e, "numpy")(*args), dtype=float)


def derive(g: Graph, of: str | None = None, wrt=None, at: dict | None = None) -> Derivation:
    """The chain rule, step by step, as the backward sweep applies it.

    Parameters
    ----------
    g : Graph
        The network.
    of : str, optional
        A scalar node; by default the last scalar output.
    wrt : str or list of str, optional
        By default the parameters (or, with none, the float inputs).
    at : dict, optional
        Values of the inputs and parameters. For scalar graphs they are made
        exact (``1.01`` is 101/100), so the numbers come out as on paper; for
        tensor graphs they are arrays, and steps show shapes and norms.

    Returns
    -------
    Derivation
        ``.steps`` in backward order, ``.values`` and ``.grads`` at the point,
        ``.text()``, ``.latex()``, ``.markdown()``, and a finite-difference
        check in all three.

    Raises
    ------
    GradError
        For a missing or unknown name, a value missing from ``at``, or a
        non-scalar ``of``.

    See Also
    --------
    grad : the formulas alone.

    Examples
    --------
    >>> d = sb.derive(sb.parse("a = 2*x; b = a + 3; c = b**2"), of="c", wrt="x", at={"x": 1})
    >>> d.values["c"], d.grads["x"]
    (25, 20)
    >>> print(d.text())
    Forward pass at x = 1:
      a = 2x = 2
      b = a + 3 = 5
      c = b² = 25
    Backward pass (chain rule, from c back to x):
      dc/dc = 1
      dc/db = 2b = 10
      dc/da = dc/db · db/da = 10 · 1 = 10
      dc/dx = dc/da · da/dx = 10 · 2 = 20
    So dc/dx = 10 · 1 · 2 = 20.
    Finite-difference check (forward pass only):
      forward, h = 0.01: x = 1.01 gives c = 25.2004; (25.2004 − 25)/0.01 = 20.04
      central, h = 1e-06: (c(x + h) − c(x − h))/(2h) ≈ 20.000000
    """
    of, wrt = check_of_wrt(g, of, wrt)
    grads = grad(g, of, wrt)
    adj, d = grads.adjoints, grads._d
    G = adj.graph.nx
    scalar = all(G.nodes[n]["shape"] == () for n in g.ancestors([of]))
    at = dict(at or {})
    values, jvals, gvals = {}, {}, {}
    if at:
        _check_point(g, at, of)
        if scalar:
            at = {k: exact(v, f"at[{k!r}]") for k, v in at.items()}
        jvals = point_values(adj.graph, at, scalar)
        values = {n: jvals[n] for n in g.ancestors([of])}
    steps = []
    for n in grads.nodes:
        terms = []
        for (c, i, t), (_, _, contrib) in zip(adj.contributions.get(n, []), grads.terms(n)):
            cop = registry.get(G.nodes[c]["op"])
            up = gvals.get(c)
            if scalar and cop.local_grads is not None:
                local, lval = _local(d, cop, c, i, values)
                prod = None if lval is None or up is None else up * lval
                terms.append(Term(c, i, local, lval, up, prod))
            else:
                terms.append(Term(c, i, contrib, None, up, jvals.get(t), vjp=True))
        if not values:
            gv = None
        elif n == of:
            gv = sp.Integer(1) if scalar else jvals[adj.adjoint[n]]
        elif scalar and terms:  # the chain rule as shown: the sum of the products
            gv = sp.Add(*[t.product_value for t in terms])
        else:
            gv = jvals[adj.adjoint[n]]
        gvals[n] = gv
        steps.append(Step(n, d.label(n), terms, grads[n], values.get(n), gv))
    return Derivation(graph=g, of=of, wrt=wrt, at=at, values=values,
                      grads=gvals if values else {}, steps=steps, gradients=grads,
                      scalar=scalar)


def _local(d: _Display, cop, c: str, i: int, values: dict):
    """∂c/∂(argument i) of a scalar elementwise consumer: shown and at the point."""
    G = d.G
    attrs = G.nodes[c]["attrs"]
    args = d.j.args(c)
    raw = cop.local_grads(attrs)[i]
    shows = {**{x: d.expr(a) for x, a in zip(X, args)}, Y: d.expr(c)}
    numbers = {k: v for k, v in shows.items() if isinstance(v, sp.Number)}
    shown = _indicators(put(raw.xreplace(numbers), shows))
    if not values:
        return shown, None
    v = raw.xreplace({**{x: values[a] for x, a in zip(X, args)}, Y: values[c]}).doit()
    return shown, (v if v.is_Rational else sp.N(v, 30))


# -- derivation text ---------------------------------------------------------------------
def _dd(d: _Display, top: str, n: str, tex: bool) -> str:
    """``dc/db`` or ``\\frac{dc}{db}``; unnamed nodes in parentheses."""
    def lab(k):
        if tex:
            s = d.label_latex(k)
            return s if _simple(d.label(k)) else rf"\left({s}\right)"
        s = d.label(k)
        return s if _simple(s) else f"({s})"
    return rf"\frac{{d{lab(top)}}}{{d{lab(n)}}}" if tex else f"d{lab(top)}/d{lab(n)}"


def _num(v, tex: bool, factor: bool = False) -> str:
    s = fmt_latex(v) if tex else fmt(v)
    if factor and s.startswith(("−", "-")):
        s = f"({s})"
    return s


def _expr(e, tex: bool) -> str:
    return latex(e) if tex else text(e)


def _dot(tex: bool) -> str:
    return r" \cdot " if tex else " · "


def _step_stages(der: Derivation, st: Step, tex: bool) -> list[str]:
    d, of = der.gradients._d, der.of
    dot = _dot(tex)
    if st.node == of:
        return ["1"]
    if not st.terms:
        return [_expr(st.formula, tex)]
    have = bool(der.values)
    if any(t.vjp for t in st.terms):
        stages = [" + ".join(_expr(t.local, tex) for t in st.terms)]
        if have:
            stages.append(_num(st.grad_value, tex))
        return stages
    seed = [t.consumer == of for t in st.terms]
    stages = []
    if not any(seed):
        stages.append(" + ".join(_dd(d, of, t.consumer, tex) + dot + _dd(d, t.consumer, st.node, tex)
                                 for t in st.terms))
    sym, vals = [], []
    for t, s in zip(st.terms, seed):
        if t.local.is_Number:
            loc = _num(t.local, tex, factor=not s)
        else:
            loc = _expr(t.local, tex)
            if not s and (t.local.is_Add or loc[:1] in "-−"):
                loc = rf"\left({loc}\right)" if tex else f"({loc})"
        if s:
            sym.append(loc)
            vals.append(_num(t.local_value, tex) if have else loc)
        else:
            up = _num(t.upstream_value, tex) if have else _dd(d, of, t.consumer, tex)
            sym.append(up + dot + loc)
            vals.append(up + dot + _num(t.local_value, tex, factor=True) if have else up + dot + loc)
    stages.append(" + ".join(sym))
    stages.append(" + ".join(vals))
    if have:
        stages.append(_num(st.grad_value, tex))
    out = []
    for s in stages:
        if not out or out[-1] != s:
            out.append(s)
    return out


def _chain(der: Derivation, w: str) -> list | None:
    """Local values along the path from ``of`` to ``w`` when it is a single chain."""
    by = {s.node: s for s in der.steps}
    factors, n = [], w
    while n != der.of:
        st = by.get(n)
        if st is None or len(st.terms) != 1 or st.terms[0].vjp:
            return None
        factors.append(st.terms[0].local_value)
        n = st.terms[0].consumer
    return factors[::-1]


def _derivation_lines(der: Derivation, tex: bool) -> list[tuple[str, str]]:
    """``(left, right)`` pairs; a pair with an empty right side is a heading
    (already LaTeX when ``tex``)."""
    d, g, of = der.gradients._d, der.graph, der.of
    dot = _dot(tex)

    def heading(words: str, math: str = "") -> tuple[str, str]:
        if tex:
            return (rf"\text{{{words} }} {math}" if math else rf"\text{{{words}}}", "")
        return (words + (f" {math}" if math else "") + ":", "")

    lines: list[tuple[str, str]] = []
    point = ", ".join(f"{_expr(d.expr(k), tex)} = {_num(v, tex)}" for k, v in der.at.items())
    lines.append(heading("Forward pass" + (" at" if point and der.scalar else ""),
                         point if der.scalar else ""))
    ancestors = g.ancestors([of])
    for n in g.topo_order():
        if n not in ancestors or g.nx.nodes[n]["op"] in registry.LEAVES:
            continue
        rhs = [_expr(d.definition(n), tex)] if not d.auto(n) else []
        if der.values:
            rhs.append(_num(der.values[n], tex))
        lhs = _expr(d.expr(n), tex)
        rhs = [r for r in rhs if r != lhs]
        if rhs:
            lines.append((lhs, " = ".join(rhs)))
    who = ", ".join(_expr(d.expr(w), tex) for w in der.wrt)
    top = _expr(d.expr(of), tex)
    lines.append(heading("Backward pass (chain rule, from", f"{top} \\text{{ back to }} {who}"
                         r"\text{)}") if tex else
                 heading(f"Backward pass (chain rule, from {top} back to {who})"))
    for st in der.steps:
        lines.append((_dd(d, of, st.node, tex), " = ".join(_step_stages(der, st, tex))))
        if len(st.terms) > 1 and not tex:
            note = f"  ({st.label} is used {len(st.terms)} times: the contributions add)"
            lines.append((note, ""))
    if der.values:
        for w in der.wrt:
            chain = _chain(der, w)
            rhs = ""
            if chain and len(chain) > 1:
                rhs = dot.join(_num(v, tex, factor=i > 0) for i, v in enumerate(chain)) + " = "
            rhs += _num(der.grads[w], tex)
            if tex:
                lines.append((r"\text{So } " + _dd(d, of, w, tex), rhs))
            else:
                lines.append((f"So {_dd(d, of, w, tex)} = {rhs}.", ""))
        if der.scalar:
            lines += _fd_lines(der, tex)
    return lines


def _fd_lines(der: Derivation, tex: bool) -> list[tuple[str, str]]:
    d, of = der.gradients._d, der.of
    title = "Finite-difference check (forward pass only)"
    lines = [(rf"\text{{{title}}}" if tex else title + ":", "")]
    for w in der.wrt:
        if w not in der.at:
            continue
        fwd = der.finite_difference(0.01, w)
        cen = der.finite_difference(1e-6, w, central=True)
        W, F = _expr(d.expr(w), tex), _expr(d.expr(of), tex)
        x1 = _num(der.at[w] + exact(0.01), tex)
        fp, f0 = _num(fwd.f_plus, tex), _num(fwd.f_minus, tex, factor=True)
        slope = _num(fwd.slope, tex)
        c = float(sp.N(cen.slope, 30))
        cval = (f"{c:.6f}" if abs(c) >= 1 else f"{c:.6g}").replace("-", "−" if not tex else "-")
        if tex:
            rhs = rf"\frac{{{fp} - {f0}}}{{0.01}} = {slope} \quad (h = 0.01,\ {W} + h = {x1})"
            lines.append((rf"\frac{{{F}({W} + h) - {F}({W})}}{{h}}", rhs))
            lines.append((rf"\frac{{{F}({W} + h) - {F}({W} - h)}}{{2h}}",
                          rf"\approx {cval} \quad (h = 10^{{-6}})"))
        else:
            fwd_line = f"  forward, h = 0.01: {W} = {x1} gives {F} = {fp}; ({fp} − {f0})/0.01"
            lines.append((f"{fwd_line} = {slope}", ""))
            lines.append((f"  central, h = 1e-06: ({F}({W} + h) − {F}({W} − h))/(2h) ≈ {cval}",
                          ""))
    return lines


def _markdown(der: Derivation) -> str:
    d, g, of = der.gradients._d, der.graph, der.of
    out = []
    point = ", ".join(f"{text(d.expr(k))} = {fmt(v)}" for k, v in der.at.items()
                      if der.scalar)
    out.append("**Forward pass**" + (f" at {point}" if point else "") + "\n")
    out.append("| node | expression | value |\n|---|---|---|")
    for n in g.topo_order():
        if g.nx.nodes[n]["op"] in registry.LEAVES or n not in g.ancestors([of]):
            continue
        expr = text(d.definition(n)) if not d.auto(n) else ""
        val = fmt(der.values[n]) if der.values else ""
        out.append(f"| {_md(d.label(n))} | {_md(expr)} | {_md(val)} |")
    who = ", ".join(d.label(w) for w in der.wrt)
    out.append(f"\n**Backward pass** (chain rule, from {_md(d.label(of))} back to {_md(who)})\n")
    out.append("| gradient | chain rule | value |\n|---|---|---|")
    for st in der.steps:
        stages = _step_stages(der, st, False)
        val = stages[-1] if der.values else ""
        work = " = ".join(stages[:-1] if der.values else stages)
        if len(st.terms) > 1:
            work += f" ({len(st.terms)} uses: the contributions add)"
        out.append(f"| {_md(_dd(d, of, st.node, False))} | {_md(work)} | {_md(val)} |")
    if der.values:
        out.append("")
        for w in der.wrt:
            chain = _chain(der, w)
            rhs = " · ".join(fmt(v) if i == 0 or not fmt(v).startswith("−") else f"({fmt(v)})"
                             for i, v in enumerate(chain)) + " = " if chain and len(chain) > 1 \
                else ""
            out.append(f"So {_md(_dd(d, of, w, False))} = {rhs}{fmt(der.grads[w])}.  ")
        if der.scalar:
            out.append("\n**Finite-difference check** (forward pass only):\n")
            for a, _ in _fd_lines(der, False)[1:]:
                out.append(f"- {_md(a.strip())}")
    return "\n".join(out) + "\n"


def _md(s: str) -> str:
    return s.replace("|", "\\|").replace("*", "\\*")
