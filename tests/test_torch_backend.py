"""The ``torch`` backend of issue 15: plain PyTorch tensor code under
``torch.inference_mode()``, checked against the NumPy backend.

* the op harness of tests/test_ops_grad.py (its case list) through torch: forward values,
  loss and gradients against the NumPy backend's in float64, and float32 staying float32;
* generated modules pass ruff, import only torch (checked on the AST) and name no device;
  they run on whatever device their tensors are on (the ``meta`` device here: any tensor
  made elsewhere would raise);
* the lessons' models (MLP, residual MLP, layer norm, CNN, transformer) give NumPy's loss
  and gradients; the in-place training step gives the NumPy step's losses and parameters
  step after step (float64 to 1e-10), and keeps NumPy's nan contract;
* a generated training script runs in a fresh interpreter without symbackprop;
* batch norm and dropout: NumPy's values, gradients and running statistics, central
  differences, the masks' rate and values, a CNN with batch norm trained like NumPy's,
  and the script of a CNN with batch norm and dropout;
* bad input: torch not installed, options of the numpy backend
  alone: one clear line (the CLI exits 2).

Everything here is skipped with the reason when PyTorch is not installed (``make test``
installs its CPU build).
"""

from __future__ import annotations

import ast
import importlib.util
import sys

import numpy as np
import pytest
import test_ops_grad as harness
from standalone import assert_ruff_clean, run_without_symbackprop

import symbackprop as sb
from symbackprop.cli import main
from symbackprop.codegen import backends

HAVE_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="PyTorch is not installed "
                                 "(pip install 'symbackprop[torch]')")
if HAVE_TORCH:
    import torch

# ops with no torch code: none (batch norm and dropout have had torch code since their
# running statistics became tensors and their masks a torch.Generator's)
WITHOUT: set = set()
# ops drawing random numbers: their output is torch's generator's (seed 0), not NumPy's
RANDOM = {"dropout_mask"}


def _np(v):
    return v.detach().cpu().numpy() if HAVE_TORCH and isinstance(v, torch.Tensor) \
        else np.asarray(v)


_COMPILED: dict = {}


def _compiled(name: str, case, dtype: str = "float64"):
    key = (name, id(case), dtype)
    if key not in _COMPILED:
        b = harness.build(name, case)
        _COMPILED[key] = b, sb.compile(b.graph, of="L", wrt=b.wrt, dtype=dtype, backend="torch")
    return _COMPILED[key]


def _why_no_code(name: str, case) -> str | None:
    b = harness.build(name, case)
    try:
        sb.source(b.graph, of="L", wrt=b.wrt, backend="torch")
    except sb.CodegenError as e:
        return str(e)
    return None


@needs_torch
@pytest.mark.parametrize(("name", "case"), harness.ALL_CASES)
def test_op_matches_numpy_backend(name, case):
    """Forward outputs, loss and gradients in float64 equal the NumPy backend's; an op
    without torch code (WITHOUT) raises the one clear error instead."""
    why = _why_no_code(name, case)
    if why is not None:
        assert name in WITHOUT and "has no torch code" in why, why
        return
    b, ref = harness.compiled(name, case)
    _, fn = _compiled(name, case)
    out, want = fn.forward(**b.arrays), ref.forward(**b.arrays)
    if name in RANDOM:  # the mask of torch's seed-0 generator, by its formula
        want["out"] = _torch_mask(b.arrays["a0"].shape, case.attrs["p"])
        want["L"] = np.sum(b.arrays["C"] * want["out"])
    for k in want:
        got = _np(out[k])
        assert got.shape == np.shape(want[k]), k
        np.testing.assert_allclose(got, want[k], rtol=1e-10, atol=1e-12, err_msg=k)
    loss, grads = fn.value_and_grad(**b.arrays)
    ref_loss, ref_grads = ref.value_and_grad(**b.arrays)
    ref_loss = want["L"] if name in RANDOM else ref_loss
    assert isinstance(loss, torch.Tensor) and loss.dtype == torch.float64
    assert float(loss) == pytest.approx(float(ref_loss), rel=1e-10, abs=1e-12)
    assert sorted(grads) == sorted(ref_grads)
    for w in ref_grads:
        got = _np(grads[w])
        assert got.shape == np.shape(ref_grads[w]), w
        np.testing.assert_allclose(got, ref_grads[w], rtol=1e-9, atol=1e-11,
                                   err_msg=f"d{w} of {name} on torch")


@needs_torch
@pytest.mark.parametrize(("name", "case"), [c for c in harness.ALL_CASES
                                            if c.values[0] in ("matmul", "tanh", "relu",
                                                               "softmax_cross_entropy",
                                                               "layer_norm", "mean", "conv2d",
                                                               "max_pool2d")])
def test_float32_stays_float32(name, case):
    b, ref = harness.compiled(name, case, "float32")
    _, fn = _compiled(name, case, "float32")
    loss, grads = fn.value_and_grad(**b.arrays)
    ref_loss, ref_grads = ref.value_and_grad(**b.arrays)
    assert loss.dtype == torch.float32
    assert float(loss) == pytest.approx(float(ref_loss), rel=1e-4, abs=1e-5)
    for w in ref_grads:
        assert grads[w].dtype == torch.float32, f"d{w} is {grads[w].dtype}"
        np.testing.assert_allclose(_np(grads[w]), ref_grads[w], rtol=1e-4, atol=1e-5)


def test_every_op_has_torch_code():
    """Every registered op has torch code: adding an op asks for its torch code here
    (generating needs no PyTorch)."""
    names = {op.name for op in sb.ops.all_ops()} - {"swish"}
    missing = {n for n in names if not backends.has_code(n, "torch")}
    assert missing == WITHOUT, sorted(missing ^ WITHOUT)


# -- the generated modules ----------------------------------------------------------------
def _models():
    g_ln = sb.Graph(name="layer_norm_net")
    X = g_ln.input("X", shape=("N", 6))
    y = g_ln.input("y", shape=("N",), dtype="int")
    h = sb.layer_norm(sb.tanh(X @ g_ln.param("W1", shape=(6, 5)) + g_ln.param("b1", shape=(5,))))
    g_ln.output("L", sb.softmax_cross_entropy(h @ g_ln.param("W2", shape=(5, 3)), y))
    return {"mlp": sb.models.mlp([6, 5, 4, 3]),
            "residual_mlp": sb.models.residual_mlp(6, 5, 2, 3),
            "layer_norm": g_ln}


MODELS = _models()
CNN = sb.models.cnn((1, 6, 6), channels=(2, 3), hidden=(4,), classes=3)
TRANSFORMER = sb.models.transformer_classifier(vocab=12, seq_len=6, d_model=8, heads=2,
                                               d_ff=16, layers=1, classes=2)


def _imported(src: str) -> set[str]:
    """Top-level packages a module imports, the standard library's left out."""
    found = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            found.add((node.module or "").split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names}


def test_generated_modules_pass_ruff_import_only_torch_and_name_no_device(tmp_path):
    files = []
    for name, g in {**MODELS, "cnn": CNN, "transformer": TRANSFORMER}.items():
        for dtype in ("float64", "float32"):
            files.append((f"{name}_{dtype}.py", sb.source(g, dtype=dtype, backend="torch")))
        files.append((f"{name}_noopt.py", sb.source(g, optimize=False, backend="torch")))
        for opt in ("sgd", "momentum", "adam"):
            files.append((f"{name}_step_{opt}.py", sb.train_step(g, optimizer=opt,
                                                                 backend="torch")))
    scalar = sb.parse("L = (w*x - y)**2", params=["w"])  # no weight drawn at random
    files.append(("scalar_step.py", sb.train_step(scalar, optimizer="momentum",
                                                  backend="torch")))
    for fname, src in files:
        assert _imported(src) == {"torch"}, fname
        assert "'cpu'" not in src and '"cpu"' not in src and "cuda" not in src, fname
        assert "@torch.inference_mode()\ndef value_and_grad(" in src, fname
        (tmp_path / fname).write_text(src)
        assert "  # dL/dW1 via " in src or "  # dL/dw via " in src or "  # dL/dW_" in src, fname
    assert_ruff_clean(tmp_path, *[f for f, _ in files])


def _arrays(g, batch=7, seed=0):
    """Parameters (the NumPy step's init_params) and a batch for the models here."""
    rng = np.random.default_rng(seed)
    params = {k: np.array(v) for k, v in sb.compile(g, optimizer="sgd").init_params(0).items()}
    X = g.nx.nodes["X"]
    shape = tuple(batch if d == "N" else d for d in X["shape"])
    if X["dtype"] == "int":
        data = {"X": rng.integers(0, 12, shape), "y": rng.integers(0, 2, batch)}
    else:
        data = {"X": rng.standard_normal(shape), "y": rng.integers(0, 3, batch)}
    return {**params, **data}


@needs_torch
@pytest.mark.parametrize("model", [*MODELS, "cnn", "transformer"])
def test_models_match_numpy(model):
    """The lessons' models: loss and gradients equal NumPy's (float64); the CNN's
    convolutions and pools are torch.nn.functional's, the transformer's embedding
    gradient an index_add_."""
    g = {**MODELS, "cnn": CNN, "transformer": TRANSFORMER}[model]
    arrays = _arrays(g)
    loss, grads = sb.compile(g).value_and_grad(**arrays)
    tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
    got_loss, got = sb.compile(g, backend="torch").value_and_grad(**tensors)
    assert float(got_loss) == pytest.approx(loss, rel=1e-12)
    for k in grads:
        assert got[k].dtype == torch.float64
        np.testing.assert_allclose(_np(got[k]), grads[k], rtol=1e-10, atol=1e-13, err_msg=k)


@needs_torch
@pytest.mark.parametrize("model", ["mlp", "cnn", "transformer"])
def test_code_runs_on_the_device_of_its_tensors(model):
    """On the meta device (shapes without values) every tensor the code makes must be
    made there: a constant, a seed or a helper's tensor on the CPU would raise. The
    results are meta tensors of the right shapes; the training step's update runs there
    too."""
    g = {**MODELS, "cnn": CNN, "transformer": TRANSFORMER}[model]
    arrays = _arrays(g)
    meta = {k: torch.from_numpy(v).to("meta") for k, v in arrays.items()}
    loss, grads = sb.compile(g, backend="torch").value_and_grad(**meta)
    assert loss.device.type == "meta" and loss.shape == ()
    for k, v in grads.items():
        assert v.device.type == "meta" and tuple(v.shape) == arrays[k].shape, k
    step = sb.compile(g, optimizer="adam", backend="torch")
    params = step.module.init_params(0, device="meta")  # drawn on the CPU, moved
    assert all(v.device.type == "meta" for v in params.values())
    state = step.init_state(params)
    step.update(params, grads, state)
    assert state["t"] == 1 and all(v.device.type == "meta" for v in state["m"].values())


@needs_torch
def test_in_place_calls_write_only_into_the_tensors_their_arithmetic_makes():
    """A node's outermost clamp, tanh or exp of arithmetic runs in place (the tensor the
    arithmetic makes); of a bare name (a parameter) it does not. The values and gradients
    are NumPy's and no tensor passed in changes."""
    g = sb.Graph()
    x, W, b = g.param("x", shape=(3, 4)), g.param("W", shape=(4, 4)), g.param("b", shape=(4,))
    t = sb.tanh(sb.relu(x @ W + b) * 2 - x)
    r = sb.relu(x)
    g.output("L", sb.sum(t * sb.exp(x - 1)) + sb.sum(r * r))
    src = sb.source(g, backend="torch")
    for call in ("torch.clamp_(matmul_1 + b, min=0)", "torch.tanh_(", "torch.exp_(x - 1)",
                 "torch.clamp(x, min=0)"):
        assert call in src, call
    rng = np.random.default_rng(0)
    arrays = {k: rng.standard_normal(s) for k, s in (("x", (3, 4)), ("W", (4, 4)), ("b", (4,)))}
    loss, grads = sb.compile(g).value_and_grad(**arrays)
    tensors = {k: torch.from_numpy(v.copy()) for k, v in arrays.items()}
    compiled = sb.compile(g, backend="torch")
    got_loss, got = compiled.value_and_grad(**tensors)
    compiled.forward(**tensors)
    assert float(got_loss) == pytest.approx(loss, rel=1e-12)
    for k in grads:
        np.testing.assert_allclose(_np(got[k]), grads[k], rtol=1e-12, err_msg=k)
        np.testing.assert_array_equal(_np(tensors[k]), arrays[k], err_msg=k)
    # central differences, independent of both backends
    eps, i = 1e-6, (1, 2)
    for k in ("x", "W"):
        up, down = ({**arrays, k: arrays[k].copy()} for _ in range(2))
        up[k][i] += eps
        down[k][i] -= eps
        fd = (float(compiled.value_and_grad(**up)[0])
              - float(compiled.value_and_grad(**down)[0])) / (2 * eps)
        assert _np(got[k])[i] == pytest.approx(fd, rel=1e-6), k


# -- training -------------------------------------------------------------------------------
@needs_torch
@pytest.mark.parametrize(("optimizer", "dtype"), [("sgd", "float64"), ("momentum", "float64"),
                                                  ("adam", "float64"), ("adam", "float32")])
def test_train_step_sequence_equals_numpy(optimizer, dtype):
    """The digits MLP: 30 in-place torch steps from the NumPy step's initial parameters
    give the NumPy step's losses step by step (float64 to 1e-10, float32 to 1e-4) and its
    parameters; the parameters stay the tensors passed (changed in place)."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(dtype)
    g = sb.models.mlp([64, 32, 10])
    lr = {"sgd": 0.5, "momentum": 0.1, "adam": 0.01}[optimizer]
    ref = sb.compile(g, optimizer=optimizer, lr=lr, dtype=dtype)
    fn = sb.compile(g, optimizer=optimizer, lr=lr, dtype=dtype, backend="torch")
    params = ref.init_params(0)
    p_t = {k: torch.tensor(v) for k, v in params.items()}
    ids = {k: id(v) for k, v in p_t.items()}
    state, s_t = ref.init_state(params), fn.init_state(p_t)
    rtol = 1e-10 if dtype == "float64" else 1e-4
    losses = []
    for step in range(30):
        i = np.arange(step * 64, step * 64 + 64) % len(X)
        want = ref.train_step(params, state, X=X[i], y=y[i])
        loss = fn.train_step(p_t, s_t, X=torch.from_numpy(X[i]), y=torch.from_numpy(y[i]))
        assert isinstance(loss, float)
        assert loss == pytest.approx(float(want), rel=rtol), f"step {step}"
        losses.append(loss)
    assert losses[-1] < 0.7 * losses[0]
    for k in params:
        assert id(p_t[k]) == ids[k] and p_t[k].dtype == getattr(torch, dtype)
        scale = float(np.abs(params[k]).max())
        np.testing.assert_allclose(_np(p_t[k]), params[k], rtol=0, atol=rtol * 10 * scale,
                                   err_msg=k)


@needs_torch
def test_cnn_train_step_equals_numpy():
    """A small CNN on the 8x8 digits: 10 torch steps (Adam) give NumPy's losses."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).reshape(-1, 1, 8, 8)
    g = sb.models.cnn((1, 8, 8), channels=(4, 6), hidden=(16,), classes=10)
    ref = sb.compile(g, optimizer="adam", lr=0.02)
    fn = sb.compile(g, optimizer="adam", lr=0.02, backend="torch")
    params = ref.init_params(0)
    p_t = {k: torch.tensor(v) for k, v in params.items()}
    state, s_t = ref.init_state(params), fn.init_state(p_t)
    for step in range(10):
        i = np.arange(step * 32, step * 32 + 32)
        want = ref.train_step(params, state, X=X[i], y=y[i])
        got = fn.train_step(p_t, s_t, X=torch.from_numpy(X[i]), y=torch.from_numpy(y[i]))
        assert got == pytest.approx(want, rel=1e-10), f"step {step}"


@needs_torch
def test_nan_loss_or_gradient_leaves_parameters_untouched():
    """NumPy's contract: a nan in the batch raises FloatingPointError naming the loss or
    the gradient, and no parameter or optimizer state changes."""
    g = sb.models.mlp([4, 3, 2])
    fn = sb.compile(g, optimizer="adam", backend="torch")
    params = fn.init_params(0)
    state = fn.init_state(params)
    before = {k: v.clone() for k, v in params.items()}
    X = torch.ones(5, 4, dtype=torch.float64)
    X[2, 1] = float("nan")
    with pytest.raises(FloatingPointError, match="the loss is nan|nan or inf entries"):
        fn.train_step(params, state, X=X, y=torch.zeros(5, dtype=torch.int64))
    assert state["t"] == 0
    for k in params:
        assert torch.equal(params[k], before[k]), k
    loss = fn.train_step(params, state, X=torch.ones(5, 4), y=torch.zeros(5, dtype=torch.int64))
    assert np.isfinite(loss) and state["t"] == 1
    from symbackprop.codegen.runtime.torch_script import check_finite

    with pytest.raises(FloatingPointError, match="dL/dW1 has 1 nan or inf entries"):
        check_finite(0.5, {"W1": torch.tensor([1.0, float("inf")])})


@needs_torch
def test_init_params_draws_with_a_torch_generator():
    """init_params(seed, device): the same numbers for the same seed, other for another,
    He weights for relu (std sqrt(2 / fan_in)), zero biases, float32 when asked."""
    g = sb.models.mlp([400, 300, 10])
    fn = sb.compile(g, optimizer="sgd", backend="torch", dtype="float32")
    a, b, c = fn.init_params(0), fn.init_params(0), fn.init_params(1)
    assert torch.equal(a["W1"], b["W1"]) and not torch.equal(a["W1"], c["W1"])
    assert a["W1"].dtype == torch.float32 and float(a["b1"].abs().max()) == 0
    assert float(a["W1"].std()) == pytest.approx((2 / 400) ** 0.5, rel=0.02)
    assert fn.module.init_params(0, device="meta")["W1"].device.type == "meta"


# -- the training script ---------------------------------------------------------------------
@needs_torch
@pytest.mark.slow
def test_training_script_runs_without_symbackprop(tmp_path):
    """train-script --backend torch: a standalone program (torch, and NumPy to read the
    .npz), ruff-clean, that trains the digits MLP in a fresh interpreter without
    symbackprop, prints one line per epoch with the test accuracy, and saves the
    parameters; a nan in the data stops it with one line naming the batch and the
    last_good checkpoint, exit 1 (the NumPy script's contract)."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    np.savez(tmp_path / "digits.npz", X=X[:600] / 16.0, y=y[:600], X_test=X[600:800] / 16.0,
             y_test=y[600:800])
    bad = X[:64] / 16.0
    bad[5, 3] = np.nan
    np.savez(tmp_path / "bad.npz", X=bad, y=y[:64])
    spec = tmp_path / "net.json"
    sb.save(sb.models.mlp([64, 32, 10]), str(spec))
    assert main(["train-script", str(spec), "--backend", "torch", "--optimizer", "adam",
                 "--lr", "0.01", "--batch-size", "32", "--epochs", "3",
                 "-o", str(tmp_path / "train.py")]) == 0
    src = (tmp_path / "train.py").read_text()
    assert _imported(src) == {"torch", "numpy"}
    assert_ruff_clean(tmp_path, "train.py")
    res = run_without_symbackprop(tmp_path, """
        import runpy
        sys.argv = ["train.py", "--data", "digits.npz", "--device", "cpu", "--out", "p.pt"]
        try:
            runpy.run_path("train.py", run_name="__main__")
        except SystemExit as e:
            assert e.code == 0, e.code
        import torch
        saved = torch.load("p.pt", weights_only=True)
        assert saved["epoch"] == 3 and saved["network"] == "mlp_64_32_10", saved.keys()
        assert sorted(saved["params"]) == ["W1", "W2", "b1", "b2"]
        print("saved", saved["state"]["t"])
        sys.argv = ["train.py", "--data", "bad.npz", "--device", "cpu"]
        try:
            runpy.run_path("train.py", run_name="__main__")
        except SystemExit as e:
            print("bad exit", e.code)
        """, timeout=300)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("epoch")]
    assert len(lines) == 3 and "test_acc" in lines[-1] and "cpu" in lines[-1], res.stdout
    assert float(lines[-1].split("test_acc")[1].split()[0]) > 0.8, lines
    assert "saved 57" in res.stdout  # 3 epochs of 19 batches
    assert "bad exit 1" in res.stdout
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "stopped at epoch 1, batch" in err[0] and "nan" in err[0], res.stderr
    assert "checkpoint.last_good.pt" in err[0]


# -- bad input -------------------------------------------------------------------------------
def test_torch_not_installed_names_the_extra_and_the_cpu_build(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch" else real(name, *a))
    g = sb.models.mlp([4, 3, 2])
    for kwargs in ({}, {"optimizer": "sgd"}):
        with pytest.raises(sb.CodegenError) as e:
            sb.compile(g, backend="torch", **kwargs)
        msg = str(e.value)
        assert "\n" not in msg and "pip install 'symbackprop[torch]'" in msg
        assert "download.pytorch.org/whl/cpu" in msg
    # writing the source needs no PyTorch
    assert "import torch" in sb.source(g, backend="torch")
    assert "import torch" in sb.train_step(g, backend="torch")


def test_options_of_the_numpy_backend_alone_are_refused_in_one_line(capsys):
    g = sb.models.mlp([4, 3, 2])
    # (precision 'mixed' and 'bfloat16' are torch's too: tests/test_torch_mixed.py)
    assert "DTYPE = torch.float32" in sb.train_step(g, precision="float32", backend="torch")
    for extra in (["--distributed", "mpi"],):
        assert main(["train-script", "mlp:4-3-2", "--backend", "torch", *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "numpy" in err, err


def test_cli_writes_torch_code(tmp_path):
    out = tmp_path / "model_torch.py"
    assert main(["codegen", "mlp:8-4-3", "--backend", "torch", "--dtype", "float32",
                 "-o", str(out)]) == 0
    src = out.read_text()
    assert "DTYPE = torch.float32" in src and _imported(src) == {"torch"}


# -- batch norm and dropout (NumPy's semantics: running statistics in place, a generator) -----
def _torch_mask(shape, p, seed=0):
    """Inverted dropout's mask of a CPU torch.Generator of ``seed``: one float64 draw per
    entry, kept where the draw is >= p, scaled by 1/(1-p)."""
    u = torch.rand(tuple(shape), generator=torch.Generator().manual_seed(seed),
                   dtype=torch.float64).numpy()
    return np.where(u >= p, 1 / (1 - p), 0.0)


def _bn_graph(shape=(4, 3, 2, 2)):
    g = sb.Graph(name="bn_net")
    X = g.input("X", shape=("N", *shape[1:]))
    C = g.input("C", shape=("N", *shape[1:]))
    gamma = g.param("gamma", shape=(1, shape[1]) + (1,) * (len(shape) - 2))
    beta = g.param("beta", shape=(1, shape[1]) + (1,) * (len(shape) - 2))
    h = g.output("h", sb.batch_norm(X, axis=1) * gamma + beta)
    g.output("L", sb.sum(C * h * h))
    return g


def _bn_arrays(shape=(4, 3, 2, 2), seed=3):
    rng = np.random.default_rng(seed)
    c = (1, shape[1]) + (1,) * (len(shape) - 2)
    return {"X": rng.normal(2.0, 3.0, size=shape), "C": rng.normal(size=shape),
            "gamma": rng.normal(1.0, 0.2, size=c), "beta": rng.normal(size=c)}


@needs_torch
@pytest.mark.parametrize("shape", [(4, 3, 2, 2), (5, 3)], ids=["NCHW", "ND"])
def test_batch_norm_values_gradients_and_running_stats_match_numpy(shape):
    """Training-mode values, loss and gradients, the running statistics after several
    updates (momentum 0.1, unbiased variance) and evaluation-mode values equal the NumPy
    backend's in float64 (1e-10)."""
    g = _bn_graph(shape)
    ref = sb.compile(g, of="L", wrt=["X", "gamma", "beta"])
    fn = sb.compile(g, of="L", wrt=["X", "gamma", "beta"], backend="torch")
    a = _bn_arrays(shape)
    t = {k: torch.as_tensor(v) for k, v in a.items()}
    run_np, run_t = ref.init_running(), fn.init_running()
    assert sorted(run_t) == ["bn1.mean", "bn1.var"] or sorted(run_t) == sorted(run_np)
    assert all(isinstance(v, torch.Tensor) and v.dtype == torch.float64 for v in run_t.values())
    np.testing.assert_array_equal(_np(run_t[sorted(run_t)[1]]), run_np[sorted(run_np)[1]])
    for _ in range(3):  # forward and value_and_grad both update the running statistics
        want, got = ref.forward(**a, running=run_np), fn.forward(**t, running=run_t)
        np.testing.assert_allclose(_np(got["h"]), want["h"], rtol=1e-10, atol=1e-12)
        ref_loss, ref_grads = ref.value_and_grad(**a, running=run_np)
        loss, grads = fn.value_and_grad(**t, running=run_t)
        assert float(loss) == pytest.approx(float(ref_loss), rel=1e-10)
        for w in ref_grads:
            np.testing.assert_allclose(_np(grads[w]), ref_grads[w], rtol=1e-10, atol=1e-10,
                                       err_msg=w)
    assert sorted(run_t) == sorted(run_np)
    for k in run_np:
        assert not np.allclose(run_np[k], 1.0 if k.endswith("var") else 0.0), k  # updated
        np.testing.assert_allclose(_np(run_t[k]), run_np[k], rtol=1e-10, atol=1e-12, err_msg=k)
    want = ref.forward(**a, training=False, running=run_np)["h"]
    got = fn.forward(**t, training=False, running=run_t)["h"]
    np.testing.assert_allclose(_np(got), want, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="needs the running statistics"):
        fn.forward(**t, training=False)


@needs_torch
def test_batch_norm_gradients_match_central_differences():
    """dL/dX, dL/dgamma, dL/dbeta of the torch code against central differences of its
    own training-mode loss in float64 (the batch statistics depend on X)."""
    g = _bn_graph()
    fn = sb.compile(g, of="L", wrt=["X", "gamma", "beta"], backend="torch")
    a = {k: torch.as_tensor(v) for k, v in _bn_arrays().items()}
    _, grads = fn.value_and_grad(**a)
    h = 1e-6
    for w in ("X", "gamma", "beta"):
        num = np.zeros(a[w].shape)
        for i in np.ndindex(*a[w].shape):
            plus = {k: v.clone() for k, v in a.items()}
            minus = {k: v.clone() for k, v in a.items()}
            plus[w][i] += h
            minus[w][i] -= h
            num[i] = (float(fn.forward(**plus)["L"]) - float(fn.forward(**minus)["L"])) / (2 * h)
        np.testing.assert_allclose(_np(grads[w]), num, rtol=1e-6, atol=1e-7, err_msg=w)


def _dropout_graph(p, shape=(200, 100)):
    g = sb.Graph(name="dropout_net")
    X = g.input("X", shape=shape)
    C = g.input("C", shape=shape)
    y = g.output("y", sb.dropout(X, p))
    g.output("L", sb.sum(C * y))
    return g


@needs_torch
def test_dropout_masks_rate_values_eval_and_generators():
    """The mask keeps 1-p of the entries, scaled by 1/(1-p) (0 elsewhere); a seed gives
    the CPU generator's mask of that seed (the same in float32 and float64); a Generator
    passed draws new masks at every call; evaluation mode is the identity."""
    p = 0.3
    g = _dropout_graph(p)
    fn = sb.compile(g, of="L", wrt=["X"], backend="torch")
    X = torch.ones(200, 100, dtype=torch.float64)
    C = torch.zeros(200, 100, dtype=torch.float64)
    y = _np(fn.forward(X=X, C=C, rng=7)["y"])
    assert set(np.unique(y)) == {0.0, 1 / (1 - p)}
    assert abs((y == 0).mean() - p) < 0.02  # 20000 entries: 0.02 is 6 standard deviations
    np.testing.assert_array_equal(y, _torch_mask(X.shape, p, seed=7))
    fn32 = sb.compile(g, of="L", wrt=["X"], backend="torch", dtype="float32")
    y32 = fn32.forward(X=X.float(), C=C.float(), rng=7)["y"]
    assert y32.dtype == torch.float32
    np.testing.assert_array_equal(_np(y32) == 0, y == 0)
    gen = torch.Generator().manual_seed(7)
    first, second = (_np(fn.forward(X=X, C=C, rng=gen)["y"]) for _ in range(2))
    np.testing.assert_array_equal(first, y)  # the same draws as the seed
    assert (first != second).any()  # the generator moved on
    Xr = torch.as_tensor(np.random.default_rng(0).normal(size=(200, 100)))
    np.testing.assert_array_equal(_np(fn.forward(X=Xr, C=C, training=False)["y"]), _np(Xr))
    assert torch.equal(fn.forward(X=Xr, C=C, rng=3)["y"], fn.forward(X=Xr, C=C, rng=3)["y"])


@needs_torch
def test_dropout_gradient_is_the_mask_of_the_forward_pass():
    """dL/dX of L = sum(C * dropout(X)) is C * mask, the mask drawn from the same seed
    (read off the forward output y = X * mask), and equals the NumPy backend's gradient
    given that mask (NumPy's code for L = sum(C * mask * X), the mask as an input)."""
    p = 0.4
    g = _dropout_graph(p, shape=(6, 5))
    fn = sb.compile(g, of="L", wrt=["X"], backend="torch")
    rng = np.random.default_rng(2)
    X = rng.normal(size=(6, 5)) + 5.0  # away from 0: y / X recovers the mask
    C = rng.normal(size=(6, 5))
    y = _np(fn.forward(X=torch.as_tensor(X), C=torch.as_tensor(C), rng=11)["y"])
    mask = y / X
    np.testing.assert_allclose(mask, _torch_mask((6, 5), p, seed=11), rtol=1e-12)
    loss, grads = fn.value_and_grad(X=torch.as_tensor(X), C=torch.as_tensor(C), rng=11)
    np.testing.assert_allclose(_np(grads["X"]), C * mask, rtol=1e-12, atol=1e-14)
    ref_g = sb.Graph(name="masked")
    Xn, Cn, Mn = (ref_g.input(n, shape=(6, 5)) for n in ("X", "C", "M"))
    ref_g.output("L", sb.sum(Cn * (Xn * Mn)))
    ref = sb.compile(ref_g, of="L", wrt=["X"])
    ref_loss, ref_grads = ref.value_and_grad(X=X, C=C, M=mask)
    assert float(loss) == pytest.approx(float(ref_loss), rel=1e-12)
    np.testing.assert_allclose(_np(grads["X"]), ref_grads["X"], rtol=1e-12, atol=1e-14)


@needs_torch
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_cnn_with_batch_norm_trains_like_numpy(optimizer):
    """sb.compile(cnn(batch_norm=True), backend="torch"): step after step the losses,
    parameters and the step's own running statistics (step.running) equal the NumPy
    step's (float64, 1e-10), and evaluation mode with them gives NumPy's logits."""
    g = sb.models.cnn((1, 6, 6), channels=(2, 3), hidden=(4,), classes=3, batch_norm=True)
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(5, 1, 6, 6)), rng.integers(0, 3, 5)
    ref = sb.compile(g, optimizer=optimizer, lr=0.05)
    step = sb.compile(g, optimizer=optimizer, lr=0.05, backend="torch")
    p_np = ref.init_params(0)
    p_t = {k: torch.as_tensor(v.copy()) for k, v in p_np.items()}
    s_np, s_t = ref.init_state(p_np), step.init_state(p_t)
    Xt, yt = torch.as_tensor(X), torch.as_tensor(y)
    for _ in range(4):
        want = ref.train_step(p_np, s_np, X=X, y=y)
        assert step.train_step(p_t, s_t, X=Xt, y=yt) == pytest.approx(want, rel=1e-10)
    for k in p_np:
        np.testing.assert_allclose(_np(p_t[k]), p_np[k], rtol=1e-10, atol=1e-12, err_msg=k)
    assert sorted(step.running) == sorted(ref.running) and step.running
    for k in ref.running:
        np.testing.assert_allclose(_np(step.running[k]), ref.running[k], rtol=1e-10,
                                   atol=1e-12, err_msg=k)
    fwd = sb.compile(g, backend="torch")
    got = fwd.forward(X=Xt, y=yt, **{k: p_t[k] for k in p_t}, training=False,
                      running=step.running)["logits"]
    want = sb.compile(g).forward(X=X, y=y, **p_np, training=False,
                                 running=ref.running)["logits"]
    np.testing.assert_allclose(_np(got), want, rtol=1e-10, atol=1e-12)


@needs_torch
def test_compiled_step_with_dropout_draws_new_masks_from_its_generator():
    """The torch step's own generator (step.rng) is a torch.Generator of seed 0 that every
    step draws from: two steps on the same batch and parameters give different losses,
    and a step given rng=<seed> is reproducible."""
    g = sb.models.cnn((1, 6, 6), channels=(2,), hidden=(8,), classes=3, dropout=0.5)
    step = sb.compile(g, optimizer="sgd", lr=1e-300, backend="torch")  # params stay
    assert isinstance(step.rng, torch.Generator)
    params = step.init_params(0)
    state = step.init_state(params)
    rng = np.random.default_rng(0)
    X = torch.as_tensor(rng.normal(size=(8, 1, 6, 6)))
    y = torch.as_tensor(rng.integers(0, 3, 8))
    a, b = (step.train_step(params, state, X=X, y=y) for _ in range(2))
    assert a != b
    assert step.train_step(params, state, X=X, y=y, rng=4) == \
        step.train_step(params, state, X=X, y=y, rng=4)


@needs_torch
@pytest.mark.slow
def test_training_script_with_batch_norm_and_dropout_runs_without_symbackprop(tmp_path):
    """train-script --backend torch of a CNN with batch norm and dropout: ruff-clean,
    trains in a fresh interpreter without symbackprop (the loss falls), evaluates with
    the running statistics and saves them with --out."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(96, 1, 6, 6))
    y = (X[:, 0, :3].sum(axis=(1, 2)) > 0).astype(int)
    np.savez(tmp_path / "d.npz", X=X[:64], y=y[:64], X_test=X[64:], y_test=y[64:])
    g = sb.models.cnn((1, 6, 6), channels=(3,), hidden=(8,), classes=2, batch_norm=True,
                      dropout=0.25)
    spec = tmp_path / "net.json"
    sb.save(g, str(spec))
    assert main(["train-script", str(spec), "--backend", "torch", "--optimizer", "adam",
                 "--lr", "0.01", "--batch-size", "16", "--epochs", "4",
                 "-o", str(tmp_path / "train.py")]) == 0
    assert_ruff_clean(tmp_path, "train.py")
    res = run_without_symbackprop(tmp_path, """
        import runpy
        sys.argv = ["train.py", "--data", "d.npz", "--device", "cpu", "--out", "p.pt"]
        try:
            runpy.run_path("train.py", run_name="__main__")
        except SystemExit as e:
            assert e.code == 0, e.code
        import torch
        saved = torch.load("p.pt", weights_only=True)
        run = saved["running"]
        assert sorted(run) == ["bn1.mean", "bn1.var"], sorted(run)
        assert run["bn1.mean"].shape == (3,) and float(run["bn1.var"].min()) > 0
        assert not torch.equal(run["bn1.var"], torch.ones(3, dtype=run["bn1.var"].dtype))
        print("saved running", saved["epoch"])
        """, timeout=300)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("epoch")]
    assert len(lines) == 4 and "test_acc" in lines[-1], res.stdout
    losses = [float(ln.split("loss")[1].split()[0]) for ln in lines]
    assert losses[-1] < losses[0], losses
    assert "saved running 4" in res.stdout
