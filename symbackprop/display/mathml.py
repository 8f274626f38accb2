"""MathML: formulas for web pages (the report page, ``symbackprop report``).

SymPy's presentation-MathML printer, taught the display objects of :mod:`.expressions`:
a matrix written as its entrywise expression (``AsMatrix``) prints as that expression,
``1[h₁ > 0]`` as a double-struck 1 and a bracket, the all-ones matrix as 𝟙, numbers by
:mod:`.numbers` (``0.3``, not ``0.300000000000000``), and any other display function
that has its own text form (the masks ``1[a ≥ b]``) as that text. Browsers render
MathML Core natively; nothing is fetched.

Examples
--------
>>> from symbackprop.display.mathml import mathml
>>> "double-struck" in mathml(sb.grad(sb.models.mlp([4, 3, 2]))["b1"])  # 𝟙ᵀ δ_z1
True
"""

from __future__ import annotations

import sympy as sp
from sympy.printing.mathml import MathMLPresentationPrinter

from .numbers import fmt
from .printers import as_written, text


class MathMLPrinter(MathMLPresentationPrinter):
    """Presentation MathML of display expressions (see the module notes)."""

    def _el(self, tag: str, *children, text_: str | None = None, **attrs):
        e = self.dom.createElement(tag)
        for k, v in attrs.items():
            e.setAttribute(k.replace("_", "-"), v)
        if text_ is not None:
            e.appendChild(self.dom.createTextNode(text_))
        for c in children:
            e.appendChild(c)
        return e

    def _as_ordered_terms(self, expr, order=None):
        """A positive term first, as the text form writes sums: ``P − Y``."""
        terms = super()._as_ordered_terms(expr, order)
        return sorted(terms, key=lambda t: t.could_extract_minus_sign())

    def _print_AsMatrix(self, e):
        return self._print(e.args[0])

    def _print_Indicator(self, e):
        return self._el("mrow", self._el("mi", text_="1", mathvariant="double-struck"),
                        self._el("mo", text_="["), self._print(e.args[0]),
                        self._el("mo", text_=">"), self._el("mn", text_="0"),
                        self._el("mo", text_="]"))

    def _print_OneMatrix(self, e):
        return self._el("mi", text_="1", mathvariant="double-struck")

    _print__Ones = _print_OneMatrix  # the column of ones of 𝟙ᵀ δ (ops/tensor.py)

    def _print_Float(self, e):
        return self._el("mn", text_=fmt(e))

    def _print_NaN(self, e):
        return self._el("mtext", text_="undefined")

    def _print_Function(self, e):
        own = type(e).__dict__.get("_sympystr")  # a display object with its own text form
        if own is not None:
            return self._el("mtext", text_=text(e))
        return super()._print_Function(e)


def mathml(expr, display: str = "inline") -> str:
    """A display expression as a ``<math>`` element (HTML: no namespace needed).

    Parameters
    ----------
    expr : sympy expression
        A formula of :func:`~symbackprop.grad` or :func:`~symbackprop.derive`.
    display : {"inline", "block"}

    Examples
    --------
    >>> from symbackprop.display.mathml import mathml
    >>> grads = sb.grad(sb.parse("a = 2*x; b = a + 3; c = b**2"), wrt="x")
    >>> mathml(grads["b"])
    '<math display="inline"><mrow><mn>2</mn><mo>&InvisibleTimes;</mo><mi>b</mi>...</math>'
    >>> "double-struck" in mathml(sb.grad(sb.models.mlp([4, 3, 2]))["z1"])
    True
    """
    return f'<math display="{display}">{_body(expr)}</math>'


def _body(expr) -> str:
    return MathMLPrinter().doprint(as_written(sp.sympify(expr)))


def _partial(e) -> str:
    """∂ before ``e``, parenthesized unless ``e`` is a symbol: ∂W₁, ∂(w·x − y)."""
    inner = _body(e)
    if not isinstance(e, (sp.Symbol, sp.MatrixSymbol)):
        inner = f"<mrow><mo>(</mo>{inner}<mo>)</mo></mrow>"
    return f"<mrow><mo>&#8706;</mo>{inner}</mrow>"


def gradient(of, node, formula=None, display: str = "inline") -> str:
    """``∂c/∂b = 2b·δ_c`` as a ``<math>`` element: ``of`` and ``node`` as their
    display expressions (``Gradients.symbol``), then ``= formula`` when given.

    Examples
    --------
    >>> from symbackprop.display.mathml import gradient
    >>> grads = sb.grad(sb.parse("L = (w*x - y)**2"), wrt="w")
    >>> m = gradient(grads.symbol("L"), grads.symbol("sub_1"), grads["sub_1"])
    >>> m.startswith('<math display="inline"><mrow><mfrac><mrow><mo>&#8706;</mo><mi>L</mi>')
    True
    >>> "<mo>&#8706;</mo><mrow><mo>(</mo>" in m  # ∂(w·x − y)
    True
    """
    frac = f"<mfrac>{_partial(of)}{_partial(node)}</mfrac>"
    rhs = "" if formula is None else f"<mo>=</mo>{_body(formula)}"
    return f'<math display="{display}"><mrow>{frac}{rhs}</mrow></math>'


__all__ = ["MathMLPrinter", "gradient", "mathml"]
