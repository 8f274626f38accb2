"""The generated training step: optimizers checked against steps computed by hand."""

from __future__ import annotations

import ast
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import symbackprop as sb
from symbackprop.codegen.init import plan_init
from symbackprop.codegen.optimizers import OPTIMIZERS

RUFF = Path(sys.executable).with_name("ruff")


def tiny():
    """L = (w*x - y)**2: at w = 2, x = 3, y = 10, L = 16 and dL/dw = 2*(6 - 10)*3 = -24."""
    return sb.parse("L = (w*x - y)**2", params=["w"])


def steps(optimizer, n, **hyper):
    step = sb.compile(tiny(), optimizer=optimizer, **hyper)
    params = {"w": np.array(2.0)}
    state = step.init_state(params)
    losses = [step.train_step(params, state, x=3.0, y=10.0) for _ in range(n)]
    return float(params["w"]), state, losses


# -- each optimizer against a hand-computed step ----------------------------------------
def test_sgd_step_by_hand():
    w, state, losses = steps("sgd", 1, lr=0.1)
    assert losses == [16.0]
    assert w == pytest.approx(2 - 0.1 * -24)  # 4.4
    assert w == pytest.approx(4.4, abs=1e-15)
    assert state == {}


def test_momentum_two_steps_by_hand():
    # step 1: v = 0.9*0 + (-24) = -24, w = 2 - 0.1*(-24) = 4.4
    # step 2: dL/dw = 2*(4.4*3 - 10)*3 = 19.2, v = 0.9*(-24) + 19.2 = -2.4, w = 4.4 + 0.24
    w, state, losses = steps("momentum", 2, lr=0.1, momentum=0.9)
    assert losses[0] == 16.0
    assert losses[1] == pytest.approx((4.4 * 3 - 10) ** 2)  # 10.24
    assert float(state["v"]["w"]) == pytest.approx(-2.4)
    assert w == pytest.approx(4.64)


def test_adam_two_steps_by_hand():
    lr, b1, b2, eps = 0.1, 0.9, 0.999, 1e-8
    # step 1: g = -24, m = 0.1*(-24) = -2.4, v = 0.001*576 = 0.576,
    # m_hat = -2.4/0.1 = -24, v_hat = 0.576/0.001 = 576, w = 2 - 0.1*(-24)/(24 + eps)
    w1 = 2 - 0.1 * (-24) / (math.sqrt(576) + eps)
    g2 = 2 * (w1 * 3 - 10) * 3  # about -22.2
    m2 = 0.9 * -2.4 + 0.1 * g2
    v2 = 0.999 * 0.576 + 0.001 * g2 ** 2
    w2 = w1 - lr * (m2 / (1 - 0.9 ** 2)) / (math.sqrt(v2 / (1 - 0.999 ** 2)) + eps)
    assert w1 == pytest.approx(2.1) and g2 == pytest.approx(-22.2, abs=1e-6)
    assert w2 == pytest.approx(2.19972, abs=1e-5)

    w, state, _ = steps("adam", 2, lr=lr, beta1=b1, beta2=b2, eps=eps)
    assert state["t"] == 2
    assert float(state["m"]["w"]) == pytest.approx(m2, rel=1e-12)
    assert float(state["v"]["w"]) == pytest.approx(v2, rel=1e-12)
    assert w == pytest.approx(w2, rel=1e-12)


def test_default_hyper_parameters():
    assert OPTIMIZERS["adam"].hyper == {"lr": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
    assert OPTIMIZERS["momentum"].hyper == {"lr": 0.01, "momentum": 0.9}
    src = sb.train_step(tiny(), optimizer="adam")
    assert "LR = 0.001\nBETA1 = 0.9\nBETA2 = 0.999\nEPS = 1e-08\n" in src


def test_matrix_step_updates_in_place_and_matches_sgd_rule():
    g = sb.models.softmax_regression(3, 2)
    step = sb.compile(g, optimizer="sgd", lr=0.5)
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(5, 3)), np.array([0, 1, 1, 0, 1])
    params = step.init_params(1)
    before = {k: v.copy() for k, v in params.items()}
    ids = {k: id(v) for k, v in params.items()}
    _, grads = step.value_and_grad(X=X, y=y, **before)
    step.train_step(params, step.init_state(params), X=X, y=y)
    assert {k: id(v) for k, v in params.items()} == ids  # the same arrays, updated in place
    for k in params:
        np.testing.assert_allclose(params[k], before[k] - 0.5 * grads[k], rtol=1e-14)


def test_wrt_subset_leaves_other_parameters_alone():
    g = sb.models.softmax_regression(3, 2)
    step = sb.compile(g, wrt=["W"], optimizer="momentum", lr=0.1)
    params = step.init_params(0)
    b = params["b"].copy()
    rng = np.random.default_rng(0)
    step.train_step(params, step.init_state(params), X=rng.normal(size=(4, 3)), y=[0, 1, 0, 1])
    np.testing.assert_array_equal(params["b"], b)


def test_nan_raises_before_any_change():
    step = sb.compile(tiny(), optimizer="adam", lr=0.1)
    params = {"w": np.array(2.0)}
    state = step.init_state(params)
    with pytest.raises(FloatingPointError, match="the loss is nan"):
        step.train_step(params, state, x=3.0, y=np.nan)
    assert float(params["w"]) == 2.0 and state["t"] == 0
    with pytest.raises(FloatingPointError, match="gradient dL/dw"):
        step.module.check_finite(1.0, {"w": np.array([1.0, np.inf])})


# -- the generated source -----------------------------------------------------------------
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_source_keeps_gradient_and_optimizer_separate(optimizer, tmp_path):
    src = sb.train_step(sb.models.mlp([4, 3, 2]), optimizer=optimizer)
    assert src == sb.train_step(sb.models.mlp([4, 3, 2]), optimizer=optimizer)  # byte-stable
    tree = ast.parse(src)
    defs = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef)}
    assert {"forward", "value_and_grad", "init_params", "init_state", "update",
            "train_step"} <= set(defs)
    def calls(name, seen=()):  # the module's functions that ``name`` calls, transitively
        direct = {n.func.id for n in ast.walk(defs[name]) if isinstance(n, ast.Call)
                  and isinstance(n.func, ast.Name) and n.func.id in defs}
        return direct | {c for d in direct - set(seen) for c in calls(d, (*seen, *direct))}

    # optimized: the planned gradient function, then the optimizer's rule on flat buffers
    assert {"loss_and_grads_into", "_update_flat"} <= calls("train_step")
    assert "_update_flat" not in calls("loss_and_grads_into")
    assert "loss_and_grads_into" not in calls("_update_flat")
    plain = ast.parse(sb.train_step(sb.models.mlp([4, 3, 2]), optimizer=optimizer,
                                    optimize=False))
    defs = {f.name: f for f in plain.body if isinstance(f, ast.FunctionDef)}
    assert {"value_and_grad", "update"} <= calls("train_step")
    update_calls = {n.func.id for n in ast.walk(defs["update"]) if isinstance(n, ast.Call)
                    and isinstance(n.func, ast.Name)}
    assert "value_and_grad" not in update_calls
    imports = {a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    # NumPy, and math for the finiteness screen of the loss
    assert imports == {"numpy", "math"} and not any(isinstance(n, ast.ImportFrom)
                                                    for n in tree.body)
    assert ast.get_docstring(tree).startswith("Training step for the mlp_4_3_2 network")
    path = tmp_path / f"step_{optimizer}.py"
    path.write_text(src)
    r = subprocess.run([str(RUFF), "check", "--no-cache", str(path)], capture_output=True,
                       text=True, check=False)
    assert r.returncode == 0, r.stdout


def test_compile_passes_arrays_by_node_name():
    g = sb.Graph("odd")
    x = g.input("class", shape=("N", 2))
    w = g.param("W", shape=(2, 1))
    g.output("L", sb.mean((x @ w) ** 2))
    step = sb.compile(g, optimizer="sgd", lr=0.1)
    params = {"W": np.ones((2, 1))}
    loss = step.train_step(params, step.init_state(params), **{"class": np.ones((3, 2))})
    assert loss == 4.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="'rmsprop' is not one of sgd, momentum, adam"):
        sb.train_step(tiny(), optimizer="rmsprop")
    with pytest.raises(ValueError, match="no hyper-parameter 'beta1'; it takes lr"):
        sb.train_step(tiny(), optimizer="sgd", beta1=0.9)
    with pytest.raises(ValueError, match="lr=-1; expected a number > 0"):
        sb.compile(tiny(), optimizer="sgd", lr=-1)
    with pytest.raises(ValueError, match="momentum=1.5; expected a number in"):
        sb.train_step(tiny(), optimizer="momentum", momentum=1.5)
    with pytest.raises(TypeError, match="without optimizer="):
        sb.compile(tiny(), lr=0.1)
    with pytest.raises(sb.CodegenError, match="no parameters"):
        sb.train_step(sb.parse("L = (w*x - y)**2"))
    step = sb.compile(tiny(), optimizer="sgd")
    with pytest.raises(sb.GraphError, match="missing y"):
        step.train_step({"w": np.array(1.0)}, {}, x=1.0)


# -- initialisation ----------------------------------------------------------------------
def test_init_asks_the_consuming_op_for_the_fans(monkeypatch):
    """An op that declares fans(arg_index, arg_shapes, attrs) decides a weight's fans (a
    convolution's kernel will); None means "not a weight of mine", and the weight then
    feeds no layer."""
    g = sb.models.mlp([4, 3, 2])
    matmul = g.opdef(g.consumers("W1")[0][0])
    asked = []

    def fans(arg_index, arg_shapes, attrs):
        asked.append((arg_index, [tuple(s) for s in arg_shapes]))
        return (7, 9) if arg_shapes[arg_index] == (3, 2) else None
    monkeypatch.setattr(matmul, "fans", fans, raising=False)
    plan = {i.name: i for i in plan_init(g)}
    assert (plan["W2"].kind, plan["W2"].fan_in, plan["W2"].fan_out) == ("xavier", 7, 9)
    # W1 (relu's layer, He by default) is no layer's weight now
    assert (plan["W1"].kind, plan["W1"].note) == ("xavier", "feeds no activation")
    assert (1, [("N", 4), (4, 3)]) in asked


def test_init_he_for_relu_xavier_otherwise():
    plan = {i.name: i for i in plan_init(sb.models.mlp([400, 300, 10]))}
    assert (plan["W1"].kind, plan["W1"].fan_in, plan["W1"].gain2) == ("he", 400, 2.0)
    assert (plan["W2"].kind, plan["W2"].fan_in, plan["W2"].fan_out) == ("xavier", 300, 10)
    assert plan["b1"].kind == plan["b2"].kind == "zeros"
    tanh = {i.name: i.kind for i in plan_init(sb.models.mlp([4, 3, 2], activation="tanh"))}
    assert tanh["W1"] == "xavier"
    res = {i.name: i.kind for i in plan_init(sb.models.residual_mlp(4, 8, 2, 3))}
    # a block's layer, act(h) @ Wk + bk, is scaled and added to the skip path: no activation
    assert [res[f"W{k}"] for k in range(1, 5)] == ["he", "xavier", "xavier", "xavier"]

    step = sb.compile(sb.models.mlp([400, 300, 10]), optimizer="sgd")
    p = step.init_params(0)
    assert p["W1"].std() == pytest.approx(math.sqrt(2 / 400), rel=0.02)
    bound = math.sqrt(6 / (300 + 10))
    assert p["W2"].max() <= bound and p["W2"].min() >= -bound
    assert p["W2"].std() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    assert not p["b1"].any() and not p["b2"].any()
    q = step.init_params(0)
    assert all(np.array_equal(p[k], q[k]) for k in p)  # the same seed, the same values


def test_finite_screen_never_stops_a_finite_step():
    """train_step screens the loss and the gradients with one sum of squares; a square
    that overflows trips the screen, the exact check finds nothing, and the step goes on.
    An infinite gradient beside a finite loss still stops it, changing nothing."""
    step = sb.compile(sb.parse("L = w*x", params=["w"]), optimizer="momentum", lr=0.5)
    params = {"w": np.array(2.0)}
    # dL/dw = x = 1e200: finite, but its square overflows
    with np.errstate(over="ignore"):  # the screen's square overflows: that is the point
        assert step.train_step(params, step.init_state(params), x=1e200) == 2e200
    assert float(params["w"]) == 2.0 - 0.5 * 1e200
    g = sb.parse("L = sqrt(w) * x", params=["w"])  # dL/dw = x / (2 sqrt(w)): inf at w = 0
    step = sb.compile(g, optimizer="sgd", lr=0.5)
    params = {"w": np.array(0.0)}
    with np.errstate(divide="ignore"), pytest.raises(FloatingPointError, match="dL/dw has 1"):
        step.train_step(params, step.init_state(params), x=1.0)
    assert float(params["w"]) == 0.0
