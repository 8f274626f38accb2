"""The backends of issue 15: the same graph's code for JAX and for the Python array API
standard (run on ``array_api_strict``), checked against the NumPy backend.

* the op harness of tests/test_ops_grad.py (its case list), run through every installed
  backend: forward values, loss and gradients against the NumPy backend's, in float64
  (both backends have it), and float32 staying float32;
* generated modules pass ruff and import only their array library (checked on the AST);
* the JAX training step trains the digits MLP to the NumPy step's losses;
* bad input: an unknown backend, a backend not installed, an op without code for a
  backend: one clear line (the CLI exits 2).

A backend whose library is missing is skipped with the reason (``make test`` installs
JAX and array-api-strict, so nothing skips there).
"""

from __future__ import annotations

import ast
import importlib.util
import sys

import numpy as np
import pytest
import test_ops_grad as harness
from standalone import assert_ruff_clean

import symbackprop as sb
from symbackprop.cli import main
from symbackprop.codegen import backends

BACKENDS = ["jax", "array_api"]
# what running each backend's code in these tests needs
NEEDS = {"jax": "jax", "array_api": "array_api_strict"}


def _installed(backend: str) -> bool:
    return importlib.util.find_spec(NEEDS[backend]) is not None


def _skip_missing(backend: str) -> None:
    if not _installed(backend):
        pytest.skip(f"{NEEDS[backend]} is not installed (pip install 'symbackprop[{backend}]')")


def _arrays(backend: str, arrays: dict) -> dict:
    """The test's NumPy arrays as the backend's code takes them: array_api_strict arrays
    for the array API module (it accepts nothing else), NumPy arrays for JAX (its code
    converts them)."""
    if backend != "array_api":
        return arrays
    import array_api_strict as xp

    return {k: xp.asarray(np.asarray(v)) for k, v in arrays.items()}


def _np(v) -> np.ndarray:
    """A backend's array as NumPy (array_api_strict's through DLPack)."""
    return np.from_dlpack(v) if hasattr(v, "__dlpack__") else np.asarray(v)


_COMPILED: dict = {}


def _compiled(backend: str, name: str, case, dtype: str = "float64"):
    key = (backend, name, id(case), dtype)
    if key not in _COMPILED:
        b = harness.build(name, case)
        _COMPILED[key] = b, sb.compile(b.graph, of="L", wrt=b.wrt, dtype=dtype, backend=backend)
    return _COMPILED[key]


def _has_code(name: str, case, backend: str) -> str | None:
    """Why op ``name`` has no code for ``backend`` in this case (None: it has)."""
    b = harness.build(name, case)
    try:
        sb.source(b.graph, of="L", wrt=b.wrt, backend=backend)
    except sb.CodegenError as e:
        return str(e)
    return None


# The ops every model of the lessons needs (MLPs, residual_mlp, layer norm, softmax
# cross-entropy) and the other ops both backends write: they must never be skipped.
REQUIRED = {
    "add", "sub", "mul", "div", "pow", "neg", "exp", "log", "sqrt", "abs", "sin", "cos",
    "tanh", "sigmoid", "relu", "softplus", "square", "swish", "ew", "identity", "matmul",
    "transpose", "sum", "mean", "reshape", "broadcast_to", "softmax", "log_softmax",
    "softmax_cross_entropy", "softmax_cross_entropy_grad", "mse", "layer_norm", "onehot",
    "argmax", "maximum", "minimum", "greater", "less", "greater_equal", "less_equal",
    "where", "clip", "max", "min", "logsumexp", "var", "std", "slice", "unslice", "concat",
    "stack", "take", "take_grad"}
# ops with no code in a backend: the array API standard has no random numbers (dropout)
STATEFUL = {"batch_norm", "dropout_mask"}
CONV = {"conv1d", "conv2d", "conv_grad_input", "conv_grad_weight", "max_pool2d",
        "max_pool2d_grad", "avg_pool2d", "avg_pool2d_grad"}
WITHOUT = {"jax": set(), "array_api": {"dropout_mask"}}
# ops drawing random numbers: JAX's generator is not NumPy's, so the harness checks the
# values of the mask and the gradient (tests/test_jax_stateful.py: the rest)
DRAWN = {"dropout_mask"}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("name", "case"), harness.ALL_CASES)
def test_op_matches_numpy_backend(backend, name, case):
    """Forward outputs, loss and gradients in float64 equal the NumPy backend's; an op
    without code for the backend (WITHOUT) raises the one clear error instead."""
    _skip_missing(backend)
    why = _has_code(name, case, backend)
    if why is not None:
        assert name in WITHOUT[backend] and name not in REQUIRED, why
        assert f"has no {backend} code" in why, why
        return
    b, ref = harness.compiled(name, case)
    _, fn = _compiled(backend, name, case)
    arrays = _arrays(backend, b.arrays)
    out, want = fn.forward(**arrays), ref.forward(**b.arrays)
    drawn = name in DRAWN and case.attrs["p"] > 0  # another generator: the mask's values
    if drawn:
        kept = 1 / (1 - case.attrs["p"])
        assert set(np.unique(_np(out["out"]))) == {0.0, kept}
        want = {}
    for k in want:
        got = _np(out[k])
        assert got.shape == np.shape(want[k]), k
        np.testing.assert_allclose(got, want[k], rtol=1e-10, atol=1e-12, err_msg=k)
    loss, grads = fn.value_and_grad(**arrays)
    ref_loss, ref_grads = ref.value_and_grad(**b.arrays)
    assert drawn or float(_np(loss)) == pytest.approx(float(ref_loss), rel=1e-10, abs=1e-12)
    assert sorted(grads) == sorted(ref_grads)
    for w in ref_grads:
        got = _np(grads[w])
        assert got.shape == np.shape(ref_grads[w]), w
        np.testing.assert_allclose(got, ref_grads[w], rtol=1e-9, atol=1e-11,
                                   err_msg=f"d{w} of {name} on {backend}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("name", "case"), [c for c in harness.ALL_CASES
                                            if c.values[0] in ("matmul", "tanh", "relu",
                                                               "softmax_cross_entropy",
                                                               "layer_norm", "mean")])
def test_float32_stays_float32(backend, name, case):
    _skip_missing(backend)
    b, ref = harness.compiled(name, case, "float32")
    _, fn = _compiled(backend, name, case, "float32")
    loss, grads = fn.value_and_grad(**_arrays(backend, b.arrays))
    ref_loss, ref_grads = ref.value_and_grad(**b.arrays)
    assert "float32" in str(loss.dtype)
    assert float(_np(loss)) == pytest.approx(float(ref_loss), rel=1e-4, abs=1e-5)
    for w in ref_grads:
        assert "float32" in str(grads[w].dtype), f"d{w} is {grads[w].dtype}"
        np.testing.assert_allclose(_np(grads[w]), ref_grads[w], rtol=1e-4, atol=1e-5)


def test_required_and_missing_ops_are_the_declared_ones():
    """Every registered op is written by each backend unless in its WITHOUT set, and
    exactly the ops of that set have no code: adding an op asks for its backends' code
    here. Both write convolution, pooling and batch norm; JAX writes dropout too."""
    names = {op.name for op in sb.ops.all_ops()} - {"swish"}
    for backend in BACKENDS:
        missing = {n for n in names if not backends.has_code(n, backend)}
        assert missing == WITHOUT[backend], (backend, sorted(missing ^ WITHOUT[backend]))
        assert not (REQUIRED & missing)
    assert all(backends.has_code(n, "jax") for n in CONV | STATEFUL)
    assert all(backends.has_code(n, "array_api") for n in CONV | {"batch_norm"})


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
ALLOWED = {"numpy": {"numpy"}, "jax": {"jax"}, "array_api": set()}


def _imported(src: str) -> set[str]:
    """Top-level packages a module imports, the standard library's left out."""
    found = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            found.add((node.module or "").split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names}


@pytest.mark.parametrize("backend", ["numpy", *BACKENDS])
def test_generated_modules_pass_ruff_and_import_only_their_library(backend, tmp_path):
    files = []
    for name, g in MODELS.items():
        for dtype in ("float64", "float32"):
            for optimize in (True, False):
                src = sb.source(g, dtype=dtype, optimize=optimize, backend=backend)
                files.append((f"{name}_{dtype}_{optimize}.py", src))
        for opt in ("sgd", "adam"):
            files.append((f"{name}_step_{opt}.py", sb.train_step(g, optimizer=opt,
                                                                 backend=backend)))
    # convolution and max pooling; with batch norm (and dropout, but in the array API)
    cnn = sb.models.cnn((1, 6, 6), channels=(2, 3), hidden=(4,), classes=3)
    bn = sb.models.cnn((1, 6, 6), channels=(2, 3), hidden=(4,), classes=3, batch_norm=True,
                       dropout=0.0 if backend == "array_api" else 0.25)
    files += [("cnn_float64.py", sb.source(cnn, backend=backend)),
              ("cnn_float32.py", sb.source(cnn, dtype="float32", backend=backend)),
              ("cnn_step_adam.py", sb.train_step(cnn, optimizer="adam", backend=backend)),
              ("cnn_bn.py", sb.source(bn, backend=backend)),
              ("cnn_bn_step_adam.py", sb.train_step(bn, optimizer="adam", backend=backend))]
    scalar = sb.parse("L = (w*x - y)**2", params=["w"])  # no weight drawn at random
    files.append(("scalar_step.py", sb.train_step(scalar, optimizer="momentum",
                                                  backend=backend)))
    for fname, src in files:
        assert _imported(src) == ALLOWED[backend], fname
        (tmp_path / fname).write_text(src)
        if backend != "numpy":  # one statement per node, commented with its gradient
            assert "  # dL/dW1 via " in src or "  # dL/dw via " in src, fname
    assert_ruff_clean(tmp_path, *[f for f, _ in files])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model", list(MODELS))
def test_models_match_numpy(backend, model):
    """The lessons' models: loss and gradients equal NumPy's (float64)."""
    _skip_missing(backend)
    g = MODELS[model]
    rng = np.random.default_rng(0)
    params = sb.compile(g, optimizer="sgd").init_params(0)
    data = {"X": rng.standard_normal((7, 6)), "y": rng.integers(0, 3, 7)}
    arrays = {**{k: np.array(v) for k, v in params.items()}, **data}
    loss, grads = sb.compile(g).value_and_grad(**arrays)
    got_loss, got = sb.compile(g, backend=backend).value_and_grad(**_arrays(backend, arrays))
    assert float(_np(got_loss)) == pytest.approx(loss, rel=1e-12)
    for k in grads:
        np.testing.assert_allclose(_np(got[k]), grads[k], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("backend", BACKENDS)
def test_transformer_classifier_matches_numpy(backend):
    """Embedding (take and its scatter-add gradient), attention's einsums, layer norm,
    softmax: the transformer classifier's loss and gradients equal NumPy's."""
    _skip_missing(backend)
    g = sb.models.transformer_classifier(vocab=12, seq_len=6, d_model=8, heads=2, d_ff=16,
                                         layers=1, classes=2)
    rng = np.random.default_rng(0)
    arrays = {**{k: np.array(v) for k, v in sb.compile(g, optimizer="sgd").init_params(0).items()},
              "X": rng.integers(0, 12, (5, 6)), "y": rng.integers(0, 2, 5)}
    loss, grads = sb.compile(g).value_and_grad(**arrays)
    got_loss, got = sb.compile(g, backend=backend).value_and_grad(**_arrays(backend, arrays))
    assert float(_np(got_loss)) == pytest.approx(loss, rel=1e-12)
    for k in grads:
        np.testing.assert_allclose(_np(got[k]), grads[k], rtol=1e-10, atol=1e-13, err_msg=k)


def test_array_api_code_runs_on_numpy_arrays_too():
    """NumPy 2's arrays have __array_namespace__: the same module takes them."""
    fn = sb.compile(sb.parse("L = (w*x - y)**2"), wrt=["w"], backend="array_api")
    loss, grads = fn.value_and_grad(w=np.asarray(2.0), x=np.asarray(3.0), y=np.asarray(10.0))
    assert float(loss) == 16.0 and float(grads["w"]) == -24.0
    with pytest.raises(TypeError, match="arrays of an array API library"):
        fn.value_and_grad(w=2.0, x=3.0, y=10.0)


# -- training with JAX ---------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(("optimizer", "dtype"), [("sgd", "float64"), ("adam", "float64"),
                                                  ("momentum", "float32")])
def test_jax_train_step_trains_digits_like_numpy(optimizer, dtype):
    """The digits MLP: k steps of the JAX step from the NumPy step's initial parameters
    give the NumPy step's losses (float64 to 1e-9, float32 to 1e-4) and parameters."""
    _skip_missing("jax")
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float64)
    g = sb.models.mlp([64, 32, 10])
    lr = {"sgd": 0.5, "momentum": 0.1, "adam": 0.01}[optimizer]
    ref = sb.compile(g, optimizer=optimizer, lr=lr, dtype=dtype)
    fn = sb.compile(g, optimizer=optimizer, lr=lr, dtype=dtype, backend="jax")
    params = ref.init_params(0)
    p_jax = {k: np.array(v) for k, v in params.items()}
    state, s_jax = ref.init_state(params), fn.init_state(p_jax)
    rtol = 1e-9 if dtype == "float64" else 1e-4
    losses = []
    for step in range(30):
        i = np.arange(step * 64, step * 64 + 64) % len(X)
        want = ref.train_step(params, state, X=X[i], y=y[i])
        loss, p_jax, s_jax = fn.train_step(p_jax, s_jax, X=X[i], y=y[i])
        assert float(loss) == pytest.approx(float(want), rel=rtol), f"step {step}"
        losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0]
    for k in params:
        np.testing.assert_allclose(np.asarray(p_jax[k]), params[k], rtol=rtol * 100,
                                   atol=rtol)
        assert str(p_jax[k].dtype) == dtype


@pytest.mark.parametrize("padding", [0, 1])
@pytest.mark.parametrize("pool", ["max_pool2d", "avg_pool2d"])
def test_jax_pool_ties_route_like_numpy(pool, padding):
    """Windows full of ties (integer images, a constant negative channel beside the -inf
    padding, a constant block), overlapping windows: the JAX pooling gradient goes to the
    same entries as NumPy's, exactly; max pooling's to the first arg-max (row-major) of
    each window, the first entry of a constant window that is no padding."""
    _skip_missing("jax")
    g = sb.Graph()
    x = g.param("x", shape=(2, 2, 6, 6))
    y = getattr(sb, pool)(x, k=3, stride=2, padding=padding)
    g.output("L", sb.sum(y * y))
    rng = np.random.default_rng(3)
    xs = rng.integers(-2, 2, (2, 2, 6, 6)).astype(np.float64)
    xs[0, 0] = -1.0  # one channel constant and negative: every window a tie
    xs[1, 1, :3, :3] = 5.0
    want = sb.compile(g).value_and_grad(x=xs)[1]["x"]
    got = sb.compile(g, backend="jax").value_and_grad(x=xs)[1]["x"]
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12, atol=1e-12)
    if pool == "max_pool2d":  # window o starts at 2o - padding; its first real entry
        first = sorted({max(2 * o - padding, 0) for o in range((6 + 2 * padding - 3) // 2 + 1)})
        hit = np.zeros((6, 6), bool)
        hit[np.ix_(first, first)] = True
        np.testing.assert_array_equal(np.asarray(got)[0, 0] != 0, hit)


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_jax_train_step_trains_a_cnn_like_numpy(optimizer):
    """A small CNN (two conv blocks, one padded, max pooling, a dense layer) on the 8x8
    digits: k steps of the JAX step from the NumPy step's initial parameters give the
    NumPy step's losses step by step (float64, to 1e-9) and parameters."""
    _skip_missing("jax")
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).reshape(-1, 1, 8, 8)
    g = sb.models.cnn((1, 8, 8), channels=(4, 6), hidden=(16,), classes=10)
    lr = {"sgd": 0.3, "adam": 0.02}[optimizer]
    ref = sb.compile(g, optimizer=optimizer, lr=lr)
    fn = sb.compile(g, optimizer=optimizer, lr=lr, backend="jax")
    params = ref.init_params(0)
    p_jax = {k: np.array(v) for k, v in params.items()}
    state, s_jax = ref.init_state(params), fn.init_state(p_jax)
    losses = []
    for step in range(30):
        i = np.arange(step * 32, step * 32 + 32) % len(X)
        want = ref.train_step(params, state, X=X[i], y=y[i])
        loss, p_jax, s_jax = fn.train_step(p_jax, s_jax, X=X[i], y=y[i])
        assert float(loss) == pytest.approx(float(want), rel=1e-9), f"step {step}"
        losses.append(float(loss))
    assert losses[-1] < 0.8 * losses[0]
    for k in params:
        np.testing.assert_allclose(np.asarray(p_jax[k]), params[k], rtol=1e-7, atol=1e-9,
                                   err_msg=k)
        assert str(p_jax[k].dtype) == "float64"


def test_array_api_train_step_matches_numpy_on_array_api_strict():
    """The array API training module on array_api_strict: the NumPy step's losses and
    parameters, step after step; init_params(xp) makes arrays of that namespace."""
    _skip_missing("array_api")
    import array_api_strict as xp

    g = sb.models.mlp([6, 5, 3])
    ref = sb.compile(g, optimizer="momentum", lr=0.2)
    fn = sb.compile(g, optimizer="momentum", lr=0.2, backend="array_api")
    fresh = fn.init_params(0, xp=xp)
    assert type(fresh["W1"]).__module__.startswith("array_api_strict")
    assert _np(fresh["W1"]).std() > 0 and float(_np(fresh["b1"]).max()) == 0
    params = ref.init_params(0)
    p_xp = {k: xp.asarray(np.array(v)) for k, v in params.items()}
    state, s_xp = ref.init_state(params), fn.init_state(p_xp)
    rng = np.random.default_rng(1)
    for step in range(5):
        X, y = rng.standard_normal((8, 6)), rng.integers(0, 3, 8)
        want = ref.train_step(params, state, X=X, y=y)
        loss, p_xp, s_xp = fn.train_step(p_xp, s_xp, X=xp.asarray(X), y=xp.asarray(y))
        assert float(_np(loss)) == pytest.approx(want, rel=1e-12), f"step {step}"
    for k in params:
        np.testing.assert_allclose(_np(p_xp[k]), params[k], rtol=1e-11, atol=1e-13)


def test_jax_init_params_and_update_are_functional():
    _skip_missing("jax")
    fn = sb.compile(sb.models.mlp([4, 3, 2]), optimizer="momentum", backend="jax")
    p = fn.init_params(0)
    assert sorted(p) == ["W1", "W2", "b1", "b2"] and float(np.abs(np.asarray(p["b1"])).max()) == 0
    assert np.asarray(p["W1"]).std() > 0 and str(p["W1"].dtype) == "float64"
    grads = {k: np.ones(np.shape(v)) for k, v in p.items()}
    state = fn.init_state(p)
    new, state2 = fn.update(p, grads, state, lr=0.5)
    np.testing.assert_allclose(np.asarray(new["W1"]), np.asarray(p["W1"]) - 0.5)
    assert float(np.asarray(state["v"]["W1"]).max()) == 0  # the old state is unchanged
    assert float(np.asarray(state2["v"]["W1"]).min()) == 1


# -- bad input -------------------------------------------------------------------------------
def test_unknown_backend_is_one_clear_error(capsys):
    with pytest.raises(sb.CodegenError, match="unknown backend 'tensorflow'; use one of numpy, jax"):
        sb.source(sb.models.mlp([4, 3, 2]), backend="tensorflow")
    assert main(["codegen", "mlp:4-3-2", "--backend", "cupyy"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown backend 'cupyy'" in err


def test_backend_not_installed_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "jax" else real(name, *a))
    with pytest.raises(sb.CodegenError, match=r"pip install 'symbackprop\[jax\]'"):
        sb.compile(sb.models.mlp([4, 3, 2]), backend="jax")
    # generating the source needs no JAX
    assert "import jax" in sb.source(sb.models.mlp([4, 3, 2]), backend="jax")


@pytest.mark.parametrize(("backend", "op"), [("array_api", "dropout_mask")])
def test_op_without_code_names_the_op_and_backend(backend, op, capsys, tmp_path):
    """The first op of the graph without code for the backend, in one line: the array API
    standard has no random numbers, so no dropout (it has convolution and batch norm)."""
    g = sb.models.cnn((1, 6, 6), channels=(2,), hidden=(4,), classes=3, batch_norm=True,
                      dropout=0.25)
    with pytest.raises(sb.CodegenError, match=f"op '{op}' has no {backend} code"):
        sb.source(g, backend=backend)
    spec = tmp_path / "net.json"
    sb.save(g, str(spec))
    assert main(["codegen", str(spec), "--backend", backend]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"op '{op}' has no {backend} code" in err
    assert "no random numbers" in err


def test_einsum_that_is_no_product_is_a_broadcast_sum_in_array_api():
    g = sb.Graph()
    a = g.param("a", shape=(3, 4))
    g.output("L", sb.sum(sb.einsum("ij->ji", a) * sb.einsum("ij->ji", a)))
    assert "_einsum('ij->ji', a)" in sb.source(g, backend="array_api")
    assert "jnp.einsum" in sb.source(g, backend="jax")


# -- the JAX training script: data parallelism through jax.sharding (issue 15, point 2) -----
def _run_script(folder, script, devices, *args, timeout=240):
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "XLA", "JAX"))}
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, script, *args], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.slow
@pytest.mark.parametrize(("dtype", "optimizer", "rtol"), [("float32", "adam", 1e-5),
                                                          ("float64", "sgd", 1e-12)])
def test_jax_script_on_4_devices_equals_one_device(tmp_path, dtype, optimizer, rtol):
    """train-script --backend jax: every global batch split over 4 simulated CPU devices
    (jax.sharding) gives the parameters of the one-device run (float32 to 1e-5 relative,
    float64 to 1e-12); a batch the devices do not divide is one line, exit 2."""
    _skip_missing("jax")
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    np.savez(tmp_path / "digits.npz", X=X[:640] / 16.0, y=y[:640])
    spec = tmp_path / "net.json"
    sb.save(sb.models.mlp([64, 32, 10]), str(spec))
    assert main(["train-script", str(spec), "--backend", "jax", "--optimizer", optimizer,
                 "--lr", "0.05", "--batch-size", "64", "--dtype", dtype,
                 "-o", str(tmp_path / "train.py")]) == 0
    src = (tmp_path / "train.py").read_text()
    assert _imported(src) == {"jax", "numpy"} and "jax.sharding.Mesh" in src
    assert_ruff_clean(tmp_path, "train.py")
    params = {}
    for devices in (1, 4):
        r = _run_script(tmp_path, "train.py", devices, "--data", "digits.npz", "--epochs", "2",
                        "--out", f"p{devices}.npz")
        assert r.returncode == 0, r.stderr[-3000:]
        assert "epoch 2/2  loss" in r.stdout and f"{devices} device(s)" in r.stdout
        with np.load(tmp_path / f"p{devices}.npz") as f:
            params[devices] = {k: f[k] for k in f.files if k.startswith("params/")}
    assert sorted(params[1]) == ["params/W1", "params/W2", "params/b1", "params/b2"]
    for k, v in params[1].items():
        assert v.dtype == np.dtype(dtype)
        scale = float(np.abs(v).max())
        np.testing.assert_allclose(params[4][k], v, rtol=0, atol=rtol * scale, err_msg=k)
    r = _run_script(tmp_path, "train.py", 4, "--data", "digits.npz", "--batch-size", "30")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "--batch-size 30 does not split over the 4 devices: use a multiple of 4" in r.stderr


def test_train_script_backend_without_a_script_is_one_line(capsys):
    assert main(["train-script", "mlp:4-3-2", "--backend", "array_api"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--backend array_api writes no training script" in err


def test_options_of_the_numpy_backend_alone_are_refused_in_one_line(capsys):
    """Mixed precision is numpy's, jax's, torch's and cupy's (tests/test_*mixed.py), MPI numpy's:
    another backend says so instead of ignoring them."""
    g = sb.models.mlp([4, 3, 2])
    with pytest.raises(ValueError, match="precision 'mixed' is written for the numpy, jax, "
                       "torch and cupy"):
        sb.train_step(g, precision="mixed", backend="array_api")
    with pytest.raises(ValueError, match="bfloat16.*array_api has none"):
        sb.train_step(g, precision="bfloat16", backend="array_api")
    assert "jnp.float32" in sb.train_step(g, precision="float32", backend="jax")
    for extra in (["--distributed", "mpi"],):
        assert main(["train-script", "mlp:4-3-2", "--backend", "jax", *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and ("numpy" in err), err
