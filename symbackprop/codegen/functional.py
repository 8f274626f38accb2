"""Training modules for the functional backends (``jax``; issue 15): nothing changes in
place, every step returns new parameters and optimizer state.

The module carries the model's ``forward`` and plain ``value_and_grad`` (one statement per
node, :func:`~symbackprop.codegen.emit.emit_value_and_grad`), ``init_params(seed=0)``
(the backend's draws, :meth:`~symbackprop.codegen.backends.Backend.init_source`), the
optimizer's functional ``init_state(params)`` and ``update(params, grads, state)``
(:mod:`symbackprop.codegen.runtime.functional`) and
``train_step(params, state, <inputs>, lr=LR)``, which returns ``(loss, params, state)``
and which the backend compiles as a whole (``jax.jit`` donating the buffers of
``params`` and ``state``). The NumPy training module, planned and in place, is
:mod:`~symbackprop.codegen.train`'s.
"""

from __future__ import annotations

import re

from .. import __version__ as _version
from ..errors import CodegenError
from ..graph import Graph
from .emit import (
    call_lines,
    emit_forward,
    emit_value_and_grad,
    prepare,
    render_module,
    running_function,
    safe_text,
)
from .init import plan_init
from .jax_mixed import HALF, make_mixed
from .jax_mixed import blocks as mixed_blocks
from .jax_mixed import constant_lines as mixed_constants
from .lowering import CONTEXT
from .mixed import scaler_settings
from .module import Model, params_of, step_doc
from .optimizers import constant_lines, resolve_optimizer
from .runtime.functional import adam, momentum, sgd

# optimizer name -> its functional runtime (the in-place ones: Optimizer.runtime)
RUNTIME = {"sgd": sgd, "momentum": momentum, "adam": adam}


def build(g: Graph, of=None, wrt=None, optimizer: str = "sgd", lr=None, hyper=None,
          dtype: str = "float64", optimize=True, backend="jax", checkpoint="none",
          precision=None, growth_interval=2000) -> Model:
    """The model of a functional training module: ``forward`` and the plain
    ``value_and_grad`` written for ``backend``. ``precision`` ``"mixed"`` or
    ``"bfloat16"`` (resolved by :func:`~symbackprop.codegen.mixed.functional_precision`;
    ``dtype`` is then the half dtype) writes the mixed-precision step of
    :mod:`~symbackprop.codegen.jax_mixed`.

    Examples
    --------
    >>> m = build(sb.models.mlp([4, 3, 2]), optimizer="adam", backend="jax")
    >>> [f.name for f in m.functions], m.inputs
    (['forward', 'value_and_grad'], ['X', 'y'])
    """
    opt, values = resolve_optimizer(optimizer, lr, hyper)
    half = precision in HALF
    scaler = scaler_settings(growth_interval) if precision == "mixed" else {}
    if half:  # emitted in float32; make_mixed defines DTYPE as the half dtype
        dtype = "float32"
    of, wrt = params_of(g, of, wrt)
    adj = prepare(g, of, wrt, optimize)
    _, em, fwd = emit_forward(adj, dtype, optimize, checkpoint=checkpoint, backend=backend)
    vg = emit_value_and_grad(em, adj)
    names = {code: n for n, code in em.namer.names.items()}
    inputs = [names[c] for c in vg.params if "=" not in c and em.j.role(names[c]) == "input"]
    clash = [em.namer(n) for n in inputs if em.namer(n) in ("params", "state", "lr", "loss",
                                                            "grads")]
    if clash:
        raise CodegenError(f"input {clash[0]!r} has the name of a variable of the training "
                           "step; rename the input (e.g. g.rename).")
    m = Model(g, of, wrt, em, [fwd, vg, *running_function(em)], inputs, opt, values,
              plan_init(g), dtype, grads=[adj.adjoint[w] for w in wrt])
    if half:  # batch norm in float32 (its running statistics too), dropout's key as float32's
        make_mixed(m, precision, scaler)
    return m



def train_step_block(m: Model) -> str:
    """``train_step(params, state, <inputs>, lr=LR)``: value_and_grad, then update. A
    network with batch norm also takes ``running=None`` and returns the new statistics
    after the state; one with dropout takes ``rng=0`` (issue 15)."""
    em = m.em
    data = [em.namer(n) for n in m.inputs]
    batch = ", ".join(data) or "no data"
    context = m.context
    kwargs = [f"{c}={CONTEXT[c]}" for c in context]
    running = "running" in context
    lines = [*em.backend.step_decorators(context),
             f"def train_step(params, state, {', '.join(data + ['lr=LR'] + kwargs)}):",
             f'    """One training step on the minibatch ({batch}): forward and backward pass',
             (f"    (value_and_grad), then one {m.opt.title} update (update). Returns the loss, "
             "the new"),
             ("    parameters, the new state and the new running statistics (batch norm); "
              "nothing\n    changes in place. " if running
              else "    parameters and the new state; nothing changes in place. ")
             + em.backend.step_note() + '"""']
    if context:  # what they are, in the docstring
        lines[-1] = lines[-1][:-3]
        text = {"running": "running: from init_running() or the last step's; None: no "
                           "running statistics.",
                "rng": "rng: a seed or a jax.random key, which draws the dropout masks: pass "
                       "a new one|every step, such as jax.random.fold_in(key, step)."}
        lines += ["", "    Training mode."] + ["    " + t for c in context
                                                for t in text[c].split("|")]
        lines[-1] += '"""'
    lhs = "loss, grads, running = " if running else "loss, grads = "
    lines += ["    " + ln for ln in call_lines(lhs, "value_and_grad", m.args(m.functions[1])
                                                 + [f"{c}={c}" for c in context])]
    lines += ["    params, state = update(params, grads, state, lr=lr)",
              "    return loss, params, state" + (", running" if running else "")]
    return "\n".join(lines) + "\n"


def step_source(g: Graph, of=None, wrt=None, optimizer: str = "sgd", lr=None, hyper=None,
                dtype: str = "float64", optimize=True, backend="jax", checkpoint="none",
                precision=None, growth_interval=2000) -> str:
    """The source of a functional training module (see the module's docstring).

    Examples
    --------
    >>> src = step_source(sb.models.mlp([4, 3, 2]), optimizer="sgd", backend="jax")
    >>> print(src[src.index("@functools"):].strip())  # doctest: +NORMALIZE_WHITESPACE
    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def train_step(params, state, X, y, lr=LR):
        \"\"\"One training step on the minibatch (X, y): forward and backward pass
        (value_and_grad), then one SGD update (update). Returns the loss, the new
        parameters and the new state; nothing changes in place. The buffers of params and
        state are donated to the result: use the returned ones.\"\"\"
        loss, grads = value_and_grad(X, params['W1'], params['b1'], params['W2'], params['b2'], y)
        params, state = update(params, grads, state, lr=lr)
        return loss, params, state
    """
    return model_text(build(g, of, wrt, optimizer, lr, hyper, dtype, optimize, backend,
                            checkpoint, precision, growth_interval))


def model_text(m: Model, doc: str | None = None, blocks=(), imports=(), constants=(),
               library: str | None = None) -> str:
    """The source of :func:`step_source` for a model made by :func:`build`; a training
    script (:mod:`~symbackprop.codegen.jax_script`) gives its own ``doc`` and adds
    ``blocks`` (its main program), ``imports`` and ``constants``."""
    g = m.g
    runtime = RUNTIME[m.opt.name]
    b = m.em.backend
    if doc is None:
        doc = step_doc(m, f"Training step for the "
                          f"{safe_text(g.nx.graph.get('name', 'network'))} network with "
                          f"{m.opt.title}, written for {b.title}.")
        doc += (f"Generated by symbackprop {_version} (sb.train_step, backend {b.name!r}). "
                "Gradients (value_and_grad)\nand the optimizer (init_state, update) are "
                "separate functions; train_step runs both and\nreturns new parameters and "
                f"state. Needs only {b.title}. Do not edit: regenerate instead.")
    if m.precision:  # mixed precision (codegen/jax_mixed.py)
        blocks = [*mixed_blocks(m, runtime), *blocks]
        constants = mixed_constants(m) + list(constants)
    else:
        blocks = [*b.init_source(m.plan), b.optimizer_source(runtime, "init_state"),
                  b.optimizer_source(runtime, "update"), train_step_block(m), *blocks]
    text = "".join(blocks)  # the standard-library modules its blocks use
    imports = [*imports, *(i for i in b.step_imports() if re.search(rf"\b{i}\.", text))]
    return render_module(doc, m.em, m.functions, imports=imports,
                         constants=constant_lines(m.hyper) + list(constants), blocks=blocks,
                         library=library)


__all__ = ["RUNTIME", "build", "model_text", "step_source", "train_step_block"]
