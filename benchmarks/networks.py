"""The networks of workloads D and E.

D is ``sb.models.cnn`` with the issue's sizes; E is a minimal pre-norm block built with the
Python builder: ``sb.models.transformer_block`` adds a learned scale and shift to each layer
norm and biases to the attention projections, which the hand-written contender would have to
carry too without changing what is measured (attention and the feed-forward products).
The hand-written contenders (``benchmarks/handwritten.py``) read the parameters by the
names given here (``CNN_PARAMS``, ``BLOCK_PARAMS``).

Examples
--------
>>> g = digits_cnn()
>>> g.nodes("param")
['K1', 'c1', 'K2', 'c2', 'W1', 'b1', 'W2', 'b2']
>>> g["L"].shape
()
"""

from __future__ import annotations

import symbackprop as sb


def digits_cnn() -> sb.Graph:
    """The digits CNN of issue 13: ``sb.models.cnn(channels=(16, 32), hidden=(64,))``.

    Input (N, 1, 8, 8), integer labels y (N,); conv 3x3 padding 1, 16 channels (kernel
    ``K1``, bias ``c1`` (16,)), relu, max pool 2; conv 3x3 padding 1, 32 channels (``K2``,
    ``c2``), relu, max pool 2; flatten to (N, 128); dense 64 (``W1``, ``b1``) relu; dense 10
    (``W2``, ``b2``); mean softmax cross-entropy ``L``.

    Examples
    --------
    >>> digits_cnn()["logits"].shape
    ('N', 10)
    """
    return sb.models.cnn(input_shape=(1, 8, 8), channels=(16, 32), kernel=3, pool=2,
                         hidden=(64,), classes=10, name="digits_cnn")


def transformer_block(seq: int = 64, d_model: int = 128, heads: int = 4,
                      d_ff: int = 512) -> sb.Graph:
    """One pre-norm transformer encoder block on X (N, seq, d_model), loss ``mean(out**2)``.

    ``a = layer_norm(X)``; ``Q, K, V = a @ Wq, a @ Wk, a @ Wv`` split into ``heads`` heads
    of ``d_model // heads``; ``A = softmax(Q Kᵀ / sqrt(d_head))`` over the keys (no mask);
    ``h = X + concat_heads(A V) @ Wo``; ``out = h + relu(layer_norm(h) @ W1 + b1) @ W2 + b2``;
    ``L = mean(out**2)``. Layer norms have no scale or shift (``sb.layer_norm``), the
    attention projections no bias (``sb.models.transformer_block`` has both).

    Examples
    --------
    >>> transformer_block(8, 16, 2, 32)["out"].shape
    ('N', 8, 16)
    """
    T, D, H, F = seq, d_model, heads, d_ff
    dh = D // H
    g = sb.Graph(name="transformer_block")
    x = g.input("X", shape=("N", T, D))
    a = sb.layer_norm(x)

    def heads_of(name):  # (N, T, D) -> (N, H, T, dh)
        p = a @ g.param(name, shape=(D, D))
        return sb.transpose(sb.reshape(p, shape=("N", T, H, dh)), axes=(0, 2, 1, 3))

    q, k, v = heads_of("Wq"), heads_of("Wk"), heads_of("Wv")
    s = (q @ sb.transpose(k, axes=(0, 1, 3, 2))) * (1.0 / dh ** 0.5)
    ctx = sb.softmax(s, axis=-1) @ v  # (N, H, T, dh)
    ctx = sb.reshape(sb.transpose(ctx, axes=(0, 2, 1, 3)), shape=("N", T, D))
    h = x + ctx @ g.param("Wo", shape=(D, D))
    f = sb.relu(sb.layer_norm(h) @ g.param("W1", shape=(D, F)) + g.param("b1", shape=(F,)))
    out = g.output("out", h + f @ g.param("W2", shape=(F, D)) + g.param("b2", shape=(D,)))
    g.output("L", sb.mean(sb.square(out)))
    return g
