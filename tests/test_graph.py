"""The graph: three ways to declare it give the same graph; networkx and JSON round trips
keep everything (argument order, repeated arguments, attributes); the tensor builder
and the model builders name and shape their nodes as documented."""

from __future__ import annotations

import json

import networkx as nx
import numpy as np
import pytest
import sympy as sp

import symbackprop as sb


def structure(g: sb.Graph):
    """Everything that defines the computation, independent of insertion order."""
    nodes = {}
    for n, d in g.nx.nodes(data=True):
        nodes[n] = (d["op"], tuple(g.args(n)), tuple(d["shape"]), d["dtype"],
                    dict(d["attrs"]), d.get("value"))
    return nodes, list(g.outputs)


def builder_graph() -> sb.Graph:
    g = sb.Graph()
    x = g.input("x")
    w = g.param("w")
    y = g.input("y")
    g.output("L", (w * x - y) ** 2)
    return g


def networkx_multidigraph() -> nx.MultiDiGraph:
    G = nx.MultiDiGraph(outputs=["L"])
    G.add_node("x", op="input")
    G.add_node("w", op="param")
    G.add_node("y", op="input")
    G.add_node("const_1", op="const", value=2)
    G.add_node("mul_1", op="mul")
    G.add_node("sub_1", op="sub")
    G.add_node("L", op="pow")
    # edges in a scrambled order: the argument position comes from "arg"
    G.add_edge("const_1", "L", arg=1)
    G.add_edge("x", "mul_1", arg=1)
    G.add_edge("y", "sub_1", arg=1)
    G.add_edge("w", "mul_1", arg=0)
    G.add_edge("mul_1", "sub_1", arg=0)
    G.add_edge("sub_1", "L", arg=0)
    return G


# -- three ways in ------------------------------------------------------------------------
def test_builder_parser_and_networkx_give_the_same_graph():
    a = builder_graph()
    b = sb.parse("L = (w*x - y)**2", params=["w"])
    c = sb.from_networkx(networkx_multidigraph())
    assert structure(a) == structure(b) == structure(c)
    assert structure(a)[0]["L"] == ("pow", ("sub_1", "const_1"), (), "float", {}, None)
    assert structure(a)[0]["const_1"][0::5] == ("const", 2)
    assert a.role("w") == b.role("w") == c.role("w") == "param"
    assert a.outputs == b.outputs == c.outputs == ["L"]


def test_plain_digraph_with_args_list_expresses_x_times_x():
    G = nx.DiGraph()
    G.add_node("x", op="input")
    G.add_node("y", op="mul", args=["x", "x"])
    G.add_edge("x", "y")
    g = sb.from_networkx(G)
    assert g.args("y") == ["x", "x"]
    assert g.nx.number_of_edges("x", "y") == 2
    assert structure(g) == structure(sb.parse("y = x * x"))


def test_plain_digraph_with_arg_on_edges():
    G = nx.DiGraph()
    G.add_node("a", op="input")
    G.add_node("b", op="input")
    G.add_node("d", op="sub")
    G.add_edge("b", "d", arg=1)
    G.add_edge("a", "d", arg=0)
    g = sb.from_networkx(G)
    assert g.args("d") == ["a", "b"]
    assert g.outputs == ["d"]  # no graph["outputs"]: the nodes nothing consumes


def test_x_times_x_has_two_edges():
    g = sb.parse("y = x * x")
    assert g.nx.number_of_edges("x", "y") == 2
    G = sb.to_networkx(g)
    assert isinstance(G, nx.MultiDiGraph)
    assert sorted(d["arg"] for _, _, d in G.in_edges("y", data=True)) == [0, 1]
    fn = sb.compile(g, wrt=["x"])
    _, grads = fn.value_and_grad(x=3.0)
    assert float(grads["x"]) == 6.0


@pytest.mark.parametrize("text, args", [
    ("d = a - b", ["a", "b"]),
    ("d = b - a", ["b", "a"]),
    ("d = a / b", ["a", "b"]),
    ("d = b ** a", ["b", "a"]),
])
def test_argument_order_survives_every_round_trip(text, args, tmp_path):
    g = sb.parse(text)
    assert g.args("d") == args
    for h in (sb.from_networkx(sb.to_networkx(g)), _json_round_trip(g, tmp_path)):
        assert h.args("d") == args
    fn = sb.compile(g, wrt=["a", "b"])
    val = float(fn.forward(a=3.0, b=2.0)["d"])
    want = {"d = a - b": 1.0, "d = b - a": -1.0, "d = a / b": 1.5, "d = b ** a": 8.0}[text]
    assert val == want


def test_matmul_argument_order_survives(tmp_path):
    g = sb.Graph()
    A = g.input("A", shape=(2, 3))
    B = g.input("B", shape=(3, 4))
    g.output("C", A @ B)
    g.output("L", sb.sum(g["C"]))
    for h in (g, sb.from_networkx(sb.to_networkx(g)), _json_round_trip(g, tmp_path)):
        assert h.args("C") == ["A", "B"]
        assert h["C"].shape == (2, 4)
    a, b = np.arange(6.0).reshape(2, 3), np.arange(12.0).reshape(3, 4)
    out = sb.compile(g, wrt=["A", "B"]).forward(A=a, B=b)["C"]
    np.testing.assert_array_equal(out, np.einsum("ij,jk->ik", a, b))


# -- round trips ------------------------------------------------------------------------------
def _json_round_trip(g: sb.Graph, tmp_path) -> sb.Graph:
    p = tmp_path / f"{g.nx.graph.get('name', 'g')}-{len(g)}.json"
    g.save(p)
    return sb.load(p)


def _graphs():
    yield "chain", sb.parse("a = 2*x; b = a + 3; c = b**2")
    yield "lsq", builder_graph()
    yield "mlp", sb.models.mlp([784, 256, 256, 256, 10])
    yield "mlp-tanh-mse", sb.models.mlp([4, 3, 2], activation="tanh", loss="mse")
    yield "joint", sb.differentiate(sb.models.mlp([4, 3, 2], activation="sigmoid")).graph
    yield "joint-mean", sb.differentiate(sb.parse("L = mean(tanh(w*x))", params=["w"])).graph
    g = sb.Graph()
    t = g.input("t", shape=("N", 2, 3)) * g.const([[1.0, 2.0, 3.0]])
    s = sb.sum(sb.transpose(t, axes=(2, 0, 1)), axis=(0, 2), keepdims=True)
    g.output("L", sb.mean(sb.reshape(s, shape=(-1,))))
    yield "attrs", g


GRAPHS = dict(_graphs())


@pytest.mark.parametrize("key", list(GRAPHS))
def test_json_round_trip(key, tmp_path):
    g = GRAPHS[key]
    h = _json_round_trip(g, tmp_path)
    assert structure(h) == structure(g)
    assert h.nx.graph["name"] == g.nx.graph["name"]
    # a second save writes the same bytes
    p1, p2 = tmp_path / "1.json", tmp_path / "2.json"
    g.save(p1)
    h.save(p2)
    assert p1.read_bytes() == p2.read_bytes()
    data = json.loads(p1.read_text())
    assert {"nodes", "edges"} <= set(data) and data["multigraph"] and data["directed"]


@pytest.mark.parametrize("key", list(GRAPHS))
def test_networkx_round_trip(key):
    g = GRAPHS[key]
    G = sb.to_networkx(g)
    assert isinstance(G, nx.MultiDiGraph) and nx.is_directed_acyclic_graph(G)
    assert G.graph["outputs"] == g.outputs
    h = sb.from_networkx(G)
    assert structure(h) == structure(g)
    # lossless: annotations such as phase / adjoint_of survive too
    assert dict(h.nx.nodes(data=True)) == dict(g.nx.nodes(data=True))
    # to_networkx returns a copy
    G.add_node("extra", op="input")
    assert "extra" not in g


def test_joint_graph_has_ew_nodes_that_survive_json(tmp_path):
    g = GRAPHS["joint"]
    ews = [n for n, d in g.nx.nodes(data=True) if d["op"] == "ew"]
    assert ews
    h = _json_round_trip(g, tmp_path)
    for n in ews:
        e = h.nx.nodes[n]["attrs"]["expr"]
        assert isinstance(e, sp.Expr)
        assert sp.simplify(e - g.nx.nodes[n]["attrs"]["expr"]) == 0
        assert e == g.nx.nodes[n]["attrs"]["expr"]


def test_loaded_graph_computes_the_same(tmp_path):
    g = sb.models.mlp([5, 4, 3])
    h = _json_round_trip(g, tmp_path)
    arrays = sb.testing.random_inputs(g, {"N": 6})
    l1, g1 = sb.compile(g).value_and_grad(**arrays)
    l2, g2 = sb.compile(h).value_and_grad(**arrays)
    assert float(l1) == float(l2)
    for k in g1:
        np.testing.assert_array_equal(g1[k], g2[k])


def test_const_array_and_symbolic_values_round_trip(tmp_path):
    g = sb.Graph()
    x = g.input("x", shape=(3,))
    c = g.const([1.0, 2.0, 3.0], name="c")
    k = g.const(1 / sp.Symbol("N", integer=True, positive=True), name="k")
    g.output("L", sb.sum(x * c) * k)
    h = _json_round_trip(g, tmp_path)
    assert h.nx.nodes["c"]["value"] == [1.0, 2.0, 3.0]
    assert h.nx.nodes["k"]["value"] == g.nx.nodes["k"]["value"]
    assert structure(h) == structure(g)


# -- the tensor builder ------------------------------------------------------------------------
def test_tensor_builder_shapes():
    g = sb.Graph()
    X = g.input("X", shape=("N", 784))
    W1 = g.param("W1", shape=(784, 256))
    b1 = g.param("b1", shape=(256,))
    h = sb.relu(X @ W1 + b1)
    assert h.shape == ("N", 256)
    assert h.op == "relu"
    assert (X @ W1).shape == ("N", 256)
    assert W1.T.shape == (256, 784)
    assert sb.sum(h, axis=0).shape == (256,)
    assert sb.mean(h, axis=1, keepdims=True).shape == ("N", 1)
    assert sb.mean(h).shape == ()
    assert sb.reshape(h, shape=(-1, 16, 16)).shape == ("N", 16, 16)
    assert sb.softmax(h).shape == ("N", 256)
    assert (2 * h).shape == ("N", 256)
    assert g.role("X") == "input" and g.role("W1") == "param" and g.role(h.name) == "op"


def test_numpy_scalars_and_arrays_become_constants():
    g = sb.Graph()
    x = g.input("x", shape=(3,))
    y = x * np.array([1.0, 2.0, 3.0])
    assert y.op == "mul"
    c = g.args(y.name)[1]
    assert g.role(c) == "const" and g.nx.nodes[c]["shape"] == (3,)


# -- model builders ------------------------------------------------------------------------------
@pytest.mark.parametrize("sizes", [(784, 256, 256, 256, 10), (4, 3), (5, 4, 3)])
def test_mlp_names_and_shapes(sizes):
    g = sb.models.mlp(sizes)
    depth = len(sizes) - 1
    params = [f"{p}{k}" for k in range(1, depth + 1) for p in ("W", "b")]
    assert g.nodes("param") == params
    assert g.nodes("input") == ["X", "y"]
    assert g.outputs == ["logits", "L"]
    assert g["X"].shape == ("N", sizes[0])
    assert g["y"].shape == ("N",) and g["y"].dtype == "int"
    for k in range(1, depth + 1):
        assert g[f"W{k}"].shape == (sizes[k - 1], sizes[k])
        assert g[f"b{k}"].shape == (sizes[k],)
    for k in range(1, depth):
        assert g[f"z{k}"].shape == g[f"h{k}"].shape == ("N", sizes[k])
        assert g[f"h{k}"].op == "relu"
    assert g["logits"].shape == ("N", sizes[-1])
    assert g["L"].shape == () and g["L"].op == "softmax_cross_entropy"
    assert g.args("L") == ["logits", "y"]


def test_mlp_mse_takes_float_targets():
    g = sb.models.mlp([5, 4, 3], activation="tanh", loss="mse")
    assert g["y"].shape == ("N", 3) and g["y"].dtype == "float"
    assert g["L"].op == "mse"
    assert g["h1"].op == "tanh"
    assert sb.check_grad(g).ok


def test_graph_copy_is_independent():
    g = builder_graph()
    h = g.copy()
    h.output("M", h["L"] * 2)
    assert "M" in h and "M" not in g
    assert g.outputs == ["L"] and h.outputs == ["L", "M"]


def test_schema_doc_example_runs(tmp_path, monkeypatch):
    """The example in docs/graph-schema.md runs as written."""
    import pathlib
    import re

    doc = pathlib.Path(__file__).resolve().parent.parent / "docs" / "graph-schema.md"
    if not doc.exists():
        pytest.skip("docs/graph-schema.md is not in this checkout")
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), re.DOTALL)
    assert blocks
    monkeypatch.chdir(tmp_path)
    for code in blocks:
        exec(compile(code, str(doc), "exec"), {})  # noqa: S102 -- our own documentation
    assert (tmp_path / "tiny.json").exists()


def test_topo_order_is_deterministic():
    a = sb.models.mlp([4, 3, 2]).topo_order()
    b = sb.models.mlp([4, 3, 2]).topo_order()
    assert a == b and a[0] == "X"


@pytest.mark.parametrize("seed", range(20))
def test_topo_order_is_networkx_lexicographic_order_by_insertion(seed):
    """topo_order is networkx's lexicographical sort keyed by insertion order, also with
    repeated edges (x * x) and nodes inserted out of dependency order."""
    import random

    rng = random.Random(seed)
    names = [f"n{i}" for i in range(30)]
    rank = {n: rng.random() for n in names}  # a hidden order: edges go up it
    g = sb.Graph()
    for n in rng.sample(names, len(names)):  # inserted in another order
        g.nx.add_node(n, op="input", shape=(), dtype="float", attrs={})
    for _ in range(60):
        u, v = sorted(rng.sample(names, 2), key=rank.__getitem__)
        g.nx.add_edge(u, v, arg=0)
    order = {n: i for i, n in enumerate(g.nx)}
    assert g.topo_order() == list(nx.lexicographical_topological_sort(g.nx, key=order.get))


def test_topo_order_names_a_cycle():
    g = sb.parse("a = 2*x; b = a + 3")
    g.nx.add_edge("b", "a", arg=2)
    with pytest.raises(sb.CycleError, match="cycle"):
        g.topo_order()


def test_rename_keeps_edges_and_moves_the_node_last():
    g = sb.parse("a = x * x; b = a + x; c = b * a")
    g.rename("a", "z")
    assert list(g.nx)[-1] == "z"
    assert g.args("z") == ["x", "x"] and g.args("b") == ["z", "x"] and g.args("c") == ["b", "z"]
    assert [c for c, _ in g.consumers("z")] == ["b", "c"]


def test_annotation_table_in_the_docs_is_graph_annotations():
    """docs/graph-schema.md shows graph.ANNOTATIONS: the same names, meanings, writers and
    readers, and every annotation has an accessor on Graph."""
    import pathlib

    from symbackprop.graph import ANNOTATIONS, Graph

    doc = (pathlib.Path(__file__).parent.parent / "docs" / "graph-schema.md").read_text()
    section = doc[doc.index("## Annotations of the joint graph"):]
    rows = [ln for ln in section.splitlines() if ln.startswith("| `")]
    table = {}
    for ln in rows:
        name, meaning, writers, readers = (c.strip() for c in ln.strip("|").split(" | "))
        table[name.strip("`")] = (meaning, writers, readers)
    assert table == ANNOTATIONS
    assert all(callable(getattr(Graph, name, None)) for name in ANNOTATIONS)


def test_annotation_accessors_read_the_joint_graph():
    adj = sb.differentiate(sb.parse("a = 2*x; b = a + 3; c = b**2"), of="c", wrt=["x"])
    j = adj.graph
    assert j.phase("a") == "forward" and j.phase("dx") == "backward"
    assert j.is_backward("dx") and not j.is_backward("x")
    assert j.adjoint_of("dx") == "x" and j.adjoint_of("x") is None
    assert j.is_leaf("x") and not j.is_leaf("a") and j.opdef("a").name == "mul"
    assert j.opdef("x") is None
    # db = dc * 2b is c's VJP: b's one contribution, through c, and b's whole gradient
    assert (j.vjp_of("db"), j.grad_of("db"), j.via("db"), j.adjoint_of("db")) == (
        "c", "b", "c", "b")
    assert j.grad_of("dc") is None and j.via("dc") is None and j.vjp_of("dc") is None
    assert j.fused("a") == []
    f = sb.optimize.fuse(j)
    merged = [n for n in f.nx if f.fused(n)]
    assert merged and all(isinstance(f.fused(n), list) for n in merged)
