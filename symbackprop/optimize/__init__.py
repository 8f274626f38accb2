"""Optimization passes: each a function from graph to graph, tested alone.

``optimize(g, passes)`` runs them in order. Every pass keeps the graph's
outputs, inputs and parameters under their names, so the same code that
calls the unoptimized graph calls the optimized one.
"""

from __future__ import annotations

from ..graph import Graph
from .cse import cse, cse_in_place
from .dce import dce, dce_in_place
from .fold import fold, fold_in_place
from .fuse import fuse, fuse_in_place
from .rewrite import changes, dump
from .simplify import simplify, simplify_in_place

PASSES = {"simplify": simplify, "fold": fold, "cse": cse, "fuse": fuse, "dce": dce}
# The same passes rewriting the graph they are given: optimize() runs them on one copy,
# where a copy per pass would cost more than some of the passes do.
IN_PLACE = {"simplify": simplify_in_place, "fold": fold_in_place, "cse": cse_in_place,
            "fuse": fuse_in_place, "dce": dce_in_place}
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
        A new graph (``g`` itself when there are no passes); ``g`` is left unchanged.

    Examples
    --------
    >>> g = sb.differentiate(sb.models.mlp([4, 3, 2]), of="L").graph
    >>> len(sb.optimize.optimize(g)) < len(g)
    True
    """
    names = resolve(passes)
    if names:
        g = g.copy()
    for name in names:
        before = dump(g) if explain is not None else None
        g = IN_PLACE[name](g)
        if explain is not None:
            explain.append((name, *changes(before, dump(g))))
    return g


__all__ = ["DEFAULT", "PASSES", "changes", "cse", "dce", "dump", "fold", "fuse", "optimize", "simplify"]
