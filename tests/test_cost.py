"""sb.cost and `symbackprop cost`: parameters, FLOPs and kept memory against hand counts."""

import itertools
import json

import pytest

import symbackprop as sb
from symbackprop.cli import main
from symbackprop.cost import flops_of
from symbackprop.ops import registry

LESSON = [784, 256, 256, 256, 10]


def test_the_lessons_mlp_parameters():
    c = sb.cost(sb.models.mlp(LESSON), batch=1)
    assert (c.params, c.weights, c.biases) == (335_114, 334_336, 778)
    assert [r.params for r in c.rows] == [784 * 256 + 256, 256 * 256 + 256, 256 * 256 + 256,
                                         256 * 10 + 10, 0]


def test_the_lessons_mlp_flops_by_hand():
    N = 64
    c = sb.cost(sb.models.mlp(LESSON), batch=N)
    rows = {r.name: r for r in c.rows}
    # forward of a hidden layer: the product 2 N K M, then relu(z + b) fused: 2 per entry
    for k, (K, M) in enumerate(itertools.pairwise(LESSON[:-1]), 1):
        assert rows[f"layer{k}"].forward == 2 * N * K * M + 2 * N * M
    # the last layer: the product and the bias (1 per entry)
    assert rows["layer4"].forward == 2 * N * 256 * 10 + N * 10
    # the loss: log_softmax, 5 per logit
    assert rows["other"].forward == 5 * N * 10
    # backward of a hidden layer k > 1: dW (2 N K M), dh (2 N K M), db (N M sums),
    # dz = dh * (h > 0) (2 per entry)
    for k in (2, 3):
        K, M = LESSON[k - 1], LESSON[k]
        assert rows[f"layer{k}"].backward == 4 * N * K * M + N * M + 2 * N * M
    # the first layer computes no gradient for the input X: one product, not two
    assert rows["layer1"].backward == 2 * N * 784 * 256 + N * 256 + 2 * N * 256
    # the matmul layers' ratio is 2, and the whole step's is less (layer 1)
    assert rows["layer2"].ratio == pytest.approx(2, abs=0.01)
    assert c.ratio == pytest.approx(60_052_480 / 42_897_152)


def test_matmul_layers_backward_is_twice_the_forward():
    """Only products, the input a parameter too (so its gradient is computed): the ratio
    is exactly 2."""
    g = sb.Graph("chain")
    x = g.param("x", shape=(8, 16))
    h = x
    for k in range(3):
        h = h @ g.param(f"W{k}", shape=(16, 16))
    g.output("L", sb.sum(h))
    j = sb.optimize.optimize(sb.differentiate(g).graph)
    products = [n for n in j.nx if j.nx.nodes[n]["op"] == "matmul"]
    fwd = sum(flops_of(j, n, {}) for n in products if not j.is_backward(n))
    bwd = sum(flops_of(j, n, {}) for n in products if j.is_backward(n))
    assert fwd == 3 * 2 * 8 * 16 * 16 and bwd == 2 * fwd


def test_residual_and_layer_norm_nets_by_hand():
    g = sb.Graph("res")
    X = g.input("X", shape=("N", 8))
    with sb.models.block(g, "block1"):
        W = g.param("W", shape=(8, 8))
        h = X + sb.tanh(X @ W)
    with sb.models.block(g, "norm"):
        n = sb.layer_norm(h)
    g.output("L", sb.sum(n))
    c = sb.cost(g, batch=4)
    rows = {r.name: r for r in c.rows}
    assert c.params == 64 and c.weights == 64 and c.biases == 0
    # X @ W: 2*4*8*8; X + tanh(.) fused into one elementwise node: 2 per entry
    assert rows["block1"].forward == 2 * 4 * 8 * 8 + 2 * 4 * 8
    assert rows["norm"].forward == 5 * 4 * 8
    assert rows["other"].forward == 4 * 8  # the sum


def test_kept_memory_is_the_forward_values_the_backward_reads():
    N = 32
    c = sb.cost(sb.models.mlp(LESSON), batch=N)
    # h1, h2, h3 (relu outputs, N x 256) and the logits (N x 10), float64
    assert c.kept_by_dtype == {"float64": 8 * N * (3 * 256 + 10)}
    assert sb.cost(sb.models.mlp(LESSON), batch=N, dtype="float32").kept == 4 * N * (3 * 256 + 10)


def test_numerical_differentiation_cost():
    c = sb.cost(sb.models.mlp(LESSON), batch=1)
    n = c.numerical()
    assert n["one_sided_passes"] == 335_115 and n["central_passes"] == 670_228
    assert n["one_sided_flops"] == 335_115 * c.forward
    assert n["backprop_flops"] == c.forward + c.backward
    assert "335,115 forward passes" in c.text()


def test_hand_built_graph_gets_one_row_per_parameterised_op():
    g = sb.parse("z = w*x + b; L = (z - y)**2", params=["w", "b"])
    c = sb.cost(g, batch=1)
    assert c.params == 2
    names = [r.name for r in c.rows]
    assert names[-1] == "other" and len(names) >= 2


def test_every_structural_op_declares_its_flops():
    for op in registry.all_ops():
        if not op.elementwise:
            assert op.flops is not None, op.name


def test_elementwise_convention_one_per_operation():
    relu, sig = registry.get("relu"), registry.get("sigmoid")
    assert relu.flop_count([(3, 4)], (3, 4), {}) == 12
    assert sig.flop_count([(3, 4)], (3, 4), {}) == 12  # its code: one call of _sigmoid
    conv = registry.get("conv2d")
    # out (2, 4, 5, 5), kernel (4, 3, 3, 3): 2 * 200 * 27
    assert conv.flop_count([(2, 3, 7, 7), (4, 3, 3, 3)], (2, 4, 5, 5),
                           {"stride": 1, "padding": 0, "dilation": 1, "groups": 1}) == 10_800


def test_measure_turns_counts_into_times():
    c = sb.cost(sb.models.mlp([16, 8, 4]), batch=8, measure=True)
    m = c.measured
    assert m["forward"] > 0 and m["forward_backward"] > 0 and m["repeats"] >= 5
    assert "forward passes ≈" in c.text() and "1 forward + 1 backward ≈" in c.text()


def test_outputs_agree():
    c = sb.cost(sb.models.mlp([16, 8, 4]), batch=8)
    d = c.to_dict()
    assert d["params"] == 16 * 8 + 8 + 8 * 4 + 4 and d["forward_flops"] == c.forward
    json.dumps(d)
    assert "| layer1 |" in c.markdown() and "layer1" in c.text()


def test_symbolic_size_without_a_value_is_one_line():
    g = sb.Graph("seq")
    x = g.input("x", shape=("N", "T"))
    g.output("L", sb.sum(x * g.param("w")))
    with pytest.raises(sb.GraphError, match="size 'T'"):
        sb.cost(g)
    assert sb.cost(g, sizes={"T": 3}, batch=2).forward == 2 * 3 + 2 * 3


def test_cli_cost(capsys):
    assert main(["cost", "mlp:784-256-256-256-10", "--batch", "1"]) == 0
    out = capsys.readouterr().out
    assert "335,114 = 334,336 weights + 778 biases" in out
    assert main(["cost", "mlp:8-4-2", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == 8 * 4 + 4 + 4 * 2 + 2


@pytest.mark.parametrize("argv, text", [
    (["cost", "mlp:8-4-2", "--batch", "0"], "--batch 0"),
    (["cost", "mlp:8-4-2", "--checkpoint", "nope"], "'nope' is not in the graph"),
    (["cost", "mlp:8-x-2"], "mlp:8-x-2"),
])
def test_cli_cost_bad_input_is_one_line(argv, text, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and text in err and "Traceback" not in err



def test_expression_sizes_take_their_names_values():
    """A convolution over a symbolic image: (H + 1)//2 is evaluated from sizes={'H': ...}."""
    g = sb.Graph()
    x = g.input("X", shape=("N", 1, "H", "W"))
    h = sb.conv2d(x, g.param("K", shape=(8, 1, 3, 3)), stride=2, padding=1)
    g.output("L", sb.sum(sb.mean(h, axis=(2, 3)) @ g.param("V", shape=(8, 2))))
    c = sb.cost(g, batch=4, sizes={"H": 9, "W": 14})
    conv = next(r for r in c.rows if r.name.startswith("conv2d"))
    assert conv.forward == 2 * 4 * 8 * 5 * 7 * 9  # out (4, 8, 5, 7), 9 MACs each
    with pytest.raises(sb.GraphError, match=r"sizes=\{'H'"):
        sb.cost(g, batch=4)
