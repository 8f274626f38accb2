"""Mixed precision (issue 15, point 3): float16 forward and backward, float32 master
parameters and optimizer state, dynamic loss scaling as torch.amp.GradScaler."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import symbackprop as sb
from symbackprop.errors import CodegenError

ROOT = Path(__file__).resolve().parent.parent
RUFF = Path(sys.executable).with_name("ruff")
SIZES = [16, 12, 4]


def _mlp():
    return sb.models.mlp(SIZES, activation="relu", loss="softmax_cross_entropy")


def _batch(n=8, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    return {"X": rng.normal(size=(n, SIZES[0])) * scale, "y": rng.integers(0, SIZES[-1], n)}


def _copy(tree):
    if isinstance(tree, dict):
        return {k: _copy(v) for k, v in tree.items()}
    return np.array(tree, copy=True) if isinstance(tree, np.ndarray) else tree


def _same(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and np.array_equal(a, b)
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_masters_float32_and_step_in_float16(optimizer):
    step = sb.compile(_mlp(), optimizer=optimizer, precision="mixed")
    params = step.init_params(0)
    state = step.init_state(params)
    assert {p.dtype for p in params.values()} == {np.dtype(np.float32)}
    for v in state.values():
        if isinstance(v, dict):
            assert {a.dtype for a in v.values()} == {np.dtype(np.float32)}
    assert (state["scale"], state["good_steps"], state["skipped"]) == (2.0**16, 0, 0)
    assert step.module.DTYPE is np.float16 and step.module.MASTER is np.float32
    step.train_step(params, state, **_batch())
    # the forward and backward ran in float16: the workspace, the gradients, the copies
    arrays, G, grads, _ = step.module._WORKSPACES[(8,)]
    assert G.dtype == np.float16 and {g.dtype for g in grads.values()} == {np.dtype(np.float16)}
    assert {a.dtype for a in arrays if a.dtype.kind == "f"} == {np.dtype(np.float16)}
    half = step.module._FLAT["f"]["half"]
    assert half["H"].dtype == np.float16
    assert step.forward(**_batch(), **params)["logits"].dtype == np.float16
    # the masters stay float32 after the update, and are the flat buffer's views
    assert {p.dtype for p in params.values()} == {np.dtype(np.float32)}
    assert state["good_steps"] == 1


def test_update_applies_to_masters_and_copies_are_cast_from_them():
    step = sb.compile(_mlp(), optimizer="sgd", lr=0.1, precision="mixed")
    params = step.init_params(0)
    state = step.init_state(params)
    before = _copy(params)
    step.train_step(params, state, **_batch())
    half = step.module._FLAT["f"]["half"]
    # the float16 copies of the next step are the masters rounded; SGD moved the masters
    # by lr * (G / scale), computed in float32
    grads = step.module._WORKSPACES[(8,)][2]
    for name, w in params.items():
        expected = before[name] - np.float32(0.1) * (grads[name].astype(np.float32)
                                                     / np.float32(2.0**16))
        np.testing.assert_allclose(w, expected, rtol=1e-6, atol=1e-7)
    step.module._half(step.module._FLAT["f"], params)
    for name, w in params.items():
        assert np.array_equal(half[name], w.astype(np.float16))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_overflow_skips_the_step_and_halves_the_scale(optimizer):
    step = sb.compile(_mlp(), optimizer=optimizer, precision="mixed")
    params = step.init_params(0)
    state = step.init_state(params)
    step.train_step(params, state, **_batch(seed=1))  # a real step first: adam's t, m, v
    state["scale"] = 2.0**100  # the scaled float16 gradients overflow
    kept_params, kept_state = _copy(params), _copy(state)
    loss = step.train_step(params, state, **_batch(seed=2))
    assert np.isfinite(loss)  # the loss is computed without the scale
    assert _same(params, kept_params)
    assert state["scale"] == 2.0**99 and state["good_steps"] == 0 and state["skipped"] == 1
    scaler = ("scale", "skipped", "good_steps")
    assert _same({k: v for k, v in state.items() if k not in scaler},
                 {k: v for k, v in kept_state.items() if k not in scaler})
    # a huge input overflows float16 in the forward pass: the loss is inf, the step raises
    # and changes nothing (a smaller scale cannot help)
    state["scale"] = 1.0
    with pytest.raises(FloatingPointError, match="loss"):
        step.train_step(params, state, **_batch(scale=1e6))
    assert _same(params, kept_params) and state["scale"] == 1.0


def test_scale_halves_on_overflow_and_doubles_after_the_interval():
    step = sb.compile(_mlp(), optimizer="momentum", precision="mixed", growth_interval=3)
    assert step.module.GROWTH_INTERVAL == 3
    params = step.init_params(0)
    state = step.init_state(params)
    state["scale"] = 1.0  # far from overflow for the steps below
    scales = []
    for k in range(7):
        step.train_step(params, state, **_batch(seed=k))
        scales.append((state["scale"], state["good_steps"]))
    assert scales == [(1.0, 1), (1.0, 2), (2.0, 0), (2.0, 1), (2.0, 2), (4.0, 0), (4.0, 1)]
    state["scale"] = 2.0**60
    step.train_step(params, state, **_batch(seed=9))
    assert (state["scale"], state["good_steps"], state["skipped"]) == (2.0**59, 0, 1)


def test_gradients_agree_with_float64_within_float16_tolerance():
    g = _mlp()
    step = sb.compile(g, optimizer="adam", precision="mixed")
    ref = sb.compile(g, dtype="float64")
    params = step.init_params(3)
    state = step.init_state(params)
    batch = _batch(n=32, seed=4)
    loss, _, grads = step.module.scaled_grads(params, state, batch["X"], batch["y"],
                                              state["scale"])
    want_loss, want = ref.value_and_grad(**batch, **{k: v.astype(np.float64)
                                                     for k, v in params.items()})
    assert abs(float(loss) - want_loss) < 1e-2 * abs(want_loss)
    for name, w in want.items():
        got = grads[name].astype(np.float64) / state["scale"]
        assert np.max(np.abs(got - w)) <= 1e-2 * np.max(np.abs(w)) + 1e-6, name


def test_underflow_counts_with_and_without_loss_scaling():
    step = sb.compile(_mlp(), optimizer="sgd", precision="mixed")
    params = step.init_params(0)
    state = step.init_state(params)
    batch = _batch(n=64, scale=1e-5)  # tiny inputs: tiny dL/dW1, below float16's smallest
    kept = _copy(state)
    counts = step.underflow(params, state, **batch)
    assert _same(state, kept)
    # the counts, computed here from a float64 reference and the float16 gradients
    ref = sb.compile(_mlp(), dtype="float64")
    _, want = ref.value_and_grad(**batch, **{k: v.astype(np.float64) for k, v in params.items()})
    _, _, plain = step.module.scaled_grads(params, state, batch["X"], batch["y"], 1.0)
    plain = {k: v.copy() for k, v in plain.items()}
    _, _, scaled = step.module.scaled_grads(params, state, batch["X"], batch["y"], 2.0**16)
    for name, (entries, nonzero, flushed, flushed_scaled) in counts.items():
        assert entries == params[name].size
        assert nonzero == np.count_nonzero(want[name])
        assert flushed == np.count_nonzero((want[name] != 0) & (plain[name] == 0))
        assert flushed_scaled == np.count_nonzero((want[name] != 0) & (scaled[name] == 0))
    entries, nonzero, flushed, flushed_scaled = counts["W1"]
    assert flushed >= 10 and flushed_scaled < flushed // 5, counts


def test_precision_float32_is_dtype_float32_and_mixed_code_is_clean(tmp_path):
    g = _mlp()
    assert sb.train_step(g, optimizer="adam", precision="float32") == \
        sb.train_step(g, optimizer="adam", dtype="float32")
    for name, src in [("step.py", sb.train_step(g, optimizer="adam", precision="mixed")),
                      ("script.py", sb.training_script(g, optimizer="momentum",
                                                       precision="mixed"))]:
        path = tmp_path / name
        path.write_text(src)
        r = subprocess.run([str(RUFF), "check", "--no-cache", str(path)], capture_output=True,
                           text=True, check=False, timeout=60)
        assert r.returncode == 0, r.stdout
        imported = {a.name.split(".")[0] for node in ast.walk(ast.parse(src))
                    if isinstance(node, ast.Import) for a in node.names}
        imported |= {node.module.split(".")[0] for node in ast.walk(ast.parse(src))
                     if isinstance(node, ast.ImportFrom)}
        assert imported <= {"numpy", "math", "argparse", "csv", "json", "os", "sys",
                            "tempfile", "time", "zipfile"}, imported


def test_bad_precision():
    g = _mlp()
    with pytest.raises(ValueError, match="is not one of float64, float32, mixed"):
        sb.train_step(g, precision="half")
    with pytest.raises(ValueError, match=r"bfloat16.*\(jax, torch\)"):
        sb.compile(g, optimizer="sgd", precision="bfloat16")
    with pytest.raises(ValueError, match="growth_interval"):
        sb.train_step(g, precision="mixed", growth_interval=0)
    with pytest.raises(TypeError, match="without optimizer"):
        sb.compile(g, precision="mixed")
    mse = sb.models.mlp([4, 3, 2], loss="mse")
    with pytest.raises(CodegenError, match="loss scale as the seed"):
        sb.train_step(mse, precision="mixed")
    with pytest.raises(CodegenError, match="optimization passes are off"):
        sb.train_step(g, precision="mixed", optimize=False)


def _cli(*args, cwd=None):
    code = "import sys; from symbackprop.cli import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120, check=False,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("precision, words", [
    ("bfloat16", "needs a backend that has bfloat16 (jax, torch)"),
    ("half", "is not one of float64, float32, mixed, bfloat16"),
])
def test_cli_bad_precision_is_one_line_exit_2(precision, words):
    r = _cli("train-script", "mlp:4-3-2", "--precision", precision)
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and words in r.stderr, r.stderr


def test_cli_mixed_with_mse_is_one_line_exit_2():
    r = _cli("train-script", "mlp:4-3-2", "--loss", "mse", "--precision", "mixed")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "softmax_cross_entropy" in r.stderr


def _data(path, n=96, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, SIZES[0]))
    y = (X[:, :SIZES[-1]].argmax(axis=1)).astype(np.int64)
    np.savez(path, X=X, y=y)


def test_script_logs_underflow_and_resumes_bit_identical(tmp_path):
    r = _cli("train-script", "mlp:16-12-4", "--loss", "softmax_cross_entropy", "--optimizer",
             "adam", "--precision", "mixed", "--growth-interval", "5", "--batch-size", "16",
             "-o", str(tmp_path / "train.py"))
    assert r.returncode == 0, r.stderr
    _data(tmp_path / "data.npz")

    def run(*args):
        p = subprocess.run([sys.executable, "train.py", "--data", "data.npz", *args],
                           capture_output=True, text=True, cwd=tmp_path, timeout=120,
                           check=False)
        assert p.returncode == 0, p.stderr
        return p.stdout

    out = run("--epochs", "4", "--out", "full.npz")
    lines = [ln for ln in out.splitlines() if ln.startswith("  float16 gradients:")]
    assert len(lines) == 4 and "without loss scaling" in lines[0] and "with scale" in lines[0]
    run("--epochs", "2", "--out", "half.npz")
    run("--epochs", "4", "--resume", "half.npz", "--out", "resumed.npz")
    with np.load(tmp_path / "full.npz") as a, np.load(tmp_path / "resumed.npz") as b:
        assert a.files == b.files and "state/scale" in a.files and "state/good_steps" in a.files
        for k in a.files:
            assert np.array_equal(a[k], b[k]), k
        # 24 steps at growth interval 5: the scale grew, or grew and overflowed
        assert float(a["state/scale"]) > 2.0**16 or int(a["state/skipped"]) > 0
        assert 0 <= int(a["state/good_steps"]) < 5
        assert a["params/W1"].dtype == np.float32


@pytest.mark.slow
def test_digits_mlp_97_percent_in_mixed_precision(tmp_path):
    pytest.importorskip("sklearn")
    import runpy
    example = runpy.run_path(str(ROOT / "examples" / "digits" / "mixed.py"))
    result = example["main"](["--out", str(tmp_path)])
    assert result["test_acc"] >= 0.97, result
    assert result["flushed"] > result["flushed_scaled"], result


@pytest.mark.parametrize(("args", "words"), [
    (["--precision", "bfloat16"], "precision 'bfloat16' needs a backend that has bfloat16"),
    (["--backend", "cupy"], "argument --backend: invalid choice: 'cupy'"),
    (["--out", "{file}/sub"], "--out {file}/sub: Not a directory"),
])
def test_digits_mixed_example_bad_input_is_one_line_exit_2(args, words, tmp_path):
    """examples/digits/mixed.py: a refused option or a --out it cannot make is one line and
    exit status 2, before any data is read or script run (no traceback)."""
    file = tmp_path / "a_file"
    file.write_text("")
    args = [a.format(file=file) for a in args]
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "digits" / "mixed.py"), *args],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120, check=False)
    assert r.returncode == 2 and r.stdout == "", (r.returncode, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("mixed.py: error: ") and words.format(file=file) in r.stderr, \
        r.stderr


def test_gradient_flow_counts_float16_underflow_per_layer():
    g = sb.models.mlp([8] + [8] * 12 + [3], activation="sigmoid")
    r = sb.gradient_flow(g, batch=64, precision="mixed")
    first, last = r.layers[0].underflow, r.layers[-1].underflow
    # vanishing gradients: the first layer's dL/dW lies below float16's smallest number
    assert first[0] == 64 and first[1] == 64 and first[2] == 0, first
    assert last[1] == 0 and r.scale == 2.0**16
    assert "flushed to zero, without / with loss scale 65536" in r.text()
    assert r.as_dict()["layers"][0]["underflow"] == list(first)
    plain = sb.gradient_flow(g, batch=64)
    assert "underflow" not in plain.as_dict()["layers"][0] and "flushed" not in plain.text()
    with pytest.raises(sb.GraphError, match="precision='mixed' adds"):
        sb.gradient_flow(g, precision="float16")
