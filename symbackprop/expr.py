"""Safe parsing of arithmetic strings into SymPy, without ``eval``.

Strings are parsed by Python's own parser (:mod:`ast`) and the tree is walked
here, accepting only numbers, names, ``+ - * / **``, unary minus, parentheses
and calls of functions from an explicit table. Nothing in the string is ever
executed, so ``"x; import os"`` or ``"__import__('os')"`` is a
:class:`~symbackprop.errors.ParseError`, never code.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable

import sympy as sp

from .errors import ParseError

_BINOPS: dict[type, Callable] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.Pow: operator.pow, ast.MatMult: operator.matmul,
}
_UNOPS: dict[type, Callable] = {ast.USub: operator.neg, ast.UAdd: operator.pos}

# Functions allowed in stored SymPy expressions (elementwise gradient nodes).
SYMPY_FUNCTIONS: dict[str, Callable] = {
    "exp": sp.exp, "log": sp.log, "sqrt": sp.sqrt, "Abs": sp.Abs, "sign": sp.sign,
    "sin": sp.sin, "cos": sp.cos, "tan": sp.tan, "tanh": sp.tanh, "cosh": sp.cosh,
    "sinh": sp.sinh, "Heaviside": sp.Heaviside, "Max": sp.Max, "Min": sp.Min,
    "Rational": sp.Rational, "Integer": sp.Integer, "Float": sp.Float,
    "atan": sp.atan, "erf": sp.erf, "pi": lambda: sp.pi, "E": lambda: sp.E,
}


def walk(node: ast.AST, source: str, name: Callable, call: Callable, number: Callable,
         check_call: Callable = lambda func_id, node: None, subscript: Callable | None = None):
    """Evaluate an ``ast`` expression tree with the given leaf/call handlers.

    ``name(id, node)``, ``call(func_id, args, kwargs, node)`` and ``number(value)``
    decide what leaves mean; operators map to Python operators on the results.
    ``check_call(func_id, node)`` may reject a function before its arguments are read.
    ``subscript(value, key)``, when given, reads ``v[...]`` with a static index (integers,
    slices with integer bounds, ``...``; read as literals, never evaluated).
    """

    def go(n):
        if isinstance(n, ast.Constant) and isinstance(n.value, (int, float)) \
                and not isinstance(n.value, bool):
            return number(n.value)
        if isinstance(n, ast.Name):
            return name(n.id, n)
        if isinstance(n, ast.BinOp) and type(n.op) in _BINOPS:
            return _BINOPS[type(n.op)](go(n.left), go(n.right))
        if isinstance(n, ast.UnaryOp) and type(n.op) in _UNOPS:
            return _UNOPS[type(n.op)](go(n.operand))
        if isinstance(n, ast.Subscript) and subscript is not None:
            return subscript(go(n.value), _static_index(n.slice, source))
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name):
            check_call(n.func.id, n)
            kwargs = {}
            for k in n.keywords:
                if k.arg is None:
                    raise _error(source, k.value, "'**' arguments are not allowed")
                kwargs[k.arg] = _literal(k.value, source)
            return call(n.func.id, [go(a) for a in n.args], kwargs, n)
        raise _error(source, n, f"{ast.get_source_segment(source, n) or type(n).__name__} "
                     "is not allowed here; use numbers, names, + - * / ** @ and op calls")

    return go(node)


def _static_index(n: ast.AST, source: str):
    """The key of ``x[...]`` as Python values: ints, slices of ints, ``...`` and tuples."""
    if isinstance(n, ast.Tuple):
        return tuple(_static_index(e, source) for e in n.elts)
    if isinstance(n, ast.Slice):
        return slice(*(None if b is None else _static_int(b, source)
                       for b in (n.lower, n.upper, n.step)))
    if isinstance(n, ast.Constant) and n.value is Ellipsis:
        return Ellipsis
    return _static_int(n, source)


def _static_int(n: ast.AST, source: str) -> int:
    try:
        v = ast.literal_eval(n)
    except ValueError:
        v = None
    if not isinstance(v, int) or isinstance(v, bool):
        raise _error(source, n, f"index {ast.get_source_segment(source, n)!r} is not an "
                     "integer: indices are static, e.g. x[0], x[1:3], x[:, ::2], x[..., -1]")
    return v


def _literal(n: ast.AST, source: str):
    """Keyword values (``axis=1``, ``axis=(0, 1)``, ``keepdims=True``) are literals only."""
    try:
        return ast.literal_eval(n)
    except ValueError:
        raise _error(source, n, "keyword arguments must be literal numbers, tuples or "
                     "True/False") from None


def _error(source: str, n: ast.AST, msg: str) -> ParseError:
    col = getattr(n, "col_offset", 0)
    line = source.splitlines()[getattr(n, "lineno", 1) - 1] if source else ""
    return ParseError(f"{msg} (at column {col + 1} of {line!r}).")


def parse_module(source: str) -> ast.Module:
    """``ast.parse`` with errors turned into :class:`ParseError`."""
    try:
        return ast.parse(source, mode="exec")
    except SyntaxError as e:
        raise ParseError(f"cannot parse {source!r}: {e.msg} at column {e.offset}. "
                         "Write statements like 'a = 2*x; b = a + 3'.") from None


def to_sympy(text: str, make_symbol: Callable = lambda n: sp.Symbol(n, real=True)) -> sp.Expr:
    """Parse ``text`` into a SymPy expression; names become ``make_symbol(name)``.

    Examples
    --------
    >>> from symbackprop.expr import to_sympy
    >>> to_sympy("2*x0*Heaviside(x1, 0)")
    2*x0*Heaviside(x1, 0)
    >>> to_sympy("__import__('os')")
    Traceback (most recent call last):
    ...
    symbackprop.errors.ParseError: function '__import__' is not allowed...
    """
    symbols: dict[str, sp.Symbol] = {}
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise ParseError(f"cannot parse expression {text!r}: {e.msg}.") from None

    def name(i, n):
        if i in SYMPY_FUNCTIONS and i in ("pi", "E"):
            return SYMPY_FUNCTIONS[i]()
        if i not in symbols:
            if i.startswith("__"):
                raise _error(text, n, f"name {i!r} is not allowed")
            symbols[i] = make_symbol(i)
        return symbols[i]

    def check(f, n):
        if f not in SYMPY_FUNCTIONS:
            raise _error(text, n, f"function {f!r} is not allowed; allowed: "
                         f"{', '.join(sorted(SYMPY_FUNCTIONS))}")

    def call(f, args, kwargs, n):
        if kwargs:
            raise _error(text, n, f"{f}() takes no keyword arguments here")
        return SYMPY_FUNCTIONS[f](*args)

    return walk(tree.body, text, name, call, sp.sympify, check)
