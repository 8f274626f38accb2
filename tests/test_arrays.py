"""Array ops (issue 13): slicing, concat, stack, split, take and embedding.

The op harness (tests/test_ops_grad.py) checks each op alone; here the builder syntax
(``x[...]``), the statement language, graphs mixing them (sliced then concatenated),
repeated gather indices, saving and loading, and the errors and the CLI's exit status.
Gradients are checked against central differences, never against the code under test.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import symbackprop as sb
from symbackprop.cli import main as sb_cli_main

KEYS = [
    (0,), (-1,), (slice(1, 3),), (slice(None), slice(1, 3)), (Ellipsis, -1),
    (slice(None, None, 2),), (slice(None, None, -1),), (slice(-2, None, -2), 1),
    (1, Ellipsis, slice(-3, -1)), (slice(5, 0, -2),), (Ellipsis,),
]


def _fd_grad(fn, arrays, w, eps=1e-6):
    x = np.asarray(arrays[w], dtype=float)
    out = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += eps
        xm[idx] -= eps
        out[idx] = (fn.forward(**{**arrays, w: xp})["L"]
                    - fn.forward(**{**arrays, w: xm})["L"]) / (2 * eps)
    return out


@pytest.mark.parametrize("key", KEYS, ids=[str(k) for k in KEYS])
def test_getitem_matches_numpy_and_differences(key):
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((6, 4, 3))
    g = sb.Graph()
    x = g.param("x", shape=(6, 4, 3))
    y = g.output("y", x[key])
    assert y.op == "slice" and y.shape == x0[key].shape
    C = g.input("C", shape=y.shape)
    g.output("L", sb.sum(sb.sin(y) * C))
    c0 = rng.standard_normal(x0[key].shape)
    fn = sb.compile(g, of="L", wrt=["x"])
    np.testing.assert_array_equal(fn.forward(x=x0, C=c0)["y"], x0[key])
    _, grads = fn.value_and_grad(x=x0, C=c0)
    np.testing.assert_allclose(grads["x"], _fd_grad(fn, {"x": x0, "C": c0}, "x"),
                               rtol=1e-6, atol=1e-8)
    # float32 end to end, no upcast
    f32 = sb.compile(g, of="L", wrt=["x"], dtype="float32")
    _, g32 = f32.value_and_grad(x=x0, C=c0)
    assert g32["x"].dtype == np.float32
    np.testing.assert_allclose(g32["x"], grads["x"], rtol=1e-4, atol=1e-5)


def test_index_is_normalised_and_saved(tmp_path):
    g = sb.Graph()
    x = g.input("x", shape=(5, "N", 3))
    assert x[..., -1].data["attrs"]["index"] == (":", ":", 2)
    assert x[0:5:1].data["attrs"]["index"] == (":", ":", ":")
    assert x[-2:, 1:3].data["attrs"]["index"] == ("3:", "1:3", ":")
    assert x[:, -3:].shape == (5, 3, 3)
    y = g.output("y", sb.concat([x[1:3], x[::-1][:1]], axis=0))
    g.output("L", sb.sum(y * y))
    p = tmp_path / "g.json"
    g.save(p)
    h = sb.load(p)
    assert sb.numpy_source(h) == sb.numpy_source(g)
    assert h.nx.nodes["y"]["attrs"] == g.nx.nodes["y"]["attrs"]


def test_sliced_then_concatenated_gradient():
    """A graph that cuts a batch of features apart, reorders them and joins them
    again: both gradients through slices (pads of δ) and concat (slices of δ)."""
    rng = np.random.default_rng(1)
    g = sb.Graph()
    X = g.input("X", shape=("N", 6))
    W = g.param("W", shape=(6, 4))
    h = sb.tanh(X @ W)
    left, mid, right = sb.split(h, [1, 3], axis=1)
    z = sb.concat([right, left * mid[:, :1], mid[:, ::-1]], axis=1)
    s = sb.stack([z, h], axis=0)
    g.output("L", sb.sum(s[1] * s[0] ** 2))
    arrays = {"X": rng.standard_normal((5, 6)), "W": rng.standard_normal((6, 4))}
    fn = sb.compile(g, of="L", wrt=["W"])
    _, grads = fn.value_and_grad(**arrays)
    np.testing.assert_allclose(grads["W"], _fd_grad(fn, arrays, "W"), rtol=1e-6, atol=1e-8)
    assert sb.check_grad(g, sizes={"N": 3}).ok


def test_take_repeated_indices_accumulate():
    g = sb.Graph()
    ids = g.input("ids", shape=(2, 3), dtype="int")
    E = g.param("E", shape=(4, 2))
    e = sb.embedding(ids, E)
    assert e.shape == (2, 3, 2) and e.op == "take"
    g.output("L", sb.sum(e))
    ids0 = np.array([[1, 1, 1], [0, -1, 1]])
    _, grads = sb.compile(g, wrt=["E"]).value_and_grad(ids=ids0, E=np.ones((4, 2)))
    # row 1 is taken four times, row 0 and row 3 (as -1) once, row 2 never
    np.testing.assert_array_equal(grads["E"], [[1, 1], [4, 4], [0, 0], [1, 1]])


def test_take_with_a_node_key_and_axis():
    rng = np.random.default_rng(2)
    g = sb.Graph()
    x = g.param("x", shape=(5, 5))
    idx = g.input("idx", shape=(4,), dtype="int")
    assert x[idx].op == "take"
    g.output("L", sb.sum(sb.take(x, idx, axis=1) ** 2) + sb.sum(x[idx]))
    arrays = {"x": rng.standard_normal((5, 5)), "idx": np.array([4, 0, 4, 2])}
    fn = sb.compile(g, wrt=["x"])
    _, grads = fn.value_and_grad(**arrays)
    np.testing.assert_allclose(grads["x"], _fd_grad(fn, arrays, "x"), rtol=1e-6, atol=1e-8)


def test_statements_slice_without_eval():
    # statement inputs are scalars: stack them into a vector, then slice it
    g = sb.parse("v = stack(a, b, c); y = concat(v[::-1], v[-1:]); z = y[1:3]; L = sum(z*z)")
    assert g.nx.nodes["z"]["op"] == "slice"
    assert g["y"].shape == (4,) and g["z"].shape == (2,)
    _, grads = sb.compile(g, wrt=["a", "b", "c"]).value_and_grad(a=1.0, b=2.0, c=3.0)
    # z = (b, a): dL/da = 2a, dL/db = 2b, c not in z
    assert (grads["a"], grads["b"], grads["c"]) == (2.0, 4.0, 0.0)
    with pytest.raises(sb.ParseError, match="not an integer"):
        sb.parse("y = x[n]")
    with pytest.raises(sb.ParseError):
        sb.parse("y = x[__import__('os')]")


def test_split_and_embedding_docs():
    g = sb.Graph()
    x = g.input("x", shape=("N", 6))
    assert [p.shape for p in sb.split(x, 2, axis=-1)] == [("N", 3), ("N", 3)]
    with pytest.raises(sb.ShapeError, match="4 equal parts"):
        sb.split(x, 4, axis=1)
    with pytest.raises(sb.ShapeError, match="symbolic size N"):
        sb.split(x, 2, axis=0)


def test_display_reads_as_slices_and_pads():
    g = sb.Graph()
    x = g.param("x", shape=(4, 3))
    g.output("L", sb.sum(sb.concat([x[1:3], x[:1]], axis=0) ** 2))
    d = str(sb.derive(g, wrt=["x"]))
    assert "x[1:3]" in d and "pad(" in d
    assert "concat(" in sb.to_dot(g)


# -- bad input ---------------------------------------------------------------------------
def test_errors_name_node_axis_size_and_index():
    g = sb.Graph()
    x = g.input("x", shape=("N", 3))
    with pytest.raises(sb.ShapeError, match=r"node 'slice_1'.*index 5 is out of bounds for "
                                            r"axis 1 of size 3"):
        x[:, 5]
    with pytest.raises(sb.ShapeError, match=r"slice '1:7' is out of bounds for axis 1 of size 3"):
        x[:, 1:7]
    with pytest.raises(sb.ShapeError, match="3 indices for 2 dimension"):
        x[0, 0, 0]
    assert x[:-1].shape == ("N - 1", 3)  # a length in N (tests/test_symbolic_sizes.py)
    with pytest.raises(TypeError, match="sb.take"):
        x[[0, 1]]
    with pytest.raises(TypeError, match="not iterable"):
        list(x)  # along N this would never stop
    ids = g.input("ids", shape=(2,))
    with pytest.raises(sb.ShapeError, match="node 'take_.*dtype float.*dtype='int'"):
        sb.take(x, ids)
    y = g.input("y", shape=("N", 4))
    with pytest.raises(sb.ShapeError, match=r"node 'concat_.*x is \(N, 3\).*y is \(N, 4\).*"
                                            r"off axis 0"):
        sb.concat([x, y], axis=0)
    with pytest.raises(sb.ShapeError, match="axis 2 is out of range"):
        sb.concat([x, x], axis=2)
    with pytest.raises(sb.ShapeError, match="stack needs equal shapes"):
        sb.stack([x, y])
    with pytest.raises(sb.ShapeError, match="axis 5 is out of range"):
        sb.take(x, g.input("i", shape=(2,), dtype="int"), axis=5)


def test_cli_prints_one_line_and_exits_2(tmp_path):
    bad = {
        "slice": 'x = graph.input("x", shape=("N", 3))\nL = sb.sum(x[:, 5])',
        "float_index": 'x = graph.param("x", shape=(3, 2))\n'
                       'L = sb.sum(sb.take(x, graph.input("i", shape=(4,))))',
        "concat": 'a = graph.input("a", shape=(2, 3))\nb = graph.input("b", shape=(2, 4))\n'
                  'L = sb.sum(sb.concat([a, b], axis=0))',
        "axis": 'a = graph.input("a", shape=(2, 3))\nL = sb.sum(sb.stack([a, a], axis=3))',
    }
    for what, body in bad.items():
        p = tmp_path / f"{what}.py"
        p.write_text(f"import symbackprop as sb\ngraph = sb.Graph()\n{body}\n"
                     "graph.output('L', L)\n")
        r = subprocess.run([sys.executable, "-m", "symbackprop.cli", "codegen", str(p)],
                           capture_output=True, text=True, check=False)
        assert r.returncode == 2, (what, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "ShapeError" in lines[0] and "node '" in lines[0], lines
    r = subprocess.run([sys.executable, "-m", "symbackprop.cli", "codegen", "y = x[5]"],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def test_formulas_write_the_axis_of_concat_and_stack():
    g = sb.Graph()
    x = g.input("x", shape=("N", 3))
    y = g.input("y", shape=("N", 2))
    g.output("L", sb.sum(sb.concat([x, y], axis=1) ** 2) + sb.sum(sb.stack([x, x], axis=0)))
    grads = sb.grad(g)
    assert "∂L/∂y = δ_(concat(x, y, axis=1))[:, 3:]" in str(grads)
    assert "stack(x, x, axis=0)" in str(grads)
    assert r"\operatorname{concat}\left(x, y;\ \text{axis}=1\right)" in grads.latex()


def test_statement_errors_name_the_statement(capsys):
    """The op's node has an automatic name (slice_1): the error also says which statement."""
    with pytest.raises(sb.ShapeError, match=r"^node 'slice_1'.*\(In statement 2: 'y = v\[5:9\]'.\)$"):
        sb.parse("v = stack(a, b, c); y = v[5:9]; L = sum(y)")
    assert sb_cli_main(["derive", "v = stack(a, b, c); y = v[5:9]; L = sum(y)"]) == 2
    err = capsys.readouterr().err
    assert "(In statement 2: 'y = v[5:9]'.)" in err and len(err.strip().splitlines()) == 1
