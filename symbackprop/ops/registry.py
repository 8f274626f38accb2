"""The op registry: one :class:`OpDef` per op, looked up by name.

Nothing outside an op's declaration branches on its name: shape checking,
autodiff, code generation, formulas and rendering all read the fields of the
``OpDef``. The registry holds no op bodies; those live in
:mod:`symbackprop.ops.elementwise` and :mod:`symbackprop.ops.tensor`.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sympy as sp

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
    """Everything there is to know about one op's mathematics and how it is shown.

    How an array library computes the op is not here: that is code generation's table
    (:mod:`symbackprop.codegen.lowering`, keyed by backend and op name), so that a new
    backend adds a table instead of editing every op. Elementwise ops need no entry
    there: their code is printed from ``expr``.

    Attributes
    ----------
    The mathematics:

    name : str
        The op's name, also the name of its builder function ``sb.<name>``.
    arity : int or None
        Number of arguments (``None``: any number, at least one).
    shape : callable
        ``shape(arg_shapes, attrs, arg_names) -> shape``; raises :class:`ShapeMismatch`.
    attrs : dict
        Attribute names with their defaults.
    dtype : callable
        ``dtype(arg_dtypes, attrs) -> "float" | "int"`` (default ``"float"``).
    vjp : callable or None
        ``vjp(g, args, out, attrs) -> list``: for each argument, a node (built
        from ordinary ops) holding the gradient contribution, or ``None``.
    differentiable : bool
        ``False`` for ops with no useful derivative (argmax, onehot).
    zero_grad : bool
        The derivative is 0 wherever it is defined (a comparison's mask ``a > b``): no
        gradient flows through the op, and differentiation cuts the paths through it
        (where a ``differentiable=False`` op on a path is an error).
    fans : callable or None
        ``fans(arg_index, arg_shapes, attrs) -> (fan_in, fan_out) or None``: for a
        parameter used as argument ``arg_index``, the number of inputs each output
        sums over and the number of outputs each input feeds, which initialisation
        scales by (matmul: ``h @ W`` with ``W`` of shape ``(K, M)`` gives ``(K, M)``).
        ``None``: the op says nothing about its arguments' fans.
    elementwise : bool
        Applied entry by entry, broadcasting like NumPy; ``expr`` is then its meaning.
    expr : callable or None
        Elementwise ops: ``expr(attrs) -> (symbols, sympy expression)`` in the
        argument symbols ``X[0], X[1], ...`` of :mod:`symbackprop.ops.elementwise`.
    local_grads : callable or None
        Elementwise ops: ``local_grads(attrs) -> list`` of the derivative with respect
        to each argument, SymPy expressions in ``X`` and the output ``Y``.
    grad_declared : bool
        Elementwise ops: ``local_grads`` were declared (relu's ``[y > 0]``), not derived
        by SymPy, so the op is never merged with its neighbours before differentiation
        (:mod:`symbackprop.optimize.fuse`).
    code : callable or None
        Elementwise ops: like ``expr``, an equal expression that is safer to compute and
        is the one code generation prints (:meth:`code_expr`).
    opaque : bool
        Elementwise ops: the code is not printed from ``expr`` but given for each
        backend in the lowering table (``sb.elementwise(..., numpy=...)``); passes
        neither fuse nor fold such an op.
    commutative : bool
        ``True`` when the arguments can be swapped (``add``, ``mul``); diagrams
        label the argument positions of the other ops with more than one argument.
    flops : callable or None
        ``flops(arg_shapes, out_shape, attrs) -> int``: the floating-point operations of
        one application, for shapes whose sizes are numbers (``sb.cost`` adds them up;
        the convention is docs/performance.md's "Counting FLOPs": a multiply-add is 2,
        an op that only moves or views data is 0, :func:`moves_data`). ``None`` for an
        elementwise op: one per output entry for each operation of its code expression
        (:meth:`flop_count`); every other op declares it.
    mixed_float32 : bool
        Mixed precision computes the op, and the statements of its VJP, in float32 from
        the half-precision values, the results rounded back (as ``torch.autocast`` runs
        normalizations in float32): statistics that float16 would lose (batch norm's
        and layer norm's mean and variance, the sums of their backward).
        :mod:`symbackprop.codegen.mixed`.
    batch_statistics : bool
        The op takes statistics over the batch's rows (batch norm): data parallel (MPI),
        each rank holds some of the rows, and the op's code and its VJP's reductions over
        the rows are taken over every rank's rows (synchronised, as
        ``torch.nn.SyncBatchNorm``). :mod:`symbackprop.codegen.sync`.
    over_shards : str or None
        How a reduction's value over a batch's rows comes from its values over shards of
        the rows (data parallel): ``"sum"`` adds them, ``"mean"`` adds them weighted by
        each shard's share of the rows; ``None``: it cannot (a synchronised VJP refuses it).

    The display:

    notation : str or callable or None
        How diagrams write a non-elementwise op: a format string over the
        argument texts ``{0}, {1}, ...`` (``"{0} @ {1}"``) or
        ``notation(arg_texts, attrs) -> str or None``; ``None`` gives ``name(args, attr=...)``.
    display : callable or None
        ``display(arg_exprs, attrs) -> sympy expression``: the node in formulas, from the
        SymPy (matrix) expressions of its arguments; ``None``: ``name(args)``.
    doc : str
        One line shown in listings and error messages.
    internal : bool
        ``True`` for ops that gradients and passes build but users do not write
        (``ew``, ``identity``): error messages neither suggest nor list them.
    """

    # the mathematics
    name: str
    arity: int | None
    shape: Callable
    attrs: dict = field(default_factory=dict)
    dtype: Callable = lambda dtypes, attrs: "float"
    vjp: Callable | None = None
    differentiable: bool = True
    zero_grad: bool = False
    fans: Callable | None = None
    elementwise: bool = False
    expr: Callable | None = None
    local_grads: Callable | None = None
    grad_declared: bool = False
    code: Callable | None = None
    opaque: bool = False
    commutative: bool = False
    flops: Callable | None = None
    mixed_float32: bool = False
    batch_statistics: bool = False
    over_shards: str | None = None
    # the display
    notation: str | Callable | None = None
    display: Callable | None = None
    doc: str = ""
    internal: bool = False

    def code_expr(self, attrs: dict):
        """Elementwise ops: ``(symbols, expression)`` to compute: the op's ``code`` form if
        it has one, else its expression, rewritten by the stability rules of
        :mod:`symbackprop.ops.stable` (``log(1 + exp(x))`` as ``softplus(x)``)."""
        syms, e = (self.code or self.expr)(attrs)
        return syms, stabilize(e)


    def flop_count(self, arg_shapes, out_shape, attrs: dict) -> int | None:
        """The op's FLOPs for numeric shapes (see ``flops``); ``None`` where it declares none.

        Examples
        --------
        >>> get("matmul").flop_count([(64, 784), (784, 256)], (64, 256), {})  # 2 m k n
        25690112
        >>> get("relu").flop_count([(64, 256)], (64, 256), {})  # one per entry
        16384
        """
        if self.flops is not None:
            return int(self.flops(arg_shapes, out_shape, attrs))
        if self.elementwise:
            return entries(out_shape) * _expression_ops(self, attrs)
        return None


def entries(shape) -> int:
    """The number of entries of an array of ``shape`` (sizes as numbers)."""
    return math.prod(int(d) for d in shape)


def moves_data(arg_shapes, out_shape, attrs) -> int:
    """``flops`` of an op that copies, views or selects entries and computes none: 0."""
    return 0


def per_entry(k: int, of: int | None = None) -> Callable:
    """``flops`` of ``k`` operations per entry of the output (``of=None``) or of argument
    ``of`` (a reduction reads every entry of its argument once)."""
    def flops(arg_shapes, out_shape, attrs):
        return k * entries(out_shape if of is None else arg_shapes[of])
    return flops


_EXPR_OPS: dict = {}


def _expression_ops(op: OpDef, attrs: dict) -> int:
    """The operations in an elementwise op's code expression (tanh: 1, x*y + z: 2; at
    least 1), counted once per op and attributes."""
    try:
        key = (op.name, tuple(sorted(attrs.items())))
        hash(key)
    except TypeError:  # an attribute that is no dict key: count every time
        key = None
    if key is None or key not in _EXPR_OPS:
        n = max(1, int(sp.count_ops(op.code_expr(attrs)[1])))
        if key is None:
            return n
        _EXPR_OPS[key] = n
    return _EXPR_OPS[key]


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
    """The user-facing function ``sb.<name>`` for a registered op. Values after the op's
    arguments are its attributes by position, in the order ``OpDef.attrs`` declares them
    (``sb.max_pool2d(h, 2)`` is ``k=2``, ``sb.conv2d(x, w, 2, 1)`` is ``stride=2, padding=1``)."""
    op = get(name)

    def fn(*args, **attrs):
        extra = args[op.arity:] if op.arity is not None else ()
        if extra and len(extra) <= len(op.attrs) \
                and not any(hasattr(a, "graph") for a in extra):
            named = dict(zip(op.attrs, extra))
            twice = sorted(set(named) & set(attrs))
            if twice:
                raise TypeError(f"sb.{name}() got {twice[0]!r} by position and by name.")
            args, attrs = args[:op.arity], {**named, **attrs}
        return apply(name, *args, **attrs)

    fn.__name__ = name
    fn.__qualname__ = name
    fn.__doc__ = f"Apply op ``{name}``: {op.doc}" if op.doc else f"Apply op ``{name}``."
    return fn
