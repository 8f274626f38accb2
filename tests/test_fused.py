"""The fused update (fuse_update=True): each parameter's update applied in the backward
sweep as soon as its gradient is final. The same parameters and optimizer state, bit for
bit, as the default step; less memory with checkpointing; an explicit contract on nan/inf."""

from __future__ import annotations

import re
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from standalone import assert_ruff_clean

import symbackprop as sb
from symbackprop.cli import main
from symbackprop.testing import random_graphs, random_inputs


def _train(g, fuse, k=3, N=16, data=None, **kw):
    """Losses, parameters and state after k steps of a fresh compiled step."""
    step = sb.compile(g, fuse_update=fuse, **kw)
    params = step.init_params(0)
    state = step.init_state(params)
    rng = np.random.default_rng(1)
    if data is None:
        X = rng.normal(size=(N, g["X"].shape[1]))
        data = {"X": X, "y": rng.integers(0, g["logits"].shape[1], N)}
    losses = [step.train_step(params, state, **data) for _ in range(k)]
    return losses, params, state, step.source


def _same_state(s0, s1) -> bool:
    for k in s0:
        if isinstance(s0[k], dict):
            if not all(np.array_equal(s0[k][n], s1[k][n]) for n in s0[k]):
                return False
        elif s0[k] != s1[k]:
            return False
    return sorted(s0) == sorted(s1)


CASES = [
    # 128 wide, float64: the biases ride in the products (a folded layer is one part)
    (sb.models.mlp([128, 128, 128, 128, 10]), {"optimizer": "sgd", "lr": 0.05}),
    (sb.models.mlp([128, 128, 128, 128, 10]), {"optimizer": "momentum"}),
    (sb.models.mlp([128, 128, 128, 128, 10]), {"optimizer": "adam", "lr": 0.01}),
    (sb.models.mlp([32, 32, 32, 32, 10]), {"optimizer": "momentum", "dtype": "float32"}),
    (sb.models.mlp([32, 32, 32, 32, 10]), {"optimizer": "adam", "dtype": "float32"}),
    (sb.models.mlp([16] * 21 + [4], activation="tanh"), {"optimizer": "sgd", "lr": 0.1}),
    (sb.models.mlp([16] * 21 + [4], activation="tanh"), {"optimizer": "adam"}),
    (sb.models.residual_mlp(16, 16, 4, 4), {"optimizer": "adam"}),
]


@pytest.mark.parametrize("checkpoint", ["none", "sqrt", ["h2"]])
@pytest.mark.parametrize("g, kw", CASES, ids=["folded-sgd", "folded-momentum", "folded-adam",
                                              "f32-momentum", "f32-adam", "tanh20-sgd",
                                              "tanh20-adam", "residual-adam"])
def test_bit_identical_to_the_default_step(g, kw, checkpoint):
    if checkpoint == ["h2"] and "h2" not in g.nx:
        pytest.skip("no node h2 in this network")
    l0, p0, s0, src0 = _train(g, False, checkpoint=checkpoint, **kw)
    l1, p1, s1, src1 = _train(g, True, checkpoint=checkpoint, **kw)
    assert "def loss_and_update" in src1 and "_fused(" not in src0
    assert l0 == l1
    assert all(np.array_equal(p0[k], p1[k]) for k in p0)
    assert _same_state(s0, s1)


def test_batch_norm_and_dropout():
    g = sb.models.cnn(channels=(4, 4), hidden=(8, 8), batch_norm=True, dropout=0.25)
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(6, 1, 8, 8)), rng.integers(0, 10, 6)
    out = []
    for fuse in (False, True):
        step = sb.compile(g, checkpoint="sqrt", optimizer="adam", fuse_update=fuse)
        params = step.init_params(0)
        state, running, gen = step.init_state(params), step.init_running(), \
            np.random.default_rng(5)
        losses = [step.train_step(params, state, X=X, y=y, running=running, rng=gen)
                  for _ in range(3)]
        out.append((losses, params, state, running))
    (l0, p0, s0, r0), (l1, p1, s1, r1) = out
    assert l0 == l1
    assert all(np.array_equal(p0[k], p1[k]) for k in p0)
    assert _same_state(s0, s1)
    assert all(np.array_equal(r0[k], r1[k]) for k in r0)


@settings(max_examples=40, deadline=None)
@given(random_graphs(min_ops=3, max_ops=10), st.sampled_from(["sgd", "momentum", "adam"]),
       st.sampled_from(["none", "sqrt"]))
def test_random_dags(g, optimizer, checkpoint):
    """Random networks: parameters read by several nodes, gradients shared or read again
    later, transposed products: the parts are updated where nothing reads them again."""
    arrays = random_inputs(g, {"N": 5})
    out = []
    for fuse in (False, True):
        step = sb.compile(g, of="L", optimizer=optimizer, lr=0.01, checkpoint=checkpoint,
                          fuse_update=fuse)
        params = {n: np.array(arrays[n], dtype=float) for n in g.nodes("param")}
        state = step.init_state(params)
        data = {n: arrays[n] for n in step.inputs}
        try:
            losses = [step.train_step(params, state, **data) for _ in range(2)]
        except FloatingPointError as e:  # both must refuse alike
            losses = [type(e).__name__, str(e).split(":")[0]]
        out.append((losses, params, state))
    (l0, p0, s0), (l1, p1, s1) = out
    if isinstance(l0[0], str):  # the default step raises before changing anything
        return
    assert l0 == l1
    assert all(np.array_equal(p0[k], p1[k]) for k in p0)
    assert _same_state(s0, s1)


def test_update_after_the_last_read():
    """Each part's update comes after its gradient's step and after the last statement
    that reads its parameters (the layer's dh = dz @ W.T, a recomputed layer)."""
    src = sb.train_step(sb.models.mlp([8, 8, 8, 8, 3]), optimizer="sgd", checkpoint="sqrt",
                        fuse_update=True)
    body = src[src.index("def loss_and_update"):src.index("\ndef ", src.index("def loss_and_update") + 1)]
    lines = body.splitlines()
    for w in ("W1", "W2", "W3", "W4", "b1", "b2", "b3", "b4"):
        at = next(i for i, ln in enumerate(lines) if ln.strip().startswith(f"_fused(flat, '{w}'"))
        reads = [i for i, ln in enumerate(lines)
                 if re.search(rf"\b{w}\b", ln.split("#")[0]) and "_fused(" not in ln
                 and not ln.strip().startswith(("def ", '"""'))]
        assert max(reads) < at, (w, lines[max(reads)])
        grad = next(i for i, ln in enumerate(lines) if f"out=d{w})" in ln)
        assert grad < at
    check = next(i for i, ln in enumerate(lines) if "if not math.isfinite(L)" in ln)
    assert check < min(i for i, ln in enumerate(lines) if "_fused(" in ln)


def test_each_update_says_which_gradient_is_final(tmp_path):
    g = sb.models.mlp([128, 128, 128, 10])
    src = sb.train_step(g, optimizer="adam", checkpoint="sqrt", fuse_update=True)
    calls = [ln.strip() for ln in src.splitlines() if ln.strip().startswith("_fused(")]
    # W1, b1 apart (layer 1 reads X: no fold); [W2; b2] one part; W3, b3 apart (128 -> 10)
    assert len(calls) == 5
    assert any("_fused(flat, ('W2', 'b2'), dW2_db2, state, lr)  # dL/dW2, dL/db2 final" in c
               for c in calls)
    for c in calls:
        assert re.search(r"# (dL/d\w+, )*dL/d\w+ final, .* read no more: update now$", c), c
    assert "state[\"t\"] += 1  # the loss is finite: this step updates" in src
    assert "def _update_flat" not in src  # no flat gradient buffer to update from
    (tmp_path / "step.py").write_text(src)
    assert_ruff_clean(tmp_path, "step.py")


def test_default_code_is_unchanged():
    g = sb.models.mlp([16, 8, 4])
    assert sb.train_step(g, fuse_update=False) == sb.train_step(g)


def _peak(step, params, state, data) -> int:
    step.train_step(params, state, **data)  # flat buffers and parts made
    step.module._WORKSPACES.clear()
    tracemalloc.start()
    try:
        step.train_step(params, state, **data)
        tracemalloc.reset_peak()
        step.train_step(params, state, **data)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_less_memory_with_checkpointing():
    """Gradients no longer pile up to the end: with checkpoint="sqrt" the fused step's peak
    falls well below the default step's, which keeps every gradient in one flat buffer."""
    g = sb.models.mlp([96] * 31 + [10])
    rng = np.random.default_rng(0)
    data = {"X": rng.normal(size=(64, 96)), "y": rng.integers(0, 10, 64)}
    peaks = {}
    for ck in ("none", "sqrt"):
        for fuse in (False, True):
            step = sb.compile(g, optimizer="sgd", checkpoint=ck, fuse_update=fuse)
            params = step.init_params(0)
            peaks[ck, fuse] = _peak(step, params, step.init_state(params), data)
    assert peaks["sqrt", False] > 0.8 * peaks["none", False], peaks  # the gradients' floor
    assert peaks["sqrt", True] < 0.45 * peaks["none", False], peaks
    assert peaks["sqrt", True] < 0.5 * peaks["none", True], peaks


# -- nan and inf -------------------------------------------------------------------------------

def _sqrt_graph():
    """L = (w*x - y)**2 + sqrt(v): at v = 0 the loss is finite, dL/dv infinite."""
    return sb.parse("L = (w*x - y)**2 + sqrt(v)", params=["w", "v"])


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_a_nonfinite_gradient_skips_its_parameter_only(optimizer):
    step = sb.compile(_sqrt_graph(), optimizer=optimizer, lr=0.1, fuse_update=True)
    params = step.init_params(0)
    params["w"][...], params["v"][...] = 2.0, 0.0
    state = step.init_state(params)
    with np.errstate(divide="ignore"), pytest.raises(FloatingPointError) as e:
        step.train_step(params, state, x=3.0, y=10.0)
    assert e.value.skipped == ["v"] and e.value.updated == ["w"] and e.value.loss == 16.0
    assert str(e.value).startswith("partial step (fused update): the gradient of v holds nan "
                                   "or inf and was not applied; the update of w in the same "
                                   "backward sweep stands")
    assert float(params["v"]) == 0.0  # not updated
    if optimizer == "sgd":  # dL/dw = 2 (w x - y) x = -24: w <- 2 + 0.1 * 24
        assert float(params["w"]) == pytest.approx(4.4)
    for kind in ("m", "v"):
        if kind in state:
            assert float(state[kind]["v"]) == 0.0
    if optimizer == "adam":
        assert state["t"] == 1  # the step counted: w's update used t = 1


def test_the_default_step_changes_nothing_on_the_same_gradient():
    step = sb.compile(_sqrt_graph(), optimizer="sgd", lr=0.1)
    params = step.init_params(0)
    params["w"][...], params["v"][...] = 2.0, 0.0
    with np.errstate(divide="ignore"), pytest.raises(FloatingPointError, match="dL/dv"):
        step.train_step(params, step.init_state(params), x=3.0, y=10.0)
    assert float(params["w"]) == 2.0


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_nonfinite_loss_changes_nothing(optimizer):
    g = sb.models.mlp([8, 8, 8, 3])
    step = sb.compile(g, optimizer=optimizer, checkpoint="sqrt", fuse_update=True)
    params = step.init_params(0)
    state = step.init_state(params)
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(4, 8)), rng.integers(0, 3, 4)
    step.train_step(params, state, X=X, y=y)
    X[0, 0] = np.nan
    before = {k: v.copy() for k, v in params.items()}
    saved = {k: ({n: a.copy() for n, a in v.items()} if isinstance(v, dict) else v)
             for k, v in state.items()}
    with np.errstate(invalid="ignore"), pytest.raises(FloatingPointError, match="the loss is nan"):
        step.train_step(params, state, X=X, y=y)
    assert all(np.array_equal(before[k], params[k]) for k in params)
    assert _same_state(saved, state)  # Adam's t included


# -- refused -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, error, text", [
    ({"precision": "mixed"}, sb.CodegenError, "cannot go with precision='mixed'"),
    ({"optimize": False}, sb.CodegenError, "needs the memory-planned step"),
])
def test_refused(kw, error, text):
    with pytest.raises(error, match=text):
        sb.train_step(sb.models.mlp([4, 3, 2]), fuse_update=True, **kw)


def test_refused_elsewhere():
    g = sb.models.mlp([4, 3, 2])
    with pytest.raises(TypeError, match="without optimizer="):
        sb.compile(g, fuse_update=True)
    with pytest.raises(sb.CodegenError, match="cannot go with distributed='mpi'"):
        sb.training_script(g, fuse_update=True, distributed="mpi")
    with pytest.raises(sb.CodegenError, match="memory-planned step's"):
        sb.train_step(g, fuse_update=True, backend="array_api")


def test_cli(tmp_path, capsys):
    out = tmp_path / "train.py"
    assert main(["train-script", "mlp:16-16-16-16-4", "--checkpoint", "sqrt",
                 "--fuse-update", "-o", str(out)]) == 0
    text = out.read_text()
    assert "fuse_update=True" in text and "_fused(flat" in text
    assert_ruff_clean(tmp_path, "train.py")
    capsys.readouterr()
    assert main(["train-script", "mlp:16-16-4", "--fuse-update", "--precision", "mixed"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--fuse-update cannot go with --precision mixed" in err
    assert main(["train-script", "mlp:16-16-4", "--fuse-update", "--distributed", "mpi"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--fuse-update cannot go with --distributed mpi" in err


def test_script_trains_as_the_default_script(tmp_path):
    """A training script with fuse_update=True ends its run with the default script's
    checkpoint, bit for bit (a folded 128-wide layer, Adam, checkpoint="sqrt")."""
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    X = rng.normal(size=(96, 4))
    np.savez(tmp_path / "data.npz", X=X, y=(X[:, 0] > X[:, 1]).astype(int) + (X[:, 2] > 0))
    out, norms = [], []
    for fuse in (False, True):
        name = f"train_{int(fuse)}.py"
        (tmp_path / name).write_text(sb.training_script(
            sb.models.mlp([4, 128, 128, 3]), optimizer="adam", lr=0.01, epochs=3,
            batch_size=16, checkpoint="sqrt", fuse_update=fuse))
        r = subprocess.run([sys.executable, name, "--data", "data.npz", "--out",
                            f"ck{int(fuse)}.npz", "--log-grad-norms"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120, check=False)
        assert r.returncode == 0, r.stderr
        norms.append(re.findall(r"grad norms.*", r.stdout) or r.stdout)
        with np.load(tmp_path / f"ck{int(fuse)}.npz") as f:
            out.append({k: f[k] for k in f.files if k.startswith(("params/", "state/"))})
    assert sorted(out[0]) == sorted(out[1])
    assert all(out[0][k].tobytes() == out[1][k].tobytes() for k in out[0])
    assert norms[0] == norms[1]  # --log-grad-norms: its own value_and_grad, as by default
    assert_ruff_clean(tmp_path, "train_1.py")


def test_the_loss_is_checked_before_any_update_whatever_the_loss():
    """A loss whose gradient does not read its value (a mean squared error): the backward
    could start before the loss is computed; no part is updated before its check."""
    g = sb.models.mlp([6, 5, 5, 2], activation="tanh", loss="mse")
    src = sb.train_step(g, optimizer="momentum", checkpoint="sqrt", fuse_update=True)
    lines = src[src.index("def loss_and_update"):].splitlines()
    check = next(i for i, ln in enumerate(lines) if "if not math.isfinite(L)" in ln)
    assert check < min(i for i, ln in enumerate(lines) if ln.strip().startswith("_fused("))
    step = sb.compile(g, optimizer="momentum", fuse_update=True)
    params = step.init_params(0)
    state = step.init_state(params)
    before = {k: v.copy() for k, v in params.items()}
    y = np.zeros((3, 2))
    y[0, 0] = np.inf
    with np.errstate(invalid="ignore", over="ignore"), \
            pytest.raises(FloatingPointError, match="the loss is"):
        step.train_step(params, state, X=np.ones((3, 6)), y=y)
    assert all(np.array_equal(before[k], params[k]) for k in params)
    assert all(not v.any() for v in state["v"].values())
