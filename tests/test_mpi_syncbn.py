"""Batch norm in the MPI training script (issue 15): ``sb.training_script(...,
distributed="mpi")`` takes batch norm's statistics over every rank's rows (SyncBatchNorm,
codegen/sync.py), so K ranks train as one process on the same global batches.

Each MPI run goes through ``RANKS``, a wrapper that saves what every rank holds at the end
(``rank<r>.npz``: parameters, optimizer state, running statistics, dropout's generator),
to check that the ranks agree; every run is a subprocess with a timeout (``test_mpi.run``).
The data are test_mpi's blobs: 122 rows, batches of 24, so under 3 ranks one rank holds no
row of each epoch's last batch (2 rows).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from standalone import assert_source_ruff_clean
from test_mpi import arrays, blobs, losses, needs_mpi, run
from test_mpi_ext import RANKS

import symbackprop as sb
from symbackprop.models import _loss, dense


def bn_mlp(dropout: float = 0.0) -> sb.Graph:
    """A 4-8-3 classifier: X @ W1, batch norm per feature, its gain and shift (no bias
    before it: batch norm removes it, and its gradient would be rounding noise that Adam
    scales up), relu, optionally dropout, then a dense layer."""
    g = sb.Graph("bn_mlp" + ("_drop" if dropout else ""))
    X = g.input("X", shape=("N", 4))
    bn = g.name(sb.batch_norm(X @ g.param("W1", shape=(4, 8)), axis=1), "bn1")
    h = g.name(sb.relu(bn * (g.const(1.0) + g.param("g1", shape=(8,)))
                       + g.param("c1", shape=(8,))), "h1")
    g.output("logits", dense(g, sb.dropout(h, dropout) if dropout else h, 8, 3, 2))
    _loss(g, "softmax_cross_entropy", g["logits"], 3)
    return g


def bn_after_relu(dropout: float = 0.0) -> sb.Graph:
    """A 4-8-3 classifier with batch norm after the activation, ``batch_norm(relu(X @ W1 +
    b1))``: the gradient batch norm passes on is fused into relu's (one statement reading
    its statistics and the batch's size), optionally dropout after it."""
    g = sb.Graph("bn_after_relu" + ("_drop" if dropout else ""))
    X = g.input("X", shape=("N", 4))
    h = g.name(sb.batch_norm(sb.relu(dense(g, X, 4, 8, 1)), axis=1), "bn1")
    g.output("logits", dense(g, sb.dropout(h, dropout) if dropout else h, 8, 3, 2))
    _loss(g, "softmax_cross_entropy", g["logits"], 3)
    return g


KW = {"optimizer": "adam", "lr": 0.01, "epochs": 3, "batch_size": 24}
# batch norm per channel over (N, H, W): X's flat rows of 4 as 1x2x2 images
CNN = {"graph": lambda: sb.models.cnn((1, 2, 2), channels=(2,), hidden=(4,), classes=3,
                                      batch_norm=True),
       "args": ("--input-shape", "1,2,2")}
NETS = {"bn": (bn_mlp, ()), "bndrop": (lambda: bn_mlp(0.3), ()),
        "cnn": (CNN["graph"], CNN["args"]), "relubn": (bn_after_relu, ()),
        "relubndrop": (lambda: bn_after_relu(0.3), ())}
# mixed precision: growth_interval=2, so that the scale doubles until steps overflow
MIXED = {"precision": "mixed", "growth_interval": 2}


@pytest.fixture(scope="module")
def scripts(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("mpi_syncbn_scripts")
    for name, (net, _) in NETS.items():
        (d / f"{name}.py").write_text(sb.training_script(net(), **KW))
        (d / f"{name}_mpi.py").write_text(sb.training_script(net(), distributed="mpi", **KW))
    for name, net in (("mixed", bn_mlp), ("mixed_relubn", bn_after_relu)):
        (d / f"{name}.py").write_text(sb.training_script(net(), **KW, **MIXED))
        (d / f"{name}_mpi.py").write_text(sb.training_script(net(), distributed="mpi", **KW,
                                                             **MIXED))
    (d / "ranks.py").write_text(RANKS)
    return d


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return blobs(tmp_path_factory.mktemp("mpi_syncbn_data"))


@pytest.fixture(scope="module")
def uneven(tmp_path_factory) -> Path:
    """Blobs as test_mpi's with 125 training rows: each epoch's last batch of 24 holds 5,
    which 2 ranks split 2 + 3 and 3 ranks 1 + 2 + 2, so the ranks' shares differ."""
    rng = np.random.default_rng(1)
    centers = rng.normal(scale=3, size=(3, 4))
    y = rng.integers(0, 3, size=155)
    X = centers[y] + rng.normal(size=(155, 4))
    path = tmp_path_factory.mktemp("mpi_syncbn_uneven") / "uneven.npz"
    np.savez(path, X=X[:125], y=y[:125], X_test=X[125:], y_test=y[125:])
    return path


def on_ranks(scripts: Path, name: str, ranks: int, cwd: Path, *args):
    return run(scripts / "ranks.py", scripts / f"{name}_mpi.py", *args, ranks=ranks, cwd=cwd)


def assert_close(a: dict, b: dict, tol: float = 1e-12) -> None:
    """Parameters, optimizer state and running statistics to tol (relative to each
    array's largest entry); the rest (progress, generator state) the same bytes."""
    assert sorted(a) == sorted(b)
    for k, v in a.items():
        if k.startswith(("params/", "state/", "buffers/running/")):
            err = float(np.max(np.abs(v - b[k])) / max(np.max(np.abs(v)), 1e-30))
            assert err <= tol, (k, err)
        elif k != "progress/loss_sum":
            assert v.tobytes() == b[k].tobytes(), k


def ranks_agree(cwd: Path, ranks: int) -> dict:
    """What every rank holds at the end: the same bytes. Returns rank 0's."""
    held = [arrays(cwd / f"rank{r}.npz") for r in range(ranks)]
    for other in held[1:]:
        assert sorted(other) == sorted(held[0])
        assert [k for k in held[0] if other[k].tobytes() != held[0][k].tobytes()] == []
    return held[0]


@needs_mpi
@pytest.mark.parametrize(("net", "ranks"), [("bn", 2), ("bn", 3), ("bndrop", 3), ("cnn", 3),
                                          ("relubn", 2), ("relubn", 3),
                                          ("relubndrop", 3)])
def test_k_ranks_equal_one_process(scripts, data, tmp_path, net, ranks):
    k_ranks_equal_one_process(scripts, data, tmp_path, net, ranks)


@needs_mpi
@pytest.mark.parametrize(("net", "ranks"), [("bn", 2), ("relubn", 3), ("cnn", 2)])
def test_a_last_batch_split_unevenly(scripts, uneven, tmp_path, net, ranks):
    """Ranks with different shares of a batch: each rank's gradients are of its own rows'
    mean loss (times its share only after the step), so batch norm's backward sums weight
    each rank's by its share (sync.grad_sum); a plain sum is 2% off in W1."""
    k_ranks_equal_one_process(scripts, uneven, tmp_path, net, ranks)


def k_ranks_equal_one_process(scripts: Path, data: Path, tmp_path: Path, net: str,
                              ranks: int) -> None:
    """The script of ``net`` on ``ranks`` ranks against one process, on ``data``."""
    extra = NETS[net][1]
    one = run(scripts / f"{net}.py", "--data", data, "--out", "one.npz", *extra, ranks=None,
              cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    par = on_ranks(scripts, net, ranks, tmp_path, "--data", data, "--out", "par.npz", *extra)
    assert par.returncode == 0, par.stderr
    assert par.stderr == ""
    single = arrays(tmp_path / "one.npz")
    assert any(k.startswith("buffers/running/") for k in single)
    assert_close(single, arrays(tmp_path / "par.npz"))
    # every rank holds the same parameters and running statistics (with 3 ranks one rank
    # had no rows of each last batch: it took the running statistics of a rank that had)
    held = ranks_agree(tmp_path, ranks)
    if "rng" in held:  # dropout: every rank's generator is the one process's
        assert str(held.pop("rng")) == str(single["buffers/rng"])
    assert_close({k: single[k] for k in held}, held)
    assert np.allclose(losses(par.stdout), losses(one.stdout), rtol=1e-5)


@needs_mpi
def test_checkpoint_at_two_ranks_resumes_at_three_and_in_one_process(scripts, data, tmp_path):
    straight = run(scripts / "bn.py", "--data", data, "--epochs", 4, "--out", "full.npz",
                   ranks=None, cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr
    first = on_ranks(scripts, "bn", 2, tmp_path, "--data", data, "--epochs", 2,
                     "--out", "ck.npz")
    assert first.returncode == 0, first.stderr
    resumed = on_ranks(scripts, "bn", 3, tmp_path, "--data", data, "--epochs", 4,
                       "--resume", "ck.npz", "--out", "resumed.npz")
    assert resumed.returncode == 0, resumed.stderr
    full = arrays(tmp_path / "full.npz")
    assert_close(full, arrays(tmp_path / "resumed.npz"))
    alone = run(scripts / "bn.py", "--data", data, "--epochs", 4, "--resume", "ck.npz",
                "--out", "alone.npz", ranks=None, cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr
    assert_close(full, arrays(tmp_path / "alone.npz"))
    assert np.allclose(losses(first.stdout) + losses(resumed.stdout), losses(straight.stdout),
                       rtol=1e-5)


def test_only_the_mpi_step_changes(scripts):
    """The one-process script has no trace of the synchronised statistics; the MPI
    script's planned step takes sync and sums batch norm's statistics through it, one
    statement per node, and is ruff clean."""
    one, mpi = (scripts / "cnn.py").read_text(), (scripts / "cnn_mpi.py").read_text()
    assert not any(w in one for w in ("sync=", "sync.", "_sync_batch_norm", "RowSums"))
    step = mpi.split("def loss_and_grads_into(")[1].split("\ndef ")[0]
    assert "sync=None):" in step.split("\n")[0]
    assert "_sync_batch_norm(" in step
    # Adam's step is not seeded by the rank's share: sums of gradients weighted by it
    assert step.count("sync.mean(") == 2 and step.count("sync.grad_sum(") == 2
    assert "sync.sum(" not in step
    # mixed precision's is (scale * share): plain sums
    mixed = (scripts / "mixed_mpi.py").read_text().split("def loss_and_grads_into(")[1]
    mixed = mixed.split("\ndef ")[0]
    assert mixed.count("sync.sum(") == 2 and "grad_sum" not in mixed
    assert step.count("(SyncBatchNorm)") == 6
    # the other functions (forward, evaluation, value_and_grad for --log-grad-norms) are
    # the one process's
    assert mpi.split("\ndef forward(")[1].split("\ndef ")[0] == \
        one.split("\ndef forward(")[1].split("\ndef ")[0]
    for src in (mpi, *((scripts / f"{n}_mpi.py").read_text() for n in ("bndrop", "mixed"))):
        assert_source_ruff_clean(src)


@needs_mpi
@pytest.mark.parametrize(("net", "ranks", "rows"), [("mixed", 2, "even"), ("mixed", 3, "even"),
                                                   ("mixed_relubn", 3, "even"),
                                                   ("mixed", 3, "uneven")])
def test_mixed_precision_takes_the_one_process_decisions(scripts, data, uneven, tmp_path, net,
                                                         ranks, rows):
    """Batch norm in float32 inside the float16 step, its sums over every rank's rows: the
    scaler's decisions are the one process's (steps overflow: growth_interval=2), the
    parameters and running statistics equal to float16's tolerance. Its step is seeded
    by the rank's share (scale * share): its backward sums are plain sums, also where
    the shares differ (uneven)."""
    data = uneven if rows == "uneven" else data
    one = run(scripts / f"{net}.py", "--data", data, "--out", "one.npz", ranks=None,
              cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    par = on_ranks(scripts, net, ranks, tmp_path, "--data", data, "--out", "par.npz")
    assert par.returncode == 0, par.stderr
    single, parallel = arrays(tmp_path / "one.npz"), arrays(tmp_path / "par.npz")
    assert single["state/skipped"] > 0  # the test exercises skipped steps
    exact = ("state/scale", "state/good_steps", "state/skipped", "state/t")
    assert [(k, single[k], parallel[k]) for k in exact if single[k] != parallel[k]] == []
    assert_close({k: v for k, v in single.items() if k not in exact},
                 {k: v for k, v in parallel.items() if k not in exact}, 1e-3)
    held = ranks_agree(tmp_path, ranks)
    assert all(held[k] == single[k] for k in exact)
    # rank 0's underflow counts each epoch, on its own rows' statistics (the step's sync
    # when none is passed: _OneProcess)
    assert par.stdout.count("flush to zero") == one.stdout.count("flush to zero") == 3
    assert par.stderr == ""


def test_sync_batch_norm_of_one_process_is_batch_norm():
    """With every row on one rank (_OneProcess: sums of one rank) the synchronised batch
    norm is batch norm to the byte: the sum over the rows divided by the count is how
    NumPy takes the mean; the running statistics too."""
    from symbackprop.codegen.runtime import numpy_ops as ops

    x = np.random.default_rng(3).normal(size=(5, 3, 2, 2)) * 3 + 40  # a mean far from 0
    plain = {"k.mean": np.zeros(3), "k.var": np.ones(3)}
    synced = {k: v.copy() for k, v in plain.items()}
    a = ops._batch_norm(x, 1, 1e-5, 0.1, True, plain, "k")
    b = ops._sync_batch_norm(x, 1, 1e-5, 0.1, True, synced, "k", ops._OneProcess(5))
    assert a.tobytes() == b.tobytes()
    assert all(plain[k].tobytes() == synced[k].tobytes() for k in plain)
    # evaluation (the running statistics): batch norm's own code
    c = ops._sync_batch_norm(x, 1, 1e-5, 0.1, False, synced, "k", None)
    assert c.tobytes() == ops._batch_norm(x, 1, 1e-5, 0.1, False, synced, "k").tobytes()


def test_the_fused_relu_gradient_takes_the_global_rows(scripts):
    """batch_norm(relu(...)): the gradient batch norm passes on is fused into relu's, one
    statement outside the norm's own; it reads the summed statistics and must take the
    global batch's rows (sync.rows) for the batch's size, as the norm's statements do, a
    plain statement (its out= calls are not rewritten)."""
    for name in ("relubn", "mixed_relubn"):
        src = (scripts / f"{name}_mpi.py").read_text()
        step = src.split("def loss_and_grads_into(")[1].split("\ndef ")[0]
        fused = next(ln for ln in step.split("\n") if ln.strip().startswith("dadd_1 = "))
        assert "sum_3" in fused and "sync.rows" in fused, fused
        assert not re.search(r"\bN\b", fused.split("  # ")[0]), fused
        assert "np.divide(dadd_1, N" not in step
        assert_source_ruff_clean(src)
