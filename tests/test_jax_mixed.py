"""Mixed precision on the JAX backend (issue 15, point 3): ``precision="mixed"`` (float16
with dynamic loss scaling inside the jitted step) and ``"bfloat16"`` (no scaling), float32
master parameters and optimizer state, NumPy's plan (tests/test_mixed.py) written
functionally."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import symbackprop as sb
from symbackprop.errors import CodegenError

jax = pytest.importorskip("jax", reason="the jax backend needs JAX: pip install 'symbackprop[jax]'")
jnp = jax.numpy

ROOT = Path(__file__).resolve().parent.parent
RUFF = Path(sys.executable).with_name("ruff")
SIZES = [16, 12, 4]
NAMES = ["W1", "b1", "W2", "b2"]


def _mlp(sizes=SIZES, **kw):
    return sb.models.mlp(sizes, activation=kw.pop("activation", "relu"),
                         loss="softmax_cross_entropy", **kw)


def _batch(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return {"X": rng.normal(size=(n, SIZES[0])), "y": rng.integers(0, SIZES[-1], n)}


def _host(tree):
    """NumPy copies of a state or parameter dict (the JAX step donates the buffers)."""
    if isinstance(tree, dict):
        return {k: _host(v) for k, v in tree.items()}
    return np.array(tree, copy=True)


def _equal(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return np.asarray(a).dtype == np.asarray(b).dtype and np.array_equal(a, b)


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_masters_float32_and_step_in_float16(optimizer):
    step = sb.compile(_mlp(), optimizer=optimizer, precision="mixed", backend="jax")
    assert step.module.DTYPE is jnp.float16 and step.module.MASTER is jnp.float32
    params = step.init_params(0)
    state = step.init_state(params)
    assert {p.dtype for p in params.values()} == {np.dtype(np.float32)}
    assert (state["scale"], state["good_steps"], state["skipped"]) == (2.0**16, 0, 0)
    b = _batch()
    loss, grads = step.value_and_grad(**b, **params)
    assert loss.dtype == np.float32  # the loss in float32, the gradients in float16
    assert {g.dtype for g in grads.values()} == {np.dtype(np.float16)}
    assert step.forward(**b, **params)["logits"].dtype == np.float16
    loss, params, state = step.train_step(params, state, **b)
    assert {p.dtype for p in params.values()} == {np.dtype(np.float32)}
    for v in state.values():
        if isinstance(v, dict):
            assert {a.dtype for a in v.values()} == {np.dtype(np.float32)}
    assert int(state["good_steps"]) == 1 and float(state["scale"]) == 2.0**16


def test_scaled_gradients_are_the_seed_times_the_plain_ones():
    """The scale enters as the seed of backprop: gradients times 2**k, exactly (a power of
    two changes no float16 significand while nothing overflows or flushes)."""
    step = sb.compile(_mlp(), optimizer="sgd", precision="mixed", backend="jax")
    params = step.init_params(0)
    _, plain = step.value_and_grad(**_batch(), **params)
    _, scaled = step.module.value_and_grad(**_batch(), **params, scale=1024.0)
    for name in NAMES:
        p, s = np.asarray(plain[name], np.float32), np.asarray(scaled[name], np.float32)
        keep = np.abs(p) > 2.0**-14  # float16's normal range, where scaling is exact
        np.testing.assert_array_equal(s[keep], p[keep] * 1024)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_overflow_skips_the_step_and_halves_the_scale(optimizer):
    step = sb.compile(_mlp(), optimizer=optimizer, precision="mixed", backend="jax")
    params = step.init_params(0)
    state = step.init_state(params)
    _, params, state = step.train_step(params, state, **_batch())  # one good step first
    state = {**state, "scale": 2.0**40}  # the gradients times 2**40 overflow float16
    before, state_before = _host(params), _host(state)
    loss, params, state = step.train_step(params, state, **_batch(seed=1))
    assert np.isfinite(loss)
    assert _equal(_host(params), before)  # not a bit changed, nor the optimizer's state
    opt = {k: v for k, v in _host(state).items() if k not in ("scale", "good_steps", "skipped")}
    assert _equal(opt, {k: v for k, v in state_before.items()
                        if k not in ("scale", "good_steps", "skipped")})
    assert float(state["scale"]) == 2.0**39
    assert (int(state["good_steps"]), int(state["skipped"])) == (0, 1)
    # the scale halves until the gradients fit, then the step updates
    for _ in range(40):
        _, params, state = step.train_step(params, state, **_batch(seed=1))
        if int(state["good_steps"]):
            break
    assert float(state["scale"]) < 2.0**39 and int(state["good_steps"]) == 1
    assert not _equal(_host(params), before)


def test_nan_loss_changes_nothing_not_even_the_scale():
    """NumPy's step raises on a nan loss before changing anything; inside jax.jit nothing
    can raise, so the step returns the nan loss and leaves every array as it was."""
    step = sb.compile(_mlp(), optimizer="adam", precision="mixed", backend="jax")
    params = step.init_params(0)
    state = step.init_state(params)
    b = _batch()
    b["X"][0, 0] = np.nan
    before, state_before = _host(params), _host(state)
    loss, params, state = step.train_step(params, state, **b)
    assert np.isnan(loss)
    assert _equal(_host(params), before)
    assert _equal({k: v for k, v in _host(state).items() if isinstance(v, dict)},
                  {k: v for k, v in state_before.items() if isinstance(v, dict)})
    assert (float(state["scale"]), int(state["good_steps"]), int(state["skipped"])) == \
        (2.0**16, 0, 0)


def test_scale_doubles_after_growth_interval_good_steps():
    step = sb.compile(_mlp(), optimizer="sgd", lr=0.01, precision="mixed", backend="jax",
                      growth_interval=3)
    params = step.init_params(0)
    state = step.init_state(params)
    seen = []
    for i in range(7):
        _, params, state = step.train_step(params, state, **_batch(seed=i))
        seen.append((float(state["scale"]), int(state["good_steps"])))
    assert seen == [(2.0**16, 1), (2.0**16, 2), (2.0**17, 0), (2.0**17, 1), (2.0**17, 2),
                    (2.0**18, 0), (2.0**18, 1)]
    assert int(state["skipped"]) == 0
    with pytest.raises(ValueError, match="growth_interval"):
        sb.train_step(_mlp(), precision="mixed", backend="jax", growth_interval=0)


def _digits():
    datasets = pytest.importorskip("sklearn.datasets", reason="needs scikit-learn")
    d = datasets.load_digits()
    return d.data / 16.0, d.target


def test_agrees_with_numpy_mixed_step():
    """From the same float32 masters, the JAX step's loss and scaled float16 gradients are
    NumPy's (both cast the masters to float16, accumulate the products in float32 and
    round once; XLA may round elementwise chains in another order: one float16 ulp,
    2**-10 of the largest entry, is the tolerance, though the values agree exactly on
    this machine). Over 30 SGD steps the masters stay within 1e-5 of the largest (the
    float32 update is the same arithmetic; an ulp of difference in a master can round its
    float16 copy the other way). Adam's steps are compared after one step only: it divides
    by sqrt(v), so one float16 ulp in a tiny gradient moves a parameter by up to lr."""
    X, y = _digits()
    g = _mlp([64, 32, 10])
    for optimizer, steps in (("sgd", 30), ("adam", 1)):
        ref = sb.compile(g, optimizer=optimizer, lr=0.01, precision="mixed")
        jstep = sb.compile(g, optimizer=optimizer, lr=0.01, precision="mixed", backend="jax")
        params = ref.init_params(0)
        state = ref.init_state(params)
        jparams = {k: jnp.asarray(v) for k, v in params.items()}
        jstate = jstep.init_state(jparams)
        loss, _, grads = ref.module.scaled_grads(params, state, X[:32], y[:32], 2.0**16)
        jloss, jgrads = jstep.module.value_and_grad(X[:32], *(jparams[k] for k in NAMES),
                                                    y[:32], scale=2.0**16)
        assert abs(float(jloss) - loss) <= 1e-6 * abs(loss)
        for name in NAMES:
            a = grads[name].astype(np.float32)
            assert np.asarray(jgrads[name]).dtype == np.float16
            diff = np.abs(np.asarray(jgrads[name], np.float32) - a).max()
            assert diff <= 2.0**-10 * np.abs(a).max(), (name, diff)
        for i in range(steps):
            rows = slice(32 * i, 32 * i + 32)
            loss = ref.train_step(params, state, X=X[rows], y=y[rows])
            jloss, jparams, jstate = jstep.train_step(jparams, jstate, X=X[rows], y=y[rows])
            assert abs(float(jloss) - loss) <= 1e-5 * abs(loss), (optimizer, i)
        for name in NAMES:
            diff = np.abs(np.asarray(jparams[name]) - params[name]).max()
            assert diff <= 1e-5 * np.abs(params[name]).max(), (optimizer, name, diff)
        assert float(jstate["scale"]) == state["scale"]


def test_underflow_counts_near_numpy_and_scaling_rescues_them():
    """The lesson of tests/test_mixed.py on JAX: in a 12-layer sigmoid network the first
    layers' gradients flush to zero in float16 without loss scaling and none do with it.
    The counts are near NumPy's on the same masters, not equal: layers 3 to 5 hold the
    entries at the edge of float16's range, where XLA, which may keep an elementwise
    chain (the sigmoid's derivative times the gradient) in float32 and round once, and
    NumPy, which rounds after every operation, can land on either side of zero (here
    240 against 211 of the 792 entries)."""
    g = _mlp([8] + [8] * 12 + [3], activation="sigmoid")
    ref = sb.compile(g, optimizer="sgd", precision="mixed")
    jstep = sb.compile(g, optimizer="sgd", precision="mixed", backend="jax")
    params = ref.init_params(0)
    state = ref.init_state(params)
    rng = np.random.default_rng(0)
    batch = {"X": rng.normal(size=(16, 8)), "y": rng.integers(0, 3, 16)}
    counts = ref.underflow(params, state, **batch)
    jparams = {k: jnp.asarray(v) for k, v in params.items()}
    jcounts = jstep.underflow(jparams, jstep.init_state(jparams), **batch)
    assert jcounts.keys() == counts.keys()
    for name, (entries, nonzero, plain, scaled) in jcounts.items():
        assert (entries, nonzero) == counts[name][:2]
        assert scaled == counts[name][3] == 0  # with the scale 2**16: none
    for name in ("W1", "W2"):  # every entry of the first two layers flushes in both
        assert jcounts[name][2] == counts[name][2] == 64
    total, ref_total = (sum(c[2] for c in cs.values()) for cs in (jcounts, counts))
    assert abs(total - ref_total) <= 0.25 * ref_total, (total, ref_total)


def test_bfloat16_masters_float32_no_scaler_and_trains():
    step = sb.compile(_mlp(), optimizer="adam", lr=0.01, precision="bfloat16", backend="jax")
    assert step.module.DTYPE is jnp.bfloat16 and not hasattr(step.module, "LOSS_SCALE")
    params = step.init_params(0)
    state = step.init_state(params)
    assert set(state) == {"t", "m", "v"}  # no loss scaler: bfloat16 has float32's range
    b = _batch(32)
    loss, grads = step.value_and_grad(**b, **params)
    assert loss.dtype == np.float32
    assert {g.dtype for g in grads.values()} == {jnp.dtype(jnp.bfloat16)}
    first = float(loss)
    for _ in range(30):
        loss, params, state = step.train_step(params, state, **b)
    assert {p.dtype for p in params.values()} == {np.dtype(np.float32)}
    assert float(loss) < 0.5 * first
    counts = step.underflow(params, state, **b)
    assert all(c[2] == c[3] for c in counts.values())  # no scale: with = without


def test_generated_mixed_modules_pass_ruff_and_import_only_jax(tmp_path):
    if not RUFF.exists():
        pytest.skip("ruff is not installed")
    g = _mlp()
    sources = {f"{p}_{o}": sb.train_step(g, optimizer=o, precision=p, backend="jax")
               for p in ("mixed", "bfloat16") for o in ("sgd", "adam")}
    sources["script"] = sb.training_script(g, optimizer="adam", precision="mixed",
                                           backend="jax")
    for name, src in sources.items():
        (tmp_path / f"{name}.py").write_text(src)
        imported = {a.name.split(".")[0] for node in ast.walk(ast.parse(src))
                    if isinstance(node, ast.Import) for a in node.names}
        assert imported <= {"jax", "functools", "numpy", "argparse", "csv", "json", "os", "sys",
                            "tempfile", "time", "zipfile"}, (name, imported)
        assert "numpy" not in imported or name == "script"
    # B905 (zip without strict=): the script carries the NumPy script's load_data verbatim
    r = subprocess.run([str(RUFF), "check", "--no-cache", "--select", "E,F,W,B,I",
                        "--ignore", "B905",
                        "--line-length", "200", str(tmp_path)], capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 0, r.stdout


def test_refusals():
    g = _mlp()
    with pytest.raises(TypeError, match="precision='mixed' without optimizer"):
        sb.compile(g, precision="mixed", backend="jax")
    with pytest.raises(TypeError, match="precision='bfloat16' without optimizer"):
        sb.compile(g, precision="bfloat16", backend="jax")
    mse = sb.models.mlp([4, 3, 2], loss="mse")
    with pytest.raises(CodegenError, match="no seed statement.*softmax_cross_entropy"):
        sb.train_step(mse, precision="mixed", backend="jax")
    # unlike NumPy's, which needs the planned step, the plain step scales its seed too
    step = sb.compile(g, optimizer="sgd", precision="mixed", backend="jax", optimize=False)
    assert "dL = jnp.asarray(scale, MASTER)" in step.source
    params = step.init_params(0)
    loss, params, state = step.train_step(params, step.init_state(params), **_batch())
    assert np.isfinite(loss) and int(state["good_steps"]) == 1
    # NumPy still refuses bfloat16, naming the backends that have it: JAX and torch now
    with pytest.raises(ValueError, match=r"bfloat16.*\(jax, torch\)"):
        sb.compile(g, optimizer="sgd", precision="bfloat16")
    # plain precisions are the plain step's
    assert "DTYPE = jnp.float32" in sb.train_step(g, precision="float32", backend="jax")


def _python(*args, devices=None):
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"}
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=300, check=False, env=env)


def _cli(*args):
    return _python("-c", "import sys; from symbackprop.cli import main; sys.exit(main())",
                   *args)


def _data(path, n=96, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, SIZES[0]))
    np.savez(path, X=X, y=X[:, :SIZES[-1]].argmax(axis=1).astype(np.int64))


@pytest.mark.slow
def test_script_checkpoints_the_scaler_and_resumes_bit_identical(tmp_path):
    """The data-parallel script with --precision mixed: the scaler's state (replicated,
    as the optimizer's) is in the checkpoint, and 2 epochs then --resume to 4 is the
    4-epoch run to the bit; on 4 simulated devices the same run stays within 1e-3 of the
    largest parameter (the devices add partial float16 products in another order)."""
    r = _cli("train-script", "mlp:16-12-4", "--loss", "softmax_cross_entropy", "--optimizer",
             "adam", "--precision", "mixed", "--growth-interval", "5", "--batch-size", "16",
             "--backend", "jax", "-o", str(tmp_path / "train.py"))
    assert r.returncode == 0, r.stderr
    _data(tmp_path / "data.npz")
    script = [str(tmp_path / "train.py"), "--data", str(tmp_path / "data.npz")]
    full = _python(*script, "--epochs", "4", "--out", str(tmp_path / "full.npz"))
    assert full.returncode == 0, full.stderr
    lines = re.findall(r"float16 gradients: \d+ of \d+ nonzero .* with scale (\S+); (\d+) steps "
                       r"skipped", full.stdout)
    assert len(lines) == 4, full.stdout
    half = _python(*script, "--epochs", "2", "--out", str(tmp_path / "half.npz"))
    assert half.returncode == 0, half.stderr
    rest = _python(*script, "--epochs", "4", "--resume", str(tmp_path / "half.npz"),
                "--out", str(tmp_path / "resumed.npz"))
    assert rest.returncode == 0, rest.stderr
    with np.load(tmp_path / "full.npz") as a, np.load(tmp_path / "resumed.npz") as b:
        assert {"state/scale", "state/good_steps", "state/skipped"} <= set(a.files)
        for k in a.files:
            if k != "progress/rng":
                np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        # growth interval 5 over 24 steps: the scale moved, and the log says where to
        assert float(a["state/scale"]) == float(lines[-1][0])
        assert int(a["state/skipped"]) == int(lines[-1][1])
    losses = [ln.split("  ")[1] for ln in (half.stdout + rest.stdout).splitlines()
              if ln.startswith("epoch")]
    assert losses == [ln.split("  ")[1] for ln in full.stdout.splitlines()
                      if ln.startswith("epoch")]
    four = _python(*script, "--epochs", "4", "--out", str(tmp_path / "four.npz"),
                devices=4)
    assert four.returncode == 0, four.stderr
    assert "4 device(s)" in four.stdout
    with np.load(tmp_path / "full.npz") as a, np.load(tmp_path / "four.npz") as b:
        for k in [k for k in a.files if k.startswith("params/")]:
            assert np.abs(a[k] - b[k]).max() <= 1e-3 * np.abs(a[k]).max(), k


def test_cli_bfloat16_script_and_refusals(tmp_path, capsys):
    from symbackprop.cli import main
    out = tmp_path / "t.py"
    assert main(["train-script", "mlp:4-3-2", "--loss", "softmax_cross_entropy",
                 "--backend", "jax", "--precision", "bfloat16", "-o", str(out)]) == 0
    assert "DTYPE = jnp.bfloat16" in out.read_text()
    capsys.readouterr()
    # array_api writes no script: its training step (codegen --optimizer) refuses mixed
    for args, words in [(["codegen", "--optimizer", "sgd", "--backend", "array_api",
                          "--precision", "mixed"], "numpy, jax, torch and cupy backends only"),
                        (["train-script", "--backend", "array_api", "--precision", "mixed"],
                         "--backend array_api writes no training script"),
                        (["train-script", "--precision", "bfloat16"],
                         "needs a backend that has bfloat16"),
                        (["train-script", "--backend", "jax", "--loss", "mse", "--precision",
                          "mixed"], "softmax_cross_entropy")]:
        assert main([args[0], "mlp:4-3-2", *args[1:]]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, err


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["mixed", "bfloat16"])
def test_digits_mixed_on_jax_reach_97_percent(tmp_path, precision):
    """examples/digits/mixed.py --backend jax: the digits MLP (Adam, lr 0.01, 50 epochs of
    batch 32) in float16 with loss scaling, and in bfloat16, to >= 97% test accuracy."""
    pytest.importorskip("sklearn", reason="the digits need scikit-learn")
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "digits" / "mixed.py"),
                        "--out", str(tmp_path), "--backend", "jax", "--precision", precision],
                       capture_output=True, text=True, timeout=600, check=False, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    acc = float(re.findall(r"test accuracy ([0-9.]+)", r.stdout)[-1])
    assert acc >= 0.97, r.stdout[-2000:]
    half = "bfloat16" if precision == "bfloat16" else "float16"
    assert f"flush to zero in {half} without loss scaling" in r.stdout
    if precision == "mixed":  # loss scaling rescues most of what float16 would flush
        found = re.findall(r"last epoch: (\d+) of (\d+) gradient entries flush to zero in "
                           r"float16 without loss scaling, (\d+) with", r.stdout)[-1]
        flushed, _, scaled = map(int, found)
        assert scaled < flushed
    else:  # bfloat16 keeps float32's range: next to nothing flushes (a sum may cancel)
        flushed, nonzero = map(int, re.findall(r"last epoch: (\d+) of (\d+)", r.stdout)[-1])
        assert flushed <= nonzero // 100


def test_mixed_with_batch_norm_and_dropout_takes_their_state():
    """No longer refused: the step takes and returns the running statistics (float32)
    and takes dropout's key (tests/test_mixed_bn.py checks the numbers)."""
    g = sb.models.cnn(input_shape=(1, 8, 8), channels=(4,), hidden=(8,), classes=3,
                      batch_norm=True, dropout=0.25)
    for precision in ("mixed", "bfloat16"):
        src = sb.train_step(g, optimizer="sgd", precision=precision, backend="jax")
        assert "def train_step(params, state, X, y, lr=LR, running=None, rng=0):" in src
        assert "return loss, params, state, running" in src
        assert "'bn1.mean': jnp.zeros(4, MASTER)" in src
