"""Diagrams: SVG from the real ``dot`` read back as XML, DOT golden files, escaping,
files, the CLI, Jupyter display, and the formula printer.

Regenerate the golden DOT files with ``pytest tests/test_render.py --update-golden``
(or ``UPDATE_GOLDEN=1``).
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import sympy as sp

import symbackprop as sb
from symbackprop.cli import main
from symbackprop.display import fmt, formula
from symbackprop.errors import GraphError, GraphvizError, GraphvizNotFoundError
from symbackprop.render import _heat

GOLDEN = Path(__file__).parent / "golden"
SVG = "{http://www.w3.org/2000/svg}"
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz 'dot' missing")

CHAIN = "a = 2*x; b = a + 3; c = b**2"
LOSS = "L = (w*x - y)**2"


def chain_derivation():
    return sb.derive(sb.parse(CHAIN), of="c", wrt="x", at={"x": 1})


def loss_derivation():
    return sb.derive(sb.parse(LOSS), of="L", wrt="w", at={"w": 2, "x": 3, "y": 10})


def svg_lines(diagram) -> dict:
    """``{(class, title): [line, ...]}`` for the graph, every node, edge and cluster of the SVG
    that ``dot`` makes: the <text> pieces of one line (same y) joined left to right."""
    svg = subprocess.run(["dot", "-Tsvg"], input=diagram.source.encode(), check=True,
                         capture_output=True).stdout
    root = ET.fromstring(svg)
    out = {}
    for g in root.iter(f"{SVG}g"):
        kind = g.get("class")
        if kind not in ("graph", "node", "edge", "cluster"):
            continue
        rows: dict = {}
        for t in g.iter(f"{SVG}text"):
            rows.setdefault(float(t.get("y")), []).append((float(t.get("x")), t.text or ""))
        lines = [" ".join("".join(s for _, s in sorted(r)).split())
                 for _, r in sorted(rows.items())]
        out[(kind, g.find(f"{SVG}title").text)] = lines
    return out


def node_lines(source: str) -> dict:
    """``{node ID: its whole DOT line}``."""
    return {m.group(1): m.group(0)
            for m in re.finditer(r"^\t(\w+) \[.*$", source, flags=re.MULTILINE)}


def all_lines(lines: dict) -> list[str]:
    return [ln for v in lines.values() for ln in v]


# -- SVG from the real dot -------------------------------------------------------------------
@needs_dot
def test_chain_derivation_svg_shows_values_local_derivatives_and_gradients():
    lines = svg_lines(sb.render(chain_derivation()))
    assert lines[("node", "x")] == ["x = 1", "∂c/∂x = 10·2 = 20"]
    assert lines[("node", "a")] == ["a = 2x = 2", "∂c/∂a = 10·1 = 10"]
    assert lines[("node", "b")] == ["b = a + 3 = 5", "∂c/∂b = 1·10 = 10"]
    assert lines[("node", "c")] == ["c = b² = 25", "∂c/∂c = 1"]
    edges = all_lines({k: v for k, v in lines.items() if k[0] == "edge"})
    for label in ("∂c/∂b = 2b = 10", "∂b/∂a = 1", "∂a/∂x = 2"):
        assert label in edges
    assert "∂c/∂x = 20 at x = 1" in all_lines(lines)  # the caption


@needs_dot
def test_loss_derivation_svg_shows_minus_24():
    lines = svg_lines(sb.render(loss_derivation()))
    text = all_lines(lines)
    assert "L = (w·x − y)² = 16" in text
    assert "w·x = 6" in text and "w·x − y = −4" in text
    assert "∂L/∂(w·x − y) = 1·2·(w·x − y) = −8" not in text  # one factor per consumer
    assert "∂L/∂(w·x − y) = 1·(−8) = −8" in text
    assert "∂L/∂w = (−8)·3 = −24" in text
    assert "∂L/∂(w·x − y) = 2·(w·x − y) = −8" in text  # the edge into L
    assert "∂(w·x)/∂w = x = 3" in text
    assert "∂L/∂w = −24 at w = 2, x = 3, y = 10" in text


@needs_dot
def test_mlp_svg_forward_joint_and_collapsed():
    g = sb.models.mlp([784, 256, 256, 256, 10])
    fwd = all_lines(svg_lines(sb.render(g)))
    for label in ("z1 = X @ W1 + b1", "h1 = relu(z1)", "logits = h3 @ W4 + b4",
                  "L = softmax_cross_entropy(logits, y)", "(N, 784)", "(784, 256)", "(256,)"):
        assert label in fwd
    assert "X @ W1" in fwd and "matmul_1 · (N, 256)" in fwd  # an unnamed op: formula, name
    joint = all_lines(svg_lines(sb.render(g, "joint")))
    for label in ("∂L/∂W1", "dW1 = Xᵀ @ dz1", "∂L/∂z1 = ∂L/∂(X @ W1)", "dz1 = dh1·[h1 > 0]",
                  "db1 = sum(dz1, axis=0)", "dh1 = dz2 @ W2ᵀ", "∂L/∂L", "dL = 1"):
        assert label in joint
    collapsed = svg_lines(sb.render(g, "joint", collapse=True))
    clusters = [v for k, v in collapsed.items() if k[0] == "cluster"]
    assert [c[0] for c in clusters] == ["layer1", "layer2", "layer3", "layer4"]
    assert clusters[0][1] == "200,960 parameters"
    text = all_lines(collapsed)
    assert "z1 = X @ W1 + b1" in text and "dW1 = Xᵀ @ dz1" in text
    assert "W1 (784, 256), b1 (256,) → (N, 256)" in text
    nodes = [k for k in collapsed if k[0] == "node"]
    assert len(nodes) < 20  # 4 blocks × (forward, backward) and the loss


def test_mlp_forward_is_one_node_per_op():
    g = sb.models.mlp([784, 256, 256, 256, 10])
    source = sb.to_dot(g)
    declared = re.findall(r"^\t(\w+) \[", source, flags=re.MULTILINE)
    assert declared[:3] == ["graph", "node", "edge"]  # the defaults, then one line per node
    assert declared[3:] == list(g.nx)
    assert "subgraph" not in source


# -- DOT golden files --------------------------------------------------------------------------
GOLDEN_CASES = {
    "chain_forward": lambda: sb.render(sb.parse(CHAIN)),
    "chain_backward": lambda: sb.render(sb.parse(CHAIN), "backward", of="c", wrt="x"),
    "chain_derivation": lambda: sb.render(chain_derivation()),
    "loss_forward": lambda: sb.render(sb.parse(LOSS)),
    "loss_joint": lambda: sb.render(sb.parse(LOSS), "joint", of="L", wrt="w"),
    "loss_derivation": lambda: sb.render(loss_derivation()),
}


@pytest.mark.parametrize("name", sorted(GOLDEN_CASES))
def test_dot_golden(name, update_golden):
    source = GOLDEN_CASES[name]().source
    assert source == GOLDEN_CASES[name]().source  # deterministic within a run
    path = GOLDEN / f"{name}.dot"
    if update_golden or not path.exists():
        GOLDEN.mkdir(exist_ok=True)
        path.write_bytes(source.encode("utf-8"))
        if not update_golden:
            pytest.fail(f"wrote missing golden file {path}; check it and commit it")
    assert source.encode("utf-8") == path.read_bytes(), (
        f"{path.name} differs; if the change is intended, rerun with --update-golden")


# -- edges, roles, options ------------------------------------------------------------------------
def test_edges_labelled_only_where_argument_order_matters():
    source = sb.to_dot(sb.parse("d = x - y; s = x + y; q = d / s"))
    assert re.search(r"\tx -> d \[.*label=<.*>1<", source)
    assert re.search(r"\ty -> d \[.*label=<.*>2<", source)
    assert re.search(r"\tx -> s \[color=\"#374151\"\]", source)  # add: no position label
    assert sb.ops.get("add").commutative and sb.ops.get("mul").commutative
    assert not sb.ops.get("sub").commutative and not sb.ops.get("matmul").commutative


def test_roles_drawn_distinctly_and_backward_reversed():
    g = sb.Graph()
    x, w = g.input("x"), g.param("w")
    g.output("L", sb.tanh(w * x + 1.5))
    source = sb.to_dot(g, "joint")
    line = node_lines(source)
    assert "shape=ellipse" in line["x"] and "#dbeafe" in line["x"]
    assert "shape=box" in line["w"] and "#fef3c7" in line["w"]
    assert "#f3f4f6" in line["const_1"]
    assert "#ecfdf5" in line["L"] and "peripheries=2" in line["L"]
    assert "#ffe4e6" in line["dw"] and "∂L/∂w" in line["dw"]
    assert "rankdir=LR" in source
    assert re.search(r"\tdw -> \w+ \[.*dir=back", source)  # adjoints flow right to left
    assert re.search(r"\tw -> dw \[.*style=dashed", source)  # linked to their node
    assert "rank=same" in source


def test_gradient_colours_and_legend():
    g = sb.models.mlp([4, 3, 2])
    source = sb.to_dot(g, grads={"W1": np.full((4, 3), 1e-9), "W2": np.array([[500.0]])})
    line = node_lines(source)
    assert f'fillcolor="{_heat(1e-9)[0]}"' in line["W1"] and _heat(1e-9)[0] == "#fff5f0"
    assert f'fillcolor="{_heat(500)[0]}"' in line["W2"] and _heat(500)[0] == "#99000d"
    assert "_legend" in line and "vanishing" in line["_legend"] and "exploding" in line["_legend"]
    assert "max|∂L/∂W1| = 1e−9" in line["W1"]
    assert _heat(1.0)[0] != _heat(1e-9)[0] != _heat(500)[0]


def test_gradient_colours_from_a_derivation():
    source = sb.to_dot(loss_derivation(), grads=True)
    assert "_legend" in source


def test_collapse_and_group_options():
    g = sb.parse(CHAIN)
    grouped = sb.to_dot(g, group={"affine": ["a", "b"]})
    assert "subgraph cluster_0_affine" in grouped and "\ta [" in grouped
    collapsed = sb.to_dot(g, collapse={"a": "affine", "b": "affine"})
    assert "subgraph cluster_0_affine" in collapsed and "\ta [" not in collapsed
    assert "a = 2x<BR/>b = a + 3" in collapsed
    with pytest.raises(GraphError, match="'nope'"):
        sb.render(g, collapse={"blk": ["nope"]})
    with pytest.raises(GraphError, match="not both"):
        sb.render(g, collapse=True, group=True)
    with pytest.raises(GraphError, match="kind='sideways'"):
        sb.render(g, "sideways")


def test_blocks_survive_json(tmp_path):
    g = sb.models.mlp([4, 3, 2])
    g.save(tmp_path / "m.json")
    assert sb.to_dot(sb.load(tmp_path / "m.json"), collapse=True) == sb.to_dot(g, collapse=True)


def test_gradients_object_shows_delta_forms():
    source = sb.to_dot(sb.grad(sb.models.mlp([4, 3, 2])))
    assert "∂L/∂W1 = Xᵀ δ_z1" in source


# -- escaping -----------------------------------------------------------------------------------
NASTY = ['x "quoted"', "<b>tag</b>", "back\\slash\\", "two\nlines", "node", "_n1", "a&b", "]["]


@needs_dot
def test_hostile_names_render(tmp_path):
    G = nx.MultiDiGraph(outputs=["L<>\"\\"])
    for n in NASTY:
        G.add_node(n, op="input")
    G.add_node("s1", op="sub")
    G.add_edge(NASTY[0], "s1", arg=0)
    G.add_edge(NASTY[1], "s1", arg=1)
    prev = "s1"
    for i, n in enumerate(NASTY[2:]):
        G.add_node(f"m{i}", op="mul")
        G.add_edge(prev, f"m{i}", arg=0)
        G.add_edge(n, f"m{i}", arg=1)
        prev = f"m{i}"
    G.add_node("L<>\"\\", op="square")
    G.add_edge(prev, "L<>\"\\", arg=0)
    g = sb.from_networkx(G)
    for kind in ("forward", "joint"):
        diagram = sb.render(g, kind, wrt=NASTY[:3])
        out = sb.write_diagram(diagram, tmp_path / f"{kind}.svg")
        text = "\n".join(t.text or "" for t in ET.parse(out).getroot().iter(f"{SVG}text"))
        for n in NASTY:
            for part in n.split("\n"):
                assert part in text, (kind, part)
    ids = re.findall(r"^\t(\S+) \[", sb.to_dot(g), flags=re.MULTILINE)[3:]
    assert len(ids) == len(set(ids)) == len(g)  # one distinct, safe ID per node
    assert all(re.fullmatch(r'[A-Za-z_]\w*|"node"', i) for i in ids)


# -- files -----------------------------------------------------------------------------------------
@needs_dot
@pytest.mark.parametrize("ext,magic", [("svg", b"<?xml"), ("png", b"\x89PNG"), ("pdf", b"%PDF")])
def test_write_diagram_formats(tmp_path, ext, magic):
    out = sb.write_diagram(sb.render(sb.parse(CHAIN)), tmp_path / f"chain.{ext}")
    assert out.read_bytes().startswith(magic)


def test_write_dot_needs_no_dot_and_unknown_extension(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "")
    d = sb.render(sb.parse(CHAIN))
    assert sb.write_diagram(d, tmp_path / "c.dot").read_text(encoding="utf-8") == d.source
    with pytest.raises(GraphvizError, match=r"\.jpgx"):
        sb.write_diagram(d, tmp_path / "c.jpgx")


def test_missing_dot_writes_dot_file_and_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "")
    d = sb.render(sb.parse(CHAIN))
    with pytest.raises(GraphvizNotFoundError) as e:
        sb.write_diagram(d, tmp_path / "chain.svg")
    assert isinstance(e.value, sb.SymbackpropError)
    assert "sudo apt-get install graphviz" in str(e.value)
    assert "brew install graphviz" in str(e.value)
    assert (tmp_path / "chain.dot").read_text(encoding="utf-8") == d.source
    assert not (tmp_path / "chain.svg").exists()
    # the CLI says the same on one line and exits 2; the .dot is there
    assert main(["render", CHAIN, "-o", str(tmp_path / "cli.png")]) == 2
    assert (tmp_path / "cli.dot").exists()


# -- CLI -------------------------------------------------------------------------------------------
@needs_dot
def test_cli_render_derivation_svg(tmp_path):
    out = tmp_path / "loss.svg"
    assert main(["render", LOSS, "--kind", "derivation", "--wrt", "w", "--at",
                 "w=2,x=3,y=10", "-o", str(out)]) == 0
    text = [t.text for t in ET.parse(out).getroot().iter(f"{SVG}text")]
    assert "−24" in text and "16" in text


def test_cli_render_dot_to_stdout(capsys):
    assert main(["render", "mlp:784-256-10", "--kind", "joint", "--collapse"]) == 0
    source = capsys.readouterr().out
    assert source.startswith("digraph mlp_784_256_10 {") and "cluster_" in source


# -- Jupyter ---------------------------------------------------------------------------------------
@needs_dot
def test_display_hooks():
    g = sb.parse(CHAIN)
    bundle = g._repr_mimebundle_()
    assert bundle["image/svg+xml"].lstrip().startswith("<?xml")
    assert "<svg" in g._repr_svg_()
    assert "image/svg+xml" in sb.differentiate(g)._repr_mimebundle_()
    assert list(g._repr_mimebundle_(include={"text/plain"})) == ["text/plain"]


@needs_dot
def test_gradients_and_derivations_display_svg_and_latex():
    d = sb.derive(sb.parse(CHAIN), of="c", wrt="x", at={"x": 1})
    bundle = d._repr_mimebundle_()
    assert "<svg" in bundle["image/svg+xml"] and "= 20" in bundle["text/latex"]
    assert "20" in bundle["text/markdown"]
    bundle = sb.grad(sb.models.mlp([4, 3, 2]), of="L")._repr_mimebundle_()
    assert "<svg" in bundle["image/svg+xml"] and "W_{1}" in bundle["text/latex"]


def test_display_without_dot(monkeypatch):
    monkeypatch.setenv("PATH", "")
    bundle = sb.parse(CHAIN)._repr_mimebundle_()
    assert list(bundle) == ["text/plain"] and "apt-get install graphviz" in bundle["text/plain"]
    assert sb.parse(CHAIN)._repr_svg_() is None


# -- formulas and numbers --------------------------------------------------------------------------
def test_formula_printer():
    w, x, y, b, z = sp.symbols("w x y b z")
    assert formula((w * x - y) ** 2) == "(w·x − y)²"
    assert formula(y - x) == "y − x"
    assert formula(2 * b) == "2b" and formula(2 * b * z) == "2b·z"
    assert formula(x * sp.Heaviside(z, 0)) == "x·[z > 0]"
    assert formula(sp.sqrt(x + 1)) == "√(x + 1)" and formula(1 / x) == "1/x"
    assert formula(x / (2 * y)) == "x/(2y)" and formula(-x / 3) == "−x/3"
    assert formula(sp.Max(z, 0)) == "max(z, 0)" and formula(sp.Abs(x)) == "|x|"
    assert formula(x ** -2) == "1/x²" and formula(sp.exp(-x)) == "exp(−x)"
    # names map a symbol to a text and precedence: an inlined sum is parenthesized
    assert formula(2 * b, {"b": ("w·x − y", 40)}) == "2·(w·x − y)"
    assert formula(b ** 2, {"b": ("Xᵀ", 1000)}) == "Xᵀ²"


def test_fmt_writes_one_rule_for_every_number():
    assert fmt(-24.0) == "−24" and fmt(sp.Rational(63001, 2500)) == "25.2004"
    assert fmt(sp.Rational(1, 3)) == "1/3" and fmt(1 / 3) == "0.333333"
    assert fmt(np.array([1.0, -2.0])) == "[length 2, ‖·‖ = 2.236]"
    assert fmt(np.ones((3, 4))) == "[3×4, ‖·‖ = 3.464]"
    assert fmt(float("nan")) == "undefined" and fmt(2.5e-7) == "2.5e−7"
    assert fmt(123456789.0) == "1.23457e8" and fmt(123456789) == "123456789"
    assert fmt(0.1 + 0.2) == "0.3" and fmt(sp.Rational(0.1 + 0.2)) == "0.3"
    assert fmt(sp.Rational(3, 10 ** 9)) == "0.000000003"  # exact: every digit
    assert fmt(0.00512345678, digits=3) == "0.00512"

# -- the diagram and the text agree ----------------------------------------------------------
def _label_lines(source: str, node: str) -> list[str]:
    """The lines of node ``node``'s HTML-like label, tags dropped and entities unescaped."""
    line = node_lines(source)[node]
    label = re.search(r"label=<(.*)>( |\])", line).group(1)
    return [html.unescape(re.sub(r"<[^>]+>", "", part)).strip()
            for part in label.split("<BR/>")]


def _text_numbers(d) -> tuple[dict, dict]:
    """``({node: value}, {node: gradient})`` as ``d.text()`` writes them (the last
    ``= ...`` of each line)."""
    lines = d.text().splitlines()
    back = lines.index(next(ln for ln in lines if ln.startswith("Backward pass")))
    point = lines[0].split(" at ", 1)[1].rstrip(":")
    values = dict(p.split(" = ") for p in point.split(", "))
    ops = [n for n in d.graph.topo_order()
           if n in d.graph.ancestors([d.of]) and not d.graph.is_leaf(n)]
    forward = [ln for ln in lines[1:back]]
    values.update({n: ln.rsplit(" = ", 1)[1] for n, ln in zip(ops, forward, strict=True)})
    steps = [ln for ln in lines[back + 1:] if ln.startswith("  d")]
    grads = {s.node: ln.rsplit(" = ", 1)[1] for s, ln in zip(d.steps, steps, strict=True)}
    return values, grads


def _dot_numbers(d) -> tuple[dict, dict]:
    """The same, read from the derivation diagram's DOT source."""
    source = sb.render(d).source
    values, grads = {}, {}
    for n in d.values:
        if d.graph.role(n) == "const":
            continue
        lines = _label_lines(source, n)
        values[n] = lines[0].rsplit(" = ", 1)[1]
        grad = [ln for ln in lines if ln.startswith("∂")]
        if grad:
            grads[n] = grad[0].rsplit(" = ", 1)[1]
    return values, grads


AGREE = [  # statements, point, numbers the text and the diagram must both show
    (CHAIN, {"x": 1}, {"25", "20", "10"}),
    (LOSS, {"w": 2, "x": 3, "y": 10}, {"16", "−4", "−8", "−24"}),
    ("c = x/3", {"x": 1}, {"1/3"}),
    ("c = 2*x/3", {"x": 1}, {"2/3"}),
    ("c = x/7 - 1", {"x": 2}, {"−5/7", "1/7"}),
    ("c = 3*x", {"x": 0.1 + 0.2}, {"0.3", "0.9"}),
    ("c = x*x", {"x": 12345.678}, {"152415765.279684", "24691.356"}),
    ("c = x/3", {"x": 123456789.5}, {"246913579/6"}),
    ("c = 3*x", {"x": 1e-9}, {"0.000000003"}),
    ("c = tanh(x)", {"x": 1}, {"0.761594", "0.419974"}),
    ("c = exp(x)", {"x": 40}, {"2.35385e17"}),
    ("c = exp(-x)", {"x": 40}, {"4.24835e−18", "−4.24835e−18"}),
    ("L = log(x)", {"x": 0}, {"−∞", "∞"}),
    ("L = sqrt(x)", {"x": -1}, {"undefined"}),
]


@pytest.mark.parametrize("stmt,at,shown", AGREE, ids=[a[0] + str(a[1]) for a in AGREE])
def test_diagram_and_text_write_every_number_alike(stmt, at, shown):
    d = sb.derive(sb.parse(stmt), at=at)
    text_values, text_grads = _text_numbers(d)
    dot_values, dot_grads = _dot_numbers(d)
    assert dot_values == {n: text_values[n] for n in dot_values}
    assert dot_grads == {n: text_grads[n] for n in dot_grads}
    assert set(dot_grads) == set(text_grads)
    assert shown <= set(dot_values.values()) | set(dot_grads.values())


def test_diagram_caption_writes_the_answer_as_the_text_does():
    d = sb.derive(sb.parse("c = x/3"), at={"x": 1})
    assert "So dc/dx = 1/3." in d.text()
    assert "∂c/∂x = 1/3 at x = 1" in sb.render(d).source
    assert "0.333333" not in sb.render(d).source


def test_a_constant_from_a_float_reads_as_a_float_in_every_form():
    g = sb.parse("c = 0.30000000000000004*x")
    d = sb.derive(g, at={"x": 2})
    forms = [d.text(), d.latex(), d.markdown(), str(sb.grad(g)), sb.render(d).source]
    assert all("7500000000000001" not in f for f in forms)
    assert "c = 0.3x = 0.6" in d.text() and r"c &= 0.3 x = 0.6" in d.latex()
    assert "<B>c</B> = 0.3·x = " in forms[-1] and "∂c/∂x = 0.3 at x = 2" in forms[-1]


# -- what render draws: types, and the one conversion ------------------------------------------
def test_drawable_converts_a_plain_graph_once_and_passes_the_rest_through():
    from symbackprop.render import drawable

    g = sb.parse(CHAIN)
    adj, kind = drawable(g, "backward", of="c", wrt="x")
    assert isinstance(adj, sb.autodiff.Adjoints) and kind == "backward" and adj.of == "c"
    assert drawable(adj) == (adj, "joint") and drawable(g) == (g, "forward")
    assert drawable(adj.graph, "backward") == (adj.graph, "backward")  # already joint
    der, kind = drawable(g, "derivation", of="c", wrt="x", at={"x": 1})
    assert kind == "derivation" and der.grads["x"] == 20 and drawable(der) == (der, kind)
    fwd, kind = drawable(der, "forward")
    assert fwd is der.graph and kind == "forward"
    grads = sb.grad(g, wrt="x")
    assert drawable(grads) == (grads, "backward")
    der2, _ = drawable(grads, "derivation", at={"x": 1})  # derived on the forward graph
    assert der2.graph is g and der2.grads["x"] == 20
    with pytest.raises(GraphError, match="kind='sideways'"):
        drawable(g, "sideways")


def test_render_tells_inputs_apart_by_type_not_by_attributes():
    d = chain_derivation()

    class Lookalike:  # has a Derivation's attributes, is not one
        steps, values, grads, graph = d.steps, d.values, d.grads, d.graph

    with pytest.raises(GraphError, match="not Lookalike"):
        sb.render(Lookalike())
    assert sb.render(d).source == sb.render(d.graph, "derivation", of="c", wrt="x",
                                            at={"x": 1}).source


def test_tensor_derivation_diagram_writes_arrays_as_the_text_does():
    g = sb.models.mlp([4, 3, 2])
    d = sb.derive(g, at=sb.testing.random_inputs(g, {"N": 5}, seed=0))
    z1 = next(ln for ln in d.text().splitlines() if ln.startswith("  z₁ = "))
    value = z1[z1.index("["):]
    assert value.startswith("[5×3, ‖·‖ = ")
    assert _label_lines(sb.render(d).source, "z1")[0] == f"z1 = X @ W1 + b1 = {value}"
