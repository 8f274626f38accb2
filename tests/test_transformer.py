"""The transformer models (sb.models.transformer_block, transformer_classifier) and training
scripts for integer token inputs.

The block and the classifier are checked against an independent NumPy forward written here
(loops over heads, explicit layer norm), their gradients against central differences of that
reference on random subsets of entries, in float64; causal masking by perturbing later
positions; the classifier's generated code is ruff-clean and runs where symbackprop is not
importable; its training script checks token ids.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from standalone import assert_ruff_clean, run_without_symbackprop

import symbackprop as sb

T, D, H, F = 4, 6, 2, 5  # positions, width, heads, MLP width: small, odd sizes
PARAMS = ("ln1_g", "ln1_b", "Wq", "Wk", "Wv", "Wo", "bo", "ln2_g", "ln2_b", "W1", "b1", "W2",
          "b2")


def _ln(x, gain, shift):
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5) * (1 + gain) + shift


def block_reference(X, p, causal, prefix=""):
    """One pre-norm block, written independently: a loop over heads, explicit softmax."""
    q = {k: p[prefix + k] for k in PARAMS}
    a = _ln(X, q["ln1_g"], q["ln1_b"])
    Q, K, V = a @ q["Wq"], a @ q["Wk"], a @ q["Wv"]
    e, t = X.shape[-1] // H, X.shape[1]
    heads = []
    for h in range(H):
        cols = slice(h * e, (h + 1) * e)
        S = Q[:, :, cols] @ np.swapaxes(K[:, :, cols], 1, 2) / np.sqrt(e)
        if causal:
            S = np.where(np.tril(np.ones((t, t), bool)), S, -np.inf)
        w = np.exp(S - S.max(axis=-1, keepdims=True))
        heads.append(w / w.sum(axis=-1, keepdims=True) @ V[:, :, cols])
    h1 = X + np.concatenate(heads, axis=-1) @ q["Wo"] + q["bo"]
    m = _ln(h1, q["ln2_g"], q["ln2_b"])
    return h1 + np.maximum(m @ q["W1"] + q["b1"], 0) @ q["W2"] + q["b2"]


def _block_arrays(rng, n=3):
    shapes = {"ln1_g": (D,), "ln1_b": (D,), "Wq": (D, D), "Wk": (D, D), "Wv": (D, D),
              "Wo": (D, D), "bo": (D,), "ln2_g": (D,), "ln2_b": (D,), "W1": (D, F),
              "b1": (F,), "W2": (F, D), "b2": (D,)}
    arrays = {k: rng.normal(0, 0.5, s) for k, s in shapes.items()}
    arrays["X"] = rng.normal(size=(n, T, D))
    return arrays


def _central_subset(f, x, rng, k=6, h=1e-6):
    """Central differences of the scalar f at k random entries of x: (indices, values)."""
    idx = rng.choice(x.size, size=min(k, x.size), replace=False)
    out = []
    for i in idx:
        xp, xm = x.copy(), x.copy()
        xp.flat[i] += h
        xm.flat[i] -= h
        out.append((f(xp) - f(xm)) / (2 * h))
    return idx, np.array(out)


@pytest.mark.parametrize("causal", [False, True])
def test_block_forward_and_gradients_against_the_reference(causal):
    rng = np.random.default_rng(1 + causal)
    arrays = _block_arrays(rng)
    wrt = ["X", *PARAMS]
    fn = sb.compile(sb.models.transformer_block(T, D, H, F, causal=causal), wrt=wrt)
    Y = fn.forward(**arrays)["Y"]
    np.testing.assert_allclose(Y, block_reference(arrays["X"], arrays, causal), rtol=1e-10,
                               atol=1e-12)
    loss, grads = fn.value_and_grad(**arrays)
    assert loss == pytest.approx(np.mean(Y * Y), rel=1e-12)
    for w in wrt:
        def f(v, w=w):
            a = {**arrays, w: v}
            return np.mean(block_reference(a["X"], a, causal) ** 2)
        idx, fd = _central_subset(f, arrays[w], rng)
        assert grads[w].shape == arrays[w].shape
        np.testing.assert_allclose(grads[w].flat[idx], fd, rtol=1e-5, atol=1e-8, err_msg=w)


@pytest.mark.parametrize("causal", [True, False])
def test_causal_mask_hides_later_positions(causal):
    rng = np.random.default_rng(3)
    arrays = _block_arrays(rng)
    fn = sb.compile(sb.models.transformer_block(T, D, H, F, causal=causal))
    Y = fn.forward(**arrays)["Y"]
    for s in range(1, T):  # change every position from s on: earlier outputs must not move
        X = arrays["X"].copy()
        X[:, s:] = rng.normal(size=X[:, s:].shape) * 3
        Y2 = fn.forward(**{**arrays, "X": X})["Y"]
        if causal:
            np.testing.assert_array_equal(Y2[:, :s], Y[:, :s])
        else:  # without the mask the earlier positions see the change
            assert np.abs(Y2[:, :s] - Y[:, :s]).max() > 1e-3
        assert np.abs(Y2[:, s:] - Y[:, s:]).max() > 1e-3


def test_causal_block_float32_stays_finite_and_float32():
    rng = np.random.default_rng(4)
    arrays = {k: v.astype(np.float32) for k, v in _block_arrays(rng).items()}
    g = sb.models.transformer_block(T, D, H, F, causal=True)
    loss, grads = sb.compile(g, wrt=["X", "Wq"], dtype="float32").value_and_grad(**arrays)
    assert loss.dtype == np.float32 and np.isfinite(loss)
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in grads.values())


VOCAB, CLASSES, LAYERS = 7, 3, 2


def classifier_reference(ids, p):
    h = p["E"][ids] + p["P"]
    for k in range(1, LAYERS + 1):
        h = block_reference(h, p, False, prefix=f"blk{k}_")
    pooled = _ln(h, p["lnf_g"], p["lnf_b"]).mean(axis=1)
    return pooled @ p["W_out"] + p["b_out"]


def _xent(logits, y):
    z = logits - logits.max(axis=1, keepdims=True)
    return np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y])


def test_classifier_gradients_against_central_differences():
    g = sb.models.transformer_classifier(VOCAB, T, D, H, F, LAYERS, CLASSES)
    fn = sb.compile(g, optimizer="sgd", lr=0.1)
    rng = np.random.default_rng(5)
    params = {k: v + rng.normal(0, 0.3, v.shape) for k, v in fn.init_params(0).items()}
    ids = rng.integers(0, VOCAB, (4, T))
    ids[0, :2] = ids[1, 0] = 3  # a repeated token: the embedding's gradient accumulates
    y = rng.integers(0, CLASSES, 4)
    logits = fn.forward(X=ids, y=y, **params)["logits"]
    np.testing.assert_allclose(logits, classifier_reference(ids, params), rtol=1e-10,
                               atol=1e-12)
    loss, grads = fn.value_and_grad(X=ids, y=y, **params)
    assert loss == pytest.approx(_xent(logits, y), rel=1e-12)
    assert set(grads) == set(params)
    for w in ("E", "P", "blk1_Wq", "blk1_ln1_g", "blk2_W1", "blk2_bo", "lnf_b", "W_out"):
        def f(v, w=w):
            return _xent(classifier_reference(ids, {**params, w: v}), y)
        idx, fd = _central_subset(f, params[w], rng, k=5)
        np.testing.assert_allclose(grads[w].flat[idx], fd, rtol=1e-5, atol=1e-8, err_msg=w)
    unused = sorted(set(range(VOCAB)) - set(ids.ravel()))
    assert not grads["E"][unused].any()  # rows of tokens not in the batch get nothing


def test_classifier_names_and_init_scales():
    g = sb.models.transformer_classifier(VOCAB, T, D, H, F, 1, CLASSES)
    assert g.nodes("input") == ["X", "y"] and g["X"].shape == ("N", T)
    assert g.nx.nodes["X"]["dtype"] == "int" and g.outputs == ["logits", "L"]
    step = sb.compile(g, optimizer="adam", lr=1e-3)
    p = step.init_params(0)
    assert not p["blk1_ln1_g"].any() and not p["b_out"].any()  # gains start as 1 + 0
    # the embedding's fans are 1 and D (take's fans): Xavier limit sqrt(6 / (1 + D))
    assert np.abs(p["E"]).max() <= np.sqrt(6 / (1 + D)) and p["E"].std() > 0.2
    ids = np.random.default_rng(0).integers(0, VOCAB, (64, T))
    out = step.forward(X=ids, y=np.zeros(64, int), **p)
    assert abs(out["L"] - np.log(CLASSES)) < 1.0  # a sensible start: near log(classes)


def test_bad_sizes_raise_graph_errors():
    with pytest.raises(sb.GraphError, match="d_model=6 is not a multiple of heads=4"):
        sb.models.transformer_block(T, 6, 4, F)
    with pytest.raises(sb.GraphError, match="layers=0"):
        sb.models.transformer_classifier(VOCAB, T, D, H, F, 0, CLASSES)


def test_classifier_code_is_ruff_clean_and_runs_without_symbackprop(tmp_path):
    g = sb.models.transformer_classifier(VOCAB, T, D, H, F, LAYERS, CLASSES, causal=True)
    (tmp_path / "clf.py").write_text(sb.numpy_source(g))
    (tmp_path / "train.py").write_text(sb.training_script(g, optimizer="adam", lr=0.01,
                                                           epochs=2, batch_size=8))
    assert_ruff_clean(tmp_path, ".")
    rng = np.random.default_rng(0)
    fn = sb.compile(g, optimizer="sgd", lr=0.1)
    params = fn.init_params(0)
    ids, y = rng.integers(0, VOCAB, (5, T)), rng.integers(0, CLASSES, 5)
    np.savez(tmp_path / "in.npz", X=ids, y=y, **params)
    np.savez(tmp_path / "data.npz", X=rng.integers(0, VOCAB, (40, T)),
             y=rng.integers(0, CLASSES, 40))
    bad = rng.integers(0, VOCAB, (40, T))
    bad[7, 2] = VOCAB
    np.savez(tmp_path / "bad.npz", X=bad, y=rng.integers(0, CLASSES, 40))
    np.savez(tmp_path / "frac.npz", X=bad * 0.5, y=rng.integers(0, CLASSES, 40))
    res = run_without_symbackprop(tmp_path, """
        import numpy as np
        import clf
        arrays = dict(np.load("in.npz"))
        np.savez("out.npz", **clf.forward(**arrays))
        sys.argv = ["train.py", "--data", "data.npz", "--out", "ck.npz"]
        import train
        assert train.main() == 0
    """)
    assert re.search(r"done: 2 epochs", res.stdout), res.stdout
    out = np.load(tmp_path / "out.npz")
    np.testing.assert_array_equal(out["logits"], fn.forward(X=ids, y=y, **params)["logits"])
    outside = f"X[7, 2] = {VOCAB} is outside the vocabulary; expected integer token ids 0..6"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    for data, msg in (("bad.npz", outside),
                      ("frac.npz", "is not an integer; expected integer token ids 0..6")):
        res = subprocess.run([sys.executable, "train.py", "--data", data], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=120, check=False)
        assert res.returncode == 2 and msg in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1


def test_token_script_names_vocab_and_keeps_float_scripts_unchanged():
    g = sb.models.transformer_classifier(VOCAB, T, D, H, F, 1, CLASSES)
    src = sb.training_script(g)
    assert f"VOCAB = {VOCAB}  #" in src and "def check_tokens(" in src
    assert f"X (N, {T}) integer tokens in 0..{VOCAB - 1}" in src
    plain = sb.training_script(sb.models.mlp([4, 3, 2]))
    assert "VOCAB" not in plain and "check_tokens" not in plain
    assert "    X = X.astype(DTYPE)\n" in plain


def test_integer_features_that_index_nothing_are_refused():
    g = sb.Graph("ints")
    X = g.input("X", shape=("N", 3), dtype="int")
    y = g.input("y", shape=("N",), dtype="int")
    W = g.param("W", shape=(3, 2))
    g.output("L", sb.softmax_cross_entropy(X @ W, y))
    with pytest.raises(sb.CodegenError, match="holds integers but indexes no table"):
        sb.training_script(g)


def test_cli_train_script_for_a_saved_classifier(tmp_path, capsys):
    from symbackprop.cli import main

    g = sb.models.transformer_classifier(VOCAB, T, D, H, F, 1, CLASSES)
    sb.save(g, tmp_path / "tc.json")
    assert main(["train-script", str(tmp_path / "tc.json"), "-o", str(tmp_path / "t.py")]) == 0
    assert f"VOCAB = {VOCAB}" in (tmp_path / "t.py").read_text()
    assert main(["train-script", str(tmp_path / "tc.json"), "--features", "y", "--target",
                 "X"]) == 2
    assert "'y' holds integers but indexes no table" in capsys.readouterr().err
