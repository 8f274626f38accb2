"""Smoke test of benchmarks/gpu_check.py on the CPU (``--device cpu``, tiny sizes): the
script runs, checks the generated steps' values against NumPy's, skips what cannot run
here with its reason (CuPy: a GPU only; a backend sb does not know yet) and writes its
JSON. Timings are not checked; the GPU run itself is docs/performance.md's "GPU checks"."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_runs_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu",
           "--sizes", "12,8,3", "--batch", "16", "--seconds", "0.5", "--block", "0.05",
           "--out", str(out)]
    run = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=240,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    res = json.loads(out.read_text())
    assert res["network"] == "12-8-3" and res["machine"]["device"] == "cpu"
    assert res["skipped"]["cupy float32"] == "CuPy runs on a CUDA GPU only"
    assert res["skipped"]["cupy training script"] == "CuPy runs on a CUDA GPU only"
    assert res["checks"]["numpy value_and_grad"]["ok"]
    assert all(c["ok"] for c in res["checks"].values())
    have = set(res["results"])
    assert {"numpy float32", "numpy mixed"} <= have
    assert "numpy" in res["mixed_vs_float32"]
    if importlib.util.find_spec("torch") is not None:
        assert res["results"]["pytorch eager float32"]["ratio"] == 1.0
        assert res["results"]["numpy float32"]["rounds"] >= 3
        assert "ratio_min" in res["results"]["numpy float32"]
    if importlib.util.find_spec("jax") is not None:
        assert "jax float32" in have and res["checks"]["jax value_and_grad"]["ok"]
    for name in ("torch float32", "jax mixed"):  # not (yet) written: skipped with the reason
        assert name in have or name in res["skipped"]
    assert "wrote" in run.stdout
