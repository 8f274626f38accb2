"""Algebraic simplification by rewrite rules.

The rules are data: ``(outer op, inner op, result)``. An optimizer pass
necessarily names the patterns it rewrites (as XLA's algebraic simplifier
does); the ops themselves stay declared once, in :mod:`symbackprop.ops`.

* ``log(softmax(x))`` -> ``log_softmax(x)``: stable, and its gradient
  ``g - softmax·sum(g)`` never divides by a probability;
* ``exp(log_softmax(x))`` -> ``softmax(x)``;
* ``transpose(transpose(x))`` -> ``x``; ``identity(x)`` -> ``x``.

The fused softmax + cross-entropy gradient ``(P - onehot(y)) / N`` needs no
rule: it is the VJP declared with ``softmax_cross_entropy``.
"""

from __future__ import annotations

from ..graph import Graph
from .dce import dce_in_place
from .rewrite import protected, replace_uses, set_args

# (outer op, inner op, replacement op or None for "the inner node's argument")
RULES = (
    ("log", "softmax", "log_softmax"),
    ("exp", "log_softmax", "softmax"),
    ("transpose", "transpose", None),
)


def simplify(g: Graph) -> Graph:
    """Apply :data:`RULES` and drop identity nodes, until nothing changes.

    Examples
    --------
    >>> g = sb.Graph(); z = g.input("z", shape=("N", 3))
    >>> _ = g.output("lp", sb.log(sb.softmax(z)))
    >>> g2 = sb.optimize.simplify(g)
    >>> g2.nx.nodes["lp"]["op"], g2.args("lp")
    ('log_softmax', ['z'])
    """
    return simplify_in_place(g.copy())


def simplify_in_place(g: Graph) -> Graph:
    """:func:`simplify` changing ``g`` itself (and returning it)."""
    keep = protected(g)
    changed = True
    while changed:
        changed = False
        for n in g.topo_order():
            if n not in g.nx:
                continue
            d = g.nx.nodes[n]
            args = g.args(n)
            if d["op"] == "identity" and n not in keep:
                replace_uses(g, n, args[0])
                g.nx.remove_node(n)
                changed = True
                continue
            if len(args) != 1 or args[0] not in g.nx:
                continue
            inner = g.nx.nodes[args[0]]
            for outer_op, inner_op, result in RULES:
                if d["op"] != outer_op or inner["op"] != inner_op:
                    continue
                if inner["attrs"].get("axes", None) is not None or d["attrs"].get("axes"):
                    continue  # only plain transposes cancel
                (x,) = g.args(args[0])
                if result is None:
                    if n in keep:
                        continue
                    replace_uses(g, n, x)
                    g.nx.remove_node(n)
                else:
                    d.update(op=result, attrs={"axis": inner["attrs"].get("axis", -1)})
                    set_args(g, n, [x])
                changed = True
                break
    return dce_in_place(g)
