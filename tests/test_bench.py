"""Smoke test of `make bench`: the benchmark runs and writes its JSON. Timings are not checked."""

import json
import subprocess
import sys
from pathlib import Path

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
