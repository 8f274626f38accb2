"""Printers: how a formula is written, in Unicode and LaTeX.

:func:`text` and :func:`latex` write display expressions (:mod:`.expressions`: names
pretty-printed, ``W₁``, ``δ_z1``, matrix algebra ``Xᵀ δ_z1``, masks ``1[h₁ > 0]``), as
formulas and derivations show them. :func:`formula` writes the compact one-line
formulas of diagrams, in the graph's own node names (``2x``, ``b²``, ``w·x − y``,
``[z > 0]``). Every number inside a formula is written by :mod:`.numbers`.
"""

from __future__ import annotations

import re

import sympy as sp
from sympy.printing.latex import LatexPrinter
from sympy.printing.precedence import PRECEDENCE, precedence
from sympy.printing.str import StrPrinter

from .numbers import FRACTION_DIGITS, fmt, fmt_latex

MINUS = "\u2212"

_SUB = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")
_SUP = str.maketrans("0123456789-", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻")


def as_written(e):
    """``e`` with each rational that came from a float (a denominator longer than
    :data:`~.numbers.FRACTION_DIGITS` digits) made a float, so that formulas write it as
    numbers are written: ``0.3x``, not ``7500000000000001x/25000000000000000``."""
    if not isinstance(e, sp.Basic):
        return e
    long = {r: sp.Float(r, 17) for r in e.atoms(sp.Rational) if len(str(r.q)) > FRACTION_DIGITS}
    if not long:
        return e
    with sp.evaluate(False):  # keep the form as written (a + a stays a + a)
        return e.xreplace(long)


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
        return fmt(expr, unicode=False)

    def _print_floor(self, expr):
        """A size's floor division, as in the convolution's output size: ``⌊(H + 1)/2⌋``."""
        num, den = sp.fraction(sp.together(expr.args[0]))
        top = self._print(num) if num.is_Atom or isinstance(num, sp.floor) \
            else f"({self._print(num)})"
        return f"⌊{top}/{self._print(den)}⌋"

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
    return TextPrinter().doprint(as_written(expr)).replace("-", "−")


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

    def _print_floor(self, expr, exp=None):
        """A size's floor division: ``\\left\\lfloor \\frac{H + 1}{2} \\right\\rfloor``."""
        num, den = sp.fraction(sp.together(expr.args[0]))
        body = rf"\left\lfloor \frac{{{self._print(num)}}}{{{self._print(den)}}} \right\rfloor"
        return body if exp is None else rf"{body}^{{{exp}}}"

    def _print_ComplexInfinity(self, expr):
        return r"\pm\infty"

    def _print_Float(self, expr):
        return fmt_latex(expr)

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
    return TeXPrinter().doprint(as_written(expr))


def _simple(label: str) -> bool:
    return re.fullmatch(r"[\w₀-₉]+", label) is not None




# -- compact formulas in node names (diagrams) ----------------------------------------------
_ATOM = PRECEDENCE["Atom"]


class FormulaPrinter(StrPrinter):
    """Compact one-line Unicode formulas: ``2x``, ``b²``, ``w·x − y``, ``[z > 0]``.

    ``names`` maps a symbol's name to ``(text, precedence)``, so a formula in the
    op symbols ``x0, x1`` prints with argument names, and an unnamed node can be
    written as its own formula, parenthesized where needed.
    """

    def __init__(self, names: dict | None = None):
        super().__init__()
        self.names = names or {}

    def _prec(self, e) -> int:
        if isinstance(e, sp.Symbol) and e.name in self.names:
            return self.names[e.name][1]
        if isinstance(e, sp.Number) and (e < 0 or not e.is_Integer and e.is_Rational):
            return PRECEDENCE["Mul"] if e > 0 else PRECEDENCE["Add"]
        return precedence(e)

    def parenthesize(self, item, level, strict=False):
        p = self._prec(item)
        if p < level or (not strict and p <= level):
            return f"({self._print(item)})"
        return self._print(item)

    def _print_Symbol(self, e):
        return self.names.get(e.name, (e.name, _ATOM))[0]

    def _print_Integer(self, e):
        return str(int(e)).replace("-", MINUS)

    _print_NegativeOne = _print_One = _print_Zero = _print_Integer

    def _print_Rational(self, e):
        return f"{self._print(sp.Integer(e.p))}/{e.q}"

    _print_Half = _print_Rational

    def _print_Float(self, e):
        return fmt(e)

    def _print_Exp1(self, e):
        return "e"

    def _print_Pi(self, e):
        return "π"

    def _print_Add(self, e, order=None):
        terms = self._as_ordered_terms(e, order=order)
        pos = [t for t in terms if not t.could_extract_minus_sign()]
        if pos and terms[0].could_extract_minus_sign():  # y − x, not −x + y
            terms = [pos[0]] + [t for t in terms if t is not pos[0]]
        out = []
        for i, t in enumerate(terms):
            if t.could_extract_minus_sign():
                s = self.parenthesize(-t, PRECEDENCE["Add"])
                out.append((f" {MINUS} " if i else MINUS) + s)
            else:
                out.append((" + " if i else "") + self.parenthesize(t, PRECEDENCE["Add"], True))
        return "".join(out)

    def _print_Mul(self, e):
        if e.could_extract_minus_sign():
            return MINUS + self.parenthesize(-e, PRECEDENCE["Mul"], strict=True)
        num, den = [], []
        for f in e.as_ordered_factors():
            if f.is_Rational and not f.is_Integer:
                num += [sp.Integer(f.p)] if f.p != 1 else []
                den.append(sp.Integer(f.q))
            elif f.is_Pow and f.exp.is_Rational and f.exp.is_negative:
                den.append(f.base ** -f.exp)
            else:
                num.append(f)
        texts = [self.parenthesize(f, PRECEDENCE["Mul"], strict=True) for f in num]
        top = texts[0] if texts else "1"
        for f, t in zip(num[1:], texts[1:]):
            juxtapose = top.replace(MINUS, "").isdigit() and re.fullmatch(
                r"[^\W\d_][⁰¹²³⁴⁵⁶⁷⁸⁹⁻]*", t)
            top += t if juxtapose else "·" + t
        if not den:
            return top
        bottom = self._print(sp.Mul(*den))
        if len(den) > 1 or self._prec(den[0]) < PRECEDENCE["Pow"]:
            bottom = f"({bottom})"
        if len(num) == 1 and self._prec(num[0]) <= PRECEDENCE["Add"]:
            top = f"({self._print(num[0])})"
        return f"{top}/{bottom}"

    def _print_Pow(self, e):
        b, x = e.as_base_exp()
        if x == sp.Rational(1, 2):
            return "√" + self.parenthesize(b, _ATOM)
        if x.is_Rational and x.is_negative:
            return "1/" + self.parenthesize(b ** -x, PRECEDENCE["Mul"])
        base = self.parenthesize(b, PRECEDENCE["Pow"])
        if x.is_Integer:
            return base + str(int(x)).translate(_SUP)
        return base + "^" + self.parenthesize(x, PRECEDENCE["Pow"])

    def _print_Heaviside(self, e):
        strict = len(e.args) > 1 and e.args[1] == 0  # relu'(0) = 0: the Iverson bracket
        return f"[{self._print(e.args[0])} > 0]" if strict else f"H({self._print(e.args[0])})"

    def _print_Abs(self, e):
        return f"|{self._print(e.args[0])}|"

    def _print_Max(self, e):
        return "max(" + ", ".join(self._print(a) for a in _numbers_last(e.args)) + ")"

    def _print_Min(self, e):
        return "min(" + ", ".join(self._print(a) for a in _numbers_last(e.args)) + ")"


def _numbers_last(args) -> list:
    return sorted(args, key=lambda a: bool(a.is_number))  # max(z, 0), not max(0, z)


def formula(e, names: dict | None = None) -> str:
    """``e`` (a SymPy expression) as a compact Unicode formula, as diagrams write nodes.

    Examples
    --------
    >>> import sympy
    >>> from symbackprop.display import formula
    >>> w, x, y, b = sympy.symbols("w x y b")
    >>> formula((w * x - y) ** 2), formula(2 * b), formula(-8 * x / 3)
    ('(w·x − y)²', '2b', '−8x/3')
    """
    return FormulaPrinter(names).doprint(as_written(sp.sympify(e)))


def precedence_of(e, names: dict | None = None) -> int:
    """The precedence :func:`formula` gives ``e`` (for parenthesizing it inside others)."""
    return FormulaPrinter(names)._prec(as_written(sp.sympify(e)))
