"""The runtime of generated training code (symbackprop.codegen.runtime), imported and run
directly: optimizer rules against steps computed by hand, flat buffers, the nan/inf check,
the weight draws, the training script's data loading, checkpoints and resume; and the
copying of their source (source_of, variants)."""

from __future__ import annotations

import os

import numpy as np
import pytest

import symbackprop as sb
from symbackprop.codegen import runtime
from symbackprop.codegen.optimizers import OPTIMIZERS
from symbackprop.codegen.runtime import atomic, check, flat, init, source_of
from symbackprop.codegen.runtime import script as rs
from symbackprop.codegen.runtime.optimizers import adam, momentum, sgd, sgd_scaled
from symbackprop.codegen.script import RUNTIME

RULES = {"sgd": sgd, "momentum": momentum, "adam": adam}


def _params():
    return flat.flat_views({"W": np.array([[1.0, -2.0], [0.5, 3.0]]), "b": np.array([0.25, -1.0])})


def _grads(k=1.0):
    return {"W": k * np.array([[0.1, -0.4], [2.0, 0.0]]), "b": k * np.array([-3.0, 0.5])}


# -- optimizers --------------------------------------------------------------------------


def test_sgd_step_by_hand():
    p, g = _params(), _grads()
    before = {k: v.copy() for k, v in p.items()}
    state = sgd.init_state(p)
    assert state == {}
    sgd.update(p, g, state, lr=0.1)
    for k in p:
        np.testing.assert_allclose(p[k], before[k] - 0.1 * g[k], rtol=0, atol=1e-15)
    assert p["W"][0, 1] == pytest.approx(-2.0 + 0.04)  # -2 - 0.1 * (-0.4)


def test_momentum_two_steps_by_hand():
    p, g1, g2 = _params(), _grads(), _grads(-2.0)
    w0 = p["W"].copy()
    state = momentum.init_state(p)
    momentum.update(p, g1, state, lr=0.1, momentum=0.9)
    momentum.update(p, g2, state, lr=0.1, momentum=0.9)
    v1 = g1["W"]
    v2 = 0.9 * v1 + g2["W"]
    np.testing.assert_allclose(state["v"]["W"], v2, atol=1e-15)
    np.testing.assert_allclose(p["W"], w0 - 0.1 * v1 - 0.1 * v2, atol=1e-15)


def test_adam_first_step_by_formula():
    """At t = 1 the bias corrections undo the zero start: m_hat = g, v_hat = g**2, so the
    step is lr * g / (|g| + eps), about lr * sign(g)."""
    p, g = _params(), _grads()
    w0 = p["W"].copy()
    state = adam.init_state(p)
    adam.update(p, g, state, lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8)
    assert state["t"] == 1
    np.testing.assert_allclose(state["m"]["W"], 0.1 * g["W"], atol=1e-15)
    np.testing.assert_allclose(state["v"]["W"], 0.001 * g["W"] ** 2, atol=1e-15)
    np.testing.assert_allclose(p["W"], w0 - 0.01 * g["W"] / (np.abs(g["W"]) + 1e-8), atol=1e-12)
    assert p["W"][1, 1] == w0[1, 1]  # a zero gradient moves nothing


@pytest.mark.parametrize("name", sorted(RULES))
def test_flat_rule_is_the_dict_rule(name, monkeypatch):
    """_update_flat on the flat buffers gives update()'s numbers, three steps running."""
    rt = RULES[name]
    monkeypatch.setattr(flat, "TRAINED", ("W", "b"))
    monkeypatch.setattr(flat, "_FLAT", {})
    p, q = _params(), _params()
    sp, sq = rt.init_state(p), rt.init_state(q)
    for k in (1.0, -0.5, 2.0):
        rt.update(p, _grads(k), sp, lr=0.05)
        f = flat._flat(q, sq)
        G = flat.flat_views(_grads(k))
        rt._update_flat(f, flat._flat_base(G), sq, 0.05)
    for k in p:
        np.testing.assert_allclose(q[k], p[k], rtol=1e-14, atol=1e-15)


def test_scaled_sgd_takes_lr_times_the_gradient():
    p, q = _params(), _params()
    sgd.update(p, _grads(), {}, lr=0.1)
    G = flat._flat_base(flat.flat_views(_grads(0.1)))  # backprop seeded with lr
    sgd_scaled._update_flat({"P": flat._flat_base(q)}, G, {}, 0.1)
    for k in p:
        np.testing.assert_allclose(q[k], p[k], atol=1e-15)


def test_runtime_defaults_are_the_records():
    """The stand-in constants of each optimizer module are its record's defaults."""
    for name, rt in RULES.items():
        for k, v in OPTIMIZERS[name].hyper.items():
            assert getattr(rt, k.upper()) == v, (name, k)
    assert sgd_scaled.LR == OPTIMIZERS["sgd"].hyper["lr"]


# -- flat buffers ------------------------------------------------------------------------


def test_flat_views_share_one_buffer():
    p = _params()
    base = flat._flat_base(p)
    assert base is not None and base.shape == (6,) and base.dtype == flat.DTYPE
    assert all(np.shares_memory(base, v) for v in p.values())
    np.testing.assert_array_equal(base, [1.0, -2.0, 0.5, 3.0, 0.25, -1.0])
    base[4] = 7.0
    assert p["b"][0] == 7.0
    p["W"][...] = 0  # and back: writing a view writes the buffer
    assert not base[:4].any()
    assert flat._flat_base({"W": np.zeros((2, 2)), "b": np.zeros(2)}) is None
    assert flat._flat_base({"b": p["b"], "W": p["W"]}) is None  # out of order


def test_flat_copies_foreign_arrays_once_and_folds(monkeypatch):
    monkeypatch.setattr(flat, "TRAINED", ("W", "b"))
    monkeypatch.setattr(flat, "FOLDED", (("W", "b"),))
    monkeypatch.setattr(flat, "_FLAT", {})
    params = {"W": np.arange(6.0).reshape(3, 2), "b": np.array([10.0, 20.0])}
    state = {"v": {"W": np.zeros((3, 2)), "b": np.zeros(2)}}
    f = flat._flat(params, state)
    assert np.shares_memory(f["P"], params["W"]) and np.shares_memory(f["S"]["v"], state["v"]["b"])
    assert flat._flat(params, state) is f  # the same arrays: made once
    block = f["W", "b"]  # [W; b]: one (K + 1, M) view
    np.testing.assert_array_equal(block, np.vstack([params["W"], params["b"]]))
    block[-1] = -1.0
    assert params["b"].tolist() == [-1.0, -1.0]
    params["W"] = np.ones((3, 2))  # another array: the buffers are remade
    assert flat._flat(params, state) is not f


# -- check, init -------------------------------------------------------------------------


def test_check_finite():
    check.check_finite(np.float64(1.5), {"W": np.ones(3)})
    with pytest.raises(FloatingPointError, match="the loss is nan"):
        check.check_finite(np.float64("nan"), {"W": np.ones(3)})
    with pytest.raises(FloatingPointError, match=r"dL/dW has 2 nan or inf entries"):
        check.check_finite(1.0, {"b": np.ones(2), "W": np.array([1.0, np.inf, -np.nan])})


def test_weight_draws():
    rng = np.random.default_rng(0)
    w = init.he_normal(rng, (400, 300), fan_in=400)
    assert w.dtype == init.DTYPE and w.std() == pytest.approx(np.sqrt(2 / 400), rel=0.02)
    w = init.xavier_uniform(rng, (400, 300), fan_in=400, fan_out=300)
    a = np.sqrt(6 / 700)
    assert np.abs(w).max() <= a and np.abs(w).max() > 0.99 * a
    assert w.var() == pytest.approx(a * a / 3, rel=0.02)


# -- copying source ----------------------------------------------------------------------


def test_source_of_variants_and_statements():
    folded = source_of(flat, "_flat", variants={"folded": True})
    plain = source_of(flat, "_flat", variants={"folded": False})
    assert "if FOLDED" not in folded + plain and "variant" not in folded + plain
    assert "\n    for w, b in FOLDED:" in folded and "FOLDED" not in plain
    assert len(folded.splitlines()) == len(plain.splitlines()) + 5
    with pytest.raises(KeyError, match="folded"):
        source_of(flat, "_flat")
    assert source_of(rs, "__main__") == 'if __name__ == "__main__":\n    sys.exit(main())\n'
    assert source_of(flat, "_FLAT", "flat_views").startswith("_FLAT = {}\n\n\ndef flat_views(")
    with pytest.raises(KeyError, match="no top-level 'nothing'"):
        source_of(flat, "nothing")
    assert runtime.source(init.he_normal) == source_of(init, "he_normal")


def test_generated_code_carries_the_runtime_verbatim():
    """Copied, with the folded-bias block only where a layer carries its bias (A's wide
    layers do, mlp 4-3-2 does not)."""
    for g, folded in ((sb.models.mlp([4, 3, 2]), False),
                      (sb.models.mlp([784, 256, 256, 256, 10]), True)):
        step = sb.train_step(g, optimizer="momentum", lr=0.1)
        assert ("\nFOLDED = " in step) == folded
        for text in (source_of(momentum, "init_state", "update"),
                     source_of(momentum, "_update_flat"),
                     source_of(check, "check_finite"),
                     source_of(flat, "_FLAT", "_flat_base", "_flat",
                               variants={"folded": folded})):
            assert text.rstrip("\n") in step
    script = sb.training_script(sb.models.mlp([4, 3, 2]), optimizer="adam")
    variants = {"tokens": False, "floats": True, "cast": True, "raw": False, "buffers": False,
                "mpi": False, "single": True, "mixed": False, "fused": False, "mixed_mpi": False,
                "mpi_dropout": False, "mpi_syncbn": False, "device": False, "host": True}
    cut = RUNTIME.index("save_checkpoint")  # the scripts' shared atomic write comes before it
    assert script.endswith("\n\n".join([source_of(rs, *RUNTIME[:cut], variants=variants),
                                         source_of(atomic, "atomic_write"),
                                         source_of(rs, *RUNTIME[cut:], variants=variants)]))


# -- the training script's runtime -------------------------------------------------------


def _data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2))
    return X, X @ np.array([[2.0], [-1.0]]) + 0.5


def test_load_npz(tmp_path):
    X, y = _data()
    path = str(tmp_path / "d.npz")
    np.savez(path, X=X, y=y, X_test=X[:5], y_test=y[:5].ravel())
    data = rs.load_data(path)
    np.testing.assert_array_equal(data["X"], X)
    np.testing.assert_array_equal(data["y"], y)
    assert data["y_test"].shape == (5, 1)  # a flat column becomes (N, 1)
    np.savez(path, X=X[:, :1], y=y)
    with pytest.raises(rs.InputError, match="X has 1 features .*expects 2 features"):
        rs.load_data(path)
    np.savez(path, X=X)
    with pytest.raises(rs.InputError, match="no array 'y' \\(found X\\)"):
        rs.load_data(path)


def test_load_csv(tmp_path):
    X, y = _data(5)
    path = tmp_path / "d.csv"
    rows = [[float(v) for v in (*r, *t)] for r, t in zip(X, y)]
    path.write_text("a,b,target\n" + "".join(",".join(map(repr, r)) + "\n" for r in rows))
    data = rs.load_data(str(path))
    np.testing.assert_array_equal(data["X"], X)
    np.testing.assert_array_equal(data["y"], y)
    assert data["X_test"] is None
    path.write_text("1,2,3\n4,x,6\n")
    with pytest.raises(rs.InputError, match="line 2, column 2: 'x' is not a number"):
        rs.load_data(str(path))
    path.write_text("1,2\n")
    with pytest.raises(rs.InputError, match="line 1: 2 columns; expected 3"):
        rs.load_data(str(path))
    with pytest.raises(rs.InputError, match="neither .npz nor .csv"):
        (tmp_path / "d.txt").write_text("1,2,3\n")
        rs.load_data(str(tmp_path / "d.txt"))


def test_checkpoint_is_atomic_and_round_trips(tmp_path, monkeypatch):
    path = str(tmp_path / "ck.npz")
    params = rs.init_params(3)
    state = rs.init_state(params)
    state["v"]["w"][...] = 0.5
    progress = {"epoch": 2, "seen": 8, "loss_sum": 1.25,
                "rng": np.random.default_rng(1).bit_generator.state}
    rs.save_checkpoint(path, params, state, progress)
    p2, s2, pr2 = rs.load_checkpoint(path)
    np.testing.assert_array_equal(p2["w"], params["w"])
    np.testing.assert_array_equal(s2["v"]["w"], state["v"]["w"])
    assert pr2 == progress
    with open(path, "rb") as f:
        before = f.read()

    def boom(*args, **kw):
        raise OSError("disk full")
    monkeypatch.setattr(rs.np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        rs.save_checkpoint(path, params, state, progress)
    with open(path, "rb") as f:
        assert f.read() == before  # the old file is whole
    assert os.listdir(tmp_path) == ["ck.npz"]  # and no temporary is left


def test_wrong_checkpoint_says_what_it_is(tmp_path, monkeypatch):
    path = str(tmp_path / "ck.npz")
    params = rs.init_params(0)
    rs.save_checkpoint(path, params, rs.init_state(params),
                       {"epoch": 0, "seen": 0, "loss_sum": 0.0,
                        "rng": np.random.default_rng(0).bit_generator.state})
    monkeypatch.setattr(rs, "NETWORK", "other")
    with pytest.raises(rs.InputError, match="is for network linear with momentum; expected "
                                            "network other"):
        rs.load_checkpoint(path)


def test_main_trains_and_resume_is_bit_for_bit(tmp_path, capsys):
    X, y = _data(50)
    data = str(tmp_path / "d.npz")
    np.savez(data, X=X, y=y)
    once, twice = str(tmp_path / "once.npz"), str(tmp_path / "twice.npz")
    opts = ["--data", data, "--batch-size", "8", "--lr", "0.05", "--seed", "4"]
    assert rs.main(opts + ["--epochs", "6", "--out", once]) == 0
    out = capsys.readouterr().out
    losses = [float(line.split()[3]) for line in out.splitlines() if line.startswith("epoch")]
    assert len(losses) == 6 and losses[-1] < 0.5 * losses[0]  # it learns
    assert rs.main(opts + ["--epochs", "3", "--out", twice]) == 0
    assert rs.main(opts + ["--epochs", "6", "--out", twice, "--resume", twice]) == 0
    a, b = np.load(once), np.load(twice)
    for key in ("params/w", "params/b", "state/v/w", "state/v/b"):
        np.testing.assert_array_equal(a[key], b[key])


def test_main_reports_bad_data_in_one_line(tmp_path, capsys):
    assert rs.main(["--data", str(tmp_path / "missing.npz")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.npz does not exist" in err
