"""Mixed precision for a generated training step (``precision="mixed"``).

What runs in which dtype (docs/training.md, "Mixed precision"):

* float16 (the module's ``DTYPE``): the forward and backward pass, every intermediate
  array and the gradients, on float16 copies of the parameters cast from the masters
  every step (``_half``). NumPy's products and sums of float16 arrays (``np.dot``,
  ``@``, ``.sum``) accumulate in float32 and round once; the softmax cross-entropy
  shifts by the largest logit before ``exp``.
* float32 (``MASTER``): the master parameters, the optimizer's state and its update,
  applied to the gradients unscaled in float32 (``G / scale``).
* Python floats: the loss scale and the loss returned.

Dynamic loss scaling as ``torch.amp.GradScaler``: the scale starts at 2**16, halves
when the scaled float16 gradients hold inf or nan (the step is then skipped: parameters
and optimizer state stay as they were), and doubles after ``growth_interval`` good steps
in a row. The scaler's state (``scale``, ``good_steps``, ``skipped``) lives in the
optimizer state, so checkpoints keep it.

The loss scale enters as the seed of backprop, which the planned step takes when the
loss computes its own gradient in one call (``softmax_cross_entropy``); other losses are
refused for now. The rest of the module is the float32 step's, with the master-side
functions (flat buffers, initialisation, optimizer) reading ``MASTER`` where the float32
module reads ``DTYPE``. A backend (JAX, PyTorch) reuses the same plan: the
:func:`scaler_settings`, the state keys and the rules of :mod:`.runtime.mixed`.
"""

from __future__ import annotations

import ast
import numbers
import re
import textwrap

from ..errors import CodegenError
from . import backends
from .emit import (
    Function,
    call_lines,
    flagged_nodes,
    render_function,
    statistic_readers,
    statistics_read_outside,
    with_note,
)
from .init import init_source
from .lowering import CONTEXT
from .plan import PACK, flat_gradients, workspace_source
from .runtime import check, flat, source_of
from .runtime import mixed as runtime_mixed

PRECISIONS = ("float64", "float32", "mixed", "bfloat16")
LOSS_SCALE = 2.0**16
GROWTH_FACTOR = 2.0
BACKOFF_FACTOR = 0.5
GROWTH_INTERVAL = 2000
HALF = {"mixed": "float16", "bfloat16": "bfloat16"}  # the dtype each precision computes in


def precision_backends(precision: str) -> tuple[str, ...]:
    """The backends whose training step computes in ``precision`` (``"mixed"`` or
    ``"bfloat16"``), read from their records: those whose ``half_dtypes`` hold its dtype,
    and for ``"mixed"`` the planned ones too (NumPy's mixed step is planned:
    :func:`mixed_blocks`).

    Examples
    --------
    >>> precision_backends("mixed"), precision_backends("bfloat16")
    (('numpy', 'jax', 'torch', 'cupy'), ('jax', 'torch'))
    """
    half = HALF[precision]
    return tuple(n for n in backends.NAMES if half in backends.get(n).half_dtypes
                 or (half == "float16" and backends.get(n).planned))


def _listing(names, last: str = "and") -> str:
    """``a, b and c`` (``last="or"``: ``a, b or c``)."""
    names = list(names)
    return ", ".join(names[:-1]) + (f" {last} " if len(names) > 1 else "") + names[-1]


def check_growth_interval(precision, growth_interval) -> None:
    """``growth_interval`` sets the loss scaler of ``precision="mixed"``: ``ValueError``
    when it is not the default and there is no scaler (another precision, bfloat16's
    included), rather than ignore it.

    Examples
    --------
    >>> check_growth_interval("mixed", 5)
    >>> check_growth_interval(None, 5)
    Traceback (most recent call last):
    ...
    ValueError: growth_interval=5 sets the loss scaler of precision='mixed', and precision=None has none: drop growth_interval or pass precision='mixed'.
    """
    if precision != "mixed" and growth_interval != GROWTH_INTERVAL:
        raise ValueError(f"growth_interval={growth_interval!r} sets the loss scaler of "
                         f"precision='mixed', and precision={precision!r} has none: drop "
                         "growth_interval or pass precision='mixed'.")


def resolve_precision(precision, dtype: str = "float64",
                      library: str = "NumPy") -> tuple[str, str]:
    """``(precision, dtype of the generated step)``: ``None`` keeps ``dtype``;
    ``"float32"``/``"float64"`` are that dtype; ``"mixed"`` computes in float16 for
    float32 masters. Raises ``ValueError`` for an unknown precision and for
    ``"bfloat16"``, which the planned backends' ``library`` (NumPy, CuPy) lacks.

    Examples
    --------
    >>> resolve_precision(None, "float32"), resolve_precision("mixed")
    (('float32', 'float32'), ('mixed', 'float16'))
    """
    if dtype not in ("float64", "float32"):
        extra = "; precision='mixed' computes in float16" if dtype == "float16" else ""
        raise ValueError(f"dtype {dtype!r} is not one of float64, float32{extra}.")
    if precision is None:
        return dtype, dtype
    if precision == "bfloat16":
        raise ValueError(f"precision 'bfloat16' needs a backend that has bfloat16 "
                         f"({', '.join(precision_backends('bfloat16'))}); {library} has none. "
                         f"On {library} use "
                         "precision 'mixed' (float16 with float32 masters).")
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}.")
    return precision, ("float16" if precision == "mixed" else precision)


def plain_dtype(precision, dtype: str, backend: str) -> str:
    """The dtype of a backend's code that has no mixed precision yet (the functional ones):
    ``precision`` may only name ``dtype`` or one of float32/float64.

    Examples
    --------
    >>> plain_dtype("float32", "float64", "jax")
    'float32'
    """
    precision, computed = resolve_precision(precision, dtype)
    if precision == "mixed":
        raise _not_written("mixed", backend)
    return computed


def _not_written(precision: str, backend: str) -> ValueError:
    """Precision ``"mixed"`` refused on ``backend``, naming the backends that have it."""
    have = precision_backends(precision)
    return ValueError(f"precision {precision!r} is written for the {_listing(have)} backends "
                      f"only so far, not {backend}; use one of those backends, or precision "
                      "'float32'.")


def functional_precision(precision, dtype: str, backend) -> tuple[str, str]:
    """``(precision, dtype of the generated step)`` for a functional backend (a
    :class:`~symbackprop.codegen.backends.Backend`): float32/float64 as
    :func:`plain_dtype`; ``"mixed"`` (float16) and ``"bfloat16"`` where the backend
    computes in that dtype (its ``half_dtypes``), else ``ValueError``.

    Examples
    --------
    >>> from symbackprop.codegen import backends
    >>> functional_precision("bfloat16", "float64", backends.get("jax"))
    ('bfloat16', 'bfloat16')
    """
    half = HALF.get(precision)
    if half is None:
        computed = plain_dtype(precision, dtype, backend.name)
        return computed, computed
    if half not in backend.half_dtypes:
        if precision == "bfloat16":
            raise ValueError(f"precision 'bfloat16' needs a backend that has bfloat16 "
                             f"({', '.join(precision_backends('bfloat16'))}); {backend.name} "
                             "has none. Use precision 'float32'.")
        raise _not_written("mixed", backend.name)
    return precision, half


def scaler_settings(growth_interval=GROWTH_INTERVAL) -> dict:
    """The dynamic loss scaler's settings (torch.amp.GradScaler's defaults); raises
    ``ValueError`` for a ``growth_interval`` that is not an int >= 1.

    Examples
    --------
    >>> scaler_settings(100)["growth_interval"]
    100
    """
    if isinstance(growth_interval, bool) or not isinstance(growth_interval, numbers.Integral) \
            or growth_interval < 1:
        raise ValueError(f"growth_interval={growth_interval!r}; expected an int >= 1 (good "
                         "steps in a row before the loss scale doubles).")
    return {"loss_scale": LOSS_SCALE, "growth_factor": GROWTH_FACTOR,
            "backoff_factor": BACKOFF_FACTOR, "growth_interval": int(growth_interval)}


_MIXED_LOCALS = {"half", "scale", "reference", "plain", "scaled", "name", "g"}


def check_mixed(m) -> None:
    """Refuse what the mixed step cannot do yet, naming why and what to do instead."""
    clash = [m.em.namer(n) for n in m.inputs if m.em.namer(n) in _MIXED_LOCALS]
    if clash:
        raise CodegenError(f"input {clash[0]!r} has the name of a variable of the mixed-precision "
                           "step; rename the input (e.g. g.rename).")
    if m.fast is None or not m.pool.scaled:
        why = ("the optimization passes are off" if m.fast is None else
               f"the loss {m.of!r} ({m.g.nx.nodes[m.of].get('op')}) does not compute its "
               "gradient in one call, which takes the loss scale as its seed")
        raise CodegenError(f"precision 'mixed' needs the loss scale as the seed of backprop: "
                           f"{why}. Use softmax_cross_entropy as the loss with the optimization "
                           "passes on, or precision 'float32'.")


def float32_nodes(j) -> tuple[set, set]:
    """``(ops, vjp)``: the nodes of the joint graph ``j`` whose op computes in float32 in
    mixed precision (:attr:`~symbackprop.ops.registry.OpDef.mixed_float32`: batch norm and
    layer norm, their statistics), and the backward nodes of their VJPs (the statistics
    recomputed for the backward, its sums, the gradient they pass on).

    Examples
    --------
    >>> from symbackprop.codegen.module import build_model
    >>> g = sb.models.cnn((1, 6, 6), channels=(2,), hidden=(4,), classes=3, batch_norm=True)
    >>> m = build_model(g, optimizer="sgd", precision="mixed")
    >>> ops, vjp = float32_nodes(m.em.j)
    >>> sorted(ops), sorted(m.em.namer(n) for n in vjp)
    (['bn1'], ['dconv2d_1', 'mean_1', 'mean_2', 'mul_2', 'mul_5', 'sum_6', 'sum_7'])
    """
    return flagged_nodes(j, "mixed_float32")


def float32_statistics(j, ops: set, vjp: set) -> set:
    """The nodes of ``vjp`` (:func:`float32_nodes`) that stay float32 (MASTER) when they
    leave the float32 statements: the statistics of the backward that a statement outside
    them reads (:func:`~symbackprop.codegen.emit.statistics_read_outside`: the gradient
    the op passes on fused into the statement of the op before it). Rounded to the half
    dtype, a variance above 65504 would be inf there. The gradient passed on itself is not
    one: the rest of the step holds it in DTYPE. The statements reading them
    (:func:`~symbackprop.codegen.emit.statistic_readers`) compute in float32.

    Examples
    --------
    >>> from symbackprop.codegen.module import build_model
    >>> m = build_model(sb.models.mlp([6, 8, 3], layer_norm=True), precision="mixed")
    >>> sorted(m.em.namer(n) for n in float32_statistics(m.em.j, *float32_nodes(m.em.j)))
    ['mean_2', 'mean_3', 'mean_4']
    >>> [m.em.namer(n) for n in statistic_readers(m.em, *float32_nodes(m.em.j))]
    ['dz1']
    """
    return statistics_read_outside(j, ops, vjp)


def _rewrite_float32(em, body: list, ops: set, vjp: set, cast: str, helper: tuple) -> None:
    """Rewrite the statements of ``body`` (lines ``code = rhs  # comment``) that compute
    ``ops`` and ``vjp`` (:func:`float32_nodes`) to run in float32, in place: an op's call
    ``f(args)`` becomes ``helper(f, args)`` (``_in_float32``: its half-precision arrays
    cast to MASTER, so batch norm takes its statistics and updates the float32 running
    ones in float32) rounded to DTYPE, or, for a call with keyword arguments, which
    ``helper(f, *args)`` does not pass on (layer norm's ``eps=``), ``f`` of its
    half-precision arrays cast (``_layer_norm(a1.astype(MASTER), eps=1e-05)``), rounded
    to DTYPE; a VJP statement reads the half-precision arrays
    from outside the VJP cast to MASTER (``cast``: ``.astype({})`` or ``.to({})``), so
    its sums and ``n·δ`` stay in float32, and the statement whose value leaves the VJP
    is rounded to DTYPE when it is the gradient passed on; a statistic read outside
    (:func:`float32_statistics`) stays float32, and the statement reading it
    (:func:`statistic_readers`) computes in float32, its half-precision arrays (the op's
    output and the gradient passed on included) cast as a VJP statement's, and rounds
    its result once to DTYPE (written into a buffer,
    ``dW1[...] = rhs``, the assignment rounds), so every array after it keeps DTYPE."""
    j = em.j
    group = ops | vjp
    codes = {em.namer(n): n for n in group if n in em.namer.names}
    stats = {em.namer(n) for n in float32_statistics(j, ops, vjp)}
    readers = {em.namer(n) for n in statistic_readers(em, ops, vjp)}
    outside = {code for n, code in em.namer.names.items()
               if n in j.nx and n not in group and j.nx.nodes[n].get("dtype") == "float"}
    read = re.compile(r"(?<![\w.'\"])(" + "|".join(map(re.escape, sorted(outside, key=len,
                                                                            reverse=True)))
                      + r")(?![\w'\"(]|\s*=[^=])") if outside else None
    # a reader's half-precision arrays: those from outside and the group's own DTYPE
    # results (the op's output, the gradient passed on), every name but the statistics
    halves = outside | {c for c, n in codes.items() if c not in stats and (
        n in ops or j.grad_of(n) is not None)}
    read_half = re.compile(r"(?<![\w.'\"])(" + "|".join(map(re.escape, sorted(
        halves, key=len, reverse=True))) + r")(?![\w'\"(]|\s*=[^=])") if halves else None
    reads_stat = re.compile(r"(?<![\w.'\"])(" + "|".join(map(re.escape, sorted(stats)))
                            + r")(?![\w'\"(]|\s*=[^=])") if stats else None
    to_master, to_half = cast.format("MASTER"), cast.format("DTYPE")
    # a statement writing into a buffer (out=, x[...] =) is not one this rewrites: the
    # planner leaves the group's statements plain (Emitter.unplanned), and this says so
    # rather than leave one in the half dtype
    into = re.compile(r"\bout=(" + "|".join(map(re.escape, codes)) + r")\b|^\s*("
                      + "|".join(map(re.escape, codes)) + r")\[") if codes else None
    for i, line in enumerate(body):
        found = re.fullmatch(r"(\s*)(\w+)(\[\.\.\.\])? = (.*?)(  # .*)?", line)
        if found and found.group(2) in readers and found.group(2) not in codes:
            pad, code, target, rhs, comment = found.groups()
            if read_half is not None:  # as a VJP statement's: n·δ of a scaled δ passes 65504
                rhs = read_half.sub(lambda r: r.group(1) + to_master, rhs)
            if target:  # written into a DTYPE buffer: the assignment rounds
                body[i] = f"{pad}{code}{target} = {rhs}" + with_note(
                    comment, "in float32, rounded to DTYPE")
            else:
                body[i] = f"{pad}{code} = ({rhs}){to_half}" + with_note(
                    comment, "in float32, rounded to DTYPE")
            continue
        if found is None or found.group(3) or found.group(2) not in codes:
            code_part = line.split("  # ")[0]
            written = into.search(code_part) if into is not None else None
            if written:
                n = codes[written.group(1) or written.group(2)]
                raise CodegenError(f"mixed precision computes {n!r} in float32, but its "
                                   f"statement writes into a buffer ({line.strip()}), which "
                                   "is not rewritten; use precision 'float32'.")
            stat = reads_stat.search(code_part) if reads_stat is not None else None
            if stat:
                raise CodegenError(f"mixed precision keeps {stat.group(1)!r} in float32, but "
                                   f"a statement that is not rewritten reads it "
                                   f"({line.strip()}), which could round what it computes "
                                   "to the half dtype; use precision 'float32'.")
            continue
        pad, code, rhs, comment = found.group(1), found.group(2), found.group(4), \
            found.group(5) or ""
        n = codes[code]
        if n in ops:
            call = re.fullmatch(r"(\w+)\((.*)\)", rhs)
            if call is None:
                raise CodegenError(f"mixed precision computes {n!r} in float32, but its "
                                   f"statement is not one call ({rhs}); use precision "
                                   "'float32'.")
            if ast.parse(rhs, mode="eval").body.keywords:
                # helper(f, *args) passes no keyword (layer norm's eps=): the call reads
                # its half-precision arrays cast, as the VJP's statements do
                cast_rhs = read.sub(lambda r: r.group(1) + to_master, rhs) if read else rhs
                if cast_rhs == rhs:
                    raise CodegenError(f"mixed precision computes {n!r} in float32, but its "
                                       f"call reads no half-precision array to cast ({rhs}); "
                                       "use precision 'float32'.")
                body[i] = (f"{pad}{code} = {cast_rhs}{to_half}"
                           f"{with_note(comment, 'in float32, rounded to DTYPE')}")
                continue
            em.helpers.setdefault(helper[0], helper[1])
            body[i] = (f"{pad}{code} = {helper[0]}({call.group(1)}, {call.group(2)})"
                       f"{to_half}{with_note(comment, 'in float32, rounded to DTYPE')}")
            continue
        if read is not None:
            rhs = read.sub(lambda r: r.group(1) + to_master, rhs)
        leaves = code not in stats and (any(c not in group for c, _ in j.consumers(n))
                                        or not j.consumers(n))
        if leaves:
            rhs = f"({rhs}){to_half}"
        body[i] = f"{pad}{code} = {rhs}" + with_note(
            comment, "in float32" + (", rounded to DTYPE" if leaves else ""))


def float32_statements(m, cast: str = ".astype({})", runtime=runtime_mixed) -> None:
    """Batch norm and layer norm in mixed precision, for every function of the model
    ``m``: the statements of :func:`float32_nodes` in float32 (:func:`_rewrite_float32`,
    the helper ``_in_float32`` copied from ``runtime``) and the running statistics of
    ``init_running`` float32 (MASTER), as ``torch.amp`` keeps them. Nothing changes for a
    network without such an op. :func:`~symbackprop.codegen.module.build_model` calls it
    for NumPy, :func:`~symbackprop.codegen.jax_mixed.make_mixed` for JAX and torch.

    Examples
    --------
    >>> from symbackprop.codegen.module import build_model
    >>> g = sb.models.cnn((1, 6, 6), channels=(2,), hidden=(4,), classes=3, batch_norm=True)
    >>> m = build_model(g, optimizer="sgd", precision="mixed")  # calls it
    >>> print(next(s for s in m.functions[1].body if s.startswith("bn1 = ")))
    bn1 = _in_float32(_batch_norm, conv2d_1, 1, 1e-05, 0.1, training, running, 'bn1').astype(DTYPE)  # in float32, rounded to DTYPE
    >>> m.functions[2].ret
    "{'bn1.mean': np.zeros(2, MASTER), 'bn1.var': np.ones(2, MASTER)}"
    """
    ops, vjp = float32_nodes(m.em.j)
    if not ops:
        return
    helper = ("_in_float32", source_of(runtime, "_in_float32"))
    for fn in m.functions:
        if fn.name == "init_running":
            fn.ret = _master(fn.ret)
        else:
            _rewrite_float32(m.em, fn.body, ops, vjp, cast, helper)


def loss_in_float32(m) -> None:
    """The planned step's loss statement, ``L = f(logits, y, scale, dlogits)``, rewritten
    to run ``f`` in float32 (``_loss_in_float32``): the loss is where float16's range
    fails first."""
    code = m.em.code(m.of)
    pattern = re.compile(rf"^{re.escape(code)} = (\w+)\((.*)\)(  # .*)?$")
    for i, line in enumerate(m.fast.body):
        found = pattern.match(line)
        if found and "scale" in found.group(2):
            m.fast.body[i] = (f"{code} = _loss_in_float32({found.group(1)}, {found.group(2)})"
                              f"  # in float32; and its gradient, float16")
            m.em.helpers["_loss_in_float32"] = source_of(runtime_mixed, "_loss_in_float32")
            return
    raise CodegenError(f"precision 'mixed' computes the loss {m.of!r} in float32, but its "
                       "statement in the planned step is not one call; use "
                       "softmax_cross_entropy as the loss, or precision 'float32'.")


def precision_text(m) -> str:
    """The module docstring's words on precision."""
    s = m.scaler
    if m.precision == "bfloat16":  # a backend's that has it (codegen/jax_mixed.py)
        return ("precision bfloat16: forward and backward in bfloat16, float32 master "
                "parameters and optimizer state; no loss scaling (bfloat16 has float32's "
                "exponent range).")
    text = (f"precision mixed: forward and backward in float16, float32 master parameters "
            f"and optimizer state; dynamic loss scaling from {s['loss_scale']:g}, times "
            f"{s['growth_factor']:g} after {s['growth_interval']} good steps, times "
            f"{s['backoff_factor']:g} (step skipped) on overflow.")
    b = m.em.backend
    if b.planned and not b.on_device:  # NumPy's arrays, on the CPU
        # (no list of the GPU backends: reading their records imports JAX and PyTorch)
        text += (f" {b.title}'s float16 is emulated on CPUs and slower than float32: this "
                 "step is for correctness and the lesson; the speed comes on a GPU, with "
                 "another backend (docs/backends.md).")
    return text


def constant_lines(m, library: str = "np") -> list[str]:
    """The mixed module's constants after the optimizer's: ``MASTER``, the float32 of
    ``library`` (``np``, ``jnp``, ``torch``), and the loss scaler's settings (none for
    bfloat16, which has no scaler).

    Examples
    --------
    >>> from symbackprop.codegen.module import build_model
    >>> constant_lines(build_model(sb.models.mlp([4, 3, 2]), precision="mixed"))[1]
    'LOSS_SCALE = 65536.0  # the first loss scale'
    """
    lines = [(f"MASTER = {library}.float32  # master parameters and optimizer state; DTYPE: "
              "the step")]
    s = m.scaler
    if s:
        lines += [f"LOSS_SCALE = {s['loss_scale']!r}  # the first loss scale",
                  f"GROWTH_FACTOR = {s['growth_factor']!r}",
                  f"BACKOFF_FACTOR = {s['backoff_factor']!r}",
                  (f"GROWTH_INTERVAL = {s['growth_interval']!r}  # good steps before the "
                   "scale grows")]
    return lines


def _master(text: str) -> str:
    """A float32 module's block reading MASTER (float32) where it reads DTYPE."""
    return re.sub(r"\bDTYPE\b", "MASTER", text)


def mixed_blocks(m, distributed: str | None = None) -> list[str]:
    """The source blocks after the model's functions in a mixed module: the float32
    module's master-side blocks (flat buffers, initialisation, optimizer, check) on
    MASTER, the float16 workspace, ``_half``, ``_scaled_update``, ``scaled_grads``,
    ``train_step``, ``reference_value_and_grad`` (float32) and ``underflow``. With
    ``distributed="mpi"`` (a data-parallel training script), ``_summed_update`` replaces
    ``_scaled_update``: the gradients summed over the ranks in float32, one overflow
    decision for all (:func:`_train_step_block`).

    Examples
    --------
    >>> from symbackprop.codegen.module import build_model
    >>> m = build_model(sb.models.mlp([4, 3, 2]), optimizer="sgd", precision="mixed")
    >>> [b.split("(")[0] for b in mixed_blocks(m, "mpi") if b.startswith("def train_step")]
    ['def train_step']
    >>> any("def _summed_update(" in b for b in mixed_blocks(m, "mpi"))
    True
    """
    mpi = distributed == "mpi"
    layout, consts, buffers = flat_gradients(m.g, m.wrt, m.grads, m.em.namer, m.pool)
    opt_state = m.opt.init_state.replace("def init_state(", "def _optimizer_state(", 1)
    return ([_master(source_of(flat, "flat_views"))] + [_master(b) for b in init_source(m.plan)]
            + [opt_state, source_of(runtime_mixed, "init_state"), m.opt.update,
               source_of(check, "check_finite"), consts + _master(buffers), m.opt.flat_update,
               PACK, workspace_source(m.em, m.pool, layout),
               source_of(runtime_mixed, "_half", "_summed_update" if mpi else "_scaled_update",
                         "_scaler_step",
                         variants={"folded": bool(m.pool.folds)}),
               _scaled_grads_block(m), _train_step_block(m, mpi), _reference_block(m),
               source_of(runtime_mixed, "_flushed"), _underflow_block(m)])


def _data(m) -> list[str]:
    return [m.em.namer(n) for n in m.inputs]



def _scaled_grads_block(m) -> str:
    em = m.em
    data = _data(m)
    first = {}
    for w, n in zip(m.wrt, m.grads):
        first.setdefault(n, w)
    fixed = {em.namer(n): f"grads[{w!r}]" for n, w in first.items()}
    for w, b, block, grad_block in m.pool.folds:
        fixed[block], fixed[grad_block] = f"half[{w!r}, {b!r}]", f"blocks[{w!r}, {b!r}]"
    args = [re.sub(r"^params\[", "half[", a) for a in m.args(m.fast, fixed=fixed)]
    args.append("scale=scale")
    ws = f"_workspace({', '.join(m.pool.sizes)})"
    doc = (f"Loss and gradients times scale on the minibatch ({', '.join(data)}), in float16, "
           "from float16 copies of the master parameters (_half): (loss, G, grads), the "
           "gradients as views of G, the flat buffer in the workspace (valid until the next "
           'call)."""')
    context = m.context
    args += [f"{c}={c}" for c in context]
    if context:
        doc = doc[:-3] + (" running (batch norm's float32 statistics, updated in place) and "
                          'rng (the dropout masks\' generator) as train_step\'s."""')
    kwargs = "".join(f", {c}={CONTEXT[c]}" for c in context)
    if m.synced:  # data parallel: batch norm over every rank's rows (codegen/sync.py)
        args.append("sync=sync")
        kwargs += ", sync=None"
        doc = doc[:-3] + ' sync: the MPI script\'s RowSums (SyncBatchNorm)."""'
    lines = [f"def scaled_grads(params, state, {', '.join(data)}, scale{kwargs}):",
             *textwrap.wrap(doc, 88, initial_indent='    """', subsequent_indent="    ")]
    lines += ["    " + ln for ln in em.as_arrays(m.inputs)]
    lines += ["    flat = _flat(params, state)", "    half = _half(flat, params)"]
    lines += ["    " + ln for ln in em.bind_sizes("scaled_grads", m.inputs, [ws])]
    blocks = "blocks" if m.pool.folds else "_"
    lines += [f"    _, G, grads, {blocks} = {ws}"]
    lines += ["    " + ln for ln in call_lines("loss = ", m.fast.name, args)]
    lines += [f"    grads[{w!r}][...] = grads[{first[n]!r}]"
              for w, n in zip(m.wrt, m.grads) if first[n] != w]
    lines += ["    return loss, G, grads"]
    return "\n".join(lines) + "\n"


def _train_step_block(m, mpi: bool = False) -> str:
    """``train_step``; with ``mpi`` (a data-parallel script, issue 15) it takes ``share=1.0``
    and this rank's rows, and ``_summed_update`` sums the gradients over the ranks."""
    data = _data(m)
    if mpi:
        return _mpi_train_step_block(m, data)
    doc = (f"One mixed-precision training step on the minibatch ({', '.join(data) or 'no data'}):"
           " forward and backward pass in float16 with the loss multiplied by state['scale'] "
           f"(scaled_grads), then one {m.opt.title} update of the float32 master parameters "
           "from the gradients unscaled in float32 (_scaled_update). On inf or nan in the "
           "scaled gradients the step is skipped (params and the optimizer state unchanged) "
           "and the scale halved. params and state change in place. Returns the loss. Raises "
           'FloatingPointError, before changing anything, when the loss is nan or inf."""')
    context = m.context
    call = _scaled_grads_call(m, data, "state['scale']", 8)
    doc_lines = textwrap.wrap(doc, 88, initial_indent='    """', subsequent_indent="    ")
    if context:  # as the float32 step's, and what a skipped step does to them
        text = {"running": "running: from init_running() (float32), updated in place by the "
                           "forward pass, even when the step is skipped on overflow or raises "
                           "(the forward pass ran: torch.amp's too).",
                "rng": "rng: a seed or a np.random.Generator, which draws the dropout masks "
                       "(pass one Generator to every step): the float32 step's masks, drawn "
                       "on a skipped step too."}
        training_mode_doc(doc_lines, context, text)
    kwargs = [f"{c}={CONTEXT[c]}" for c in context]
    return "\n".join([
        f"def train_step(params, state, {', '.join(data + ['lr=LR'] + kwargs)}):",
        *doc_lines,
        "    with np.errstate(over='ignore', invalid='ignore'):  # overflow: the scaler's",
        call,
        "    return _scaled_update(_flat(params, state), G, grads, loss, state, lr)"]) + "\n"


def training_mode_doc(lines: list, context: list, text: dict) -> None:
    """Append to a train_step's wrapped docstring ``lines`` (its closing quotes included) a
    paragraph "Training mode." saying ``text[c]`` of each call-time argument ``c`` in
    ``context`` (``running``, ``rng``): what it is, and what a skipped step does to it."""
    lines[-1] = lines[-1][:-3]
    lines += ["", "    Training mode."] + [ln for c in context for ln in textwrap.wrap(
        text[c], 88, initial_indent="    ", subsequent_indent="    ")]
    lines[-1] += '"""'


def _mpi_train_step_block(m, data: list) -> str:
    doc = (f"One mixed-precision training step on this rank's rows ({', '.join(data)}) of the "
           "global batch, share its fraction of it (data parallel, MPI): forward and backward "
           "pass in float16 with the loss multiplied by state['scale'] * share "
           "(scaled_grads: every float16 value is then the one process's for these rows); the "
           "gradients, unscaled into float32, are summed over the ranks by one Allreduce, "
           f"then one {m.opt.title} update of the float32 master parameters "
           "(_summed_update). On an overflow (inf or nan in any rank's scaled gradients, or a "
           "summed one float16 cannot hold: the one process's overflow) every rank skips the "
           "step (params and the optimizer state unchanged) and halves the scale. params "
           "and state change in place. Returns this rank's loss (the mean over its rows; 0.0 "
           "for none). Raises FloatingPointError on every rank, before changing anything, "
           'when a rank\'s loss is nan or inf."""')
    call = _scaled_grads_call(m, data, "state['scale'] * share", 12)
    kwargs = [f"{c}={CONTEXT[c]}" for c in m.context]
    if m.synced:  # batch norm's statistics over every rank's rows (codegen/sync.py)
        doc = doc[:-3] + (" sync (RowSums, from the script): batch norm's statistics and "
                          'backward sums over every rank\'s rows (SyncBatchNorm)."""')
        kwargs.append("sync=None")
    return "\n".join([
        f"def train_step(params, state, {', '.join(data + ['lr=LR', 'share=1.0'] + kwargs)}):",
        *textwrap.wrap(doc, 88, initial_indent='    """', subsequent_indent="    "),
        "    loss, G, grads = 0.0, None, None  # a rank with no rows adds zeros",
        f"    if {data[0]}.shape[0]:",
        "        with np.errstate(over='ignore', invalid='ignore'):  # overflow: the scaler's",
        call,
        "    return _summed_update(_flat(params, state), G, grads, loss, state, lr)"]) \
        + "\n"


def _scaled_grads_call(m, data: list, scale: str, indent: int) -> str:
    """train_step's call of scaled_grads, passing on batch norm's running statistics and
    dropout's generator where the network has them."""
    context = m.context
    if not context:
        return (" " * indent + "loss, G, grads = scaled_grads(params, state, "
                + ", ".join([*data, scale]) + ")")
    synced = ["sync=sync"] if m.synced else []  # the MPI script's batch norm (sync.py)
    return "\n".join(" " * indent + ln for ln in call_lines(
        "loss, G, grads = ", "scaled_grads", ["params", "state", *data, scale]
        + [f"{c}={c}" for c in context] + synced, indent=indent))


def _reference_block(m) -> str:
    """``reference_value_and_grad``: value_and_grad in float32 (MASTER), for the
    underflow counts."""
    vg = m.functions[1]
    ref = Function("reference_value_and_grad", list(vg.params),
                   "value_and_grad computed in float32 (MASTER): the reference of "
                   "underflow().", [_master(b) for b in vg.body], vg.ret)
    return render_function(ref)


def _underflow_block(m) -> str:
    data = _data(m)
    ref = call_lines("_, reference = ", "reference_value_and_grad", m.args(m.functions[1]),
                     indent=4)
    context = m.context
    ignored = "".join(f", {c}=None" for c in context)
    doc = ["    without loss scaling, zero in float16 with state['scale']). Changes nothing.\"\"\""]
    if context:  # a training script passes its minibatch(), which carries them
        doc = [doc[0][:-3], "", *textwrap.wrap(
            f"{' and '.join(context)}: accepted, as a training script's minibatch() carries "
            "them, and left alone: the counts take the batch's own statistics and the masks "
            'of seed 0, the same in the three passes."""', 88, initial_indent="    ",
            subsequent_indent="    ")]
    return "\n".join([
        f"def underflow(params, state, {', '.join(data)}{ignored}):",
        f'    """Gradient entries that float16 flushes to zero on the minibatch ({", ".join(data)}),',
        "    per trained parameter: (entries, nonzero in float32, of those zero in float16",
        *doc,
        *("    " + ln for ln in ref),
        "    _, _, plain = scaled_grads(params, state, " + ", ".join(data) + ", 1.0)",
        "    plain = {name: g.copy() for name, g in plain.items()}",
        "    _, _, scaled = scaled_grads(params, state, " + ", ".join(data) + ", state['scale'])",
        "    return _flushed({name: reference[name] for name in TRAINED}, plain, scaled)"]) + "\n"


__all__ = ["PRECISIONS", "check_mixed", "constant_lines", "float32_nodes", "float32_statements",
           "float32_statistics", "functional_precision", "mixed_blocks", "precision_text",
           "resolve_precision", "scaler_settings", "statistic_readers"]
