"""Probing an elementwise op's generated code for NaN and infinity the mathematics does
not have.

The rewrite rules of :mod:`symbackprop.ops.stable` make the usual forms safe; an op they
do not cover (``exp(x) / (2 + exp(x))`` overflows to ``inf/inf``) is found here before it
silently poisons a training run: :func:`probe` runs the op's forward and derivative code,
exactly as generated, on a grid over [-1000, 1000] in float64 and compares them with
SymPy's exact value at each point; :func:`warn_unstable` turns what it finds into one
:class:`~symbackprop.errors.NumericalWarning` per op, once per process.
"""

from __future__ import annotations

import itertools
import sys
import warnings
from functools import lru_cache

import numpy as np
import sympy as sp

from ..errors import NumericalWarning
from ..ops import registry
from ..ops.elementwise import Y
from ..ops.stable import stabilize
from .lowering import NUMPY_FUNCTIONS, math_helper
from .printer import MATH_ONLY, expr_code

GRID = np.linspace(-1000.0, 1000.0, 201)  # steps of 10: every exp overflow shows
_PAIRS = np.array([-1000.0, -100.0, -10.0, -1.0, 0.5, 1.0, 10.0, 100.0, 1000.0])
_seen: dict[int, tuple] = {}  # id(OpDef) -> (OpDef, problems): each op probed once


@lru_cache(maxsize=1)
def _namespace() -> dict:
    """np, DTYPE and every helper a probed expression may call (read only)."""
    ns = {"np": np, "DTYPE": np.float64}
    for src in NUMPY_FUNCTIONS.values():
        exec(src, ns)  # noqa: S102 -- our own helper sources (codegen/lowering.py)
    for name in set(MATH_ONLY.values()):
        exec(math_helper(name), ns)  # noqa: S102 -- likewise (erf, gamma, ...)
    return ns


def _points(k: int) -> np.ndarray:
    """Probe points, one row per argument: the grid for one argument, pairs of a coarser
    one for more (their product grows fast)."""
    if k == 1:
        return GRID[None, :]
    return np.array(list(itertools.product(_PAIRS, repeat=k))).T


def _run(e: sp.Expr, syms, values: dict, ns: dict) -> np.ndarray:
    names = {s: s.name for s in syms}
    code = expr_code(e, names)
    with np.errstate(all="ignore"):
        return np.broadcast_to(np.asarray(eval(code, {**ns, **values}), dtype=float),
                               next(iter(values.values())).shape)


def _exact(e: sp.Expr, syms, point) -> float | None:
    """``e`` at ``point``, exactly (to 30 digits), or ``None`` where it is not real."""
    try:
        v = sp.N(e.subs(dict(zip(syms, map(sp.Float, point)))), 30)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return float(v) if v.is_real and v.is_finite else None


def probe(op) -> list[str]:
    """Where ``op``'s generated forward or derivative code gives NaN or infinity while the
    true value is a finite float64: one line per problem, empty when there is none.

    Examples
    --------
    >>> import sympy
    >>> bad = sb.elementwise("bad_ratio", lambda x: sympy.exp(x) / (2 + sympy.exp(x)))
    >>> probe(sb.ops.get("bad_ratio"))[0]
    'its value is nan for x in [710, 1000] where the true value is finite'
    >>> probe(sb.ops.get("sigmoid"))
    []
    """
    syms, exact = op.expr({})
    _, code = op.code_expr({})
    k = len(syms)
    pts = _points(k)
    ns = _namespace()
    values = {s.name: pts[i] for i, s in enumerate(syms)}
    forward = _run(code, syms, values, ns)
    checks = [("its value", exact, forward)]
    for i, d in enumerate(op.local_grads({})):
        d = stabilize(sp.sympify(d))  # as the VJP's node computes it (OpDef.code_expr)
        got = _run(d.subs(Y, sp.Symbol("y_")), [*syms, sp.Symbol("y_")],
                   {**values, "y_": forward}, ns) if d.free_symbols else \
            np.full(pts.shape[1], float(d))
        which = "its derivative" if k == 1 else f"its derivative in argument {i + 1}"
        checks.append((which, sp.diff(exact, syms[i]), got))
    problems = []
    for what, e, got in checks:
        bad = []
        for j in np.flatnonzero(~np.isfinite(got)):
            true = _exact(e, syms, pts[:, j])
            if _exact(exact, syms, pts[:, j]) is None:  # (-1)**0.5: not a real function there
                continue
            if true is not None and abs(true) <= sys.float_info.max:
                bad.append(j)
        if bad:
            kind = "nan" if np.isnan(got[bad]).any() else "infinite"
            if k == 1:
                lo, hi = pts[0, bad].min(), pts[0, bad].max()
                where = f"x in [{lo:g}, {hi:g}]" if lo != hi else f"x = {lo:g}"
            else:
                where = "at " + ", ".join(f"{s} = {v:g}" for s, v in zip(syms, pts[:, bad[0]]))
                where += f" (and {len(bad) - 1} more points)" if len(bad) > 1 else ""
            problems.append(f"{what} is {kind} for {where} where the true value is finite")
    return problems


def warn_unstable(g) -> None:
    """One line of :class:`NumericalWarning` for each elementwise op of ``g`` whose code
    :func:`probe` finds unstable (each op is probed once per process)."""
    for name in sorted({g.nx.nodes[n]["op"] for n in g.nx} - set(registry.LEAVES)):
        op = registry.get(name)
        if not op.elementwise or op.expr is None or op.arity is None:
            continue
        if id(op) not in _seen:
            _seen[id(op)] = (op, probe(op))
        problems = _seen[id(op)][1]
        if problems:
            warnings.warn(f"op {name!r}: {'; '.join(problems)}. Write it in a stable form "
                          "(docs/formulas.md, 'Stable code')", NumericalWarning, stacklevel=3)
