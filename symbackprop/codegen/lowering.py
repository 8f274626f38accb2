"""How each op is written for an array library: a table keyed by op and backend.

Code generation asks :func:`lowering` for an op's :class:`Lowering` and never reads
array-library code off the op itself. (Interface first: the NumPy table is still read
off the OpDef fields until it moves here.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..ops import registry


@dataclass(frozen=True)
class Lowering:
    """One op written for one array library.

    Attributes
    ----------
    expr : callable or None
        ``expr(codes, attrs) -> str``: the expression computing the op from the code of
        its arguments; ``None`` for an elementwise op, which the printer writes from its
        SymPy expression.
    out : callable or None
        ``out(codes, attrs, out, arg_shapes) -> str``: one call writing the result into
        the array ``out`` (the memory-planned code).
    with_grad : callable or None
        ``with_grad(codes, attrs, g, out) -> str``: one call returning the value and
        writing the gradient for the incoming adjoint ``g`` into ``out``.
    helpers : dict
        Name -> source of the module-level helper functions the code calls.
    inline : bool
        A cheap view (``W.T``), written inside its single consumer.
    bias_fold : bool
        A product ``a @ B`` whose VJP for ``B`` is ``a.T @ g``: the planner may compute
        ``a @ B + b`` as ``[a, 1] @ [B; b]``.
    any_layout : bool
        ``out`` writes correctly into an array of any memory layout (a transposed view).
    """

    expr: Callable | None = None
    out: Callable | None = None
    with_grad: Callable | None = None
    helpers: dict = field(default_factory=dict)
    inline: bool = False
    bias_fold: bool = False
    any_layout: bool = False


BACKENDS = ("numpy",)


def lowering(op: registry.OpDef | str, backend: str = "numpy") -> Lowering:
    """The :class:`Lowering` of ``op`` (an OpDef or an op name) for ``backend``.

    Examples
    --------
    >>> lowering("matmul").bias_fold, lowering("transpose").inline
    (True, True)
    """
    op = registry.get(op) if isinstance(op, str) else op
    return Lowering(op.numpy, op.numpy_out, op.numpy_with_grad, op.helpers, op.inline,
                    op.bias_fold, op.out_any_layout)
