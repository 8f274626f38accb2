"""The lessons' 784-256-256-256-10 ReLU classifier: gradients against finite differences,
the gradient checker and the CLI agree, and the parameter count from DESIGN.md."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest

import symbackprop as sb

SIZES = (784, 256, 256, 256, 10)
BATCH = 8


@pytest.fixture(scope="module")
def mlp():
    return sb.models.mlp(SIZES)


@pytest.fixture(scope="module")
def arrays():
    rng = np.random.default_rng(7)
    out = {"X": rng.standard_normal((BATCH, SIZES[0])),
           "y": rng.integers(0, SIZES[-1], size=BATCH)}
    for k in range(1, len(SIZES)):
        fan_in = SIZES[k - 1]
        out[f"W{k}"] = rng.standard_normal((fan_in, SIZES[k])) * math.sqrt(2 / fan_in)
        out[f"b{k}"] = rng.uniform(-0.1, 0.1, size=SIZES[k])
    return out


@pytest.fixture(scope="module")
def compiled(mlp):
    return sb.compile(mlp)


def test_parameter_count_matches_design(mlp):
    weights = sum(math.prod(mlp[p].shape) for p in mlp.nodes("param") if p.startswith("W"))
    biases = sum(math.prod(mlp[p].shape) for p in mlp.nodes("param") if p.startswith("b"))
    assert weights == 334_336
    assert biases == 778
    assert weights + biases == 335_114  # "about 330,000 weights"


def test_loss_and_logits_are_sane(compiled, arrays):
    out = compiled.forward(**arrays)
    assert out["logits"].shape == (BATCH, SIZES[-1])
    z = out["logits"] - out["logits"].max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    want = -np.mean(logp[np.arange(BATCH), arrays["y"]])
    assert float(out["L"]) == pytest.approx(want, rel=1e-12)
    loss, _ = compiled.value_and_grad(**arrays)
    assert float(loss) == pytest.approx(want, rel=1e-12)


def test_gradients_match_finite_differences(mlp, compiled, arrays):
    """Central differences of ``forward`` on a subset of the entries of every parameter:
    random ones, plus the largest-gradient ones so that no check is vacuous."""
    _, grads = compiled.value_and_grad(**arrays)
    assert sorted(grads) == sorted(mlp.nodes("param"))
    rng = np.random.default_rng(11)
    eps = 1e-6

    def L(name, value):
        return float(compiled.forward(**{**arrays, name: value})["L"])

    for p in mlp.nodes("param"):
        x, gx = arrays[p], np.asarray(grads[p])
        assert gx.shape == x.shape and gx.dtype == np.float64
        assert np.all(np.isfinite(gx)) and np.abs(gx).max() > 0, f"dL/d{p} is all zero"
        flat = np.abs(gx).ravel()
        picks = set(rng.choice(x.size, size=min(6, x.size), replace=False).tolist())
        picks |= set(np.argsort(flat)[-4:].tolist())
        for i in sorted(picks):
            idx = np.unravel_index(i, x.shape)
            xp, xm = x.copy(), x.copy()
            xp[idx] += eps
            xm[idx] -= eps
            fd = (L(p, xp) - L(p, xm)) / (2 * eps)
            an = float(gx[idx])
            assert abs(fd - an) <= 1e-5 * max(abs(fd), abs(an)) + 1e-8, \
                f"dL/d{p}{list(idx)}: backprop {an:.10g}, finite differences {fd:.10g}"


def test_data_gradient_is_not_computed_by_default(compiled, arrays):
    _, grads = compiled.value_and_grad(**arrays)
    assert "X" not in grads and "y" not in grads


def test_check_grad_is_ok(mlp):
    report = sb.check_grad(mlp, sizes={"N": BATCH}, max_entries=10)
    assert report.ok, str(report)
    assert set(report.errors) == set(mlp.nodes("param"))
    assert "all ok" in str(report)


def _cli():
    exe = os.path.join(os.path.dirname(sys.executable), "symbackprop")
    return [exe] if os.path.exists(exe) else [sys.executable, "-m", "symbackprop.cli"]


def test_cli_check_small_mlp_exits_0():
    res = subprocess.run(_cli() + ["check", "mlp:20-8-3"], capture_output=True, text=True,
                         timeout=120, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "all ok" in res.stdout
    for name in ("W1", "b1", "W2", "b2"):
        assert name in res.stdout
