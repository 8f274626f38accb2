"""The display stack: how a node, a formula and a number are written, in every form.

One package decides every text that symbackprop shows; the rest only arrange it.

==================  ============================================================
``numbers``         the number rule: :func:`fmt` (Unicode, ASCII), :func:`fmt_latex`,
                    :func:`number`, :func:`special` (∞, −∞, ±∞, undefined),
                    :func:`exact`
``printers``        formulas: :func:`text` and :func:`latex` of display expressions
                    (``Xᵀ δ_z1``), :func:`formula` for the compact formulas of
                    diagrams (``(w·x − y)²``); numbers inside them by ``numbers``
``expressions``     display expressions of graph nodes (matrix algebra, δ symbols,
                    masks), read from a joint graph; :mod:`~symbackprop.formulas`
                    and :mod:`~symbackprop.derivation` print them
``labels``          diagram labels: how :mod:`~symbackprop.render` names a node, writes
                    its formula, its value, its gradient and each local derivative,
                    and escapes it all for DOT's HTML-like labels
==================  ============================================================

A package rather than one module because these are four jobs with one-way imports
(numbers ← printers ← expressions, labels), each small enough to read at a sitting.
Markdown is Unicode text escaped for tables (``derivation._md``).
"""

from .numbers import (
    INFINITE,
    MINUS_INFINITE,
    NO_SIGN,
    UNDEFINED,
    exact,
    fmt,
    fmt_latex,
    number,
    special,
)
from .printers import formula, latex, pretty_name, text

__all__ = ["INFINITE", "MINUS_INFINITE", "NO_SIGN", "UNDEFINED", "exact", "fmt", "fmt_latex",
           "formula", "latex", "number", "pretty_name", "special", "text"]
