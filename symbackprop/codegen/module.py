"""Assembling a generated training module: the model, the step's blocks and the text.

:func:`build_model` differentiates and emits a network (``forward``,
``value_and_grad`` and, with the optimizations on, the planned
``loss_and_grads_into``) and gathers what the training code needs to call them
(:class:`Model`). :func:`step_blocks` gives the source blocks every training module
carries after those functions: the flat buffers, ``init_params``, the optimizer,
``check_finite``, the fast path's flat update and workspace, and ``train_step``.
:func:`assemble` writes the module text (through
:func:`~symbackprop.codegen.emit.render_module`). :mod:`~symbackprop.codegen.train`
and :mod:`~symbackprop.codegen.script` build on these.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field

from ..autodiff import check_of_wrt
from ..errors import CodegenError
from ..graph import Graph, fmt_shape
from ..optimize import resolve as resolve_passes
from . import backends
from .emit import (
    Emitter,
    Function,
    add_context,
    call_lines,
    describe,
    emit_model,
    prepare,
    render_module,
    safe_text,
    statistic_readers,
)
from .init import init_source, init_text, plan_init
from .lowering import CONTEXT
from .mixed import (
    check_mixed,
    float32_nodes,
    float32_statements,
    loss_in_float32,
    mixed_blocks,
    precision_text,
    resolve_precision,
    scaler_settings,
)
from .optimizers import Optimizer, hyper_text, resolve_optimizer
from .plan import PACK, flat_gradients, flat_pairs, plan_function, workspace_source
from .runtime import check, flat, fused, source_of
from .sync import sync_statements, synced_nodes, synced_readers

# -- reading the graph -------------------------------------------------------------------


def formula(g: Graph, n: str, top: bool = True, budget: list | None = None) -> str:
    """``L = mean(sub(softplus(logits), mul(logits, y)))``: unnamed nodes expanded (at
    most 12), for docstrings.

    Examples
    --------
    >>> formula(sb.parse("L = (w*x - y)**2"), "L")
    'pow(sub(mul(w, x), y), 2)'
    """
    budget = [12] if budget is None else budget
    d = g.nx.nodes[n]
    if not top and (g.is_leaf(n) or not d.get("auto") or budget[0] <= 0):
        if g.role(n) == "const" and d["shape"] == ():
            return str(d["value"])
        return n
    budget[0] -= 1
    args = ", ".join(formula(g, a, False, budget) for a in g.args(n))
    return f"{d['op']}({args})"


def params_of(g: Graph, of, wrt) -> tuple[str, list[str]]:
    """The loss and the trained parameters (default: all), checked: ``wrt`` names
    parameters only, each with a fixed size in every axis.

    Examples
    --------
    >>> params_of(sb.models.mlp([4, 3, 2]), None, None)
    ('L', ['W1', 'b1', 'W2', 'b2'])
    """
    of, wrt = check_of_wrt(g, of, wrt)
    if not g.nodes("param"):
        raise CodegenError(f"graph {g.nx.graph.get('name')!r} has no parameters to train. "
                           "Declare them with g.param().")
    others = [w for w in wrt if g.role(w) != "param"]
    if others:
        raise CodegenError(f"wrt {others[0]!r} is an {g.role(others[0])}, not a parameter; a "
                           "training step updates parameters only. Declare it with g.param().")
    for p in g.nodes("param"):
        bad = [d for d in g.nx.nodes[p]["shape"] if not isinstance(d, int)]
        if bad:
            raise CodegenError(f"parameter {p!r} has shape {fmt_shape(g.nx.nodes[p]['shape'])}; "
                               "a trained parameter needs a fixed size in every axis.")
    return of, wrt


# -- the model ---------------------------------------------------------------------------


@dataclass
class Model:
    """The emitted model functions and what the training code needs to call them."""

    g: Graph
    of: str
    wrt: list
    em: Emitter
    functions: list
    inputs: list  # graph names of the data inputs of value_and_grad, in its order
    opt: Optimizer
    hyper: dict
    plan: list
    dtype: str
    fast: Function | None = None  # loss_and_grads_into: the planned step, if optimizing
    pool: object = None  # its workspace buffers
    grads: list = field(default_factory=list)  # the gradient node of each wrt, in order
    precision: str = ""  # "mixed": float16 step, float32 masters (codegen/mixed.py); "bfloat16"
    scaler: dict = field(default_factory=dict)  # mixed: the loss scaler's settings
    fused: bool = False  # fuse_update: each part updated in the backward (runtime/fused.py)
    synced: bool = False  # the planned step takes sync: batch statistics over MPI ranks (sync.py)

    def args(self, fn: Function, data: dict | None = None, fixed: dict | None = None) -> list[str]:
        """Arguments calling an emitted function: ``params['W1']`` for parameters,
        ``data[name]`` (default: the input's own code) for inputs, ``fixed[code]`` for the
        parameters of ``fn`` named there."""
        names = {code: n for n, code in self.em.namer.names.items()}
        out = []
        for code in fn.params:
            if "=" in code:  # scale=1.0: passed by name
                continue
            if code in (fixed or {}):
                out.append(fixed[code])
                continue
            n = names[code]
            if self.em.j.role(n) == "param":
                out.append(f"params[{n!r}]")
            else:
                out.append((data or {}).get(n, code))
        return out

    @property
    def context(self) -> list[str]:
        """The call-time arguments (:data:`~symbackprop.codegen.lowering.CONTEXT`) that
        ``value_and_grad`` takes: ``running`` (batch norm), ``rng`` (dropout); not mixed
        precision's ``scale=``."""
        named = (p.split("=")[0] for p in self.functions[1].params if "=" in p)
        return [n for n in named if n in CONTEXT]

    @property
    def arg_names(self) -> dict:
        """Graph name -> the generated code's name of every input and parameter."""
        return {n: self.em.namer(n) for n in self.g.nodes("input") + self.g.nodes("param")}


_STEP_LOCALS = {"params", "state", "lr", "loss", "grads", "value_and_grad", "check_finite",
                "update", "float", "flat", "G", "blocks", "math"}


def build_model(g: Graph, of=None, wrt=None, optimizer: str = "sgd", lr=None,
                hyper: dict | None = None, dtype: str = "float64", optimize=True,
                extra_outputs=(), checkpoint="none", precision=None,
                growth_interval=2000, fuse_update: bool = False, backend="numpy",
                sync_batch_norm: bool = False) -> Model:
    """Differentiate and emit ``g`` for training with ``optimizer``; with the optimization
    passes on, also plan ``loss_and_grads_into`` (the step on the workspace). Nodes in
    ``extra_outputs`` become outputs of ``forward`` (a script's class scores).
    ``precision="mixed"`` (:mod:`~symbackprop.codegen.mixed`) emits the model in float16
    for float32 master parameters, with dynamic loss scaling. ``fuse_update`` plans
    ``loss_and_update`` instead of ``loss_and_grads_into``: the optimizer's rule runs in
    the backward sweep, each parameter as soon as its gradient is final
    (:mod:`~symbackprop.codegen.runtime.fused`).
    ``backend`` is a backend with the planned path
    (:attr:`~symbackprop.codegen.backends.Backend.planned`). ``sync_batch_norm``
    (the MPI training script's): the planned step takes ``sync`` and batch norm's
    statistics over every rank's rows (:mod:`~symbackprop.codegen.sync`).

    Examples
    --------
    >>> m = build_model(sb.models.mlp([4, 3, 2]), optimizer="adam")
    >>> m.opt.name, [f.name for f in m.functions], m.inputs
    ('adam', ['forward', 'value_and_grad', 'loss_and_grads_into'], ['X', 'y'])
    """
    opt, values = resolve_optimizer(optimizer, lr, hyper)
    precision, dtype = resolve_precision(precision, dtype, backends.get(backend).title)
    mixed = precision == "mixed"
    if fuse_update:
        check_fusable(optimize, mixed)
    scaler = scaler_settings(growth_interval) if mixed else {}
    of, wrt = params_of(g, of, wrt)
    g2 = g  # prepare() and differentiate() leave it unchanged: copy it only to add outputs
    if any(n not in g.outputs for n in extra_outputs):
        g2 = g.copy()
        for n in extra_outputs:
            if n not in g2.outputs:
                g2.nx.graph["outputs"].append(n)
    adj = prepare(g2, of, wrt, optimize)
    _, em, fns = emit_model(adj, "float32" if mixed else dtype, optimize, checkpoint=checkpoint,
                            backend=backend)
    if mixed:  # the code names DTYPE only; the module defines it float16 (codegen/mixed.py)
        em.dtype = dtype
        # plain statements, in float32: the ops, their VJPs, the statements reading a
        # statistic of those (a fused relu's)
        flagged = float32_nodes(em.j)
        em.unplanned = set().union(*flagged, statistic_readers(em, *flagged))
    if sync_batch_norm:  # data parallel: batch norm's statements, plain, summed over ranks,
        # and those reading its statistics and the batch's size (a fused relu's)
        synced = synced_nodes(em.j)
        em.unplanned = getattr(em, "unplanned", set()).union(*synced,
                                                              synced_readers(em, *synced))
    vg = fns[1]
    fast, pool = None, None
    if resolve_passes(optimize):  # memory planning goes with the other optimizations
        fast, pool = _plan_step(em, adj, of, wrt, opt, mixed, fuse_update)
        fns = [*fns, fast]
    names = {code: n for n, code in em.namer.names.items()}
    inputs = [names[c] for c in vg.params if "=" not in c and em.j.role(names[c]) == "input"]
    clash = [em.namer(n) for n in inputs if em.namer(n) in _STEP_LOCALS]
    if clash:
        raise CodegenError(f"input {clash[0]!r} has the name of a variable of the training "
                           "step; rename the input (e.g. g.rename).")
    m = Model(g, of, wrt, em, fns, inputs, opt, values, plan_init(g), dtype, fast, pool,
              [adj.adjoint[w] for w in wrt], fused=bool(fuse_update))
    if sync_batch_norm and m.fast is not None and not m.fused:
        # before mixed precision's float32 rewrite of them; its step is seeded by the
        # rank's share (scale * share)
        m.synced = sync_statements(m, seeded=mixed)
    if mixed:
        m.precision, m.scaler = precision, scaler
        check_mixed(m)
        loss_in_float32(m)
        float32_statements(m)  # batch norm's, layer norm's
    return m


def check_fusable_backend(b) -> None:
    """``fuse_update=True`` is the memory-planned step's (its updates are calls placed by
    :mod:`~symbackprop.codegen.plan`): one ``CodegenError`` line for a backend without it
    (a :class:`~symbackprop.codegen.backends.Backend` whose ``planned`` is false).

    Examples
    --------
    >>> from symbackprop.codegen import backends
    >>> check_fusable_backend(backends.get("numpy"))
    """
    if not b.planned:
        planned = [n for n in backends.NAMES if backends.get(n).planned]

        def text(fuse, backend):  # as keyword arguments, and as the command line's flags
            return (f"{fuse} is the memory-planned step's ({', '.join(planned)}); the {b.name} "
                    "backend's step is not planned by symbackprop (its library places the "
                    f"arrays): drop {fuse.split('=')[0]} or use {backend}{planned[0]}.")

        e = CodegenError(text("fuse_update=True", "backend="))
        e.cli_message = text("--fuse-update", "--backend ")
        raise e


def check_fusable(optimize, mixed: bool = False, distributed=None) -> None:
    """``fuse_update=True`` needs the planned step, and refuses what needs every gradient
    at once: mixed precision's loss scaler (a step skipped for an inf anywhere) and MPI's
    Allreduce of the flat gradient buffer. One ``CodegenError`` line each.

    Examples
    --------
    >>> check_fusable(True)
    >>> check_fusable(False)
    Traceback (most recent call last):
    ...
    symbackprop.errors.CodegenError: fuse_update=True needs the memory-planned step; leave optimize on.
    """
    def refuse(message):  # named as keyword arguments, and as flags for the command line
        e = CodegenError(message(lambda k, v: f"{k}={v!r}"))
        e.cli_message = message(lambda k, v: f"--{k.replace('_', '-')}"
                                + ("" if v is True else f" {v}"))
        return e

    if not resolve_passes(optimize):
        raise refuse(lambda o: f"{o('fuse_update', True)} needs the memory-planned step; "
                               "leave optimize on.")
    if mixed:
        raise refuse(lambda o: f"{o('fuse_update', True)} cannot go with "
                               f"{o('precision', 'mixed')}: the loss scaler skips a step when "
                               "any gradient overflows, which it can only know once every "
                               "gradient exists; use one or the other.")
    if distributed is not None:
        raise refuse(lambda o: f"{o('fuse_update', True)} cannot go with "
                               f"{o('distributed', distributed)}: the ranks sum the whole flat "
                               "gradient buffer before the update; use one or the other.")


def _plan_step(em: Emitter, adj, of: str, wrt: list, opt: Optimizer, mixed=False,
               fuse_update=False) -> tuple:
    """``loss_and_grads_into`` (``fuse_update``: ``loss_and_update``) and its workspace
    pool, with its docstring written."""
    grads = [adj.adjoint[w] for w in wrt]
    if fuse_update:
        return _plan_fused(em, adj, of, wrt, opt)
    fast, pool = plan_function(
        em, "loss_and_grads_into", [of, *grads], grads,
        "The same computation as value_and_grad, with every intermediate array in a "
        "buffer of\n    _workspace() (one arena per batch size, made once) and NumPy calls "
        "writing into it\n    (out=). Every array passed must be of DTYPE (train_step converts the "
        "data), the gradient\n    arrays C-contiguous.",
        of=of, scalable=opt.scaled is not None or mixed, pairs=flat_pairs(adj))
    add_context(em, fast, em.j.ancestors([of, *grads]))  # batch norm's and dropout's
    into = {em.namer(n) for n in grads} | {gb for *_, gb in pool.folds}
    nm = em.namer
    blocks = {gb: f"{gb} = [{nm(adj.adjoint[w])}; {nm(adj.adjoint[b])}]"
              for w, b, _, gb in pool.folds}
    head = (f"Loss {of}; writes its gradients into "
            + ", ".join(blocks.get(p, p) for p in fast.params if p in into) + ".")
    if pool.folds:
        w, b, block, _ = pool.folds[0]
        head += (f" {block} = [{nm(w)}; {nm(b)}] is {nm(w)} with {nm(b)} as one more row "
                 "(the bias rides in the product)"
                 + (", and so for the other blocks" if len(pool.folds) > 1 else "")
                 + ": views of the flat buffers.")
    opening = '    """'  # the first line starts after the docstring's quotes
    head = re.sub(r"\[[^\[\]]*\]", lambda m: m.group().replace(" ", "\0"), safe_text(head))
    fast.doc = textwrap.fill(  # never inside [dW2; db2]
        head, 88, initial_indent=opening, subsequent_indent="    ",
        break_on_hyphens=False)[len(opening):].replace("\0", " ") + "\n\n    " + fast.doc
    if pool.scaled and mixed:
        fast.doc += ("\n\n    Every gradient comes out multiplied by scale (backprop is "
                     "linear in its seed):\n    train_step passes the loss scale, so that "
                     "small gradients stay above float16's\n    smallest number.")
    elif pool.scaled:
        fast.doc += ("\n\n    Every gradient comes out multiplied by scale (backprop is "
                     "linear in its seed):\n    train_step passes lr, so that SGD's update "
                     "is one subtraction.")
    fast.ret = em.code(of)
    return fast, pool


def _plan_fused(em: Emitter, adj, of: str, wrt: list, opt: Optimizer) -> tuple:
    """``loss_and_update``, the fused update's planned step, and its workspace pool."""
    grads = [adj.adjoint[w] for w in wrt]
    fast, pool = plan_function(
        em, "loss_and_update", [of], [],
        "The same computation as value_and_grad, with every intermediate array in a "
        "buffer of\n    _workspace() (one arena per batch size, made once) and NumPy calls "
        "writing into it\n    (out=). Every array passed must be of DTYPE (train_step "
        "converts the data).",
        of=of, scalable=opt.scaled is not None, pairs=flat_pairs(adj),
        fused=list(zip(wrt, grads)), start=opt.start)
    add_context(em, fast, em.j.ancestors([of, *grads]))  # batch norm's and dropout's
    names = [", ".join(em.namer(w) for w in part.params)
             for i in sorted(pool.plan.updates) for part in pool.plan.updates[i]]
    head = (f"Loss {of}, and one {opt.title} update of every trained parameter in the "
            "backward sweep (fused update): each part's rule runs (_fused) as soon as its "
            "gradient is final and no later step reads the part, in this order: "
            + "; ".join(names) + ". A gradient lives in the workspace until its update "
            "has read it. Returns the loss before any update when it is nan or inf; a part "
            "whose gradient holds nan or inf is not updated (flat['skipped'] lists it).")
    opening = '    """'
    fast.doc = textwrap.fill(safe_text(head), 88, initial_indent=opening,
                             subsequent_indent="    ", break_on_hyphens=False)[len(opening):] \
        + "\n\n    " + fast.doc
    if pool.scaled:
        fast.doc += ("\n\n    Every gradient comes out multiplied by scale (backprop is "
                     "linear in its seed):\n    train_step passes lr, so that SGD's update "
                     "is one subtraction.")
    fast.ret = em.code(of)
    return fast, pool


# -- the step's blocks ---------------------------------------------------------------------


def step_blocks(m: Model, distributed: str | None = None) -> list[str]:
    """The source blocks after the model's functions: ``flat_views``, the initialisation,
    the optimizer (``init_state``, ``update``), ``check_finite``, the fast path (flat
    buffers, flat update, packer, workspace) when there is one, and ``train_step``
    (with ``distributed="mpi"``, the data-parallel one: see :func:`_train_step_block`).

    Examples
    --------
    >>> m = build_model(sb.models.mlp([4, 3, 2]), optimize=False)  # no fast path
    >>> [b.split("(")[0] for b in step_blocks(m)]  # doctest: +NORMALIZE_WHITESPACE
    ['def flat_views', 'def he_normal', 'def xavier_uniform', 'def init_params',
     'def init_state', 'def update', 'def check_finite', 'def train_step']
    """
    if m.precision == "mixed":
        return mixed_blocks(m, distributed)
    fast = []
    if m.fused:
        check_fusable(True, distributed=distributed)
        _, consts, buffers = flat_gradients(m.g, m.wrt, m.grads, m.em.namer, m.pool)
        parts = tuple(p.params for i in sorted(m.pool.plan.updates)
                      for p in m.pool.plan.updates[i])
        consts += (f"PARTS = {parts!r}  # the fused update's parts, in the order updated\n"
                   f"SCRATCH = {0 if m.pool.scaled else m.opt.scratch}  # scratch arrays "
                   "of the update's rule\n")
        fast = [consts + buffers, m.opt.part_update(m.pool.scaled),
                source_of(fused, "_parts", "_fused", "_partial_step"), PACK,
                workspace_source(m.em, m.pool, blocks=False)]
    elif m.fast is not None:
        layout, consts, buffers = flat_gradients(m.g, m.wrt, m.grads, m.em.namer, m.pool)
        fast = [consts + buffers, m.opt.scaled_update if m.pool.scaled else m.opt.flat_update,
                PACK, workspace_source(m.em, m.pool, layout)]
    return ([source_of(flat, "flat_views")] + init_source(m.plan)
            + [m.opt.init_state, m.opt.update, source_of(check, "check_finite")]
            + fast + [_train_step_block(m, distributed)])


def _train_step_block(m: Model, distributed: str | None = None) -> str:
    """``train_step``. With ``distributed="mpi"`` (training scripts, issue 15) it takes
    ``share=1.0`` and the rows of this rank's shard: the flat gradient buffer, weighted by
    the share, is summed over the ranks by the script's ``allreduce`` before the nan/inf
    check and the update, and a rank with no rows adds zeros."""
    em = m.em
    data = [em.namer(n) for n in m.inputs]
    batch = ", ".join(data) or "no data"
    # batch norm's running statistics and dropout's generator, passed on (issue 13)
    context = [p.split("=")[0] for p in m.functions[1].params if "=" in p]
    kwargs = [f"{c}={CONTEXT[c]}" for c in context]
    mpi = distributed == "mpi"
    share = ["share=1.0"] if mpi else []
    if mpi and m.synced:  # batch norm's statistics over every rank's rows (codegen/sync.py)
        share.append("sync=None")
    lines = [f"def train_step(params, state, {', '.join(data + ['lr=LR'] + kwargs + share)}):",
             f'    """One training step on the minibatch ({batch}): forward and backward pass',
             (f"    ({m.fast.name if m.fast else 'value_and_grad'}), then one {m.opt.title} "
              "update (update). params and state"),
             "    change in place. Returns the loss. Raises FloatingPointError, before changing",
             '    anything, when the loss or a gradient is nan or inf."""']
    if m.fused:
        lines[2:] = textwrap.wrap(
            f"(loss_and_update), with each parameter's {m.opt.title} update applied in the "
            "backward sweep as soon as its gradient is final (fused update). params and state "
            "change in place. Returns the loss. Raises FloatingPointError: before changing "
            "anything when the loss is nan or inf; after a partial step when a gradient is "
            "(its parameters are not updated, all others are and stay so: the error's "
            '.skipped and .updated name them)."""', 88, initial_indent="    ",
            subsequent_indent="    ")
    if context:  # the docstring says what they are
        lines[-1] = lines[-1][:-3]
        text = {"running": "running: from init_running(), updated in place by the forward pass "
                           "(even when|the step raises).",
                "rng": "rng: a seed or a np.random.Generator, which draws the dropout masks "
                       "(pass one|Generator to every step)."}
        lines += ["", "    Training mode."] + ["    " + t for c in context
                                                for t in text[c].split("|")]
        lines[-1] += '"""'
    if mpi:  # data parallel (issue 15)
        lines[-1] = lines[-1][:-3]
        lines += ["", *textwrap.wrap(
            "Data parallel (MPI): the data are this rank's rows of the global batch and share "
            "their fraction of it. Each rank's gradients, times its share, are summed over the "
            "ranks by one Allreduce of the flat buffer G (allreduce), so that every rank "
            "applies the global batch's gradient. Returns this rank's loss (the mean over its "
            'rows; 0.0 for none)."""', 88, initial_indent="    ", subsequent_indent="    ")]
        if m.synced:
            lines[-1] = lines[-1][:-3]
            lines += ["", *textwrap.wrap(
                "sync (RowSums, from the script): batch norm takes the global batch's mean and "
                "variance, and its backward the sums over the global batch, through sums over "
                "the rows of every rank (SyncBatchNorm); sync.rows is the global batch's rows."
                '"""', 88, initial_indent="    ", subsequent_indent="    ")]
    passed = [f"{c}={c}" for c in context]
    if m.fast is None:
        if mpi:
            raise CodegenError("distributed='mpi' needs the memory-planned step and its flat "
                               "gradient buffer; leave optimize on.")
        lines += ["    " + ln for ln in call_lines("loss, grads = ", "value_and_grad",
                                                     m.args(m.functions[1]) + passed)]
        lines += ["    check_finite(loss, grads)", "    update(params, grads, state, lr=lr)",
                  "    return float(loss)"]
        return "\n".join(lines) + "\n"
    if m.fused:
        return "\n".join(lines + _fused_call(m, passed)) + "\n"
    # loss_and_grads_into takes the leaves, then one gradient array per gradient node; two
    # parameters can share one (both arguments of w0 + w1): the second gets a copy
    first = {}
    for w, n in zip(m.wrt, m.grads):
        first.setdefault(n, w)
    fixed = {em.namer(n): f"grads[{w!r}]" for n, w in first.items()}
    for w, b, block, grad_block in m.pool.folds:  # [W; b] and [dW; db]: made once
        fixed[block], fixed[grad_block] = f"flat[{w!r}, {b!r}]", f"blocks[{w!r}, {b!r}]"
    args = m.args(m.fast, fixed=fixed) + passed + (["sync=sync"] if mpi and m.synced else [])
    ws = f"_workspace({', '.join(m.pool.sizes)})"
    # the data as arrays of DTYPE, as value_and_grad takes them (a float64 batch for a
    # float32 step, or a list): loss_and_grads_into's products need that, np.dot above all
    lines += ["    " + ln for ln in em.as_arrays(m.inputs)]
    lines += ["    flat = _flat(params, state)"]
    lines += ["    " + ln for ln in em.bind_sizes("train_step", m.inputs, [ws])]
    blocks = "blocks" if m.pool.folds else "_"
    lines += [f"    _, G, grads, {blocks} = {ws}  # the gradients: views of G, in the workspace"]
    if m.pool.scaled:  # the gradients come out as lr * dL/dw
        args.append("scale=lr")
    call = call_lines("loss = ", m.fast.name, args)
    copies = [f"grads[{w!r}][...] = grads[{first[n]!r}]"
              for w, n in zip(m.wrt, m.grads) if first[n] != w]
    if mpi:  # a rank with no rows (a last, small global batch) computes nothing, adds zeros
        call = ([f"if {data[0]}.shape[0] == 0:  # no rows of this global batch on this rank",
                 "    G[...] = 0", "    loss = 0.0", "else:"]
                + ["    " + ln for ln in call + copies]
                + ["loss = allreduce(G, loss, share)  # the global batch's gradient, every rank"])
        copies = []
    lines_after = ["    " + ln for ln in call + copies]
    lines += lines_after
    # A sum of squares is finite only if every term is (squares cannot cancel an inf): one
    # BLAS call (3x faster than G.sum()) screens every gradient; check_finite, exact, runs
    # only when the screen trips (a square can overflow: it then raises only for nan or inf).
    lines += ["    if not math.isfinite(loss + np.dot(G, G)):",
              "        check_finite(loss, grads)  # says which gradient",
              "    _update_flat(flat, G, state, lr)",
              "    return float(loss)"]
    return "\n".join(lines) + "\n"


def _fused_call(m: Model, passed: list) -> list[str]:
    """The body of the fused update's train_step: the flat buffers and their parts, one
    call of loss_and_update, then the loss's and the gradients' verdicts."""
    em = m.em
    fixed = dict(zip(m.pool.plan.fused_args, ("flat", "state", "lr")))
    for w, b, block, _ in m.pool.folds:
        fixed[block] = f"flat[{w!r}, {b!r}]"
    args = m.args(m.fast, fixed=fixed) + passed + (["scale=lr"] if m.pool.scaled else [])
    lines = ["    " + ln for ln in em.as_arrays(m.inputs)]
    lines += ["    flat = _flat(params, state)",
              "    _parts(flat)  # where each part lies in the flat buffers; no part skipped yet"]
    lines += ["    " + ln for ln in call_lines("loss = ", m.fast.name, args)]
    lines += ["    if not math.isfinite(loss):  # checked before any update: nothing changed",
              "        raise FloatingPointError(f\"the loss is {float(loss)}\")",
              "    if flat[\"skipped\"]:  # updated: every part but these",
              "        raise _partial_step(flat, loss)",
              "    return float(loss)"]
    return lines


# -- the module text -----------------------------------------------------------------------


def wrap(*lines: str) -> str:
    """Docstring lines wrapped at 88 columns, continuations indented.

    Examples
    --------
    >>> print(wrap("Network " + "x " * 50 + "(3, 2)."), end="")
    Network x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x
        x x x x x x x x x x (3, 2).
    """
    def fill(ln):  # never break inside parentheses: (3, 2) stays on one line
        ln = re.sub(r"\([^()]*\)", lambda m: m.group().replace(" ", "\0"), ln)
        return textwrap.fill(ln, 88, subsequent_indent="    ", break_long_words=False,
                             break_on_hyphens=False).replace("\0", " ")
    return "".join(fill(ln) + "\n" for ln in lines)


def step_doc(m: Model, what: str) -> str:
    """The module docstring's opening: ``what``, then the network, loss, optimizer,
    initialisation and trained parameters."""
    g = m.g
    return f"{what}\n\n" + wrap(
        f"Network {safe_text(describe(g, shapes=True))}.",
        f"Loss: {safe_text(m.of)} = {safe_text(formula(g, m.of))}.",
        f"Optimizer: {m.opt.title} ({m.opt.rule}); {hyper_text(m.hyper)}.",
        f"Initialisation: {safe_text(init_text(m.plan))}.",
        f"Trained parameters: {', '.join(map(safe_text, m.wrt))}; "
        + (precision_text(m) if m.precision else f"dtype {m.dtype}.")) + "\n"


def assemble(doc: str, m: Model, functions: list, blocks: list, imports=(),
             constants=(), library: str | None = None) -> str:
    """The module text (:func:`~symbackprop.codegen.emit.render_module`): ``math`` joins
    the standard-library ``imports`` when the fast path's train_step uses it; ``library``
    replaces the backend's import lines (the cupy script imports NumPy too).

    Examples
    --------
    >>> m = build_model(sb.models.mlp([4, 3, 2]), optimizer="sgd")
    >>> text = assemble("A module.", m, m.functions, [], library="import numpy as np")
    >>> "A module." in text.splitlines()[0], "def forward(" in text
    (True, True)
    """
    imports = {*imports, *(("math",) if m.fast is not None else ())}
    return render_module(doc, m.em, functions, imports=imports, constants=constants,
                         blocks=blocks, library=library)


NUMPY_NORM = "float(np.sqrt(sum(np.vdot(grads[w], grads[w]) for w in weights)))"


def grad_norms_block(call: list[str], norm: str = NUMPY_NORM) -> str:
    """A training script's ``grad_norms(params, X, y)`` (``--log-grad-norms``,
    ``--metrics``: the runtime's ``GradNorms``): ``call``, the lines computing ``grads``
    (a value_and_grad of the script's library), then each layer's norm, the expression
    ``norm`` over its ``weights`` (NumPy's, by default; torch's its own).

    Examples
    --------
    >>> print(grad_norms_block(["_, grads = value_and_grad(X, y)"]).splitlines()[2])
        _, grads = value_and_grad(X, y)
    """
    return "\n".join([
        "def grad_norms(params, X, y):",
        '    """The norm of the gradient of each layer\'s weights (LAYERS) on (X, y)."""',
        *("    " + b for b in call),
        f"    return {{layer: {norm}",
        "            for layer, weights in LAYERS.items()}"]) + "\n"


__all__ = [
    "Model",
    "assemble",
    "build_model",
    "formula",
    "grad_norms_block",
    "params_of",
    "step_blocks",
    "step_doc",
    "wrap",
]
