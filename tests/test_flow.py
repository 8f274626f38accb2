"""sb.gradient_flow and `symbackprop flow` (issue 14, point 2): the lesson at depth 50,
every column against a hand-derived NumPy computation, the closed-form bounds, and bad
input."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import sympy

import symbackprop as sb
from symbackprop.cli import load_spec, main
from symbackprop.codegen.init import initial_params
from symbackprop.flow import SATURATED, bound, compare, mlp_variant
from symbackprop.layers import layers

DEEP = [64] + [64] * 50 + [10]  # mlp:64-64*50-10: 50 hidden layers, 51 weight layers


# -- the lesson -----------------------------------------------------------------------------
def test_deep_sigmoid_vanishes_relu_and_residual_do_not():
    sig = sb.gradient_flow(sb.models.mlp(DEEP, activation="sigmoid"), batch=64, seed=0)
    relu = sb.gradient_flow(sb.models.mlp(DEEP), batch=64, seed=0, init="he")
    res = sb.gradient_flow(mlp_variant(DEEP, "residual_mlp"), batch=64, seed=0)
    assert sig.first_ratio < 1e-3 and 1 in sig.flagged("vanishing")
    for r in (relu, res):
        assert 1e-3 < r.first_ratio < 1e3, r.first_ratio
        assert not r.flagged("vanishing") and not r.flagged("exploding")
    assert len(sig.layers) == len(relu.layers) == len(res.layers) == 51
    # σ′ ≤ 1/4 in each of the 50 sigmoid layers: the bound is 0.25**50
    assert sig.bound_product == pytest.approx(0.25 ** 50)
    assert sig.measured_product <= sig.bound_product


def test_layer_norm_after_the_activation_keeps_a_sigmoid_net_alive():
    r = sb.gradient_flow(sb.models.mlp(DEEP, activation="sigmoid", layer_norm=True))
    assert 1e-3 < r.first_ratio < 1e3


@pytest.mark.parametrize("act", ["sigmoid", "tanh", "relu", "softplus"])
def test_measured_never_exceeds_the_bound(act):
    r = sb.gradient_flow(sb.models.mlp([16] * 12 + [4], activation=act), batch=32, seed=3)
    for s in r.layers[:-1]:
        assert s.local_mean <= s.local_bound
        # across the activation the generated backward multiplies each entry by f′(z):
        # ‖∂L/∂z‖ ≤ max|f′| · ‖∂L/∂h‖
        assert s.gain <= s.local_bound * (1 + 1e-12)
    assert r.measured_product <= r.bound_product


# -- the bounds, from SymPy ----------------------------------------------------------------
def test_bounds_are_derived_from_the_ops_expression():
    assert bound("sigmoid").value == sympy.Rational(1, 4)
    assert bound("tanh").value == 1 and not bound("tanh").steps
    assert bound("relu").value == 1 and bound("relu").steps
    assert bound("softplus").value == 1
    assert bound("exp").value is sympy.oo


def test_bound_of_a_users_op_is_at_least_its_derivative_anywhere():
    from symbackprop.ops import registry

    ops = dict(registry._OPS)
    try:  # registered for this test only: the op harness wants a domain for every op
        sb.elementwise("flow_swish", lambda x: x / (1 + sympy.exp(-x)))
        b = bound("flow_swish")
    finally:
        registry._OPS.clear()
        registry._OPS.update(ops)
        bound.cache_clear()
    x = np.linspace(-20, 20, 400001)
    s = 1 / (1 + np.exp(-x))
    fprime = np.abs(s + x * s * (1 - s))  # d/dx x·σ(x), by hand
    assert fprime.max() <= b.number + 1e-6 and b.number < fprime.max() + 1e-3


# -- every column against a hand computation ------------------------------------------------
def test_columns_match_a_hand_computed_backward_pass():
    g = sb.models.mlp([5, 4, 4, 3], activation="tanh")
    rng = np.random.default_rng(5)
    X, y = rng.standard_normal((7, 5)) * 3, rng.integers(0, 3, 7)
    r = sb.gradient_flow(g, data={"X": X, "y": y}, seed=2)
    p = initial_params(g, 2)
    W = [p["W1"], p["W2"], p["W3"]]
    h1 = np.tanh(X @ W[0] + p["b1"])
    h2 = np.tanh(h1 @ W[1] + p["b2"])
    logits = h2 @ W[2] + p["b3"]
    P = np.exp(logits - logits.max(1, keepdims=True))
    P /= P.sum(1, keepdims=True)
    dlogits = (P - np.eye(3)[y]) / 7  # mean softmax cross-entropy
    dh2 = dlogits @ W[2].T
    dz2 = dh2 * (1 - h2 ** 2)
    dh1 = dz2 @ W[1].T
    dz1 = dh1 * (1 - h1 ** 2)
    dW = [X.T @ dz1, h1.T @ dz2, h2.T @ dlogits]
    norms = [np.linalg.norm(d) for d in dW]
    for s, n, w, dh in zip(r.layers, norms, W, [dh1, dh2, dlogits]):
        assert s.grad_norm == pytest.approx(n, rel=1e-10)
        assert s.out_grad_norm == pytest.approx(np.linalg.norm(dh), rel=1e-10)
        assert s.grad_data == pytest.approx(n / np.linalg.norm(w), rel=1e-10)
        assert s.ratio == pytest.approx(n / norms[-1], rel=1e-10)
    for s, h, dh, dz in zip(r.layers, [h1, h2], [dh1, dh2], [dz1, dz2]):
        d = 1 - h ** 2
        assert s.local_mean == pytest.approx(d.mean(), rel=1e-10)
        assert s.saturated == pytest.approx(np.mean(d < SATURATED * 1.0))  # |tanh| > 0.99
        assert s.dead == 0.0
        assert s.gain == pytest.approx(np.linalg.norm(dz) / np.linalg.norm(dh), rel=1e-10)
    assert r.layers[-1].local_mean is None and r.loss == pytest.approx(
        -np.log(P[np.arange(7), y]).mean())


def test_dead_relu_units_and_the_dead_flag():
    g = sb.models.mlp([6, 40, 40, 3])
    X = np.random.default_rng(1).standard_normal((2, 6))  # two samples: many units die
    r = sb.gradient_flow(g, data={"X": X, "y": np.array([0, 2])}, seed=4)
    p = initial_params(g, 4)
    z1 = X @ p["W1"] + p["b1"]
    z2 = np.maximum(z1, 0) @ p["W2"] + p["b2"]
    for s, z in zip(r.layers, [z1, z2]):
        expected = np.mean(np.all(z <= 0, axis=0))
        assert s.dead == pytest.approx(expected) and expected > 0
        assert ("dead" in s.flags) == (expected > 0.5)
        assert s.saturated is None  # relu′ ∈ {0, 1}: units die, they do not saturate


def test_a_graph_without_blocks_gets_one_layer_per_weight():
    g = sb.Graph()
    X, y = g.input("X", shape=("N", 4)), g.input("y", shape=("N",), dtype="int")
    h = sb.tanh(X @ g.param("A", shape=(4, 5)) + g.param("a", shape=(5,)))
    g.output("L", sb.softmax_cross_entropy(h @ g.param("B", shape=(5, 2)), y))
    found = layers(g)
    assert [(s.name, s.weights) for s in found] == [("A", ["A"]), ("B", ["B"])]
    assert found[0].activation == h.name and "a" in found[0].members
    r = sb.gradient_flow(g, batch=8)
    assert r.layers[0].local_bound == 1.0 and r.layers[-1].ratio == 1.0


def test_init_rules_come_from_the_generated_init_params():
    g = sb.models.mlp([50, 40, 3], activation="tanh")
    p = initial_params(g, 0, init="uniform")
    assert np.abs(p["W1"]).max() <= 1 / math.sqrt(50) and p["W1"].std() > 0.5 / math.sqrt(150)
    he = initial_params(g, 0, init="he")
    assert he["W1"].std() == pytest.approx(math.sqrt(2 / 50), rel=0.1)
    src = sb.training_script(g)  # the default rule is unchanged
    assert "uniform_fan_in" not in src
    r = compare({k: (g, k) for k in ("he", "xavier", "uniform")}, batch=8)
    assert [x.init for x in r.reports] == ["he", "xavier", "uniform"]
    assert len({x.layers[0].grad_norm for x in r.reports}) == 3


def test_data_from_an_npz_as_x_and_y(tmp_path):
    g = sb.models.mlp([5, 4, 3])
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((9, 5)), rng.integers(0, 3, 9)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    a = sb.gradient_flow(g, data=str(tmp_path / "d.npz"))
    b = sb.gradient_flow(g, data={"X": X, "y": y})
    assert a.batch == 9 and a.as_dict() == b.as_dict()
    np.savez(tmp_path / "bad.npz", X=X[:, :4], y=y)
    with pytest.raises(sb.ShapeError, match=r"input 'X' has shape \(9, 4\).*\(N, 5\)"):
        sb.gradient_flow(g, data=str(tmp_path / "bad.npz"))


def test_outputs_text_markdown_dict():
    r = sb.gradient_flow(sb.models.mlp([8] * 4 + [3], activation="sigmoid"), batch=16)
    text = r.text()
    assert text.splitlines()[1].split()[:4] == ["layer", "‖∂L/∂W‖", "‖∂L/∂h‖", "ratio"]
    assert "max|sigmoid′| = 1/4" in text and "0.9^3" in text
    md = r.markdown()
    assert "| layer | ‖∂L/∂W‖ |" in md
    d = json.loads(json.dumps(r.as_dict()))
    assert len(d["layers"]) == 4 and d["bound_product"] == pytest.approx(0.25 ** 3)


@pytest.mark.slow
def test_fifty_layers_in_about_a_second():
    """Issue 14: under 1 s, compile included, for mlp:64-64*50-10 at batch 64 (generous here:
    the suite shares the machine)."""
    g = load_spec("mlp:64-64*50-10")
    start = time.perf_counter()
    sb.gradient_flow(g, batch=64)
    assert time.perf_counter() - start < 5


# -- the command ------------------------------------------------------------------------------
def test_mlp_shorthand_repeats_a_size():
    g = load_spec("mlp:64-64*50-10")
    assert len(g.nodes("param")) == 2 * 51 and g.nx.nodes["W51"]["shape"] == (64, 10)


def test_flow_command_compares_activations(capsys):
    assert main(["flow", "mlp:8-8*6-3", "--batch", "16",
                 "--compare", "activation=sigmoid,tanh,relu"]) == 0
    out = capsys.readouterr().out
    head = out.splitlines()[1]
    assert head.split() == ["layer", "sigmoid", "ratio", "tanh", "ratio", "relu", "ratio"]
    assert "max|sigmoid′| = 1/4" in out and "max|relu′| = 1" in out


def test_flow_command_compares_models_as_json(capsys):
    assert main(["flow", "mlp:8-8*6-3", "--batch", "16", "--format", "json",
                 "--compare", "model=mlp,residual_mlp,mlp+layer_norm"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert [v["label"] for v in d["variants"]] == ["mlp", "residual_mlp", "mlp+layer_norm"]
    assert [len(v["layers"]) for v in d["variants"]] == [7, 7, 7]


@pytest.mark.parametrize("argv, words", [
    (["--compare", "colour=red"], "KEY one of activation, model, init"),
    (["--compare", "activation=relu6"], "Did you mean 'relu'"),
    (["--compare", "model=cnn"], "'cnn' is not one of mlp, residual_mlp, mlp+layer_norm"),
    (["--compare", "init=he,zero"], "'zero' is not one of he, xavier, uniform"),
    (["--batch", "0"], "batch=0"),
    (["--plot", "out.gif"], "expected a .svg or .png file"),
])
def test_bad_input_is_one_line_exit_2(argv, words, capsys):
    assert main(["flow", "mlp:8-8*3-3", *argv]) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_bad_spec_and_data_are_one_line_exit_2(tmp_path, capsys):
    assert main(["flow", "mlp:8-8*x-3"]) == 2
    assert main(["flow", "L = w*x", "--compare", "activation=tanh"]) == 2
    np.savez(tmp_path / "d.npz", X=np.ones((4, 7)), y=np.zeros(4, dtype=int))
    assert main(["flow", "mlp:8-3", "--data", str(tmp_path / "d.npz")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and "WIDTH*COUNT" in lines[0] and "needs an mlp: SPEC" in lines[1]
    assert "has shape (4, 7)" in lines[2]
