"""What a training step costs: parameters, FLOPs of the forward and the backward pass,
the memory the backward keeps from the forward, and numerical differentiation's price.

``sb.cost(g, batch=N)`` counts on the joint graph that code generation compiles
(differentiated, then optimized), so the backward's FLOPs are those of the backward
nodes the generated code computes: the lessons' "backward ≈ 2× forward" comes out of
the count, not out of an assumption. Each op declares its own count (``OpDef.flops``;
elementwise ops: one per output entry per operation of their expression), and the
convention is docs/performance.md's "Counting FLOPs".

Rows are the model's blocks (``models.block``: ``layer1``, ``layer2``, ...); a graph
built by hand, without blocks, gets one row per op that takes a parameter. Nodes in no
row (the loss) form the row ``other``.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field

from .codegen.checkpoint import apply_checkpoint
from .codegen.compiled import compile_graph
from .codegen.emit import prepare
from .errors import GraphError
from .graph import Graph
from .optimize import optimize as run_passes
from .sizes import names as size_names
from .sizes import value as size_value
from .testing import random_inputs

OTHER = "other"
ITEMSIZE = {"float64": 8, "float32": 4, "int": 8}


@dataclass
class Row:
    """One layer: its parameters, FLOPs and the bytes of its forward values the backward
    reads."""

    name: str
    params: int = 0
    forward: int = 0
    backward: int = 0
    kept: int = 0
    recompute: int = 0  # forward FLOPs done again in the backward (checkpointing)

    @property
    def ratio(self) -> float | None:
        return self.backward / self.forward if self.forward else None


@dataclass
class Cost:
    """The cost of one training step of a network (made by :func:`cost`).

    Attributes
    ----------
    name : str
        The network's name.
    sizes : dict
        The sizes the counts are for (``{"N": 64}``).
    dtype : str
        The floating dtype of the arrays.
    rows : list of Row
        Per layer: ``name``, ``params``, ``forward`` and ``backward`` FLOPs, ``kept``
        bytes (forward values the backward reads), ``recompute`` FLOPs (checkpointing).
    weights, biases : int
        Parameters with two or more axes, and the others (vectors and scalars).
    kept_by_dtype : dict
        Bytes kept from the forward pass for the backward, by dtype.
    uncounted : list of str
        Ops that declare no FLOP count (counted as 0).
    checkpoint : str
        The checkpointing policy counted (``"none"``, ``"sqrt"`` or node names).
    unchecked : dict or None
        With checkpointing: the kept bytes and backward FLOPs without it.
    measured : dict or None
        With ``measure=True``: median seconds of ``forward`` and of ``forward_backward``
        (``value_and_grad``), and ``repeats``.
    """

    name: str
    sizes: dict
    dtype: str
    rows: list
    weights: int
    biases: int
    kept_by_dtype: dict
    uncounted: list = field(default_factory=list)
    checkpoint: str = "none"
    unchecked: dict | None = None
    measured: dict | None = None

    # -- totals -------------------------------------------------------------------------
    @property
    def params(self) -> int:
        return self.weights + self.biases

    @property
    def forward(self) -> int:
        return sum(r.forward for r in self.rows)

    @property
    def backward(self) -> int:
        """The backward pass's FLOPs, recomputation (checkpointing) included."""
        return sum(r.backward + r.recompute for r in self.rows)

    @property
    def recompute(self) -> int:
        return sum(r.recompute for r in self.rows)

    @property
    def kept(self) -> int:
        return sum(self.kept_by_dtype.values())

    @property
    def ratio(self) -> float:
        return self.backward / self.forward if self.forward else float("nan")

    def numerical(self) -> dict:
        """Forward passes and FLOPs of numerical differentiation (one-sided: P + 1
        passes; central: 2P) against backprop's one forward and one backward."""
        p, f = self.params, self.forward
        return {"one_sided_passes": p + 1, "central_passes": 2 * p,
                "one_sided_flops": (p + 1) * f, "central_flops": 2 * p * f,
                "backprop_flops": f + self.backward}

    def to_dict(self) -> dict:
        """Everything as plain numbers and strings, for programs (``--format json``)."""
        d = {"name": self.name, "sizes": dict(self.sizes), "dtype": self.dtype,
             "rows": [{**asdict(r), "ratio": r.ratio} for r in self.rows],
             "params": self.params, "weights": self.weights, "biases": self.biases,
             "forward_flops": self.forward, "backward_flops": self.backward,
             "ratio": self.ratio, "kept_bytes": self.kept,
             "kept_by_dtype": dict(self.kept_by_dtype), "numerical": self.numerical(),
             "uncounted": list(self.uncounted), "checkpoint": self.checkpoint,
             "recompute_flops": self.recompute, "unchecked": self.unchecked,
             "measured": self.measured}
        return d

    # -- text -----------------------------------------------------------------------------
    def _table(self) -> tuple[list[str], list[list[str]]]:
        head = ["layer", "parameters", "forward FLOPs", "backward FLOPs", "bwd/fwd",
                "kept for backward"]
        recompute = self.recompute > 0
        if recompute:
            head.insert(4, "recomputed FLOPs")
        body = []
        for r in [*self.rows, Row("total", self.params, self.forward,
                                  self.backward - self.recompute, self.kept, self.recompute)]:
            ratio = (r.backward + r.recompute) / r.forward if r.forward else None
            cells = [r.name, f"{r.params:,}", f"{r.forward:,}", f"{r.backward:,}",
                     "–" if ratio is None else f"{ratio:.2f}", _bytes(r.kept)]
            if recompute:
                cells.insert(4, f"{r.recompute:,}")
            body.append(cells)
        return head, body

    def _lines(self) -> list[str]:
        sizes = ", ".join(f"{k}={v}" for k, v in self.sizes.items())
        out = [(f"parameters: {self.params:,} = {self.weights:,} weights + {self.biases:,} "
                "biases (vectors and scalars)"),
               (f"FLOPs of one step at {sizes}: forward {self.forward:,}, backward "
                f"{self.backward:,} ({self.ratio:.2f}× the forward"
                + (", recomputation included" if self.recompute else "") + ")")]
        if self.recompute:
            out.append(f"checkpointing ({self.checkpoint}) recomputes {self.recompute:,} "
                       f"forward FLOPs ({self.recompute / self.forward:.2f}× the forward) "
                       f"to keep {_bytes(self.kept)} instead of "
                       f"{_bytes(self.unchecked['kept_bytes'])}")
        kept = ", ".join(f"{_bytes(b)} {k}" for k, b in self.kept_by_dtype.items()) or "nothing"
        out.append(f"kept from the forward pass for the backward: {_bytes(self.kept)} ({kept})")
        n = self.numerical()
        back = n["backprop_flops"]
        out.append(f"numerical differentiation: {n['one_sided_passes']:,} forward passes "
                   f"one-sided ({n['one_sided_flops'] / back:,.0f}× backprop's FLOPs), "
                   f"{n['central_passes']:,} central ({n['central_flops'] / back:,.0f}×); "
                   f"backprop: 1 forward + 1 backward ({back:,} FLOPs)")
        m = self.measured
        if m:
            fwd, both = m["forward"], m["forward_backward"]
            out.append(f"measured (median of {m['repeats']}): forward {_seconds(fwd)}, "
                       f"forward + backward {_seconds(both)}")
            out.append(f"numerical: {n['one_sided_passes']:,} forward passes ≈ "
                       f"{_seconds(n['one_sided_passes'] * fwd)} per update; backprop: "
                       f"1 forward + 1 backward ≈ {_seconds(both)}")
        if self.uncounted:
            out.append(f"not counted (no FLOP count declared): {', '.join(self.uncounted)}")
        return out

    def table(self) -> tuple[list[str], list[list[str]]]:
        """The table of :meth:`text` as a header and rows of cells, for other formats
        (the report page)."""
        return self._table()

    def summary(self) -> list[str]:
        """The lines under the table of :meth:`text` (totals, memory, numerical
        differentiation's price)."""
        return self._lines()

    def text(self) -> str:
        """A plain-text table and the totals.

        Examples
        --------
        >>> print(sb.cost(sb.models.mlp([784, 256, 256, 256, 10]), batch=1).text())
        ... # doctest: +ELLIPSIS
        cost of mlp_784_256_256_256_10, N=1, float64 (FLOPs: docs/performance.md)
        <BLANKLINE>
        layer   parameters  forward FLOPs  backward FLOPs  bwd/fwd  kept for backward
        layer1     200,960        401,920         402,176     1.00             2.0 KB
        layer2      65,792        131,584         262,912     2.00             2.0 KB
        layer3      65,792        131,584         262,912     2.00             2.0 KB
        layer4       2,570          5,130          10,250     2.00               80 B
        other            0             50              70     1.40                0 B
        total      335,114        670,268         938,320     1.40             6.1 KB
        <BLANKLINE>
        parameters: 335,114 = 334,336 weights + 778 biases (vectors and scalars)
        ...
        """
        head, body = self._table()
        widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]

        def line(cells):
            return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
        sizes = ", ".join(f"{k}={v}" for k, v in self.sizes.items())
        out = [f"cost of {self.name}, {sizes}, {self.dtype} (FLOPs: docs/performance.md)", "",
               line(head), *map(line, body), "", *self._lines()]
        return "\n".join(out) + "\n"

    def markdown(self) -> str:
        """The same as a Markdown table and a list."""
        head, body = self._table()
        sizes = ", ".join(f"{k}={v}" for k, v in self.sizes.items())
        out = [f"**cost of {self.name}**, {sizes}, {self.dtype}", "",
               "| " + " | ".join(head) + " |",
               "|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|"]
        out += ["| " + " | ".join(cells) + " |" for cells in body]
        out += [""] + [f"- {ln}" for ln in self._lines()]
        return "\n".join(out) + "\n"

    def __str__(self) -> str:
        return self.text()

    def _repr_markdown_(self) -> str:
        return self.markdown()


def _bytes(n: int) -> str:
    for unit, k in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n >= k:
            return f"{n / k:.1f} {unit}"
    return f"{n} B"


def _seconds(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    if s >= 60:
        return f"{s / 60:.1f} min"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.1f} ms"
    return f"{s * 1e6:.0f} µs"


def _shape(j: Graph, n: str, sizes: dict) -> tuple:
    out = []
    for d in j.nx.nodes[n]["shape"]:
        if isinstance(d, str):
            missing = [k for k in size_names(d) if k not in sizes]
            if missing:
                raise GraphError(f"node {n!r} has the size {d!r}, which has no value. Pass "
                                 f"sizes={{{missing[0]!r}: ...}} to sb.cost (batch= sets N).")
            d = size_value(d, sizes)
        out.append(int(d))
    return tuple(out)


def flops_of(j: Graph, n: str, sizes: dict) -> int | None:
    """Node ``n``'s FLOPs for ``sizes`` (0 for a leaf; ``None`` where its op declares
    none), from its op's declaration (:meth:`~symbackprop.ops.registry.OpDef.flop_count`)."""
    op = j.opdef(n)
    if op is None:
        return 0
    return op.flop_count([_shape(j, a, sizes) for a in j.args(n)], _shape(j, n, sizes),
                         j.nx.nodes[n]["attrs"])


def _rows(g: Graph, j: Graph) -> tuple[dict, dict]:
    """Each forward node of ``j`` -> its row, and each parameter -> its row."""
    blocks = {n: d.get("block") for n, d in g.nx.nodes(data=True)}
    blocks.update({n: d["block"] for n, d in j.nx.nodes(data=True) if d.get("block")})
    forward = [n for n in j.nx if not j.is_backward(n)]
    if any(blocks.get(n) for n in forward if not j.is_leaf(n)):
        row = {n: blocks.get(n) or OTHER for n in forward}
        return row, {p: row[p] for p in j.nodes("param")}
    # by hand: one row per op that takes a parameter, named after the op's node
    row = {n: n if any(j.role(a) == "param" for a in j.args(n)) else OTHER
           for n in forward if not j.is_leaf(n)}
    params = {}
    for p in j.nodes("param"):
        users = [c for c, _ in j.consumers(p) if c in row and row[c] != OTHER]
        params[p] = users[0] if users else OTHER
        row[p] = params[p]
    return row, params


def origin(j: Graph, n: str, absorbed: dict) -> str | None:
    """The forward node whose backward a backward node belongs to: the node whose VJP
    built it, the consumer its contribution flows through, or the node it is the
    gradient of (a node fused away: the one that absorbed it)."""
    for f in (j.vjp_of(n), j.via(n), j.adjoint_of(n), j.grad_of(n)):
        if f is not None:
            return absorbed.get(f, f)
    return None


def cost(g: Graph, batch: int = 64, of: str | None = None, wrt=None, dtype: str = "float64",
         optimize=True, sizes: dict | None = None, checkpoint="none", measure: bool = False,
         seed: int = 0) -> Cost:
    """Count what one training step of ``g`` costs (see :class:`Cost`).

    Parameters
    ----------
    g : Graph
        The network.
    batch : int
        The batch size ``N``.
    of, wrt
        The loss and the nodes differentiated with respect to (default: the last scalar
        output and the parameters), as for ``sb.compile``.
    dtype : {"float64", "float32"}
        The size of a float entry in the kept memory (int arrays: 8 bytes).
    optimize : bool or list of str
        The optimization passes, as for ``sb.compile``: the counts are of the code it runs.
    sizes : dict, optional
        Values of size names other than ``N``.
    checkpoint : "none", "sqrt" or list of str
        Count with gradient checkpointing (see :func:`symbackprop.compile`): the memory
        kept and the forward FLOPs recomputed in the backward, against the unchecked step.
    measure : bool
        Also time the generated ``forward`` and ``value_and_grad`` (``sb.compile``, random
        data from :func:`symbackprop.testing.random_inputs`, the median of repeats).
    seed : int
        Seed of the random data for ``measure``.

    Returns
    -------
    Cost
        With ``text()``, ``markdown()`` and ``to_dict()``.

    Examples
    --------
    >>> c = sb.cost(sb.models.mlp([784, 256, 256, 256, 10]), batch=64)
    >>> c.params, c.weights, c.biases
    (335114, 334336, 778)
    >>> round(c.ratio, 2)  # no gradient for the input X: less than 2
    1.4
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise GraphError(f"batch={batch!r}: expected a positive int.")
    sizes = {"N": batch, **(sizes or {})}
    adj = prepare(g, of, wrt, optimize)
    j0 = run_passes(adj.graph, optimize)
    j, recomputed = apply_checkpoint(j0, checkpoint)
    c = _count(g, j, recomputed, sizes, dtype)
    c.checkpoint = checkpoint if isinstance(checkpoint, str) else ",".join(checkpoint)
    if recomputed:
        plain = _count(g, j0, {}, sizes, dtype)
        c.unchecked = {"kept_bytes": plain.kept, "backward_flops": plain.backward}
    if measure:
        c.measured = _measure(g, of, wrt, dtype, optimize, sizes, seed, checkpoint)
    return c


def compiled_graph(g: Graph, of: str | None = None, wrt=None, optimize=True,
                   checkpoint="none") -> Graph:
    """The joint graph that code generation compiles: differentiated, optimized and, with
    ``checkpoint``, with the recomputed copies (drawn dashed by ``sb.render``).

    Examples
    --------
    >>> j = compiled_graph(sb.models.mlp([4, 3, 3, 3, 2]), checkpoint="sqrt")
    >>> sorted(n for n in j.nx if j.recompute_of(n))
    ['h1_r', 'h3_r', 'matmul_1_r', 'matmul_3_r']
    >>> "dashed" in sb.render(j, "joint").source
    True
    """
    j = run_passes(prepare(g, of, wrt, optimize).graph, optimize)
    return apply_checkpoint(j, checkpoint)[0]


def _count(g: Graph, j: Graph, recomputed: dict, sizes: dict, dtype: str) -> Cost:
    absorbed = {a: n for n in j.nx for a in j.fused(n)}
    row_of, param_row = _rows(g, j)
    rows: dict[str, Row] = {}

    def row(name) -> Row:
        return rows.setdefault(name, Row(name))

    for n in sorted(set(row_of.values()) - {OTHER}, key=list(row_of.values()).index):
        row(n)
    weights = biases = 0
    for p in j.nodes("param"):
        k = 1
        for d in _shape(j, p, sizes):
            k *= d
        row(param_row[p]).params += k
        if len(j.nx.nodes[p]["shape"]) >= 2:
            weights += k
        else:
            biases += k
    kept: dict[str, int] = {}
    uncounted = set()
    for n in j.topo_order():
        f = flops_of(j, n, sizes)
        if f is None:
            uncounted.add(j.nx.nodes[n]["op"])
            f = 0
        if n in recomputed:  # a forward node computed again in the backward
            row(row_of.get(recomputed[n], OTHER)).recompute += f
        elif j.is_backward(n):
            o = origin(j, n, absorbed)
            row(row_of.get(o, OTHER) if o is not None else OTHER).backward += f
        else:
            row(row_of.get(n, OTHER)).forward += f
            if not j.is_leaf(n) and any(j.is_backward(c) for c, _ in j.consumers(n)):
                dt = j.nx.nodes[n]["dtype"]
                key = dtype if dt == "float" else "int64"
                size = ITEMSIZE[dtype if dt == "float" else "int"]
                for d in _shape(j, n, sizes):
                    size *= d
                kept[key] = kept.get(key, 0) + size
                row(row_of.get(n, OTHER)).kept += size
    if OTHER in rows:  # last
        rows[OTHER] = rows.pop(OTHER)
    return Cost(g.nx.graph.get("name", "network"), sizes, dtype, list(rows.values()),
                weights, biases, kept, sorted(uncounted))


def _measure(g, of, wrt, dtype, optimize, sizes, seed, checkpoint) -> dict:
    fn = compile_graph(g, of, wrt, dtype=dtype, optimize=optimize, checkpoint=checkpoint)
    arrays = random_inputs(g, sizes, seed)

    def median(f, kw) -> tuple[float, int]:
        f(**kw)  # warm up (the workspace is made on the first call)
        times, start = [], time.perf_counter()
        while len(times) < 5 or (time.perf_counter() - start < 0.3 and len(times) < 200):
            t = time.perf_counter()
            f(**kw)
            times.append(time.perf_counter() - t)
        return statistics.median(times), len(times)

    fwd, k1 = median(fn.forward, arrays)
    both, k2 = median(fn.value_and_grad, arrays)
    return {"forward": fwd, "forward_backward": both, "repeats": min(k1, k2)}


__all__ = ["Cost", "Row", "compiled_graph", "cost", "flops_of"]
