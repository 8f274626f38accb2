"""Ready-made networks built with the Python builder.

Every model documents its node names: inputs ``X`` (and ``y``), parameters
``W1, b1, W2, b2, ...`` (``Wk`` is (in, out), ``bk`` is (out,)), hidden
pre-activations ``z1, z2, ...``, activations ``h1, h2, ...``, outputs
``logits`` (or ``pred``) and the scalar loss ``L``.
"""

from __future__ import annotations

from .errors import GraphError
from .graph import Graph, Node
from .ops import registry

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


def dense(g: Graph, h: Node, n_in: int, n_out: int, k: int) -> Node:
    """``h @ Wk + bk`` with parameters ``Wk`` (n_in, n_out) and ``bk`` (n_out,)."""
    W = g.param(f"W{k}", shape=(n_in, n_out))
    b = g.param(f"b{k}", shape=(n_out,))
    return h @ W + b


def mlp(sizes, activation: str = "relu", loss: str = "softmax_cross_entropy",
        name: str | None = None) -> Graph:
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

    Returns
    -------
    Graph
        Inputs ``X`` (N, sizes[0]) and ``y``; parameters ``W1, b1, ...``;
        nodes ``z1, h1, ...``; outputs ``logits`` and the mean loss ``L``.

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
    g = Graph(name=name or "mlp_" + "_".join(map(str, sizes)))
    h = g.input("X", shape=("N", sizes[0]))
    depth = len(sizes) - 1
    for k in range(1, depth + 1):
        z = dense(g, h, sizes[k - 1], sizes[k], k)
        if k < depth:
            h = g.name(act(g.name(z, f"z{k}")), f"h{k}")
    g.output("logits", z)
    _loss(g, loss, g["logits"], sizes[-1])
    return g
