"""Generated training scripts, run end to end in a child Python that cannot import
symbackprop: only NumPy (linked into a directory of its own) and the standard library."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import symbackprop as sb
from symbackprop.cli import main as cli_main

RUFF = Path(sys.executable).with_name("ruff")

# -I: no user site, no PYTHONPATH, no script directory; -S: no site-packages (so no
# editable symbackprop). The only extra path holds NumPy.
RUNNER = """
import importlib.util, runpy, sys
sys.path.insert(0, sys.argv[1])
assert importlib.util.find_spec("symbackprop") is None, "symbackprop is importable"
assert importlib.util.find_spec("sympy") is None, "site-packages is on the path"
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.fixture(scope="module")
def numpy_only(tmp_path_factory) -> Path:
    """A directory holding only links to NumPy (and its bundled libraries)."""
    site = Path(np.__file__).resolve().parent.parent
    d = tmp_path_factory.mktemp("numpy_only")
    for entry in site.iterdir():
        if entry.name == "numpy" or entry.name.startswith(("numpy.", "numpy-")):
            (d / entry.name).symlink_to(entry)
    return d


@pytest.fixture(scope="module")
def scripts(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("scripts")
    (d / "clf.py").write_text(sb.training_script(sb.models.mlp([4, 8, 3]), optimizer="adam",
                                                 lr=0.01, epochs=4, batch_size=16))
    (d / "reg.py").write_text(sb.training_script(
        sb.models.mlp([4, 8, 2], activation="tanh", loss="mse"), optimizer="sgd", lr=1e3,
        epochs=30, batch_size=16))
    (d / "ae.py").write_text(sb.training_script(sb.models.autoencoder([4, 2]),
                                                optimizer="momentum", lr=0.05, epochs=5))
    # wide enough (float64, 128 -> 128) for the bias to ride in the product
    (d / "wide.py").write_text(sb.training_script(sb.models.mlp([4, 128, 128, 3]),
                                                  optimizer="sgd", lr=0.05, epochs=4,
                                                  batch_size=16))
    # a small CNN on 1x4x4 images (issue 13): 4-D X, or flat rows with --input-shape
    (d / "cnn.py").write_text(sb.training_script(
        sb.models.cnn((1, 4, 4), channels=(3,), hidden=(6,), classes=3), optimizer="adam",
        lr=0.01, epochs=4, batch_size=16))
    # with batch norm and dropout (issue 13): running statistics and the dropout generator
    # are part of the checkpoints
    (d / "cnnbd.py").write_text(sb.training_script(
        sb.models.cnn((1, 4, 4), channels=(3,), hidden=(6,), classes=3, batch_norm=True,
                      dropout=0.25), optimizer="adam", lr=0.01, epochs=4, batch_size=16))
    return d


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Three blobs in 4-D: 120 training and 30 test samples, labels 0..2."""
    d = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    centers = rng.normal(scale=3, size=(3, 4))
    y = rng.integers(0, 3, size=150)
    X = centers[y] + rng.normal(size=(150, 4))
    np.savez(d / "blobs.npz", X=X[:120], y=y[:120], X_test=X[120:], y_test=y[120:])
    np.savez(d / "reg.npz", X=X, y=np.stack([X[:, 0] - X[:, 1], 0.5 * X[:, 2]], axis=1))
    # images: each blob's 4 features fill the four 2x2 corners of a 4x4 image
    images = np.kron(X.reshape(150, 1, 2, 2), np.ones((2, 2)))
    np.savez(d / "images.npz", X=images[:120], y=y[:120], X_test=images[120:], y_test=y[120:])
    np.savez(d / "flat.npz", X=images[:120].reshape(120, 16), y=y[:120],
             X_test=images[120:].reshape(30, 16), y_test=y[120:])
    with open(d / "blobs.csv", "w") as f:
        f.write("f1,f2,f3,f4,label\n")
        f.writelines(",".join(f"{v:.6f}" for v in row) + f",{label}\n" for row, label in zip(X, y))
    return d


def run(script: Path, *args, cwd: Path, numpy_dir: Path):
    cmd = [sys.executable, "-I", "-S", "-c", RUNNER, str(numpy_dir), str(script), *map(str, args)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OPENBLAS_NUM_THREADS"] = "2"
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, check=False)


def losses(stdout: str) -> list[float]:
    return [float(v) for v in re.findall(r"^epoch +\d+/\d+  loss (\S+)", stdout, re.MULTILINE)]


def arrays(path: Path) -> dict:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture
def go(numpy_only, scripts, tmp_path):
    def go(name, *args):
        return run(scripts / name, *args, cwd=tmp_path, numpy_dir=numpy_only)
    return go


# -- training ----------------------------------------------------------------------------
def test_trains_standalone_and_loss_decreases(go, data, tmp_path):
    r = go("clf.py", "--data", data / "blobs.npz", "--epochs", 6, "--out", "ck.npz")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    lines = r.stdout.splitlines()
    assert re.fullmatch(r"epoch 1/6  loss \S+  test_acc [01]\.\d{4}  \d+\.\d{3}s", lines[0])
    ls = losses(r.stdout)
    assert len(ls) == 6 and ls[-1] < ls[0] * 0.5
    assert float(re.findall(r"test_acc (\S+)", r.stdout)[-1]) >= 0.9
    ck = arrays(tmp_path / "ck.npz")
    assert int(ck["progress/epoch"]) == 6 and int(ck["state/t"]) == 6 * 8
    assert sorted(k for k in ck if k.startswith("params/")) == [
        "params/W1", "params/W2", "params/b1", "params/b2"]
    assert [p.name for p in tmp_path.iterdir()] == ["ck.npz"]  # no temporary file left


def test_csv_with_header_and_train_accuracy(go, data):
    r = go("clf.py", "--data", data / "blobs.csv", "--epochs", 3)
    assert r.returncode == 0, r.stderr
    assert "train_acc" in r.stdout and len(losses(r.stdout)) == 3


def test_autoencoder_has_no_labels(go, data):
    r = go("ae.py", "--data", data / "blobs.npz", "--epochs", 5)
    assert r.returncode == 0, r.stderr
    ls = losses(r.stdout)
    assert ls[-1] < ls[0] and "test_loss" in r.stdout and "acc" not in r.stdout


def test_same_seed_same_numbers(go, data, tmp_path):
    a = go("clf.py", "--data", data / "blobs.npz", "--seed", 3, "--out", "a.npz")
    b = go("clf.py", "--data", data / "blobs.npz", "--seed", 3, "--out", "b.npz")
    c = go("clf.py", "--data", data / "blobs.npz", "--seed", 4, "--out", "c.npz")
    assert losses(a.stdout) == losses(b.stdout) != losses(c.stdout)
    A, B = arrays(tmp_path / "a.npz"), arrays(tmp_path / "b.npz")
    assert all(np.array_equal(A[k], B[k]) for k in A)


@pytest.mark.parametrize("script, name", [("clf.py", "blobs.npz"), ("wide.py", "blobs.npz"),
                                          ("cnn.py", "images.npz"), ("cnnbd.py", "images.npz")])
def test_resume_is_bitwise_identical(go, data, tmp_path, script, name):
    straight = go(script, "--data", data / name, "--epochs", 4, "--out", "full.npz")
    first = go(script, "--data", data / name, "--epochs", 2, "--out", "part.npz")
    rest = go(script, "--data", data / name, "--epochs", 4, "--resume", "part.npz",
              "--out", "part.npz")
    assert straight.returncode == first.returncode == rest.returncode == 0, rest.stderr
    assert losses(first.stdout) + losses(rest.stdout) == losses(straight.stdout)
    assert rest.stdout.startswith("epoch 3/4")
    full, part = arrays(tmp_path / "full.npz"), arrays(tmp_path / "part.npz")
    assert sorted(full) == sorted(part)
    for k in full:
        assert np.array_equal(full[k], part[k]), k
        assert full[k].tobytes() == part[k].tobytes(), k


def test_cnn_trains_on_images_or_flat_rows_with_input_shape(go, data, tmp_path):
    """X as (N, C, H, W), or flat rows reshaped by --input-shape C,H,W: the same numbers."""
    four = go("cnn.py", "--data", data / "images.npz", "--epochs", 6, "--out", "a.npz")
    assert four.returncode == 0, four.stderr
    ls = losses(four.stdout)
    assert len(ls) == 6 and ls[-1] < ls[0] * 0.5
    assert float(re.findall(r"test_acc (\S+)", four.stdout)[-1]) >= 0.9
    flat = go("cnn.py", "--data", data / "flat.npz", "--epochs", 6, "--input-shape", "1,4,4",
              "--out", "b.npz")
    assert flat.returncode == 0, flat.stderr
    assert losses(flat.stdout) == ls
    a, b = arrays(tmp_path / "a.npz"), arrays(tmp_path / "b.npz")
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)
    assert a["params/K1"].shape == (3, 1, 3, 3)


def test_cnn_bad_image_shapes_one_line(go, data, tmp_path):
    blobs = arrays(data / "images.npz")
    X, y = blobs["X"], blobs["y"]
    np.savez(tmp_path / "small.npz", X=X[:, :, :3, :3], y=y)
    np.savez(tmp_path / "wide.npz", X=X.reshape(120, 16)[:, :12], y=y)
    cases = [
        (["--data", data / "flat.npz"], (r"flat\.npz: X has flat rows of 16 values \(shape "
         r"\(120, 16\)\); the network expects rows of shape \(1, 4, 4\); pass --input-shape "
         r"1,4,4 to reshape flat rows, or save X with shape \(N, 1, 4, 4\)")),
        (["--data", "small.npz"], (r"small\.npz: X has rows of shape \(1, 3, 3\) \(shape "
         r"\(120, 1, 3, 3\)\); the network expects rows of shape \(1, 4, 4\)")),
        (["--data", "wide.npz", "--input-shape", "1,4,4"], (r"X has flat rows of 12 values "
         r"\(shape \(120, 12\)\); the network expects rows of shape \(1, 4, 4\) "
         r"\(--input-shape 1,4,4 reshapes flat rows of 16 values\)")),
        (["--data", data / "flat.npz", "--input-shape", "4,4,1"], (r"--input-shape 4,4,1 is not "
         r"the network's input shape \(1, 4, 4\); pass --input-shape 1,4,4")),
        (["--data", data / "flat.npz", "--input-shape", "1,x"], (r"argument --input-shape: "
         r"'1,x' is not a shape such as 1,8,8")),
    ]
    for args, pattern in cases:
        r = go("cnn.py", *args, "--out", "ck.npz")
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert r.stdout == "" and not (tmp_path / "ck.npz").exists()
        assert re.search(pattern, r.stderr.splitlines()[-1]), (args, r.stderr)
        if "argument" not in pattern:
            assert len(r.stderr.splitlines()) == 1
    help_text = go("cnn.py", "--help").stdout
    assert "--input-shape C,H,W" in help_text and "--input-shape" not in go(
        "clf.py", "--help").stdout


def test_checkpoint_every(go, data, tmp_path):
    r = go("clf.py", "--data", data / "blobs.npz", "--epochs", 3, "--checkpoint-every", 2,
           "--out", "ck.npz")
    assert r.returncode == 0
    assert int(arrays(tmp_path / "ck.npz")["progress/epoch"]) == 3


# -- nan and inf -----------------------------------------------------------------------------
def test_inf_in_data_stops_and_keeps_the_last_good_checkpoint(go, data, tmp_path):
    assert go("clf.py", "--data", data / "blobs.npz", "--epochs", 2, "--out", "ck.npz"
              ).returncode == 0
    before = (tmp_path / "ck.npz").read_bytes()
    # Put the inf in the 5th batch of epoch 3: the checkpoint holds the random state
    # that shuffles epoch 3.
    rng = np.random.default_rng()
    rng.bit_generator.state = json.loads(str(arrays(tmp_path / "ck.npz")["progress/rng"]))
    row = rng.permutation(120)[4 * 16 + 3]
    bad = arrays(data / "blobs.npz")
    bad["X"] = bad["X"].copy()
    bad["X"][row, 1] = np.inf
    np.savez(tmp_path / "bad.npz", **bad)
    r = go("clf.py", "--data", "bad.npz", "--epochs", 4, "--resume", "ck.npz", "--out",
           "ck.npz")
    assert r.returncode == 1
    assert len(r.stderr.splitlines()) == 1
    assert re.search(r"stopped at epoch 3, batch 5 of 8: the loss is nan", r.stderr)
    assert "ck.npz is unchanged" in r.stderr
    assert (tmp_path / "ck.npz").read_bytes() == before
    good = arrays(tmp_path / "ck.last_good.npz")
    assert all(np.isfinite(good[k]).all() for k in good if k.startswith(("params/", "state/")))
    assert int(good["progress/epoch"]) == 2 and int(good["progress/seen"]) == 4 * 16

    # The batches before the bad one held clean rows only, so the last good parameters
    # resumed mid-epoch on clean data end exactly where an uninterrupted clean run does.
    straight = go("clf.py", "--data", data / "blobs.npz", "--epochs", 4, "--out", "full.npz")
    resumed = go("clf.py", "--data", data / "blobs.npz", "--epochs", 4, "--resume",
                 "ck.last_good.npz", "--out", "resumed.npz")
    assert resumed.returncode == 0, resumed.stderr
    assert losses(resumed.stdout) == losses(straight.stdout)[2:]
    full, resumed = arrays(tmp_path / "full.npz"), arrays(tmp_path / "resumed.npz")
    assert all(full[k].tobytes() == resumed[k].tobytes() for k in full)


def test_huge_learning_rate_stops_naming_epoch_and_batch(go, data, tmp_path):
    r = go("reg.py", "--data", data / "reg.npz", "--out", "reg.npz", "--checkpoint-every", 1)
    assert r.returncode == 1, r.stdout
    m = re.fullmatch(r"reg\.py: error: stopped at epoch (\d+), batch (\d+) of 10: the (loss is "
                     r"(nan|inf)|gradient dL/d\w+ has \d+ nan or inf entries)\. The last good "
                     r"parameters \(before this batch\) are saved in reg\.last_good\.npz; "
                     r"reg\.npz is unchanged\n", r.stderr)
    assert m, r.stderr
    epoch = int(m.group(1))
    assert int(arrays(tmp_path / "reg.npz")["progress/epoch"]) == epoch - 1
    good = arrays(tmp_path / "reg.last_good.npz")
    assert all(np.isfinite(good[k]).all() for k in good if k.startswith("params/"))


# -- bad input --------------------------------------------------------------------------------
def _bad_inputs(d: Path, blobs: dict) -> dict:
    np.savez(d / "features.npz", X=blobs["X"][:, :3], y=blobs["y"])
    np.savez(d / "labels.npz", X=blobs["X"], y=np.where(np.arange(120) == 9, 7, blobs["y"]))
    (d / "empty.npz").write_bytes(b"")
    (d / "empty.csv").write_text("")
    np.savez(d / "missing.npz", X=blobs["X"])
    (d / "cells.csv").write_text("1,2,3,4,0\n1,abc,3,4,1\n")
    (d / "columns.csv").write_text("1,2,3,4,0\n1,2,3,1\n")
    np.savez(d / "rows.npz", X=blobs["X"], y=blobs["y"][:100])
    np.savez(d / "split.npz", X=blobs["X"], y=blobs["y"], X_test=blobs["X"])
    (d / "text.txt").write_text("1,2\n")
    (d / "garbage.npz").write_bytes(b"not a zip file")
    np.savez(d / "fraction.npz", X=blobs["X"], y=np.where(np.arange(120) == 4, 1.5, blobs["y"]))
    return {
        "features.npz": r"features\.npz: X has 3 features \(shape \(120, 3\)\); the network "
                        r"expects 4 features",
        "labels.npz": r"labels\.npz: y\[9\] = 7 is outside the class range; expected integer "
                      r"labels 0\.\.2",
        "empty.npz": r"data file empty\.npz is empty; expected a \.npz file with arrays X",
        "empty.csv": r"data file empty\.csv is empty",
        "missing.npz": r"missing\.npz has no array 'y' \(found X\); expected arrays X \(N, 4\) "
                       r"and y \(N,\) integer labels in 0\.\.2",
        "cells.csv": r"cells\.csv, line 2, column 2: 'abc' is not a number; expected numeric "
                     r"cells only",
        "columns.csv": r"columns\.csv, line 2: 4 columns; expected 5",
        "rows.npz": r"rows\.npz: X has 120 rows but y has 100; expected one target per row",
        "split.npz": r"split\.npz has X_test but no y_test",
        "text.txt": r"neither \.npz nor \.csv",
        "nothing.npz": r"data file nothing\.npz does not exist",
        "garbage.npz": r"garbage\.npz is not a \.npz file \(not a zip archive\)",
        "fraction.npz": r"fraction\.npz: y\[4\] = 1\.5 is not an integer; expected integer "
                        r"labels 0\.\.2",
    }


def test_bad_input_one_line_nonzero_and_checkpoint_untouched(go, data, tmp_path):
    assert go("clf.py", "--data", data / "blobs.npz", "--epochs", 1, "--out", "ck.npz"
              ).returncode == 0
    before = (tmp_path / "ck.npz").read_bytes()
    cases = _bad_inputs(tmp_path, arrays(data / "blobs.npz"))
    for name, pattern in cases.items():
        r = go("clf.py", "--data", name, "--out", "ck.npz")
        assert r.returncode == 2, (name, r.stdout, r.stderr)
        assert r.stdout == "", name
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("clf.py: error: "), (name, r.stderr)
        assert re.search(pattern, lines[0]), (name, lines[0])
        assert (tmp_path / "ck.npz").read_bytes() == before, name
    assert not list(tmp_path.glob("*last_good*")) and not list(tmp_path.glob(".checkpoint-*"))


def test_bad_checkpoint(go, data, scripts, tmp_path):
    assert go("ae.py", "--data", data / "blobs.npz", "--epochs", 1, "--out", "ae.npz"
              ).returncode == 0
    r = go("clf.py", "--data", data / "blobs.npz", "--resume", "ae.npz", "--out", "ae.npz")
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1
    assert "checkpoint ae.npz is for network autoencoder_4_2_4 with momentum; expected network " \
           "mlp_4_8_3 with adam" in r.stderr
    r = go("clf.py", "--data", data / "blobs.npz", "--resume", "none.npz")
    assert r.returncode == 2 and "checkpoint none.npz does not exist" in r.stderr


def test_help_documents_the_options(go):
    r = go("clf.py", "--help")
    assert r.returncode == 0
    for option in ("--data", "--epochs", "--batch-size", "--lr", "--seed", "--checkpoint-every",
                   "--resume", "--out"):
        assert option in r.stdout
    assert "Train the network mlp_4_8_3 with Adam" in r.stdout
    bad = go("clf.py", "--data", "x.npz", "--lr", "-1")
    assert bad.returncode == 2 and "--lr: -1 is not a finite number > 0.0" in bad.stderr


# -- the generated file ------------------------------------------------------------------------
def test_script_is_ruff_clean_stable_and_imports_only_numpy(scripts):
    assert "_ones[:, -1] = 1" in (scripts / "wide.py").read_text()  # a folded bias
    for name in ("clf.py", "reg.py", "ae.py", "wide.py", "cnn.py"):
        src = (scripts / name).read_text()
        tree = ast.parse(src)
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                    for a in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(tree)
                     if isinstance(n, ast.ImportFrom)}
        assert imported - set(sys.stdlib_module_names) == {"numpy"}, name
        doc = ast.get_docstring(tree)
        assert doc.startswith("Train the network ") and "Generated by symbackprop" in doc
        assert "Optimizer: " in doc and "Loss: L = " in doc
    g = sb.models.mlp([4, 8, 3])
    assert (scripts / "clf.py").read_text() == sb.training_script(
        g, optimizer="adam", lr=0.01, epochs=4, batch_size=16)
    r = subprocess.run([str(RUFF), "check", "--no-cache", *map(str, scripts.glob("*.py"))],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout


def test_classifier_detection_is_generic():
    src = sb.training_script(sb.models.logistic_regression(3))
    assert "N_CLASSES = 2" in src and "(logits > 0).astype(np.int64)" in src
    src = sb.training_script(sb.models.mlp([4, 3, 2], loss="mse"))
    assert "TARGET = 'values'" in src and "METRIC = 'loss'" in src
    g = sb.Graph("renamed")
    feats, labels = g.input("pixels", shape=("B", 5)), g.input("digit", ("B",), "int")
    W = g.param("weights", shape=(5, 4))
    g.output("loss", sb.softmax_cross_entropy(feats @ W, labels))
    src = sb.training_script(g)
    assert "N_CLASSES = 4" in src and "return {'pixels': X[idx], 'digit': y[idx]}" in src
    with pytest.raises(sb.CodegenError, match="cannot tell which inputs"):
        sb.training_script(_ambiguous())


def _ambiguous():
    g = sb.Graph("ambiguous")
    a, b = g.input("a", shape=("N", 2)), g.input("b", shape=("N", 2))
    w = g.param("w", shape=(2,))
    g.output("L", sb.mean((a * w - b) ** 2 + (b * w - a) ** 2))
    return g


def test_cli_train_script(tmp_path, capsys):
    out = tmp_path / "t.py"
    assert cli_main(["train-script", "mlp:4-8-3", "-o", str(out), "--optimizer", "adam",
                     "--lr", "0.01", "--epochs", "4", "--batch-size", "16"]) == 0
    assert out.read_text() == sb.training_script(sb.models.mlp([4, 8, 3]), optimizer="adam",
                                                 lr=0.01, epochs=4, batch_size=16)
    assert cli_main(["train-script", "mlp:4-8-3", "--optimizer", "sgd", "--beta1", "0.5"]) == 2
    assert "--beta1 does not apply to --optimizer sgd" in capsys.readouterr().err


def test_cli_train_script_for_a_cnn_spec(tmp_path):
    """A .py SPEC building sb.models.cnn gives the script sb.training_script gives: images
    (N, 1, 4, 4) as X, and the --input-shape option."""
    spec = tmp_path / "net.py"
    spec.write_text("import symbackprop as sb\n\ngraph = sb.models.cnn((1, 4, 4), channels=(3,), "
                    "hidden=(6,), classes=3)\n")
    out = tmp_path / "t.py"
    assert cli_main(["train-script", str(spec), "-o", str(out), "--optimizer", "adam",
                     "--lr", "0.01", "--dtype", "float32"]) == 0
    src = out.read_text()
    assert src == sb.training_script(sb.models.cnn((1, 4, 4), channels=(3,), hidden=(6,),
                                                   classes=3), optimizer="adam", lr=0.01,
                                     dtype="float32")
    assert "FEATURE_SHAPE = (1, 4, 4)" in src and '"--input-shape"' in src


def test_cnn_with_batch_norm_and_dropout_trains_and_resumes_mid_epoch(go, data, tmp_path):
    """Batch norm's running statistics and the dropout generator: trained, checkpointed,
    restored to their state before the bad batch in a last_good checkpoint (the batch's
    forward pass had already moved them), and resumed from there bit for bit."""
    r = go("cnnbd.py", "--data", data / "images.npz", "--epochs", 6, "--out", "full.npz")
    assert r.returncode == 0, r.stderr
    ls = losses(r.stdout)
    assert ls[-1] < ls[0] * 0.6
    ck = arrays(tmp_path / "full.npz")
    assert sorted(k for k in ck if k.startswith("buffers/")) == [
        "buffers/rng", "buffers/running/bn1.mean", "buffers/running/bn1.var"]
    assert not np.array_equal(ck["buffers/running/bn1.var"], np.ones(3))  # updated
    assert go("cnnbd.py", "--data", data / "images.npz", "--epochs", 2, "--out", "ck.npz"
              ).returncode == 0
    rng = np.random.default_rng()
    rng.bit_generator.state = json.loads(str(arrays(tmp_path / "ck.npz")["progress/rng"]))
    row = rng.permutation(120)[4 * 16 + 3]  # in the 5th batch of epoch 3
    bad = arrays(data / "images.npz")
    bad["X"] = bad["X"].copy()
    bad["X"][row, 0, 1, 1] = np.inf
    np.savez(tmp_path / "bad.npz", **bad)
    r = go("cnnbd.py", "--data", "bad.npz", "--epochs", 6, "--resume", "ck.npz", "--out",
           "ck.npz")
    assert r.returncode == 1 and "stopped at epoch 3, batch 5 of 8" in r.stderr
    good = arrays(tmp_path / "ck.last_good.npz")
    assert all(np.isfinite(good[k]).all() for k in good if k.startswith("buffers/running"))
    resumed = go("cnnbd.py", "--data", data / "images.npz", "--epochs", 6, "--resume",
                 "ck.last_good.npz", "--out", "resumed.npz")
    assert resumed.returncode == 0, resumed.stderr
    assert losses(resumed.stdout) == ls[2:]
    full, resumed = arrays(tmp_path / "full.npz"), arrays(tmp_path / "resumed.npz")
    assert sorted(full) == sorted(resumed)
    assert all(full[k].tobytes() == resumed[k].tobytes() for k in full)
