"""Constant folding: scalar constants are folded into elementwise expressions,
and elementwise nodes of constants become constants."""

from __future__ import annotations

import sympy as sp

from ..graph import Graph, dim_symbol
from ..ops.elementwise import X
from .dce import dce_in_place
from .rewrite import protected, replace_uses, set_args


def scalar_value(g: Graph, n: str):
    """The SymPy value of a scalar constant node, or None."""
    if g.role(n) != "const" or g.nx.nodes[n]["shape"] != ():
        return None
    v = sp.sympify(g.nx.nodes[n]["value"])
    return v.xreplace({s: dim_symbol(s.name) for s in v.free_symbols})


def fold(g: Graph) -> Graph:
    """Fold scalar constants into elementwise nodes and evaluate constant nodes.

    ``mul(dL, 1/N)`` with ``dL = 1`` becomes the constant ``1/N``; ``mul(d, 1/N)``
    becomes one ``ew`` node ``x0/N``; an expression reduced to one of its
    arguments (``x0*1``) is replaced by that argument.

    Examples
    --------
    >>> g = sb.parse("y = (x * 1) + 0")
    >>> sb.optimize.fold(g).args("y")
    ['x']
    """
    return fold_in_place(g.copy())


def fold_in_place(g: Graph) -> Graph:
    """:func:`fold` changing ``g`` itself (and returning it)."""
    keep = protected(g)
    for n in g.topo_order():
        d, op = g.nx.nodes[n], g.opdef(n)
        if op is None or not op.elementwise or op.opaque:
            continue
        args = g.args(n)
        consts = {i: scalar_value(g, a) for i, a in enumerate(args)}
        if not any(v is not None for v in consts.values()):
            continue
        syms, e = op.code_expr(d["attrs"])
        syms = tuple(syms) + X[len(syms):len(args)]  # an ew expression (0) may skip its last args
        e = e.xreplace({syms[i]: v for i, v in consts.items() if v is not None})
        rest = [a for i, a in enumerate(args) if consts[i] is None]
        old = [syms[i] for i in range(len(args)) if consts[i] is None]
        # Renumber the remaining arguments x0, x1, ... (one per distinct node).
        uniq = list(dict.fromkeys(rest))
        e = e.xreplace({s: X[uniq.index(a)] for s, a in zip(old, rest)})
        e = sp.sympify(e)
        if not uniq:  # all constants: the node is a constant
            if n in keep or d["shape"] != ():
                continue
            d.update(op="const", value=e, attrs={})
            set_args(g, n, [])
            continue
        if e in X and n not in keep and d["shape"] == g.nx.nodes[uniq[X.index(e)]]["shape"]:
            replace_uses(g, n, uniq[X.index(e)])  # x*1, x+0: the node is its argument
            g.nx.remove_node(n)
            continue
        d.update(op="ew", attrs={"expr": e})
        set_args(g, n, uniq)
    return dce_in_place(g)
