"""Scale: one network trained data-parallel on 4 JAX devices and on 2 MPI ranks.

The lessons' network, an MLP 784-256-256-256-10 (ReLU, softmax cross-entropy, Adam),
on images made here without a download: scikit-learn's bundled digits (8x8, scaled to
[0, 1]) upsampled to 28x28 = 784 features by nearest neighbour, the first 1024 of them.
symbackprop generates two standalone training scripts with ``sb.training_script`` and
this example runs each twice, in subprocesses:

1. the JAX script (``backend="jax"``, float32): every global batch is sharded over a
   ``jax.sharding.Mesh`` of all local devices; run on 4 simulated CPU devices
   (``XLA_FLAGS=--xla_force_host_platform_device_count=4``) and on 1;
2. the NumPy script (``distributed="mpi"``, float64): under ``mpirun -n 2`` (each rank
   takes half of every global batch, one ``Allreduce`` sums the gradients) and as one
   process.

It prints the final loss of each run side by side, and how far the parameters of the
multi-device and multi-rank runs are from the one-process runs': equal to 1e-12 (relative
to the largest parameter) for MPI in float64, to 1e-5 for JAX in float32, where the devices
sum their partial gradients in another order than one device does. The exit status is 1
when a pair differs or a run fails, else 0.

    python examples/scale/run.py [--out DIR]

Needs scikit-learn; JAX (``pip install symbackprop[jax]``) and mpirun with mpi4py
(``pip install symbackprop[distributed]``) for their parts: a missing one is one line and
the rest still runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import symbackprop as sb

SIZES = (784, 256, 256, 256, 10)
ROWS = 1024
BATCH_SIZE = 256  # the global batch: 4 devices or 2 ranks divide it
EPOCHS = 3
LR = 1e-3
SEED = 0
DEVICES = 4
RANKS = 2
TIMEOUT = 180  # seconds, for each run (one takes a few)
TOLERANCE = {"jax": 1e-5, "mpi": 1e-12}  # relative to the largest parameter


def make_data(path: Path) -> None:
    """Write the digits upsampled to 28x28 (rows of 784) and their labels to ``path``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images[:ROWS] / 16.0
    # nearest neighbour 8 -> 28: output pixel i reads input pixel floor(i * 8 / 28)
    idx = np.arange(28) * 8 // 28
    X = images[:, idx][:, :, idx].reshape(len(images), -1)
    np.savez(path, X=X, y=digits.target[:ROWS])


def _env(**extra: str) -> dict:
    # the scripts are standalone (NumPy, JAX, mpi4py): no PYTHONPATH, one BLAS thread each
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHONPATH", "XLA_", "JAX_"))}
    env.update(OPENBLAS_NUM_THREADS="1", **extra)
    return env


def _run(cmd: list[str], cwd: Path, env: dict, label: str) -> tuple[str | None, float, str]:
    """Run one training; return (its last epoch's printed loss or None, seconds, error)."""
    t = time.perf_counter()
    try:
        r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                           timeout=TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        return None, time.perf_counter() - t, f"{label}: no result after {TIMEOUT} s"
    seconds = time.perf_counter() - t
    losses = re.findall(r"^epoch +\d+/\d+  loss (\S+)", r.stdout, re.MULTILINE)
    if r.returncode != 0 or not losses:
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
        return None, seconds, f"{label}: exit status {r.returncode}: {tail[0]}"
    return losses[-1], seconds, ""


def _params(path: Path, prefix: str = "") -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k[len(prefix):]: f[k] for k in f.files if k.startswith(prefix)}


def difference(a: dict, b: dict) -> float:
    """The largest |a - b| over every parameter, relative to the largest |b|."""
    assert sorted(a) == sorted(b), (sorted(a), sorted(b))
    scale = max(float(np.abs(v).max()) for v in b.values())
    return max(float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in b) / scale


def run_jax(folder: Path, data: Path) -> list[tuple]:
    """The JAX script on 1 and on DEVICES simulated CPU devices."""
    g = sb.models.mlp(SIZES, activation="relu", loss="softmax_cross_entropy")
    script = folder / "train_jax.py"
    script.write_text(sb.training_script(g, of="L", optimizer="adam", lr=LR, epochs=EPOCHS,
                                         batch_size=BATCH_SIZE, seed=SEED, dtype="float32",
                                         backend="jax"))
    rows = []
    for devices in (1, DEVICES):
        env = _env(JAX_PLATFORMS="cpu",
                   XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
        out = folder / f"jax_{devices}.npz"
        loss, seconds, error = _run([sys.executable, str(script), "--data", str(data),
                                     "--out", str(out)], folder, env,
                                    f"JAX on {devices} device(s)")
        rows.append((f"JAX float32, {devices} device{'s' if devices > 1 else ''}", loss,
                     seconds, error, out))
    return rows


def run_mpi(folder: Path, data: Path, mpirun: str) -> list[tuple]:
    """The NumPy MPI script as one process and under mpirun -n RANKS."""
    g = sb.models.mlp(SIZES, activation="relu", loss="softmax_cross_entropy")
    script = folder / "train_mpi.py"
    script.write_text(sb.training_script(g, of="L", optimizer="adam", lr=LR, epochs=EPOCHS,
                                         batch_size=BATCH_SIZE, seed=SEED, distributed="mpi"))
    # Hydra starts the ranks by fork on this host and talks over the loopback interface
    env = _env(HYDRA_LAUNCHER="fork", HYDRA_IFACE="lo")
    rows = []
    for ranks in (None, RANKS):
        out = folder / f"mpi_{ranks or 1}.npz"
        cmd = [sys.executable, str(script), "--data", str(data), "--out", str(out)]
        label = "NumPy float64, 1 process"
        if ranks:
            cmd, label = [mpirun, "-n", str(ranks), *cmd], f"NumPy float64, mpirun -n {ranks}"
        loss, seconds, error = _run(cmd, folder, env, label)
        rows.append((label, loss, seconds, error, out))
    return rows


def _mpirun() -> str | None:
    # the venv's mpirun (the mpich wheel) first, then the PATH's
    return shutil.which("mpirun", path=f"{Path(sys.executable).parent}{os.pathsep}"
                        f"{os.environ.get('PATH', '')}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="folder for the data, scripts and parameters "
                                  "(default: a temporary one, removed)")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(a.out or tmp).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        data = folder / "digits28.npz"
        make_data(data)
        print(f"MLP {'-'.join(map(str, SIZES))}, Adam lr {LR}: {ROWS} digits upsampled to "
              f"28x28, {EPOCHS} epochs of global batch {BATCH_SIZE}")
        pairs, status = [], 0
        if importlib.util.find_spec("jax") is None:
            print("JAX is not installed (pip install 'symbackprop[jax]'): no JAX runs")
        else:
            pairs.append(("jax", run_jax(folder, data), "params/"))
        mpirun = _mpirun()
        if mpirun is None or importlib.util.find_spec("mpi4py") is None:
            print("mpirun or mpi4py is missing (pip install 'symbackprop[distributed]'): "
                  "no MPI runs")
        else:
            pairs.append(("mpi", run_mpi(folder, data, mpirun), "params/"))
        if pairs:
            print(f"{'run':32s}{'final loss':>12s}{'seconds':>9s}")
        for kind, (one, many), prefix in pairs:
            for label, loss, seconds, error, _ in (one, many):
                print(f"{label:32s}{loss or 'failed':>12s}{seconds:9.1f}")
            if one[3] or many[3]:
                print("  " + "; ".join(e for e in (one[3], many[3]) if e))
                status = 1
                continue
            diff = difference(_params(many[4], prefix), _params(one[4], prefix))
            ok = diff <= TOLERANCE[kind]
            status |= not ok
            print(f"  {'equal' if ok else 'NOT EQUAL'}: the parameters of the two runs differ by "
                  f"{diff:.1e} of the largest (tolerance {TOLERANCE[kind]:.0e})")
    return status


if __name__ == "__main__":
    sys.exit(main())
