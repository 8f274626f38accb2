"""Memory-layout heuristics of the planned NumPy code (they belong to code generation,
not to the ops: they are facts about OpenBLAS, not about the mathematics)."""

from __future__ import annotations

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
