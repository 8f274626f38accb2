"""Sizes of array axes: an int, a name (``"N"``), or an expression in names.

A shape is a tuple of sizes. A size is

- an ``int`` (``784``),
- a *name*, a string that is a Python identifier (``"N"``, ``"H"``): bound when the
  generated code runs, from the arrays it is given,
- an *expression*, a string of integer arithmetic in names with ``+ - *`` and floor
  division ``//`` (``"(H - 1)//2 + 1"``), as shape rules compute them: a convolution of
  an input of height ``H`` with stride 2, padding 1 and a 3×3 kernel is ``(H - 1)//2 + 1``
  high.

Sizes stay strings (and ints) in shapes, so graphs and their JSON read as before and
an expression is also the Python code that computes it once its names are bound. The
arithmetic is SymPy's (:func:`to_sympy`, names as positive integer symbols); every
expression is kept in one canonical text (:func:`from_sympy`), so two sizes are equal
exactly when their texts are, and shape rules compare them with ``==`` as before.

Examples
--------
>>> from symbackprop import sizes
>>> h = sizes.to_sympy("H")
>>> sizes.from_sympy((h + 2 * 1 - 3) // 2 + 1)
'(H - 1)//2 + 1'
>>> sizes.from_sympy((h + 2 * 1 - 3) // 1 + 1), sizes.from_sympy((h - 2) // 2 + 1)
('H', 'H//2')
>>> sizes.names(("N", 3, "(H - 1)//2 + 1"))
['H', 'N']
"""

from __future__ import annotations

import ast
import functools

import sympy as sp

from .errors import ShapeError


def symbol(name: str) -> sp.Symbol:
    """The SymPy symbol of a size name (a positive integer)."""
    return sp.Symbol(name, integer=True, positive=True)


def is_symbolic(d) -> bool:
    """Whether ``d`` is a name or an expression (not an int)."""
    return isinstance(d, str)


def is_expression(d) -> bool:
    """Whether ``d`` is an expression in names (a string that is not one name)."""
    return isinstance(d, str) and not d.isidentifier()


@functools.lru_cache(maxsize=4096)
def _parse(text: str) -> sp.Expr:
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError:
        raise ValueError(f"size {text!r} is not an expression") from None

    def go(n):
        if isinstance(n, ast.Constant) and type(n.value) is int:
            return sp.Integer(n.value)
        if isinstance(n, ast.Name):
            return symbol(n.id)
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, (ast.USub, ast.UAdd)):
            v = go(n.operand)
            return -v if isinstance(n.op, ast.USub) else v
        if isinstance(n, ast.BinOp):
            a, b = go(n.left), go(n.right)
            if isinstance(n.op, ast.Add):
                return a + b
            if isinstance(n.op, ast.Sub):
                return a - b
            if isinstance(n.op, ast.Mult):
                return a * b
            if isinstance(n.op, ast.FloorDiv) and b.is_Integer and b > 0:
                return sp.floor(a / b)
        raise ValueError(f"size {text!r} uses {ast.unparse(n)!r}; sizes are ints and names "
                         "joined by +, -, * and // (by a positive int)")
    return go(tree)


def to_sympy(d) -> sp.Expr:
    """A size as a SymPy expression (names as positive integer symbols).

    Examples
    --------
    >>> to_sympy(3), to_sympy("N"), to_sympy("H//2 + 1")
    (3, N, floor(H/2) + 1)
    """
    if isinstance(d, sp.Basic):
        return d
    if isinstance(d, int) and not isinstance(d, bool):
        return sp.Integer(d)
    if isinstance(d, str):
        return symbol(d) if d.isidentifier() else _parse(d)
    raise ValueError(f"size {d!r} is neither an int nor a string")


class _SizePrinter(sp.printing.str.StrPrinter):
    """Sizes as Python code: ``floor(a/b)`` as ``a//b``."""

    def _print_floor(self, e):
        num, den = sp.fraction(sp.together(e.args[0]))
        if not den.is_Integer:
            raise ValueError(f"{e} is not a floor division by an integer")
        top = self._print(num)
        top = top if num.is_Symbol or num.is_Integer else f"({top})"
        return f"{top}//{den}" if not self._wrap else f"({top}//{den})"

    _wrap = False

    def parenthesize(self, item, level, strict=False):
        # a//b binds as * does: a floor inside a product keeps its parentheses,
        # 8*((H + 1)//2), never 8*(H + 1)//2
        if isinstance(item, sp.floor) and not self._wrap \
                and level >= sp.printing.precedence.PRECEDENCE["Mul"]:
            return f"({self._print(item)})"
        return super().parenthesize(item, level, strict)


def from_sympy(e):
    """A SymPy size back as an int, a name or the canonical expression text.

    Raises ``ValueError`` for an expression that is not an integer for every value of its
    names (``H/2``).

    Examples
    --------
    >>> from_sympy(sp.Integer(4)), from_sympy(symbol("N") * 2)
    (4, '2*N')
    """
    e = sp.sympify(e)
    if e.is_Integer:
        return int(e)
    if e.is_Symbol:
        return e.name
    if e.is_integer is not True:
        raise ValueError(f"{e} is not a whole number for every value of its sizes")
    p = _SizePrinter()
    text = p.doprint(e)
    if _parse(text) != e:  # -floor(...) printed as -a//b: put each floor in parentheses
        p._wrap = True
        text = p.doprint(e)
    return text


def canonical(d):
    """``d`` in its canonical form: ints and names as they are, an expression re-written
    (``"2*H"`` and ``"H*2"`` are both ``"2*H"``; ``"H + 0"`` is ``"H"``)."""
    return from_sympy(to_sympy(d)) if is_expression(d) else d


def names(shape) -> list[str]:
    """The size names a size or a shape uses, sorted."""
    shape = shape if isinstance(shape, (tuple, list)) else (shape,)
    out = set()
    for d in shape:
        if isinstance(d, str):
            out |= {d} if d.isidentifier() else {s.name for s in to_sympy(d).free_symbols}
    return sorted(out)


def normalize(d, where: str):
    """A size as given by a user (an int, a name or an expression), checked and canonical;
    raises :class:`~symbackprop.errors.ShapeError` naming ``where`` otherwise."""
    if isinstance(d, str) and not d.isidentifier():
        try:
            e = to_sympy(d)
            return from_sympy(e)
        except ValueError as err:
            raise ShapeError(f"{where}: size {d!r} is not a size: {err}. Use ints, names such "
                             "as 'N', or expressions of them such as 'H//2 + 1'.") from None
    return d


def value(d, bound: dict) -> int:
    """A size's value once its names are bound (``bound``: name -> int).

    Examples
    --------
    >>> value("(H - 1)//2 + 1", {"H": 8}), value(3, {})
    (4, 3)
    """
    if isinstance(d, int):
        return d
    e = to_sympy(d).xreplace({symbol(k): sp.Integer(v) for k, v in bound.items()})
    if not e.is_Integer:
        raise ValueError(f"size {d!r} needs {', '.join(names(d))} bound")
    return int(e)


def is_nonnegative(d) -> bool | None:
    """Whether a size is at least 0 for every value (>= 1) of its names: True, False, or
    None when that depends on them (``H - 3``)."""
    return to_sympy(d).is_nonnegative
