"""sb.models: documented names, shapes, and gradients checked by finite differences."""

from __future__ import annotations

import numpy as np
import pytest

import symbackprop as sb

MODELS = {
    "mlp": lambda: sb.models.mlp([5, 4, 3]),
    "logistic_regression": lambda: sb.models.logistic_regression(5),
    "softmax_regression": lambda: sb.models.softmax_regression(5, 3),
    "residual_mlp_relu": lambda: sb.models.residual_mlp(5, 4, 2, 3),
    "residual_mlp_tanh": lambda: sb.models.residual_mlp(5, 4, 3, 3, activation="tanh"),
    "autoencoder": lambda: sb.models.autoencoder([5, 4, 2], activation="tanh"),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_gradients_match_finite_differences(name):
    report = sb.check_grad(MODELS[name](), of="L", sizes={"N": 6}, max_entries=40)
    assert report.ok, str(report)


def shapes(g, role):
    return {n: g.nx.nodes[n]["shape"] for n in g.nodes(role)}


def test_logistic_regression_names_and_loss():
    g = sb.models.logistic_regression(3)
    assert shapes(g, "input") == {"X": ("N", 3), "y": ("N",)}
    assert g.nx.nodes["y"]["dtype"] == "int"
    assert shapes(g, "param") == {"W": (3, 1), "b": (1,)}
    assert g.outputs == ["logits", "L"] and g["logits"].shape == ("N",)
    # L is the binary cross-entropy of p = sigmoid(logits): check against the textbook form
    fn = sb.compile(g)
    X = np.array([[0.5, -1.0, 2.0], [1.0, 0.0, -3.0], [-2.0, 1.0, 0.5]])
    y = np.array([1, 0, 1])
    W, b = np.array([[0.3], [-0.2], [0.1]]), np.array([0.05])
    z = (X @ W + b).ravel()
    p = 1 / (1 + np.exp(-z))
    bce = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    out = fn.forward(X=X, y=y, W=W, b=b)
    np.testing.assert_allclose(out["L"], bce, rtol=1e-12)
    np.testing.assert_allclose(out["logits"], z, rtol=1e-12)
    # large logits stay finite: softplus, not log(sigmoid)
    big = fn.forward(X=X * 1e4, y=y, W=W, b=b)["L"]
    assert np.isfinite(big)


def test_softmax_regression_names():
    g = sb.models.softmax_regression(4, 3)
    assert shapes(g, "input") == {"X": ("N", 4), "y": ("N",)}
    assert shapes(g, "param") == {"W": (4, 3), "b": (3,)}
    assert g.outputs == ["logits", "L"] and g.nx.nodes["L"]["op"] == "softmax_cross_entropy"


def test_residual_mlp_skips_every_block():
    g = sb.models.residual_mlp(6, 4, 3, 2)
    assert shapes(g, "param") == {
        "W1": (6, 4), "b1": (4,), "W2": (4, 4), "b2": (4,), "W3": (4, 4), "b3": (4,),
        "W4": (4, 4), "b4": (4,), "W5": (4, 2), "b5": (2,)}
    for k in (2, 3, 4):  # h = h + s * (act(h) @ W + b), a pre-activation block
        assert g.args(f"h{k}") == [f"h{k - 1}", f"r{k}"]
        s, z = g.args(f"r{k}")
        assert z == f"z{k}" and g.nx.nodes[s]["value"] == pytest.approx(3 ** -0.5)  # 1/sqrt(3)
        assert g.nx.nodes[f"a{k}"]["op"] == "relu" and g.args(f"a{k}") == [f"h{k - 1}"]
        assert g.args(g.args(f"z{k}")[0]) == [f"a{k}", f"W{k}"] and g.args(f"z{k}")[1] == f"b{k}"
    assert g.outputs == ["logits", "L"] and g["logits"].shape == ("N", 2)
    assert len(sb.models.residual_mlp(6, 4, 0, 2).nodes("param")) == 4


def test_residual_identity_path_carries_the_gradient():
    # With every block's weights at zero, each block adds s * (act(h) @ 0 + 0) = 0: the
    # gradient reaching h1 is the one leaving the last block, untouched by depth.
    g = sb.models.residual_mlp(3, 4, 5, 2)
    at = {n: np.zeros(g.nx.nodes[n]["shape"]) for n in g.nodes("param")}
    rng = np.random.default_rng(0)
    at.update(W1=rng.normal(size=(3, 4)), W7=rng.normal(size=(4, 2)))
    X, y = rng.normal(size=(5, 3)), np.array([0, 1, 1, 0, 1])
    _, grads = sb.compile(g).value_and_grad(X=X, y=y, **at)
    shallow = sb.models.residual_mlp(3, 4, 0, 2)
    _, g0 = sb.compile(shallow).value_and_grad(X=X, y=y, W1=at["W1"], b1=at["b1"],
                                               W2=at["W7"], b2=at["b7"])
    np.testing.assert_allclose(grads["W1"], g0["W1"], rtol=1e-12)


def test_autoencoder_mirrors_and_has_no_labels():
    g = sb.models.autoencoder([6, 4, 2])
    assert g.nodes("input") == ["X"]
    assert shapes(g, "param") == {"W1": (6, 4), "b1": (4,), "W2": (4, 2), "b2": (2,),
                                  "W3": (2, 4), "b3": (4,), "W4": (4, 6), "b4": (6,)}
    assert g["code"].shape == ("N", 2) and g["pred"].shape == ("N", 6)
    assert g.outputs == ["pred", "L"] and g.args("L") == ["pred", "X"]


@pytest.mark.parametrize("make, message", [
    (lambda: sb.models.logistic_regression(0), "n_features=0; expected a positive int"),
    (lambda: sb.models.softmax_regression(3, "2"), "n_classes='2'"),
    (lambda: sb.models.residual_mlp(3, 4, -1, 2), "n_blocks=-1; expected an int >= 0"),
    (lambda: sb.models.residual_mlp(3, 4, 1, 2, activation="softmax"), "not a one-argument"),
    (lambda: sb.models.autoencoder([6]), "at least an input and a code size"),
])
def test_bad_arguments(make, message):
    with pytest.raises(sb.GraphError, match=message):
        make()
