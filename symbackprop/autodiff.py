"""Reverse mode, node by node.

The sweep walks the graph in reverse topological order, gives every node on
a path from a ``wrt`` node to the loss an adjoint node, and builds each
adjoint from its consumers' local VJP rules, summing where a node fans out.
The result is one *joint* graph holding the forward nodes and the adjoint
nodes, all ordinary ops, so it can be printed, optimized, rendered, turned
into code and differentiated again. Nothing here calls ``sympy.diff`` on a
whole expression: the adjoint graph grows linearly with the network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import islice

import networkx as nx

from .errors import GradError
from .graph import Graph, Node, fmt_shape, missing_node_message


@dataclass
class Adjoints:
    """The outcome of :func:`differentiate`.

    Attributes
    ----------
    graph : Graph
        The joint forward + backward graph, its nodes annotated (read them with the
        ``Graph`` accessors of the same names; :data:`symbackprop.graph.ANNOTATIONS`
        and docs/graph-schema.md list who writes and reads each): every node has
        ``phase`` (``"forward"`` or ``"backward"``); an adjoint node has
        ``adjoint_of=<node>``; a contribution of one consumer has ``grad_of=<node>``
        and ``via=<consumer>``; the nodes a VJP rule built have ``vjp_of=<node>``, the
        forward node whose rule it is.
    forward : Graph
        The graph that was differentiated.
    of : str
        The scalar being differentiated.
    wrt : list of str
        The nodes whose gradients were asked for.
    adjoint : dict
        Forward node -> name of the node holding dL/d(node) in ``graph``.
    contributions : dict
        Forward node -> list of ``(consumer, arg position, node)``: the terms
        summed into its adjoint, in the order of the sweep.
    order : list of str
        Forward nodes in the order the backward sweep visits them.
    """

    graph: Graph
    forward: Graph
    of: str
    wrt: list
    adjoint: dict = field(default_factory=dict)
    contributions: dict = field(default_factory=dict)
    order: list = field(default_factory=list)

    @property
    def outputs(self) -> dict:
        """``wrt`` name -> adjoint node name."""
        return {w: self.adjoint[w] for w in self.wrt}

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        """Jupyter display hook: the joint forward + backward diagram as SVG. (render
        is imported here, not at the top: autodiff comes before render.)"""
        from .render import mimebundle

        return mimebundle(self, include, exclude)


def default_of(g: Graph) -> str:
    """The scalar output to differentiate when none is named: the last scalar output."""
    scalars = [o for o in g.outputs if g.nx.nodes[o]["shape"] == ()]
    if not scalars:
        raise GradError(f"no scalar output to differentiate among {g.outputs}. "
                        "Pass of=<scalar node>, or reduce an output with sb.mean().")
    return scalars[-1]


def default_wrt(g: Graph) -> list[str]:
    """Parameters if there are any, else every float input."""
    params = g.nodes("param")
    return params or [n for n in g.nodes("input") if g.nx.nodes[n]["dtype"] == "float"]


def check_of_wrt(g: Graph, of: str | None, wrt) -> tuple[str, list[str]]:
    """Validate and fill in ``of`` and ``wrt``."""
    of = default_of(g) if of is None else of
    if of not in g:
        raise GradError(missing_node_message(g, of, "of=") + " Pass the name of the loss.")
    shape = g.nx.nodes[of]["shape"]
    if shape != ():
        raise GradError(f"loss {of!r} has shape {fmt_shape(shape)}, not a scalar. "
                        f"Reduce it with sb.mean() or sb.sum().")
    wrt = default_wrt(g) if wrt is None else [wrt] if isinstance(wrt, str) else list(wrt)
    for w in wrt:
        if w not in g:
            raise GradError(missing_node_message(g, w, "wrt") + " Pass names of graph nodes.")
        if g.nx.nodes[w]["dtype"] != "float":
            raise GradError(f"wrt {w!r} holds integers (e.g. labels); it has no gradient. "
                            "Remove it from wrt.")
    if len(set(wrt)) != len(wrt):
        raise GradError(f"wrt {wrt} names a node twice; list each once.")
    return of, wrt


def adjoint_name(j: Graph, node: str) -> str:
    """``dh1`` for ``h1``; made unique if the graph has such a node already."""
    base = "d" + node if node.isidentifier() else "d_" + node
    name, k = base, 1
    while name in j:
        k += 1
        name = f"{base}_{k}"
    return name


def differentiate(g: Graph, of: str | None = None, wrt=None) -> Adjoints:
    """Build the joint forward + backward graph of ``d of / d wrt``.

    Parameters
    ----------
    g : Graph
        The network.
    of : str, optional
        A scalar node; by default the last scalar output.
    wrt : str or list of str, optional
        Nodes to differentiate with respect to; by default the parameters
        (or, with none, the float inputs).

    Returns
    -------
    Adjoints

    Raises
    ------
    GradError
        If ``of`` is not a scalar, a name is missing, or an op with no
        derivative lies on a path from ``wrt`` to ``of``.

    Examples
    --------
    >>> g = sb.parse("a = 2*x; b = a + 3; c = b**2")
    >>> adj = sb.differentiate(g, of="c", wrt=["x"])
    >>> adj.adjoint["x"], adj.graph.args(adj.adjoint["x"])
    ('dx', ['db'])
    """
    of, wrt = check_of_wrt(g, of, wrt)
    j = g.copy()
    G = j.nx
    path = j.ancestors([of]) & j.descendants(wrt)
    # A mask (a comparison: OpDef.zero_grad) passes no gradient: the paths through it are cut
    cut = {n for n in path if (op := j.opdef(n)) is not None and op.zero_grad}
    if cut:
        sub = nx.subgraph_view(G, filter_node=lambda n: n not in cut)
        path &= {of, *nx.ancestors(sub, of)} & {
            d for w in wrt for d in (w, *nx.descendants(sub, w))}
    topo = j.topo_order()
    for n in topo:
        opdef = j.opdef(n)
        if n in path and n not in wrt and opdef is not None and not opdef.differentiable \
                and any(a in path for a in j.args(n)):
            raise GradError(f"node {n!r} uses op {opdef.name!r}, which has no derivative, on "
                            "the path "
                            f"from {', '.join(w for w in wrt if w in nx.ancestors(G, n))} to "
                            f"{of!r}. Compute it outside the graph and pass it as an input.")
    for n in G:
        G.nodes[n]["phase"] = "forward"

    adj = Adjoints(graph=j, forward=g, of=of, wrt=wrt)
    order = [n for n in reversed(topo) if n in path]  # the graph is as it was above
    adj.order = order

    def mark(start: int, **data):
        # the nodes added since start (networkx keeps nodes in a dict, in insertion order)
        for n in list(islice(reversed(G._node), len(G) - start)):
            G.nodes[n]["phase"] = "backward"
            for k, v in data.items():
                G.nodes[n].setdefault(k, v)

    holders: dict[str, set] = {}  # term node -> the nodes whose contributions list it
    for n in order:
        if n == of:
            start = len(G)
            node = j.const(1, name=adjoint_name(j, n))
            mark(start, adjoint_of=n)
        else:
            terms = [t for _, _, t in adj.contributions.get(n, [])]
            start = len(G)
            node = Node(j, terms[0])
            for t in terms[1:]:
                node = node + Node(j, t)
            mark(start, grad_of=n)
            if G.nodes[node.name].get("auto") and j.adjoint_of(node.name) is None:
                old, node = node.name, j.name(node, adjoint_name(j, n))
                for key in holders.pop(old, ()):  # keep term names current
                    adj.contributions[key] = [(c, i, node.name if t == old else t)
                                              for c, i, t in adj.contributions[key]]
            G.nodes[node.name].setdefault("adjoint_of", n)
        adj.adjoint[n] = node.name
        opdef = j.opdef(n)
        if opdef is None:  # a leaf
            continue
        args = j.args(n)
        if not any(a in path for a in args):
            continue
        start = len(G)
        outs = opdef.vjp(node, [Node(j, a) for a in args], Node(j, n), G.nodes[n]["attrs"])
        mark(start, vjp_of=n)
        for i, (a, t) in enumerate(zip(args, outs)):
            if t is not None and a in path:
                G.nodes[t.name].setdefault("grad_of", a)
                G.nodes[t.name].setdefault("via", n)
                adj.contributions.setdefault(a, []).append((n, i, t.name))
                holders.setdefault(t.name, set()).add(a)

    for w in wrt:
        if w not in adj.adjoint:  # the loss does not depend on w: its gradient is zero
            start = len(G)
            zero = j.apply("broadcast_to", [j.const(0.0)], {"shape": G.nodes[w]["shape"]},
                           name=adjoint_name(j, w))
            mark(start, adjoint_of=w)
            adj.adjoint[w] = zero.name
    G.graph["outputs"] = list(dict.fromkeys(g.outputs + [of] + [adj.adjoint[w] for w in wrt]))
    # VJP rules build terms for every argument; drop those no adjoint needs
    # (e.g. d(b**2)/d2, or dL/dX when X is data).
    keep = j.ancestors(G.graph["outputs"]) | set(adj.adjoint.values())
    G.remove_nodes_from([n for n in list(G) if j.is_backward(n) and n not in keep])
    for n, terms in adj.contributions.items():
        adj.contributions[n] = [t for t in terms if t[2] in G]
    return adj
