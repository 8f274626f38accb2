"""Gradient checkpointing: the backward pass recomputes forward values instead of keeping
them (Chen et al. 2016, "Training deep nets with sublinear memory cost").

A pass on the optimized joint graph, before code generation. The forward values the
backward reads are the ones a step keeps alive from the forward into the backward. Some
of them are kept (the *checkpoints*, segment boundaries); every other one gets a copy in
the backward phase (``recompute_of=<node>``), computed from the checkpoints and the leaves
by the same ops with the same attributes, and the backward nodes read the copy. The
forward value then dies at its last forward reader, and the memory planner
(:mod:`~symbackprop.codegen.plan`) reuses its bytes.

Where the copies go: they are added to the graph after every other node, the segments
nearest the loss first and each segment in forward order. ``Graph.topo_order`` takes, of
the ready nodes, the one inserted first, so a copy is computed only when the backward
sweep waits for it: each segment is recomputed just before its backward, and the
planner's liveness sees one segment's copies alive at a time.

The copies compute what the forward computed, from the same values, with the same code:
the gradients are bit-identical to the unchecked step's. An op that draws from the
generator or updates running statistics (dropout's mask, batch norm: a ``context`` in its
lowering) is never computed again: a second draw would be another mask, a second update
another running mean. Its value is always kept (:func:`stateful`).
"""

from __future__ import annotations

import math

from ..errors import GraphError
from ..graph import Graph
from .lowering import lowering

POLICIES = ("none", "sqrt")


def kept_values(j: Graph) -> list[str]:
    """The computed forward nodes the backward reads, in forward order: what a step keeps
    from its forward pass for its backward."""
    return [n for n in j.topo_order() if not j.is_leaf(n) and not j.is_backward(n)
            and any(j.is_backward(c) for c, _ in j.consumers(n))]


def stateful(j: Graph) -> set[str]:
    """The forward nodes whose code reads or changes state (a generator, running
    statistics): computing them again would not give the same value, so they are kept."""
    return {n for n in j.nx if not j.is_leaf(n) and not j.is_backward(n)
            and lowering(j.opdef(n)).context}


def loss_reads(j: Graph) -> set[str]:
    """The forward values the loss's own gradient reads (the logits): always kept, so that
    the loss and its gradient stay one call (``softmax_cross_entropy`` with its gradient;
    the training step's seed ``scale``) exactly as in the unchecked step."""
    sinks = {n for n in j.nx if not j.is_backward(n) and not j.is_leaf(n)
             and not any(not j.is_backward(c) for c, _ in j.consumers(n))}
    return {a for n in j.nx if j.is_backward(n) and j.vjp_of(n) in sinks
            for a in j.args(n) if not j.is_leaf(a) and not j.is_backward(a)}


def checkpoints(j: Graph, policy) -> list[str]:
    """The forward values kept under ``policy``: ``"sqrt"`` keeps every ⌈√n⌉-th of the
    n values the backward reads (so about √n segments of √n values each), a list keeps
    the nodes it names (each must be a forward value of the graph); the values the loss's
    gradient reads are kept in both (:func:`loss_reads`)."""
    kept = kept_values(j)
    top = loss_reads(j)
    if policy == "sqrt":
        rest = [n for n in kept if n not in top]
        k = max(1, math.ceil(math.sqrt(len(rest))))
        return rest[k - 1::k] + [n for n in kept if n in top]
    forward = {n for n in j.nx if not j.is_backward(n)}
    names = [policy] if isinstance(policy, str) else list(policy)
    for n in names:
        if n not in j.nx or n not in forward:
            raise GraphError(f"checkpoint node {n!r} is not in the graph. Name forward "
                             f"nodes, e.g. {', '.join(kept[:3]) or 'h1'}, or pass "
                             "checkpoint='sqrt' or 'none'.")
        if j.is_leaf(n):
            raise GraphError(f"checkpoint node {n!r} is a {j.role(n)}, which is never "
                             "recomputed. Name computed nodes, e.g. "
                             f"{', '.join(kept[:3]) or 'h1'}.")
    path = j.ancestors([a for a in j.nx if j.is_backward(a)])
    off = [n for n in names if n not in path]
    if off:
        raise GraphError(f"checkpoint node {off[0]!r} is not on the path to the gradients "
                         "(the backward never reads it, not even through other nodes). "
                         f"Name nodes the backward needs, e.g. {', '.join(kept[:3])}.")
    return names + sorted(top - set(names))


def check_policy(policy) -> None:
    """A ``checkpoint=`` argument is ``"none"``, ``"sqrt"``, node names separated by commas
    or a list of node names."""
    if not isinstance(policy, str) and not (
            isinstance(policy, (list, tuple)) and all(isinstance(n, str) for n in policy)):
        raise GraphError(f"checkpoint={policy!r}: expected 'none', 'sqrt' or a list of node "
                         "names.")


def apply_checkpoint(j: Graph, policy="none") -> tuple[Graph, dict]:
    """``j`` with the backward reading recomputed copies of the forward values ``policy``
    does not keep, and ``{copy: original}``; ``"none"`` gives ``j`` itself and ``{}``.

    Examples
    --------
    >>> from symbackprop.codegen.emit import prepare
    >>> j = sb.optimize.optimize(prepare(sb.models.mlp([4, 3, 3, 3, 2])).graph)
    >>> _, copies = apply_checkpoint(j, "sqrt")
    >>> sorted(copies.values())  # h2 and the logits kept, h1 and h3 computed again
    ['h1', 'h3', 'matmul_1', 'matmul_3']
    """
    if policy is None or (isinstance(policy, str) and policy == "none"):
        return j, {}
    check_policy(policy)
    if isinstance(policy, str) and policy != "sqrt":  # "h3" or "h3,h6": node names
        policy = [s.strip() for s in policy.split(",") if s.strip()]
    keep = set(checkpoints(j, policy)) | stateful(j)
    order = [n for n in j.topo_order() if not j.is_backward(n)]
    pos = {n: i for i, n in enumerate(order)}
    # the segment of a forward value: how many kept values come before it
    segment, k = {}, 0
    for n in order:
        segment[n] = k
        k += n in keep
    redo = [n for n in kept_values(j) if n not in keep]
    # the forward nodes to copy: the values redone and what they are computed from, back to
    # the kept values and the leaves
    need, todo = set(), list(redo)
    while todo:
        n = todo.pop()
        if n in need or n in keep or j.is_leaf(n):
            continue
        need.add(n)
        todo += j.args(n)
    if not need:
        return j, {}
    j = j.copy()
    copy_of: dict[str, str] = {}
    for n in sorted(need, key=lambda n: (-segment[n], pos[n])):
        name, i = f"{n}_r", 1
        while name in j.nx or name in copy_of.values():
            i += 1
            name = f"{n}_r{i}"
        copy_of[n] = name
        d = j.nx.nodes[n]
        # (not "fused": the nodes a fusion merged are the original's, named in comments)
        j.nx.add_node(name, **{**{k: v for k, v in d.items() if k != "fused"},
                               "phase": "backward", "recompute_of": n})
        for pos_, a in enumerate(j.args(n)):
            j.nx.add_edge(copy_of.get(a, a), name, key=pos_, arg=pos_)
    # the backward reads the copies (in insertion order, copies came after their arguments)
    for n in redo:
        for c, arg in j.consumers(n):
            if j.is_backward(c) and j.recompute_of(c) is None:
                j.nx.remove_edge(n, c, key=arg)
                j.nx.add_edge(copy_of[n], c, key=arg, arg=arg)
    return j, {c: n for n, c in copy_of.items()}


__all__ = ["POLICIES", "apply_checkpoint", "check_policy", "checkpoints", "kept_values",
           "stateful"]
