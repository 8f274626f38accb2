"""The command line at its edges: .py SPECs that raise or hold networkx graphs, the
messages that name flags, internal ops, unnamed networks and --help. Every command
asserts its exit status and that no traceback is printed."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import symbackprop as sb
from symbackprop.cli import load_spec, main
from symbackprop.ops import registry


def run(capsys, *argv) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return status, out, err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def spec(tmp_path, name: str, source: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source).lstrip())
    return str(path)


# -- a .py SPEC that raises: one line naming the file, the line and the error, exit 2 ----------

RAISING = {
    "syntax": ("import symbackprop as sb\n\ngraph = sb.parse('L = x**2'\n", 3,
               "SyntaxError: '(' was never closed"),
    "import": ("import symbackprop as sb\n\nscale = 1 / 0\n", 3,
               "ZeroDivisionError: division by zero"),
    "build": (("import symbackprop as sb\n\n\ndef width():\n    raise ValueError('no width')\n"
               "\n\ndef build():\n    return sb.models.mlp([4, width(), 2])\n"), 5,
              "ValueError: no width"),
    "exit": ("import sys\n\nsys.exit(3)\n", 3, "SystemExit: 3"),
    "shape": (("import symbackprop as sb\n\n\ndef build():\n    g = sb.Graph()\n"
               "    a, b = g.input('a', shape=(2, 3)), g.input('b', shape=(4, 5))\n"
               "    return g.output('L', sb.sum(a @ b))\n"), 7,
              "ShapeError: node 'matmul_1' = matmul(a, b)"),
}


@pytest.mark.parametrize("case", sorted(RAISING))
@pytest.mark.parametrize("command", ["check", "codegen", "derive"])
def test_py_spec_that_raises_is_one_line(case, command, tmp_path, capsys):
    source, line, error = RAISING[case]
    path = spec(tmp_path, f"net_{case}.py", source)
    status, _, err = run(capsys, command, path)
    assert status == 2
    msg = one_line(err)
    assert msg.startswith(f"error: GraphError: file {path!r}, line {line}: {error}"), msg


def test_py_spec_importing_a_broken_module_names_both(tmp_path, capsys, monkeypatch):
    (tmp_path / "helper_mod.py").write_text("def f(:\n    pass\n")
    path = spec(tmp_path, "net.py", "import helper_mod\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    status, _, err = run(capsys, "check", path)
    assert status == 2
    msg = one_line(err)
    assert f"file {path!r}, line 1: SyntaxError: invalid syntax" in msg
    assert f"({tmp_path / 'helper_mod.py'}, line 1)" in msg


def test_py_spec_raising_runs_as_a_real_process(tmp_path):
    """The installed command, not only main(): no traceback reaches the terminal."""
    path = spec(tmp_path, "net.py", "import symbackprop as sb\n\nraise RuntimeError('boom')\n")
    r = subprocess.run([sys.executable, "-m", "symbackprop.cli", "check", path],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert one_line(r.stderr) == (f"error: GraphError: file {path!r}, line 3: RuntimeError: boom. "
                                  "Fix the file: symbackprop runs it to build the graph.")


# -- a .py SPEC holding a networkx graph goes through sb.from_networkx ---------------------------

NX_SPECS = {
    # DiGraph: argument order from each node's args list
    "digraph": """
        import networkx as nx

        graph = nx.DiGraph()
        graph.add_node("x", op="input")
        graph.add_node("y", op="input")
        graph.add_node("d", op="sub", args=["x", "y"])
        graph.add_edges_from([("x", "d"), ("y", "d")])
        graph.add_node("L", op="square")
        graph.add_edge("d", "L")
        """,
    # MultiDiGraph: argument order on the edges, returned by build()
    "multidigraph": """
        import networkx as nx


        def build():
            G = nx.MultiDiGraph(outputs=["L"])
            for n in ("x", "y"):
                G.add_node(n, op="input", shape=[], dtype="float")
            G.add_node("d", op="sub")
            G.add_edge("y", "d", arg=1)
            G.add_edge("x", "d", arg=0)
            G.add_node("L", op="mul")
            G.add_edge("d", "L", arg=0)
            G.add_edge("d", "L", arg=1)
            return G
        """,
}


@pytest.mark.parametrize("kind", sorted(NX_SPECS))
def test_py_spec_with_a_networkx_graph(kind, tmp_path, capsys):
    path = spec(tmp_path, f"{kind}.py", NX_SPECS[kind])
    status, out, _ = run(capsys, "derive", path, "--wrt", "x", "--at", "x=3,y=1")
    assert status == 0
    assert re.search(r"^So dL/dx = (.* = )?4\.$", out, re.MULTILINE), out  # 2(x - y)
    status, out, _ = run(capsys, "check", path)
    assert status == 0 and "all ok" in out
    status, out, _ = run(capsys, "codegen", path)
    assert status == 0
    fn = sb.compile(load_spec(path), wrt=["x", "y"])
    loss, grads = fn.value_and_grad(x=3.0, y=1.0)
    assert (loss, grads) == (4.0, {"x": 4.0, "y": -4.0})  # (x - y)^2: 2(x - y), -2(x - y)


@pytest.mark.parametrize("source, found", [
    ("import networkx as nx\ngraph = nx.Graph()\n", "'graph' is an undirected networkx graph"),
    ("graph = 42\n", "'graph' is a int"),
    ("def build():\n    return None\n", "build() returns None"),
    ("x = 1\n", "defines neither 'graph' nor 'build()'"),
])
def test_py_spec_without_a_usable_graph(source, found, tmp_path, capsys):
    path = spec(tmp_path, "net.py", source)
    status, _, err = run(capsys, "check", path)
    assert status == 2
    msg = one_line(err)
    assert f"file {path!r}" in msg and found in msg and "networkx" in msg, msg


def one_op_spec(tmp_path, op: str) -> str:
    """A .py SPEC whose graph is a networkx DiGraph: L = op(x)."""
    return spec(tmp_path, "net.py", f"""
        import networkx as nx

        graph = nx.DiGraph()
        graph.add_node("x", op="input")
        graph.add_node("L", op="{op}")
        graph.add_edge("x", "L")
        """)


def test_py_spec_networkx_graph_with_a_bad_node_is_one_line(tmp_path, capsys):
    path = one_op_spec(tmp_path, "idenity")
    status, _, err = run(capsys, "check", path)
    assert status == 2
    assert "node 'L' uses op 'idenity', which is not registered" in one_line(err)


# -- messages ------------------------------------------------------------------------------------

THREE_INPUTS = """
    import symbackprop as sb


    def build():
        g = sb.Graph("three")
        a, b, c = (g.input(n, shape=("N", 3)) for n in "abc")
        w = g.param("w", shape=(3,))
        g.output("L", sb.mse(a * w + b, c))
        return g
    """


def test_train_script_inputs_error_names_flags_on_the_cli(tmp_path, capsys):
    path = spec(tmp_path, "three.py", THREE_INPUTS)
    status, _, err = run(capsys, "train-script", path)
    assert status == 2
    msg = one_line(err)
    assert "Pass --features <input> and --target <input>." in msg and "features=" not in msg
    status, _, err = run(capsys, "train-script", path, "--features", "nope")
    assert status == 2
    assert "--features 'nope' is not an input the loss 'L' uses; inputs: a, b, c." \
        in one_line(err)
    status, _, err = run(capsys, "train-script", path, "--features", "a", "--target", "c")
    assert status == 2  # b is neither
    assert "Pass --features <input> and --target <input>." in one_line(err)
    status, _, err = run(capsys, "train-script", "mlp:4-3-2", "--target", "X", "--features", "y")
    assert status == 2 and "features input 'y' holds integers" in one_line(err)


def test_train_script_inputs_error_names_keywords_in_python():
    with pytest.raises(sb.CodegenError, match=r"features='nope' is not an input"):
        sb.training_script(sb.models.mlp([4, 3, 2]), features="nope")
    three = {}
    exec(textwrap.dedent(THREE_INPUTS), three)  # noqa: S102 -- the test's own source
    with pytest.raises(sb.CodegenError) as e:
        sb.training_script(three["build"]())
    assert "Pass features=<input> and target=<input>." in str(e.value)
    assert "--features" not in str(e.value)


def test_unknown_op_leaves_out_internal_ops(tmp_path, capsys):
    internal = [op.name for op in registry.all_ops() if op.internal]
    assert {"ew", "identity", "softmax_cross_entropy_grad"} <= set(internal)
    for typo, suggested in (("softmax_cross_entropy_gra", "softmax_cross_entropy"),
                            ("idenity", None), ("ewe", None), ("relu6", "relu")):
        path = one_op_spec(tmp_path, typo)
        status, _, err = run(capsys, "check", path)
        assert status == 2
        msg = one_line(err)
        hint = msg.split("Known ops: ")[0]
        known = msg.split("Known ops: ")[1].rstrip(".").split(", ")
        assert not set(known) & set(internal), msg
        assert {"relu", "matmul", "softmax_cross_entropy"} <= set(known)
        if suggested:
            assert f"Did you mean {suggested!r}" in hint, msg
        else:
            assert "Did you mean" not in hint, msg


def test_help_describes_the_tool(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "the only module that prints" not in out  # the module's docstring, for developers
    assert "A compiler for backpropagation" in out
    for needle in ("SPEC, the network, is one of:", "mlp:SIZES", "networkx DiGraph",
                   "examples:", "symbackprop check mlp:784-256-10", "exit"):
        assert needle in out, needle
    for command in ("codegen", "check", "train-script", "derive", "render"):
        assert command in out
    with pytest.raises(SystemExit) as e:
        main(["derive", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "Work the chain rule step by step" in out and "SPEC, the network" in out


# -- a checkpoint of a network with no name ---------------------------------------------------

def unnamed_graph() -> sb.Graph:
    g = sb.Graph()  # no name
    X, y = g.input("X", shape=("N", 3)), g.input("y", shape=("N", 1))
    g.output("L", sb.mse(X @ g.param("W", shape=(3, 1)), y))
    return g


def test_checkpoint_of_an_unnamed_network(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3))
    np.savez(tmp_path / "data.npz", X=X, y=X @ np.array([[1.0], [-2.0], [0.5]]))
    named = sb.models.mlp([3, 1], loss="mse")
    for name, g, opt in (("sgd", unnamed_graph(), "sgd"), ("adam", unnamed_graph(), "adam"),
                         ("named", named, "sgd")):
        (tmp_path / f"{name}.py").write_text(sb.training_script(g, optimizer=opt, epochs=1))

    def go(script, *args):
        r = subprocess.run([sys.executable, script, "--data", "data.npz", *args],
                           cwd=tmp_path, capture_output=True, text=True, check=False)
        assert "Traceback" not in r.stdout + r.stderr
        return r

    assert go("sgd.py", "--out", "ckpt.npz").returncode == 0
    r = go("adam.py", "--resume", "ckpt.npz")
    assert r.returncode != 0
    assert "checkpoint ckpt.npz is for an unnamed network with sgd; expected an unnamed " \
        "network with adam" in r.stderr
    assert "network network" not in r.stderr
    r = go("named.py", "--resume", "ckpt.npz")
    assert r.returncode != 0
    assert "is for an unnamed network with sgd; expected network mlp_3_1 with sgd" in r.stderr
