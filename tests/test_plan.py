"""Memory planning: ufunc lowering and the planned step, against plain evaluation."""

import itertools
import re

import numpy as np
import pytest
import sympy as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import symbackprop as sb
from symbackprop.codegen.emit import emit_model, prepare, render_module
from symbackprop.codegen.loader import load_source
from symbackprop.codegen.plan import (
    CONSTANT,
    PACK,
    Pool,
    alias_safe,
    lower,
    plan_function,
    workspace_source,
)
from symbackprop.ops.elementwise import X, ew
from symbackprop.testing import random_inputs

x0, x1, x2 = X[:3]
N = sp.Symbol("N")
EXPRS = [x0 * x1 * (1 - x1), 1 - x1**2, x0 - x1**2, -x0 - x1, 1 / (x0 * x1), x0 / (x1 * x2),
         2 / x0 - x1, (x0 - x1) / N, -x0 * sp.exp(-x1) + x2, x0**3 * x1 - x2 / x0,
         sp.tanh(x0) * sp.tanh(x1) - x0 * x2, 1 / (1 + sp.exp(-x0)), sp.Max(x0 - x2, 0) * x1,
         x0 * sp.Heaviside(x1 - 1, 0), -x0, -(x0 * x1), sp.sqrt(x0) * x1 - 1 / sp.sqrt(x1),
         x2, sp.Integer(3), sp.log(x0) * sp.Abs(x1 - 1)]


@pytest.mark.parametrize("expr", EXPRS, ids=str)
def test_lowering_matches_numpy(expr):
    rng = np.random.default_rng(0)
    env = {"a": rng.uniform(0.5, 1.5, (5, 4)), "b": rng.uniform(0.5, 1.5, (5, 4)),
           "c": rng.uniform(0.5, 1.5, (4,)), "N": 5, "np": np}
    pool = Pool()

    def temp(shape, kind):
        return f"_ws[{pool.take(shape, kind)}]"

    steps = lower(expr, {x0: "a", x1: "b", x2: "c"},
                  {x0: ("N", 4), x1: ("N", 4), x2: (4,)}, "out", ("N", 4), temp)
    env["_ws"] = [np.empty(tuple(5 if d == "N" else d for d in shape), bool if k == "b" else float)
                  for shape, k in ((b.shape, b.kind) for b in pool.buffers)]
    env["out"] = np.empty((5, 4))
    exec(CONSTANT, env)  # noqa: S102 -- the helper the lowered calls may use
    for code, _, _ in steps:
        exec(code, env)  # noqa: S102 -- the code under test
    f = sp.lambdify([x0, x1, x2, N], expr, "numpy")  # independent evaluation
    np.testing.assert_allclose(env["out"], np.broadcast_to(f(env["a"], env["b"], env["c"], 5),
                                                           (5, 4)), rtol=1e-12)


def test_alias_safe():
    assert alias_safe([("f(a)", {"a"}, "o"), ("g(o, b)", {"o", "b"}, "o")], "o", "a")
    assert not alias_safe([("f(b)", {"b"}, "o"), ("g(o, a)", {"o", "a"}, "o")], "o", "a")


def _planned(g, **kw):
    adj = prepare(g, None, None)
    doc, em, fns = emit_model(adj, "float64")
    into = [adj.adjoint[w] for w in adj.wrt]
    fn, pool = plan_function(em, "step", [adj.of, *into], into, "planned", of=adj.of)
    fn.ret = em.code(adj.of)
    src = render_module(doc, em, [*fns, fn], extra=PACK + "\n\n" + workspace_source(em, pool))
    return adj, load_source(src), src


GRAPHS = {
    "relu": lambda: sb.models.mlp([6, 5, 4, 3]),
    "tanh": lambda: sb.models.mlp([6, 5, 4, 3], activation="tanh"),
    "sigmoid_mse": lambda: sb.models.mlp([6, 5, 3], activation="sigmoid", loss="mse"),
    "softplus": lambda: sb.models.mlp([6, 5, 3], activation="softplus"),
    "scalar": lambda: sb.parse("a = w*x; b = exp(a) + a*a; L = b / (1 + w**2)", params=["w"]),
}


@pytest.mark.parametrize("name", list(GRAPHS))
def test_planned_step_matches_value_and_grad(name):
    g = GRAPHS[name]()
    adj, mod, src = _planned(g)
    for n in (7, 3, 7):  # new batch sizes get their own workspace; old ones are reused
        arrays = random_inputs(g, {"N": n}, seed=n)
        loss, grads = mod.value_and_grad(**arrays)
        into = {adj.adjoint[w]: np.empty_like(np.asarray(arrays[w], dtype=float))
                for w in adj.wrt}
        assert mod.step(**arrays, **into) == pytest.approx(float(loss), rel=1e-12)
        for w in adj.wrt:
            np.testing.assert_allclose(into[adj.adjoint[w]], grads[w], rtol=1e-10, atol=1e-15)
    assert "np.empty" in src or name == "scalar"


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_planned_train_step_matches_plain(optimizer):
    """The fast train_step (planned buffers, flat update) follows the plain one step by step."""
    g = sb.models.mlp([6, 5, 3], activation="tanh")
    fast = sb.compile(g, optimizer=optimizer, lr=0.05)
    plain = sb.compile(g, optimizer=optimizer, lr=0.05, optimize=False)
    assert "loss_and_grads_into" in fast.source and "loss_and_grads_into" not in plain.source
    pf, pp = fast.init_params(0), plain.init_params(0)
    sf, sp_ = fast.init_state(pf), plain.init_state(pp)
    rng = np.random.default_rng(0)
    for n in (8, 8, 5, 8):
        X, y = rng.normal(size=(n, 6)), rng.integers(0, 3, size=n)
        assert fast.train_step(pf, sf, X=X, y=y) == pytest.approx(
            plain.train_step(pp, sp_, X=X, y=y), rel=1e-12)
    for k in pp:
        np.testing.assert_allclose(pf[k], pp[k], rtol=1e-10)
    assert sf.get("t") == sp_.get("t")


def test_train_step_adopts_separate_arrays_once():
    g = sb.models.mlp([4, 3, 2])
    step = sb.compile(g, optimizer="momentum", lr=0.1)
    params = {k: np.array(v) for k, v in step.init_params(1).items()}  # separate arrays
    state = {"v": {k: np.zeros_like(v) for k, v in params.items()}}
    X, y = np.ones((3, 4)), np.array([0, 1, 0])
    step.train_step(params, state, X=X, y=y)
    adopted = {k: id(v) for k, v in params.items()}
    bases = {id(v.base) for v in params.values()}
    assert len(bases) == 1  # now views of one flat buffer
    step.train_step(params, state, X=X, y=y)
    assert {k: id(v) for k, v in params.items()} == adopted  # and updated in place after that


def test_train_step_follows_an_array_put_into_params():
    """An array put into params (or the state) between steps, e.g. loaded from a
    checkpoint, is the one the next step reads and updates."""
    g = sb.models.mlp([4, 3, 2])
    step = sb.compile(g, optimizer="momentum", lr=0.1)
    ref = sb.compile(g, optimizer="momentum", lr=0.1, optimize=False)
    X, y = np.linspace(-1, 1, 12).reshape(3, 4), np.array([0, 1, 0])
    params, pref = step.init_params(0), ref.init_params(0)
    state, sref = step.init_state(params), ref.init_state(pref)
    step.train_step(params, state, X=X, y=y)
    ref.train_step(pref, sref, X=X, y=y)
    loaded = np.full((4, 3), 0.25)
    params["W1"], pref["W1"] = loaded.copy(), loaded.copy()
    state["v"]["W1"], sref["v"]["W1"] = loaded.copy(), loaded.copy()
    state["v"] = dict(state["v"])  # a new dict of velocities, too
    for _ in range(2):
        assert step.train_step(params, state, X=X, y=y) == pytest.approx(
            ref.train_step(pref, sref, X=X, y=y), rel=1e-12)
    for k in pref:
        np.testing.assert_allclose(params[k], pref[k], rtol=1e-12)
        np.testing.assert_allclose(state["v"][k], sref["v"][k], rtol=1e-12)


def test_expression_the_lowering_does_not_know_is_computed_the_plain_way():
    import sympy

    sb.elementwise("arctan_act", lambda x: sympy.atan(x))
    try:
        g = sb.models.mlp([4, 3, 2], activation="arctan_act")
        fast = sb.compile(g, optimizer="sgd", lr=0.1)
        plain = sb.compile(g, optimizer="sgd", lr=0.1, optimize=False)
    finally:  # leave the registry as it was (test_ops_grad wants a domain for every op)
        sb.ops.registry._OPS.pop("arctan_act")
    assert "np.arctan(" in fast.source
    X, y = np.linspace(-1, 1, 12).reshape(3, 4), np.array([0, 1, 1])
    pf, pp = fast.init_params(0), plain.init_params(0)
    assert fast.train_step(pf, fast.init_state(pf), X=X, y=y) == pytest.approx(
        plain.train_step(pp, plain.init_state(pp), X=X, y=y), rel=1e-12)


def test_relu_steps_summed_are_counted_not_or_ed():
    """(h1 > 0) + (h2 > 0) on booleans is a logical or; the lowering adds them as floats."""
    pool = Pool()
    steps = lower(sp.Heaviside(x0, 0) + sp.Heaviside(x1, 0) - sp.Heaviside(x0 - 1, 0),
                  {x0: "a", x1: "b"}, {x0: (3,), x1: (3,)}, "out", (3,),
                  lambda shape, kind: f"_ws[{pool.take(shape, kind)}]")
    env = {"np": np, "a": np.array([0.5, 2.0, -1.0]), "b": np.array([1.0, -1.0, 1.0]),
           "out": np.empty(3)}
    env["_ws"] = [np.empty(3, bool if b.kind == "b" else float) for b in pool.buffers]
    for code, _, _ in steps:
        exec(code, env)  # noqa: S102 -- the code under test
    np.testing.assert_array_equal(env["out"], [2.0, 0.0, 1.0])


def test_no_in_place_over_an_argument_read_through_a_view():
    """dtanh = (1 - t**2) * dT.T must not be written over dT's buffer: the calls would
    overwrite dT before reading it through the transposed view (found by test_properties)."""
    g = sb.Graph()
    w0 = g.param("w0", shape=(3, 3))
    g.output("L", sb.sum(-sb.tanh(w0 @ w0).T))
    fast = sb.compile(g, optimizer="sgd", lr=0.5)
    plain = sb.compile(g, optimizer="sgd", lr=0.5, optimize=False)
    w = np.arange(9.0).reshape(3, 3) / 10
    pf, pp = {"w0": w.copy()}, {"w0": w.copy()}
    fast.train_step(pf, fast.init_state(pf))
    plain.train_step(pp, plain.init_state(pp))
    np.testing.assert_allclose(pf["w0"], pp["w0"], rtol=1e-12)


def _packer():
    env = {"np": np, "DTYPE": np.float64}
    exec(PACK, env)  # noqa: S102 -- the generated packer under test
    return env["_pack"]


def _bytes(a):
    start = a.__array_interface__["data"][0]
    return start, start + a.nbytes


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 6), st.integers(0, 4),
                          st.booleans(), st.sampled_from([None, 3, 4])), max_size=12),
       st.lists(st.tuples(st.integers(1, 30), st.integers(0, 14)), max_size=5))
def test_packed_arrays_never_share_bytes_while_alive(arrays, grads):
    """Any two arrays alive at one step own disjoint bytes; the gradients are consecutive
    views of one flat buffer, and an array lies over a gradient only if it is dead before
    the gradient is written. An array with a width above its 3 rows is stored transposed."""
    specs = [((3, width), bool if flag else np.float64, first, first + alive, wide)
             for width, first, alive, flag, wide in arrays]
    gspecs = [(f"g{i}", (n,), first) for i, (n, first) in enumerate(grads)]
    views, flat, named, _ = _packer()(specs, gspecs)
    assert [v.shape for v in views] == [s for s, *_ in specs]
    assert all(v.dtype == d for v, (_, d, *_) in zip(views, specs))
    for v, (*_, wide) in zip(views, specs):
        assert v.T.flags.c_contiguous if wide is not None and 3 < wide else v.flags.c_contiguous
    assert flat.size == sum(n for n, _ in grads)
    start = 0
    for (name, (n,), _), v in zip(gspecs, named.values()):
        assert v.base is flat.base and _bytes(v)[0] == _bytes(flat)[0] + 8 * start
        start += n
    live = [(v, s[2], s[3]) for v, s in zip(views, specs)]
    live += [(v, first, 10**9) for v, (_, _, first) in zip(named.values(), gspecs)]
    for i, (a, fa, la) in enumerate(live):
        for b, fb, lb in live[i + 1:]:
            if a.nbytes and b.nbytes and fa <= lb and fb <= la:  # alive at a common step
                (a0, a1), (b0, b1) = _bytes(a), _bytes(b)
                assert a1 <= b0 or b1 <= a0


def test_packed_blocks_view_a_weight_and_its_bias_together():
    """A block [w; b] of _pack is the (K + 1, M) array whose rows are w's and, last, b's:
    the same bytes as the two gradient views, so one product writes both."""
    _, flat, named, blocks = _packer()([], [("a", (5,), 0), ("w", (3, 4), 0), ("b", (4,), 0)],
                                       [("w", "b")])
    block = blocks["w", "b"]
    assert block.shape == (4, 4) and block.base is flat.base
    block[...] = np.arange(16.0).reshape(4, 4)
    np.testing.assert_array_equal(named["w"], np.arange(12.0).reshape(3, 4))
    np.testing.assert_array_equal(named["b"], np.arange(12.0, 16.0))
    assert not np.shares_memory(block, named["a"])


def test_deep_step_needs_about_the_larger_of_activations_and_gradients():
    """In a deep network the backward pass frees each activation before the gradient of
    the layer below is written, so the arena holds both in about the space of one."""
    sizes = [16] + [16] * 20 + [4]
    step = sb.compile(sb.models.mlp(sizes, activation="tanh"), optimizer="sgd", lr=0.1)
    params = step.init_params(0)
    n = 16
    X, y = np.ones((n, 16)), np.zeros(n, dtype=int)
    step.train_step(params, step.init_state(params), X=X, y=y)
    _, flat, _, _ = step.module._WORKSPACES[(n,)]
    arena = flat.base.nbytes
    activations = 8 * n * sum(sizes[1:])  # every layer's output, kept for the backward pass
    grads = 8 * sum(a * b + b for a, b in itertools.pairwise(sizes))
    assert grads == flat.nbytes
    assert arena < 0.65 * (activations + grads)
    assert arena >= max(activations, grads)


def _fast_and_plain(g, **kw):
    return sb.compile(g, optimizer="sgd", lr=0.1, **kw), \
        sb.compile(g, optimizer="sgd", lr=0.1, optimize=False, **kw)


def _same_steps(fast, plain, n_in, n_out, batches=(8, 8, 5, 200), values=False):
    """Steps of both from the same start match; y: labels, or (with values) targets."""
    pf, pp = fast.init_params(2), plain.init_params(2)
    sf, sp_ = fast.init_state(pf), plain.init_state(pp)
    rng = np.random.default_rng(1)
    for n in batches:
        X = rng.normal(size=(n, n_in))
        y = rng.normal(size=(n, n_out)) if values else rng.integers(0, n_out, size=n)
        assert fast.train_step(pf, sf, X=X, y=y) == pytest.approx(
            plain.train_step(pp, sp_, X=X, y=y), rel=1e-12)
    for k in pp:
        np.testing.assert_allclose(pf[k], pp[k], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_bias_rides_in_the_product(activation):
    """h @ W + b is one product [h, 1] @ [W; b] and the gradients of W and b one product
    [h, 1].T @ dz, W and b being consecutive in the flat buffers; the first layer (X is
    the caller's array, with no column of ones) keeps its bias add, in the contiguous
    buffer of the product, and only the activation writes beside the column of ones."""
    fast, plain = _fast_and_plain(sb.models.mlp([6, 128, 128, 64], activation=activation))
    src = fast.source
    step = src[src.index("def loss_and_grads_into"):src.index("def flat_views")]
    assert "np.matmul(h1_ones, W2_b2, out=matmul_2)" in step
    assert "(h2_ones.T, dlogits, out=dW3_db3)" in step and "h2_ones[:, -1] = 1" in step
    assert "np.add(matmul_1, b1, out=matmul_1)" in step
    assert re.search(r"np\.(tanh|maximum)\(matmul_1\b.*, out=h1\)", step)
    code = [line.split("#")[0] for line in step.split('"""')[2].splitlines()]
    assert not any(re.search(r"\b(b2|b3|db2|db3)\b", c) for c in code)  # no add, no row sum
    _same_steps(fast, plain, 6, 64)


def test_bias_stays_out_of_the_product_when_it_must():
    """No fold when the bias is read elsewhere (a penalty on it), when it is not trained,
    when it does not follow its weight in the flat buffers, or where it does not pay
    (narrow layers; an output much narrower than its input; float32): each step still
    matches."""
    penalised = sb.models.mlp([6, 128, 128])
    penalised.output("J", penalised["L"] + sb.sum(penalised["b2"] * penalised["b2"]))
    cases = [(penalised, {"of": "J"}),
             (sb.models.mlp([6, 128, 128]), {"wrt": ["W1", "b1", "W2"]}),
             (sb.models.mlp([6, 128, 128]), {"wrt": ["b2", "W2", "W1", "b1"]}),
             (sb.models.mlp([6, 64, 64, 3]), {}), (sb.models.mlp([6, 256, 10]), {})]
    for graph, kw in cases:
        fast, plain = _fast_and_plain(graph, **kw)
        assert "_ones" not in fast.source.replace("_ones(", "")
        _same_steps(fast, plain, 6, graph.nx.nodes["logits"]["shape"][1])
    assert "_ones[:, -1]" in _fast_and_plain(sb.models.mlp([6, 128, 128]))[0].source
    # float32: a pass costs half as much, a strided one as much: no fold
    f32 = _fast_and_plain(sb.models.mlp([6, 128, 128]), dtype="float32")[0].source
    assert "_ones[:, -1]" not in f32


def _classifier(g, logits):
    y = g.input("y", shape=("N",), dtype="int")
    g.output("L", sb.softmax_cross_entropy(g.output("logits", logits), y))
    return g


def test_bias_folds_leave_other_shapes_of_layer_alone():
    """Found in review: an h that is a bare product (written by np.dot, which needs a
    contiguous out) is never written beside a column of ones; one node adding two biases
    (an RNN cell's x @ Wx + bx + h @ Wh + bh) folds at most one of them. Both steps match
    the plain ones."""
    g = sb.Graph()
    data = g.input("X", shape=("N", 6))
    W1, W2, b2 = g.param("W1", (6, 128)), g.param("W2", (128, 128)), g.param("b2", (128,))
    h1 = g.name(data @ W1, "h1")
    h2 = g.name(sb.relu(h1 @ W2 + b2), "h2")
    W3, b3 = g.param("W3", (128, 64)), g.param("b3", (64,))
    bare = _classifier(g, h2 @ W3 + b3)
    g = sb.Graph()
    data = g.input("X", shape=("N", 6))
    W1, b1 = g.param("W1", (6, 128)), g.param("b1", (128,))
    h1 = g.name(sb.relu(data @ W1 + b1), "h1")
    W2, b2 = g.param("W2", (128, 64)), g.param("b2", (64,))
    W3, b3 = g.param("W3", (128, 64)), g.param("b3", (64,))
    two = _classifier(g, ew([h1 @ W2, b2, h1 @ W3, b3], X[0] + X[1] + X[2] + X[3]))
    for graph in (bare, two):
        fast, plain = _fast_and_plain(graph)
        assert fast.source.count("_ones[:, -1] = 1") <= 1
        _same_steps(fast, plain, 6, 64, batches=(8, 1, 5, 200))


@pytest.mark.parametrize("name", ["blocks", "flat", "G", "math"])
def test_an_input_named_like_a_training_step_variable_is_refused(name):
    g = sb.models.mlp([6, 128, 128, 64])
    g.rename("X", name)
    with pytest.raises(sb.CodegenError, match=f"input '{name}' has the name of a variable"):
        sb.compile(g, optimizer="sgd")


@pytest.mark.parametrize("n", [8, 200])
def test_layers_wider_than_the_batch_are_stored_transposed(n):
    """A batch narrower than a 128-wide layer stores the layer's arrays transposed (their
    products run faster so, see PACK), a wider one as they are. Either way the step's loss
    and gradients (lr = 1: the update is the gradient) match a hand-written forward pass
    and its central finite differences."""
    step = sb.compile(sb.models.mlp([6, 128, 128, 3]), optimizer="sgd", lr=1.0)
    params = step.init_params(3)
    rng = np.random.default_rng(n)
    X, y = rng.normal(size=(n, 6)), rng.integers(0, 3, size=n)

    def loss(p):  # relu(X W1 + b1), relu(h1 W2 + b2), h2 W3 + b3, mean cross-entropy
        h = X
        for k in (1, 2):
            h = np.maximum(h @ p[f"W{k}"] + p[f"b{k}"], 0)
        z = h @ p["W3"] + p["b3"]
        z = z - z.max(axis=1, keepdims=True)
        return np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(n), y])

    before = {k: v.copy() for k, v in params.items()}
    assert step.train_step(params, step.init_state(params), X=X, y=y) == \
        pytest.approx(loss(before), rel=1e-12)
    wide = [v for v in step.module._workspace(n)[0] if v.shape[1] in (128, 129)]
    assert len(wide) >= 4 and "h1_ones" in step.source
    assert all(v.T.flags.c_contiguous if n < 128 else v.flags.c_contiguous for v in wide)
    for k, p in before.items():
        for idx in map(tuple, rng.integers(0, p.shape, size=(4, p.ndim))):
            up, down = ({**before, k: p.copy()} for _ in range(2))
            up[k][idx] += 1e-6
            down[k][idx] -= 1e-6
            fd = (loss(up) - loss(down)) / 2e-6
            assert p[idx] - params[k][idx] == pytest.approx(fd, rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "mse"])
def test_a_loss_reads_outputs_stored_transposed(loss):
    """200 outputs at batch 8: the logits are stored transposed too, and the loss (the
    cross-entropy flattens them to pick the labels' logits) still matches the plain step."""
    fast, plain = _fast_and_plain(sb.models.mlp([6, 128, 200], loss=loss))
    assert "(N, 200), DTYPE" in fast.source and ", 200),  # _ws" in fast.source
    _same_steps(fast, plain, 6, 200, batches=(8, 5, 300), values=loss == "mse")


# -- the runtime of the workspace, run as the real module generated code copies ------------

def test_runtime_workspace_is_what_generated_modules_carry():
    """The generated step carries the very source of runtime/workspace.py's functions."""
    from symbackprop.codegen.runtime import workspace

    src = sb.train_step(sb.models.mlp([6, 5, 3]), optimizer="sgd", lr=0.1)
    assert PACK in src and PACK == sb.codegen.runtime.source(workspace._pack)
    assert CONSTANT in src and CONSTANT.startswith("_CONSTANTS = {}\n")


def test_runtime_pack_keeps_buffers_alive_together_apart():
    from symbackprop.codegen.runtime.workspace import _pack

    arrays = [((4, 8), np.float64, 0, 2, None), ((4, 8), np.float64, 1, 3, None),
              ((4, 8), bool, 3, 5, None), ((4, 8), np.float64, 4, 6, None)]
    views, flat, named, _ = _pack(arrays, [("w", (8, 3), 6), ("b", (3,), 6)])
    for i, j in itertools.combinations(range(len(arrays)), 2):
        (_, _, fi, li, _), (_, _, fj, lj, _) = arrays[i], arrays[j]
        if fi <= lj and fj <= li:  # alive at a common step
            assert not np.shares_memory(views[i], views[j]), (i, j)
    # the first array is dead by step 3, when the third is born: they may share bytes
    assert np.shares_memory(views[0], views[2]) or np.shares_memory(views[0], views[3])
    # gradients first and consecutive: w then b, one flat buffer
    assert named["w"].base is flat.base and flat.size == 8 * 3 + 3
    assert np.shares_memory(flat[:24], named["w"]) and np.shares_memory(flat[24:], named["b"])


def test_runtime_pack_transposes_a_wide_buffer_for_a_narrow_batch():
    from symbackprop.codegen.runtime.workspace import _pack

    views, *_ = _pack([((16, 256), np.float64, 0, 0, 256), ((512, 256), np.float64, 1, 1, 256),
                       ((16, 10), np.float64, 2, 2, None)], [])
    assert views[0].shape == (16, 256) and views[0].T.flags.c_contiguous  # stored (256, 16)
    assert views[1].flags.c_contiguous and views[2].flags.c_contiguous  # batch >= width


def test_runtime_constant_is_made_once_read_only_and_in_the_layout():
    from symbackprop.codegen.runtime import workspace

    workspace._CONSTANTS.clear()
    z = np.ones((3, 4), np.float32)
    a = workspace._constant(0, z)
    assert a.dtype == np.float32 and a.shape == (3, 4) and not a.flags.writeable
    assert workspace._constant(0, z) is a and not a.any()
    b = workspace._constant(0, np.ones((4, 3)).T)  # a transposed array: a Fortran-ordered one
    assert b.flags.f_contiguous and b is not workspace._constant(0, np.ones((3, 4)))
    np.testing.assert_array_equal(np.maximum(np.array([[-1.0, 2.0]]),
                                             workspace._constant(0, np.ones((1, 2)))), [[0, 2]])


# -- where a layer's bias rides in its product, and why not elsewhere -----------------------

def _fold_choices(g, dtype):
    from symbackprop.codegen.gradient_module import step_plan

    _, plan = step_plan(prepare(g, None, None), dtype)
    return {(c.W, c.b): (c.folded, c.why) for c in plan.fold_choices}


NARROW = "narrower than half its input"


def test_folds_on_network_A():
    """784-256-256-256-10 in float64: the two 256 -> 256 layers fold; the first is too wide
    an input for its output, the last too narrow an output. In float32 nothing folds."""
    g = sb.models.mlp([784, 256, 256, 256, 10])
    got = _fold_choices(g, "float64")
    assert {k: v[0] for k, v in got.items()} == {
        ("W1", "b1"): False, ("W2", "b2"): True, ("W3", "b3"): True, ("W4", "b4"): False}
    assert got["W1", "b1"][1] == f"784 -> 256 layer {NARROW}"
    assert got["W4", "b4"][1] == f"256 -> 10 layer {NARROW}"
    assert got["W2", "b2"][1] == "matmul_2 = h1 @ W2 + b2 as one product"
    f32 = _fold_choices(g, "float32")
    assert set(f32) == set(got)
    assert all(not folded and why.startswith("float32") for folded, why in f32.values())
    # the training step computes exactly the folds the plan chose
    src = sb.train_step(g, optimizer="sgd", lr=0.1)
    assert "FOLDED = (('W2', 'b2'), ('W3', 'b3'))" in src
    assert "FOLDED" not in sb.train_step(g, optimizer="sgd", lr=0.1, dtype="float32")


def test_folds_on_networks_B_and_C():
    """64-32-10 and the 50-layer width-64 tanh network: layers too narrow to fold."""
    b = _fold_choices(sb.models.mlp([64, 32, 10]), "float64")
    assert b == {("W1", "b1"): (False, "64 -> 32 layer: input narrower than 128"),
                 ("W2", "b2"): (False, f"32 -> 10 layer {NARROW}")}
    c = _fold_choices(sb.models.mlp([64] + [64] * 50 + [10], activation="tanh"), "float64")
    assert len(c) == 51 and not any(folded for folded, _ in c.values())
    assert all(why == "64 -> 64 layer: input narrower than 128"
               for (w, _), (_, why) in c.items() if w != "W51")
    assert c["W51", "b51"] == (False, f"64 -> 10 layer {NARROW}")


def test_a_fold_refused_for_a_bias_read_elsewhere_says_so():
    """A wide layer whose bias is also read by a penalty keeps its bias add, visibly."""
    g = sb.Graph(name="penalised")
    x = g.input("X", shape=("N", 256))
    W1, b1 = g.param("W1", shape=(256, 256)), g.param("b1", shape=(256,))
    W2, b2 = g.param("W2", shape=(256, 256)), g.param("b2", shape=(256,))
    h = sb.relu(x @ W1 + b1)
    h2 = sb.relu(h @ W2 + b2)
    g.output("L", sb.mean(h2 * h2) + sb.sum(b2 * b2))
    got = _fold_choices(g, "float64")
    assert got["W2", "b2"] == (False, "the product or the bias is read elsewhere")
    assert got["W1", "b1"] == (False, "its input X is not written by ufunc calls")
    ex: list = []
    sb.numpy_source(g, explain=ex)
    lines = {name: add for name, _, add in ex}["memory plan of train_step: bias in the product"]
    assert "W2, b2: not folded: the product or the bias is read elsewhere" in lines


def test_codegen_explain_prints_the_folds(tmp_path):
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "symbackprop.cli", "codegen",
                          "mlp:784-256-256-256-10", "--explain"], capture_output=True,
                         text=True, check=True, timeout=300)
    out = run.stdout
    assert "== memory plan of train_step: bias in the product" in out
    assert "  W2, b2: folded: matmul_2 = h1 @ W2 + b2 as one product" in out
    assert f"  W4, b4: not folded: 256 -> 10 layer {NARROW}" in out


def test_plan_decisions_are_typed():
    """Every step of a planned function has one decision; the planned step of A has the
    kinds the text shows (out= calls, in place, value with gradient, fold roles)."""
    from symbackprop.codegen import plan as P
    from symbackprop.codegen.gradient_module import step_plan

    em, plan = step_plan(prepare(sb.models.mlp([784, 256, 256, 256, 10]), None, None))
    kinds = {em.namer(n): type(d) for n, d in plan.decisions.items()}
    assert set(plan.decisions) == set(plan.steps)
    assert kinds["matmul_2"] is P.FoldProduct and kinds["dW2"] is P.FoldGrads
    assert kinds["db2"] is P.Skipped and kinds["L"] is P.WithGrad
    assert kinds["logits"] is P.Lowered and kinds["h1"] is P.Lowered
    assert plan.decisions[plan.steps[[em.namer(n) for n in plan.steps].index("h1")]].ones
    inplace = [n for n, d in plan.decisions.items() if isinstance(d, P.Lowered) and d.overwrites]
    assert {em.namer(n) for n in inplace} >= {"h3", "dz1", "dz2", "dz3"}


# A view (x.T, x.reshape(...), x[::-1], np.broadcast_to) shares its base's buffer: a step
# must not overwrite the base in place while it still reads the view after its first write.
# Each case: the view as a graph op, the same view in NumPy (the independent evaluation),
# and the shape of x.
VIEWS = {
    "transpose_1d": (sb.transpose, np.transpose, (3,)),
    "transpose_2d": (sb.transpose, np.transpose, (3, 3)),
    "reshape_same": (lambda v: sb.reshape(v, shape=(3,)), lambda v: v.reshape(3), (3,)),
    "reshape_there_and_back": (lambda v: sb.reshape(sb.reshape(v, shape=(9,)), shape=(3, 3)),
                               lambda v: v.reshape(9).reshape(3, 3), (3, 3)),
    "slice_reversed": (lambda v: v[::-1], lambda v: v[::-1], (3,)),
    "slice_columns_reversed": (lambda v: v[:, ::-1], lambda v: v[:, ::-1], (3, 3)),
    "broadcast_same": (lambda v: sb.broadcast_to(v, shape=(3,)),
                       lambda v: np.broadcast_to(v, (3,)), (3,)),
    "expand_then_broadcast": (
        lambda v: sb.broadcast_to(sb.reshape(v, shape=(1, 3)), shape=(1, 3)),
        lambda v: np.broadcast_to(v.reshape(1, 3), (1, 3)), (1, 3)),
    "transpose_reshape_transpose": (
        lambda v: sb.transpose(sb.reshape(sb.transpose(v), shape=(3, 3))),
        lambda v: v.T.reshape(3, 3).T, (3, 3)),
}


def _view_graph(view, shape):
    """n1 = -x; a = (-view(n1) + w) + n1: the sum reads n1 directly (its last read, so a
    candidate to be overwritten in place) and through a view, after the first call writes."""
    g = sb.Graph(name="alias")
    w = g.param("w", shape=())
    x = g.param("x", shape=shape)
    n1 = sb.neg(x)
    a = (sb.neg(view(n1)) + w) + n1
    g.output("L", sb.sum(a * a))
    return g


def test_in_place_step_keeps_an_argument_a_view_still_reads():
    """The graph test_properties found: a2 = -n1.T + w0 + n1 was written over n1's buffer
    (np.add(w0, neg_1, out=add_2); np.subtract(add_2, neg_1.T, out=add_2)), so neg_1.T read
    w0 + n1 and L came out 0 instead of 3 * w0."""
    g = sb.Graph(name="random")
    w0 = g.param("w0", shape=())
    g.input("x1", shape=())
    x2 = g.input("x2", shape=(3,))
    n1 = sb.neg(x2)
    a1 = sb.neg(sb.transpose(n1)) + w0
    g.output("L", sb.sum(a1 + n1))
    arrays = {"w0": np.array(0.6), "x1": np.array(0.3), "x2": np.array([0.1, 0.5, -0.2])}
    for optimize in (False, True):
        loss, grads = sb.compile(g, optimize=optimize).value_and_grad(**arrays)
        assert loss == pytest.approx(3 * 0.6, rel=1e-12)  # x2 - x2 + w0 in each entry
        assert grads["w0"] == pytest.approx(3.0, rel=1e-12)


@pytest.mark.parametrize("case", list(VIEWS))
def test_in_place_step_keeps_an_argument_its_views_still_read(case):
    view, np_view, shape = VIEWS[case]
    g = _view_graph(view, shape)
    rng = np.random.default_rng(1)
    arrays = {"w": np.array(0.6), "x": rng.normal(size=shape)}

    def loss(w, x):  # the same loss in NumPy, written independently
        n1 = -x
        return float(np.sum((-np_view(n1) + w + n1) ** 2))

    l0, g0 = sb.compile(g, optimize=False).value_and_grad(**arrays)
    l1, g1 = sb.compile(g).value_and_grad(**arrays)
    expected = loss(**arrays)
    assert l0 == pytest.approx(expected, rel=1e-12)
    assert l1 == pytest.approx(expected, rel=1e-12)
    eps = 1e-6
    for name in ("w", "x"):
        flat = np.array(arrays[name], dtype=float).reshape(-1)
        fd = np.empty_like(flat)
        for i in range(flat.size):
            xp, xm = flat.copy(), flat.copy()
            xp[i] += eps
            xm[i] -= eps
            shape_ = np.shape(arrays[name])
            fd[i] = (loss(**{**arrays, name: xp.reshape(shape_)})
                     - loss(**{**arrays, name: xm.reshape(shape_)})) / (2 * eps)
        for grads in (g0, g1):
            np.testing.assert_allclose(np.reshape(grads[name], -1), fd, rtol=1e-6, atol=1e-8,
                                       err_msg=f"dL/d{name}")
    # the planned training step too (its loss is computed before the update)
    fast = sb.compile(g, optimizer="sgd", lr=0.1)
    plain = sb.compile(g, optimizer="sgd", lr=0.1, optimize=False)
    pf = {k: np.array(v, dtype=float) for k, v in arrays.items()}
    pp = {k: np.array(v, dtype=float) for k, v in arrays.items()}
    assert fast.train_step(pf, fast.init_state(pf)) == pytest.approx(expected, rel=1e-12)
    assert plain.train_step(pp, plain.init_state(pp)) == pytest.approx(expected, rel=1e-12)
    for k, v in pp.items():
        np.testing.assert_allclose(pf[k], v, rtol=1e-12, atol=1e-15)
