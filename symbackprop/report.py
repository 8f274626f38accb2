"""One report page: a network's diagrams, formulas, derivation, cost and gradient flow in
one self-contained HTML file (``sb.report``, ``symbackprop report SPEC -o report.html``).

The page fetches nothing: the diagrams are inline SVG (Graphviz's ``dot -Tsvg``, through
:func:`~symbackprop.render.svg`), the formulas MathML (:mod:`~symbackprop.display.mathml`,
which browsers render natively), the flow chart inline SVG (matplotlib, the ``plots``
extra), and the style and the script are inline. The script is small and plain: it reads
the steps of the backward sweep from a ``<script type="application/json">`` block and,
at each step (Previous/Next, or the arrow keys), puts the class ``sb-current`` on the
step's node and edges in every diagram, found by their Graphviz ``<title>`` (the node's DOT
ID, :func:`~symbackprop.render.node_ids`), and shows the step's number.

Sections that do not apply say why in one line: a graph of scalars has no cost table
worth showing and no layers to measure; without ``dot`` the diagrams are left out (the
page says how to install Graphviz); without matplotlib, the chart.

Nothing here computes anything new: the derivation is :func:`~symbackprop.derive`, the
joint graph its gradients' adjoints, the cost :func:`~symbackprop.cost`, the flow
:func:`~symbackprop.gradient_flow`.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx
import numpy as np

from .cost import cost as step_cost
from .derivation import Derivation, derive
from .display.charts import PlotsNotInstalledError
from .display.mathml import gradient as mathml_gradient
from .display.numbers import fmt
from .display.printers import text
from .errors import GraphError, SymbackpropError
from .flow import gradient_flow
from .graph import Graph
from .layers import layers
from .render import INSTALL_HINT, node_ids, render, svg
from .testing import random_inputs

__all__ = ["Report", "report"]

DIAGRAMS = {  # key -> heading
    "forward": "The network (forward pass)",
    "joint": "Forward and backward (the joint graph)",
    "derivation": "The chain rule at the point",
}


@dataclass
class Report:
    """The report page of a network; made by :func:`report`.

    Attributes
    ----------
    graph : Graph
    title : str
    derivation : Derivation
        The backward sweep at the point, the steps the page walks through.
    diagrams : dict
        ``"forward"``, ``"joint"``, ``"derivation"`` -> SVG text (``None`` without ``dot``).
    cost : Cost or None
    flow : FlowReport or None
    chart : str or None
        The flow chart, SVG text.
    skipped : dict
        Section -> the one line saying why it is left out.
    """

    graph: Graph
    title: str
    derivation: Derivation
    diagrams: dict
    cost: object = None
    flow: object = None
    chart: str | None = None
    skipped: dict = field(default_factory=dict)

    def steps(self) -> list[dict]:
        """One entry per step of the backward sweep: ``node``, ``gradient`` (``dc/db``),
        ``chain`` (``2b = 10``), ``value`` (``10``, as the derivation writes it) and
        ``marks``, per diagram the DOT IDs of the nodes and the edges to highlight."""
        return _steps(self.derivation)

    def html(self) -> str:
        """The page: one self-contained HTML document."""
        return _page(self)

    def write(self, path) -> Path:
        """Write the page to ``path`` (UTF-8) and return the path."""
        path = Path(path)
        path.write_text(self.html(), encoding="utf-8")
        return path


# -- what goes on the page -----------------------------------------------------------------------
def report(g: Graph, at: dict | None = None, of: str | None = None, wrt=None, batch: int = 64,
           seed: int = 0, title: str | None = None) -> Report:
    """Everything symbackprop shows about a network, for one HTML page.

    Parameters
    ----------
    g : Graph
        The network.
    at : dict, optional
        The point of the derivation. A graph of scalars is derived exactly there
        (without it the steps show formulas only); a network of arrays at a random batch
        of ``batch`` examples and its initial parameters (``sb.testing.random_inputs``),
        with the values of ``at`` in their place.
    of, wrt : optional
        The loss and the nodes to differentiate for (as :func:`~symbackprop.derive`).
    batch : int
        The batch size N of the random batch, the cost and the flow.
    seed : int
        Seed of the random batch and the parameters.
    title : str, optional
        The page's heading (default: the network's name).

    Returns
    -------
    Report
        ``.html()`` and ``.write(path)``.

    Raises
    ------
    GradError
        From :func:`~symbackprop.derive` (an unknown node, a missing value).
    GraphError
        For a batch that is not a positive int.

    Examples
    --------
    >>> r = sb.report(sb.parse("a = 2*x; b = a + 3; c = b**2"), at={"x": 1})
    >>> [s["value"] for s in r.steps()]
    ['1', '10', '10', '20']
    >>> page = r.html()
    >>> "<math" in page and "http://" not in page and "https://" not in page
    True
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise GraphError(f"batch={batch!r}: expected a positive number of examples.")
    arrays = any(d["shape"] != () for _, d in g.nx.nodes(data=True))
    point = dict(at or {})
    if arrays:  # a random batch and the initial parameters, the given values in their place
        for k, v in point.items():
            shape = g.nx.nodes[k]["shape"] if k in g else ()
            if shape != () and np.ndim(v) == 0:
                raise GraphError(f"at= gives the number {v} for {k!r}, which has shape "
                                 f"{tuple(shape)}; a network of arrays is shown at a random "
                                 "batch, so give only its scalars (or arrays, from Python).")
        point = {**random_inputs(g, {"N": batch}, seed=seed),
                 **{k: np.asarray(v, dtype=float) for k, v in point.items()}}
    der = derive(g, of, wrt, at=point or None)
    diagrams = {"forward": svg(render(g, "forward")),
                "joint": svg(render(der.gradients.adjoints, "joint")),
                "derivation": svg(render(der))}
    out = Report(graph=g, title=title or str(g.nx.graph.get("name") or "network"),
                 derivation=der, diagrams=diagrams)
    if any(v is None for v in diagrams.values()):
        out.skipped["diagrams"] = f"Graphviz's dot program is not installed. {INSTALL_HINT}"
    if not arrays:
        out.skipped["cost"] = ("every value of this graph is a scalar: a step costs a few "
                               "FLOPs, so there is no cost table (it is for networks of arrays).")
    else:
        try:
            out.cost = step_cost(g, batch=batch, of=der.of, wrt=der.wrt)
        except SymbackpropError as e:
            out.skipped["cost"] = f"not counted: {' '.join(str(e).split())}"
    inputs = [n for n in g.nodes("input") if g.nx.nodes[n]["shape"] != ()]
    if not inputs or not layers(g):
        out.skipped["flow"] = ("this graph has no layers of weights fed by array inputs: "
                               "gradient flow is measured layer by layer on a batch.")
    else:
        try:
            out.flow = gradient_flow(g, batch=batch, seed=seed, of=der.of)
        except SymbackpropError as e:
            out.skipped["flow"] = f"not measured: {' '.join(str(e).split())}"
        if out.flow is not None:
            try:
                out.chart = out.flow.chart()
            except PlotsNotInstalledError as e:
                out.skipped["chart"] = str(e)
    return out


def _steps(der: Derivation) -> list[dict]:
    g, grads = der.graph, der.gradients
    adj = grads.adjoints
    j = adj.graph
    fwd_ids, joint_ids = node_ids(g), node_ids(j)
    out = []
    for st, (lhs, chain) in zip(der.steps, der.step_lines()):
        n = st.node
        consumers = [t.consumer for t in st.terms]
        forward = {"nodes": [fwd_ids[n]], "edges": [[fwd_ids[n], fwd_ids[c]] for c in consumers]}
        value = fmt(st.grad_value) if der.values else text(st.formula)
        out.append({"node": n, "gradient": lhs, "chain": chain, "value": value,
                    "marks": {"forward": forward, "derivation": forward,
                              "joint": _joint_marks(j, adj.adjoint, n, consumers, joint_ids)}})
    return out


def _joint_marks(j: Graph, adjoint: dict, n: str, consumers: list, ids: dict) -> dict:
    """In the joint graph: the node, its adjoint and the backward nodes between the
    consumers' adjoints and it, with the edges among them."""
    a = adjoint.get(n)
    if a is None:
        return {"nodes": [ids[n]], "edges": []}
    sources = {adjoint[c] for c in consumers if c in adjoint}
    path = {a}
    if sources:
        up = nx.ancestors(j.nx, a) | {a}
        down = set().union(*(nx.descendants(j.nx, s) | {s} for s in sources))
        path = {m for m in up & down if j.is_backward(m)} | {a}
    nodes = [ids[m] for m in j.nx if m in path and (m not in sources or m == a)]
    edges = [[ids[u], ids[v]] for v in path for u in j.args(v) if u in path]
    edges.append([ids[n], ids[a]])  # the dashed link from the node to its gradient
    return {"nodes": [ids[n], *nodes], "edges": edges}


# -- the page ----------------------------------------------------------------------------------
def _inline_svg(svg_text: str, key: str) -> str:
    """An SVG file's text made fit to sit inside HTML: no XML prolog, DOCTYPE, comments,
    metadata or namespace declarations (nothing that names a URL), and its IDs prefixed
    with ``key`` so that several drawings on one page keep distinct IDs."""
    s = re.sub(r"<\?xml.*?\?>|<!DOCTYPE.*?>|<!--.*?-->|<metadata>.*?</metadata>", "",
               svg_text, flags=re.DOTALL)
    s = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", s)
    s = re.sub(r'\bid="([^"]*)"', rf'id="{key}-\1"', s)
    s = re.sub(r'url\(#([^)]*)\)', rf'url(#{key}-\1)', s)
    s = re.sub(r'href="#([^"]*)"', rf'href="#{key}-\1"', s)
    return s.strip()


def _table(head, rows, numeric_from: int = 1) -> str:
    def cells(tag, row):
        return "".join(f'<{tag}{" class=num" if i >= numeric_from else ""}>{html.escape(c)}'
                       f"</{tag}>" for i, c in enumerate(row))
    body = "".join(f"<tr>{cells('td', r)}</tr>" for r in rows)
    return f"<table><thead><tr>{cells('th', head)}</tr></thead><tbody>{body}</tbody></table>"


def _skip(r: Report, key: str) -> str:
    return f'<p class="skipped">{html.escape(r.skipped[key])}</p>' if key in r.skipped else ""


def _figure(r: Report, key: str) -> str:
    s = r.diagrams.get(key)
    if s is None:
        return _skip(r, "diagrams")
    return (f'<figure class="diagram" data-diagram="{key}">{_inline_svg(s, key)}'
            f"<figcaption>{html.escape(DIAGRAMS[key])}</figcaption></figure>")


def _point(der: Derivation) -> str:
    if not der.at:
        return "no point given: the steps show the formulas (pass --at / at= for numbers)"
    if not der.scalar:
        return "a random batch and the initial parameters"
    return "at " + ", ".join(f"{k} = {fmt(v)}" for k, v in der.at.items())


def _page(r: Report) -> str:
    der, grads = r.derivation, r.derivation.gradients
    steps = r.steps()
    of = grads.symbol(der.of)
    items = "".join(
        f'<li data-step="{i}"><span class="math">'
        f"{mathml_gradient(of, grads.symbol(s['node']), grads[s['node']])}</span>"
        f'<code>{html.escape(s["gradient"])} = {html.escape(s["chain"])}</code></li>'
        for i, s in enumerate(steps))
    formulas = "".join(
        f"<tr><td>{mathml_gradient(of, grads.symbol(n), grads[n], 'block')}</td>"
        f"<td><code>{html.escape(text(grads[n]))}</code></td></tr>" for n in grads.nodes)
    sections = [
        ("diagrams", "Diagrams", _figure(r, "forward") + _figure(r, "joint")),
        ("sweep", "The backward sweep, step by step", _sweep(r, steps, items)),
        ("formulas", "Gradient formulas",
         (f"<p>Each gradient in δ-form: δ<sub>n</sub> stands for "
          f"∂{html.escape(grads.label(der.of))}/∂n.</p>"
          f'<table class="formulas"><tbody>{formulas}</tbody></table>')),
        ("cost", "What a step costs", _cost(r)),
        ("flow", "How gradients flow", _flow(r)),
    ]
    nav = " · ".join(f'<a href="#{k}">{html.escape(t)}</a>' for k, t, _ in sections)
    body = "".join(f'<section id="{k}"><h2>{html.escape(t)}</h2>{b}</section>'
                   for k, t, b in sections)
    data = json.dumps({"steps": steps}, ensure_ascii=False).replace("<", "\\u003c")
    warnings = "".join(f'<p class="warning">warning: {html.escape(w)}</p>'
                       for w in der.warnings)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(r.title)} · symbackprop report</title>
<style>{CSS}</style>
</head>
<body>
<header><h1>{html.escape(r.title)}</h1>
<p>Gradients of {html.escape(grads.label(der.of))} with respect to
{html.escape(", ".join(grads.label(w) for w in der.wrt))}, {html.escape(_point(der))}.</p>
{warnings}<nav>{nav}</nav></header>
<main>{body}</main>
<footer>Written by symbackprop; this page fetches nothing.</footer>
<script type="application/json" id="report-data">{data}</script>
<script>{JS}</script>
</body>
</html>
"""


def _sweep(r: Report, steps: list, items: str) -> str:
    der = r.derivation
    first = steps[0]
    control = (
        '<div class="control" id="control">'
        '<button type="button" id="prev" aria-label="previous step">◀ Previous</button>'
        '<button type="button" id="next" aria-label="next step">Next ▶</button>'
        f'<span>step <b id="step-number">1</b> of {len(steps)}</span>'
        f'<span class="now"><span id="step-gradient">{html.escape(first["gradient"])}</span>'
        f' = <output id="step-value">{html.escape(first["value"])}</output></span>'
        f'<code id="step-chain">{html.escape(first["chain"])}</code></div>')
    return (f"<p>From the loss back to the inputs, one node at a time: Previous/Next or the "
            f"arrow keys ← →; the node and its edges are marked on every diagram.</p>"
            f"{control}{_figure(r, 'derivation')}"
            f'<ol class="steps" id="steps">{items}</ol>'
            f"<details><summary>The derivation as text</summary>"
            f"<pre>{html.escape(der.text())}</pre></details>")


def _cost(r: Report) -> str:
    if r.cost is None:
        return _skip(r, "cost")
    head, rows = r.cost.table()
    lines = "".join(f"<li>{html.escape(s)}</li>" for s in r.cost.summary())
    sizes = ", ".join(f"{k} = {v}" for k, v in r.cost.sizes.items())
    return (f"<p>One training step at {html.escape(sizes)}, {r.cost.dtype} "
            f"(<code>symbackprop cost</code>).</p>{_table(head, rows)}<ul>{lines}</ul>")


def _flow(r: Report) -> str:
    f = r.flow
    if f is None:
        return _skip(r, "flow")
    chart = (f'<figure class="chart">{_inline_svg(r.chart, "chart")}</figure>'
             if r.chart else _skip(r, "chart"))
    lines = "".join(f"<li>{html.escape(s)}</li>" for s in f.summary())
    return (f"<p>{html.escape(f.title())} (<code>symbackprop flow</code>).</p>"
            f"{chart}{_table(f.HEAD, f.rows())}<ul>{lines}</ul>")


CSS = """
body { font: 15px/1.45 system-ui, "DejaVu Sans", sans-serif; color: #111827; margin: 0;
       background: #f9fafb; }
header, main, footer { max-width: 1200px; margin: 0 auto; padding: 0 16px; }
h1 { font-size: 1.5em; margin: 16px 0 4px; }
h2 { font-size: 1.2em; border-bottom: 1px solid #e5e7eb; padding-bottom: 4px; }
nav a { color: #1d4ed8; }
section { background: white; border: 1px solid #e5e7eb; border-radius: 6px; padding: 4px 16px 12px;
          margin: 16px 0; }
figure { margin: 8px 0; overflow-x: auto; }
figure svg { height: auto; }  /* drawn at its own size: a wide network scrolls */
figure.diagram svg text { white-space: pre; }  /* Graphviz places runs with their spaces */
math { font-size: 1.15em; }
ol.steps math, table.formulas math { math-style: normal; }
figcaption { color: #6b7280; font-size: 0.9em; }
.control { position: sticky; top: 0; z-index: 1; display: flex; flex-wrap: wrap; gap: 12px;
           align-items: center; background: #fffbeb; border: 1px solid #f59e0b;
           border-radius: 6px; padding: 8px 12px; }
.control button { font: inherit; padding: 4px 12px; cursor: pointer; }
.control .now { font-size: 1.25em; }
#step-value { font-weight: bold; color: #b91c1c; }
ol.steps li { padding: 2px 6px; border-radius: 4px; }
ol.steps li .math { margin-right: 16px; }
ol.steps li.sb-current { background: #fef3c7; outline: 2px solid #f59e0b; }
g.node.sb-current > ellipse, g.node.sb-current > polygon, g.node.sb-current > path {
  stroke: #f59e0b; stroke-width: 5px; }
g.edge.sb-current > path { stroke: #f59e0b; stroke-width: 4px; }
g.edge.sb-current > polygon { stroke: #f59e0b; fill: #f59e0b; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border-bottom: 1px solid #e5e7eb; padding: 3px 10px; text-align: left; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
table.formulas td { padding: 4px 16px 4px 0; }
.skipped { color: #6b7280; font-style: italic; }
.warning { color: #b91c1c; }
pre { background: #f3f4f6; padding: 8px; overflow-x: auto; }
footer { color: #6b7280; font-size: 0.85em; padding-bottom: 24px; }
"""

# The whole script: step through the backward sweep, marking each step's node and edges.
JS = """
(function () {
  "use strict";
  var steps = JSON.parse(document.getElementById("report-data").textContent).steps;
  var current = 0;
  var $ = function (id) { return document.getElementById(id); };

  function pair(a, b) { return a < b ? a + "|" + b : b + "|" + a; }

  // Graphviz titles: a node's DOT ID; an edge's "tail->head", ports as "id:port"
  function ends(title) {
    var parts = title.split("->");
    return parts.length === 2 ? parts.map(function (p) { return p.replace(/:.*$/, ""); }) : null;
  }

  function mark(figure, marks) {
    figure.querySelectorAll(".sb-current").forEach(function (e) {
      e.classList.remove("sb-current");
    });
    if (!marks) { return; }
    var nodes = new Set(marks.nodes);
    var edges = new Set(marks.edges.map(function (e) { return pair(e[0], e[1]); }));
    figure.querySelectorAll("g.node, g.edge").forEach(function (g) {
      var title = g.querySelector("title");
      if (!title) { return; }
      var e = g.classList.contains("edge") ? ends(title.textContent) : null;
      if (e ? edges.has(pair(e[0], e[1])) : nodes.has(title.textContent)) {
        g.classList.add("sb-current");
      }
    });
    // a wide diagram scrolls sideways to the step's node (the page itself stays put)
    var first = figure.querySelector("g.node.sb-current");
    if (first && figure.scrollWidth > figure.clientWidth) {
      var r = first.getBoundingClientRect(), f = figure.getBoundingClientRect();
      figure.scrollLeft += (r.left + r.width / 2) - (f.left + f.width / 2);
    }
  }

  function show(i) {
    current = Math.max(0, Math.min(steps.length - 1, i));
    var s = steps[current];
    $("step-number").textContent = String(current + 1);
    $("step-gradient").textContent = s.gradient;
    $("step-value").textContent = s.value;
    $("step-chain").textContent = s.chain;
    $("prev").disabled = current === 0;
    $("next").disabled = current === steps.length - 1;
    document.querySelectorAll("figure[data-diagram]").forEach(function (f) {
      mark(f, s.marks[f.dataset.diagram]);
    });
    document.querySelectorAll("#steps li").forEach(function (li) {
      li.classList.toggle("sb-current", Number(li.dataset.step) === current);
    });
  }

  $("prev").addEventListener("click", function () { show(current - 1); });
  $("next").addEventListener("click", function () { show(current + 1); });
  document.addEventListener("keydown", function (e) {
    if (e.key === "ArrowRight" || e.key === "ArrowLeft") {
      show(current + (e.key === "ArrowRight" ? 1 : -1));
      e.preventDefault();
    }
  });
  show(0);
})();
"""
