"""Bad input: one case per mistake. Each raises a ``sb.SymbackpropError`` subclass that
is also the matching builtin (ValueError, KeyError, TypeError, SyntaxError), and its
message names the node, what was found and how to fix it. Through the CLI, each prints
exactly one line on stderr, no traceback, and exits with status 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import networkx as nx
import pytest

import symbackprop as sb


def raises(fn, cls, builtin, *needles):
    """Run ``fn``; check the exception's classes and that the message has every needle."""
    with pytest.raises(cls) as info:
        fn()
    err = info.value
    assert isinstance(err, sb.SymbackpropError) and isinstance(err, builtin), type(err).__mro__
    msg = str(err)
    for needle in needles:
        assert needle in msg, f"{needle!r} not in message: {msg}"
    assert "\n" not in msg.strip() or cls is sb.ParseError, msg
    return msg


def cyclic_nx() -> nx.MultiDiGraph:
    G = nx.MultiDiGraph()
    G.add_node("x", op="input")
    G.add_node("h1", op="add")
    G.add_node("h2", op="tanh")
    G.add_edge("x", "h1", arg=0)
    G.add_edge("h2", "h1", arg=1)
    G.add_edge("h1", "h2", arg=0)
    return G


def mlp():
    return sb.models.mlp([784, 256, 10])


def argmax_graph():
    g = sb.Graph(name="argmax_on_path")
    w = g.param("w", shape=(4, 5))
    a = g.name(sb.argmax(w), "winner")
    g.output("L", sb.sum(sb.onehot(a, num=5) * w))
    return g


def onehot_graph():
    g = sb.Graph()
    c = g.param("c", shape=(4,))
    g.output("L", sb.sum(g.name(sb.onehot(c, num=3), "code")))
    return g


# -- graph structure -------------------------------------------------------------------------
def test_cycle_names_the_nodes_on_it():
    msg = raises(lambda: sb.from_networkx(cyclic_nx()), sb.CycleError, ValueError,
                 "cycle", "h1", "h2", "Remove one of these edges")
    assert "x" not in msg.split(".")[0].replace("->", " ").split()  # x is not on the cycle
    assert isinstance(sb.CycleError("c"), sb.GraphError)


def test_unknown_op_suggests_close_names():
    raises(lambda: sb.parse("z = sigmod(x)"), sb.UnknownOpError, KeyError,
           "'z'", "'sigmod'", "Did you mean 'sigmoid'?")
    G = nx.DiGraph()
    G.add_node("x", op="input")
    G.add_node("act", op="sigmod")
    G.add_edge("x", "act")
    raises(lambda: sb.from_networkx(G), sb.UnknownOpError, KeyError,
           "'act'", "'sigmod'", "'sigmoid'")
    g = sb.Graph()
    x = g.input("x")
    raises(lambda: g.apply("sigmod", [x], name="z"), sb.UnknownOpError, KeyError,
           "'z'", "'sigmoid'")
    raises(lambda: g.apply("sigmod", [x]), sb.UnknownOpError, KeyError, "'sigmoid'")
    raises(lambda: g.apply("tahn", [x], name="h"), sb.UnknownOpError, KeyError,
           "'h'", "'tanh'")
    assert "z" not in g and "h" not in g


def test_wrong_arity():
    g = sb.Graph()
    x = g.input("x")
    raises(lambda: g.apply("add", [x]), sb.ArityError, TypeError,
           "'add_1'", "'add'", "takes 2", "got 1", "(x)", "Pass exactly 2")
    raises(lambda: g.apply("tanh", [x, x], name="h"), sb.ArityError, TypeError,
           "'h'", "takes 1", "got 2")
    raises(lambda: sb.parse("y = add(x)"), sb.ArityError, TypeError, "'add'", "takes 2")
    G = nx.DiGraph()
    G.add_node("x", op="input")
    G.add_node("d", op="sub")
    G.add_edge("x", "d")
    raises(lambda: sb.from_networkx(G), sb.ArityError, TypeError, "'d'", "'sub'", "takes 2")


def test_mismatched_matmul_shapes_suggest_transpose():
    g = sb.Graph()
    X = g.input("X", shape=("N", 784))
    W1 = g.param("W1", shape=(256, 784))
    raises(lambda: X @ W1, sb.ShapeError, ValueError,
           "'matmul_1'", "X is (N, 784)", "W1 is (256, 784)", "W1.T", "(784, 256)")
    raises(lambda: g.apply("matmul", [X, W1], name="z1"), sb.ShapeError, ValueError,
           "'z1'", "(N, 784)", "(256, 784)", "W1.T")


def test_broadcast_mismatch():
    g = sb.Graph()
    X = g.input("X", shape=("N", 3))
    b = g.param("b", shape=(4,))
    raises(lambda: g.apply("add", [X, b], name="z"), sb.ShapeError, ValueError,
           "'z'", "X is (N, 3)", "b is (4,)", "3 and 4", "do not broadcast")


def test_other_shape_rules():
    g = sb.Graph()
    X = g.input("X", shape=("N", 3))
    raises(lambda: g.apply("sum", [X], {"axis": 2}, name="s"), sb.ShapeError, ValueError,
           "'s'", "axis 2", "out of range", "between -2 and 1")
    raises(lambda: g.apply("reshape", [X], {"shape": (4, 4)}, name="r"), sb.ShapeError,
           ValueError, "'r'", "(N, 3)", "Keep the number of elements")
    y = g.input("y", shape=("M",), dtype="int")
    raises(lambda: g.apply("softmax_cross_entropy", [X, y], name="L"), sb.ShapeError,
           ValueError, "'L'", "labels", "Declare y with shape (N,)")
    raises(lambda: g.apply("sum", [X], {"axes": 0}, name="s"), sb.GraphError, ValueError,
           "'sum'", "'axes'", "axis")


def test_declaration_mistakes():
    g = sb.Graph()
    g.input("x")
    raises(lambda: g.input("x"), sb.GraphError, ValueError, "'x'", "already exists")
    raises(lambda: g.input(""), sb.GraphError, ValueError, "non-empty string")
    raises(lambda: g.input("v", shape=(3, -1)), sb.ShapeError, ValueError, "'v'", "-1")
    raises(lambda: g.input("v", dtype="complex"), sb.GraphError, ValueError, "'v'", "complex")
    raises(lambda: g.const("abc"), sb.GraphError, ValueError, "'abc'", "g.input()")
    h = sb.Graph()
    raises(lambda: g["x"] + h.input("z"), sb.GraphError, ValueError, "'z'", "another graph")
    with pytest.raises(KeyError, match="'xx'.*Did you mean 'x'"):
        g["xx"]
    raises(lambda: sb.models.mlp([4, 3], activation="softmax"), sb.GraphError, ValueError,
           "'softmax'", "relu")
    raises(lambda: sb.models.mlp([4, 3], loss="hinge"), sb.GraphError, ValueError, "'hinge'")


# -- differentiation -----------------------------------------------------------------------------
def test_wrt_not_in_graph():
    raises(lambda: sb.differentiate(mlp(), wrt=["W9"]), sb.GradError, ValueError,
           "wrt 'W9'", "not in the graph", "W1")
    raises(lambda: sb.compile(mlp(), wrt=["W 1"]), sb.GradError, ValueError,
           "'W 1'", "Did you mean 'W1'")
    raises(lambda: sb.differentiate(mlp(), wrt=["y"]), sb.GradError, ValueError,
           "'y'", "integers", "Remove it from wrt")


def test_of_not_in_graph():
    raises(lambda: sb.differentiate(mlp(), of="loss"), sb.GradError, ValueError,
           "'loss'", "not in the graph", "Did you mean 'logits'")


def test_non_scalar_loss():
    raises(lambda: sb.differentiate(mlp(), of="logits"), sb.GradError, ValueError,
           "'logits'", "(N, 10)", "not a scalar", "sb.mean")
    g = sb.Graph()
    g.output("h", sb.tanh(g.param("w", shape=(3,))))
    raises(lambda: sb.differentiate(g), sb.GradError, ValueError, "['h']", "sb.mean")


def test_non_differentiable_op_on_the_gradient_path():
    raises(lambda: sb.differentiate(argmax_graph()), sb.GradError, ValueError,
           "'winner'", "'argmax'", "no derivative", "w", "'L'", "pass it as an input")
    raises(lambda: sb.differentiate(onehot_graph()), sb.GradError, ValueError,
           "'code'", "'onehot'", "no derivative")
    # off the path it is fine: labels feed onehot inside the cross-entropy backward
    assert sb.check_grad(sb.models.mlp([3, 2])).ok


def test_check_grad_bad_at():
    g = sb.parse("L = (w*x - y)**2", params=["w"])
    raises(lambda: sb.check_grad(g, at={"q": 1.0}), sb.GradError, ValueError, "'q'")


def test_compiled_missing_arrays():
    fn = sb.compile(sb.parse("L = (w*x - y)**2", params=["w"]))
    raises(lambda: fn.value_and_grad(w=1.0, x=2.0), sb.GraphError, ValueError,
           "value_and_grad()", "'y'", "Pass them by name")


# -- statements ------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, needles", [
    ("a = ", ["'a = '", "Write statements like"]),
    ("import os", ["'import os'", "not an assignment", "Write e.g."]),
    ("a = b; a = c", ["'a'", "assigned twice", "own name"]),
    ("x; import os", ["'x'", "not an assignment"]),
    ("y = x; import os", ["statement 2", "'import os'"]),
    ("b = a + 1; a = 2", ["'a'", "used before it is assigned"]),
    ("", ["no statements", "Write e.g."]),
    ("y = x.__class__", ["x.__class__", "not allowed"]),
    ("y = __import__('os')", ["not allowed"]),
    ("y = x if x else 1", ["not allowed"]),
    ("y = sum(x, axis=foo)", ["keyword arguments must be literal"]),
    ("y = 3", None),  # a constant statement is fine
])
def test_malformed_statements(text, needles):
    if needles is None:
        assert sb.parse(text).outputs == ["y"]
        return
    raises(lambda: sb.parse(text), sb.ParseError, SyntaxError, *needles)


def test_statements_are_never_evaluated(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.chdir(tmp_path)
    for text in [f"y = __import__('os').system('touch {marker}')",
                 f"import os; os.system('touch {marker}')",
                 "y = open('pwned', 'w')"]:
        with pytest.raises(sb.SymbackpropError):
            sb.parse(text)
    assert not marker.exists()


# -- JSON files ----------------------------------------------------------------------------------
def _node_link(nodes, edges, outputs=None):
    return json.dumps({"directed": True, "multigraph": True,
                       "graph": {"outputs": outputs} if outputs else {},
                       "nodes": nodes, "edges": edges})


JSON_FILES = {
    "invalid.json": "{nodes: [",
    "no_nodes.json": json.dumps({"edges": []}),
    "a_list.json": json.dumps([1, 2, 3]),
    "ghost_edge.json": _node_link(
        [{"id": "x", "op": "input"}, {"id": "y", "op": "mul"}],
        [{"source": "x", "target": "y", "arg": 0}, {"source": "ghost", "target": "y", "arg": 1}]),
    "no_op.json": _node_link([{"id": "x"}], []),
    "unknown_op.json": _node_link(
        [{"id": "x", "op": "input"}, {"id": "z", "op": "sigmod"}],
        [{"source": "x", "target": "z", "arg": 0}]),
    "bad_output.json": _node_link([{"id": "x", "op": "input"}], [], outputs=["L"]),
    "cycle.json": _node_link(
        [{"id": "x", "op": "input"}, {"id": "h1", "op": "add"}, {"id": "h2", "op": "tanh"}],
        [{"source": "x", "target": "h1", "arg": 0}, {"source": "h2", "target": "h1", "arg": 1},
         {"source": "h1", "target": "h2", "arg": 0}]),
    "shapes.json": _node_link(
        [{"id": "X", "op": "input", "shape": ["N", 784]},
         {"id": "W1", "op": "param", "shape": [256, 784]}, {"id": "z1", "op": "matmul"}],
        [{"source": "X", "target": "z1", "arg": 0}, {"source": "W1", "target": "z1", "arg": 1}]),
    "bad_args.json": _node_link(
        [{"id": "a", "op": "input"}, {"id": "b", "op": "input"}, {"id": "d", "op": "sub"}],
        [{"source": "a", "target": "d", "arg": 0}, {"source": "b", "target": "d", "arg": 2}]),
    "logits.json": None,  # a valid MLP file, used with --of logits
    "argmax.json": None,
}

JSON_ERRORS = {
    "invalid.json": (sb.ParseError, SyntaxError, ["invalid.json", "not valid JSON", "line 1",
                                                  "g.save()"]),
    "no_nodes.json": (sb.ParseError, SyntaxError, ["no_nodes.json", "'nodes'"]),
    "a_list.json": (sb.ParseError, SyntaxError, ["a_list.json", "node-link"]),
    "ghost_edge.json": (sb.ParseError, SyntaxError, ["'ghost'", "ghost -> y", "not in 'nodes'",
                                                     "Add the node"]),
    "no_op.json": (sb.GraphError, ValueError, ["'x'", "no 'op'", "op='input'"]),
    "unknown_op.json": (sb.UnknownOpError, KeyError, ["'z'", "'sigmod'", "'sigmoid'"]),
    "bad_output.json": (sb.GraphError, ValueError, ["output 'L'", "not in the graph"]),
    "cycle.json": (sb.CycleError, ValueError, ["h1 -> h2", "Remove"]),
    "shapes.json": (sb.ShapeError, ValueError, ["'z1'", "(N, 784)", "(256, 784)", "W1.T"]),
    "bad_args.json": (sb.GraphError, ValueError, ["'d'", "[0, 2]", "[0, 1]"]),
}


@pytest.fixture(scope="module")
def json_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("json")
    for name, text in JSON_FILES.items():
        if text is not None:
            (d / name).write_text(text)
    sb.models.mlp([4, 3, 2]).save(d / "logits.json")
    argmax_graph().save(d / "argmax.json")
    return d


@pytest.mark.parametrize("name", list(JSON_ERRORS))
def test_malformed_json(name, json_dir):
    cls, builtin, needles = JSON_ERRORS[name]
    raises(lambda: sb.load(json_dir / name), cls, builtin, *needles)


def test_missing_file_is_an_oserror(tmp_path):
    with pytest.raises(OSError):
        sb.load(tmp_path / "nope.json")


# -- the command line ----------------------------------------------------------------------------
def _cli():
    exe = os.path.join(os.path.dirname(sys.executable), "symbackprop")
    return [exe] if os.path.exists(exe) else [sys.executable, "-m", "symbackprop.cli"]


# (command line after `symbackprop`, words the one stderr line must contain)
CLI_CASES = {
    "cycle": (["codegen", "{d}/cycle.json"], ["CycleError", "h1 -> h2"]),
    "unknown-op": (["codegen", "z = sigmod(x)"], ["UnknownOpError", "'z'", "'sigmoid'"]),
    "unknown-op-json": (["check", "{d}/unknown_op.json"], ["UnknownOpError", "'sigmoid'"]),
    "arity": (["codegen", "y = add(x)"], ["ArityError", "takes 2"]),
    "shapes": (["codegen", "{d}/shapes.json"], ["ShapeError", "'z1'", "W1.T"]),
    "wrt": (["codegen", "{d}/logits.json", "--wrt", "W9"], ["GradError", "'W9'"]),
    "of": (["check", "mlp:4-3-2", "--of", "loss"], ["GradError", "'loss'", "'logits'"]),
    "non-scalar": (["codegen", "{d}/logits.json", "--of", "logits"],
                   ["GradError", "not a scalar", "sb.mean"]),
    "argmax": (["check", "{d}/argmax.json"], ["GradError", "'winner'", "'argmax'"]),
    "empty-stmt": (["codegen", "a = "], ["ParseError", "'a = '"]),
    "import": (["codegen", "import os"], ["ParseError", "'import os'"]),
    "twice": (["check", "a = b; a = c"], ["ParseError", "assigned twice"]),
    "semicolon": (["codegen", "x; import os"], ["ParseError", "not an assignment"]),
    "invalid-json": (["codegen", "{d}/invalid.json"], ["ParseError", "not valid JSON"]),
    "no-nodes": (["check", "{d}/no_nodes.json"], ["ParseError", "'nodes'"]),
    "ghost-edge": (["codegen", "{d}/ghost_edge.json"], ["ParseError", "'ghost'"]),
    "missing-file": (["codegen", "{d}/nope.json"], ["does not exist"]),
    "bad-model": (["codegen", "mlp:784-x-10"], ["ParseError", "mlp:784-256-10"]),
    "bad-at": (["check", "L = w*x", "--at", "w=two"], ["ParseError", "--at", "w=2,x=3"]),
}


# These run in a real process through the installed entry point; every case also
# runs in-process through cli.main() below (the same code path, without ~1 s of imports).
SUBPROCESS_CASES = ["cycle", "unknown-op", "non-scalar", "invalid-json"]


@pytest.fixture(scope="module")
def cli_results(json_dir):
    """Run the subprocess cases at once, in parallel."""
    def run(args):
        argv = _cli() + [a.format(d=json_dir) for a in args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)

    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {k: pool.submit(run, CLI_CASES[k][0]) for k in SUBPROCESS_CASES}
        return {k: f.result() for k, f in futures.items()}


def _check_one_line(code, stdout, stderr, needles):
    lines = stderr.splitlines()
    assert code == 2, (code, stderr)
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    assert stdout == ""


@pytest.mark.parametrize("key", SUBPROCESS_CASES)
def test_cli_error_is_one_line_and_exit_2(key, cli_results):
    res = cli_results[key]
    _check_one_line(res.returncode, res.stdout, res.stderr, CLI_CASES[key][1])


@pytest.mark.parametrize("key", list(CLI_CASES))
def test_cli_main_error_is_one_line_and_returns_2(key, json_dir, capsys):
    from symbackprop import cli

    args, needles = CLI_CASES[key]
    code = cli.main([a.format(d=json_dir) for a in args])
    out, err = capsys.readouterr()
    _check_one_line(code, out, err, needles)


def test_cli_success_is_exit_0(json_dir):
    res = subprocess.run(_cli() + ["codegen", str(json_dir / "logits.json")],
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0 and res.stderr == ""
    assert "def value_and_grad(" in res.stdout
    compile(res.stdout, "gen.py", "exec")


def test_exceptions_subclass_builtins():
    pairs = [(sb.GraphError, ValueError), (sb.CycleError, ValueError),
             (sb.UnknownOpError, KeyError), (sb.ArityError, TypeError),
             (sb.ShapeError, ValueError), (sb.GradError, ValueError),
             (sb.ParseError, SyntaxError), (sb.CodegenError, NotImplementedError)]
    for cls, builtin in pairs:
        assert issubclass(cls, sb.SymbackpropError) and issubclass(cls, builtin)
    # KeyError would repr() its message; ours prints it as written
    assert str(sb.UnknownOpError("op 'x'")) == "op 'x'"
