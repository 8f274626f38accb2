"""Products of tensors (issue 13): batched ``@`` / ``sb.matmul`` and ``sb.einsum``.

The op harness (tests/test_ops_grad.py, ``DOMAINS["matmul"]`` and ``EINSUM_CASES``)
checks each case's forward value against ``np.einsum`` without ``optimize`` and its
gradients against central differences in float64 and float32. Here: shapes with
symbolic sizes, which NumPy call each einsum becomes, second derivatives (einsum VJPs of
einsum VJPs), a multi-head attention built from these ops checked against central
differences, its generated code (ruff, a fresh interpreter without symbackprop), the
formulas, and bad input (the errors, and the CLI's one line and exit status 2).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest
from standalone import assert_ruff_clean, run_without_symbackprop

import symbackprop as sb
from symbackprop.cli import main
from symbackprop.codegen.lowering import einsum_as_matmul


# -- a first multi-head attention, built from einsum, softmax and matmul ---------------------
def attention(T: int = 3, D: int = 4, H: int = 2) -> sb.Graph:
    """Multi-head self-attention over ``X`` of shape (N, T, D) with H heads of size D/H:
    per-head projections ``Q, K, V = einsum('btd,hde->bhte', X, W)``, scores
    ``Q Kᵀ / sqrt(D/H)`` as ``einsum('bhqe,bhke->bhqk')``, softmax over the keys (the last
    axis), the weighted sum of values, then the heads mixed back by a batched ``@`` (the
    heads' outputs (N, H, T, e) times Wo of shape (H, e, D), summed over the heads)."""
    e = D // H
    g = sb.Graph("attention")
    X = g.input("X", shape=("N", T, D))
    Wq, Wk, Wv = (g.param(n, shape=(H, D, e)) for n in ("Wq", "Wk", "Wv"))
    Wo = g.param("Wo", shape=(H, e, D))
    Q, K, V = (sb.einsum("btd,hde->bhte", X, W) for W in (Wq, Wk, Wv))
    S = g.output("S", sb.einsum("bhqe,bhke->bhqk", Q, K) / float(np.sqrt(e)))
    A = sb.softmax(S, axis=-1)
    O = sb.einsum("bhqk,bhke->bhqe", A, V)
    Y = g.output("Y", sb.sum(O @ Wo, axis=1))  # (N, H, T, D) summed over the heads
    g.output("L", sb.mean(Y * Y))
    return g


def attention_reference(X, Wq, Wk, Wv, Wo):
    """The same attention written out with explicit loops over the batch and the heads."""
    N, T, D = X.shape
    H, _, e = Wq.shape
    Y = np.zeros((N, T, D))
    for n in range(N):
        for h in range(H):
            q, k, v = X[n] @ Wq[h], X[n] @ Wk[h], X[n] @ Wv[h]
            s = q @ k.T / np.sqrt(e)
            a = np.exp(s - s.max(axis=1, keepdims=True))
            a /= a.sum(axis=1, keepdims=True)
            Y[n] += a @ v @ Wo[h]
    return Y


def _arrays(seed=0, N=2, T=3, D=4, H=2):
    rng = np.random.default_rng(seed)
    e = D // H
    return {"X": rng.normal(size=(N, T, D)), "Wq": rng.normal(size=(H, D, e)),
            "Wk": rng.normal(size=(H, D, e)), "Wv": rng.normal(size=(H, D, e)),
            "Wo": rng.normal(size=(H, e, D))}


def _central(f, x, eps=1e-6):
    fd = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += eps
        xm[i] -= eps
        fd[i] = (f(xp) - f(xm)) / (2 * eps)
    return fd


def test_attention_forward_matches_loops():
    arrays = _arrays()
    fn = sb.compile(attention(), wrt=["Wq", "Wk", "Wv", "Wo"])
    got = fn.forward(**arrays)
    np.testing.assert_allclose(got["Y"], attention_reference(**arrays), rtol=1e-12, atol=1e-12)
    assert got["S"].shape == (2, 2, 3, 3)


@pytest.mark.parametrize("optimize", [True, False], ids=["optimized", "raw"])
def test_attention_gradients_match_central_differences(optimize):
    arrays = _arrays(1)
    wrt = ["X", "Wq", "Wk", "Wv", "Wo"]
    fn = sb.compile(attention(), wrt=wrt, optimize=optimize)
    loss, grads = fn.value_and_grad(**arrays)
    assert float(loss) == pytest.approx(np.mean(attention_reference(**arrays) ** 2), rel=1e-12)
    for w in wrt:
        fd = _central(lambda v, w=w: np.mean(attention_reference(**{**arrays, w: v}) ** 2),
                      arrays[w])
        assert grads[w].shape == arrays[w].shape
        np.testing.assert_allclose(grads[w], fd, rtol=1e-6, atol=1e-8, err_msg=w)


def test_attention_float32_stays_float32():
    arrays = _arrays(2)
    wrt = ["X", "Wq", "Wk", "Wv", "Wo"]
    f32 = sb.compile(attention(), wrt=wrt, dtype="float32")
    f64 = sb.compile(attention(), wrt=wrt)
    (l32, g32), (l64, g64) = f32.value_and_grad(**arrays), f64.value_and_grad(**arrays)
    assert l32.dtype == np.float32
    assert float(l32) == pytest.approx(float(l64), rel=1e-4)
    for w in wrt:
        assert g32[w].dtype == np.float32, w
        np.testing.assert_allclose(g32[w], g64[w], rtol=1e-3, atol=1e-4, err_msg=w)


def test_attention_code_calls_matmul_for_the_batched_products():
    src = sb.numpy_source(attention(), wrt=["Wq", "Wk", "Wv", "Wo"])
    # scores and the weighted sum are batched products: np.matmul (BLAS), never a loop
    assert "np.matmul(" in src and "np.swapaxes(" in src
    # the per-head projections are no plain batched product: np.einsum, optimized
    assert "np.einsum('btd,hde->bhte'" in src and "optimize=True" in src
    loops = (ast.For, ast.While, ast.comprehension)
    for fn in ast.parse(src).body:
        if isinstance(fn, ast.FunctionDef) and fn.name in ("forward", "loss_and_grads_into"):
            assert not [n for n in ast.walk(fn) if isinstance(n, loops)], fn.name


def test_attention_code_is_ruff_clean_and_runs_without_symbackprop(tmp_path):
    arrays = _arrays(3)
    wrt = ["X", "Wq", "Wk", "Wv", "Wo"]
    fn = sb.compile(attention(), wrt=wrt)
    srcs = {"attn64.py": fn.source,
            "attn32.py": sb.numpy_source(attention(), wrt=wrt, dtype="float32"),
            "attn_plain.py": sb.numpy_source(attention(), wrt=wrt, optimize=False)}
    for name, src in srcs.items():
        (tmp_path / name).write_text(src)
    assert_ruff_clean(tmp_path, ".")
    np.savez(tmp_path / "in.npz", **{fn.arg_names[k]: v for k, v in arrays.items()})
    run_without_symbackprop(tmp_path, """
        import numpy as np
        import attn64
        arrays = dict(np.load("in.npz"))
        loss, grads = attn64.value_and_grad(**arrays)
        np.savez("out.npz", loss=loss, **grads)
    """)
    out = np.load(tmp_path / "out.npz")
    loss, grads = fn.value_and_grad(**arrays)
    np.testing.assert_array_equal(out["loss"], loss)
    for w in wrt:
        np.testing.assert_array_equal(out[fn.arg_names[w]], grads[w])


def test_attention_formulas_read_in_index_notation():
    text = str(sb.grad(attention()))
    # ∂L/∂Wq = Σ_bt δ_(Q)_bhte X_btd: the projection's gradient sums over batch and positions
    line = next(t for t in text.splitlines() if t.strip().startswith("∂L/∂Wq ="))
    assert "Σ_bt " in line and line.endswith("_bhte X_btd"), line
    # a batched product's weight gradient: summed over the batch axes it was broadcast along
    line = next(t for t in text.splitlines() if t.strip().startswith("∂L/∂Wo ="))
    assert "∂L/∂Wo = sum(transpose(" in line and " @ δ_" in line, line
    dot = sb.to_dot(attention())
    assert "Σ_d X[btd] Wq[hde] → [bhte]" in dot  # diagrams: the contraction in index notation


# -- shapes -----------------------------------------------------------------------------------
@pytest.mark.parametrize("a, b, want", [
    ((2, 1, 3, 4), (5, 4, 6), (2, 5, 3, 6)),
    (("N", 1, 3, 4), (5, 4, 6), ("N", 5, 3, 6)),
    (("N", 3, 4), (4, "M"), ("N", 3, "M")),
    ((3, 4), ("N", 4, 2), ("N", 3, 2)),
    ((1, "T", 4), ("N", 4, 2), ("N", "T", 2)),
])
def test_batched_matmul_shapes(a, b, want):
    g = sb.Graph()
    assert (g.input("a", shape=a) @ g.input("b", shape=b)).shape == want


@pytest.mark.parametrize("spec, shapes, want", [
    ("bhqd,bhkd->bhqk", [("N", "H", "T", 8), ("N", "H", "T", 8)], ("N", "H", "T", "T")),
    ("ij->", [("N", 3)], ()),
    ("ij->ji", [("N", 3)], (3, "N")),
    ("nchw,oc->nohw", [("N", 3, "H", "W"), (16, 3)], ("N", 16, "H", "W")),
])
def test_einsum_shapes(spec, shapes, want):
    g = sb.Graph()
    xs = [g.input(f"x{i}", shape=s) for i, s in enumerate(shapes)]
    assert sb.einsum(spec, *xs).shape == want


def test_two_d_matmul_vjp_is_unchanged():
    """The 2-D product's gradients are still g @ Wᵀ and hᵀ @ g, nothing summed."""
    g = sb.Graph()
    h, W = g.input("h", shape=("N", 3)), g.param("W", shape=(3, 2))
    g.output("L", sb.sum(h @ W))
    adj = sb.differentiate(g, wrt=["W"])
    dW = adj.adjoint["W"]
    j = adj.graph
    assert j.nx.nodes[dW]["op"] == "matmul"
    first = j.args(dW)[0]
    assert j.nx.nodes[first]["op"] == "transpose" and j.nx.nodes[first]["attrs"]["axes"] is None


def test_batched_weight_gradient_sums_over_the_batch():
    """x (N, T, K) @ W (K, M): dW has W's shape, the sum over N of xᵀ δ."""
    g = sb.Graph()
    x, W = g.input("x", shape=("N", 3, 4)), g.param("W", shape=(4, 2))
    C = g.input("C", shape=("N", 3, 2))
    g.output("L", sb.sum((x @ W) * C))
    rng = np.random.default_rng(5)
    xs, Ws, Cs = rng.normal(size=(5, 3, 4)), rng.normal(size=(4, 2)), rng.normal(size=(5, 3, 2))
    _, grads = sb.compile(g).value_and_grad(x=xs, W=Ws, C=Cs)
    # by hand: L = sum_ntm C[n,t,m] sum_k x[n,t,k] W[k,m], so dL/dW[k,m] = sum_nt x C
    np.testing.assert_allclose(grads["W"], np.einsum("ntk,ntm->km", xs, Cs), rtol=1e-12)
    assert sb.models is not None and grads["W"].shape == (4, 2)


@pytest.mark.parametrize("spec, shapes", [
    ("bhqd,bhkd->bhqk", [(2, 2, 3, 4), (2, 2, 5, 4)]),
    ("ijk,jl->il", [(2, 3, 4), (3, 5)]),
    ("ij,jk,kl->il", [(2, 3), (3, 4), (4, 2)]),
    ("bij,bjk->bik", [(2, 3, 4), (1, 4, 5)]),  # a matmul with a broadcast batch
])
def test_second_order_einsum_vjp_of_vjp(spec, shapes):
    """Differentiate the gradient of the first operand (an einsum) again, with respect to
    the last operand: against central differences of the first-order gradient."""
    use_matmul = spec == "bij,bjk->bik"
    rng = np.random.default_rng(7)
    g = sb.Graph()
    xs = [g.input(f"x{i}", shape=s) for i, s in enumerate(shapes)]
    y = xs[0] @ xs[1] if use_matmul else sb.einsum(spec, *xs)
    g.output("L", sb.sum(y * y))
    vals = {f"x{i}": rng.normal(size=s) for i, s in enumerate(shapes)}
    last = f"x{len(shapes) - 1}"
    first_order = sb.compile(g, of="L", wrt=["x0"])
    adj = sb.differentiate(g, of="L", wrt=["x0"])
    j = adj.graph
    C = j.input("C", shape=shapes[0])
    j.output("G", sb.sum(j[adj.adjoint["x0"]] * C))
    Cs = rng.normal(size=shapes[0])
    second = sb.compile(j, of="G", wrt=[last])
    _, grads = second.value_and_grad(**vals, C=Cs)

    def G(v):
        return float(np.sum(first_order.value_and_grad(**{**vals, last: v})[1]["x0"] * Cs))

    np.testing.assert_allclose(grads[last], _central(G, vals[last]), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("spec, want", [
    ("bhqd,bhkd->bhqk", (0, False, True)),
    ("bhqk,bhkd->bhqd", (0, False, False)),
    ("bhqd,bhqk->bhkd", (1, True, False)),
    ("ij,jk->ik", (0, False, False)),
    ("bij,bjk->bki", (1, True, True)),
    ("ij,j->i", None), ("i,j->ij", None), ("btd,hde->bhte", None), ("bij,bjk->ik", None),
    ("ij,jk,kl->il", None), ("ij->ji", None), ("bij,jk->bik", None),
])
def test_which_einsums_are_matmuls(spec, want):
    assert einsum_as_matmul(spec) == want


# -- bad input ----------------------------------------------------------------------------------
def _shape_error(fn, *needles):
    with pytest.raises(sb.ShapeError) as info:
        fn()
    msg = str(info.value)
    assert isinstance(info.value, ValueError) and "\n" not in msg
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"


def test_matmul_bad_input():
    g = sb.Graph()
    a, b = g.input("a", shape=("N", 2, 3, 4)), g.input("b", shape=(2, 5, 6))
    _shape_error(lambda: a @ b, "node 'matmul_1'", "a is (N, 2, 3, 4)", "b is (2, 5, 6)",
                 "inner sizes 4 and 5 differ")
    c = g.input("c", shape=(5, 4, 6))
    _shape_error(lambda: a @ c, "a is (N, 2, 3, 4)", "c is (5, 4, 6)",
                 "batch axes (N, 2) and (5) (all but the last two) do not broadcast")
    v = g.input("v", shape=(4,))
    _shape_error(lambda: a @ v, "at least 2 dimensions", "sb.reshape")


@pytest.mark.parametrize("spec, shapes, needles", [
    ("ij,jk->ik", [(3, 4), (5, 2)], ["letter 'j' is 4 in x0 and 5 in x1", "x0 is (3, 4)"]),
    ("ij,jk->ik", [(3, 4)], ["names 2 operand(s), given 1"]),
    ("ij,jk->iz", [(3, 4), (4, 2)], ["output letters 'z', which no operand has"]),
    ("i1,jk->ik", [(3, 4), (4, 2)], ["'1', which are not subscript letters"]),
    ("...j,jk->...k", [(3, 4), (4, 2)], ["ellipsis"]),
    ("ij,jk", [(3, 4), (4, 2)], ["no single '->'"]),
    ("ii->i", [(3, 3)], ["repeats 'i' in the operand 'ii' (a diagonal)"]),
    ("ijk->i", [(3, 4)], ["gives x0 3 axes ('ijk'), it has 2"]),
    ("ij->ii", [(3, 4)], ["repeats 'i' in the output"]),
])
def test_einsum_bad_input(spec, shapes, needles):
    g = sb.Graph()
    xs = [g.input(f"x{i}", shape=s) for i, s in enumerate(shapes)]
    _shape_error(lambda: sb.einsum(spec, *xs), "node 'einsum_1'", *needles)


@pytest.mark.parametrize("body, needle", [
    (["x = g.input('x', shape=('N', 2, 3, 4))", "w = g.param('w', shape=(2, 5, 6))",
      "g.output('L', sb.sum(x @ w))"], "inner sizes 4 and 5 differ"),
    (["x = g.input('x', shape=('N', 3, 4))", "w = g.param('w', shape=(5, 6))",
      "g.output('L', sb.sum(sb.einsum('btd,de->bte', x, w)))"],
     "letter 'd' is 4 in x and 5 in w"),
    (["x = g.input('x', shape=('N', 3, 4))",
      "g.output('L', sb.sum(sb.einsum('btd,de->bte', x)))"], "names 2 operand(s), given 1"),
])
def test_cli_prints_one_line_and_exits_2(body, needle, tmp_path, capsys):
    path = tmp_path / "net.py"
    lines = ["g = sb.Graph('bad')", *body, "return g"]
    path.write_text("import symbackprop as sb\n\n\ndef build():\n"
                    + "".join(f"    {line}\n" for line in lines))
    status = main(["check", str(path)])
    out, err = capsys.readouterr()
    assert status == 2 and "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], err


def test_einsum_graph_saves_and_loads(tmp_path):
    g = attention()
    g.save(tmp_path / "attn.json")
    assert sb.numpy_source(sb.load(tmp_path / "attn.json"), wrt=["Wq"]) == \
        sb.numpy_source(g, wrt=["Wq"])


# -- docs/ops.md shows what the code does -----------------------------------------------------
DOCS = (Path(__file__).resolve().parents[1] / "docs" / "ops.md").read_text(encoding="utf-8")
SECTION = DOCS.split("## Products: batched matmul and einsum")[1].split("\n## ")[0]


def test_docs_attention_block_runs():
    block = re.search(r"```python\n(.*?)```", SECTION, re.DOTALL).group(1)
    ns: dict = {}
    exec(compile(block, "docs/ops.md", "exec"), ns)  # noqa: S102 -- the docs' own code
    arrays = _arrays(4)
    np.testing.assert_allclose(ns["fn"].forward(**arrays)["Y"], attention_reference(**arrays),
                               rtol=1e-12)


def test_docs_error_lines_are_the_errors():
    shown = re.search(r"CLI prints\nthat one line.*?```\n(.*?)```", SECTION, re.DOTALL).group(1)
    g = sb.Graph()
    a, b = g.input("a", shape=("N", 2, 3, 4)), g.input("b", shape=(2, 5, 6))
    c = g.input("c", shape=(5, 4, 6))
    x, w = g.input("x", shape=("N", 3, 4)), g.input("w", shape=(5, 6))
    got = []
    for fn in (lambda: a @ b, lambda: a @ c, lambda: sb.einsum("btd,de->bte", x, w),
               lambda: sb.einsum("btd,de->bte", x)):
        with pytest.raises(sb.ShapeError) as info:
            fn()
        got.append(str(info.value))
    assert shown.strip().splitlines() == got


def test_derivation_of_attention_shows_index_notation():
    arrays = _arrays(5)
    text = str(sb.derive(attention(), at=arrays))
    assert "S = 0.707107(Σ_e (Σ_d X_btd Wq_hde)_bhqe (Σ_d X_btd Wk_hde)_bhke)" in text
    assert "Backward pass" in text and "dL/dWq = Σ_bt" in text


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_training_step_with_a_batched_product_and_bias(dtype):
    """(N, T, 128) @ (128, 128) + b: the memory planner's bias fold is for 2-D products (it
    refuses this one), and the planned step's update is the hand-derived one."""
    g = sb.Graph()
    x, C = g.input("x", shape=("N", 2, 128)), g.input("C", shape=("N", 2, 128))
    W, b = g.param("W", shape=(128, 128)), g.param("b", shape=(128,))
    g.output("L", sb.mean(sb.relu(sb.tanh(x) @ W + b) * C))
    ns: dict = {}
    exec(sb.train_step(g, lr=0.1, dtype=dtype), ns)  # noqa: S102 -- generated code
    rng = np.random.default_rng(6)
    xs, Cs = rng.normal(size=(3, 2, 128)), rng.normal(size=(3, 2, 128))
    params = ns["init_params"](0)
    before = {k: v.astype(float) for k, v in params.items()}
    ns["train_step"](params, ns["init_state"](params), x=xs, C=Cs)
    h = np.tanh(xs)
    z = h @ before["W"] + before["b"]
    dz = (z > 0) * Cs / z.size
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == "float32" else {"rtol": 1e-12, "atol": 1e-15}
    assert params["W"].dtype == np.dtype(dtype)
    np.testing.assert_allclose(params["W"], before["W"] - 0.1 * np.einsum("ntk,ntm->km", h, dz),
                               **tol)
    np.testing.assert_allclose(params["b"], before["b"] - 0.1 * dz.sum(axis=(0, 1)), **tol)
