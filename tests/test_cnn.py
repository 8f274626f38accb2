"""sb.models.cnn (issue 13): names and shapes, gradients against central differences on
random entries, He initialisation of its kernels, generated code (ruff, a fresh interpreter
without symbackprop), bad arguments, and training scripts on images
(4-D X, flat rows with --input-shape, exact resume). The digits CNN's accuracy is tested in
tests/test_digits.py."""

from __future__ import annotations

import numpy as np
import pytest
from central import assert_central_differences
from standalone import assert_ruff_clean, run_without_symbackprop

import symbackprop as sb
from symbackprop.codegen.init import plan_init


def small(**kw):
    return sb.models.cnn(**{"input_shape": (2, 6, 6), "channels": (3, 4), "hidden": (5,),
                            "classes": 3, **kw})


def _arrays(g, n=3, seed=0):
    """Random inputs and parameters: weights from the model's own initialisation, biases
    non-zero (a gradient checked at 0 would miss what the zero hides)."""
    rng = np.random.default_rng(seed)
    params = {k: np.array(v) for k, v in sb.compile(g, optimizer="sgd").init_params(seed).items()}
    for v in params.values():
        if v.ndim == 1:
            v[...] = rng.uniform(-0.5, 0.5, v.shape)
    shape = g.nx.nodes["X"]["shape"][1:]
    classes = g["logits"].shape[1]
    return {"X": rng.standard_normal((n, *shape)), "y": rng.integers(0, classes, n), **params}


def test_names_and_shapes():
    g = sb.models.cnn()
    assert g.nodes("input") == ["X", "y"]
    assert g.nodes("param") == ["K1", "c1", "K2", "c2", "W1", "b1", "W2", "b2"]
    shapes = {n: g.nx.nodes[n]["shape"] for n in g.nodes("param")}
    assert shapes["K1"] == (16, 1, 3, 3) and shapes["K2"] == (32, 16, 3, 3)
    assert shapes["c2"] == (32,) and shapes["W1"] == (128, 64) and shapes["W2"] == (64, 10)
    assert g["conv1"].shape == ("N", 16, 8, 8) and g["p1"].shape == ("N", 16, 4, 4)
    assert g["conv2"].shape == ("N", 32, 4, 4) and g["p2"].shape == ("N", 32, 2, 2)
    assert g["flat"].shape == ("N", 128) and g["logits"].shape == ("N", 10)
    assert g.outputs == ["logits", "L"]
    assert g.nx.graph["name"] == "cnn_1x8x8_c16_c32_64_10"
    # no pooling, no hidden layer, an even kernel (padding 1 grows 6 to 7)
    g = sb.models.cnn((1, 6, 6), channels=(2,), kernel=2, pool=1, hidden=(), classes=2)
    assert g["a1"].shape == ("N", 2, 7, 7) and "p1" not in g
    assert g.nodes("param") == ["K1", "c1", "W1", "b1"] and g["flat"].shape == ("N", 98)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_gradients_match_central_differences(activation):
    g = small(activation=activation)
    fn = sb.compile(g)
    arrays = _arrays(g)
    _, grads = fn.value_and_grad(**arrays)
    assert sorted(grads) == sorted(g.nodes("param"))
    assert_central_differences(fn, arrays, g.nodes("param"), grads, count=12, seed=1)


def test_check_grad_and_any_batch_size():
    assert sb.check_grad(small(), of="L", sizes={"N": 4}, max_entries=30).ok
    fn = sb.compile(small())
    for n in (1, 5):
        loss, grads = fn.value_and_grad(**_arrays(small(), n=n))
        assert np.isfinite(loss) and grads["K1"].shape == (3, 2, 3, 3)


def test_he_init_for_kernels_with_conv_fans():
    plan = {p.name: p for p in plan_init(sb.models.cnn())}
    assert (plan["K1"].kind, plan["K1"].fan_in, plan["K1"].fan_out) == ("he", 9, 144)
    assert (plan["K2"].kind, plan["K2"].fan_in) == ("he", 144)
    assert plan["c1"].kind == plan["b1"].kind == "zeros"
    assert (plan["W1"].kind, plan["W2"].kind) == ("he", "xavier")
    assert "feeds relu at a1" in plan["K1"].note
    assert plan_init(sb.models.cnn(activation="tanh"))[0].kind == "xavier"


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_source_is_ruff_clean_and_runs_without_symbackprop(tmp_path, dtype):
    g = small()
    fn = sb.compile(g, dtype=dtype)
    (tmp_path / "cnn.py").write_text(fn.source)
    assert_ruff_clean(tmp_path, "cnn.py")
    arrays = {k: v.astype(dtype) if v.dtype.kind == "f" else v for k, v in _arrays(g).items()}
    np.savez(tmp_path / "inputs.npz", **{fn.arg_names[k]: v for k, v in arrays.items()})
    run_without_symbackprop(tmp_path, """
        import numpy as np
        import cnn
        a = dict(np.load("inputs.npz"))
        loss, grads = cnn.value_and_grad(**a)
        np.savez("outputs.npz", loss=loss, **{"d" + k: v for k, v in grads.items()})
    """)
    out = np.load(tmp_path / "outputs.npz")
    loss, grads = fn.value_and_grad(**arrays)
    assert out["loss"].dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out["loss"], loss)
    for k, v in grads.items():
        np.testing.assert_array_equal(out["d" + fn.arg_names[k]], v)


@pytest.mark.parametrize("kw, needle", [
    ({"batch_norm": 1}, r"batch_norm=1; expected True or False"),
    ({"dropout": 1.0}, r"dropout=1.0; expected a number in \[0, 1\)"),
    ({"channels": ()}, r"channels=\(\); expected at least one conv block"),
    ({"input_shape": (8, 8)}, r"input_shape=\(8, 8\); expected 3 ints >= 1"),
    ({"kernel": 0}, r"kernel=0; expected an int >= 1"),
    ({"classes": 1}, r"classes=1; expected an int >= 2"),
    ({"hidden": (4, -1)}, r"hidden=\(4, -1\); expected a sequence of ints >= 1"),
    ({"channels": 8}, r"channels=8; expected a sequence of ints >= 1"),
    ({"activation": "softmax"}, r"not a one-argument elementwise op"),
    ({"channels": (2, 2, 2, 2)}, r"block 4's output is 1x1, smaller than the pooling window 2"),
])
def test_bad_arguments_raise_a_symbackprop_error(kw, needle):
    with pytest.raises(sb.SymbackpropError, match=needle):
        sb.models.cnn(**kw)
