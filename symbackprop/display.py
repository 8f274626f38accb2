"""Display expressions of graph nodes, and their Unicode and LaTeX printers.

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
Numbers are shown exactly where they can be (:func:`exact`, :func:`fmt`).
"""

from __future__ import annotations

import re

import sympy as sp
from sympy.core.function import AppliedUndef
from sympy.printing.latex import LatexPrinter
from sympy.printing.pretty.stringpict import prettyForm
from sympy.printing.str import StrPrinter

from .autodiff import Adjoints
from .errors import GradError
from .graph import dim_symbol
from .ops import registry
from .ops.elementwise import X


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

    def _as_ordered_terms(self, expr, order=None):
        """SymPy's order, but a positive term first where there is one: ``P − Y``,
        not ``−Y + P``, as textbooks write it."""
        terms = super()._as_ordered_terms(expr, order)
        return sorted(terms, key=lambda t: t.could_extract_minus_sign())

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

    # values at a domain's edge, as special() names them
    def _print_Infinity(self, expr):
        return "∞"

    def _print_NegativeInfinity(self, expr):
        return "-∞"

    def _print_ComplexInfinity(self, expr):
        return "±∞"

    def _print_NaN(self, expr):
        return "undefined"

    def _print_ZeroMatrix(self, expr):
        return "0"


def text(expr) -> str:
    """One-line Unicode form of a display expression.

    Examples
    --------
    >>> from symbackprop.display import text
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

    def _print_ComplexInfinity(self, expr):
        return r"\pm\infty"

    def _print_NaN(self, expr):
        return r"\text{undefined}"

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


def _simple(label: str) -> bool:
    return re.fullmatch(r"[\w₀-₉]+", label) is not None


# -- numbers -----------------------------------------------------------------------------
INFINITE, MINUS_INFINITE, NO_SIGN, UNDEFINED = "∞", "−∞", "±∞", "undefined"
_ASCII = {INFINITE: "inf", MINUS_INFINITE: "-inf", NO_SIGN: "+-inf", UNDEFINED: "undefined"}
_TEX = {INFINITE: r"\infty", MINUS_INFINITE: r"-\infty", NO_SIGN: r"\pm\infty",
        UNDEFINED: r"\text{undefined}"}


def special(v) -> str | None:
    """What a value that is not a finite real number is shown as, or ``None`` for a
    finite real number (an array: ``None`` when every entry is finite).

    ``"∞"`` and ``"−∞"``; ``"±∞"`` for an infinity without a sign (SymPy's ``zoo``,
    the value of 1/0, whose limits from the two sides differ); ``"undefined"`` for
    NaN, a complex number (√−1 is not real) or a bounded range with no limit.

    Examples
    --------
    >>> import sympy
    >>> from symbackprop.display import special
    >>> special(sympy.oo), special(sympy.zoo), special(sympy.sqrt(-1)), special(2.5)
    ('∞', '±∞', 'undefined', None)
    >>> special(float("-inf")), special(np.array([1.0, np.nan]))
    ('−∞', 'undefined')
    """
    import numpy as np

    if isinstance(v, sp.Basic):
        if isinstance(v, sp.AccumBounds) or v is sp.nan:
            return UNDEFINED
        if not v.is_number:
            return None
        if v is sp.zoo:
            return NO_SIGN
        if v.is_extended_real is None:  # SymPy cannot tell without evaluating
            v = sp.N(v, 20)
            if v is sp.nan or v.is_extended_real is None:
                return UNDEFINED
        if v.is_extended_real is False:
            return UNDEFINED
        if v.is_finite is False:
            return INFINITE if v.is_extended_positive else MINUS_INFINITE
        return None
    if isinstance(v, complex):
        if v.imag != 0:
            return UNDEFINED
        v = v.real
    try:
        a = np.asarray(v, dtype=float)
    except (TypeError, ValueError):
        return None
    finite = np.isfinite(a)
    if finite.all():
        return None
    if np.isnan(a).any():
        return UNDEFINED
    infs = a[~finite]
    return INFINITE if (infs > 0).all() else MINUS_INFINITE if (infs < 0).all() else NO_SIGN


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
        if not np.isfinite(v):
            raise GradError(f"{where}: {v!r} is not a finite number; give a finite value "
                            "(a derivation shows where values become infinite).")
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
        big = np.max(np.abs(v)) if v.size else 0.0
        with np.errstate(all="ignore"):  # scaled, so finite entries never overflow the norm
            norm = big * np.linalg.norm(v / big) if np.isfinite(big) and big > 0 \
                else np.linalg.norm(v)
        s = f"[{shape}, ‖·‖ = {special(norm) or format(norm, '.4g')}]"
    elif special(v) is not None:  # ∞, −∞, ±∞ or undefined, never a traceback
        s = special(v)
        return s if unicode else _ASCII[s]
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
    if special(v) is not None and not (hasattr(v, "ndim") and v.ndim > 0):
        return _TEX[special(v)]
    s = fmt(v, unicode=False)
    if not s.startswith("["):
        return s
    shape, norm = s[1:-1].split(", ‖·‖ = ")
    norm = _TEX.get(norm.replace("-", "−"), norm)
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
