"""Optimization passes: each a function from graph to graph, tested alone.

``optimize(g, passes)`` runs them in order. Every pass keeps the graph's
outputs, inputs and parameters under their names, so the same code that
calls the unoptimized graph calls the optimized one.
"""

from __future__ import annotations

from ..graph import Graph
from .cse import cse
from .dce import dce
from .fold import fold
from .fuse import fuse
from .rewrite import dump
from .simplify import simplify

PASSES = {"simplify": simplify, "fold": fold, "cse": cse, "fuse": fuse, "dce": dce}
DEFAULT = ("simplify", "fold", "cse", "fuse", "dce")


def resolve(passes) -> tuple[str, ...]:
    """``True``/``None`` -> the default passes, ``False`` -> none, else the names given."""
    if passes is True or passes is None:
        return DEFAULT
    if passes is False:
        return ()
    names = tuple(p.strip() for p in (passes.split(",") if isinstance(passes, str) else passes)
                  if p and p.strip())
    for p in names:
        if p not in PASSES:
            from ..errors import GraphError

            raise GraphError(f"unknown pass {p!r}; choose from {', '.join(PASSES)}.")
    return names


def optimize(g: Graph, passes=True, explain: list | None = None) -> Graph:
    """Run the optimization passes on ``g`` (usually the joint forward+backward graph).

    Parameters
    ----------
    g : Graph
    passes : bool, str or sequence of str
        ``True`` for the default pipeline (simplify, fold, cse, fuse, dce),
        ``False`` for none, or pass names in order.
    explain : list, optional
        If given, receives ``(pass name, lines removed, lines added)`` per pass.

    Returns
    -------
    Graph

    Examples
    --------
    >>> g = sb.differentiate(sb.models.mlp([4, 3, 2]), of="L").graph
    >>> len(sb.optimize.optimize(g)) < len(g)
    True
    """
    for name in resolve(passes):
        before = dump(g) if explain is not None else None
        g = PASSES[name](g)
        if explain is not None:
            after = dump(g)
            explain.append((name, [ln for ln in before if ln not in after],
                            [ln for ln in after if ln not in before]))
    return g


__all__ = ["DEFAULT", "PASSES", "cse", "dce", "dump", "fold", "fuse", "optimize", "simplify"]
