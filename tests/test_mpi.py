"""Data-parallel training scripts under MPI (issue 15): ``sb.training_script(...,
distributed="mpi")`` run by ``mpirun -n K`` on localhost against the one-process script.

Every run is a subprocess with a timeout; mpirun starts its ranks with Hydra's fork
launcher on this machine (no ssh) and its interface set to the loopback.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from standalone import assert_source_ruff_clean, run_with_numpy_only

import symbackprop as sb
from symbackprop.cli import main as cli_main
from symbackprop.errors import CodegenError

MPIRUN = shutil.which("mpirun", path=f"{Path(sys.executable).parent}{os.pathsep}"
                      f"{os.environ.get('PATH', '')}")
TIMEOUT = 120  # seconds, for each run (a run here takes about one)

needs_mpi = pytest.mark.skipif(
    MPIRUN is None or not __import__("importlib").util.find_spec("mpi4py"),
    reason="mpirun or mpi4py is missing: pip install symbackprop[distributed]")

# a classifier with Adam; a wider one with SGD, whose gradients come out scaled by lr and
# whose 128 -> 128 layer carries its bias in the product (blocks of the flat buffers)
NETWORKS = {
    "adam": (lambda: sb.models.mlp([4, 8, 3]), {"optimizer": "adam", "lr": 0.01}),
    "sgd": (lambda: sb.models.mlp([4, 128, 128, 3]), {"optimizer": "sgd", "lr": 0.05}),
}


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OPENBLAS_NUM_THREADS="1", HYDRA_LAUNCHER="fork", HYDRA_IFACE="lo")
    return env


def run(script: Path, *args, ranks: int | None, cwd: Path) -> subprocess.CompletedProcess:
    """The script in one process (ranks=None: plain python) or under mpirun -n ranks."""
    cmd = [sys.executable, str(script), *map(str, args)]
    if ranks is not None:
        cmd = [MPIRUN, "-n", str(ranks), *cmd]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=_env(),
                          timeout=TIMEOUT, check=False)


def arrays(path: Path) -> dict:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def losses(stdout: str) -> list[float]:
    return [float(v) for v in re.findall(r"^epoch +\d+/\d+  loss (\S+)", stdout, re.MULTILINE)]


def assert_close(a: dict, b: dict) -> None:
    """The parameters, optimizer state and progress of two checkpoints: equal to 1e-12."""
    assert sorted(a) == sorted(b)
    for k, v in a.items():
        if k.startswith(("params/", "state/")):
            assert np.allclose(v, b[k], rtol=1e-12, atol=1e-12), \
                (k, float(np.max(np.abs(v - b[k]))))
        elif k != "progress/loss_sum":
            assert v.tobytes() == b[k].tobytes(), k


@pytest.fixture(scope="module")
def scripts(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("mpi_scripts")
    for name, (net, kw) in NETWORKS.items():
        (d / f"{name}.py").write_text(sb.training_script(net(), epochs=3, batch_size=24, **kw))
        (d / f"{name}_mpi.py").write_text(sb.training_script(
            net(), epochs=3, batch_size=24, distributed="mpi", **kw))
    return d


def blobs(d: Path) -> Path:
    """Three blobs in 4-D, written to d/blobs.npz: 122 training rows (the last batch of 24
    holds 2: under 3 ranks one rank has none of it) and 30 test rows."""
    rng = np.random.default_rng(0)
    centers = rng.normal(scale=3, size=(3, 4))
    y = rng.integers(0, 3, size=152)
    X = centers[y] + rng.normal(size=(152, 4))
    np.savez(d / "blobs.npz", X=X[:122], y=y[:122], X_test=X[122:], y_test=y[122:])
    return d / "blobs.npz"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return blobs(tmp_path_factory.mktemp("mpi_data"))


# -- the same training on K ranks as in one process ---------------------------------------
@needs_mpi
@pytest.mark.parametrize("ranks", [2, 3])
@pytest.mark.parametrize("net", list(NETWORKS))
def test_k_ranks_equal_one_process(scripts, data, tmp_path, net, ranks):
    one = run(scripts / f"{net}.py", "--data", data, "--out", "one.npz", ranks=None,
              cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    par = run(scripts / f"{net}_mpi.py", "--data", data, "--out", "par.npz", ranks=ranks,
              cwd=tmp_path)
    assert par.returncode == 0, par.stderr
    assert_close(arrays(tmp_path / "one.npz"), arrays(tmp_path / "par.npz"))
    # rank 0 alone prints: the job it runs in, then one line per epoch and the last line, as
    # one process does
    first, *lines = par.stdout.splitlines()
    assert first == (f"data parallel over {ranks} MPI rank(s): {24 // ranks} rows of each "
                     "global batch of 24 per rank")
    assert len(lines) == len(one.stdout.splitlines()) == 4
    assert np.allclose(losses(par.stdout), losses(one.stdout), rtol=1e-5)
    assert par.stderr == ""
    # rank 0 alone writes: no temporary files of other ranks
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.npz", "par.npz"]


@needs_mpi
def test_checkpoint_at_two_ranks_resumes_at_three(scripts, data, tmp_path):
    straight = run(scripts / "adam.py", "--data", data, "--epochs", 4, "--out", "full.npz",
                   ranks=None, cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr
    first = run(scripts / "adam_mpi.py", "--data", data, "--epochs", 2, "--out", "ck.npz",
                ranks=2, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    # the checkpoint holds nothing of the ranks: the same keys as one process writes
    assert sorted(arrays(tmp_path / "ck.npz")) == sorted(arrays(tmp_path / "full.npz"))
    resumed = run(scripts / "adam_mpi.py", "--data", data, "--epochs", 4, "--resume",
                  "ck.npz", "--out", "resumed.npz", ranks=3, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert_close(arrays(tmp_path / "full.npz"), arrays(tmp_path / "resumed.npz"))
    assert np.allclose(losses(first.stdout) + losses(resumed.stdout), losses(straight.stdout),
                       rtol=1e-5)
    # and the one-process script resumes it too
    plain = run(scripts / "adam.py", "--data", data, "--epochs", 4, "--resume", "ck.npz",
                "--out", "plain.npz", ranks=None, cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    assert_close(arrays(tmp_path / "full.npz"), arrays(tmp_path / "plain.npz"))


@needs_mpi
def test_metrics_and_grad_norms_from_rank_0_alone(scripts, data, tmp_path):
    r = run(scripts / "adam_mpi.py", "--data", data, "--metrics", "m.csv", "--log-grad-norms",
            ranks=3, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = (tmp_path / "m.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,loss,test_acc,grad_norm_") and len(rows) == 1 + 3
    assert len(re.findall("grad norms", r.stdout)) == 3


@needs_mpi
def test_without_mpirun_it_is_the_one_process_script(scripts, data, tmp_path):
    """K = 1: the same arithmetic as the plain script, so the same bytes."""
    for name in ("adam.py", "adam_mpi.py"):
        r = run(scripts / name, "--data", data, "--out", name + ".npz", ranks=None,
                cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    a, b = arrays(tmp_path / "adam.py.npz"), arrays(tmp_path / "adam_mpi.py.npz")
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)


@needs_mpi
def test_inf_on_one_rank_stops_every_rank_at_that_batch(scripts, data, tmp_path):
    # an inf in the 3rd batch of epoch 1, in rank 1's half: every rank stops there
    rng = np.random.default_rng(0)
    init = np.random.default_rng(0)
    sb.compile(sb.models.mlp([4, 8, 3]), optimizer="adam").init_params(init)  # the draws
    rng.bit_generator.state = init.bit_generator.state
    row = rng.permutation(122)[2 * 24 + 12 + 3]
    bad = arrays(data)
    bad["X"] = bad["X"].copy()
    bad["X"][row, 0] = np.inf
    np.savez(tmp_path / "bad.npz", **bad)
    r = run(scripts / "adam_mpi.py", "--data", "bad.npz", "--out", "ck.npz", ranks=2,
            cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert len(r.stderr.splitlines()) == 1, r.stderr
    assert "stopped at epoch 1, batch 3 of 6" in r.stderr
    good = arrays(tmp_path / "ck.last_good.npz")
    assert int(good["progress/seen"]) == 2 * 24
    assert all(np.isfinite(good[k]).all() for k in good if k.startswith(("params/", "state/")))


# -- bad input ------------------------------------------------------------------------------
@needs_mpi
def test_global_batch_not_a_multiple_of_the_ranks_one_line(scripts, data, tmp_path):
    r = run(scripts / "adam_mpi.py", "--data", data, "--batch-size", 16, ranks=3,
            cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [(
        "adam_mpi.py: error: --batch-size 16 is the global batch, split evenly over the 3 MPI "
        "ranks, and is not a multiple of 3; pass --batch-size 15 or 18, or run on a number of "
        "ranks that divides 16 (mpirun -n K)")]
    assert list(tmp_path.iterdir()) == []


def test_without_mpi4py_one_line_naming_the_extra(scripts, data, tmp_path):
    """A child Python that finds NumPy but not mpi4py (-I -S: no site-packages)."""
    r = run_with_numpy_only(tmp_path, scripts / "adam_mpi.py", "--data", str(data),
                            timeout=TIMEOUT)
    assert r.returncode == 2
    [line] = r.stderr.splitlines()
    assert "needs mpi4py" in line and "pip install symbackprop[distributed]" in line
    assert "pip install mpi4py mpich" in line
    assert not (tmp_path / "checkpoint.npz").exists()


def test_generation_refuses_what_it_cannot_distribute():
    g = sb.models.mlp([4, 8, 3])
    with pytest.raises(ValueError, match=r"distributed='nccl'; expected None"):
        sb.training_script(g, distributed="nccl")
    with pytest.raises(CodegenError, match="leave optimize on"):
        sb.training_script(g, optimize=False, distributed="mpi")
    # batch norm trains with synchronised statistics: tests/test_mpi_syncbn.py


def test_script_is_ruff_clean_and_imports_mpi4py_only_when_run(scripts):
    src = (scripts / "sgd_mpi.py").read_text()
    assert_source_ruff_clean(src)
    tree = ast.parse(src)
    top = {a.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import)
           for a in node.names}
    assert "mpi4py" not in top and "numpy" in top
    lazy = [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert [n.module for n in lazy] == ["mpi4py"]
    # one Allreduce per step, of the flat gradient buffer
    assert src.count(".Allreduce(") == 1 and "COMM.Allreduce(MPI.IN_PLACE, G" in src
    # the one-process script has none of it
    plain = (scripts / "sgd.py").read_text()
    assert "mpi4py" not in plain and "COMM" not in plain and "share=" not in plain


def test_cli_train_script_distributed(tmp_path, capsys):
    out = tmp_path / "t.py"
    assert cli_main(["train-script", "mlp:4-8-3", "--distributed", "mpi", "-o", str(out)]) == 0
    src = out.read_text()
    assert "distributed='mpi'" in src and "mpirun -n 2 python train.py" in src
    with pytest.raises(SystemExit) as e:
        cli_main(["train-script", "mlp:4-8-3", "--distributed", "gloo"])
    assert e.value.code == 2
    assert "invalid choice: 'gloo'" in capsys.readouterr().err

