"""Training-time diagnostics in generated scripts (issue 14, point 4): --log-grad-norms
and --metrics FILE.csv, run without symbackprop; the norms against a hand-computed
backward pass."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from standalone import assert_ruff_clean, run_without_symbackprop

import symbackprop as sb
from symbackprop.cli import load_spec
from symbackprop.codegen.loader import load_source


def data(path, n=120, features=8, classes=3, test=True, seed=0):
    rng = np.random.default_rng(seed)
    X, y = rng.standard_normal((n, features)), rng.integers(0, classes, n)
    extra = {"X_test": X[:30], "y_test": y[:30]} if test else {}
    np.savez(path, X=X, y=y, **extra)
    return X, y


def test_grad_norms_match_a_hand_computed_backward_pass():
    g = sb.models.mlp([5, 4, 3], activation="tanh")
    script = load_source(sb.training_script(g), "grad_norms_script")
    assert script.LAYERS == {"layer1": ("W1",), "layer2": ("W2",)}
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((6, 5)), rng.integers(0, 3, 6)
    p = script.init_params(0)
    h = np.tanh(X @ p["W1"] + p["b1"])
    logits = h @ p["W2"] + p["b2"]
    P = np.exp(logits - logits.max(1, keepdims=True))
    P /= P.sum(1, keepdims=True)
    d = (P - np.eye(3)[y]) / 6
    dW1 = X.T @ ((d @ p["W2"].T) * (1 - h ** 2))
    norms = script.grad_norms(p, X, y)
    assert norms["layer2"] == pytest.approx(np.linalg.norm(h.T @ d), rel=1e-12)
    assert norms["layer1"] == pytest.approx(np.linalg.norm(dW1), rel=1e-12)


def test_log_grad_norms_and_metrics_without_symbackprop(tmp_path):
    g = load_spec("mlp:8-8*10-3", activation="sigmoid")  # vanishes at the start
    (tmp_path / "train.py").write_text(sb.training_script(g, lr=0.1, epochs=3))
    data(tmp_path / "d.npz")
    assert_ruff_clean(tmp_path, "train.py")
    res = run_without_symbackprop(tmp_path, """
        import train
        assert train.main(["--data", "d.npz", "--log-grad-norms", "--metrics", "m.csv"]) == 0
        assert train.main(["--data", "d.npz", "--epochs", "5", "--resume", "checkpoint.npz",
                           "--metrics", "m.csv"]) == 0
    """)
    lines = res.stdout.splitlines()
    norms = [ln for ln in lines if ln.startswith("  grad norms")]
    assert len(norms) == 3 and all(ln.count("layer") == 11 for ln in norms)
    warnings = [ln for ln in res.stderr.splitlines() if ln.startswith("warning:")]
    # one line when layers cross the threshold, not one per epoch or per layer
    assert len(warnings) == 1 and warnings[0].startswith("warning: epoch 1: layer1, layer2")
    assert "vanishing" in warnings[0] and "threshold 0.001" in warnings[0]
    with open(tmp_path / "m.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][:3] == ["epoch", "loss", "test_acc"]
    assert rows[0][3:] == [f"grad_norm_layer{k}" for k in range(1, 12)]
    assert [r[0] for r in rows[1:]] == ["1", "2", "3", "4", "5"]  # the resumed run appends
    first = next(ln for ln in lines if ln.startswith("epoch 1/3"))
    assert float(rows[1][1]) == pytest.approx(float(first.split()[3]), rel=1e-5)
    ratio = float(rows[1][3]) / float(rows[1][-1])
    assert ratio < 1e-3 and all(math.isfinite(float(v)) for r in rows[1:] for v in r)


def test_unsupervised_metrics_and_a_bad_metrics_path(tmp_path):
    g = sb.models.autoencoder([6, 3])
    (tmp_path / "train.py").write_text(sb.training_script(g, epochs=2))
    np.savez(tmp_path / "d.npz", X=np.random.default_rng(0).standard_normal((40, 6)))
    res = run_without_symbackprop(tmp_path, """
        import train
        assert train.main(["--data", "d.npz", "--metrics", "m.csv"]) == 0
        assert train.main(["--data", "d.npz", "--metrics", "no/such/dir/m.csv"]) == 2
    """)
    assert "cannot write --metrics no/such/dir/m.csv" in res.stderr
    with open(tmp_path / "m.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["epoch", "loss", "grad_norm_layer1", "grad_norm_layer2"]
    assert len(rows) == 3 and "grad norms" not in res.stdout  # --metrics alone prints nothing


def test_without_the_options_a_run_prints_what_it_printed(tmp_path):
    g = sb.models.mlp([8, 4, 3])
    (tmp_path / "train.py").write_text(sb.training_script(g, epochs=2))
    data(tmp_path / "d.npz", test=False)
    res = run_without_symbackprop(tmp_path, """
        import train
        assert train.main(["--data", "d.npz"]) == 0
    """)
    assert "grad norms" not in res.stdout and not (tmp_path / "m.csv").exists()
    assert [ln.split()[:2] for ln in res.stdout.splitlines()[:2]] == [["epoch", "1/2"],
                                                                      ["epoch", "2/2"]]
