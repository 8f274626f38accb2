"""The layers of a network, for per-layer measures (``sb.gradient_flow``) and the
training script's ``--log-grad-norms``.

Layers are the models' blocks (``sb.models.block``: ``layer1``, ``block2``, ...), in
forward order; a graph without blocks gets one layer per weight (a parameter of two or more
axes; with none, one per parameter), reaching through the ops after it (its bias) up to its
activation (a one-argument elementwise op).
"""

from __future__ import annotations

from dataclasses import dataclass

from .graph import Graph


@dataclass
class Layer:
    name: str
    members: list
    weights: list
    output: str | None
    activation: str | None  # a one-argument elementwise node of the layer


def _is_activation(g: Graph, n: str) -> bool:
    op = g.opdef(n)
    return op is not None and op.elementwise and op.arity == 1 and op.differentiable \
        and op.expr is not None and g.nx.nodes[n]["dtype"] == "float"


def _describe_layer(g: Graph, name: str, members: list, order: dict) -> Layer | None:
    members = sorted(members, key=order.__getitem__)
    params = [n for n in members if g.role(n) == "param"]
    if not params:
        return None
    weights = [p for p in params if len(g.nx.nodes[p]["shape"]) >= 2] or params
    inside = set(members)
    ops = [n for n in members if not g.is_leaf(n)]
    leaving = [n for n in ops if n in g.outputs or any(c not in inside for c, _ in g.consumers(n))]
    output = (leaving or ops or [None])[-1]
    acts = [n for n in ops if _is_activation(g, n)]
    return Layer(name, members, weights, output, acts[-1] if acts else None)


def layers(g: Graph) -> list[Layer]:
    """The layers of ``g`` in forward order: its blocks (the nodes' ``block``
    attribute), or one per weight for a graph without blocks.

    Examples
    --------
    >>> from symbackprop.layers import layers
    >>> [(s.name, s.weights, s.output, s.activation) for s in layers(sb.models.mlp([4, 3, 2]))]
    [('layer1', ['W1'], 'h1', 'h1'), ('layer2', ['W2'], 'logits', None)]
    """
    order = {n: i for i, n in enumerate(g.topo_order())}
    blocks: dict = {}
    for n, d in g.nx.nodes(data=True):
        if d.get("block") is not None:
            blocks.setdefault(d["block"], []).append(n)
    if not blocks:
        blocks = _layers_by_weight(g)
    found = [_describe_layer(g, b, ms, order) for b, ms in blocks.items()]
    found = [s for s in found if s is not None]
    return sorted(found, key=lambda s: min(order[n] for n in s.members if not g.is_leaf(n))
                  if any(not g.is_leaf(n) for n in s.members) else -1)


def _layers_by_weight(g: Graph) -> dict:
    """One layer per weight: the weight, then its first consumer and the ops after it
    that add a parameter or a constant (a bias), up to and with the first one-argument
    elementwise op (the activation); the bias joins the layer."""
    params = g.nodes("param")
    weights = [p for p in params if len(g.nx.nodes[p]["shape"]) >= 2] or params
    out = {}
    for w in weights:
        members, n = [w], w
        for _ in range(16):
            uses = g.consumers(n)
            if not uses:
                break
            n = uses[0][0]
            members.append(n)
            members += [a for a in g.args(n) if g.role(a) == "param" and a not in weights
                        and a not in members]
            if _is_activation(g, n) or not g.opdef(n).elementwise:
                if not _is_activation(g, n) and len(members) == 2:
                    continue  # the product itself: go on to its bias and activation
                break
        out[w] = members
    return out


__all__ = ["Layer", "layers"]
