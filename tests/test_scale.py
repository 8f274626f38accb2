"""examples/scale/run.py: the 784-256-256-256-10 MLP on 4 simulated JAX devices and under
mpirun -n 2 gives the parameters and final loss of one device / one process (issue 15)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "scale" / "run.py"


@pytest.mark.slow
def test_scale_example_prints_equal_runs(tmp_path):
    pytest.importorskip("sklearn", reason="the example's data: pip install symbackprop[examples]")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], env=env,
                       capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    out = r.stdout
    loss = {m[0].strip(): m[1] for m in re.findall(r"^(\S.*?)\s+([0-9.e+-]+)\s+[0-9.]+$",
                                                    out, re.MULTILINE)}
    pairs = []
    if importlib.util.find_spec("jax"):
        pairs.append(("JAX float32, 1 device", "JAX float32, 4 devices", 1e-5))
    else:
        assert "JAX is not installed" in out
    if importlib.util.find_spec("mpi4py") and "mpirun or mpi4py is missing" not in out:
        pairs.append(("NumPy float64, 1 process", "NumPy float64, mpirun -n 2", 1e-12))
    else:
        assert "mpirun or mpi4py is missing" in out
    equal = [float(d) for d in re.findall(r"^  equal: the parameters of the two runs differ "
                                          r"by (\S+) of the largest", out, re.MULTILINE)]
    assert len(equal) == len(pairs) and "NOT EQUAL" not in out, out
    for (one, many, tol), diff in zip(pairs, equal):
        # the same final loss to the digits printed (6 decimals for JAX: a float32 loss
        # 1e-7 apart may round to neighbouring last digits), parameters within tolerance
        if tol < 1e-6:
            assert loss[one] == loss[many], (one, many, out)
        else:
            assert abs(float(loss[one]) - float(loss[many])) <= 1e-6 + tol, (one, many, out)
        assert diff <= tol
    assert (tmp_path / "digits28.npz").exists()
