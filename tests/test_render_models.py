"""Collapsed diagrams of the issue-13 models: one cluster per conv block, dense layer,
attention (all heads) and MLP, in the forward and the joint (backward) views."""

import re

import pytest

import symbackprop as sb


def clusters(source: str) -> dict:
    """``{block name: the text of its cluster}`` from a Graphviz source."""
    out = {}
    for m in re.finditer(r"subgraph cluster_\d+_(\w+) \{(.*?)\n\t\}", source, re.DOTALL):
        out[m.group(1)] = m.group(2)
    return out


def test_cnn_collapses_into_conv_blocks_and_layers():
    g = sb.models.cnn(channels=(4, 8), hidden=(16,))
    c = clusters(sb.render(g, collapse=True).source)
    assert list(c) == ["conv1", "conv2", "layer1", "layer2"]
    # a conv block is one summary node: convolution, activation, pooling, its parameters
    for k, params in ((1, "K1 (4, 1, 3, 3), c1 (4,)"), (2, "K2 (8, 4, 3, 3), c2 (8,)")):
        body = c[f"conv{k}"]
        assert body.count(" [label=") == 1
        assert "conv2d(" in body and f"a{k} = relu(conv{k})" in body
        assert f"p{k} = max_pool2d(a{k}, 2)" in body and params in body
    assert "40 parameters" in c["conv1"] and "296 parameters" in c["conv2"]


def test_cnn_joint_view_collapses_the_backward_of_each_block():
    g = sb.models.cnn(channels=(4, 8), hidden=(16,))
    c = clusters(sb.render(g, kind="joint", collapse=True).source)
    assert {"conv1", "conv2"} <= set(c)
    for k in (1, 2):  # each conv block holds its forward and its backward summary
        assert c[f"conv{k}"].count(" [label=") == 2
    # the backward written as the textbook: correlations, and δ routed to the arg-max
    assert "dK1 = X ⋆ dconv1" in c["conv1"] and "da1 = route_argmax(a1, dp1)" in c["conv1"]
    assert "dp1 = dconv2 ⋆ rot180(K2) (full)" in c["conv1"]


@pytest.mark.parametrize("causal", [False, True])
def test_transformer_block_collapses_attention_heads_and_mlp(causal):
    g = sb.models.transformer_block(6, 8, 2, 16, causal=causal)
    source = sb.render(g, collapse=True).source
    c = clusters(source)
    assert list(c) == ["attention", "mlp"]
    attention = c["attention"]
    # every head in one node: projections, scores, softmax over the keys, weighted values
    for text in ("Q = reshape(a @ Wq", "K = reshape(a @ Wk", "V = reshape(a @ Wv",
                 "attn = softmax(scores)", "h = X + "):
        assert text in attention, text
    assert ("mask" in attention) == causal
    assert "f = relu(" in c["mlp"] and "out = h + f @ W2 + b2" in c["mlp"]
    # nothing of the block is left outside its clusters but the input and the loss
    outside = set(re.findall(r"^\t(\w+) \[", source, re.MULTILINE)) - {"graph", "node", "edge"}
    assert outside == {"X", "Y", "mul_4", "L"}


def test_transformer_classifier_has_two_clusters_per_block():
    g = sb.models.transformer_classifier(7, 6, 8, 2, 16, layers=2, classes=3)
    for kind in ("forward", "joint"):
        c = clusters(sb.render(g, kind=kind, collapse=True).source)
        assert list(c) == ["embed", "blk1_attention", "blk1_mlp", "blk2_attention",
                           "blk2_mlp", "head"], kind
