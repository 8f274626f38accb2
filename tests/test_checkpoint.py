"""Gradient checkpointing (checkpoint="sqrt" | "none" | [nodes]): the same numbers, bit for
bit, from less memory; the code and the diagram say what is recomputed."""

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings

import symbackprop as sb
from symbackprop.cli import main
from symbackprop.codegen.checkpoint import apply_checkpoint, checkpoints, kept_values
from symbackprop.cost import compiled_graph
from symbackprop.testing import random_graphs, random_inputs


def _steps(g, k=3, N=16, **kw):
    """Parameters after k training steps, unchecked and with checkpoint="sqrt"."""
    out = []
    for ck in ("none", "sqrt"):
        step = sb.compile(g, checkpoint=ck, **kw)
        params = step.init_params(0)
        state = step.init_state(params)
        rng = np.random.default_rng(1)
        X = rng.normal(size=(N, g["X"].shape[1]))
        y = rng.integers(0, g["logits"].shape[1], N)
        losses = [step.train_step(params, state, X=X, y=y) for _ in range(k)]
        out.append((losses, params, step.source))
    return out


@pytest.mark.parametrize("g, kw", [
    # wide enough (128) that the float64 step carries biases in its products (folds)
    (sb.models.mlp([128, 128, 128, 128, 10]), {"optimizer": "sgd", "lr": 0.05}),
    (sb.models.mlp([128, 128, 128, 128, 10]), {"optimizer": "adam", "lr": 0.01}),
    (sb.models.mlp([32, 32, 32, 32, 10]), {"optimizer": "momentum", "dtype": "float32"}),
    (sb.models.mlp([16] * 21 + [4], activation="tanh"), {"optimizer": "sgd", "lr": 0.1}),
    (sb.models.mlp([16] * 21 + [4], activation="tanh"), {"optimizer": "adam"}),
], ids=["mlp-sgd-folded", "mlp-adam", "mlp-f32", "tanh20-sgd", "tanh20-adam"])
def test_training_is_bit_identical(g, kw):
    (l0, p0, src0), (l1, p1, src1) = _steps(g, **kw)
    assert "again (checkpointing)" in src1 and "checkpointing" not in src0
    assert l0 == l1
    assert all(np.array_equal(p0[k], p1[k]) for k in p0)


def test_dropout_and_batch_norm_are_kept_not_drawn_again():
    """A recomputed mask would be a new draw and a recomputed batch norm a second update of
    its running statistics: both are kept, and the step stays bit-identical."""
    g = sb.models.cnn(channels=(4, 4), hidden=(8, 8), batch_norm=True, dropout=0.25)
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(6, 1, 8, 8)), rng.integers(0, 10, 6)
    out = []
    for ck in ("none", "sqrt"):
        step = sb.compile(g, checkpoint=ck, optimizer="sgd", lr=0.1)
        params = step.init_params(0)
        state, running, gen = step.init_state(params), step.init_running(), \
            np.random.default_rng(5)
        losses = [step.train_step(params, state, X=X, y=y, running=running, rng=gen)
                  for _ in range(3)]
        out.append((losses, params, running, step.source))
    (l0, p0, r0, src0), (l1, p1, r1, src) = out
    assert "again (checkpointing)" in src
    for call in ("_dropout_mask(", "_batch_norm("):  # as many draws and updates as unchecked
        assert src.count(call) == src0.count(call) > 0, call
    assert l0 == l1
    assert all(np.array_equal(p0[k], p1[k]) for k in p0)
    assert all(np.array_equal(r0[k], r1[k]) for k in r0)


def test_folded_layers_fold_alike_in_their_copies():
    from symbackprop.codegen.module import build_model
    g = sb.models.mlp([128, 128, 128, 128, 10])
    plain = build_model(g, optimizer="sgd")
    checked = build_model(g, optimizer="sgd", checkpoint="sqrt")
    # layer 1 reads X (no ufunc writes it beside ones), layer 4 is 128 -> 10
    assert [c.folded for c in plain.pool.plan.fold_choices] == \
        [c.folded for c in checked.pool.plan.fold_choices] == [False, True, True, False]
    # h2 kept, h1 and h3 recomputed: layer 3's product is computed twice, folded both times
    src = sb.train_step(g, optimizer="sgd", checkpoint="sqrt")
    assert src.count("matmul_3_r = h2 @ W3 + b3, as [h2, 1] @ [W3; b3]") == 1
    assert src.count("matmul_3 = h2 @ W3 + b3, as [h2, 1] @ [W3; b3]") == 1


@settings(max_examples=60, deadline=None)
@given(random_graphs(min_ops=3, max_ops=10))
def test_value_and_grad_bit_identical_on_random_dags(g):
    wrt = g.nodes("param") + g.nodes("input")
    arrays = random_inputs(g, {"N": 5})
    l0, g0 = sb.compile(g, wrt=wrt).value_and_grad(**arrays)
    l1, g1 = sb.compile(g, wrt=wrt, checkpoint="sqrt").value_and_grad(**arrays)
    assert np.array_equal(l0, l1, equal_nan=True)
    assert all(np.array_equal(g0[k], g1[k], equal_nan=True) for k in g0)


def test_sqrt_keeps_about_sqrt_n_values():
    j = compiled_graph(sb.models.mlp([8] * 17 + [3], activation="tanh"))
    kept = kept_values(j)  # h1..h16 and the logits
    assert len(kept) == 17
    chosen = checkpoints(j, "sqrt")
    assert "logits" in chosen  # the loss's own gradient reads it: always kept
    assert len(chosen) == 5  # every 4th of h1..h16, and the logits
    j2, copies = apply_checkpoint(j, "sqrt")
    # no backward node but the copies reads a forward value that is not kept
    for n in j2.nx:
        if j2.is_backward(n) and j2.recompute_of(n) is None:
            for a in j2.args(n):
                assert j2.is_backward(a) or j2.is_leaf(a) or a in chosen, (n, a)
    assert set(copies.values()) >= set(kept) - set(chosen)


def test_named_checkpoints():
    g = sb.models.mlp([8, 8, 8, 8, 3], activation="tanh")
    src = sb.numpy_source(g, checkpoint=["h2"])
    assert "h1_r" in src and "h3_r" in src and "h2_r" not in src
    ref = sb.compile(g)
    fn = sb.compile(g, checkpoint="h2")  # one name, as a string
    arrays = random_inputs(g, {"N": 4})
    l0, g0 = ref.value_and_grad(**arrays)
    l1, g1 = fn.value_and_grad(**arrays)
    assert l0 == l1 and all(np.array_equal(g0[k], g1[k]) for k in g0)


def test_none_is_the_default_code():
    g = sb.models.mlp([16, 8, 4])
    assert sb.numpy_source(g, checkpoint="none") == sb.numpy_source(g)
    assert sb.train_step(g, checkpoint="none") == sb.train_step(g)


def test_one_comment_per_recomputed_block():
    src = sb.numpy_source(sb.models.mlp([8] * 10 + [3], activation="tanh"), checkpoint="sqrt")
    planned = src[src.index("def loss_and_grads_into"):]
    notes = [ln.strip() for ln in planned.splitlines() if "# checkpointing: recompute" in ln]
    assert len(notes) == 3, notes  # h1..h9 and the logits: h3, h6, h9 and logits kept
    assert notes[-1].startswith("# checkpointing: recompute matmul_1, h1, matmul_2, h2 from "
                                "the inputs")


def _workspace_bytes(fn, arrays, N):
    fn.value_and_grad(**arrays)
    views = fn.module._workspace(N)[0]
    v = views[0]
    while v.base is not None:
        v = v.base
    return v.nbytes


def test_less_memory():
    """The planned workspace (every intermediate array of value_and_grad) and the peak
    that tracemalloc sees, of a 30-layer tanh network: sqrt keeps about a third."""
    g = sb.models.mlp([64] * 31 + [10], activation="tanh")
    N = 256
    arrays = random_inputs(g, {"N": N})
    plain, checked = sb.compile(g), sb.compile(g, checkpoint="sqrt")
    ws0, ws1 = _workspace_bytes(plain, arrays, N), _workspace_bytes(checked, arrays, N)
    assert ws1 < 0.45 * ws0, (ws1, ws0)
    peaks = []
    for fn in (plain, checked):
        fn.module._WORKSPACES.clear()
        tracemalloc.start()
        fn.value_and_grad(**arrays)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 0.6 * peaks[0], peaks


def test_cost_with_checkpointing():
    g = sb.models.mlp([64] * 17 + [10], activation="tanh")
    plain, checked = sb.cost(g, batch=32), sb.cost(g, batch=32, checkpoint="sqrt")
    assert checked.kept < plain.kept / 3
    assert checked.unchecked["kept_bytes"] == plain.kept
    # the copies compute forward layers again: less than one more forward pass
    assert 0 < checked.recompute < plain.forward
    assert checked.backward == plain.backward + checked.recompute
    assert "recomputes" in checked.text() and "recomputed FLOPs" in checked.text()


def test_render_marks_recomputed_nodes():
    j = compiled_graph(sb.models.mlp([4, 3, 3, 3, 2]), checkpoint="sqrt")
    src = sb.render(j, "joint").source
    assert "h1 again (checkpointing)" in src and "dashed" in src


@pytest.mark.parametrize("policy, text", [
    (["nope"], "'nope' is not in the graph"),
    (["W1"], "'W1' is a param"),
    (["extra"], "'extra' is not on the path"),
    ("half", "'half' is not in the graph"),
    (3, "expected 'none', 'sqrt' or a list"),
])
def test_bad_checkpoints(policy, text):
    g = sb.models.mlp([4, 3, 3, 2])
    g.output("extra", sb.tanh(g["X"]))
    with pytest.raises(sb.GraphError, match=text):
        sb.numpy_source(g, of="L", checkpoint=policy)


def test_cli_flags(tmp_path, capsys):
    out = tmp_path / "train.py"
    assert main(["train-script", "mlp:16-16-16-16-4", "--activation", "tanh",
                 "--checkpoint", "sqrt", "-o", str(out)]) == 0
    text = out.read_text()
    assert "checkpoint='sqrt'" in text and "# checkpointing: recompute" in text
    capsys.readouterr()
    assert main(["codegen", "mlp:8-8-8-3", "--checkpoint", "h1,W2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'W2' is a param" in err
