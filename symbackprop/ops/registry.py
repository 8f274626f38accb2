"""The op registry: one :class:`OpDef` per op, looked up by name.

Nothing outside an op's declaration branches on its name: shape checking,
autodiff, code generation, formulas and rendering all read the fields of the
``OpDef``. The registry holds no op bodies; those live in
:mod:`symbackprop.ops.elementwise` and :mod:`symbackprop.ops.tensor`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import UnknownOpError
from .stable import stabilize

Shape = tuple  # of int or str (a symbolic size such as "N")


class ShapeMismatch(Exception):
    """Raised by a shape rule; the graph adds the node name and the arguments."""

    def __init__(self, found: str, fix: str = ""):
        super().__init__(found)
        self.found = found
        self.fix = fix


@dataclass
class OpDef:
    """Everything there is to know about one op.

    Attributes
    ----------
    name : str
        The op's name, also the name of its builder function ``sb.<name>``.
    arity : int or None
        Number of arguments (``None``: any number, at least one).
    shape : callable
        ``shape(shapes, attrs, names) -> shape``; raises :class:`ShapeMismatch`.
    numpy : callable
        ``numpy(codes, attrs) -> str``: the NumPy expression computing the op
        from the source code of its arguments.
    vjp : callable or None
        ``vjp(g, args, out, attrs) -> list``: for each argument, a node (built
        from ordinary ops) holding the gradient contribution, or ``None``.
    attrs : dict
        Attribute names with their defaults.
    differentiable : bool
        ``False`` for ops with no useful derivative (argmax, onehot).
    dtype : callable
        ``dtype(arg_dtypes, attrs) -> "float" | "int"``.
    expr : callable or None
        Elementwise ops only: ``expr(attrs) -> (symbols, sympy expression)``.
    helpers : dict
        Names and source of module-level helper functions the NumPy code uses.
    doc : str
        One line shown in listings and error messages.
    commutative : bool
        ``True`` when the arguments can be swapped (``add``, ``mul``); diagrams
        label the argument positions of the other ops with more than one argument.
    notation : str or callable or None
        How diagrams write a non-elementwise op: a format string over the
        argument texts ``{0}, {1}, ...`` (``"{0} @ {1}"``) or
        ``notation(arg_texts, attrs) -> str or None``; ``None`` gives ``name(args, attr=...)``.
    internal : bool
        ``True`` for ops that gradients and passes build but users do not write
        (``ew``, ``identity``): error messages neither suggest nor list them.
    """

    name: str
    arity: int | None
    shape: Callable
    numpy: Callable
    vjp: Callable | None = None
    attrs: dict = field(default_factory=dict)
    differentiable: bool = True
    dtype: Callable = lambda dtypes, attrs: "float"
    expr: Callable | None = None
    helpers: dict = field(default_factory=dict)
    doc: str = ""
    elementwise: bool = False
    local_grads: Callable | None = None  # elementwise: attrs -> list of sympy exprs
    # elementwise: local_grads were declared (relu's [y > 0]), not derived by SymPy, so the
    # op is never merged with its neighbours before differentiation (optimize/fuse.py)
    grad_declared: bool = False
    display: Callable | None = None  # (arg sympy exprs, attrs) -> sympy expr
    code: Callable | None = None  # elementwise: like expr, a stable form to print
    numpy_out: Callable | None = None  # (codes, attrs, out, arg shapes) -> call writing into out
    # (codes, attrs, g, out) -> one call returning the value and writing the gradient for
    # the incoming adjoint g into out (the loss computed together with its gradient)
    numpy_with_grad: Callable | None = None
    inline: bool = False  # a cheap view (W.T): written inside its single consumer
    # A matrix product a @ B whose VJP for B is a.T @ g: the planned training step may
    # compute a @ B + b as one product [a, 1] @ [B; b] and the gradients of B and b as
    # one product [a, 1].T @ g (see codegen/plan.py).
    bias_fold: bool = False
    # numpy_out writes correctly into an out of any memory layout, such as an (M, N) array
    # seen through .T: the planner may then store the result transposed (see transposable)
    out_any_layout: bool = False
    commutative: bool = False  # arguments can be swapped (diagrams)
    notation: str | Callable | None = None  # diagrams: "{0} @ {1}"
    internal: bool = False  # built by gradients and passes; left out of suggestions

    def code_expr(self, attrs: dict):
        """Elementwise ops: ``(symbols, expression)`` to compute: the op's ``code`` form if
        it has one, else its expression, rewritten by the stability rules of
        :mod:`symbackprop.ops.stable` (``log(1 + exp(x))`` as ``softplus(x)``)."""
        syms, e = (self.code or self.expr)(attrs)
        return syms, stabilize(e)


# The planned training step stores an (N, M) intermediate with N a batch size and M at
# least this wide as an (M, N) array seen through .T when the batch is the narrower side
# (codegen/plan.py, PACK): OpenBLAS then runs its products 10-30% faster.
TRANSPOSABLE_WIDTH = 128


def transposable(shape: tuple) -> bool:
    """Whether the planner may store an intermediate of this shape transposed: ``(N, M)``
    with ``N`` a size known only when the step runs and ``M >= TRANSPOSABLE_WIDTH``.

    Examples
    --------
    >>> transposable(("N", 256)), transposable(("N", 10)), transposable((128, 256))
    (True, False, False)
    """
    return len(shape) == 2 and isinstance(shape[0], str) and isinstance(shape[1], int) \
        and shape[1] >= TRANSPOSABLE_WIDTH


_OPS: dict[str, OpDef] = {}
# Pseudo-ops naming the role of a leaf node.
LEAVES = ("input", "param", "const")


def register(op: OpDef) -> OpDef:
    """Add ``op`` to the registry (replacing an op of the same name)."""
    if op.name in LEAVES:
        raise ValueError(f"{op.name!r} is reserved for leaf nodes; choose another op name")
    _OPS[op.name] = op
    return op


def get(name: str, node: str | None = None) -> OpDef:
    """Return the op called ``name``; suggest close names if there is none.

    ``node`` names the node that uses it, for the error message. Suggestions and
    the list of known ops leave out internal ops (``ew``), which users do not write.

    Examples
    --------
    >>> get("relu").arity
    1
    >>> get("relu6", node="h1")
    Traceback (most recent call last):
    ...
    symbackprop.errors.UnknownOpError: node 'h1' uses op 'relu6', which is not registered. Did you mean 'relu'? Known ops: abs, add, argmax, ...
    """
    try:
        return _OPS[name]
    except (KeyError, TypeError):
        public = [k for k in sorted(_OPS) if not _OPS[k].internal]
        close = difflib.get_close_matches(str(name), public + list(LEAVES), n=3)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        where = f"node {node!r} uses op {name!r}" if node else f"unknown op {name!r}"
        raise UnknownOpError(
            f"{where}, which is not registered.{hint} Known ops: {', '.join(public)}."
        ) from None


def all_ops() -> list[OpDef]:
    """All registered ops, sorted by name."""
    return [_OPS[k] for k in sorted(_OPS)]


def apply(name: str, *args: Any, **attrs: Any):
    """Add a node applying op ``name`` to ``args`` in the graph of the first node argument."""
    for a in args:
        graph = getattr(a, "graph", None)
        if graph is not None:
            return graph.apply(name, list(args), attrs)
    raise TypeError(
        f"sb.{name}() needs at least one graph node among its arguments, got "
        f"{', '.join(type(a).__name__ for a in args) or 'none'}. "
        "Create nodes with g.input(), g.param() or g.const() first."
    )


def builder(name: str) -> Callable:
    """The user-facing function ``sb.<name>`` for a registered op."""
    op = get(name)

    def fn(*args, **attrs):
        return apply(name, *args, **attrs)

    fn.__name__ = name
    fn.__qualname__ = name
    fn.__doc__ = f"Apply op ``{name}``: {op.doc}" if op.doc else f"Apply op ``{name}``."
    return fn
