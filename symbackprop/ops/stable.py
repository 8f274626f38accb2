"""Numerically stable forms of elementwise expressions, by rewrite rules.

SymPy writes what is true, not what is safe to compute: the derivative of
``x / (1 + exp(-x))`` comes out as ``x*exp(-x)/(1 + exp(-x))**2 + 1/(1 + exp(-x))``,
whose ``exp(-x)`` overflows for x < -709 and turns the gradient into ``inf/inf = nan``;
``1 + tanh(u)`` and ``1 + erf(u)`` cancel to nothing where the function is near -1;
``log(1 + exp(x))`` overflows for x > 709. :func:`stabilize` rewrites an expression,
bottom-up, with the rules of :data:`RULES` into an equal one built from functions with
a stable NumPy form:

========================== ============================= =================================
pattern                    rewritten to                  why
========================== ============================= =================================
``log(1 + exp(u))``        ``softplus(u)``               exp(u) overflows for u > 709
``log(sigmoid(u))``        ``-softplus(-u)``             sigmoid(u) underflows to 0
``(1 + exp(u))**-k``       ``sigmoid(-u)**k``            exp(u) overflows: inf/inf
``exp(u) * sigmoid(-u)``   ``sigmoid(u)``                exp(u) overflows: inf * 0
``c - c*sigmoid(u)``       ``c*sigmoid(-u)``             cancels where sigmoid(u) ~ 1
``c ± c*tanh(u)``          ``2c*sigmoid(±2u)``           cancels where tanh(u) ~ ∓1
``c - c*tanh(u)**2``       ``c*sech2(u)``                cancels where tanh(u) ~ ±1
``c ± c*erf(u)``           ``c*erfc(∓u)``                cancels where erf(u) ~ ∓1
``c*exp(u) - c``           ``c*expm1(u)``                cancels where u ~ 0
``expm1(u) * exp(-u)``     ``-expm1(-u)``                exp(-u) underflows: inf * 0
``log(1 + u)``             ``log1p(u)``                  loses u where u ~ 0
========================== ============================= =================================

Each rule is a function of one SymPy node returning the rewritten node or ``None``;
a reader adds one by writing such a function and listing it in :data:`RULES`. The
functions the rules introduce (:class:`sigmoid`, :class:`softplus`, :class:`sech2`,
:class:`erfc`) evaluate, differentiate and print like any SymPy function; code
generation computes each with a helper of its own (``_sigmoid(x)``, see
:mod:`symbackprop.codegen.lowering`); ``expm1`` and ``log1p`` are SymPy's own and print
as NumPy's ufuncs.

Code generation computes ``stabilize(e)`` (:meth:`OpDef.code_expr`); formulas and
derivations show the expression as written.
"""

from __future__ import annotations

from functools import lru_cache

import sympy as sp
from sympy.codegen.cfunctions import expm1, log1p


class StableFunction(sp.Function):
    """A function that code generation computes with a stable helper ``_<name>(x)``
    (:data:`symbackprop.codegen.lowering.NUMPY_FUNCTIONS`).

    Subclasses give ``definition(u)``, the plain SymPy expression it equals (used to
    evaluate it at a point), and ``fdiff``.
    """

    is_real = True

    @classmethod
    def definition(cls, u):
        raise NotImplementedError

    def _eval_evalf(self, prec):
        return self.definition(self.args[0])._eval_evalf(prec)

    def _eval_rewrite_as_exp(self, u, **kwargs):
        return self.definition(u)

    def _latex(self, printer):
        name, arg = type(self).__name__, printer._print(self.args[0])
        return rf"\operatorname{{{name}}}\left({arg}\right)"


class sigmoid(StableFunction):
    """The logistic function 1/(1 + exp(-u)), computed without overflow."""

    @classmethod
    def definition(cls, u):
        return 1 / (1 + sp.exp(-u))

    def fdiff(self, argindex=1):
        u = self.args[0]
        return sigmoid(u) * sigmoid(-u)


class softplus(StableFunction):
    """log(1 + exp(u)), computed without overflow."""

    @classmethod
    def definition(cls, u):
        return sp.log(1 + sp.exp(u))

    def fdiff(self, argindex=1):
        return sigmoid(self.args[0])


class erfc(StableFunction):
    """1 - erf(u), kept as written (SymPy's erfc(-u) evaluates to 2 - erfc(u), which
    cancels again)."""

    @classmethod
    def definition(cls, u):
        return sp.erfc(u)

    def fdiff(self, argindex=1):
        u = self.args[0]
        return -2 * sp.exp(-u ** 2) / sp.sqrt(sp.pi)


class sech2(StableFunction):
    """1/cosh(u)**2 = 1 - tanh(u)**2, computed without overflow or cancellation."""

    @classmethod
    def definition(cls, u):
        return 1 / sp.cosh(u) ** 2

    def fdiff(self, argindex=1):
        u = self.args[0]
        return -2 * sp.tanh(u) * sech2(u)


# -- rules ------------------------------------------------------------------------------
def _split(add: sp.Expr):
    """An Add as (its number, the other terms)."""
    c, rest = add.as_coeff_Add()
    return c, sp.Add.make_args(rest) if rest != 0 else ()


def _one_term(add: sp.Expr, fn):
    """For ``c + k*fn(u) + rest`` with ``k = ±c`` (a number): ``(c, sign, u, rest)``."""
    if not add.is_Add:
        return None
    c, terms = _split(add)
    if c == 0:
        return None
    for i, t in enumerate(terms):
        k, f = t.as_coeff_Mul()
        if isinstance(f, fn) and k in (c, -c):
            return c, (1 if k == c else -1), f.args[0], terms[:i] + terms[i + 1:]
    return None


def softplus_rule(e):
    """log(1 + exp(u)) -> softplus(u); log(sigmoid(u)) -> -softplus(-u)."""
    if isinstance(e, sp.log):
        a = e.args[0]
        if isinstance(a, sigmoid):
            return -softplus(-a.args[0])
        if a.is_Add:
            c, terms = _split(a)
            if c == 1 and len(terms) == 1 and isinstance(terms[0], sp.exp):
                return softplus(terms[0].args[0])
    return None


def sigmoid_rule(e):
    """(1 + exp(u))**-k -> sigmoid(-u)**k."""
    if e.is_Pow and e.exp.is_number and e.exp.is_negative and e.base.is_Add:
        c, terms = _split(e.base)
        if c == 1 and len(terms) == 1 and isinstance(terms[0], sp.exp):
            return sigmoid(-terms[0].args[0]) ** (-e.exp)
    return None


def exp_sigmoid_rule(e):
    """exp(u) * sigmoid(-u)**k -> sigmoid(u) * sigmoid(-u)**(k - 1)."""
    if not e.is_Mul:
        return None
    factors = list(e.args)
    for i, f in enumerate(factors):
        if not isinstance(f, sp.exp):
            continue
        u = f.args[0]
        for j, s in enumerate(factors):
            base, k = s.as_base_exp()
            if isinstance(base, sigmoid) and base.args[0] == -u and k.is_number and k >= 1:
                rest = [x for n, x in enumerate(factors) if n not in (i, j)]
                return sp.Mul(sigmoid(u), base ** (k - 1), *rest)
    return None


def complement_rule(e):
    """c - c*sigmoid(u) -> c*sigmoid(-u); c ± c*tanh(u) -> 2c*sigmoid(±2u);
    c ± c*erf(u) -> c*erfc(∓u)."""
    for fn, make in ((sigmoid, lambda s, u: sigmoid(-u) if s < 0 else None),
                     (sp.tanh, lambda s, u: 2 * sigmoid(2 * s * u)),
                     (sp.erf, lambda s, u: erfc(-s * u))):
        m = _one_term(e, fn)
        if m is not None:
            c, s, u, rest = m
            new = make(s, u)
            if new is not None:
                return sp.Add(c * new, *rest)
    return None


def sech2_rule(e):
    """c - c*tanh(u)**2 -> c*sech2(u)."""
    if not e.is_Add:
        return None
    c, terms = _split(e)
    for i, t in enumerate(terms):
        k, f = t.as_coeff_Mul()
        if k == -c and c != 0 and f.is_Pow and f.exp == 2 and isinstance(f.base, sp.tanh):
            return sp.Add(c * sech2(f.base.args[0]), *terms[:i], *terms[i + 1:])
    return None


def expm1_rule(e):
    """c*exp(u) - c -> c*expm1(u)."""
    m = _one_term(e, sp.exp)
    if m is not None and m[1] < 0:  # c - c*exp(u) = -c*expm1(u)
        c, _, u, rest = m
        return sp.Add(-c * expm1(u), *rest)
    return None


def expm1_exp_rule(e):
    """expm1(u) * exp(-u) -> -expm1(-u) (SymPy's softplus' through its output,
    (exp(y) - 1)*exp(-y), is inf * 0 for y past exp's range)."""
    if e.is_Mul:
        for f in e.args:
            if isinstance(f, expm1):
                u = f.args[0]
                for h in e.args:
                    if isinstance(h, sp.exp) and h.args[0] == -u:
                        rest = [x for x in e.args if x is not f and x is not h]
                        return sp.Mul(-expm1(-u), *rest)
    return None


def log1p_rule(e):
    """log(1 + u) -> log1p(u)."""
    if isinstance(e, sp.log) and e.args[0].is_Add:
        c, terms = _split(e.args[0])
        if c == 1 and terms:
            return log1p(sp.Add(*terms))
    return None


# In order: the first rule that applies to a node rewrites it (softplus before log1p).
RULES = [softplus_rule, sigmoid_rule, exp_sigmoid_rule, complement_rule, sech2_rule,
         expm1_rule, expm1_exp_rule, log1p_rule]


@lru_cache(maxsize=4096)
def stabilize(e: sp.Expr) -> sp.Expr:
    """``e`` rewritten bottom-up by :data:`RULES` into an equal, stable expression.

    Examples
    --------
    >>> import sympy as sp
    >>> x = sp.Symbol("x", real=True)
    >>> stabilize(sp.diff(x / (1 + sp.exp(-x)), x))
    x*sigmoid(-x)*sigmoid(x) + sigmoid(x)
    >>> stabilize(sp.log(1 + sp.exp(x))), stabilize(1 - sp.tanh(x)**2)
    (softplus(x), sech2(x))
    >>> stabilize(x / 2 * (1 + sp.erf(x)))
    x*erfc(-x)/2
    """
    if not isinstance(e, sp.Basic) or e.is_Atom:
        return e
    args = tuple(stabilize(a) for a in e.args)
    if args != e.args:
        e = e.func(*args)
    for rule in RULES:
        new = rule(e)
        if new is not None:
            return stabilize(new)
    return e


FUNCTIONS = (sigmoid, softplus, sech2, erfc)
