"""The torch training script has the NumPy script's features (tests/test_train_script.py):
checkpoints that ``--resume`` continues bit for bit (at an epoch's end and mid-epoch from a
``last_good`` checkpoint: parameters, Adam's state, batch norm's running statistics,
dropout's generator, the loss scaler's state, the data order), ``--metrics`` and
``--log-grad-norms``; and the torch backend's constants and ``rng`` check.

The generated scripts run in this process (loaded from their file, ``main(argv)`` called
as ``python train.py ARGV`` would): they import only torch and NumPy, and a fresh
interpreter without symbackprop runs them in tests/test_torch_backend.py.
"""

from __future__ import annotations

import csv
import importlib.util
import re

import numpy as np
import pytest

import symbackprop as sb

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                reason="PyTorch is not installed (pip install "
                                "'symbackprop[torch]')")

if importlib.util.find_spec("torch") is not None:
    import torch


def _script(tmp_path, g, name, **kwargs):
    """The torch training script of g, written to tmp_path/name and loaded as a module."""
    path = tmp_path / name
    path.write_text(sb.training_script(g, backend="torch", **kwargs))
    spec = importlib.util.spec_from_file_location(name[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(module, capsys, *argv):
    """module.main(argv) as the command line runs it: (exit status, stdout, stderr)."""
    try:
        code = module.main(["--device", "cpu", *map(str, argv)])
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def _epochs(stdout):
    """The epoch lines without the number of epochs asked for and the seconds."""
    return [re.sub(r"^epoch (\d+)/\d+", r"epoch \1", ln.rsplit("  ", 1)[0])
            for ln in stdout.splitlines() if ln.startswith("epoch")]


def _same(a, b) -> bool:
    """Two checkpoints (nested dicts of tensors and numbers) equal to the bit."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and \
            a.numpy().tobytes() == b.numpy().tobytes()
    return type(a) is type(b) and a == b


def _load(path):
    return torch.load(path, weights_only=True)


def test_resume_at_an_epoch_end_and_mid_epoch_is_the_straight_run(tmp_path, monkeypatch,
                                                                  capsys):
    """A CNN with batch norm and dropout (Adam, float64): 3 epochs straight, and 1 epoch then
    --resume to 3, end with the same checkpoint to the bit (parameters, Adam's m, v and t,
    the running statistics, dropout's generator state, the shuffling generator's) and print
    the same epoch lines. An inf in the 3rd batch of epoch 2 stops the run with one line,
    exit status 1, leaves --out untouched and writes NAME.last_good.pt, which holds the
    state before that batch (the running statistics and generator put back): resumed on
    the clean data it ends as the straight run does."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(32, 1, 6, 6))
    y = (X[:, 0, :3].sum(axis=(1, 2)) > 0).astype(int)
    np.savez("d.npz", X=X, y=y)
    g = sb.models.cnn((1, 6, 6), channels=(3,), hidden=(8,), classes=2, batch_norm=True,
                      dropout=0.25)
    m = _script(tmp_path, g, "cnn.py", optimizer="adam", lr=0.01, batch_size=8)
    code, straight, _ = _run(m, capsys, "--data", "d.npz", "--epochs", 3, "--out", "full.pt")
    assert code == 0 and len(_epochs(straight)) == 3
    full = _load("full.pt")
    assert sorted(full) == ["epoch", "loss_sum", "network", "optimizer", "params", "rng",
                            "running", "seen", "shuffle", "state"]
    assert full["epoch"] == 3 and full["seen"] == 0 and full["state"]["t"] == 12
    assert not torch.equal(full["running"]["bn1.var"], torch.ones(3, dtype=torch.float64))

    code, first, _ = _run(m, capsys, "--data", "d.npz", "--epochs", 1, "--out", "ck.pt")
    assert code == 0
    code, rest, _ = _run(m, capsys, "--data", "d.npz", "--epochs", 3, "--resume", "ck.pt",
                         "--out", "resumed.pt")
    assert code == 0 and _epochs(first) + _epochs(rest) == _epochs(straight)
    assert _same(_load("resumed.pt"), full)

    # an inf in the 3rd batch of epoch 2: the checkpoint holds the generator that shuffles it
    before = (tmp_path / "ck.pt").read_bytes()
    gen = torch.Generator()
    gen.set_state(_load("ck.pt")["shuffle"])
    bad = X.copy()
    bad[int(torch.randperm(32, generator=gen)[2 * 8 + 1]), 0, 1, 1] = np.inf
    np.savez("bad.npz", X=bad, y=y)
    code, _, err = _run(m, capsys, "--data", "bad.npz", "--epochs", 3, "--resume", "ck.pt",
                        "--out", "ck.pt")
    assert code == 1 and err.count("\n") == 1, err
    assert re.search(r"stopped at epoch 2, batch 3 of 4: the loss is nan\. The last good "
                     r"parameters \(before this batch\) are saved in ck\.last_good\.pt; ck\.pt "
                     "is unchanged", err), err
    assert (tmp_path / "ck.pt").read_bytes() == before
    good = _load("ck.last_good.pt")
    assert good["epoch"] == 1 and good["seen"] == 16 and good["state"]["t"] == 6
    assert all(torch.isfinite(v).all() for v in good["running"].values())
    code, rest, _ = _run(m, capsys, "--data", "d.npz", "--epochs", 3, "--resume",
                         "ck.last_good.pt", "--out", "resumed.pt")
    assert code == 0 and _epochs(rest) == _epochs(straight)[1:]
    assert _same(_load("resumed.pt"), full)


def test_mixed_precision_resumes_with_the_loss_scaler(tmp_path, monkeypatch, capsys):
    """float16 with dynamic loss scaling: the scaler's state (scale, good_steps, skipped)
    is checkpointed, so 1 epoch then --resume to 2 is the 2-epoch run to the bit."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(1)
    X = rng.normal(size=(24, 4))
    np.savez("d.npz", X=X, y=(X[:, 0] > 0).astype(int))
    m = _script(tmp_path, sb.models.mlp([4, 6, 2]), "mixed.py", optimizer="adam", lr=0.01,
                batch_size=8, precision="mixed", growth_interval=2)
    assert _run(m, capsys, "--data", "d.npz", "--epochs", 2, "--out", "full.pt")[0] == 0
    assert _run(m, capsys, "--data", "d.npz", "--epochs", 1, "--out", "ck.pt")[0] == 0
    assert _run(m, capsys, "--data", "d.npz", "--epochs", 2, "--resume", "ck.pt")[0] == 0
    full, resumed = _load("full.pt"), _load("checkpoint.pt")
    # 6 steps, each an Adam step or one skipped on overflow; the scaler's state moved
    assert full["state"]["t"] + full["state"]["skipped"] == 6
    assert {k: v for k, v in full["state"].items() if k in ("scale", "good_steps", "skipped")} \
        != {k: v for k, v in _load("ck.pt")["state"].items() if k in ("scale", "good_steps",
                                                                     "skipped")}
    assert _same(resumed, full)


def test_metrics_and_grad_norms(tmp_path, monkeypatch, capsys):
    """--metrics writes the NumPy script's columns and a row per epoch (a resumed run
    appends); its gradient norms are those of the NumPy backend's gradients at the saved
    parameters on the first --batch-size rows; --log-grad-norms prints them and warns once
    when layers of a deep sigmoid network vanish."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(2)
    X = rng.normal(size=(40, 6))
    y = (X[:, 0] > 0).astype(int)
    np.savez("d.npz", X=X[:32], y=y[:32], X_test=X[32:], y_test=y[32:])
    g = sb.models.mlp([6] + [6] * 10 + [2], activation="sigmoid")
    m = _script(tmp_path, g, "deep.py", optimizer="sgd", lr=0.1, batch_size=16)
    code, out, err = _run(m, capsys, "--data", "d.npz", "--epochs", 2, "--metrics", "m.csv",
                          "--log-grad-norms")
    assert code == 0
    assert out.count("  grad norms  layer1 ") == 2, out
    assert err.count("warning: epoch 1: layer1") == 1 and "vanishing" in err, err
    assert _run(m, capsys, "--data", "d.npz", "--epochs", 3, "--resume", "checkpoint.pt",
                "--metrics", "m.csv")[0] == 0
    with open("m.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["epoch", "loss", "test_acc"] + [f"grad_norm_layer{k}" for k in
                                                       range(1, 12)]
    assert [r[0] for r in rows[1:]] == ["1", "2", "3"]
    saved = _load("checkpoint.pt")
    params = {k: v.numpy() for k, v in saved["params"].items()}
    _, grads = sb.compile(g).value_and_grad(X=X[:16], y=y[:16], **params)
    want = [np.linalg.norm(grads[f"W{k}"]) for k in range(1, 12)]
    np.testing.assert_allclose([float(v) for v in rows[-1][3:]], want, rtol=1e-10)


def test_bad_input_is_one_line(tmp_path, monkeypatch, capsys):
    """A checkpoint of another network, a missing checkpoint, image rows given flat without
    --input-shape: one line each, exit status 2; with --input-shape flat rows train."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(3)
    np.savez("flat.npz", X=rng.normal(size=(8, 16)), y=rng.integers(0, 2, 8))
    cnn = _script(tmp_path, sb.models.cnn((1, 4, 4), channels=(2,), hidden=(4,), classes=2),
                  "cnn.py", batch_size=4)
    code, _, err = _run(cnn, capsys, "--data", "flat.npz", "--epochs", 1)
    assert code == 2 and err.count("\n") == 1
    assert "X has flat rows of 16 values" in err and "pass --input-shape 1,4,4" in err, err
    assert _run(cnn, capsys, "--data", "flat.npz", "--epochs", 1, "--input-shape", "1,4,4",
                "--out", "cnn.pt")[0] == 0
    np.savez("d.npz", X=rng.normal(size=(8, 4)), y=rng.integers(0, 2, 8))
    mlp = _script(tmp_path, sb.models.mlp([4, 3, 2]), "mlp.py")
    other = (r"checkpoint cnn\.pt is for network cnn_\w+ with sgd; expected network mlp_4_3_2 "
             "with sgd")
    for resume, says in (("cnn.pt", other),
                         ("none.pt", "checkpoint none.pt does not exist")):
        code, _, err = _run(mlp, capsys, "--data", "d.npz", "--resume", resume)
        assert code == 2 and err.count("\n") == 1 and re.search(says, err), err


def test_a_numpy_generator_as_rng_is_one_clear_line():
    """torch draws dropout masks with a torch.Generator: a NumPy Generator (or a float)
    is a TypeError naming what was given, what is expected and the fix, on one line."""
    g = sb.models.cnn((1, 4, 4), channels=(2,), hidden=(4,), classes=2, dropout=0.5)
    step = sb.compile(g, optimizer="sgd", backend="torch")
    params = step.init_params(0)
    X, y = torch.zeros(2, 1, 4, 4, dtype=torch.float64), torch.tensor([0, 1])
    for rng, kind in ((np.random.default_rng(0), "numpy.random._generator.Generator"),
                      (0.5, "float")):
        with pytest.raises(TypeError) as e:
            step.train_step(params, step.init_state(params), X=X, y=y, rng=rng)
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith(f"rng={kind} given; expected a seed (an int) "
                                                  "or a torch.Generator")
        assert "rng=torch.Generator().manual_seed(SEED)" in msg
    assert np.isfinite(step.train_step(params, step.init_state(params), X=X, y=y,
                                       rng=np.int64(3)))  # NumPy's ints are seeds


def test_constant_arrays_are_made_on_the_inputs_device():
    """A constant array of the graph is read on the device of the function's inputs (the
    meta device here, where a CPU tensor would raise), with NumPy's values on the CPU."""
    g = sb.Graph("c")
    x = g.input("x", (3,))
    g.output("L", sb.sum(x * g.const(np.array([1.0, 2.0, 3.0])) * x))
    src = sb.source(g, backend="torch")
    assert "const_1 = _constant('const_1', device)  # on the inputs' device" in src
    fn = sb.compile(g, backend="torch")
    loss, grads = fn.value_and_grad(x=torch.ones(3, dtype=torch.float64, device="meta"))
    assert loss.device.type == "meta" and grads["x"].device.type == "meta"
    loss, grads = fn.value_and_grad(x=torch.tensor([1.0, -1.0, 2.0], dtype=torch.float64))
    assert float(loss) == 1 + 2 + 12 and grads["x"].tolist() == [2.0, -4.0, 12.0]
