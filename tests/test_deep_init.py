"""Deep networks start well: initialisation by activation, shared by init_params and
random_inputs, and the depth-50 gradient-norm ratios (docs/training.md, *Deep networks*)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import symbackprop as sb
from symbackprop.cli import main
from symbackprop.codegen.init import initial_params
from symbackprop.codegen.loader import load_source

DEEP = [64] * 50 + [10]  # 50 layers: 49 hidden layers of 64 units, then 10 classes


def batch(seed=0, n=64, features=64, classes=10):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, features)), rng.integers(0, classes, n)


def layer_norms(g, grads) -> list[float]:
    """The norm of each layer's parameter gradients (Wk and bk together), layer 1 first."""
    params = g.nodes("param")
    return [math.hypot(np.linalg.norm(grads[w]), np.linalg.norm(grads[b]))
            for w, b in zip(params[::2], params[1::2])]


def start(g, params, seed=0):
    """The loss and per-layer gradient norms of ``g`` at ``params`` on a standard-normal batch."""
    X, y = batch(seed)
    loss, grads = sb.compile(g, of="L").value_and_grad(X=X, y=y, **params)
    return float(loss), layer_norms(g, grads)


def assert_balanced(norms):
    last = norms[-1]
    assert max(norms) < 1e3, norms
    assert all(last / 1e3 <= n <= last * 1e3 for n in norms), (min(norms), max(norms), last)


# -- residual_mlp at depth 50 ------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_residual_mlp_depth_50_starts_near_ln_classes(seed):
    g = sb.models.residual_mlp(64, 64, 50, 10)
    step = sb.compile(g, of="L", optimizer="sgd")  # its default initialisation
    loss, norms = start(g, step.init_params(seed), seed)
    assert abs(loss - math.log(10)) < 2.5, loss  # unscaled: about 1e5 (1e12 before)
    assert len(norms) == 52
    assert_balanced(norms)


def test_unscaled_residual_branches_explode():
    """The same network with branch_scale=1: what the 1/sqrt(depth) scale prevents."""
    g = sb.models.residual_mlp(64, 64, 50, 10, branch_scale=1.0)
    loss, norms = start(g, initial_params(g, 0))
    assert loss > 1e3 and max(norms) > 1e3


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), True, "0.1"])
def test_bad_branch_scale(bad):
    with pytest.raises(sb.GraphError, match=r"branch_scale=.*expected a positive number"):
        sb.models.residual_mlp(4, 3, 2, 2, branch_scale=bad)


def test_training_script_starts_the_same_way(tmp_path):
    """`symbackprop train-script` on the saved network writes the scaled branches and the
    same init_params: the script's own functions start near ln(10)."""
    g = sb.models.residual_mlp(64, 64, 50, 10)
    g.save(tmp_path / "res.json")
    out = tmp_path / "train.py"
    assert main(["train-script", str(tmp_path / "res.json"), "-o", str(out)]) in (0, None)
    script = load_source(out.read_text(), "deep_init_script")
    params = script.init_params(np.random.default_rng(3))  # what `python train.py --seed 3` does
    expected = initial_params(g, 3)
    assert all(np.array_equal(params[k], expected[k]) for k in expected)
    X, y = batch(3)
    loss, grads = script.value_and_grad(X=X, y=y, **params)
    assert abs(loss - math.log(10)) < 2.5
    assert_balanced(layer_norms(g, grads))


# -- the lesson: ReLU with He keeps gradients alive, sigmoid does not --------------------
def first_and_last(g, params) -> tuple[float, float]:
    _, norms = start(g, params)
    return norms[0], norms[-1]


def test_deep_relu_mlp_with_he_keeps_its_first_layer_gradient():
    g = sb.models.mlp(DEEP)
    arrays = sb.testing.random_inputs(g, {"N": 64})  # He weights there too, random biases
    for params in (initial_params(g, 0), {p: arrays[p] for p in g.nodes("param")}):
        first, last = first_and_last(g, params)
        # alive, not only balanced: U(-1, 1)/sqrt(fan_in) gave about 5e-20 for both
        assert 1e-3 < first / last < 1e3 and first > 1e-2


def test_deep_sigmoid_mlp_loses_its_first_layer_gradient():
    g = sb.models.mlp(DEEP, activation="sigmoid")
    arrays = sb.testing.random_inputs(g, {"N": 64})
    for params in (initial_params(g, 0), {p: arrays[p] for p in g.nodes("param")}):
        first, last = first_and_last(g, params)
        # each layer multiplies the gradient by about sigmoid'(0) = 1/4: 0.25**50 ~ 1e-30
        assert first / last < 1e-20 and last > 1e-2


# -- random_inputs initialises weights as init_params does -------------------------------
@pytest.mark.parametrize("make", [
    lambda: sb.models.mlp([6, 5, 4, 3]),
    lambda: sb.models.mlp([6, 5, 3], activation="tanh"),
    lambda: sb.models.residual_mlp(6, 5, 3, 3),
    lambda: sb.models.autoencoder([6, 4, 2]),
], ids=["relu", "tanh", "residual", "autoencoder"])
@pytest.mark.parametrize("seed", [0, 7])
def test_random_inputs_weights_are_init_params(make, seed):
    g = make()
    arrays = sb.testing.random_inputs(g, {"N": 3}, seed=seed)
    init = sb.compile(g, optimizer="sgd").init_params(seed)  # the generated train step's
    weights = [p for p in g.nodes("param") if len(g.nx.nodes[p]["shape"]) == 2]
    for p in weights:
        np.testing.assert_array_equal(arrays[p], init[p])
    again = sb.testing.random_inputs(g, {"N": 3}, seed=seed)
    assert all(np.array_equal(arrays[k], again[k]) for k in arrays)  # same seed, same values
    other = sb.testing.random_inputs(g, {"N": 3}, seed=seed + 1)
    assert not any(np.array_equal(arrays[p], other[p]) for p in weights)


def test_random_inputs_he_for_relu_xavier_otherwise():
    relu = sb.testing.random_inputs(sb.models.mlp([400, 300, 10]), seed=2)
    tanh = sb.testing.random_inputs(sb.models.mlp([400, 300, 10], activation="tanh"), seed=2)
    he, xavier = math.sqrt(2 / 400), math.sqrt(6 / (400 + 300))
    # relu's first layer: He normal N(0, 2/fan_in), so values beyond Xavier's bound occur
    assert relu["W1"].std() == pytest.approx(he, rel=0.02) and abs(relu["W1"]).max() > xavier
    # tanh's first layer and every output layer: Xavier uniform in +-sqrt(6/(fan_in+fan_out))
    assert abs(tanh["W1"]).max() <= xavier
    assert tanh["W1"].std() == pytest.approx(xavier / math.sqrt(3), rel=0.02)
    out = math.sqrt(6 / (300 + 10))
    assert abs(relu["W2"]).max() <= out and abs(tanh["W2"]).max() <= out
    assert relu["W2"].std() == pytest.approx(out / math.sqrt(3), rel=0.05)


def test_random_inputs_keeps_data_and_biases_random():
    """Inputs are drawn as before (first, from the seed); biases and scalars, zero in
    init_params, are uniform in [-1, 1] so a gradient check sees them away from 0."""
    g = sb.models.mlp([4, 3, 2])
    arrays = sb.testing.random_inputs(g, {"N": 5}, seed=4)
    rng = np.random.default_rng(4)
    np.testing.assert_array_equal(arrays["X"], rng.uniform(0.2, 1.2, size=(5, 4)))
    np.testing.assert_array_equal(arrays["y"], rng.integers(0, 2, size=(5,)))
    for b in ("b1", "b2"):
        assert arrays[b].any() and abs(arrays[b]).max() <= 1
    w = sb.testing.random_inputs(sb.parse("L = (w*x - y)**2", params=["w"]))["w"]
    assert w.shape == () and 0 < abs(w) <= 1


def test_random_inputs_with_a_size_name_in_a_parameter():
    g = sb.Graph("sized")
    x, W = g.input("x", shape=("N", 3)), g.param("W", shape=("K", 3))
    g.output("L", sb.sum(x @ W.T))
    arrays = sb.testing.random_inputs(g, {"N": 2, "K": 5})
    assert arrays["W"].shape == (5, 3)
    with pytest.raises(sb.CodegenError, match="'W' has shape"):
        initial_params(g)
