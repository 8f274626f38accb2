"""Graphviz diagrams of networks, of their backward (adjoint) graphs and of derivations.

:func:`render` returns a :class:`graphviz.Digraph`; :func:`to_dot` its source (no
``dot`` program needed); :func:`write_diagram` runs Graphviz's ``dot`` to write SVG,
PNG or PDF by the file's extension (or writes DOT).

The views
---------
``forward``
    The network, left to right: inputs (blue ovals), parameters (amber boxes),
    constants (small grey boxes) and ops (green rounded boxes, written as formulas:
    ``z1 = X @ W1 + b1``), with shapes such as ``(N, 784)``. Edges go in argument
    order and carry the argument position where order matters (``sub``, ``matmul``).
``backward``
    The adjoint graph (red): one node ``∂L/∂h1`` per forward node, flowing right to
    left, each linked by a dashed edge to the node it is the gradient of; the
    forward nodes it mirrors or reads are drawn faint.
``joint``
    Both graphs in full: the forward graph on top, the backward sweep below it and
    reversed, each adjoint under its node, grey edges where the backward graph reads
    forward values.
``derivation``
    The chain rule at a point (from ``sb.derive``): every node shows its formula and
    value (blue) and its gradient (red, as the product of the local factors); red
    arrows flowing right to left carry each local derivative, formula and number.

Any view can be coloured by gradient magnitude (``grads=``: pale where gradients
vanish, red where they explode, with a legend). Blocks of nodes (``sb.models.mlp``
tags each layer ``layer1``, ``layer2``, ...) can be collapsed into one summary node
each, inside a cluster (``collapse=``), or only grouped in clusters (``group=``).

This module only lays diagrams out: which nodes and edges a view shows, their
ranks, clusters and colours. Every text it writes (a node's formula, a value, a
gradient, a local derivative, a caption) comes from :mod:`symbackprop.display.labels`,
which writes numbers by the same rule as a derivation's text. :func:`drawable` is the
one place where a plain network is differentiated or derived for a view;
:func:`render` tells its inputs apart by type.

Node names reach DOT only as escaped HTML-like labels; node IDs are the names when
they are plain ASCII identifiers, else ``_n<index>``, so any name is safe.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from pathlib import Path

import graphviz
import numpy as np

from .autodiff import Adjoints, differentiate
from .derivation import Derivation, derive
from .display import labels, special, text
from .display.labels import NodeText, colored, esc, html, small
from .errors import GraphError, GraphvizError, GraphvizNotFoundError
from .flow import FlowReport
from .formulas import Gradients
from .graph import Graph

KINDS = ("forward", "backward", "joint", "derivation")
FORMATS = ("svg", "png", "pdf", "dot")
INSTALL_HINT = ("Install Graphviz: 'sudo apt-get install graphviz' (Debian/Ubuntu), "
                "'brew install graphviz' (macOS) or see https://graphviz.org/download/.")


# -- markup and identifiers -------------------------------------------------------------------
def _uncolored(label: str) -> str:
    """The label in the node's font colour (on a gradient fill, fixed colours may vanish)."""
    return re.sub(r' COLOR="#[0-9a-f]{6}"', "", label)


_SAFE_ID = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def _safe(name: str) -> str:
    """An identifier for graph and cluster names, from any string."""
    s = re.sub(r"\W", "_", str(name), flags=re.ASCII).strip("_")
    return s if _SAFE_ID.fullmatch(s or "") else "g_" + s


def node_ids(g: Graph) -> dict:
    """``{node: DOT ID}``: the name where it is a plain ASCII identifier, else
    ``_n<index>``. Graphviz writes the ID as the ``<title>`` of the node's ``<g>`` in SVG,
    which is how a page finds a node (the report page's highlighting).

    Examples
    --------
    >>> from symbackprop.render import node_ids
    >>> node_ids(sb.parse("a = 2*x"))
    {'x': 'x', 'const_1': 'const_1', 'a': 'a'}
    """
    return {n: n if _SAFE_ID.fullmatch(str(n)) else f"_n{i}" for i, n in enumerate(g.nx)}


# -- the style table ----------------------------------------------------------------------
FONT = "DejaVu Sans"
COLORS = {"value": "#1d4ed8", "grad": "#b91c1c", "muted": "#6b7280", "backward": "#be123c",
          "read": "#9ca3af", "forward": "#374151", "faint": "#d1d5db"}
STYLE = {  # one entry per role; _attrs_<role> adds the label
    "input": {"shape": "ellipse", "style": "filled", "fillcolor": "#dbeafe",
              "color": "#1d4ed8"},
    "param": {"shape": "box", "style": "filled", "fillcolor": "#fef3c7", "color": "#b45309",
              "penwidth": "1.4"},
    "const": {"shape": "box", "style": "rounded,filled", "fillcolor": "#f3f4f6",
              "color": "#9ca3af", "fontsize": "10", "margin": "0.05,0.02", "height": "0.3",
              "width": "0.3"},
    "op": {"shape": "box", "style": "rounded,filled", "fillcolor": "#ecfdf5",
           "color": "#047857"},
    "adjoint": {"shape": "box", "style": "rounded,filled", "fillcolor": "#ffe4e6",
                "color": "#be123c", "penwidth": "1.6", "fontcolor": "#881337"},
    "backward": {"shape": "box", "style": "rounded,filled", "fillcolor": "#fff1f2",
                 "color": "#fda4af", "fontcolor": "#881337", "fontsize": "11"},
    # a forward node computed again in the backward (gradient checkpointing): the forward's
    # colours, dashed
    "recomputed": {"shape": "box", "style": "rounded,dashed,filled", "fillcolor": "#ecfdf5",
                   "color": "#047857", "fontcolor": "#065f46", "fontsize": "11"},
    "ghost": {"style": "rounded,dashed", "color": "#9ca3af", "fontcolor": "#6b7280",
              "fillcolor": "white"},
    "block": {"shape": "box", "style": "rounded,filled", "fillcolor": "#ecfdf5",
              "color": "#047857", "penwidth": "1.6"},
    "block_backward": {"shape": "box", "style": "rounded,filled", "fillcolor": "#ffe4e6",
                       "color": "#be123c", "penwidth": "1.6", "fontcolor": "#881337"},
}
GRAPH_ATTRS = {"rankdir": "LR", "bgcolor": "white", "fontname": FONT, "nodesep": "0.25",
               "ranksep": "0.4", "newrank": "true"}
# Reds, pale to dark: gradient magnitude from vanishing to exploding.
_REDS = ("#fff5f0", "#fee0d2", "#fcbba1", "#fc9272", "#fb6a4a", "#ef3b2c", "#cb181d", "#99000d")
GRAD_SCALE = (1e-6, 1e2)  # max|grad| at the pale and at the red end
VANISHING = 1e-4  # below this, text turns grey too


def _heat(m: float, scale=GRAD_SCALE) -> tuple[str, str]:
    """Fill and font colour for a gradient of largest magnitude ``m``."""
    lo, hi = (math.log10(s) for s in scale)
    t = 0.0 if m <= 0 else min(max((math.log10(m) - lo) / (hi - lo), 0.0), 1.0)
    pos = t * t * (len(_REDS) - 1)  # squared: gradients near 1 stay light, large ones red
    i = min(int(pos), len(_REDS) - 2)
    a, b = (tuple(int(c[k:k + 2], 16) for k in (1, 3, 5)) for c in _REDS[i:i + 2])
    rgb = tuple(round(x + (y - x) * (pos - i)) for x, y in zip(a, b))
    fill = "#" + "".join(f"{c:02x}" for c in rgb)
    font = "#ffffff" if t > 0.8 else "#9ca3af" if m < VANISHING else "#111827"
    return fill, font


def _magnitude(v) -> float:
    """The largest |entry|; ∞ for a value that is not finite (drawn as exploding)."""
    if special(v) is not None:
        return math.inf
    a = np.abs(np.asarray(v, dtype=float))
    return float(a.max()) if a.size else 0.0


# -- the views ----------------------------------------------------------------------------
class _Diagram:
    """Builds one Digraph; ``_attrs_<role>(node)`` gives each node's attributes."""

    def __init__(self, g: Graph, kind: str, adjoint: dict | None = None, of: str | None = None,
                 grads: dict | None = None, blocks: dict | None = None, derivation=None,
                 title: str | None = None, collapse: bool = False,
                 deltas: dict | None = None, flow=None):
        self.g, self.G, self.kind = g, g.nx, kind
        self.order = {n: i for i, n in enumerate(g.nx)}
        self.ids = node_ids(g)
        # adjoint node -> the forward nodes it is the gradient of
        self.gradient_of: dict[str, list[str]] = {}
        for n, a in (adjoint or {}).items():
            self.gradient_of.setdefault(a, []).append(n)
        for n in g.nx:
            if g.adjoint_of(n) is not None and n not in self.gradient_of:
                self.gradient_of[n] = [g.adjoint_of(n)]
        self.of = of or next((v[0] for k, v in self.gradient_of.items()
                              if g.role(k) == "const"), None)
        self.grads, self.blocks, self.der, self.title = grads or {}, blocks or {}, derivation, title
        self.collapse, self.deltas = collapse, deltas or {}
        self.flow, self.runs = flow, {}  # a FlowReport; merged block -> the blocks it stands for
        self.labels = NodeText(g, self.gradient_of)  # every text of a node, from display

    # -- which role a node is drawn in ------------------------------------------------------
    def backward(self, n) -> bool:
        return self.g.is_backward(n)

    def role(self, n) -> str:
        if self.backward(n):
            if self.g.recompute_of(n) is not None:
                return "recomputed"
            return "adjoint" if n in self.gradient_of else \
                "const" if self.g.role(n) == "const" else "backward"
        if self.kind == "backward":
            return "ghost"
        return self.g.role(n)

    # -- node attributes, one method per role ----------------------------------------------
    def attrs(self, n) -> dict:
        role = self.role(n)
        out = dict(STYLE["ghost" if role == "ghost" else role])
        if role == "ghost":
            out["shape"] = STYLE[self.g.role(n)]["shape"]
        out.update(getattr(self, f"_attrs_{role}")(n))
        if n in self.g.outputs and not self.backward(n):
            out["peripheries"] = "2"
        heat = self._heat_for([n])
        if heat is not None:
            out["fillcolor"], out["fontcolor"] = heat
            out["style"] = out["style"].replace("dashed", "").strip(",") + ",filled"
            out["label"] = _uncolored(out["label"])
        return out

    def _shape_line(self, n, name: str | None = None) -> str:
        shape = labels.shape(self.G.nodes[n]["shape"])
        parts = ([esc(name)] if name else []) + ([esc(shape)] if shape else [])
        return small(" · ".join(parts)) if parts else ""

    def _attrs_input(self, n) -> dict:
        return {"label": html(self._title(n, f"<B>{esc(n)}</B>"), self._shape_line(n),
                              self._grad_line(n))}

    _attrs_param = _attrs_input

    def _attrs_const(self, n) -> dict:
        if self.G.nodes[n]["shape"] == ():
            return {"label": html(esc(self.labels.constant(n)))}
        return {"label": html(f"<B>{esc(n)}</B>", self._shape_line(n))}

    def _attrs_op(self, n) -> dict:
        rhs = esc(self.labels.formula(n)[0])
        named = not self.G.nodes[n].get("auto")
        title = f"<B>{esc(n)}</B> = {rhs}" if named else rhs
        note = None if named or self.der is not None else n  # an unnamed node's own name
        return {"label": html(self._title(n, title), self._shape_line(n, note),
                              self._grad_line(n))}

    def _attrs_ghost(self, n) -> dict:
        named = not self.G.nodes[n].get("auto") or self.g.is_leaf(n)
        title = esc(n) if named else esc(self.labels.formula(n)[0])
        return {"label": html(title, self._shape_line(n)), "fontsize": "11"}

    def _attrs_adjoint(self, n) -> dict:
        of = self.of or "L"
        head = " = ".join(esc(labels.partial(of, self.labels.name(f)))
                          for f in self.gradient_of[n])
        body = ""
        if not self.g.is_leaf(n):
            body = f"{esc(n)} = {esc(self.labels.formula(n)[0])}"
        elif self.g.role(n) == "const":
            body = f"{esc(n)} = {esc(self.labels.constant(n))}"
        deltas = [f"{esc(labels.partial(of, self.labels.name(f)))} = {esc(self.deltas[f])}"
                  for f in self.gradient_of[n] if f in self.deltas]
        return {"label": html(f"<B>{head}</B>", body, *deltas, self._shape_line(n))}

    def _attrs_recomputed(self, n) -> dict:
        return {"label": html(esc(self.labels.formula(n)[0]),
                              small(esc(f"{self.g.recompute_of(n)} again (checkpointing)")),
                              self._shape_line(n, n))}

    def _attrs_backward(self, n) -> dict:
        return {"label": html(esc(self.labels.formula(n)[0]), self._shape_line(n, n))}

    # -- derivation values and gradients -----------------------------------------------------
    def _title(self, n, title: str) -> str:
        if self.der is None or n not in self.der.values:
            return title
        value = f"<B>{esc(labels.value(self.der.values[n]))}</B>"
        return f"{title} = {colored(value, COLORS['value'])}"

    def _grad_line(self, n) -> str:
        if self.der is not None:
            step = self.steps.get(n)
            if step is None:
                return ""
            head, chain, value = self.labels.gradient(self.der.of, n, step)
            if step.grad_value is None:  # no point given: the formula, in δ-form
                return colored(f"{esc(head)} = {esc(value)}", COLORS["grad"])
            body = f"{esc(chain)} = <B>{esc(value)}</B>" if chain else f"<B>{esc(value)}</B>"
            return colored(f"{esc(head)} = {body}", COLORS["grad"])
        if n in self.grads and self.kind != "backward":
            m = labels.magnitude(self.of or "L", self.labels.name(n), _magnitude(self.grads[n]))
            return small(esc(m), COLORS["grad"])
        return ""

    def _heat_for(self, nodes):
        """Colours for the largest gradient among ``nodes`` (an adjoint counts as the
        nodes it is the gradient of), or ``None`` when no gradient is given."""
        keys = [k for n in nodes for k in (self.gradient_of.get(n, []) if self.backward(n) else [n])]
        vals = [self.grads[k] for k in keys if k in self.grads]
        return _heat(max(_magnitude(v) for v in vals)) if vals else None

    # -- the whole picture ------------------------------------------------------------------
    def nodes(self) -> list[str]:
        names = list(self.G)
        if self.kind == "forward":
            return [n for n in names if not self.backward(n)]
        if self.kind != "backward":
            return names
        back = [n for n in names if self.backward(n)]
        keep = {f for n in back for f in self.gradient_of.get(n, [])}
        keep |= {a for n in back for a in self.g.args(n) if not self.backward(a)}
        return [n for n in names if self.backward(n) or n in keep]

    def build(self) -> graphviz.Digraph:
        if self.der is not None:
            self.steps = {s.node: s for s in self.der.steps}
        dot = graphviz.Digraph(name=_safe(self.G.graph.get("name") or "network"),
                               graph_attr=dict(GRAPH_ATTRS),
                               node_attr={"fontname": FONT, "fontsize": "12"},
                               edge_attr={"fontname": FONT, "fontsize": "10",
                                          "arrowsize": "0.7"})
        key = "" if self.der is None else small(labels.derivation_key(
            lambda s: colored(esc(s), COLORS["value"]),
            lambda s: colored(esc(s), COLORS["grad"])), size=11)
        notes = [] if self.der is None else [  # values at the edge of a domain, explained
            small(esc(labels.warning(w)), COLORS["grad"], size=11) for w in self.der.warnings]
        if self.title or key:
            dot.attr(label=html(esc(self.title or ""), key, *notes), labelloc="t",
                     fontsize="14")
        shown = self.nodes()
        groups: dict = {}
        for n in shown:
            groups.setdefault(self._block(n), []).append(n)
        if self.flow is not None and self.collapse:
            groups = self._merge_repeats(groups)
        # What stands for each node: itself, or its (collapsed) block's summary node.
        self.rep = {n: self.ids[n] for n in shown}
        number = {b: i for i, b in enumerate(b for b in groups if b is not None)}
        if self.collapse:
            for block, members in groups.items():
                for n in members if block is not None else []:
                    side = "backward" if self.backward(n) else "forward"
                    self.rep[n] = f"_b{number[block]}_{side}"
        # (forward, adjoint) links, and the pairs drawn in one column
        links = list(dict.fromkeys(
            (self.rep[f], self.rep[a]) for a in shown for f in self.gradient_of.get(a, [])
            if f in self.rep and self.rep[f] != self.rep[a]))
        pairs = list(dict.fromkeys(
            (self.rep[fs[0]], self.rep[a]) for a in shown for fs in [self.gradient_of.get(a)]
            if fs and fs[0] in self.rep and self.rep[fs[0]] != self.rep[a]))
        self.beside = set(pairs)
        for block, members in groups.items():
            if block is None:
                self._emit(dot, members, pairs)
                continue
            with dot.subgraph(name=f"cluster_{number[block]}_{_safe(block)}") as c:
                c.attr(label=html(f"<B>{esc(block)}</B>", self._block_note(members)),
                       style="rounded,dashed", color="#9ca3af", fontcolor="#374151",
                       fontsize="11", labeljust="l")
                self._emit(c, members, pairs, block)
        self._edges(dot, shown)
        for f, a in links:
            dot.edge(f, a, style="dashed", color=COLORS["backward"], arrowhead="none",
                     penwidth="1.2")
        if self.grads:
            self._legend(dot)
        return dot

    # -- repeated layers: one cluster with a gradient strip ------------------------------------
    def _signature(self, members) -> tuple:
        """What makes two blocks the same layer: each member's role, op, attributes and
        shape, and where its arguments come from (a member, or a node outside of some
        role, op and shape), with the names left out."""
        index = {n: i for i, n in enumerate(members)}

        def node(n):
            d = self.G.nodes[n]
            return (self.g.role(n), d.get("op"), repr(sorted(d.get("attrs", {}).items())),
                    tuple(d["shape"]))
        return tuple((*node(n), tuple(("in", index[a]) if a in index else ("out", *node(a))
                                      for a in self.g.args(n))) for n in members)

    def _merge_repeats(self, groups: dict) -> dict:
        """Runs of three or more consecutive blocks of the same structure become one group,
        keyed ``layers 2..50`` by their numbers among the flow's layers."""
        number = {s.name: i for i, s in enumerate(self.flow.layers, 1)}
        keys = list(groups)
        sigs = {b: self._signature([n for n in groups[b] if not self.backward(n)])
                for b in keys if b is not None}
        out, i = {}, 0
        while i < len(keys):
            b, j = keys[i], i + 1
            while b is not None and j < len(keys) and keys[j] is not None \
                    and sigs[keys[j]] == sigs[b] and keys[j] in number and b in number:
                j += 1
            run = keys[i:j]
            if len(run) >= 3:
                key = f"layers {number[run[0]]}..{number[run[-1]]}"
                self.runs[key] = run
                out[key] = [n for r in run for n in groups[r]]
            else:
                out.update({r: groups[r] for r in run})
            i = j
        return out

    def _strip(self, run) -> str:
        """A row of small cells, one per layer of ``run``, coloured by max|∂L/∂W| as
        the legend says, and a line naming the smallest and largest."""
        by_name = {s.name: s for s in self.flow.layers}
        vals = [by_name[b].grad_max for b in run]
        cells = "".join(f'<TD BGCOLOR="{_heat(v)[0]}" WIDTH="6" HEIGHT="14" FIXEDSIZE="TRUE">'
                        f" </TD>" for v in vals)
        of = self.of or "L"
        words = labels.strip(of, run[0], vals[0], run[-1], vals[-1])
        return (f'<TABLE BORDER="1" COLOR="#9ca3af" CELLBORDER="0" CELLSPACING="0" '
                f'CELLPADDING="0"><TR>{cells}</TR></TABLE></TD></TR><TR><TD>'
                f"{small(esc(words), COLORS['grad'])}")

    def _block(self, n):
        if n in self.blocks:
            return self.blocks[n]
        for key in (self.gradient_of.get(n, [None])[0], self.g.vjp_of(n), self.g.grad_of(n)):
            if key is not None and key in self.blocks:
                return self.blocks[key]
        return None

    def _block_note(self, members) -> str:
        count = sum(int(np.prod(self.G.nodes[n]["shape"])) for n in members
                    if self.g.role(n) == "param"
                    and all(isinstance(s, int) for s in self.G.nodes[n]["shape"]))
        return small(esc(labels.parameters(count))) if count else ""

    def _emit(self, dot, members, pairs, block=None) -> None:
        if self.collapse and block is not None:
            fwd = [n for n in members if not self.backward(n)]
            bwd = [n for n in members if self.backward(n)]
            for part, role in ((fwd, "block"), (bwd, "block_backward")):
                if part:
                    dot.node(self.rep[part[0]], **self._attrs_summary(part, role, block))
        else:
            for n in members:
                dot.node(self.ids[n], **self.attrs(n))
        here = {self.rep[n] for n in members}
        for f, a in pairs:  # each adjoint in the rank (column) of its forward node
            if f in here and a in here:
                with dot.subgraph() as s:
                    s.attr(rank="same")
                    s.node(f)
                    s.node(a)

    def _attrs_summary(self, members, role, block=None, sized=True) -> dict:
        """A collapsed block: one line per named op (adjoint) node, then its parameters.
        A run of repeated layers shows its first layer, the count and the gradient strip."""
        run = self.runs.get(block)
        if run is not None:
            first = [n for n in members if self._block(n) == run[0]]
            out = self._attrs_summary(first, role, sized=False)  # the strip gives the sizes
            body = out["label"][1:-1]
            rows = [body, small(esc(labels.repeated(run[0], run[-1], len(run))))]
            strip = self._strip(run) if role == "block" else ""
            out["label"] = ('<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="2" CELLPADDING="0">'
                            + "".join(f"<TR><TD>{r}</TD></TR>" for r in rows)
                            + (f"<TR><TD>{strip}</TD></TR>" if strip else "") + "</TABLE>>")
            heat = self._heat_for(members)
            if heat is not None:
                out["fillcolor"], out["fontcolor"] = heat
            return out
        lines = []
        for n in members:
            if not self.g.is_leaf(n) and (not self.G.nodes[n].get("auto")
                                          or self.labels.ref(n) == n):
                lines.append(f"{esc(n)} = {esc(self.labels.formula(n)[0])}")
            elif role == "block_backward" and n in self.gradient_of and self.g.is_leaf(n):
                lines.append(f"{esc(n)} = {esc(self.labels.ref(n))}")
        shapes = [f"{n} {labels.shape(self.G.nodes[n]['shape'])}" for n in members
                  if self.g.role(n) == "param"]
        last = labels.shape(self.G.nodes[members[-1]]["shape"])
        out_shape = f" → {last}" if role == "block" and last else ""
        keys = [n for n in members if n in self.grads and role == "block" and sized]
        size = "" if not keys else labels.magnitude(
            self.of or "L", "·", max(_magnitude(self.grads[k]) for k in keys))
        size = small(esc(size), COLORS["grad"]) if size else ""
        out = dict(STYLE[role])
        shapes = ", ".join(shapes) + out_shape
        out["label"] = html(*lines, small(esc(shapes)) if shapes else "", size)
        heat = self._heat_for(members)
        if heat is not None:
            out["fillcolor"], out["fontcolor"] = heat
            out["label"] = _uncolored(out["label"])
        return out

    def _labelled(self, v) -> bool:
        return len(self.g.args(v)) > 1 and not self.g.opdef(v).commutative

    def _edges(self, dot, shown) -> None:
        terms = {}
        if self.der is not None:
            for s in self.der.steps:
                for t in s.terms:
                    terms[(s.node, t.consumer, t.arg)] = t
        seen = set()
        for v in shown:
            for i, u in enumerate(self.g.args(v)):
                if u not in self.rep:
                    continue
                iu, iv = self.rep[u], self.rep[v]
                if iu == iv or (iu, iv, iv != self.ids[v] or i) in seen:
                    continue  # inside one collapsed block, or the same block edge again
                seen.add((iu, iv, iv != self.ids[v] or i))
                labelled = self._labelled(v) and iv == self.ids[v]
                label = {"label": html(small(str(i + 1)))} if labelled else {}
                if self.backward(u) and self.backward(v):  # reversed: flows right to left
                    dot.edge(iv, iu, dir="back", color=COLORS["backward"], **label)
                elif self.backward(v):
                    ports = {"tailport": "se", "headport": "ne"} if (iu, iv) in self.beside else {}
                    dot.edge(iu, iv, color=COLORS["read"], constraint="false", **label, **ports)
                elif self.kind == "backward":
                    dot.edge(iu, iv, color=COLORS["faint"])
                else:
                    dot.edge(iu, iv, color=COLORS["forward"], **label)
                t = terms.get((u, v, i))
                if t is not None:
                    dot.edge(iu, iv, dir="back", color=COLORS["grad"], fontcolor=COLORS["grad"],
                             label=html(esc(self.labels.local(self.der.of, u, v, t))),
                             penwidth="1.2",
                             fontsize="11")

    def _legend(self, dot) -> None:
        of = self.of or (self.der.of if self.der is not None else "L")
        lo, hi = GRAD_SCALE
        marks = labels.legend(lo, VANISHING, 1e-2, hi)
        rows = "".join(
            f'<TR><TD BGCOLOR="{_heat(m)[0]}" WIDTH="24"> </TD>'
            f'<TD ALIGN="LEFT"><FONT POINT-SIZE="10">{esc(words)}</FONT></TD></TR>'
            for m, words in marks)
        label = (f'<<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="0" CELLPADDING="3" '
                 f'COLOR="#d1d5db"><TR><TD COLSPAN="2"><FONT POINT-SIZE="10">'
                 f"<B>{esc(labels.largest(of, '·'))}</B></FONT></TD></TR>{rows}</TABLE>>")
        dot.node("_legend", label=label, shape="plaintext")


# -- the public functions --------------------------------------------------------------------
def _blocks(g: Graph, spec, option: str) -> dict:
    """``{node: block}`` from ``collapse=``/``group=``: True (the nodes' ``block``
    attribute) or a dict ``{node: block}`` or ``{block: [nodes]}``."""
    if not spec:
        return {}
    if spec is True:
        return {n: d["block"] for n, d in g.nx.nodes(data=True) if d.get("block") is not None}
    if isinstance(spec, dict):
        out = {}
        for k, v in spec.items():
            if isinstance(v, (list, tuple, set, frozenset)):
                out.update({n: k for n in v})
            else:
                out[k] = v
        missing = [n for n in out if n not in g]
        if missing:
            raise GraphError(f"{option}= names {missing[0]!r}, which is not in the graph. "
                             "Map node names to block names, or block names to lists of nodes.")
        return out
    raise GraphError(f"{option}={spec!r}: expected True (use the nodes' 'block' "
                     "attribute) or a dict {node: block} or {block: [nodes]}.")


def render(obj, kind: str | None = None, *, of: str | None = None, wrt=None, at=None,
           grads=None, collapse=None, group=None, title: str | None = None) -> graphviz.Digraph:
    """Draw a network, its backward graph, or a derivation, as a Graphviz diagram.

    Parameters
    ----------
    obj : Graph, Adjoints, Gradients or Derivation
        A network (``sb.parse``, ``sb.models.mlp``, ...), the result of
        ``sb.differentiate`` (or its ``.graph``), of ``sb.grad`` (adjoint nodes
        then show their δ-form formulas) or of ``sb.derive``.
    kind : {"forward", "backward", "joint", "derivation"}, optional
        The view (see the module notes). Default: ``"derivation"`` for a
        derivation, ``"backward"`` for gradients, ``"joint"`` for a
        differentiated graph, else ``"forward"``.
    of, wrt : optional
        For ``backward``, ``joint`` and ``derivation`` views of a plain network:
        passed to :func:`~symbackprop.differentiate` (or ``sb.derive``).
    at : dict, optional
        For ``kind="derivation"`` of a plain network: the point, ``{"x": 1}``.
    grads : dict, True or FlowReport, optional
        ``{node: gradient value or array}``: colour nodes by the largest
        magnitude, pale (vanishing, ≤ 1e−4) to red (exploding, ≥ 1e2), with a
        legend. ``True`` uses a derivation's own gradients. A report of
        ``sb.gradient_flow`` colours each layer's weights by max|∂L/∂W|, collapses
        the blocks (unless ``group=`` is given) and draws each run of three or more
        consecutive layers of the same structure as one cluster (``layers 2..50``)
        with a strip of one cell per layer.
    collapse : True or dict, optional
        Collapse each block of nodes into one summary node (its formulas and
        parameters) inside a cluster; in the joint and backward views a block has
        a forward and a backward summary. ``True`` uses the ``block`` attribute of
        the nodes (``sb.models.mlp`` sets ``layer1``, ``layer2``, ...); a dict maps
        nodes to blocks, or blocks to lists of nodes.
    group : True or dict, optional
        Like ``collapse`` but keeps every node: each block is drawn as a cluster.
    title : str, optional
        A caption above the diagram (derivations get one by default).

    Returns
    -------
    graphviz.Digraph
        Show it in Jupyter, write it with :func:`write_diagram`, read its
        ``.source``.

    Raises
    ------
    GraphError
        For an unknown ``kind`` or a malformed ``collapse``/``group``.
    GradError
        From differentiating or deriving (a non-scalar ``of``, an unknown ``wrt``).

    Examples
    --------
    >>> g = sb.parse("a = 2*x; b = a + 3; c = b**2")
    >>> d = sb.render(g)
    >>> '<B>c</B> = b²' in d.source and 'rankdir=LR' in d.source
    True
    >>> 'dir=back' in sb.render(g, "backward", of="c", wrt="x").source
    True
    >>> 'subgraph cluster_' in sb.render(sb.models.mlp([4, 3, 2]), collapse=True).source
    True

    See Also
    --------
    write_diagram, to_dot
    """
    flow = None
    if isinstance(grads, FlowReport):  # per-layer norms: repeated layers collapse, with a strip
        flow, grads = grads, grads.node_grads()
        if collapse is None and group is None:
            collapse = True
    if collapse and group:
        raise GraphError("pass collapse= or group=, not both.")
    spec, option = (collapse, "collapse") if collapse else (group, "group")
    subject, kind = drawable(obj, kind, of=of, wrt=wrt, at=at)
    if grads is True:
        if not isinstance(subject, Derivation):
            raise GraphError("grads=True needs a derivation; pass {node: gradient} for a graph.")
        grads = subject.grads
    g = subject if isinstance(subject, Graph) else subject.graph
    blocks = _blocks(g, spec, option)
    if isinstance(subject, Derivation):
        return _Diagram(g, kind, of=subject.of, grads=grads, blocks=blocks, derivation=subject,
                        title=title if title is not None else labels.caption(subject),
                        collapse=bool(collapse)).build()
    deltas = None
    if isinstance(subject, Gradients):  # each adjoint also shows its δ-form formula
        deltas = {n: text(subject[n]) for n in subject.nodes}
        subject = subject.adjoints
    adj = subject if isinstance(subject, Adjoints) else None
    return _Diagram(g, kind, adjoint=adj.adjoint if adj else None, of=adj.of if adj else None,
                    grads=grads, blocks=blocks, title=title, collapse=bool(collapse),
                    deltas=deltas, flow=flow).build()


def drawable(obj, kind: str | None = None, *, of: str | None = None, wrt=None,
             at: dict | None = None):
    """What a view of ``obj`` draws, and the view: the one place where a plain network
    becomes the differentiated graph or the derivation that a view needs.

    Parameters
    ----------
    obj : Graph, Adjoints, Gradients or Derivation
    kind : {"forward", "backward", "joint", "derivation"}, optional
        The view; by default the natural one for ``obj`` (see :func:`render`).
    of, wrt, at : optional
        Passed to :func:`~symbackprop.differentiate` or :func:`~symbackprop.derive`
        when they are called.

    Returns
    -------
    (subject, kind)
        ``subject`` is ``obj`` itself when it already holds what the view needs;
        else, for a ``Graph`` (not yet differentiated) and a ``backward`` or
        ``joint`` view, ``sb.differentiate(obj, of, wrt)``; for a ``derivation``
        view of a graph, adjoints or gradients, ``sb.derive(graph, of, wrt, at)``;
        and for another view of a ``Derivation``, the same for its graph.

    Raises
    ------
    GraphError
        For an unknown ``kind`` or an object render cannot draw.

    Examples
    --------
    >>> from symbackprop.render import drawable
    >>> subject, kind = drawable(sb.parse("y = 2*x"), "derivation", at={"x": 1})
    >>> type(subject).__name__, kind, subject.grads["x"]
    ('Derivation', 'derivation', 2)
    """
    if kind is not None and kind not in KINDS:
        raise GraphError(f"kind={kind!r} is not one of {', '.join(KINDS)}.")
    if isinstance(obj, Derivation):
        if kind in (None, "derivation"):
            return obj, "derivation"
        return drawable(obj.graph, kind, of=obj.of, wrt=obj.wrt)
    if isinstance(obj, (Gradients, Adjoints)):
        adj = obj.adjoints if isinstance(obj, Gradients) else obj
        if kind == "derivation":
            return derive(adj.forward, of=of or adj.of, wrt=wrt or adj.wrt, at=at or {}), kind
        return obj, kind or ("backward" if isinstance(obj, Gradients) else "joint")
    if not isinstance(obj, Graph):
        raise GraphError(f"sb.render() takes a Graph, the result of sb.differentiate(), "
                         f"sb.grad() or sb.derive(), not {type(obj).__name__}.")
    joint = any(obj.is_backward(n) for n in obj.nx)
    kind = kind or ("joint" if joint else "forward")
    if kind == "derivation":
        return derive(obj, of=of, wrt=wrt, at=at or {}), kind
    if kind in ("backward", "joint") and not joint:
        return differentiate(obj, of=of, wrt=wrt), kind
    return obj, kind


def to_dot(obj, kind: str | None = None, **kwargs) -> str:
    """The DOT source of :func:`render` (``obj``, ``kind`` and options as there);
    needs no ``dot`` program."""
    return render(obj, kind, **kwargs).source


def _source(diagram) -> str:
    if isinstance(diagram, (graphviz.Digraph, graphviz.Graph, graphviz.Source)):
        return diagram.source
    return render(diagram).source


def write_diagram(diagram, path, format: str | None = None) -> Path:
    """Write a diagram to ``path`` as SVG, PNG, PDF or DOT, chosen by the extension.

    Parameters
    ----------
    diagram : graphviz.Digraph, or anything :func:`render` takes
        What to draw (a Graph is drawn with ``render(graph)``).
    path : str or Path
        The output file; ``.svg``, ``.png``, ``.pdf``, ``.dot`` or ``.gv``.
    format : str, optional
        Overrides the extension.

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    GraphvizNotFoundError
        When Graphviz's ``dot`` program is missing: the DOT source is then written
        next to ``path`` (same name, ``.dot``) and the message says how to install it.
    GraphvizError
        When ``dot`` fails, or for an unknown extension.

    Examples
    --------
    >>> import tempfile, os
    >>> out = os.path.join(tempfile.mkdtemp(), "chain.dot")
    >>> sb.write_diagram(sb.render(sb.parse("y = 2*x")), out).suffix
    '.dot'
    """
    path = Path(path)
    fmt = (format or path.suffix.lstrip(".")).lower()
    fmt = "dot" if fmt == "gv" else fmt
    if fmt not in FORMATS:
        raise GraphvizError(f"cannot write {str(path)!r}: the extension {path.suffix!r} is not "
                            f"one of .svg, .png, .pdf, .dot. Choose one of them.")
    source = _source(diagram)
    if fmt == "dot":
        path.write_text(source, encoding="utf-8")
        return path
    exe = shutil.which("dot")
    if exe is None:
        fallback = path.with_suffix(".dot")
        fallback.write_text(source, encoding="utf-8")
        raise GraphvizNotFoundError(
            f"cannot write {str(path)!r}: Graphviz's 'dot' program is not on the PATH. "
            f"{INSTALL_HINT} The DOT source was written to {str(fallback)!r}; render it later "
            f"with 'dot -T{fmt} {fallback} -o {path}'.")
    done = subprocess.run([exe, f"-T{fmt}", "-o", str(path)], input=source.encode("utf-8"),
                          capture_output=True, check=False)
    if done.returncode != 0:
        err = done.stderr.decode("utf-8", "replace").strip()
        raise GraphvizError(f"dot failed writing {str(path)!r} (exit {done.returncode}): {err}")
    return path


def svg(obj, **kwargs) -> str | None:
    """SVG text of ``render(obj, **kwargs)``, or ``None`` when ``dot`` is missing."""
    exe = shutil.which("dot")
    if exe is None:
        return None
    source = obj.source if isinstance(obj, graphviz.Digraph) else render(obj, **kwargs).source
    done = subprocess.run([exe, "-Tsvg"], input=source.encode("utf-8"), capture_output=True,
                          check=False)
    if done.returncode != 0:
        raise GraphvizError(f"dot failed: {done.stderr.decode('utf-8', 'replace').strip()}")
    return done.stdout.decode("utf-8")


def mimebundle(obj, include=None, exclude=None, extra: dict | None = None, **kwargs) -> dict:
    """The Jupyter display of ``obj``: its SVG diagram (and plain text), for
    ``_repr_mimebundle_``, plus the ``extra`` forms (LaTeX of formulas); only text, with
    the install hint, when ``dot`` is missing."""
    plain = repr(obj)
    image = svg(obj, **kwargs)
    if image is None:
        bundle = {"text/plain": f"{plain}\n(no diagram: {INSTALL_HINT})", **(extra or {})}
    else:
        bundle = {"image/svg+xml": image, "text/plain": plain, **(extra or {})}
    if include:
        bundle = {k: v for k, v in bundle.items() if k in include}
    return {k: v for k, v in bundle.items() if not exclude or k not in exclude}
