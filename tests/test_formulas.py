"""Gradient formulas (sb.grad): δ-form, expanded form, matrix display, printing."""

import pytest
import sympy as sp

import symbackprop as sb
from symbackprop.display import text
from symbackprop.formulas import MAX_EXPANDED_NODES

w, x, y, b, h = sp.symbols("w x y b h")
CHAIN = "a = 2*x; b = a + 3; c = b**2"
SQUARED = "L = (w*x - y)**2"


# -- scalar graphs: δ-form ---------------------------------------------------------------
def test_chain_delta_form():
    grads = sb.grad(sb.parse(CHAIN), of="c", wrt="x")
    assert grads.nodes == ["c", "b", "a", "x"]
    assert grads["c"] == 1
    assert grads["b"] == 2 * b * grads.delta("c")  # δ_b = δ_c · 2b
    assert grads["a"] == grads.delta("b")
    assert grads["x"] == 2 * grads.delta("a")
    assert grads.formula("x") is grads["x"]
    assert str(grads).splitlines() == [
        "Gradients of c (δ_n stands for ∂c/∂n):",
        "  ∂c/∂c = 1",
        "  ∂c/∂b = 2b·δ_c",
        "  ∂c/∂a = δ_b",
        "  ∂c/∂x = 2δ_a",
    ]


def test_chain_expanded_matches_sympy_diff():
    grads = sb.grad(sb.parse(CHAIN), wrt="x")
    assert sp.expand(grads.expanded("x") - sp.diff((2 * x + 3) ** 2, x)) == 0
    assert grads.expanded("x") == 8 * x + 12


def test_unnamed_nodes_shown_by_expression():
    grads = sb.grad(sb.parse(SQUARED), wrt="w")
    assert grads.label("sub_1") == "w·x − y"
    assert grads.label("mul_1") == "w·x"
    assert grads.symbol("sub_1") == w * x - y
    assert grads.line("sub_1") == "∂L/∂(w·x − y) = 2δ_L·(w·x − y)"
    assert grads.line("mul_1") == "∂L/∂(w·x) = δ_(w·x − y)"
    assert grads.line("w") == "∂L/∂w = x·δ_(w·x)"


def test_squared_error_expanded_is_the_hand_derivation():
    grads = sb.grad(sb.parse(SQUARED), wrt=["w", "x", "y"])
    L = (w * x - y) ** 2
    assert sp.expand(grads.expanded("w") - 2 * x * (w * x - y)) == 0
    for v in (w, x, y):
        assert sp.simplify(grads.expanded(v.name) - sp.diff(L, v)) == 0


def test_tanh_chain_uses_the_output():
    grads = sb.grad(sb.parse("h = tanh(w*x); L = h**2"), wrt="w")
    assert grads["mul_1"] == grads.delta("h") * (1 - h ** 2)  # tanh' = 1 − h²
    assert "δ_h·(1 − h²)" in grads.text()
    ref = sp.diff(sp.tanh(w * x) ** 2, w)
    assert sp.simplify(grads.expanded("w") - ref) == 0


def test_sigmoid_derivative_through_output():
    grads = sb.grad(sb.parse("s = sigmoid(z); L = s*s"), wrt="z")
    s = sp.Symbol("s")
    assert grads["z"] == grads.delta("s") * s * (1 - s)


def test_fan_out_adds_the_paths():
    grads = sb.grad(sb.parse("b = a + a; c = b*b"), wrt="a")
    assert [c for c, _, _ in grads.terms("a")] == ["b", "b"]
    assert grads["a"] == 2 * grads.delta("b")
    assert grads.expanded("a") == 8 * sp.Symbol("a")


@pytest.mark.parametrize("spec, f", [
    ("L = exp(x) / (1 + x*x)", lambda v: sp.exp(v) / (1 + v * v)),
    ("u = x*x; v = u + x; L = v*u - sin(x)", lambda v: (v * v + v) * v * v - sp.sin(v)),
    ("L = log(sqrt(x) + x**3)", lambda v: sp.log(sp.sqrt(v) + v ** 3)),
    ("p = x**x; L = p", lambda v: v ** v),
])
def test_expanded_equals_sympy_diff(spec, f):
    grads = sb.grad(sb.parse(spec), wrt="x")
    point = {x: sp.Rational(7, 5)}
    got = grads.expanded("x").subs(point).evalf(30)
    want = sp.diff(f(x), x).subs(point).evalf(30)
    assert abs(float(got - want)) < 1e-12


def test_relu_mask_is_an_indicator():
    grads = sb.grad(sb.parse("r = relu(x); L = r*w"), wrt="x")
    assert text(grads["x"]) == "δ_r·1[r > 0]"
    assert grads.expanded("x").subs({x: 2, w: 3}) == 3
    assert grads.expanded("x").subs({x: 0, w: 3}) == 0  # relu'(0) = 0


def test_latex_and_repr_latex():
    grads = sb.grad(sb.parse(SQUARED), wrt="w")
    tex = grads.latex()
    assert tex.startswith("\\begin{aligned}")
    assert r"\frac{\partial L}{\partial \left(w x - y\right)} &= 2 \delta_{L} \left(w x - y\right)" in tex
    assert r"\delta_{w x}" in tex
    assert grads._repr_latex_().startswith("$$")


# -- tensor graphs -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def mlp_grads():
    return sb.grad(sb.models.mlp([784, 256, 256, 256, 10]))


def test_mlp_weight_gradient_prints_as_matrix_formula(mlp_grads):
    assert mlp_grads.line("W1") == "∂L/∂W₁ = Xᵀ δ_z1"
    assert mlp_grads.line("z1") == "∂L/∂z₁ = δ_h1 ∘ 1[h₁ > 0]"  # the ReLU mask
    assert mlp_grads.line("h1") == "∂L/∂h₁ = δ_z2 W₂ᵀ"
    assert mlp_grads.line("b1") == "∂L/∂b₁ = 𝟙ᵀ δ_z1"  # the bias sums the batch
    assert mlp_grads.line("logits") == "∂L/∂logits = (δ_L/N)·(softmax(logits) − onehot(y))"
    assert mlp_grads.line("matmul_1") == "∂L/∂(X W₁) = δ_z1"


def test_mlp_formulas_are_matrix_expressions(mlp_grads):
    N = sp.Symbol("N", integer=True, positive=True)
    X = sp.MatrixSymbol("X", N, 784)
    assert mlp_grads["W1"] == sp.MatMul(sp.Transpose(X), mlp_grads.delta("z1"))
    assert mlp_grads["W1"].shape == (784, 256)
    assert mlp_grads["b1"].shape == (1, 256)
    assert isinstance(mlp_grads["z1"], sp.HadamardProduct)
    tex = mlp_grads.latex()
    assert r"X^{T} \delta_{z1}" in tex
    assert r"\mathbb{1}\left[h_{1} > 0\right]" in tex


def test_mlp_other_activations():
    g = sb.models.mlp([5, 4, 3], activation="tanh", loss="mse")
    grads = sb.grad(g)
    assert grads.line("z1") == "∂L/∂z₁ = δ_h1 ∘ (𝟙 − h₁∘²)"
    assert grads.line("logits") == "∂L/∂logits = (2δ_L/(3·N))·(logits − y)"  # mean of 3N
    g = sb.models.mlp([5, 4, 3], activation="sigmoid")
    assert sb.grad(g).line("z1") == "∂L/∂z₁ = δ_h1 ∘ h₁ ∘ (𝟙 − h₁)"


def test_small_mlp_expanded_builds():
    grads = sb.grad(sb.models.mlp([3, 2]))
    e = grads.expanded("W1")
    assert e.shape == (3, 2) and "softmax" in str(e)


def test_expanded_refuses_big_graphs():
    g = sb.models.mlp([4] * 30)
    grads = sb.grad(g)
    assert len(grads.graph) > MAX_EXPANDED_NODES
    with pytest.raises(sb.GradError, match="δ-form"):
        grads.expanded("W1")
    assert grads.line("W1") == "∂L/∂W₁ = Xᵀ δ_z1"  # the δ-form is always there


# -- errors ---------------------------------------------------------------------------------
def test_unknown_node_names_the_close_ones():
    grads = sb.grad(sb.parse(CHAIN), wrt="x")
    with pytest.raises(sb.GradError, match=r"'bb' is not on the gradient path.*Did you mean 'b'"):
        grads["bb"]


def test_non_scalar_loss_is_refused():
    g = sb.models.mlp([3, 2])
    with pytest.raises(sb.GradError, match="not a scalar"):
        sb.grad(g, of="logits")


def test_unknown_wrt_is_refused():
    with pytest.raises(sb.GradError, match="'q' is not in the graph"):
        sb.grad(sb.parse(SQUARED), wrt="q")
