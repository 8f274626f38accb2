"""Dead-code elimination: keep only what the outputs need."""

from __future__ import annotations

from ..graph import Graph


def dce(g: Graph) -> Graph:
    """Remove every node that no output depends on (inputs and parameters stay).

    Examples
    --------
    >>> g = sb.parse("a = 2*x; b = a + 3")
    >>> g.nx.graph["outputs"] = ["a"]
    >>> sb.optimize.dce(g).nodes()
    ['x', 'const_1', 'a']
    """
    return dce_in_place(g.copy())


def dce_in_place(g: Graph) -> Graph:
    """:func:`dce` changing ``g`` itself (and returning it)."""
    keep = g.ancestors(g.outputs)
    g.nx.remove_nodes_from([n for n in list(g.nx)
                            if n not in keep and g.role(n) not in ("input", "param")])
    return g
