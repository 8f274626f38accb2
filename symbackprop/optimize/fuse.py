"""Elementwise fusion: a chain of elementwise nodes becomes one expression,
so the generated code computes it in one NumPy statement."""

from __future__ import annotations

import sympy as sp

from ..graph import Graph
from ..ops.elementwise import X
from ..ops.stable import stabilize
from .fold import scalar_value
from .rewrite import protected, set_args

MAX_OPS = 24  # keep fused statements short enough to read


def fusable(g: Graph, n: str) -> bool:
    """Whether node ``n`` is elementwise with code printed from its expression."""
    op = g.opdef(n)
    return op is not None and op.elementwise and not op.opaque


def _expand(g: Graph, n: str, into: str, keep: set, allow=None) -> tuple[sp.Expr, list[str]]:
    """Node ``n`` as an expression over the nodes it reads, inlining it if it is an
    elementwise node used only by ``into`` (and allowed), and scalar constants as numbers."""
    value = scalar_value(g, n)
    if value is not None:
        return value, []
    inline = (n not in keep and fusable(g, n) and (allow is None or allow(n))
              and {c for c, _ in g.consumers(n)} == {into})
    if not inline:
        # real, as the arguments they stand for: without it SymPy's tanh asks assumption
        # queries down every nested chain (seconds for a 40-node graph)
        s = sp.Dummy(n, real=True)
        return s, [(s, n)]
    syms, e = g.opdef(n).code_expr(g.nx.nodes[n]["attrs"])
    syms = tuple(syms) + X[len(syms):len(g.args(n))]  # an ew expression may skip its last args
    leaves = []
    subs = {}
    for sym, a in zip(syms, g.args(n)):
        v = scalar_value(g, a)
        if v is not None:
            subs[sym] = v
        else:
            subs[sym] = sp.Dummy(a, real=True)
            leaves.append((subs[sym], a))
    return e.xreplace(subs), leaves


def fuse(g: Graph) -> Graph:
    """Inline every elementwise node used only once into its elementwise consumer,
    and scalar constants into the expressions that use them.

    Examples
    --------
    >>> g = sb.Graph(); x = g.input("x", shape=(3,)); b = g.input("b", shape=(3,))
    >>> _ = g.output("h", sb.tanh(x * 2 + b))
    >>> f = sb.optimize.fuse(g)
    >>> f.args("h"), f.nx.nodes["h"]["attrs"]["expr"]
    (['x', 'b'], tanh(2*x0 + x1))
    """
    return fuse_in_place(g.copy())


def fuse_in_place(g: Graph, allow=None) -> Graph:
    """:func:`fuse` changing ``g`` itself (and returning it); ``allow(node)``, if given,
    says which nodes may take part."""
    keep = protected(g)
    for n in g.topo_order():
        if not fusable(g, n) or (allow is not None and not allow(n)):
            continue
        d = g.nx.nodes[n]
        syms, e = g.opdef(n).code_expr(d["attrs"])
        args = g.args(n)
        syms = tuple(syms) + X[len(syms):len(args)]  # kept: they may set the shape (x * 0)
        subs, leaves = {}, []
        for s, a in zip(syms, args):
            subs[s], found = _expand(g, a, n, keep, allow)
            leaves += found
        order = list(dict.fromkeys(a for _, a in leaves))  # one symbol per distinct node
        if len(order) > len(X) or order == args:
            continue
        fused = e.xreplace(subs)
        fused = fused.xreplace({s: X[order.index(a)] for s, a in leaves})
        if sp.count_ops(fused) > MAX_OPS:
            continue
        absorbed = [a for a in args if a not in order]
        d.update(op="ew", attrs={"expr": fused})
        d["fused"] = g.fused(n) + [x for a in absorbed  # with what they took in
                                   for x in [a, *g.fused(a)]]
        set_args(g, n, order)
        g.nx.remove_nodes_from([a for a in absorbed  # an output (dL = 1) stays
                                if g.nx.out_degree(a) == 0 and a not in keep])
    return g


def fuse_for_stability(g: Graph) -> Graph:
    """Merge, before differentiation, the elementwise chains whose merged expression has a
    stable form its parts do not (ops/stable.py): ``x / (1 + exp(-x))`` written as four
    nodes becomes one, computed as ``x * sigmoid(x)``, and SymPy differentiates it whole,
    so no backward line divides an overflowed ``exp(-x)`` by another. Other chains are
    left as they are (fused after differentiation, by :func:`fuse`), and ops whose
    derivative was declared (``relu``) never take part: merging would lose it.

    Examples
    --------
    >>> g = sb.parse("L = x / (1 + exp(-x))")
    >>> f = fuse_for_stability(g)
    >>> f.args("L"), f.nx.nodes["L"]["attrs"]["expr"]
    (['x'], x0/(1 + exp(-x0)))
    >>> len(fuse_for_stability(sb.models.mlp([4, 3, 2], activation="tanh"))) == len(
    ...     sb.models.mlp([4, 3, 2], activation="tanh"))
    True
    """
    def derived(n):
        return not g.opdef(n).grad_declared

    trial = fuse_in_place(g.copy(), derived)
    chosen = set()
    for n in trial.nx:
        expr = trial.nx.nodes[n]["attrs"].get("expr")
        if trial.fused(n) and stabilize(expr) != expr:
            chosen |= {n, *trial.fused(n)}
    if not chosen:
        return g
    return fuse_in_place(g.copy(), chosen.__contains__)
