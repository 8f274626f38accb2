"""The training scripts' options and outputs, checked before any training (the runtime's
ScriptParser, check_out, outputs, check_network and check_precision, runtime/script.py,
shared by the NumPy, MPI, JAX and torch scripts; the JAX script's multi-host flags,
runtime/jax_script.py): every bad option is one line ending ``(see --help)``, exit status
2; an --out that cannot be written stops the script before its first epoch (under mpirun
every rank stops, rank 0 alone says it); a file that is no checkpoint, or one of another
precision, is refused in one line saying so.

Every run is a generated script in a subprocess with a timeout, on 16 rows of made data,
JAX on the CPU, mpirun on the loopback (Hydra's fork launcher, as tests/test_mpi.py).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import symbackprop as sb

TIMEOUT = 120  # seconds for each run (one takes a few)
HAS = {b: importlib.util.find_spec(b) is not None for b in ("torch", "jax", "mpi4py")}
MPIRUN = shutil.which("mpirun", path=f"{Path(sys.executable).parent}{os.pathsep}"
                      f"{os.environ.get('PATH', '')}")
needs = {b: pytest.mark.skipif(not HAS[b], reason=f"{b} is not installed") for b in HAS}
needs["mpi"] = pytest.mark.skipif(MPIRUN is None or not HAS["mpi4py"],
                                  reason="mpirun or mpi4py is missing")
# the scripts, by name: (backend, training_script's options)
SCRIPTS = {"numpy": ("numpy", {}), "numpy_mixed": ("numpy", {"precision": "mixed"}),
           "mpi": ("numpy", {"distributed": "mpi"}),
           "torch": ("torch", {}), "torch_mixed": ("torch", {"precision": "mixed"}),
           "jax": ("jax", {"dtype": "float32"}), "jax_mixed": ("jax", {"precision": "mixed"})}
# the scripts whose library is missing are not written (and their tests skipped)
MARKS = {"numpy": [], "mpi": [needs["mpi"]], "torch": [needs["torch"]], "jax": [needs["jax"]]}


def _backends(*names):
    return [pytest.param(n, marks=MARKS[n.split("_")[0]], id=n) for n in names]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """The scripts of an MLP 4-3-3 (SGD, batches of 4), train_NAME.py (not NAME.py: numpy.py
    would shadow NumPy), and d.npz: 16 rows and a test split."""
    d = tmp_path_factory.mktemp("script_options")
    for name, (backend, options) in SCRIPTS.items():
        if backend == "numpy" or HAS[backend]:
            (d / f"train_{name}.py").write_text(sb.training_script(
                sb.models.mlp([4, 3, 3]), backend=backend, optimizer="sgd", lr=0.1,
                batch_size=4, epochs=1, **options))
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(16, 4)), rng.integers(0, 3, 16)
    np.savez(d / "d.npz", X=X, y=y, X_test=X[:4], y_test=y[:4])
    return d


def run(folder: Path, name: str, *args, cwd: Path, ranks: int | None = None):
    """python train_NAME.py ARGS in cwd (under mpirun -n ranks for the MPI script), with no
    PYTHONPATH: the scripts need no symbackprop."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "XLA", "JAX"))}
    env.update(JAX_PLATFORMS="cpu", OPENBLAS_NUM_THREADS="1", HYDRA_LAUNCHER="fork",
               HYDRA_IFACE="lo")
    cmd = [sys.executable, str(folder / f"train_{name}.py"), *map(str, args)]
    if name == "mpi":
        cmd = [MPIRUN, "-n", str(ranks or 2), *cmd]
    if name.startswith("torch"):
        cmd += ["--device", "cpu"]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT, check=False)


def one_line(r, says: str) -> str:
    """r stopped with exit status 2 and one line on stderr, saying `says`, before training."""
    assert r.returncode == 2 and says in r.stderr, (r.returncode, r.stderr[-3000:])
    assert len(r.stderr.splitlines()) == 1, r.stderr[-3000:]
    assert "epoch" not in r.stdout, r.stdout
    return r.stderr


# -- option errors: one line, once -----------------------------------------------------------
@pytest.mark.parametrize("name", _backends("numpy", "torch", "jax", "mpi"))
def test_a_bad_option_is_one_line_printed_once(folder, tmp_path, name):
    """argparse's usage block is gone: --lr nan and --batch-size 0 are one line ending in
    (see --help), exit 2; under mpirun -n 2 rank 0 alone prints it."""
    line = one_line(run(folder, name, "--data", folder / "d.npz", "--lr", "nan", cwd=tmp_path),
                    "argument --lr: nan is not a finite number > 0.0")
    assert line.startswith(f"train_{name}.py: error: ") and line.endswith(" (see --help)\n"), line
    one_line(run(folder, name, "--data", folder / "d.npz", "--batch-size", "0", cwd=tmp_path),
             "argument --batch-size: 0 is not a finite number >= 1")
    one_line(run(folder, name, "--data", folder / "d.npz", "--no-such-option", cwd=tmp_path),
             "unrecognized arguments: --no-such-option")
    assert list(tmp_path.iterdir()) == []


# -- --out: checked before the first epoch ---------------------------------------------------
@pytest.mark.parametrize("name", _backends("numpy", "torch", "jax", "mpi"))
def test_an_unwritable_out_stops_before_training(folder, tmp_path, name):
    """--out in a missing folder, or naming a folder, is one line before the first epoch
    (not a traceback after the last); under mpirun every rank stops, exit 2, one line."""
    ext = ".pt" if name == "torch" else ".npz"
    one_line(run(folder, name, "--data", folder / "d.npz", "--out", f"missing/ck{ext}",
                 cwd=tmp_path),
             f"cannot write --out missing/ck{ext}: No such file or directory")
    (tmp_path / "folder").mkdir()
    one_line(run(folder, name, "--data", folder / "d.npz", "--out", "folder", cwd=tmp_path),
             "--out folder is a directory; expected the name of a checkpoint file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]
    assert list((tmp_path / "folder").iterdir()) == []  # (no probe file left behind)


@pytest.mark.parametrize("name", _backends("mpi", "jax"))
def test_a_writable_out_and_metrics_still_train(folder, tmp_path, name):
    """The checks pass a good --out and --metrics: the script trains and writes both; the
    MPI script first says on how many ranks it runs (rank 0, once)."""
    r = run(folder, name, "--data", folder / "d.npz", "--out", "ck.npz", "--metrics", "m.csv",
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.npz", "m.csv"]
    if name == "mpi":
        assert r.stdout.splitlines()[0] == ("data parallel over 2 MPI rank(s): 2 rows of each "
                                            "global batch of 4 per rank"), r.stdout


@needs["mpi"]
def test_mpi_bad_metrics_stops_every_rank(folder, tmp_path):
    """--metrics in a missing folder under mpirun: rank 0 cannot open it and every rank
    stops with it (the others used to wait in the first Allreduce forever)."""
    one_line(run(folder, "mpi", "--data", folder / "d.npz", "--metrics", "missing/m.csv",
                 cwd=tmp_path), "cannot write --metrics missing/m.csv: No such file")


@needs["mpi"]
def test_mpi_without_mpi4py_under_mpirun_says_it_once(folder, tmp_path):
    """mpirun -n 2 of a Python that finds NumPy but not mpi4py (-I -S, as tests/test_mpi.py):
    the rank the launcher puts in the environment (PMI_RANK) lets rank 0 alone say it."""
    site = Path(np.__file__).resolve().parent.parent
    only = tmp_path / "numpy_only"
    only.mkdir()
    for entry in site.iterdir():
        if entry.name == "numpy" or entry.name.startswith(("numpy.", "numpy-")):
            (only / entry.name).symlink_to(entry)
    runner = ("import runpy, sys; sys.path.insert(0, sys.argv[1]); sys.argv = sys.argv[2:]; "
              "runpy.run_path(sys.argv[0], run_name='__main__')")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HYDRA_LAUNCHER="fork", HYDRA_IFACE="lo")
    r = subprocess.run([MPIRUN, "-n", "2", sys.executable, "-I", "-S", "-c", runner, str(only),
                        str(folder / "train_mpi.py"), "--data", str(folder / "d.npz")], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    one_line(r, "needs mpi4py")


# -- the JAX script's multi-host flags -------------------------------------------------------
@needs["jax"]
@pytest.mark.parametrize("flags, says", [
    (["--coordinator", "garbage", "--num-processes", "2", "--process-id", "0"],
     "argument --coordinator: 'garbage' is not HOST:PORT with a port 1..65535"),
    (["--coordinator", "localhost:notaport", "--num-processes", "2", "--process-id", "0"],
     "argument --coordinator: 'localhost:notaport' is not HOST:PORT"),
    (["--coordinator", "localhost:70000", "--num-processes", "2", "--process-id", "0"],
     "argument --coordinator: 'localhost:70000' is not HOST:PORT"),
    (["--coordinator", "localhost:1234", "--num-processes", "1", "--process-id", "3"],
     "argument --process-id: 3 is not below --num-processes 1; expected 0..0"),
    (["--coordinator", "localhost:1234", "--num-processes", "0", "--process-id", "0"],
     "argument --num-processes: 0 is not a finite number >= 1"),
    (["--num-processes", "2", "--process-id", "1"],
     ("--num-processes and --process-id without --coordinator; expected several hosts: all "
      "three of --coordinator, --num-processes and --process-id, or none")),
    (["--coordinator", "localhost:1234"],
     "--coordinator without --num-processes and --process-id"),
], ids=["garbage", "notaport", "port70000", "id3of1", "zero", "no_coordinator", "alone"])
def test_jax_multi_host_flags_are_checked_before_jax_distributed(folder, tmp_path, flags,
                                                                 says):
    """Bad or incomplete --coordinator, --num-processes, --process-id: one line, exit 2,
    before jax.distributed.initialize (which raised IndexError or ValueError, or crashed
    the process, or, without --coordinator, was never called: the run trained alone)."""
    line = one_line(run(folder, "jax", "--data", folder / "d.npz", "--out", "ck.npz", *flags,
                        cwd=tmp_path), says)
    assert "Traceback" not in line
    assert list(tmp_path.iterdir()) == []


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(folder, tmp_path, *args):
    """The JAX script as two processes on the loopback (jax.distributed, one CPU device
    each): their CompletedProcess, process 0's first."""
    flags = ["--coordinator", f"127.0.0.1:{_free_port()}", "--num-processes", "2"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "XLA", "JAX"))}
    env.update(JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, str(folder / "train_jax.py"), *map(str, args),
                               *flags, "--process-id", str(i)], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    try:
        outs = [p.communicate(timeout=TIMEOUT) for p in procs]
        return [subprocess.CompletedProcess(p.args, p.returncode, *out)
                for p, out in zip(procs, outs)]
    finally:
        for p in procs:
            p.kill()


@needs["jax"]
@pytest.mark.slow
def test_jax_two_processes_train_as_one_and_stop_together(folder, tmp_path):
    """Two processes (--coordinator on 127.0.0.1) end with one process's parameters
    (float32, same global batches); an --out that process 0 cannot write stops both, in one
    line from process 0 (process 1 does not wait for it in the first step's collective)."""
    data = ["--data", folder / "d.npz", "--epochs", 2]
    alone = run(folder, "jax", *data, "--out", "alone.npz", cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr[-2000:]
    both = _two_processes(folder, tmp_path, *data, "--out", "two.npz")
    assert [r.returncode for r in both] == [0, 0], [r.stderr[-2000:] for r in both]
    with np.load(tmp_path / "alone.npz") as a, np.load(tmp_path / "two.npz") as b:
        names = [k for k in a.files if k.startswith("params/")]
        assert names and all(np.allclose(a[k], b[k], rtol=1e-5, atol=1e-7) for k in names)
    bad = _two_processes(folder, tmp_path, *data, "--out", tmp_path / "no" / "x.npz")
    assert [r.returncode for r in bad] == [2, 2], [r.stderr[-2000:] for r in bad]
    assert "cannot write --out" in bad[0].stderr and "cannot write" not in bad[1].stderr


@needs["jax"]
def test_jax_help_says_what_the_multi_host_values_and_batch_size_mean(folder, tmp_path):
    r = run(folder, "jax", "--help", cwd=tmp_path)
    text = " ".join(r.stdout.split())
    assert r.returncode == 0, r.stderr
    for says in ("--coordinator HOST:PORT the address of process 0",
                 "all three of --coordinator, --num-processes and --process-id, or none",
                 "--num-processes K how many processes train together",
                 "--process-id I this process's number, 0..K-1",
                 "each epoch trains full batches only, leaving out the last N mod batch size"):
        assert says in text, (says, text)


# -- checkpoints: not one, or of another precision --------------------------------------------
@pytest.mark.parametrize("name", _backends("numpy", "jax"))
def test_resuming_a_file_that_is_no_checkpoint_says_so(folder, tmp_path, name):
    """--resume of the data file names what it lacks, not 'network ? with ?'."""
    one_line(run(folder, name, "--data", folder / "d.npz", "--resume", folder / "d.npz",
                 cwd=tmp_path),
             "d.npz is not a checkpoint of a symbackprop training script: it has no 'network' "
             "and no 'optimizer' entry (found X, X_test, y, y_test); expected a file written "
             "by this script's --out")


@pytest.mark.parametrize("name", _backends("numpy", "torch", "jax"))
def test_a_checkpoint_of_another_precision_is_refused_both_ways(folder, tmp_path, name):
    """A float checkpoint resumed by the mixed-precision script and a mixed one resumed by
    the float script (which took it silently) are refused, saying which precision each
    has and what to do. (That each script still resumes its own checkpoint, bit for bit, the
    resume tests of test_mixed.py, test_jax_mixed.py, test_torch_script.py and
    test_jax_script.py check.)"""
    ext = ".pt" if name == "torch" else ".npz"
    for script in (name, f"{name}_mixed"):
        r = run(folder, script, "--data", folder / "d.npz", "--out", script + ext,
                cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
    line = one_line(run(folder, f"{name}_mixed", "--data", folder / "d.npz", "--epochs", 2,
                        "--resume", name + ext, "--out", "x" + ext, cwd=tmp_path),
                    f"checkpoint {name}{ext} was written without mixed precision (it lacks "
                    "the loss scale state/scale), and this script trains in mixed precision; "
                    "resume it with a script generated without --precision mixed")
    assert "or train anew without --resume" in line
    one_line(run(folder, name, "--data", folder / "d.npz", "--epochs", 2, "--resume",
                 f"{name}_mixed{ext}", "--out", "x" + ext, cwd=tmp_path),
             f"checkpoint {name}_mixed{ext} was written in mixed precision (it holds the loss "
             "scale state/scale), and this script trains without mixed precision; resume it "
             "with a script generated with --precision mixed")
    assert not (tmp_path / ("x" + ext)).exists()
