"""Mixed precision on the torch backend (issue 15): ``precision="mixed"`` (float16 with
dynamic loss scaling, as torch.amp.GradScaler) and ``"bfloat16"`` (no scaling), float32
master parameters and optimizer state changed in place (codegen/torch_mixed.py)."""

import runpy
from pathlib import Path

import numpy as np
import pytest
from standalone import assert_ruff_clean, run_without_symbackprop

import symbackprop as sb
from symbackprop.cli import main

torch = pytest.importorskip("torch", reason="PyTorch is not installed (extra 'torch')")

ROOT = Path(__file__).resolve().parents[1]


def _mlp(sizes=(4, 8, 3)):
    return sb.models.mlp(list(sizes), activation="relu", loss="softmax_cross_entropy")


def _batch(n=16, d=4, k=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype(np.float32), rng.integers(0, k, n)


def _copy(tree):
    if isinstance(tree, dict):
        return {k: _copy(v) for k, v in tree.items()}
    return tree.clone() if isinstance(tree, torch.Tensor) else tree


def _same(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


def test_float32_masters_float16_step_and_scaler_state():
    step = sb.compile(_mlp(), optimizer="adam", lr=0.01, precision="mixed", backend="torch")
    m = step.module
    assert m.DTYPE is torch.float16 and m.MASTER is torch.float32 and m.LOSS_SCALE == 2.0**16
    params = step.init_params(0)
    state = step.init_state(params)
    assert {p.dtype for p in params.values()} == {torch.float32}
    assert {v.dtype for v in state["m"].values()} == {torch.float32}
    assert (state["scale"], state["good_steps"], state["skipped"]) == (2.0**16, 0, 0)
    X, y = _batch()
    loss, grads = m.value_and_grad(torch.as_tensor(X), *(params[k] for k in ("W1", "b1", "W2", "b2")),
                                   torch.as_tensor(y), scale=state["scale"])
    assert loss.dtype == torch.float32  # the loss in float32
    assert {g.dtype for g in grads.values()} == {torch.float16}
    before = _copy(params)
    loss = step.train_step(params, state, X=X, y=y)
    assert isinstance(loss, float) and np.isfinite(loss)
    assert {p.dtype for p in params.values()} == {torch.float32}
    assert not _same(params, before) and state["good_steps"] == 1 and state["t"] == 1


def test_overflow_skips_the_step_and_halves_the_scale():
    step = sb.compile(_mlp(), optimizer="adam", lr=0.01, precision="mixed", backend="torch")
    params = step.init_params(0)
    state = step.init_state(params)
    X, y = _batch()
    step.train_step(params, state, X=X, y=y)  # a good step first: Adam's state is not zero
    state["scale"] = 2.0**40  # the scaled gradients overflow float16 (largest 65504)
    p0, s0 = _copy(params), _copy(state)
    loss = step.train_step(params, state, X=X, y=y)
    assert np.isfinite(loss)  # the loss itself is fine: float32, not scaled
    assert _same(params, p0)  # masters untouched
    assert _same({k: state[k] for k in ("t", "m", "v")}, {k: s0[k] for k in ("t", "m", "v")})
    assert (state["scale"], state["good_steps"], state["skipped"]) == (2.0**39, 0, 1)


def test_scale_doubles_after_growth_interval_good_steps():
    k = 3
    step = sb.compile(_mlp(), optimizer="sgd", lr=0.1, precision="mixed", backend="torch",
                      growth_interval=k)
    assert step.module.GROWTH_INTERVAL == k
    params = step.init_params(0)
    state = step.init_state(params)
    X, y = _batch()
    for i in range(1, k):
        step.train_step(params, state, X=X, y=y)
        assert (state["scale"], state["good_steps"]) == (2.0**16, i)
    step.train_step(params, state, X=X, y=y)
    assert (state["scale"], state["good_steps"], state["skipped"]) == (2.0**17, 0, 0)


def test_nan_loss_raises_and_changes_nothing():
    step = sb.compile(_mlp(), optimizer="momentum", precision="mixed", backend="torch")
    params = step.init_params(0)
    state = step.init_state(params)
    X, y = _batch()
    X[0, 0] = np.nan
    p0, s0 = _copy(params), _copy(state)
    with pytest.raises(FloatingPointError, match="the loss is nan"):
        step.train_step(params, state, X=X, y=y)
    assert _same(params, p0) and _same(state, s0)


def test_first_step_agrees_with_numpy_mixed_step():
    """The loss and the scaled float16 gradients of one step from the same float32
    masters, against NumPy's mixed step (an independent code path: NumPy's planned,
    in-place code). Both round every intermediate to float16, but the order of the sums
    inside a matmul differs (NumPy's and torch's kernels block them differently), so a
    gradient entry may land on the neighbouring float16: they must agree to one float16
    ulp of the largest entry of that gradient (its spacing there, 2**-10 relative), and
    the float32 loss to float16's precision (it is computed from float16 logits)."""
    g = _mlp((6, 16, 4))
    X, y = _batch(32, 6, 4, seed=1)
    ref = sb.compile(g, optimizer="adam", lr=0.01, precision="mixed")
    params = ref.init_params(0)
    state = ref.init_state(params)
    loss_np, _, grads_np = ref.module.scaled_grads(params, state, X, y, state["scale"])
    grads_np = {k: v.copy() for k, v in grads_np.items()}
    step = sb.compile(g, optimizer="adam", lr=0.01, precision="mixed", backend="torch")
    tparams = {k: torch.as_tensor(np.asarray(v, np.float32)) for k, v in params.items()}
    loss_t, grads_t = step.module.value_and_grad(
        torch.as_tensor(X), *(tparams[k] for k in ("W1", "b1", "W2", "b2")),
        torch.as_tensor(y), scale=2.0**16)
    assert abs(float(loss_t) - float(loss_np)) <= 2**-10 * abs(float(loss_np))
    for name, gn in grads_np.items():
        gt = grads_t[name].numpy()
        assert gt.dtype == np.float16 and gn.dtype == np.float16
        ulp = np.spacing(np.abs(gn).max())
        assert np.abs(gt.astype(np.float32) - gn.astype(np.float32)).max() <= ulp, name
    # and the updates agree: one Adam step of the masters from these gradients
    ref.train_step(params, state, X=X, y=y)
    tstate = step.init_state(tparams)
    step.train_step(tparams, tstate, X=X, y=y)
    for name in params:
        np.testing.assert_allclose(tparams[name].numpy(), params[name], atol=2e-5)


def test_bfloat16_no_scaler_and_trains():
    step = sb.compile(_mlp(), optimizer="adam", lr=0.02, precision="bfloat16", backend="torch")
    assert step.module.DTYPE is torch.bfloat16 and not hasattr(step.module, "LOSS_SCALE")
    params = step.init_params(0)
    state = step.init_state(params)
    assert set(state) == {"t", "m", "v"}  # no loss scaler: bfloat16 has float32's range
    X, y = _batch(64)
    first = step.train_step(params, state, X=X, y=y)
    for _ in range(60):
        last = step.train_step(params, state, X=X, y=y)
    assert {p.dtype for p in params.values()} == {torch.float32}
    assert last < 0.7 * first, (first, last)
    counts = step.underflow(params, state, X=X, y=y)
    assert set(counts) == {"W1", "b1", "W2", "b2"} and counts["W1"][0] == 32
    assert all(c[2] == c[3] for c in counts.values())  # no scale: the same dtype twice


def test_underflow_counts_like_numpy():
    step = sb.compile(_mlp(), optimizer="sgd", precision="mixed", backend="torch")
    params = step.init_params(0)
    state = step.init_state(params)
    X, y = _batch()
    small = {k: v * 1e-3 for k, v in params.items()}  # tiny gradients: float16 flushes some
    counts = step.underflow(small, state, X=X * 1e-3, y=y)
    assert set(counts) == {"W1", "b1", "W2", "b2"}
    entries, _, plain, scaled = counts["W1"]
    assert entries == 32 and plain > 0 and scaled <= plain
    assert all(isinstance(c, int) for t in counts.values() for c in t)


def test_source_precisions_and_refusals():
    g = _mlp()
    src = sb.train_step(g, optimizer="sgd", precision="mixed", backend="torch")
    assert "DTYPE = torch.float16" in src and "MASTER = torch.float32" in src
    assert "dtype=MASTER, device=device)  # dL/dL = 1, times the loss scale" in src
    src = sb.train_step(g, optimizer="sgd", precision="bfloat16", backend="torch")
    assert "DTYPE = torch.bfloat16" in src and "LOSS_SCALE" not in src
    with pytest.raises(TypeError, match="precision='mixed' without optimizer"):
        sb.compile(g, precision="mixed", backend="torch")
    with pytest.raises(ValueError, match=r"bfloat16 \(jax, torch\)"):
        sb.train_step(g, precision="bfloat16")  # NumPy has none


def test_generated_mixed_modules_pass_ruff(tmp_path):
    g = _mlp()
    files = []
    for precision in ("mixed", "bfloat16"):
        for opt in ("sgd", "momentum", "adam"):
            files.append((f"{precision}_{opt}.py", sb.train_step(g, optimizer=opt,
                                                                 precision=precision,
                                                                 backend="torch")))
        files.append((f"{precision}_script.py", sb.training_script(
            g, optimizer="adam", precision=precision, backend="torch")))
    for fname, src in files:
        (tmp_path / fname).write_text(src)
    assert_ruff_clean(tmp_path, *[f for f, _ in files])


def test_cli_train_script_mixed_on_torch_trains_and_saves_the_scaler(tmp_path):
    """train-script --backend torch --precision mixed: a standalone program that trains
    in float16 with float32 masters and saves the loss scaler's state with Adam's."""
    out = tmp_path / "train.py"
    assert main(["train-script", "mlp:4-8-3", "--loss", "softmax_cross_entropy", "--backend",
                 "torch", "--precision", "mixed", "--optimizer", "adam", "--lr", "0.01",
                 "--epochs", "3", "--batch-size", "16", "-o", str(out)]) == 0
    text = out.read_text()
    assert "DTYPE = torch.float16" in text and "_scaled_update" in text
    X, y = _batch(64)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    res = run_without_symbackprop(tmp_path, """
        import runpy
        sys.argv = ["train.py", "--data", "d.npz", "--device", "cpu", "--out", "p.pt"]
        try:
            runpy.run_path("train.py", run_name="__main__")
        except SystemExit as e:
            assert e.code == 0, e.code
        import torch
        saved = torch.load("p.pt", weights_only=True)
        assert {p.dtype for p in saved["params"].values()} == {torch.float32}
        print("scale", saved["state"]["scale"], saved["state"]["t"])
    """)
    assert res.returncode == 0, res.stderr
    assert "scale 65536.0 12" in res.stdout, res.stdout
    lines = [ln for ln in res.stdout.splitlines() if "float16 gradients:" in ln]
    assert len(lines) == 3 and "with scale 65536;" in lines[-1], res.stdout


def _digits_step(precision):
    run = runpy.run_path(str(ROOT / "examples" / "digits" / "run.py"))
    X_train, X_test, y_train, y_test = run["digits_split"]()
    g = sb.models.mlp(run["SIZES"], activation="relu", loss="softmax_cross_entropy")
    step = sb.compile(g, of="L", optimizer=run["OPTIMIZER"], lr=run["LR"], precision=precision,
                      backend="torch")
    params = step.init_params(run["SEED"])
    state = step.init_state(params)
    Xtr, ytr = torch.as_tensor(X_train, dtype=torch.float32), torch.as_tensor(y_train)
    gen = torch.Generator().manual_seed(run["SEED"])
    for _ in range(run["EPOCHS"]):
        order = torch.randperm(len(Xtr), generator=gen)
        for i in range(0, len(order), run["BATCH_SIZE"]):
            rows = order[i:i + run["BATCH_SIZE"]]
            step.train_step(params, state, X=Xtr[rows], y=ytr[rows])
    out = step.forward(X=torch.as_tensor(X_test, dtype=torch.float32), y=torch.as_tensor(y_test),
                       **params)
    acc = float((out["logits"].argmax(dim=1).numpy() == y_test).mean())
    return acc, state


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["mixed", "bfloat16"])
def test_digits_mixed_on_torch_reach_97_percent(precision):
    acc, state = _digits_step(precision)
    assert acc >= 0.97, (precision, acc, state.get("scale"))


def test_mixed_with_batch_norm_takes_the_running_statistics():
    """No longer refused: the step takes the running statistics, float32, updated in
    place (tests/test_mixed_bn.py checks the numbers)."""
    g = sb.models.cnn(input_shape=(1, 8, 8), channels=(4,), hidden=(8,), classes=3,
                      batch_norm=True)
    for precision in ("mixed", "bfloat16"):
        src = sb.train_step(g, optimizer="sgd", precision=precision, backend="torch")
        assert "def train_step(params, state, X, y, lr=LR, running=None):" in src
        assert "'bn1.mean': torch.zeros(4, dtype=MASTER, device=device)" in src
