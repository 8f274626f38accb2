"""The JAX training script's checkpoints, --resume and evaluation (issue 15): the NumPy
script's (tests/test_train_script.py) for ``train-script --backend jax``.

Every run is a subprocess with a timeout, on simulated CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count``) as in tests/test_backends.py.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from standalone import assert_ruff_clean

import symbackprop as sb
from symbackprop.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    importlib.util.find_spec("jax") is None,
    reason="JAX is not installed (pip install 'symbackprop[jax]')")]


def _run(folder, devices, *args, script="train.py", timeout=240):
    """python SCRIPT ARGS on `devices` simulated CPU devices; no PYTHONPATH: the script
    needs no symbackprop."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "XLA", "JAX"))}
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, script, *args], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def _load(path) -> dict:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """640 training and 160 test rows of scikit-learn's digits, and the JAX script of an
    MLP 64-32-10 (Adam, float64) beside them."""
    from sklearn.datasets import load_digits

    folder = tmp_path_factory.mktemp("jax_script")
    X, y = load_digits(return_X_y=True)
    np.savez(folder / "digits.npz", X=X[:640] / 16.0, y=y[:640], X_test=X[640:800] / 16.0,
             y_test=y[640:800])
    np.savez(folder / "train_only.npz", X=X[:640] / 16.0, y=y[:640])
    spec = folder / "net.json"
    sb.save(sb.models.mlp([64, 32, 10]), str(spec))
    assert main(["train-script", str(spec), "--backend", "jax", "--optimizer", "adam",
                 "--lr", "0.05", "--batch-size", "64", "--dtype", "float64",
                 "-o", str(folder / "train.py")]) == 0
    return folder


def _epoch_lines(stdout: str) -> list[str]:
    # the epoch's line less the number of epochs asked for and the time taken
    return [re.sub(r"/\d+  ", "  ", re.sub(r"  [0-9.]+ s$", "", ln))
            for ln in stdout.splitlines() if ln.startswith("epoch ")]


def test_script_is_ruff_clean_and_imports_only_jax_and_numpy(digits):
    import ast

    src = (digits / "train.py").read_text()
    assert_ruff_clean(digits, "train.py")
    found = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            found.add((node.module or "").split(".")[0])
    assert {m for m in found if m not in sys.stdlib_module_names} == {"jax", "numpy"}


def test_resume_is_bit_identical_on_one_device(digits):
    """4 epochs in one run, and 2 (a checkpoint every epoch) then --resume to 4: the same
    parameters and Adam state to the bit in float64, the same epoch lines (loss, test
    accuracy); the checkpoint holds the NumPy script's keys and no temporary file is left."""
    full = _run(digits, 1, "--data", "digits.npz", "--epochs", "4", "--out", "full.npz")
    assert full.returncode == 0, full.stderr[-3000:]
    half = _run(digits, 1, "--data", "digits.npz", "--epochs", "2", "--checkpoint-every", "1",
                "--out", "half.npz")
    assert half.returncode == 0, half.stderr[-3000:]
    saved = _load(digits / "half.npz")
    assert str(saved["network"]) == "mlp_64_32_10" and str(saved["optimizer"]) == "adam"
    assert int(saved["progress/epoch"]) == 2 and "state" in str(saved["progress/rng"])
    assert {k for k in saved if k.startswith("params/")} == {
        "params/W1", "params/b1", "params/W2", "params/b2"}
    assert int(saved["state/t"]) == 2 * 10 and "state/m/W1" in saved and "state/v/b2" in saved
    assert not [p for p in os.listdir(digits) if p.startswith(".checkpoint-")]
    rest = _run(digits, 1, "--data", "digits.npz", "--epochs", "4", "--resume", "half.npz",
                "--out", "resumed.npz")
    assert rest.returncode == 0, rest.stderr[-3000:]
    lines = _epoch_lines(full.stdout)
    assert len(lines) == 4 and all(re.search(r"  test_acc 0\.\d{4}  1 device\(s\)$", ln)
                                   for ln in lines), lines
    assert _epoch_lines(half.stdout) + _epoch_lines(rest.stdout) == lines
    a, b = _load(digits / "full.npz"), _load(digits / "resumed.npz")
    assert sorted(a) == sorted(b)
    for k in a:
        if k != "progress/rng":
            assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
        if k.startswith(("params/", "state/m/")):
            assert a[k].dtype == np.float64, k
    assert str(a["progress/rng"]) == str(b["progress/rng"])
    again = _run(digits, 1, "--data", "digits.npz", "--epochs", "4", "--resume", "full.npz")
    assert again.returncode == 0 and "the checkpoint is at epoch 4; nothing to do" in again.stdout


# runs the script's main(argv) for each argv (a JSON list), in one interpreter: JAX starts
# once; prints [[exit status, stdout, stderr], ...] as JSON
DRIVER = """
import contextlib, importlib.util, io, json, sys
spec = importlib.util.spec_from_file_location("train", "train.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
runs = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = module.main(argv)
        except SystemExit as e:
            code = e.code
    runs.append([code, out.getvalue(), err.getvalue()])
print(json.dumps(runs))
"""


def test_nan_mid_epoch_leaves_a_last_good_checkpoint_that_resumes_bit_for_bit(digits):
    """An inf in the 3rd batch of epoch 2 stops the run (exit 1, one line naming the epoch,
    batch and file; --out keeps epoch 1's checkpoint). NAME.last_good.npz holds the
    parameters and Adam state from before that batch, with the samples seen (2 batches):
    resumed on the clean data it ends with the uninterrupted run's checkpoint and epoch
    lines, to the bit (float64, one device). One interpreter runs the four commands."""
    import json

    with np.load(digits / "digits.npz") as f:
        data = {k: f[k] for k in f.files}
    order = np.random.default_rng(0)  # --seed 0 shuffles: epoch 1's order, then epoch 2's
    order.permutation(640)
    data["X"] = data["X"].copy()
    data["X"][order.permutation(640)[2 * 64 + 5], 3] = np.inf
    np.savez(digits / "inf.npz", **data)
    (digits / "driver.py").write_text(DRIVER)
    runs = [["--data", "digits.npz", "--epochs", "3", "--out", "lg_full.npz"],
            ["--data", "digits.npz", "--epochs", "1", "--out", "lg.npz"],
            ["--data", "inf.npz", "--epochs", "3", "--resume", "lg.npz", "--out", "lg.npz"],
            ["--data", "digits.npz", "--epochs", "3", "--resume", "lg.last_good.npz", "--out",
             "lg_resumed.npz"]]
    r = _run(digits, 1, json.dumps(runs), script="driver.py")
    assert r.returncode == 0, r.stderr[-3000:]
    (code, full, _), (code_1, _, _), (code_bad, _, err), (code_res, rest, _) = \
        json.loads(r.stdout)
    assert code == 0 and code_1 == 0 and code_res == 0 and code_bad == 1
    assert err.count("\n") == 1 and ("error: stopped at epoch 2, batch 3 of 10: the loss is nan."
                                     " The last good parameters (before this batch) are saved "
                                     "in lg.last_good.npz; lg.npz is unchanged") in err, err
    assert int(_load(digits / "lg.npz")["progress/epoch"]) == 1
    good = _load(digits / "lg.last_good.npz")
    assert int(good["progress/epoch"]) == 1 and int(good["progress/seen"]) == 2 * 64
    assert int(good["state/t"]) == 12 and np.isfinite(good["params/W1"]).all()
    assert _epoch_lines(rest) == _epoch_lines(full)[1:]
    a, b = _load(digits / "lg_full.npz"), _load(digits / "lg_resumed.npz")
    assert sorted(a) == sorted(b)
    assert all(a[k].tobytes() == b[k].tobytes() for k in a), [
        k for k in a if a[k].tobytes() != b[k].tobytes()]


def test_resume_on_four_devices_of_a_one_device_checkpoint(digits):
    """A checkpoint written on 1 device resumed on 4 simulated devices: the final
    parameters of the uninterrupted 1-device run, to the 4-device tolerance (the devices
    add their partial gradients in another order)."""
    for name, epochs in (("one_full.npz", "4"), ("one_half.npz", "2")):
        r = _run(digits, 1, "--data", "digits.npz", "--epochs", epochs, "--out", name)
        assert r.returncode == 0, r.stderr[-3000:]
    r = _run(digits, 4, "--data", "digits.npz", "--epochs", "4", "--resume", "one_half.npz",
             "--out", "four.npz")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "epoch 4/4  loss" in r.stdout and "4 device(s)" in r.stdout
    assert "epoch 1/" not in r.stdout and "epoch 2/" not in r.stdout
    a, b = _load(digits / "one_full.npz"), _load(digits / "four.npz")
    for k in (k for k in a if k.startswith("params/")):
        scale = float(np.abs(a[k]).max())
        np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-10 * scale, err_msg=k)


def test_checkpoint_of_another_network_is_one_line(digits):
    """--resume with a checkpoint of another network (or a missing file): one line, exit 2,
    naming both networks; nothing trains."""
    (digits / "other.py").write_text(sb.training_script(
        sb.models.mlp([64, 16, 10]), optimizer="adam", backend="jax"))
    r = _run(digits, 1, "--data", "digits.npz", "--epochs", "1", "--out", "o.npz")
    assert r.returncode == 0, r.stderr[-3000:]
    r = _run(digits, 1, "--data", "digits.npz", "--resume", "o.npz", script="other.py")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert ("checkpoint o.npz is for network mlp_64_32_10 with adam; expected network "
            "mlp_64_16_10 with adam") in r.stderr
    assert "epoch" not in r.stdout
    r = _run(digits, 1, "--data", "digits.npz", "--resume", "missing.npz")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "checkpoint missing.npz does not exist" in r.stderr
    r = _run(digits, 1, "--data", "digits.npz", "--checkpoint-every", "2")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--out FILE" in r.stderr
    with np.load(digits / "digits.npz") as f:
        np.savez(digits / "no_y_test.npz", X=f["X"], y=f["y"], X_test=f["X_test"])
    r = _run(digits, 1, "--data", "no_y_test.npz")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "no_y_test.npz has X_test but no y_test" in r.stderr


def test_train_accuracy_without_a_test_split_and_test_loss_of_a_regressor(digits, tmp_path):
    """Without X_test a classifier's line reports the training accuracy; a regressor's
    line reports the loss on X_test, as the NumPy script's does."""
    r = _run(digits, 1, "--data", "train_only.npz", "--epochs", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(r"^epoch 1/1  loss \S+  train_acc 0\.\d{4}  1 device\(s\)", r.stdout,
                     re.MULTILINE), r.stdout
    rng = np.random.default_rng(0)
    X = rng.normal(size=(96, 3))
    Y = X @ rng.normal(size=(3, 2))
    np.savez(tmp_path / "reg.npz", X=X[:64], y=Y[:64], X_test=X[64:], y_test=Y[64:])
    g = sb.models.mlp([3, 8, 2], loss="mse")
    (tmp_path / "train.py").write_text(sb.training_script(g, optimizer="sgd", lr=0.05,
                                                          batch_size=16, backend="jax"))
    r = _run(tmp_path, 1, "--data", "reg.npz", "--epochs", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    losses = re.findall(r"^epoch \d/2  loss \S+  test_loss (\S+)  1 device", r.stdout,
                        re.MULTILINE)
    assert len(losses) == 2 and all(np.isfinite(float(v)) for v in losses), r.stdout


def test_input_shape_reshapes_flat_image_rows(tmp_path, capsys):
    """--input-shape, as the NumPy script's: flat rows of X and X_test reshaped row-major
    to the CNN's (1, 4, 4); without it, or with another shape, one line and exit 2. (The
    script is loaded in this process: reading the data needs no device.)"""
    g = sb.models.cnn((1, 4, 4), channels=(2,), hidden=(4,), classes=2)
    path = tmp_path / "cnn_train.py"
    path.write_text(sb.training_script(g, optimizer="sgd", backend="jax", dtype="float32"))
    spec = importlib.util.spec_from_file_location("cnn_train", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    X = np.arange(3 * 16.0).reshape(3, 16)
    np.savez(tmp_path / "flat.npz", X=X, y=[0, 1, 0], X_test=X[:2], y_test=[1, 0])
    flat = str(tmp_path / "flat.npz")
    a = module.parse_args(["--data", flat, "--input-shape", "1,4,4"])
    data, (X_test, _) = module.read_data(a.data, a.input_shape)
    assert np.array_equal(data[module.FEATURES], X.reshape(3, 1, 4, 4))
    assert X_test.shape == (2, 1, 4, 4)
    without = ("X has flat rows of 16 values (shape (3, 16)); the network expects rows of "
               "shape (1, 4, 4); pass --input-shape 1,4,4 to reshape flat rows")
    for shape, says in ((None, without),
                        ((4, 4, 1), "--input-shape 4,4,1 is not the network's input shape")):
        with pytest.raises(module.InputError) as e:
            module.read_data(flat, shape)
        assert says in str(e.value), e.value
    # and main says it in one line, exit status 2
    assert module.main(["--data", flat]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and without in err, err
