"""Elementwise fusion: a chain of elementwise nodes becomes one expression,
so the generated code computes it in one NumPy statement."""

from __future__ import annotations

import sympy as sp

from ..graph import Graph
from ..ops import registry
from ..ops.elementwise import X
from .rewrite import protected, set_args

MAX_OPS = 24  # keep fused statements short enough to read


def fusable(g: Graph, n: str) -> bool:
    d = g.nx.nodes[n]
    if d["op"] in registry.LEAVES:
        return False
    op = registry.get(d["op"])
    return op.elementwise and op.numpy is None


def fuse(g: Graph) -> Graph:
    """Inline every elementwise node used once into its elementwise consumer.

    Examples
    --------
    >>> g = sb.Graph(); x = g.input("x", shape=(3,)); b = g.input("b", shape=(3,))
    >>> _ = g.output("h", sb.tanh(x * 2 + b))
    >>> f = sb.optimize.fuse(g)
    >>> f.args("h"), f.nx.nodes["h"]["attrs"]["expr"]
    (['x', 'b'], tanh(2*x0 + x1))
    """
    g = g.copy()
    keep = protected(g)
    for n in g.topo_order():
        if not fusable(g, n):
            continue
        d = g.nx.nodes[n]
        syms, e = registry.get(d["op"]).code_expr(d["attrs"])
        args = g.args(n)
        parts: list[tuple[str, sp.Expr]] = []  # (node, expression in its own args)
        new_args: list[str] = []
        for s, a in zip(syms, args):
            inner = [c for c, _ in g.consumers(a)]
            if a not in keep and fusable(g, a) and set(inner) == {n}:
                ad = g.nx.nodes[a]
                asyms, ae = registry.get(ad["op"]).code_expr(ad["attrs"])
                parts.append((s, ae, g.args(a), asyms))
            else:
                parts.append((s, s, [a], [s]))
        # Build the fused expression with one symbol per distinct argument node.
        subs = {}
        for s, ae, aargs, asyms in parts:
            local = {}
            for sym, a in zip(asyms, aargs):
                if a not in new_args:
                    new_args.append(a)
                local[sym] = sp.Symbol(f"_t{new_args.index(a)}")
            subs[s] = ae.subs(local, simultaneous=True) if ae is not s else local[s]
        if len(new_args) > len(X) or new_args == args:
            continue
        fused = e.subs(subs, simultaneous=True)
        fused = fused.subs({sp.Symbol(f"_t{i}"): X[i] for i in range(len(new_args))},
                           simultaneous=True)
        if sp.count_ops(fused) > MAX_OPS:
            continue
        absorbed = [a for a in args if a not in new_args]
        d.update(op="ew", attrs={"expr": fused})
        d["fused"] = list(d.get("fused", [])) + absorbed
        set_args(g, n, new_args)
        g.nx.remove_nodes_from([a for a in absorbed if g.nx.out_degree(a) == 0])
    return g
