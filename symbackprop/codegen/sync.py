"""Synchronised batch statistics in the data-parallel (MPI) training step (issue 15).

Under ``distributed="mpi"`` each rank holds some rows of every global batch. An op that
takes statistics over the batch's rows
(:attr:`~symbackprop.ops.registry.OpDef.batch_statistics`: batch norm) must take them
over every rank's rows, as ``torch.nn.SyncBatchNorm`` does, or each rank would normalize
by its own rows' mean and variance. :func:`sync_statements` rewrites the planned step's
statements (made plain statements, one per node, by :func:`synced_nodes` through
``Emitter.unplanned``, as mixed precision's float32 ones):

* the op itself: its lowering's ``synced`` code (NumPy: ``_sync_batch_norm``, the mean,
  then the variance of the centred values, each from sums over the ranks);
* each reduction over the rows among the statements of its VJP (the statistics
  recomputed for the backward, the sums of the incoming gradient): its value over this
  rank's rows, combined over the ranks as its op declares
  (:attr:`~symbackprop.ops.registry.OpDef.over_shards`: ``sync.sum`` of sums,
  ``sync.mean`` of means weighted by the rank's share of the rows; ``sync.grad_sum`` of
  sums of gradients, where a rank's are those of its own rows' mean loss: each weighted by
  the rank's share, as the gradients are after the step, so that a last batch split
  unevenly adds them in one unit);
* the count of values per feature in the VJP's constants: the global batch's rows
  (``sync.rows``) for the batch's size;
* the same in a statement outside the VJP that reads its statistics
  (:func:`synced_readers`): where the gradient the op passes on is fused into the gradient
  of the op before it (``batch_norm(relu(...))``: ``dz1 = (mean_2 + 1e-05)**(-0.5) *
  (sync.rows * dbn1 - sum_2 - bn1 * sum_3) * (a1 > 0) / sync.rows``), a plain statement
  too. The forward needs no such rewrite: the op is one call, whose output holds no count.

``sync`` is an argument of the step that the MPI script passes (``RowSums``, in
:mod:`~symbackprop.codegen.runtime.script`); called without it (rank 0's underflow counts
in mixed precision, a direct call) the step takes its own rows as the batch
(``_OneProcess``). Nothing is rewritten without such an op, and no other generated
function changes: the one-process script is untouched.
"""

from __future__ import annotations

import re

import networkx as nx

from ..errors import CodegenError
from . import runtime
from .emit import flagged_nodes, safe_text, statistic_readers, with_note
from .runtime import numpy_ops


def synced_nodes(j) -> tuple[set, set]:
    """``(ops, vjp)``: the nodes of the joint graph ``j`` whose op takes batch statistics
    (:attr:`~symbackprop.ops.registry.OpDef.batch_statistics`) and the backward nodes of
    their VJPs, found as :func:`~symbackprop.codegen.mixed.float32_nodes` finds them.

    Examples
    --------
    >>> from symbackprop.codegen.module import build_model
    >>> g = sb.models.cnn((1, 6, 6), channels=(2,), hidden=(4,), classes=3, batch_norm=True)
    >>> m = build_model(g, optimizer="sgd")
    >>> ops, vjp = synced_nodes(m.em.j)
    >>> sorted(ops), sorted(m.em.namer(n) for n in vjp)
    (['bn1'], ['dconv2d_1', 'mean_1', 'mean_2', 'mul_2', 'mul_5', 'sum_6', 'sum_7'])
    """
    return flagged_nodes(j, "batch_statistics")


def synced_readers(em, ops: set, vjp: set) -> set:
    """The nodes outside ``ops | vjp`` (:func:`synced_nodes`) whose statements read the
    VJP's statistics (:func:`~symbackprop.codegen.emit.statistic_readers`: the gradient
    the op passes on, fused into the op's before it) and the batch's size (the count of
    the fused VJP), which :func:`sync_statements` rewrites: plain statements
    (``Emitter.unplanned``), as the planned ``out=`` calls are not rewritten.

    Examples
    --------
    >>> g = sb.Graph("bn_after_relu"); X = g.input("X", shape=("N", 4))
    >>> h = g.name(sb.batch_norm(sb.relu(sb.models.dense(g, X, 4, 8, 1)), axis=1), "bn1")
    >>> _ = g.output("L", sb.sum(h * g.param("w", shape=(8,))))
    >>> from symbackprop.codegen.module import build_model
    >>> m = build_model(g, optimizer="sgd", sync_batch_norm=True)
    >>> [m.em.namer(n) for n in synced_readers(m.em, *synced_nodes(m.em.j))]
    ['dadd_1']
    >>> print(next(s for s in m.fast.body if s.startswith("dadd_1 = ")).split(" * (r")[0])
    dadd_1 = (mean_2 + 1e-05)**(-0.5) * (sync.rows * dbn1 - sum_3 - bn1 * sum_4)
    """
    if not ops:
        return set()
    size = _size_pattern(batch_size_of(em.j, ops))
    return {n for n in statistic_readers(em, ops, vjp) if size.search(em.rhs(n))}


def batch_size_of(j, ops: set) -> str:
    """The name of the batch's size: the first axis of the inputs of ``ops`` (the axis
    that the MPI script cuts into ranks' rows). CodegenError when it is a number."""
    sizes = {j.nx.nodes[a]["shape"][0] for n in ops for a in j.args(n)}
    if len(sizes) != 1 or not isinstance(next(iter(sizes)), str):
        raise CodegenError(
            f"distributed='mpi' synchronises the batch statistics of "
            f"{', '.join(sorted(map(safe_text, ops)))} over the ranks' rows, but their "
            f"inputs' first axes are {sorted(map(str, sizes))}, not one named batch size; "
            "declare the inputs with a named batch axis, e.g. shape=('N', 4).")
    return next(iter(sizes))


def sync_statements(m, seeded: bool = False) -> bool:
    """Rewrite the planned step ``m.fast`` so that the ops of :func:`synced_nodes` and
    their VJPs take their statistics over every rank's rows (see the module's
    docstring); add its parameter ``sync=None``. Returns whether there were any.
    ``seeded``: the MPI script seeds the step's backprop with the rank's share of the
    global batch (mixed precision's ``scale * share``), so that every rank's gradients
    are the global batch's; else (float32, float64: times share after the step) each sum
    of gradients over the ranks weights each rank's by its share (``sync.grad_sum``).

    Examples
    --------
    >>> from symbackprop.codegen.module import build_model
    >>> g = sb.models.cnn((1, 6, 6), channels=(2,), hidden=(4,), classes=3, batch_norm=True)
    >>> m = build_model(g, optimizer="sgd", sync_batch_norm=True)  # calls it
    >>> print(next(s for s in m.fast.body if s.startswith("sum_6 = ")))
    sum_6 = sync.grad_sum(dbn1.sum(axis=(0, 2, 3), keepdims=True))  # for the backward of bn1; batch norm's sum over every rank's rows (SyncBatchNorm)
    """
    em, j = m.em, m.em.j
    ops, vjp = synced_nodes(j)
    if not ops:
        return False
    batch = batch_size_of(j, ops)
    size = _size_pattern(batch)
    readers = synced_readers(em, ops, vjp)
    codes = {em.namer(n): n for n in ops | vjp | readers if n in em.namer.names}
    done = set()
    for i, line in enumerate(m.fast.body):
        # a reader may write into a gradient's buffer (dW[...] = rhs)
        found = re.fullmatch(r"(\s*)(\w+)(\[\.\.\.\])? = (.*?)(  # .*)?", line)
        if found is None or found.group(2) not in codes or (
                found.group(3) and codes[found.group(2)] not in readers):
            continue
        pad, code, target, rhs, comment = found.groups()
        target = target or ""
        n = codes[code]
        op = j.opdef(n)
        if n in ops:
            what = op.name.replace("_", " ")
            how = em.backend.lowering(op)
            if how.synced is None:
                raise CodegenError(f"distributed='mpi': {safe_text(n)} ({op.name}) has no code "
                                   "taking its statistics over every rank's rows; train it in "
                                   "one process.")
            # em.use: the helpers the call reaches, those they call in turn included
            rhs = em.use(op, how.synced([em.code(a) for a in j.args(n)],
                                        {**j.nx.nodes[n]["attrs"], "node": n}))
            comment = with_note(comment, f"{what} over every rank's rows (SyncBatchNorm)")
        elif _reduces_rows(j, n, batch):
            what = j.opdef(j.vjp_of(n) or j.via(n)).name.replace("_", " ")
            if op is None or op.over_shards not in ("sum", "mean"):
                raise CodegenError(
                    f"distributed='mpi' sums the batch statistics' reductions over the "
                    f"ranks, but {safe_text(n)} ({getattr(op, 'name', '?')}) reduces the rows "
                    "in a way that shards cannot be combined; train this network in one "
                    "process.")
            how = op.over_shards
            if not seeded and _reads_gradient(j, n):
                # the rank's gradients are of its own rows' mean loss, times share only
                # after the step (allreduce): in other units than another rank's
                if how != "sum":
                    raise CodegenError(
                        f"distributed='mpi' combines {safe_text(n)} ({op.name}), a {how} of "
                        "gradients, over the ranks, which it can only do for sums; train "
                        "this network in one process.")
                how = "grad_sum"
            rhs = f"sync.{how}({rhs})"
            comment = with_note(comment, f"{what}'s {op.over_shards} over every rank's rows "
                                     "(SyncBatchNorm)")
        elif size.search(rhs):  # a VJP's count, or a reader's (the VJP fused into it)
            rhs = size.sub("sync.rows", rhs)
            comment = with_note(comment, f"{batch}: the global batch's rows (SyncBatchNorm)")
        else:
            continue
        m.fast.body[i] = f"{pad}{code}{target} = {rhs}{comment}"
        done.add(n)
    missed = [n for n in ops | vjp | readers if n not in done
              and (n in ops or n in readers or _reduces_rows(j, n, batch))]
    if missed:
        raise CodegenError(f"distributed='mpi' cannot synchronise {safe_text(min(missed))}: "
                           "it has no statement of its own in the planned step; train this "
                           "network in one process.")
    m.fast.params.append("sync=None")
    # called without a data-parallel script's RowSums (underflow counts, a direct call): the
    # batch's own rows are every row
    rows = next(f"{em.namer(x)}.shape[0]" for x in m.inputs
                if tuple(j.nx.nodes[x]["shape"])[:1] == (batch,))
    m.fast.body.insert(0, f"sync = _OneProcess({rows}) if sync is None else sync  # one "
                          "process: its rows are the batch's")
    em.helpers.setdefault("_OneProcess", runtime.source(numpy_ops._OneProcess))
    return True


def _reads_gradient(j, n) -> bool:
    """Whether node ``n`` is computed from a gradient (in the units of the loss whose
    gradient it is), not from forward values alone."""
    return any(j.adjoint_of(a) is not None or j.grad_of(a) is not None
               for a in nx.ancestors(j.nx, n))


def _size_pattern(batch: str):
    """The batch's size ``batch`` as a name in code (not inside a string or a longer
    name)."""
    return re.compile(rf"(?<![\w.'\"]){re.escape(batch)}(?![\w'\"])")


def _reduces_rows(j, n, batch: str) -> bool:
    """Whether node ``n`` reduces over the batch's rows: an argument has them as its first
    axis, ``n`` has not."""
    shape = tuple(j.nx.nodes[n]["shape"])
    return (not j.is_leaf(n) and (not shape or shape[0] != batch)
            and any(tuple(j.nx.nodes[a]["shape"])[:1] == (batch,) for a in j.args(n)))


__all__ = ["batch_size_of", "sync_statements", "synced_nodes", "synced_readers"]
