"""Every kind of SPEC reaches every command: statements, .json, .py (graph or build()),
and mlp: shorthands."""

import pytest

import symbackprop as sb
from symbackprop.cli import main


@pytest.fixture
def specs(tmp_path):
    py_build = tmp_path / "net_build.py"
    py_build.write_text("import symbackprop as sb\n\n\ndef build():\n"
                        "    return sb.parse('y = tanh(w*x) + b', params=['w', 'b'])\n")
    py_graph = tmp_path / "net_graph.py"
    py_graph.write_text("import symbackprop as sb\n\ngraph = sb.models.mlp([5, 4, 3])\n")
    js = tmp_path / "net.json"
    sb.models.mlp([5, 4, 3], activation="tanh").save(js)
    return {"statements": "L = (w*x - y)**2", "build": str(py_build), "graph": str(py_graph),
            "json": str(js), "mlp": "mlp:5-4-3"}


@pytest.mark.parametrize("kind", ["statements", "build", "graph", "json", "mlp"])
def test_check_and_codegen_take_every_spec(kind, specs, capsys, tmp_path):
    assert main(["check", specs[kind]]) == 0  # random inputs, scalar parameters included
    assert "all ok" in capsys.readouterr().out
    out = tmp_path / "model.py"
    assert main(["codegen", specs[kind], "-o", str(out)]) == 0
    assert "def value_and_grad(" in out.read_text()


def test_py_spec_without_graph_is_an_error(tmp_path, capsys):
    bad = tmp_path / "empty.py"
    bad.write_text("x = 1\n")
    assert main(["codegen", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "defines neither 'graph'" in err[0]


@pytest.mark.parametrize("fmt, needle", [("latex", r"\frac"), ("markdown", "| dL/dw |")])
def test_derive_formats(fmt, needle, capsys):
    assert main(["derive", "L = (w*x - y)**2", "--wrt", "w", "--at", "w=2,x=3,y=10",
                 "--format", fmt]) == 0
    out = capsys.readouterr().out
    assert needle in out and "24" in out
