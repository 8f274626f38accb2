"""NumPy expression printer: SymPy's ``NumPyPrinter`` taught to write what a
person would (``np.maximum(z, 0)``, ``(h > 0)``, ``1 / (1 + np.exp(-x))``).

SymPy's stock printer writes ``Heaviside`` as a three-branch ``numpy.select``,
``Max(x, 0)`` as ``functools.reduce(numpy.maximum, ...)`` and ``x**-1`` as
``x**(-1.0)``; one ``_print_<Class>`` method per kind fixes each.
"""

from __future__ import annotations

import io
import keyword
import re
import tokenize
from functools import lru_cache

import sympy as sp
from sympy.printing.numpy import NumPyPrinter

from ..ops.stable import FUNCTIONS

_BINARY = {"+", "-", "*", "/", "@", "==", "!=", ">", "<", ">=", "<=", "%", "//"}


class Printer(NumPyPrinter):
    """Print elementwise SymPy expressions as NumPy source using ``np.``.

    Examples
    --------
    >>> import sympy
    >>> from symbackprop.codegen.printer import expr_code
    >>> x, y = sympy.symbols("dh h")
    >>> expr_code(x * sympy.Heaviside(y, 0))
    'dh * (h > 0)'
    >>> expr_code(1 / (1 + sympy.exp(-y)))
    '1 / (1 + np.exp(-h))'
    """

    printmethod = "_numpycode"
    prefix = "np"  # the array library's name in generated code (a backend's printer: jnp, xp)

    def __init__(self, settings=None):
        super().__init__({"fully_qualified_modules": True, **(settings or {})})

    def _module_format(self, fqn, register=True):
        fqn = super()._module_format(fqn, register)
        return self.fn(fqn[len("numpy."):]) if fqn.startswith("numpy.") else fqn

    def fn(self, name: str) -> str:
        """The code of NumPy's function ``name`` (``np.exp``); a backend's printer writes
        its own library's (``jnp.exp``, ``xp.atan`` for ``arctan``)."""
        return f"{self.prefix}.{name}"

    def _print(self, expr, **kwargs):
        # A constant such as sqrt(2) or exp(-1/2) as a Python float: np.sqrt(2) would be a
        # float64 scalar, to which NumPy 2 promotes a float32 array (a Python float it does
        # not). Numbers themselves and pi (np.pi, a Python float) print as they are.
        if isinstance(expr, sp.Expr) and not expr.is_Atom and expr.is_number \
                and expr.is_real:
            return repr(float(expr))
        return super()._print(expr, **kwargs)

    def _print_math_only(self, e):
        """A function NumPy has no ufunc for (erf, erfc, gamma, lgamma): SymPy would print
        math's, which takes one number; the helper _<name> maps it over an array."""
        return f"_{MATH_ONLY[type(e).__name__]}({', '.join(self._print(a) for a in e.args)})"

    def _print_stable(self, e):
        """A function of ops/stable.py (sigmoid, softplus, ...): a call of the generated
        module's helper ``_<name>`` (codegen/lowering.py's NUMPY_FUNCTIONS)."""
        return f"_{type(e).__name__}({', '.join(self._print(a) for a in e.args)})"

    def _print_Heaviside(self, e):
        x = self._print(e.args[0])
        at0 = e.args[1] if len(e.args) > 1 else sp.S.Half
        if at0 == 0:
            return f"({x} > 0)"
        if at0 == 1:
            return f"({x} >= 0)"
        return f"{self.fn('heaviside')}({x}, {self._print(at0)})"  # a tie shared: max(a, b) at a = b

    def _print_FloatStep(self, e):
        return f"{self.fn('heaviside')}({self._print(e.args[0])}, {self._print(e.args[1])})"

    def _print_Max(self, e):
        return self._pairwise(self.fn("maximum"), e.args)

    def _print_Min(self, e):
        return self._pairwise(self.fn("minimum"), e.args)

    def _pairwise(self, fn, args):
        args = sorted(args, key=lambda a: a.is_number)  # np.maximum(z, 0), not (0, z)
        code = self._print(args[0])
        for a in args[1:]:
            code = f"{fn}({code}, {self._print(a)})"
        return code

    def _print_floor(self, e):
        """A size expression's floor division by an integer ((H + 1)//2 from a strided
        convolution, in the count a mean divides by) as integer code: ``((H + 1)//2)``."""
        num, den = sp.fraction(sp.together(e.args[0]))
        if den.is_Integer and num.is_integer:
            top = self._print(num)
            return f"({top if num.is_Atom or isinstance(num, sp.floor) else f'({top})'}//{den})"
        return f"{self.fn('floor')}({self._print(e.args[0])})"

    def _print_Abs(self, e):
        return f"{self.fn('abs')}({self._print(e.args[0])})"

    def _print_Pow(self, e, rational=False):
        base, ex = e.args
        if ex == -1:
            return f"1 / {self.parenthesize(base, sp.printing.precedence.PRECEDENCE['Mul'])}"
        if ex.is_Rational and ex.q == 2 and ex.p == 1:
            return f"{self.fn('sqrt')}({self._print(base)})"
        return super()._print_Pow(e, rational=rational)

    def _print_Rational(self, e):
        f = e.p / e.q
        return repr(f) if sp.Rational(f) == e and len(repr(f)) <= 6 else f"{e.p}/{e.q}"

    def _print_Float(self, e):
        return repr(float(e))


@lru_cache(maxsize=4096)
def _tokens(code: str) -> tuple:
    """The tokens of ``code``; cached, as one template is spaced once per layer."""
    return tuple(t for t in tokenize.generate_tokens(io.StringIO(code).readline)
                 if t.type not in (tokenize.NEWLINE, tokenize.ENDMARKER, tokenize.NL))


def spaced(code: str, rename: dict | None = None) -> str:
    """Put one space around binary operators (``a*b + c`` -> ``a * b + c``) and
    replace the names in ``rename`` (whole tokens only)."""
    toks = _tokens(code)
    out, prev = [], None
    rename = rename or {}
    for t in toks:
        s = rename.get(t.string, t.string) if t.type == tokenize.NAME else t.string
        binary = (t.type == tokenize.OP and s in _BINARY and prev is not None
                  and (prev.type in (tokenize.NAME, tokenize.NUMBER)
                       or prev.string in (")", "]"))
                  and not (prev.type == tokenize.NAME and keyword.iskeyword(prev.string)))
        if binary:
            out.append(f" {s} ")
        elif t.type == tokenize.OP and s == ",":
            out.append(",")
        elif prev is not None and ((prev.string == "," and s != ")") or (
                t.type in (tokenize.NAME, tokenize.NUMBER)
                and prev.type in (tokenize.NAME, tokenize.NUMBER))):
            out.append(" " + s)
        else:
            out.append(s)
        prev = t
    # SymPy parenthesises rational coefficients: "(0.5) * x" -> "0.5 * x" (not calls: f(2)).
    return re.sub(r"(?<![\w)\]])\((\d+(?:\.\d+)?)\)", r"\1", "".join(out).strip())


class FloatStep(sp.Function):
    """``Heaviside(x, a)`` where the boolean ``(x > 0)`` would not do, printed
    ``np.heaviside(x, a)``: alone (a bool gradient), negated (``-(x > 0)`` is an error),
    summed (``(a > 0) + (b > 0)`` is a logical or) or scaled by a number only."""


def float_steps(e: sp.Expr) -> sp.Expr:
    """``e`` with every Heaviside that is not a factor of a product with an array factor
    (``dh * (h > 0)``) made a :class:`FloatStep`."""
    if not isinstance(e, sp.Basic) or not e.has(sp.Heaviside):
        return e
    if isinstance(e, sp.Heaviside):
        return FloatStep(e.args[0], e.args[1] if len(e.args) > 1 else sp.S.Half)
    # -(h > 0) * g is an error when the printer puts the boolean first: a negative product
    # keeps its steps as floats
    safe = isinstance(e, sp.Mul) and e.as_coeff_Mul()[0] > 0 and any(
        not f.is_number and not isinstance(f, sp.Heaviside) for f in e.args)
    args = [a if safe and isinstance(a, sp.Heaviside) else float_steps(a) for a in e.args]
    if all(a is b for a, b in zip(args, e.args)):
        return e
    return e.func(*args, evaluate=False) if isinstance(e, (sp.Add, sp.Mul)) else e.func(*args)


# Functions NumPy has no ufunc for, by SymPy name, with the name of math's function, which
# SymPy prints and which takes one number: the generated module gets a helper _<name>
# (codegen/lowering.py's math_helper) mapping it over an array, and calls that.
MATH_ONLY = {k: v[len("math."):] for k, v in Printer({}).known_functions.items()
             if v.startswith("math.")}
for _name in MATH_ONLY:  # SymPy's printer binds one method per function name
    setattr(Printer, f"_print_{_name}", Printer._print_math_only)
for _f in FUNCTIONS:  # (it looks for no method of a base class such as StableFunction)
    setattr(Printer, f"_print_{_f.__name__}", Printer._print_stable)


def expr_code(expr: sp.Expr, names: dict | None = None, printer: type | None = None) -> str:
    """NumPy source for ``expr``; ``names`` maps symbols to the code of their values;
    ``printer`` is a :class:`Printer` subclass writing another array library's code (a
    backend's, :mod:`symbackprop.codegen.backends`).

    The expression is printed in its own symbols (``x0 - x1``, whose order
    follows the arguments) and the names are put in afterwards, so SymPy's
    alphabetical ordering of terms cannot reorder ``softmax - onehot``.
    """
    rename = {s.name: c for s, c in (names or {}).items()}
    printer = printer or Printer
    return spaced(_printed(expr, printer) if isinstance(expr, sp.Basic)
                  else _print(expr, printer), rename)


def _print(expr, printer: type = Printer) -> str:
    return printer().doprint(float_steps(expr))


# Every layer of a network prints the same expressions in their own symbols (tanh(x0 + x1))
# and differs only in the names put in afterwards: print each once. The key is the
# expression itself: SymPy's == (from 1.13, which pyproject.toml asks for) tells apart
# Integer(1) and Float(1.0), a Float's precision and a symbol's assumptions, so equal keys
# print alike (Python numbers, where 1 == 1.0, are printed uncached).
_printed = lru_cache(maxsize=4096)(_print)
