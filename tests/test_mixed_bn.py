"""Mixed precision with batch norm and dropout (issue 15, point 3), on every backend that
has mixed precision (numpy, jax, torch), as ``torch.amp`` users expect:

* batch norm's statistics (the forward's mean and variance, the sums of its backward)
  are computed in float32, its running statistics are float32 and advance as the
  float32 step's;
* dropout draws the float32 step's masks for the same seed (or key);
* a step skipped on overflow leaves the parameters and the optimizer state untouched,
  while the forward pass it ran has advanced the running statistics and the generator
  (torch.amp's rule);
* the training scripts (numpy, jax) train a network with both in mixed precision.

The references are the float32 (numpy: float64) steps of the same network, given the
same parameters, data and seed; the float32 step's gradients are checked against central
differences elsewhere (tests/test_norm.py, tests/test_jax_stateful.py).
"""

from __future__ import annotations

import functools
import importlib.util
import re

import numpy as np
import pytest
from central import softmax_cross_entropy_grad
from mixed_steps import step_arrays, unscaled_grads
from standalone import assert_ruff_clean, run_script_without_symbackprop

import symbackprop as sb
from symbackprop.models import dense

NAMES = ["W1", "g1", "c1", "W2", "b2"]  # and b1, whose gradient is 0: batch norm removes it
BACKENDS = [b for b in ("numpy", "jax", "torch")
            if b == "numpy" or importlib.util.find_spec(b) is not None]
TOL = 1e-2  # float16: 11 bits of significand, rounded after every operation


def _net(n_in=12, hidden=16, classes=4, p=0.25):
    """``X @ W1 + b1``, batch norm with a learned scale ``1 + g1`` and shift ``c1``, relu,
    dropout, ``@ W2 + b2``, softmax cross-entropy."""
    g = sb.Graph("bn_dropout_mlp")
    X = g.input("X", shape=("N", n_in))
    z = dense(g, X, n_in, hidden, 1)
    gamma = g.param("g1", shape=(hidden,))
    beta = g.param("c1", shape=(hidden,))
    h = sb.relu(g.name(sb.batch_norm(z, axis=1), "bn1") * (gamma + 1.0) + beta)
    d = sb.dropout(h, p)
    logits = g.output("logits", dense(g, d, hidden, classes, 2))
    y = g.input("y", shape=("N",), dtype="int")
    g.output("L", sb.softmax_cross_entropy(logits, y))
    return g


def _batch(n=32, seed=0, n_in=12, classes=4, shift=3.0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, n_in)) * 2.0 + shift  # far from mean 0: the statistics matter
    return X.astype(np.float32), X[:, :classes].argmax(axis=1)


def _host(tree):
    """NumPy copies of a dict of arrays (NumPy, JAX or torch; JAX's step donates them)."""
    if isinstance(tree, dict):
        return {k: _host(v) for k, v in tree.items()}
    return np.asarray(tree).copy()


def _equal(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return np.array_equal(a, b)


def _rng(backend, seed):
    """A generator for the dropout masks, one the step draws from (NumPy, torch), or the
    seed itself (JAX: a key, nothing to advance)."""
    if backend == "numpy":
        return np.random.default_rng(seed)
    if backend == "torch":
        import torch

        return torch.Generator().manual_seed(seed)
    return seed


def _gen_state(rng):
    if isinstance(rng, np.random.Generator):
        return rng.bit_generator.state
    return rng.get_state().numpy().tobytes()


def _opt(state: dict) -> dict:
    return {k: v for k, v in state.items() if k not in ("scale", "good_steps", "skipped")}


@functools.cache
def _modules(backend, optimizer, lr):
    """The mixed and float32 training modules, made (and JAX's jitted) once per session."""
    g = _net()
    return tuple(sb.compile(g, optimizer=optimizer, lr=lr, backend=backend, **kw).module
                 for kw in ({"precision": "mixed"}, {"dtype": "float32"}))


class Pass:
    """One training-mode forward and backward pass of a backend's mixed step (gradients
    unscaled to float64) or of its float32 step, from the same float32 parameters."""

    def __init__(self, backend, optimizer="sgd", lr=0.05):
        self.backend = backend
        self.mixed, self.plain = _modules(backend, optimizer, lr)
        self.params = _host(self.mixed.init_params(0))


    def grads(self, mixed, X, y, running, rng, scale=2.0**10):
        """(loss, gradients as float64 NumPy, the running statistics after the pass)."""
        M = self.mixed if mixed else self.plain
        params = step_arrays(self.backend, self.params)
        X, y = (step_arrays(self.backend, {"X": X, "y": y}).values())
        if self.backend == "numpy" and mixed:
            state = M.init_state(params)
            loss, _, grads = M.scaled_grads(params, state, X, y, scale, running=running, rng=rng)
        else:
            extra = {"scale": scale} if mixed else {}
            out = M.value_and_grad(X=X, y=y, **params, running=running, rng=rng, **extra)
            loss, grads = out[0], out[1]
            if self.backend == "jax":
                running = out[2]
        unscale = scale if mixed else 1.0
        return (float(loss), {k: np.asarray(v, dtype=np.float64) / unscale
                              for k, v in _host(grads).items()}, _host(running))


# -- gradients: the mixed step's against the float32 step's, same masks ------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_gradients_equal_float32_within_float16_tolerance(backend):
    """Batch norm (its statistics in float32) and dropout (the float32 step's masks for the
    same seed): every gradient within float16's tolerance of the float32 step's, the
    running statistics float32 and equal to float32's to float16's rounding of the input;
    with another seed the masks differ and so do the gradients (the comparison can fail)."""
    run = Pass(backend)
    X, y = _batch()
    r16, r32 = (step_arrays(backend, run.mixed.init_running()),
                step_arrays(backend, run.plain.init_running()))
    assert {str(v.dtype) for v in r16.values()} <= {"float32", "torch.float32"}
    loss16, g16, run16 = run.grads(True, X, y, r16, _rng(backend, 5))
    loss32, g32, run32 = run.grads(False, X, y, r32, _rng(backend, 5))
    assert abs(loss16 - loss32) <= TOL * abs(loss32)
    for k in NAMES:
        err = np.abs(g16[k] - g32[k]).max() / np.abs(g32[k]).max()
        assert err <= TOL, (backend, k, err)
    assert np.abs(g16["b1"]).max() <= TOL * np.abs(g32["W1"]).max()
    for k in run32:
        assert run16[k].dtype == np.float32
        np.testing.assert_allclose(run16[k], run32[k], rtol=2e-3, atol=2e-3, err_msg=k)
    assert not np.allclose(run32["bn1.mean"], 0)  # the statistics moved
    _, other, _ = run.grads(False, X, y, step_arrays(backend, run.plain.init_running()),
                            _rng(backend, 6))
    assert max(np.abs(other[k] - g32[k]).max() / np.abs(g32[k]).max() for k in NAMES) > 0.1


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_norm_statistics_in_float32_where_float16_loses_them(backend):
    """Pre-activations spread by hundreds (z = 200 X[:, 0], X of spread 2): float16 holds
    them, but their squared deviations pass 65504, so a float16 variance would be inf (and
    batch norm's output 0); in float32 the normalized values, hence the gradients, are
    the float32 step's within float16's tolerance."""
    with np.errstate(over="ignore"):
        assert np.isinf(np.float16(400.0) * np.float16(400.0))
    run = Pass(backend)
    X, y = _batch(shift=0.0)
    run.params["W1"] = np.zeros_like(run.params["W1"])
    run.params["W1"][0] = 200.0
    _, g16, _ = run.grads(True, X, y, None, 0)
    _, g32, _ = run.grads(False, X, y, None, 0)
    for k in NAMES:
        assert np.isfinite(g16[k]).all(), k
        assert np.abs(g16[k] - g32[k]).max() <= TOL * np.abs(g32[k]).max(), k


# -- relu before batch norm: its gradient fused into relu's statement ---------------------
EPS = 1e-5
STEPS = [(b, f) for b in BACKENDS for f in (("planned", "value_and_grad") if b == "numpy"
                                               else ("value_and_grad",))]


def _relu_bn_net(n_in=12, hidden=16, classes=4):
    """``bn1 = batch_norm(relu(X @ W1 + b1))``, ``bn1 @ W2 + b2``, softmax cross-entropy."""
    g = sb.Graph("relu_bn_mlp")
    X = g.input("X", shape=("N", n_in))
    a = sb.relu(dense(g, X, n_in, hidden, 1))
    h = g.name(sb.batch_norm(a, axis=1), "bn1")
    logits = g.output("logits", dense(g, h, hidden, classes, 2))
    y = g.input("y", shape=("N",), dtype="int")
    g.output("L", sb.softmax_cross_entropy(logits, y))
    return g


@functools.cache
def _relu_bn_module(backend):
    return sb.compile(_relu_bn_net(), optimizer="sgd", lr=0.05, backend=backend,
                      precision="mixed").module


def _relu_bn_grads64(params: dict, X: np.ndarray, y: np.ndarray):
    """The network's gradients by hand in float64 (batch norm in training mode: the
    batch's statistics, over the rows), from ``a = relu(X @ W1 + b1)`` as float16 computes
    it. Returns (a, gradients)."""
    p16 = {k: np.asarray(v).astype(np.float16) for k, v in params.items()}
    a16 = np.maximum(X.astype(np.float16) @ p16["W1"] + p16["b1"], np.float16(0))
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    a = a16.astype(np.float64)
    ac = a - a.mean(axis=0)
    rstd = 1 / np.sqrt((ac * ac).mean(axis=0) + EPS)
    h = ac * rstd
    logits = h @ p["W2"] + p["b2"]
    dlogits = softmax_cross_entropy_grad(logits, y)
    dh = dlogits @ p["W2"].T
    dz = rstd * (dh - dh.mean(axis=0) - h * (dh * h).mean(axis=0)) * (a > 0)
    Xd = X.astype(np.float16).astype(np.float64)
    return a16, {"W1": Xd.T @ dz, "b1": dz.sum(axis=0), "W2": h.T @ dlogits,
                 "b2": dlogits.sum(axis=0)}


@pytest.mark.parametrize(("backend", "step"), STEPS)
def test_relu_then_batch_norm_of_wide_columns_backward_in_float32(backend, step):
    """``batch_norm(relu(z))``: batch norm's gradient is fused into relu's statement, which
    reads the backward's statistics (the variance, the sums). With W1 scaled by 400 the
    features spread by more than 256 over the batch: the variance passes 65504, so read in
    float16 it is inf and the gradient through relu 0; read in float32, every gradient
    (W1's and b1's through that statement) is float64's within float16's tolerance, on
    the planned NumPy step and every value_and_grad."""
    M = _relu_bn_module(backend)
    params = _host(M.init_params(0))
    params["W1"] = params["W1"] * np.float32(400.0)
    X, y = _batch(n=64, seed=4, shift=0.0)
    a16, g64 = _relu_bn_grads64(params, X, y)
    assert a16.astype(np.float64).var(axis=0).max() > 65504 and np.isfinite(a16).all()
    p = step_arrays(backend, params)
    data = step_arrays(backend, {"X": X, "y": y})
    g16 = unscaled_grads(M, backend, step, p, data, scale=2.0**10)
    assert sorted(g16) == sorted(g64)
    for k, ref in g64.items():
        assert np.isfinite(g16[k]).all(), (backend, step, k)
        err = np.abs(g16[k] - ref).max() / np.abs(ref).max()
        assert err <= TOL, (backend, step, k, err)


# -- the scaler's skip with batch norm and dropout present --------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_overflow_skips_the_update_but_the_forward_pass_advanced_the_state(backend):
    """An overflowing step (scale 2**40) leaves the parameters and Adam's state untouched
    and halves the scale; its forward pass ran, so the running statistics moved and the
    dropout generator drew the masks, exactly as the float32 step's generator does."""
    run = Pass(backend, optimizer="adam", lr=0.01)
    M = run.mixed
    params = step_arrays(backend, run.params)
    state, running = M.init_state(params), step_arrays(backend, M.init_running())
    rng = _rng(backend, 7)
    X, y = (step_arrays(backend, dict(zip("Xy", _batch(seed=1)))).values())
    out = M.train_step(params, state, X, y, running=running, rng=rng)
    if backend == "jax":
        _, params, state, running = out
    state = {**state, "scale": 2.0**40}  # the gradients times 2**40 overflow float16
    before, opt_before, run_before = _host(params), _host(_opt(state)), _host(running)
    out = M.train_step(params, state, X, y, running=running, rng=rng if backend != "jax" else 8)
    if backend == "jax":
        loss, params, state, running = out
    else:
        loss = out
    assert np.isfinite(float(loss))
    assert _equal(_host(params), before)  # not a bit changed
    assert _equal(_host(_opt(state)), opt_before)
    assert (float(state["scale"]), int(state["skipped"]), int(state["good_steps"])) == \
        (2.0**39, 1, 0)
    after = _host(running)
    assert not np.array_equal(after["bn1.mean"], run_before["bn1.mean"])  # advanced
    assert after["bn1.var"].dtype == np.float32
    if backend != "jax":  # the generator drew two steps' masks, as the float32 step's
        twin = _rng(backend, 7)
        P = run.plain
        p32 = step_arrays(backend, run.params)
        s32, r32 = P.init_state(p32), P.init_running()
        for _ in range(2):
            P.train_step(p32, s32, X, y, running=r32, rng=twin)
        assert _gen_state(twin) == _gen_state(rng)


# -- running statistics after N steps -----------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_running_statistics_after_steps_close_to_float32(backend):
    """Six SGD steps on new batches from the same parameters and seed: the running mean
    and variance (float32) stay within float16's tolerance of the float32 run's."""
    run = Pass(backend, lr=0.05)
    runs = {}
    for mixed in (True, False):
        M = run.mixed if mixed else run.plain
        params = step_arrays(backend, run.params)
        state, running = M.init_state(params), step_arrays(backend, M.init_running())
        rng = _rng(backend, 11)
        for t in range(6):
            X, y = (step_arrays(backend, dict(zip("Xy", _batch(seed=t)))).values())
            out = M.train_step(params, state, X, y, running=running,
                               rng=rng if backend != "jax" else t)
            if backend == "jax":
                _, params, state, running = out
        if mixed:
            assert int(state["skipped"]) == 0
        runs[mixed] = _host(running)
    for k, v in runs[False].items():
        assert runs[True][k].dtype == np.float32
        np.testing.assert_allclose(runs[True][k], v, rtol=1e-2, atol=1e-2, err_msg=k)
    assert np.abs(runs[False]["bn1.mean"]).max() > 0.5  # they moved well away from 0


def test_generated_mixed_bn_modules_pass_ruff(tmp_path):
    g = _net()
    for backend in BACKENDS:
        src = sb.train_step(g, optimizer="adam", precision="mixed", backend=backend)
        assert "def train_step(params, state, X, y, lr=LR, running=None, rng=0):" in src
        assert "_in_float32(_batch_norm, " in src and "np.zeros(16, MASTER)" in \
            src.replace("jnp.", "np.").replace("torch.zeros(16, dtype=MASTER, device=device)",
                                                "np.zeros(16, MASTER)")
        (tmp_path / f"step_{backend}.py").write_text(src)
    assert_ruff_clean(tmp_path, *(f"step_{b}.py" for b in BACKENDS))


def test_bfloat16_with_batch_norm_and_dropout_on_jax():
    pytest.importorskip("jax", reason="the jax backend needs JAX: pip install 'symbackprop[jax]'")
    step = sb.compile(_net(), optimizer="adam", lr=0.01, precision="bfloat16", backend="jax")
    params = step.init_params(0)
    state = step.init_state(params)
    X, y = _batch()
    losses = []
    for _ in range(15):
        loss, params, state = step.train_step(params, state, X=X, y=y)
        losses.append(float(loss))
    assert str(step.running["bn1.mean"].dtype) == "float32"
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses


# -- the training scripts -----------------------------------------------------------------
def _clusters(path, n=480, seed=0):
    """Four Gaussian clusters in 12 dimensions, shifted away from 0 (batch norm's work)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, 12)) * 2.0
    y = rng.integers(0, 4, n)
    X = centres[y] + rng.normal(size=(n, 12)) + 5.0
    np.savez(path, X=X[:360], y=y[:360], X_test=X[360:], y_test=y[360:])


def _torch_script_run(tmp_path, capsys):
    """train.py (a torch script) run in this process on the CPU, as ``python train.py`` would
    (it imports only torch and NumPy): its stdout, and the dtype of each running statistic
    of its checkpoint by name."""
    import torch

    spec = importlib.util.spec_from_file_location("mixed_bn_train", tmp_path / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    capsys.readouterr()
    code = module.main(["--data", str(tmp_path / "d.npz"), "--out", str(tmp_path / "ck.pt"),
                        "--device", "cpu"])
    out = capsys.readouterr()
    assert code == 0, out.err
    running = torch.load(tmp_path / "ck.pt", weights_only=True)["running"]
    return out.out, {k: np.dtype(str(v.dtype).removeprefix("torch.")) for k, v in running.items()}


@pytest.mark.parametrize("backend", [
    "numpy", *([pytest.param("jax", marks=pytest.mark.slow)] if "jax" in BACKENDS else []),
    *(["torch"] if "torch" in BACKENDS else [])])
def test_training_script_mixed_with_batch_norm_and_dropout_learns(tmp_path, backend, capsys):
    """The generated script (ruff-clean, run without symbackprop; torch's in this process)
    trains the network in mixed precision on four clusters: >= 90% test accuracy in 6
    epochs, no step skipped, the checkpoint's running statistics float32."""
    src = sb.training_script(_net(), optimizer="adam", lr=0.01, epochs=6, batch_size=32,
                             precision="mixed", backend=backend)
    (tmp_path / "train.py").write_text(src)
    assert_ruff_clean(tmp_path, "train.py")
    _clusters(tmp_path / "d.npz")
    if backend == "torch":
        stdout, running = _torch_script_run(tmp_path, capsys)
    else:
        stdout = run_script_without_symbackprop(tmp_path, "--data", "d.npz", "--out",
                                                "ck.npz").stdout
        with np.load(tmp_path / "ck.npz") as ck:
            running = {k: ck[k].dtype for k in ck.files if k.startswith("buffers/running/")}
    epochs = [ln for ln in stdout.splitlines() if ln.startswith("epoch")]
    assert len(epochs) == 6, stdout
    acc = float(re.search(r"test_acc (\S+)", epochs[-1]).group(1))
    assert acc >= 0.9, stdout
    assert "float16 gradients:" in stdout and "0 steps skipped" in stdout, stdout
    means = [k for k in running if "bn1.mean" in k]
    assert means and running[means[0]] == np.float32, running


def test_cli_train_script_precision_mixed_with_batch_norm_and_dropout(tmp_path):
    """``train-script --precision mixed`` on a CNN with batch norm and dropout (a .py SPEC)
    writes a ruff-clean script for every backend with mixed precision; no refusal."""
    from symbackprop.cli import main

    (tmp_path / "net.py").write_text(
        "import symbackprop as sb\n"
        "graph = sb.models.cnn(input_shape=(1, 8, 8), channels=(4,), hidden=(16,), "
        "batch_norm=True, dropout=0.2)\n")
    for backend in BACKENDS:
        out = tmp_path / f"train_{backend}.py"
        assert main(["train-script", str(tmp_path / "net.py"), "--optimizer", "adam",
                     "--precision", "mixed", "--backend", backend, "-o", str(out)]) == 0
        src = out.read_text()
        assert "running=None, rng=0" in src and "_in_float32(_batch_norm, " in src, backend
    assert_ruff_clean(tmp_path, *(f"train_{b}.py" for b in BACKENDS))


def test_a_float32_statement_written_into_a_buffer_is_refused():
    """The rewrite to float32 reads ``code = rhs`` statements; one writing into a buffer
    (the memory planner's out=) would stay in float16 unseen: it is refused instead."""
    from symbackprop.codegen.mixed import _rewrite_float32, float32_nodes
    from symbackprop.codegen.module import build_model
    from symbackprop.errors import CodegenError

    m = build_model(_net(), optimizer="sgd", precision="mixed")
    ops, vjp = float32_nodes(m.em.j)
    code = m.em.namer(min(vjp))
    for line in (f"np.add(a, b, out={code})  # planned", f"{code}[...] = a"):
        with pytest.raises(CodegenError, match=r"computes .* in float32, but its statement "
                                               r"writes into a buffer"):
            _rewrite_float32(m.em, [line], ops, vjp, ".astype({})", ("_in_float32", ""))
