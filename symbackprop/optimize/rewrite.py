"""Small graph surgery shared by the passes: rewire uses, drop nodes, dump text."""

from __future__ import annotations

from ..graph import Graph


def replace_uses(g: Graph, old: str, new: str) -> None:
    """Make every consumer of ``old`` use ``new`` instead, keeping argument positions."""
    for _, v, key, data in list(g.nx.out_edges(old, keys=True, data=True)):
        g.nx.remove_edge(old, v, key=key)
        g.nx.add_edge(new, v, key=data["arg"], arg=data["arg"])


def set_args(g: Graph, n: str, args: list[str]) -> None:
    """Replace the argument list of node ``n``."""
    for u, _, key in list(g.nx.in_edges(n, keys=True)):
        g.nx.remove_edge(u, n, key=key)
    for i, a in enumerate(args):
        g.nx.add_edge(a, n, key=i, arg=i)


def protected(g: Graph) -> set[str]:
    """Nodes a pass must keep under their names: outputs, inputs and parameters."""
    return set(g.outputs) | {n for n in g.nx if g.role(n) in ("input", "param")}


def changes(before: list[str], after: list[str]) -> tuple[list[str], list[str]]:
    """The lines of a :func:`dump` that a pass removed and those it added."""
    old, new = set(before), set(after)  # a list's `in` would make this quadratic
    return [ln for ln in before if ln not in new], [ln for ln in after if ln not in old]


def dump(g: Graph) -> list[str]:
    """One line per node, ``name = op(args) {attrs}``, in topological order."""
    lines = []
    for n in g.topo_order():
        d, role = g.nx.nodes[n], g.role(n)
        if role in ("input", "param"):
            lines.append(f"{n}: {role} {d['shape']}")
            continue
        if role == "const":
            lines.append(f"{n} = const {d['value']}")
            continue
        attrs = {k: v for k, v in d["attrs"].items() if v is not None}
        extra = f" {attrs}" if attrs else ""
        lines.append(f"{n} = {d['op']}({', '.join(g.args(n))}){extra}")
    return lines
