"""MPI training scripts with dropout and in mixed precision (issue 15): ``sb.training_script(
..., distributed="mpi")`` under ``mpirun -n K`` on localhost against the one-process script.

Dropout: every rank draws the masks of the whole global batch and keeps its rows', so the
training is the one process's (float64 to 1e-12) and the generator's state is every
rank's. Mixed precision: the float32 gradients are summed, every rank takes the one
process's overflow decisions, so the scaler's state is exactly the one process's and the
parameters equal to float16's tolerance. Each MPI run goes through ``RANKS``, a wrapper
that saves what every rank holds at the end (``rank<r>.npz``), to check that the ranks
agree. Every run is a subprocess with a timeout (``test_mpi.run``).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
from standalone import assert_source_ruff_clean
from test_mpi import arrays, blobs, losses, needs_mpi, run

import symbackprop as sb
from symbackprop.cli import main as cli_main
from symbackprop.errors import CodegenError
from symbackprop.models import _loss, dense

# runs a generated script's main, then saves this rank's parameters, optimizer state, batch
# norm's running statistics and dropout generator state as rank<r>.npz in the working directory
RANKS = '''
import importlib.util, json, sys
import numpy as np
spec = importlib.util.spec_from_file_location("trainmod", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
inner = mod.train
def train(args, data, params, state, progress, norms=None):
    status = inner(args, data, params, state, progress, norms)
    out = {"params/" + k: v for k, v in params.items()}
    for k, v in state.items():
        if isinstance(v, dict):
            out.update({f"state/{k}/{n}": a for n, a in v.items()})
        else:
            out["state/" + k] = np.asarray(v)
    buffers = getattr(mod, "BUFFERS", None) or {}
    out.update({"buffers/running/" + k: v for k, v in buffers.get("running", {}).items()})
    if "rng" in buffers:
        out["rng"] = np.asarray(json.dumps(buffers["rng"].bit_generator.state))
    np.savez(f"rank{mod.COMM.Get_rank()}.npz", **out)
    return status
mod.train = train
sys.exit(mod.main(sys.argv[2:]))
'''


def drop_mlp() -> sb.Graph:
    """A 4-16-3 classifier with dropout on its input and its hidden layer."""
    g = sb.Graph("drop_mlp")
    X = g.input("X", shape=("N", 4))
    h = g.name(sb.relu(dense(g, sb.dropout(X, 0.2), 4, 16, 1)), "h1")
    g.output("logits", dense(g, sb.dropout(h, 0.3), 16, 3, 2))
    _loss(g, "softmax_cross_entropy", g["logits"], 3)
    return g


KW = {"optimizer": "adam", "lr": 0.01, "epochs": 3, "batch_size": 24}
# growth_interval=2: the scale doubles every 2 good steps, so steps overflow and are skipped
MIXED = {"precision": "mixed", "growth_interval": 2}


@pytest.fixture(scope="module")
def scripts(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("mpi_ext_scripts")
    mlp = sb.models.mlp([4, 8, 3])
    for name, g, kw in (("drop", drop_mlp(), {}), ("mixed", mlp, MIXED),
                        ("dropmixed", drop_mlp(), MIXED)):
        (d / f"{name}.py").write_text(sb.training_script(g, **KW, **kw))
        (d / f"{name}_mpi.py").write_text(sb.training_script(g, distributed="mpi", **KW, **kw))
    (d / "ranks.py").write_text(RANKS)
    return d


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """test_mpi's blobs."""
    return blobs(tmp_path_factory.mktemp("mpi_ext_data"))


def on_ranks(scripts: Path, name: str, ranks: int, cwd: Path, *args):
    """The MPI script under mpirun -n ranks, through the RANKS wrapper."""
    return run(scripts / "ranks.py", scripts / f"{name}_mpi.py", *args, ranks=ranks, cwd=cwd)


def ranks_agree(cwd: Path, ranks: int) -> dict:
    """What every rank holds at the end: the same bytes. Returns rank 0's."""
    held = [arrays(cwd / f"rank{r}.npz") for r in range(ranks)]
    for other in held[1:]:
        assert sorted(other) == sorted(held[0])
        assert all(other[k].tobytes() == held[0][k].tobytes() for k in held[0]), \
            [k for k in held[0] if other[k].tobytes() != held[0][k].tobytes()]
    return held[0]


def assert_close(a: dict, b: dict, tol: float) -> None:
    """Parameters and optimizer state to tol (relative to each array's largest entry, and
    the scaler's counts exactly: tol 0 for them); the rest (progress, generator state)
    the same bytes."""
    assert sorted(a) == sorted(b)
    for k, v in a.items():
        if k in ("state/scale", "state/good_steps", "state/skipped", "state/t"):
            assert v == b[k], (k, v, b[k])
        elif k.startswith(("params/", "state/")):
            err = float(np.max(np.abs(v - b[k])) / max(np.max(np.abs(v)), 1e-30))
            assert err <= tol, (k, err)
        elif k != "progress/loss_sum":
            assert v.tobytes() == b[k].tobytes(), k


# -- dropout ----------------------------------------------------------------------------------
@needs_mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_dropout_k_ranks_equal_one_process(scripts, data, tmp_path, ranks):
    one = run(scripts / "drop.py", "--data", data, "--out", "one.npz", ranks=None, cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    par = on_ranks(scripts, "drop", ranks, tmp_path, "--data", data, "--out", "par.npz")
    assert par.returncode == 0, par.stderr
    single = arrays(tmp_path / "one.npz")
    assert_close(single, arrays(tmp_path / "par.npz"), 1e-12)
    # every rank's generator is the one process's (with 3 ranks a rank had no rows of the
    # last batch: it drew nothing and took the state of a rank that did)
    held = ranks_agree(tmp_path, ranks)
    assert str(held["rng"]) == str(single["buffers/rng"])
    assert_close({k: single[k] for k in held if k != "rng"},
                 {k: held[k] for k in held if k != "rng"}, 1e-12)
    assert np.allclose(losses(par.stdout), losses(one.stdout), rtol=1e-5)
    assert par.stderr == ""


@needs_mpi
def test_dropout_checkpoint_at_two_ranks_resumes_at_three(scripts, data, tmp_path):
    straight = run(scripts / "drop.py", "--data", data, "--epochs", 4, "--out", "full.npz",
                   ranks=None, cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr
    first = on_ranks(scripts, "drop", 2, tmp_path, "--data", data, "--epochs", 2,
                     "--out", "ck.npz")
    assert first.returncode == 0, first.stderr
    resumed = on_ranks(scripts, "drop", 3, tmp_path, "--data", data, "--epochs", 4,
                       "--resume", "ck.npz", "--out", "resumed.npz")
    assert resumed.returncode == 0, resumed.stderr
    assert_close(arrays(tmp_path / "full.npz"), arrays(tmp_path / "resumed.npz"), 1e-12)
    assert np.allclose(losses(first.stdout) + losses(resumed.stdout), losses(straight.stdout),
                       rtol=1e-5)
    # and the one-process script resumes it too (a network with dropout and no batch norm)
    plain = run(scripts / "drop.py", "--data", data, "--epochs", 4, "--resume", "ck.npz",
                "--out", "plain.npz", ranks=None, cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    assert_close(arrays(tmp_path / "full.npz"), arrays(tmp_path / "plain.npz"), 1e-12)


def test_dropout_on_an_array_not_batch_first_is_refused():
    g = sb.Graph("tdrop")
    X = g.input("X", shape=("N", 4))
    g.output("logits", sb.transpose(sb.dropout(sb.transpose(dense(g, X, 4, 3, 1)), 0.2)))
    _loss(g, "softmax_cross_entropy", g["logits"], 3)
    with pytest.raises(CodegenError, match=r"distributed=mpi draws dropout masks by rows of the "
                       r"global batch, but the mask dropout_mask_1 has shape \(3, N\)"):
        sb.training_script(g, distributed="mpi")
    sb.training_script(g)  # one process draws the whole mask: fine


# -- mixed precision ------------------------------------------------------------------------
@needs_mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_mixed_k_ranks_take_the_one_process_decisions(scripts, data, tmp_path, ranks):
    one = run(scripts / "mixed.py", "--data", data, "--epochs", 5, "--out", "one.npz",
              ranks=None, cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    par = on_ranks(scripts, "mixed", ranks, tmp_path, "--data", data, "--epochs", 5,
                   "--out", "par.npz")
    assert par.returncode == 0, par.stderr
    single = arrays(tmp_path / "one.npz")
    assert int(single["state/skipped"]) >= 3  # the overflow path ran
    # the same steps skipped, the same scale and Adam's t; the parameters to float16's
    # precision (a rank rounds its partial sums to float16, the one process the whole sum)
    assert_close(single, arrays(tmp_path / "par.npz"), 1e-3)
    held = ranks_agree(tmp_path, ranks)
    assert all(held[k].tobytes() == arrays(tmp_path / "par.npz")[k].tobytes() for k in held)
    # rank 0 alone prints: the job's ranks, then the epoch lines and their float16 underflow
    # lines, as one process
    first, *lines = par.stdout.splitlines()
    assert first.startswith(f"data parallel over {ranks} MPI rank(s): ")
    assert len(lines) == len(one.stdout.splitlines()) == 2 * 5 + 1
    assert re.findall(r"\d+ steps skipped", par.stdout) == \
        re.findall(r"\d+ steps skipped", one.stdout)
    assert par.stderr == ""


@needs_mpi
def test_mixed_with_dropout_two_ranks_take_the_one_process_masks_and_decisions(scripts, data,
                                                                               tmp_path):
    """Both at once: the global batch's masks (RowDraws) in the mixed step, the float32 sums
    and the one process's overflow decisions."""
    one = run(scripts / "dropmixed.py", "--data", data, "--epochs", 5, "--out", "one.npz",
              ranks=None, cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    par = on_ranks(scripts, "dropmixed", 2, tmp_path, "--data", data, "--epochs", 5,
                   "--out", "par.npz")
    assert par.returncode == 0, par.stderr
    single = arrays(tmp_path / "one.npz")
    assert int(single["state/skipped"]) >= 3
    assert_close(single, arrays(tmp_path / "par.npz"), 1e-3)
    held = ranks_agree(tmp_path, 2)
    assert str(held["rng"]) == str(single["buffers/rng"])
    assert re.findall(r"\d+ steps skipped", par.stdout) == \
        re.findall(r"\d+ steps skipped", one.stdout)


@needs_mpi
def test_mixed_nan_loss_on_one_rank_stops_every_rank(scripts, data, tmp_path):
    spec = importlib.util.spec_from_file_location("mixed_mpi", scripts / "mixed_mpi.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rng = np.random.default_rng(0)
    mod.init_params(rng)  # the script's draws before its first shuffle
    row = rng.permutation(122)[2 * 24 + 12 + 3]  # batch 3, in rank 1's half
    bad = arrays(data)
    bad["X"] = bad["X"].copy()
    bad["X"][row, 0] = np.inf
    np.savez(tmp_path / "bad.npz", **bad)
    r = run(scripts / "mixed_mpi.py", "--data", "bad.npz", "--out", "ck.npz", ranks=2,
            cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    [line] = r.stderr.splitlines()
    assert "stopped at epoch 1, batch 3 of 6: the loss is nan on another rank's rows" in line
    good = arrays(tmp_path / "ck.last_good.npz")
    assert int(good["progress/seen"]) == 2 * 24
    assert all(np.isfinite(good[k]).all() for k in good if k.startswith(("params/", "state/")))


def test_mixed_and_dropout_scripts_ruff_clean_one_allreduce(scripts):
    for name in ("mixed_mpi.py", "drop_mpi.py"):
        src = (scripts / name).read_text()
        assert_source_ruff_clean(src)
        assert src.count(".Allreduce(") == 1, name
    # the one-process scripts have none of it
    for name in ("mixed.py", "drop.py"):
        src = (scripts / name).read_text()
        assert "COMM" not in src and "RowDraws" not in src and "_summed_update" not in src


def test_cli_mixed_under_mpi(tmp_path):
    out = tmp_path / "t.py"
    assert cli_main(["train-script", "mlp:4-8-3", "--distributed", "mpi", "--precision",
                     "mixed", "-o", str(out)]) == 0
    src = out.read_text()
    assert "distributed='mpi'" in src and "precision='mixed'" in src
    assert "def _summed_update(" in src and "def _scaled_update(" not in src
