"""The lowering table (codegen/lowering.py): every op has code for NumPy, users register
the code of their own ops, and the op records carry no array-library code."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import sympy as sp

import symbackprop as sb
from symbackprop.codegen import lowering as lw
from symbackprop.errors import CodegenError
from symbackprop.ops import registry


@pytest.fixture
def scratch_ops():
    """Ops and lowerings a test registers are gone after it (tests/test_ops_grad.py wants
    a DOMAINS entry for every op registered in the session)."""
    ops, table = dict(registry._OPS), dict(lw.NUMPY)
    yield
    registry._OPS.clear()
    registry._OPS.update(ops)
    lw.NUMPY.clear()
    lw.NUMPY.update(table)


def test_every_registered_op_has_numpy_code():
    for op in registry.all_ops():
        how = lw.lowering(op)
        assert (how.expr is None) == (op.elementwise and not op.opaque), op.name


def test_op_records_carry_no_array_library_code():
    fields = {f.name for f in dataclasses.fields(registry.OpDef)}
    assert not fields & {"numpy", "numpy_out", "numpy_with_grad", "helpers", "inline",
                         "bias_fold", "out_any_layout"}
    assert not hasattr(registry, "transposable")


def test_every_opdef_field_is_documented():
    doc = registry.OpDef.__doc__
    for f in dataclasses.fields(registry.OpDef):
        assert f"\n    {f.name} : " in doc, f.name


def test_a_user_structural_op_gets_its_code_from_the_table(scratch_ops):
    def shape(shapes, attrs, names):
        return shapes[0]

    def vjp(g, args, out, attrs):  # d/dx of cumsum: a reversed cumsum of g
        return [flip(cumsum(flip(g)))]

    sb.ops.register(sb.ops.OpDef(name="cumsum_rows_test", arity=1, shape=shape, vjp=vjp))
    sb.ops.register(sb.ops.OpDef(name="flip_rows_test", arity=1, shape=shape,
                                 vjp=lambda g, args, out, attrs: [
                                     flip(g)]))
    cumsum, flip = sb.ops.builder("cumsum_rows_test"), sb.ops.builder("flip_rows_test")
    g = sb.Graph()
    x = g.input("x", shape=(4,))
    w = g.input("w", shape=(4,))
    g.output("L", sb.sum(cumsum(x) * w))
    with pytest.raises(CodegenError, match=r"register\('numpy', 'cumsum_rows_test'"):
        sb.numpy_source(g, wrt=["x"])
    lw.register("numpy", "cumsum_rows_test", lw.Lowering(lambda c, a: f"np.cumsum({c[0]})"))
    lw.register("numpy", "flip_rows_test", lw.Lowering(lambda c, a: f"{c[0]}[::-1]"))
    fn = sb.compile(g, wrt=["x"])
    xv, wv = np.arange(4.0), np.array([1.0, -2.0, 0.5, 3.0])
    loss, grads = fn.value_and_grad(x=xv, w=wv)
    assert loss == pytest.approx(float(np.cumsum(xv) @ wv))
    np.testing.assert_allclose(grads["x"], np.cumsum(wv[::-1])[::-1])


def test_elementwise_numpy_form_is_registered_for_numpy_and_not_fused(scratch_ops):
    sb.elementwise("logaddexp0_test", lambda x: sp.log(1 + sp.exp(x)),
                   numpy=lambda x: f"np.logaddexp(0, {x})")
    assert sb.ops.get("logaddexp0_test").opaque
    how = lw.lowering("logaddexp0_test")
    assert how.expr(["z"], {}) == "np.logaddexp(0, z)"
    g = sb.Graph()
    z = g.input("z", shape=(3,))
    g.output("L", sb.sum(sb.ops.builder("logaddexp0_test")(z * 2)))
    src = sb.numpy_source(g, wrt=["z"])
    assert "np.logaddexp(0, " in src
    out = sb.compile(g, wrt=["z"]).forward(z=np.array([0.0, 400.0, -1.0]))["L"]
    assert out == pytest.approx(np.logaddexp(0, [0.0, 800.0, -2.0]).sum())
    # declared again without numpy=: printed from its expression once more
    sb.elementwise("logaddexp0_test", lambda x: sp.log(1 + sp.exp(x)))
    assert lw.lowering("logaddexp0_test").expr is None


def test_register_checks_its_arguments():
    with pytest.raises(ValueError, match="unknown backend"):  # jax is known (issue 15)
        lw.register("tensorflow", "matmul", lw.Lowering())
    with pytest.raises(TypeError, match="must be a Lowering"):
        lw.register("numpy", "matmul", lambda c, a: "")
    with pytest.raises(CodegenError, match="unknown backend"):
        lw.lowering("matmul", "tensorflow")


def test_matmul_fans():
    fans = sb.ops.get("matmul").fans
    assert fans(1, [("N", 784), (784, 256)], {}) == (784, 256)  # h @ W
    assert fans(0, [(256, 784), (784, "N")], {}) == (784, 256)  # W @ h
    assert sb.ops.get("relu").fans is None


def test_evaluate_is_the_generated_code():
    """Derivations evaluate ops at a point as the generated code computes them."""
    logits = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 5.0]])
    labels = np.array([2, 0])
    g = sb.Graph()
    lg = g.input("logits", shape=("N", 3))
    lb = g.input("labels", shape=("N",), dtype="int")
    g.output("L", sb.softmax_cross_entropy(lg, lb))
    want = sb.compile(g, wrt=[]).forward(logits=logits, labels=labels)["L"]
    got = lw.evaluate(sb.ops.get("softmax_cross_entropy"), [logits, labels], {})
    assert float(got) == want


def test_derivation_at_a_point_evaluates_stable_functions():
    """A tensor derivation evaluates sigmoid as the generated code does (_sigmoid); it
    raised NameError when it went through SymPy's lambdify, which knows no _sigmoid."""
    from symbackprop.testing import random_inputs

    g = sb.models.mlp([3, 4, 2], activation="sigmoid")
    at = random_inputs(g, {"N": 2})
    d = sb.derive(g, at=at)
    loss, grads = sb.compile(g).value_and_grad(**at)
    assert "h₁ = sigmoid(z₁)" in d.text()
    assert float(d.values["L"]) == pytest.approx(loss, rel=1e-12)
    for w in ("W1", "b1", "W2", "b2"):
        np.testing.assert_allclose(d.grads[w], grads[w], rtol=1e-10)
