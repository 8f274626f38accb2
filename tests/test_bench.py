"""Smoke test of `make bench`: the benchmark runs and writes its JSON. Timings are not checked."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_bench_quick_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--quick", "--only", "B",
           "--depths", "2", "--rounds", "1", "--block", "0.05", "--drop", "0.01",
           "--json", str(out)]
    run = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Targets (issue 5)" in run.stdout
    res = json.loads(out.read_text())
    assert {"meta", "settings", "workloads", "compile", "lines", "targets"} <= set(res)
    assert list(res["workloads"]) == ["B"]
    b = res["workloads"]["B"]
    assert {"generated", "idiomatic", "tuned", "floor", "generated forward",
            "generated forward+backward"} <= set(b["medians_s"])
    assert all(t > 0 for t in b["medians_s"].values())
    assert {"generated/tuned", "generated/idiomatic", "generated/floor", "idiomatic/floor",
            "tuned/floor", "(forward+backward)/forward"} <= set(b["ratios"])
    assert {"generated", "idiomatic", "tuned"} <= set(b["memory_bytes"])
    assert set(res["compile"]["depths"]) == {"2"}
    assert {"forward", "backward", "ratio"} <= set(res["lines"]["2"])
    names = [t["target"] for t in res["targets"]]
    assert any(n.startswith("B: generated / idiomatic") for n in names)
    assert all(t["pass"] in (True, False, None) for t in res["targets"])


# -- PyTorch and JAX columns: run only where the framework imports (never in CI) -----------------

# Skipped at collection when not installed, so CI never runs the shared fixtures below;
# importorskip in each test then catches an install that is there but does not import.
FRAMEWORKS = [pytest.param(name, module, marks=pytest.mark.skipif(
    importlib.util.find_spec(module) is None, reason=f"{module} is not installed"))
    for name, module in (("pytorch", "torch"), ("jax", "jax"))]


@pytest.fixture(scope="module")
def framework_run(tmp_path_factory):
    """One tiny run of B (float64, relu) with whatever frameworks import, shared by the tests."""
    out = tmp_path_factory.mktemp("fw") / "bench.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--quick", "--only", "B",
           "--depths", "none", "--rounds", "1", "--block", "0.05", "--drop", "0.01",
           "--json", str(out)]
    run = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300,
                         cwd=out.parent)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout, json.loads(out.read_text())


@pytest.mark.parametrize("name,module", FRAMEWORKS)
def test_bench_framework_column(name, module, framework_run):
    pytest.importorskip(module)
    stdout, res = framework_run
    b = res["workloads"]["B"]
    assert name not in b["extras"], b["extras"][name]  # it passed the correctness check
    assert name in res["settings"]["frameworks"]
    assert b["medians_s"][name] > 0
    assert {f"{name}/floor", f"generated/{name}"} <= set(b["ratios"])
    assert name in stdout.split("page faults per call")[0]  # a column of the step table
    assert f"generated/{name}" in stdout


# The run above is relu in float64: check tanh, and float32 after float64 (JAX's x64 switch is
# process-wide), against the reference step directly, every framework in one process.
_TANH_CHECK = """
import sys
sys.path.insert(0, sys.argv[1])
import numpy as np
import bench, contenders, handwritten as hw
for name, cls in contenders.available_frameworks().items():
    for dtype in (np.float64, np.float32):
        sizes = (16, 16, 16, 16, 4)
        nrng = np.random.default_rng(0)
        p0 = hw.init_params(sizes, "tanh", dtype, nrng)
        X, y = hw.make_batch(sizes, 8, dtype, nrng)
        ref = hw.Idiomatic(p0, "tanh", bench.LR)
        ref_loss = ref.step(X, y)
        c = cls(None, p0, X, y, bench.LR, dtype, activation="tanh")
        try:
            bench.check_same(name, c, ref_loss, ref.params(), p0, dtype, c.step())
            print(name, np.dtype(dtype).name, "ok")
        except AssertionError as e:
            print(name, np.dtype(dtype).name, "FAIL", e)
"""


@pytest.fixture(scope="module")
def tanh_check():
    run = subprocess.run([sys.executable, "-c", _TANH_CHECK, str(ROOT / "benchmarks")],
                         check=False, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


@pytest.mark.parametrize("name,module", FRAMEWORKS)
def test_framework_step_matches_reference_tanh(name, module, tanh_check):
    pytest.importorskip(module)
    for dtype in ("float64", "float32"):
        assert f"{name} {dtype} ok" in tanh_check, tanh_check


def test_forward_backward_contender_calls_what_train_step_calls():
    """The bench's forward+backward column binds loss_and_grads_into to the arguments the
    generated train_step passes it (blocks [W; b] of folded layers included): same loss as
    value_and_grad, and the workspace is made on first use, inside the traced step."""
    import numpy as np

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import contenders

    import symbackprop as sb

    g = sb.models.mlp([6, 128, 128, 64])
    rng = np.random.default_rng(0)
    p0 = {k: v.copy() for k, v in sb.compile(g, optimizer="sgd").init_params(3).items()}
    X, y = rng.normal(size=(8, 6)), rng.integers(0, 64, size=8)
    c = contenders.GeneratedTrainStep(g, p0, X, y, 0.01, np.float64)
    assert "FOLDED" in c.source and not c.compiled.module._WORKSPACES
    want, _ = c.compiled.value_and_grad(X=X, y=y, **p0)
    assert float(c.value_and_grad()) == pytest.approx(float(want), rel=1e-12)
    assert c.compiled.module._WORKSPACES
