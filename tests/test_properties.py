"""Properties of random networks drawn by ``sb.testing.random_graphs()`` (hypothesis).

Every drawn graph is a DAG of a few inputs and parameters and one to eight ops
(elementwise, reductions over an axis, matmul, transpose) ending in a scalar loss
``L``. For each one:

1. the generated ``forward`` matches :func:`reference`, a NumPy walk of the graph
   with one line per op in :data:`REF` (no code of symbackprop is used);
2. the gradients of ``value_and_grad`` with respect to every input and parameter
   are float64 arrays of the leaf's shape and match central finite differences of
   :func:`reference` (a few entries each; a point within 1e-3 of a relu kink is
   skipped with ``assume``);
3. the optimization passes keep the loss and the gradients: ``optimize=False``
   against the default, for ``value_and_grad`` and for one memory-planned SGD
   ``train_step`` (loss and updated parameters);
4. drawing the forward, backward and joint diagrams never raises;
5. a JSON round trip (``g.save``, ``sb.load``) keeps the generated source.

Not hypothesis: for chains of depth 5 to 40, the joint graph grows linearly, at most
:data:`GROWTH` nodes per forward node, and the JSON round trip keeps the source.
On a failure, hypothesis prints the drawn graph one node a line (``note``). The
smallest failing graphs it has found (:data:`FOUND`) run first, as explicit examples.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
from hypothesis import assume, example, given, note, settings

import symbackprop as sb
from symbackprop.testing import random_graphs, random_inputs

SIZES = {"N": 4}  # the size name N, as random_inputs binds it
GROWTH = 3  # joint-graph nodes per forward node, at most (about 2.8 for long chains)

# The reference: NumPy per op, written from the ops' definitions, not from the code
# generator. Attributes (axis, keepdims, axes) are passed as keywords.
REF = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "div": np.divide,
    "neg": np.negative,
    "exp": np.exp,
    "tanh": np.tanh,
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "relu": lambda x: np.maximum(x, 0),
    "softplus": lambda x: np.log1p(np.exp(x)),
    "square": np.square,
    "sin": np.sin,
    "cos": np.cos,
    "sum": lambda x, axis, keepdims: np.sum(x, axis=axis, keepdims=keepdims),
    "mean": lambda x, axis, keepdims: np.mean(x, axis=axis, keepdims=keepdims),
    "matmul": np.matmul,
    "transpose": lambda x, axes: np.transpose(x, axes),
    "identity": lambda x: x,
}


def reference(g: sb.Graph, arrays: dict) -> dict:
    """The value of every node of ``g`` at ``arrays``, by walking the graph in NumPy."""
    val = {}
    for n in g.topo_order():
        d = g.nx.nodes[n]
        if d["op"] in ("input", "param"):
            val[n] = np.asarray(arrays[n], dtype=float)
        elif d["op"] == "const":
            val[n] = np.asarray(d["value"], dtype=float)
        else:
            val[n] = np.asarray(REF[d["op"]](*(val[a] for a in g.args(n)), **d["attrs"]))
    return val


def relu_margin(g: sb.Graph, val: dict) -> float:
    """The smallest |argument| of a relu: below the finite-difference step, a kink."""
    args = [val[g.args(n)[0]] for n in g.nodes("op") if g.nx.nodes[n]["op"] == "relu"]
    return min((float(np.abs(a).min()) for a in args), default=np.inf)


def leaves(g: sb.Graph) -> list[str]:
    return g.nodes("input") + g.nodes("param")


def close(a, b, rtol=1e-9, atol=1e-12) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and np.allclose(a, b, rtol=rtol, atol=atol)


def describe(g: sb.Graph) -> str:
    """The graph, one node a line, for failure reports (``note``)."""
    lines = []
    for n in g.topo_order():
        d = g.nx.nodes[n]
        extra = d["attrs"] or d.get("value", "")
        lines.append(f"{n} = {d['op']}({', '.join(g.args(n))}) {d['shape']} {extra}")
    return "\n".join(lines)


# -- the smallest failing graphs hypothesis found, kept as regression cases ----------
def _graph(build) -> sb.Graph:
    g = sb.Graph("random")
    build(g)
    return g


FOUND = {
    # the emitter inlined the 0 of w0 * 0 and lost the shape (3,) (and printed a Python int)
    "mul_by_zero": lambda g: g.output("L", sb.sum(g.output("y", g.param("w0", (3,)) * 0.0))),
    "mul_by_zero_scalar": lambda g: (g.param("w0"), g.output("L", sb.sum(g.input("x1") * 0.0))),
    # fold indexed the symbols of ew(dL, expr=0), which skips its argument
    "vjp_of_mul_by_zero": lambda g: g.output("L", sb.sum(-g.param("w0") * 0.0)),
    # fuse dropped x1 from ew(x1, expr=0): nothing bound N any more
    "zero_keeps_batch": lambda g: (g.param("w0", (3, 3)),
                                   g.output("L", sb.sum(g.input("x1", ("N", 3)) * 0.0))),
    # the zero gradient of an unused (N, 3) input needed N but did not take the input
    "unused_batch_input": lambda g: (g.param("w0"), g.input("x1", ("N", 3)),
                                     g.output("L", sb.sum(-g["w0"]))),
    # relu's step was printed as a bool: -(h > 0) raised, (a > 0) + (b > 0) was an or
    "relu_step_negated": lambda g: g.output("L", sb.sum(sb.relu(-g.param("w0")))),
    "relu_steps_summed": lambda g: g.output("L", sb.relu(g.param("w0")) + sb.relu(g["w0"] + 1)),
    # cse dropped the output dadd_1 (the gradient of w0) as a duplicate of dneg_1
    "cse_keeps_outputs": lambda g: g.output("L", sb.sum(-g.param("w1", (3,))) * 1.0 + sb.sum(
        g["w1"] + g.param("w0", (3,))) * 1.0),
    # the planner reused the buffer of dtranspose_1 while its view dmul_1 was still read
    "view_of_freed_buffer": lambda g: g.output("L", sb.sum(-(g.param("w1") * g.param(
        "w0", (3,))).T)),
    # w0 and w1 share the gradient node dadd_1: train_step passed a gradient for w1
    "shared_gradient": lambda g: g.output("L", sb.sum(g.param("w1", (3,)) + g.param("w0", (3,)))),
    # after sb.load, names such as const_1 were given again (dead add_1 dropped first)
    "json_counters": lambda g: (g.param("w0"), g.input("x1"), g.input("x2") + 0.5,
                                g.output("L", sb.sum(-g["x2"]))),
}


def found(test):
    """Run ``test`` on every graph of :data:`FOUND` first (hypothesis ``@example``)."""
    for build in FOUND.values():
        test = example(_graph(build))(test)
    return test


# -- 1. forward ------------------------------------------------------------------------
@settings(max_examples=250, deadline=None)
@given(random_graphs())
@found
def test_forward_matches_reference(g):
    note(describe(g))
    arrays = random_inputs(g, SIZES)
    want = reference(g, arrays)
    got = sb.compile(g).forward(**arrays)
    assert set(got) == set(g.outputs)
    for o in g.outputs:
        assert close(got[o], want[o]), f"output {o}: {got[o]!r} != {want[o]!r}"


# -- 2. gradients ----------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(random_graphs())
@found
def test_gradients_match_finite_differences(g):
    note(describe(g))
    wrt = leaves(g)
    arrays = random_inputs(g, SIZES)
    assume(relu_margin(g, reference(g, arrays)) > 1e-3)
    loss, grads = sb.compile(g, wrt=wrt).value_and_grad(**arrays)
    assert close(loss, reference(g, arrays)["L"])
    eps, rng = 1e-6, np.random.default_rng(0)

    def L(w, idx, v):
        x = np.array(arrays[w], dtype=float)
        x[idx] = v
        return float(reference(g, {**arrays, w: x})["L"])

    for w in wrt:
        assert np.shape(grads[w]) == np.shape(arrays[w]), f"dL/d{w}"
        assert np.asarray(grads[w]).dtype == np.float64, f"dL/d{w}"
        idxs = list(np.ndindex(np.shape(arrays[w])))
        for k in rng.choice(len(idxs), min(3, len(idxs)), replace=False):
            idx = idxs[k]
            x0 = float(np.asarray(arrays[w])[idx])
            fd = (L(w, idx, x0 + eps) - L(w, idx, x0 - eps)) / (2 * eps)
            an = float(np.asarray(grads[w])[idx])
            assert abs(fd - an) <= 1e-5 * max(abs(fd), abs(an)) + 1e-7 * (1 + abs(float(loss))), \
                f"dL/d{w}{list(idx)}: {an} from value_and_grad, {fd} by differences"


# -- 3. optimization passes -----------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(random_graphs())
@found
def test_passes_keep_loss_and_gradients(g):
    note(describe(g))
    arrays = random_inputs(g, SIZES)
    l0, g0 = sb.compile(g, optimize=False).value_and_grad(**arrays)
    l1, g1 = sb.compile(g).value_and_grad(**arrays)
    assert close(l1, l0)
    assert set(g1) == set(g0)
    for w in g0:
        assert close(g1[w], g0[w]), f"dL/d{w}"


@settings(max_examples=200, deadline=None)
@given(random_graphs())
@found
def test_planned_training_step_matches_plain_one(g):
    note(describe(g))
    arrays = random_inputs(g, SIZES)
    results = []
    for optimize in (False, True):
        step = sb.compile(g, optimize=optimize, optimizer="sgd", lr=0.1)
        params = {n: np.array(arrays[n], dtype=float) for n in g.nodes("param")}
        state = step.init_state(params)
        batch = {n: arrays[n] for n in g.nodes("input") if step.arg_names[n] in step.inputs}
        loss = step.train_step(params, state, **batch)
        results.append((loss, params))
    (l0, p0), (l1, p1) = results
    assert close(l1, l0)
    for w in p0:
        assert close(p1[w], p0[w]), f"{w} after one step"


# -- 4. rendering -----------------------------------------------------------------------
@settings(max_examples=100, deadline=None)
@given(random_graphs())
@found
def test_rendering_never_raises(g):
    note(describe(g))
    dots = [sb.to_dot(g), sb.render(g).source, sb.to_dot(g, "backward"), sb.to_dot(g, "joint"),
            sb.to_dot(sb.differentiate(g, wrt=leaves(g)))]
    for dot in dots:
        assert dot.startswith("digraph") and dot.rstrip().endswith("}")


# -- 5. JSON round trip and growth of the adjoint graph --------------------------------
def round_trip(g: sb.Graph) -> sb.Graph:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "g.json")
        g.save(path)
        return sb.load(path)


@settings(max_examples=150, deadline=None)
@given(random_graphs())
@found
def test_json_round_trip_keeps_source(g):
    note(describe(g))
    h = round_trip(g)
    assert sb.numpy_source(h) == sb.numpy_source(g)


def chain(depth: int) -> sb.Graph:
    """``depth`` ops in a row on an (N, 3) input, cycling through elementwise ops,
    parameters and matmul, then the mean."""
    g = sb.Graph(f"chain{depth}")
    h = g.input("x", shape=("N", 3))
    W, b = g.param("W", shape=(3, 3)), g.param("b", shape=(3,))
    steps = [sb.tanh, lambda h: h * b, sb.sigmoid, lambda h: h @ W, sb.sin,
             lambda h: h + b, sb.softplus, lambda h: h / (1 + sb.square(b))]
    for i in range(depth):
        h = steps[i % len(steps)](h)
    g.output("L", sb.mean(h))
    return g


@pytest.mark.parametrize("depth", [5, 10, 20, 40])
def test_adjoint_graph_grows_linearly(depth):
    g = chain(depth)
    joint = sb.differentiate(g).graph
    assert len(joint) <= GROWTH * len(g), f"{len(joint)} joint nodes for {len(g)}"


@pytest.mark.parametrize("depth", [5, 10, 20, 40])
def test_json_round_trip_of_chains(depth):
    g = chain(depth)
    assert sb.numpy_source(round_trip(g)) == sb.numpy_source(g)

