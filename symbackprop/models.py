"""Ready-made networks built with the Python builder.

Every model documents its node names: inputs ``X`` (and ``y``), parameters
``W1, b1, W2, b2, ...`` (``Wk`` is (in, out), ``bk`` is (out,)), hidden
pre-activations ``z1, z2, ...``, activations ``h1, h2, ...``, outputs
``logits`` (or ``pred``) and the scalar loss ``L``.
"""

from __future__ import annotations

import math
import numbers
from contextlib import contextmanager
from itertools import islice

from .errors import GraphError, ShapeError
from .graph import Graph, Node
from .ops import registry
from .ops.norm import dropout as drop
from .ops.products import einsum

LOSSES = ("softmax_cross_entropy", "mse")


def _activation(name: str):
    op = registry.get(name)
    if not op.elementwise or op.arity != 1:
        raise GraphError(f"activation {name!r} is not a one-argument elementwise op; use "
                         "relu, tanh, sigmoid, softplus or one from sb.elementwise().")
    return registry.builder(name)


def _loss(g: Graph, loss: str, out: Node, n_out: int) -> Node:
    if loss == "softmax_cross_entropy":
        y = g.input("y", shape=("N",), dtype="int")
    elif loss == "mse":
        y = g.input("y", shape=("N", n_out))
    else:
        raise GraphError(f"loss {loss!r} is not one of {LOSSES}.")
    return g.output("L", registry.apply(loss, out, y))


@contextmanager
def block(g: Graph, name: str):
    """Tag the nodes added (or renamed) inside the ``with`` statement with ``block=name``.

    Diagrams can draw each block as one cluster (``sb.render(g, collapse=True)``).

    Examples
    --------
    >>> g = sb.Graph(); x = g.input("x")
    >>> with sb.models.block(g, "layer1"):
    ...     h = sb.tanh(x * g.param("w"))
    >>> [n for n in g.nodes() if g.nx.nodes[n].get("block") == "layer1"]
    ['w', 'mul_1', 'tanh_1']
    """
    start = len(g)
    yield
    # the nodes past start in insertion order (networkx keeps them in a dict; a renamed node
    # moves to the end), read from the end: listing every node for every block would be
    # quadratic in the depth
    for n in list(islice(reversed(g.nx._node), max(len(g) - start, 0))):
        g.nx.nodes[n].setdefault("block", name)


def dense(g: Graph, h: Node, n_in: int, n_out: int, k: int) -> Node:
    """``h @ Wk + bk`` with parameters ``Wk`` (n_in, n_out) and ``bk`` (n_out,)."""
    W = g.param(f"W{k}", shape=(n_in, n_out))
    b = g.param(f"b{k}", shape=(n_out,))
    return h @ W + b


def mlp(sizes, activation: str = "relu", loss: str = "softmax_cross_entropy",
        name: str | None = None, layer_norm: bool = False) -> Graph:
    """A multilayer perceptron classifier (or regressor with ``loss="mse"``).

    Parameters
    ----------
    sizes : sequence of int
        Layer widths from input to output, e.g. ``(784, 256, 256, 256, 10)``.
    activation : str
        Elementwise op between layers (``relu``, ``tanh``, ``sigmoid``, ...).
    loss : {"softmax_cross_entropy", "mse"}
        With ``softmax_cross_entropy``, ``y`` holds integer labels (N,); with
        ``mse``, targets (N, sizes[-1]).
    layer_norm : bool
        Normalize every hidden layer after its activation: ``ak = act(zk)``,
        ``hk = layer_norm(ak)`` (over the features, no learned scale or shift), so each
        layer hands the next one zero-mean, unit-variance inputs (docs/training.md,
        *Deep networks*).

    Returns
    -------
    Graph
        Inputs ``X`` (N, sizes[0]) and ``y``; parameters ``W1, b1, ...``;
        nodes ``z1, h1, ...`` (and ``a1, a2, ...`` with ``layer_norm``); outputs
        ``logits`` and the mean loss ``L``.

    Examples
    --------
    >>> g = sb.models.mlp([4, 3, 2])
    >>> g.nodes("param"), g.outputs
    (['W1', 'b1', 'W2', 'b2'], ['logits', 'L'])
    """
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2:
        raise GraphError(f"mlp sizes {sizes}: expected at least an input and an output size.")
    act = _activation(activation)
    g = Graph(name=name or "mlp_" + "_".join(map(str, sizes)) + ("_ln" if layer_norm else ""))
    h = g.input("X", shape=("N", sizes[0]))
    depth = len(sizes) - 1
    for k in range(1, depth + 1):
        with block(g, f"layer{k}"):
            z = dense(g, h, sizes[k - 1], sizes[k], k)
            if k < depth and layer_norm:
                a = g.name(act(g.name(z, f"z{k}")), f"a{k}")
                h = g.name(registry.apply("layer_norm", a), f"h{k}")
            elif k < depth:
                h = g.name(act(g.name(z, f"z{k}")), f"h{k}")
            else:
                g.output("logits", z)
    _loss(g, loss, g["logits"], sizes[-1])
    return g


def _sizes(what: str, **sizes) -> None:
    for k, v in sizes.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise GraphError(f"{what}: {k}={v!r}; expected a positive int.")


def logistic_regression(n_features: int, name: str | None = None) -> Graph:
    """Binary logistic regression: ``p = sigmoid(X @ W + b)`` with the binary cross-entropy.

    The loss is written with existing ops in its stable *logits* form:
    ``-[y log p + (1 - y) log(1 - p)] = softplus(z) - y z`` for ``z = logit(p)``,
    averaged over the batch, so large ``|z|`` never takes the log of 0.

    Parameters
    ----------
    n_features : int
        Number of columns of ``X``.

    Returns
    -------
    Graph
        Inputs ``X`` (N, n_features) and integer labels ``y`` (N,) in {0, 1};
        parameters ``W`` (n_features, 1) and ``b`` (1,); outputs ``logits`` (N,)
        (the probability of class 1 is ``sigmoid(logits)``, and ``logits > 0``
        predicts class 1) and the mean loss ``L = mean(softplus(logits) - logits * y)``.

    Examples
    --------
    >>> g = sb.models.logistic_regression(3)
    >>> g.nodes("param"), g.outputs, g["logits"].shape
    (['W', 'b'], ['logits', 'L'], ('N',))
    """
    _sizes("logistic_regression", n_features=n_features)
    g = Graph(name=name or f"logistic_regression_{n_features}")
    X = g.input("X", shape=("N", n_features))
    y = g.input("y", shape=("N",), dtype="int")
    W = g.param("W", shape=(n_features, 1))
    b = g.param("b", shape=(1,))
    logits = g.output("logits", registry.apply("reshape", X @ W + b, shape=("N",)))
    softplus = registry.builder("softplus")
    mean = registry.builder("mean")
    g.output("L", mean(softplus(logits) - logits * y))
    return g


def softmax_regression(n_features: int, n_classes: int, name: str | None = None) -> Graph:
    """Multinomial logistic regression: ``logits = X @ W + b``, softmax cross-entropy.

    Parameters
    ----------
    n_features : int
        Number of columns of ``X``.
    n_classes : int
        Number of classes.

    Returns
    -------
    Graph
        Inputs ``X`` (N, n_features) and integer labels ``y`` (N,) in
        0..n_classes-1; parameters ``W`` (n_features, n_classes) and ``b``
        (n_classes,); outputs ``logits`` (N, n_classes) and the mean loss ``L``.

    Examples
    --------
    >>> g = sb.models.softmax_regression(4, 3)
    >>> g.nodes("param"), g.outputs
    (['W', 'b'], ['logits', 'L'])
    """
    _sizes("softmax_regression", n_features=n_features, n_classes=n_classes)
    g = Graph(name=name or f"softmax_regression_{n_features}_{n_classes}")
    X = g.input("X", shape=("N", n_features))
    W = g.param("W", shape=(n_features, n_classes))
    b = g.param("b", shape=(n_classes,))
    logits = g.output("logits", X @ W + b)
    _loss(g, "softmax_cross_entropy", logits, n_classes)
    return g


def residual_mlp(n_in: int, width: int, n_blocks: int, n_classes: int,
                 activation: str = "relu", branch_scale: float | None = None,
                 name: str | None = None) -> Graph:
    """A classifier with a skip connection around every block: ``h = h + s * (act(h) @ W + b)``.

    Layer 1 maps the input to the width (``h1 = act(X @ W1 + b1)``); blocks
    ``k = 2 .. n_blocks + 1`` are *pre-activation* blocks that add the scaled
    branch ``rk = s * (act(h(k-1)) @ Wk + bk)`` to the running ``h``; the last
    layer gives the logits from ``h``. The identity path carries the gradient
    past each block unchanged, so it does not vanish with depth.

    The branch scale ``s`` (default ``1/sqrt(n_blocks)``) keeps a deep network
    starting well with the default initialisation: each branch ends in a
    zero-mean linear layer, so the branches add up like a random walk: the
    running sum's mean square stays within a factor of about e of its value
    after layer 1 at any depth, and the logits and gradients stay tame. Unscaled
    (``branch_scale=1``), 50 blocks of width 64 start at a loss of about 1e5
    (docs/training.md, *Deep networks*).

    Parameters
    ----------
    n_in : int
        Number of columns of ``X``.
    width : int
        Width of every hidden layer (the skip connections need one width).
    n_blocks : int
        Number of residual blocks (0 gives a one-hidden-layer MLP).
    n_classes : int
        Number of classes.
    activation : str
        Elementwise op of layer 1 and at the start of each block (``relu``, ``tanh``, ...).
    branch_scale : float, optional
        The factor ``s`` of every branch (default ``1/sqrt(n_blocks)``), a
        constant node of each block.

    Returns
    -------
    Graph
        Inputs ``X`` (N, n_in) and integer labels ``y`` (N,); parameters
        ``W1`` (n_in, width), ``b1``, ``Wk`` (width, width), ``bk`` for each
        block and ``W{n_blocks+2}`` (width, n_classes), ``b{n_blocks+2}``;
        nodes ``z1, h1`` then ``ak = act(h(k-1))``, ``zk = ak @ Wk + bk``,
        ``rk = s * zk``, ``hk = h(k-1) + rk`` per block; outputs
        ``logits`` (N, n_classes) and the mean softmax cross-entropy ``L``.

    Examples
    --------
    >>> g = sb.models.residual_mlp(4, 3, 2, 2)
    >>> g.nodes("param")
    ['W1', 'b1', 'W2', 'b2', 'W3', 'b3', 'W4', 'b4']
    >>> g.args("h3")
    ['h2', 'r3']
    >>> s, z = g.args("r3")
    >>> z, round(g.nx.nodes[s]["value"], 6)  # r3 = s * z3 with s = 1 / sqrt(2)
    ('z3', 0.707107)
    """
    _sizes("residual_mlp", n_in=n_in, width=width, n_classes=n_classes)
    if isinstance(n_blocks, bool) or not isinstance(n_blocks, int) or n_blocks < 0:
        raise GraphError(f"residual_mlp: n_blocks={n_blocks!r}; expected an int >= 0.")
    if branch_scale is None:
        branch_scale = 1 / math.sqrt(max(n_blocks, 1))
    elif isinstance(branch_scale, bool) or not isinstance(branch_scale, numbers.Real) \
            or not 0 < branch_scale < math.inf:
        raise GraphError(f"residual_mlp: branch_scale={branch_scale!r}; expected a positive "
                         "number, e.g. 1 / sqrt(n_blocks) (the default).")
    act = _activation(activation)
    g = Graph(name=name or f"residual_mlp_{n_in}_{width}x{n_blocks}_{n_classes}")
    X = g.input("X", shape=("N", n_in))
    with block(g, "layer1"):
        h = g.name(act(g.name(dense(g, X, n_in, width, 1), "z1")), "h1")
    for k in range(2, n_blocks + 2):
        with block(g, f"block{k}"):  # the scale too: a collapsed diagram hides it in the block
            a = g.name(act(h), f"a{k}")
            z = g.name(dense(g, a, width, width, k), f"z{k}")
            h = g.name(h + g.name(g.const(float(branch_scale)) * z, f"r{k}"), f"h{k}")
    k = n_blocks + 2
    with block(g, f"layer{k}"):
        logits = g.output("logits", dense(g, h, width, n_classes, k))
    _loss(g, "softmax_cross_entropy", logits, n_classes)
    return g


def autoencoder(sizes, activation: str = "relu", name: str | None = None) -> Graph:
    """An autoencoder trained to reconstruct ``X`` with the mean squared error.

    ``sizes`` lists the encoder widths from the input to the code, e.g.
    ``(64, 32, 8)``; the decoder mirrors them (64-32-8-32-64). Every hidden
    layer, the code included, applies ``activation``; the reconstruction is
    linear.

    Parameters
    ----------
    sizes : sequence of int
        Encoder widths, input first, code last (at least two).
    activation : str
        Elementwise op of the hidden layers.

    Returns
    -------
    Graph
        One input ``X`` (N, sizes[0]) and no labels; parameters ``W1, b1, ...``
        (``2 * (len(sizes) - 1)`` layers); nodes ``z1, h1, ...`` with the
        bottleneck named ``code``; outputs ``pred`` (N, sizes[0]) and
        ``L = mse(pred, X)`` (the mean over all entries).

    Examples
    --------
    >>> g = sb.models.autoencoder([6, 4, 2])
    >>> g.nodes("input"), g.nodes("param")[::2], g.outputs, g["code"].shape
    (['X'], ['W1', 'W2', 'W3', 'W4'], ['pred', 'L'], ('N', 2))
    """
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or min(sizes) < 1:
        raise GraphError(f"autoencoder sizes {sizes}: expected at least an input and a code "
                         "size, all positive, e.g. [64, 32, 8].")
    act = _activation(activation)
    widths = sizes + sizes[-2::-1]
    g = Graph(name=name or "autoencoder_" + "_".join(map(str, widths)))
    X = g.input("X", shape=("N", sizes[0]))
    h, depth, code = X, len(widths) - 1, len(sizes) - 1
    for k in range(1, depth + 1):
        with block(g, f"layer{k}"):
            z = dense(g, h, widths[k - 1], widths[k], k)
            if k < depth:
                h = g.name(act(g.name(z, f"z{k}")), "code" if k == code else f"h{k}")
            else:
                pred = g.output("pred", z)
    g.output("L", registry.apply("mse", pred, X))
    return g


# -- convolutional networks (issue 13) ------------------------------------------------


def _ints(what: str, name: str, v, n: int | None = None, low: int = 1) -> tuple[int, ...]:
    """``v`` as a tuple of ints >= low (an int alone for ``n is None``)."""
    vs = (v,) if n is None else tuple(v) if isinstance(v, (tuple, list)) else None
    if vs is None or (n and len(vs) != n) or any(
            isinstance(x, bool) or not isinstance(x, numbers.Integral) or x < low for x in vs):
        shape = "an int" if n is None else f"{n} ints" if n else "a sequence of ints"
        raise GraphError(f"{what}: {name}={v!r}; expected {shape} >= {low}.")
    return tuple(int(x) for x in vs)


def cnn(input_shape=(1, 8, 8), channels=(16, 32), kernel: int = 3, pool: int = 2,
        hidden=(64,), classes: int = 10, batch_norm: bool = False, dropout: float = 0.0,
        activation: str = "relu", name: str | None = None) -> Graph:
    """A convolutional classifier: conv blocks, then dense layers, then a linear head.

    Block ``k`` is ``pk = max_pool2d(act(conv2d(h, Kk, padding=kernel // 2) + ck), pool)``
    (an odd ``kernel`` keeps the size: a "same" convolution); the last block's output is
    flattened to (N, features) and feeds the dense layers ``hk = act(h @ Wk + bk)`` and the
    linear head, trained with the mean softmax cross-entropy. The batch ``N`` is symbolic:
    the network compiles once for any batch size. Kernels get He initialisation with
    PyTorch's fans (``fan_in = C_in·kernel²``), through the op record of ``conv2d``.

    Parameters
    ----------
    input_shape : (C, H, W)
        One image: channels, height, width.
    channels : sequence of int
        Output channels of each conv block (at least one block).
    kernel : int
        Kernel size (``kernel x kernel``), padding ``kernel // 2``.
    pool : int
        Max pooling window and stride after each conv (1: no pooling).
    hidden : sequence of int
        Widths of the dense layers after the flattening (may be empty).
    classes : int
        Number of classes (at least 2).
    batch_norm : bool
        Normalize each convolution per channel before the activation:
        ``convk = bn_k · (1 + gk) + ck`` with ``bn_k = batch_norm(conv2d(h, Kk), axis=1)``
        (node ``bnk``), the learned scale written ``1 + gk`` so that its zero start is the
        identity, and no convolution bias (the shift ``ck`` takes its place).
    dropout : float
        Probability ``p`` in [0, 1) of inverted dropout on ``flat`` and on every dense
        layer's output ``hk``, that is before each dense layer and the head (nodes
        ``drop0``, ``drop1``, ...); 0: none.
    activation : str
        Elementwise op after every conv and dense layer (``relu``, ``tanh``, ...).

    Returns
    -------
    Graph
        Inputs ``X`` (N, C, H, W) and integer labels ``y`` (N,) in 0..classes-1;
        parameters ``K1, c1, K2, c2, ...`` (with ``batch_norm``, ``K1, g1, c1, ...``) for the conv blocks (kernel ``Kk`` (C_out,
        C_in, kernel, kernel), bias ``ck`` (C_out,), added over the image), then ``W1,
        b1, ...`` for the dense layers and the head (``Wk`` (in, out), ``bk`` (out,));
        nodes ``convk`` (the convolution plus bias), ``ak = act(convk)`` and ``pk`` (pooled;
        with ``pool=1`` a block ends at ``ak``) per block, ``flat`` (N, features), ``zk, hk``
        per dense layer; outputs ``logits`` (N, classes) and the mean loss ``L``.

    Examples
    --------
    >>> g = sb.models.cnn(channels=(4, 8), hidden=(16,))
    >>> g.nodes("param")
    ['K1', 'c1', 'K2', 'c2', 'W1', 'b1', 'W2', 'b2']
    >>> g["p2"].shape, g["flat"].shape, g["logits"].shape
    (('N', 8, 2, 2), ('N', 32), ('N', 10))
    """
    what = "cnn"
    if not isinstance(batch_norm, bool):
        raise GraphError(f"{what}: batch_norm={batch_norm!r}; expected True or False.")
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) \
            or not 0 <= dropout < 1:
        raise GraphError(f"{what}: dropout={dropout!r}; expected a number in [0, 1).")
    c_in, height, width = _ints(what, "input_shape", input_shape, 3)
    channels = _ints(what, "channels", channels, 0)
    hidden = _ints(what, "hidden", hidden, 0)
    if not channels:
        raise GraphError(f"{what}: channels=(); expected at least one conv block, e.g. (16, 32).")
    (kernel,), (pool,) = _ints(what, "kernel", kernel), _ints(what, "pool", pool)
    (classes,) = _ints(what, "classes", classes, low=2)
    act = _activation(activation)
    conv2d, max_pool2d = registry.builder("conv2d"), registry.builder("max_pool2d")
    g = Graph(name=name or "cnn_" + "_".join(
        ["x".join(map(str, (c_in, height, width))), *("c" + str(c) for c in channels),
         *map(str, hidden), str(classes)]) + ("_bn" if batch_norm else "")
        + (f"_dropout{dropout:g}".replace(".", "p") if dropout else ""))
    h = g.input("X", shape=("N", c_in, height, width))
    for k, c_out in enumerate(channels, start=1):
        with block(g, f"conv{k}"):
            K = g.param(f"K{k}", shape=(c_out, c_in, kernel, kernel))
            # the bias is a vector (so it starts at zero, as every bias), seen as (C, 1, 1)
            # to broadcast over the image
            if batch_norm:  # per channel, before the activation; the shift replaces the bias
                gain = registry.apply("reshape", g.param(f"g{k}", shape=(c_out,)),
                                      shape=(c_out, 1, 1))
                bn = g.name(registry.apply("batch_norm", conv2d(h, K, padding=kernel // 2),
                                           axis=1), f"bn{k}")
            c = registry.apply("reshape", g.param(f"c{k}", shape=(c_out,)), shape=(c_out, 1, 1))
            pre = bn * (g.const(1.0) + gain) + c if batch_norm \
                else conv2d(h, K, padding=kernel // 2) + c
            a = g.name(act(g.name(pre, f"conv{k}")), f"a{k}")
            h = a
            if pool > 1:
                if min(a.shape[2:]) < pool:
                    raise ShapeError(
                        f"{what}: block {k}'s output is {a.shape[2]}x{a.shape[3]}, smaller than "
                        f"the pooling window {pool}; use fewer conv blocks or a smaller pool.")
                h = g.name(max_pool2d(a, pool), f"p{k}")
        c_in = c_out
    n_flat = math.prod(h.shape[1:])
    h = g.name(registry.apply("reshape", h, shape=("N", n_flat)), "flat")
    widths = [n_flat, *hidden, classes]
    for k in range(1, len(widths)):
        with block(g, f"layer{k}"):
            if dropout > 0:  # before each dense layer and the head
                h = g.name(drop(h, float(dropout)), f"drop{k - 1}")
            z = dense(g, h, widths[k - 1], widths[k], k)
            if k < len(widths) - 1:
                h = g.name(act(g.name(z, f"z{k}")), f"h{k}")
            else:
                g.output("logits", z)
    _loss(g, "softmax_cross_entropy", g["logits"], classes)
    return g


# -- transformers (issue 13) ----------------------------------------------------------------
# A large negative rather than -inf: exp(-1e9 - max) is exactly 0 in float32 and float64,
# while -inf would make masked scores minus the row maximum nan where a row were all masked.
# Every row keeps its diagonal, so the softmax's shift by the maximum is always finite.
CAUSAL_MASK = -1e9


def _layer_norm(g: Graph, h: Node, d: int, prefix: str) -> Node:
    """``layer_norm(h) * (1 + {prefix}_g) + {prefix}_b``: the learned scale is written
    ``1 + gain`` so that the zero start of vectors (biases, gains) is the identity."""
    gain = g.param(f"{prefix}_g", shape=(d,))
    shift = g.param(f"{prefix}_b", shape=(d,))
    return registry.apply("layer_norm", h) * (g.const(1.0) + gain) + shift


def _transformer_block(g: Graph, h: Node, seq_len: int, d_model: int, heads: int, d_ff: int,
                       causal: bool, p: str) -> Node:
    """One pre-norm block on ``h`` (N, T, D); parameter and node names start with ``p``."""
    T, D, H = seq_len, d_model, heads
    e = D // H
    softmax, relu = registry.builder("softmax"), registry.builder("relu")
    # two blocks, so that a collapsed diagram draws the attention (all heads) and the MLP
    # each as one cluster
    with block(g, f"{p}attention"):
        a = g.name(_layer_norm(g, h, D, f"{p}ln1"), f"{p}a")

        def heads_of(name):  # (N, T, D) @ (D, D) -> (N, T, H, e)
            W = g.param(f"{p}{name}", shape=(D, D))
            return registry.apply("reshape", a @ W, shape=("N", T, H, e))

        Q, K, V = (g.name(heads_of(w), f"{p}{w[1].upper()}") for w in ("Wq", "Wk", "Wv"))
        S = einsum("bqhe,bkhe->bhqk", Q, K) * g.const(1 / math.sqrt(e))
        if causal:  # 0 on and below the diagonal, CAUSAL_MASK above: a query sees no later key
            mask = [[0.0 if k <= q else CAUSAL_MASK for k in range(T)] for q in range(T)]
            S = S + g.const(mask, name=f"{p}mask")
        A = g.name(softmax(g.name(S, f"{p}scores"), axis=-1), f"{p}attn")  # over the keys
        O = registry.apply("reshape", einsum("bhqk,bkhe->bqhe", A, V), shape=("N", T, D))
        Wo, bo = g.param(f"{p}Wo", shape=(D, D)), g.param(f"{p}bo", shape=(D,))
        h = g.name(h + O @ Wo + bo, f"{p}h")
    with block(g, f"{p}mlp"):
        m = _layer_norm(g, h, D, f"{p}ln2")
        W1, b1 = g.param(f"{p}W1", shape=(D, d_ff)), g.param(f"{p}b1", shape=(d_ff,))
        W2, b2 = g.param(f"{p}W2", shape=(d_ff, D)), g.param(f"{p}b2", shape=(D,))
        f = g.name(relu(m @ W1 + b1), f"{p}f")
        return g.name(h + f @ W2 + b2, f"{p}out")


def _transformer_sizes(what, seq_len, d_model, heads, d_ff, **more):
    _sizes(what, seq_len=seq_len, d_model=d_model, heads=heads, d_ff=d_ff, **more)
    if d_model % heads:
        raise GraphError(f"{what}: d_model={d_model} is not a multiple of heads={heads}; "
                         "each head gets d_model // heads columns, e.g. d_model=32, heads=4.")


def transformer_block(seq_len: int, d_model: int, heads: int, d_ff: int, causal: bool = False,
                      name: str | None = None) -> Graph:
    """One pre-norm transformer block: multi-head self-attention and an MLP, each with a
    residual connection, on ``X`` (N, seq_len, d_model).

    ``a = LN1(X)``; per head ``h`` (``e = d_model // heads`` columns of ``a @ Wq``,
    ``a @ Wk``, ``a @ Wv``): ``softmax(Q Kᵀ / √e + M)`` over the keys weights ``V``; the
    heads, joined again, go through ``Wo, bo``: ``Xh = X + attention @ Wo + bo``; then
    ``Y = Xh + relu(LN2(Xh) @ W1 + b1) @ W2 + b2``. ``LNk(x) = layer_norm(x) * (1 +
    lnk_g) + lnk_b`` (the scale written ``1 + gain``, so the zero start of vectors is the
    identity). Pre-norm (the norm inside each residual branch) keeps the identity path
    clean, as in GPT-2. With ``causal=True``, ``M`` is a constant (T, T) with 0 on and below
    the diagonal and ``CAUSAL_MASK = -1e9`` above, so a position sees no later position
    (the softmax gives exactly 0 weight there; -1e9 rather than -inf keeps every term finite).

    The block is a building piece: its output is ``Y``; the loss ``L = mean(Y * Y)``
    is there so that the graph can be differentiated and checked (tests, benchmarks).

    Parameters
    ----------
    seq_len, d_model, heads, d_ff : int
        Positions T, model width D (a multiple of heads), heads H, hidden width of the MLP.
    causal : bool
        Mask later positions (a decoder's self-attention).

    Returns
    -------
    Graph
        Input ``X`` (N, T, D); parameters ``ln1_g, ln1_b`` (D,), ``Wq, Wk, Wv, Wo`` (D, D),
        ``bo`` (D,), ``ln2_g, ln2_b`` (D,), ``W1`` (D, d_ff), ``b1`` (d_ff,), ``W2``
        (d_ff, D), ``b2`` (D,); nodes ``a`` (normed input), ``Q, K, V`` (N, T, H, e),
        ``scores`` and ``attn`` (N, H, T, T), ``h`` (after attention), ``f`` (MLP hidden),
        ``out``; outputs ``Y`` (N, T, D) and ``L = mean(Y * Y)``.

    Examples
    --------
    >>> g = sb.models.transformer_block(5, 8, 2, 16, causal=True)
    >>> g.outputs, g["attn"].shape
    (['Y', 'L'], ('N', 2, 5, 5))
    """
    _transformer_sizes("transformer_block", seq_len, d_model, heads, d_ff)
    g = Graph(name=name or f"transformer_block_{seq_len}_{d_model}_{heads}_{d_ff}"
              + ("_causal" if causal else ""))
    X = g.input("X", shape=("N", seq_len, d_model))
    Y = g.output("Y", _transformer_block(g, X, seq_len, d_model, heads, d_ff, causal, ""))
    g.output("L", registry.apply("mean", Y * Y))
    return g


def transformer_classifier(vocab: int, seq_len: int, d_model: int, heads: int, d_ff: int,
                           layers: int, classes: int, causal: bool = False,
                           name: str | None = None) -> Graph:
    """A sequence classifier: token embedding, learned positions, ``layers`` pre-norm
    transformer blocks (:func:`transformer_block`), a final layer norm, the mean over
    positions and a linear head, trained with the softmax cross-entropy.

    Parameters
    ----------
    vocab : int
        Number of token ids; ``X`` holds integers 0..vocab-1.
    seq_len, d_model, heads, d_ff : int
        As for :func:`transformer_block`.
    layers : int
        Number of blocks.
    classes : int
        Number of classes.
    causal : bool
        Causal self-attention in every block.

    Returns
    -------
    Graph
        Inputs ``X`` (N, T) integer tokens and ``y`` (N,) integer labels; parameters
        ``E`` (vocab, D) (the embedding, ``sb.embedding(X, E)``), ``P`` (T, D) (positions),
        for block ``k = 1..layers`` the parameters of :func:`transformer_block` prefixed
        ``blk{k}_`` (``blk1_Wq``, ...), ``lnf_g, lnf_b`` (D,), ``W_out`` (D, classes),
        ``b_out`` (classes,); nodes ``h0`` (N, T, D) (embedding plus positions),
        ``blk{k}_out`` (each block's output), ``pooled`` (N, D); outputs ``logits``
        (N, classes) and the mean loss ``L``. The embedding and positions start Xavier
        uniform (the embedding's fans are 1 and D, ``take``'s ``fans``).

    Examples
    --------
    >>> g = sb.models.transformer_classifier(10, 6, 8, 2, 16, layers=2, classes=3)
    >>> g.nodes("input"), g.outputs, g["pooled"].shape
    (['X', 'y'], ['logits', 'L'], ('N', 8))
    """
    _transformer_sizes("transformer_classifier", seq_len, d_model, heads, d_ff, vocab=vocab,
                       layers=layers, classes=classes)
    g = Graph(name=name or f"transformer_classifier_{vocab}_{seq_len}_{d_model}x{layers}_"
              f"{classes}")
    X = g.input("X", shape=("N", seq_len), dtype="int")
    with block(g, "embed"):
        E = g.param("E", shape=(vocab, d_model))
        P = g.param("P", shape=(seq_len, d_model))
        h = g.name(registry.apply("take", E, X, axis=0) + P, "h0")
    for k in range(1, layers + 1):  # blocks blk{k}_attention and blk{k}_mlp
        h = _transformer_block(g, h, seq_len, d_model, heads, d_ff, causal, f"blk{k}_")
    with block(g, "head"):
        pooled = g.name(registry.apply("mean", _layer_norm(g, h, d_model, "lnf"), axis=1),
                        "pooled")
        W, b = g.param("W_out", shape=(d_model, classes)), g.param("b_out", shape=(classes,))
        logits = g.output("logits", pooled @ W + b)
    _loss(g, "softmax_cross_entropy", logits, classes)
    return g
