"""Common-subexpression elimination: one node per distinct computation."""

from __future__ import annotations

import sympy as sp

from ..graph import Graph
from .rewrite import replace_uses


def _key(g: Graph, n: str):
    d, role = g.nx.nodes[n], g.role(n)
    if role in ("input", "param"):  # each is its own value
        return None
    if role == "const":
        v = d["value"]
        return ("const", d["shape"], repr(v) if not isinstance(v, sp.Basic) else sp.srepr(v))
    attrs = tuple(sorted((k, sp.srepr(v) if isinstance(v, sp.Basic) else repr(v))
                         for k, v in d["attrs"].items()))
    return (d["op"], tuple(g.args(n)), attrs)


def cse(g: Graph) -> Graph:
    """Merge nodes that apply the same op to the same arguments with the same attributes.

    The node kept is the first in topological order, unless the other one is an
    output, whose name must survive.

    Examples
    --------
    >>> g = sb.Graph(); x = g.input("x")
    >>> _ = g.output("y", sb.exp(x) + sb.exp(x))
    >>> [n for n in sb.optimize.cse(g).nodes() if n.startswith("exp")]
    ['exp_1']
    """
    return cse_in_place(g.copy())


def cse_in_place(g: Graph) -> Graph:
    """:func:`cse` changing ``g`` itself (and returning it)."""
    outputs = set(g.outputs)
    seen: dict = {}
    for n in g.topo_order():
        k = _key(g, n)
        if k is None:
            continue
        first = seen.get(k)
        if first is None:
            seen[k] = n
            continue
        if n in outputs and first in outputs:
            continue
        keep, drop = (n, first) if n in outputs or first not in outputs and (
            g.nx.nodes[first].get("auto") and not g.nx.nodes[n].get("auto")) else (first, n)
        if g.phase(drop) == "forward":  # computed in the forward pass
            g.nx.nodes[keep]["phase"] = "forward"
        replace_uses(g, drop, keep)
        g.nx.remove_node(drop)
        seen[k] = keep
    return g
