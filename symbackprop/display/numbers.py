"""How numbers are written, in every display form: one rule for text, LaTeX, Markdown and
diagram labels.

The rule (see docs/formulas.md, "How numbers are written"):

* exact numbers stay exact: an integer in full (``20``, ``−24``); a rational with a
  finite decimal of at most 12 places as that decimal (``25.2004``, ``0.000000003``);
  another rational with a denominator of at most six digits as a fraction (``1/3``,
  ``−8/3``); a longer one (a float given as a point, ``0.1 + 0.2``) as a float;
* floats, and SymPy numbers that are not rational (``tanh(1)``), with 6 significant
  digits, the exponent without padding (``0.333333``, ``1.5e−7``, ``1.52416e8``);
* values that are not finite real numbers by :func:`special`: ``∞``, ``−∞``, ``±∞``,
  ``undefined`` (NaN among them);
* arrays by their shape and norm: ``[4×3, ‖·‖ = 0.4674]``.

:func:`fmt` writes Unicode (or ASCII), :func:`fmt_latex` LaTeX, :func:`number` either,
parenthesized as a factor where asked (``(−8)``).
"""

from __future__ import annotations

import numpy as np
import sympy as sp

from ..errors import GradError

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


#: Most decimal places an exact rational is written with; most digits of a fraction's
#: denominator. Beyond them an exact number came from a float (``0.1 + 0.2``) and is
#: written as one.
DECIMAL_PLACES, FRACTION_DIGITS = 12, 6
DIGITS = 6  # significant digits of a float


def _float(x: float, digits: int = DIGITS) -> str:
    """``x`` to ``digits`` significant digits, the exponent unpadded: ``1.5e-7``, ``1.52416e8``."""
    s = f"{x:.{digits}g}"
    if "e" in s:
        mant, exp = s.split("e")
        s = f"{mant}e{int(exp)}"
    return s


def _fraction(r: sp.Rational) -> bool:
    """Whether the exact rational ``r`` is written as a fraction ``p/q``."""
    return not r.is_Integer and _decimal(r) is None and len(str(r.q)) <= FRACTION_DIGITS


def _array(a: np.ndarray) -> str:
    shape = "×".join(map(str, a.shape)) if a.ndim > 1 else f"length {a.shape[0]}"
    big = np.max(np.abs(a)) if a.size else 0.0
    with np.errstate(all="ignore"):  # scaled, so finite entries never overflow the norm
        norm = big * np.linalg.norm(a / big) if np.isfinite(big) and big > 0 \
            else np.linalg.norm(a)
    return f"[{shape}, ‖·‖ = {special(norm) or _float(norm, 4)}]"


def fmt(v, unicode: bool = True, digits: int = DIGITS) -> str:
    """A value as every display form writes it (the module notes give the rule).

    ``unicode=False`` writes ASCII (``-`` for ``−``, ``inf`` for ``∞``); ``digits``
    sets the significant digits of floats (summaries such as a gradient's magnitude
    use 3).

    Examples
    --------
    >>> import sympy
    >>> from symbackprop.display import fmt
    >>> fmt(sympy.Rational(1, 3)), fmt(sympy.Rational(63001, 2500)), fmt(-24.0), fmt(1 / 3)
    ('1/3', '25.2004', '−24', '0.333333')
    >>> fmt(0.1 + 0.2), fmt(sympy.Rational(0.1 + 0.2)), fmt(3e-9), fmt(152415765.279684)
    ('0.3', '0.3', '3e−9', '1.52416e8')
    >>> fmt(float("nan")), fmt(sympy.zoo), fmt(-np.inf, unicode=False)
    ('undefined', '±∞', '-inf')
    >>> fmt(np.ones((4, 3)))
    '[4×3, ‖·‖ = 3.464]'
    """
    if isinstance(v, (list, tuple)):
        v = np.asarray(v, dtype=float)
    if v is None:
        s = "?"
    elif isinstance(v, np.ndarray) and v.ndim > 0:
        s = _array(v)
    elif special(v) is not None:  # ∞, −∞, ±∞ or undefined, never a traceback
        s = special(v)
        return s if unicode else _ASCII[s]
    elif isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
        s = str(int(v))
    elif isinstance(v, sp.Basic) and v.is_Rational:
        s = str(v) if v.is_Integer or _fraction(v) else _decimal(v) or _float(float(v), digits)
    elif isinstance(v, sp.Basic) and v.is_number:
        s = _float(float(sp.N(v, 20)), digits)
    else:
        s = _float(float(v), digits)
    return s.replace("-", "−") if unicode else s


def fmt_latex(v, digits: int = DIGITS) -> str:
    r"""A value in LaTeX, by the same rule as :func:`fmt`: ``\frac{1}{3}``,
    ``1.5 \times 10^{-7}``, ``\infty``.

    Examples
    --------
    >>> import sympy
    >>> from symbackprop.display import fmt_latex
    >>> fmt_latex(sympy.Rational(-1, 3)), fmt_latex(1.5e-7), fmt_latex(sympy.oo)
    ('- \\frac{1}{3}', '1.5 \\times 10^{-7}', '\\infty')
    """
    if isinstance(v, sp.Basic) and v.is_Rational and _fraction(v):
        return sp.latex(v)
    if special(v) is not None and not (isinstance(v, np.ndarray) and v.ndim > 0):
        return _TEX[special(v)]
    s = fmt(v, unicode=False, digits=digits)
    if not s.startswith("["):
        mant, e, exp = s.partition("e")
        return rf"{mant} \times 10^{{{exp}}}" if e else s
    shape, norm = s[1:-1].split(", ‖·‖ = ")
    norm = _TEX.get(norm.replace("-", "−"), norm)
    shape = shape.replace("×", r" \times ").replace("length ", r"\text{length }")
    return rf"\left[{shape},\ \lVert\cdot\rVert = {norm}\right]"


def number(v, tex: bool = False, factor: bool = False) -> str:
    """:func:`fmt` or, with ``tex``, :func:`fmt_latex`; as a factor of a product a
    negative number is parenthesized: ``10 · (−8)``."""
    s = fmt_latex(v) if tex else fmt(v)
    if factor and s.startswith(("−", "-", "±", r"\pm")):
        s = f"({s})"
    return s
