"""Mixed precision for the JAX training module (``precision="mixed"`` or ``"bfloat16"``
with ``backend="jax"``; issue 15).

NumPy's plan (:mod:`~symbackprop.codegen.mixed`, docs/training.md "Mixed precision"),
written functionally for ``jax.jit``:

* ``DTYPE`` is float16 (``"mixed"``) or bfloat16 (``"bfloat16"``): ``forward`` and
  ``value_and_grad`` compute in it, casting the float32 master parameters they are given
  (their first lines, ``jnp.asarray(W1, dtype=DTYPE)``) inside the jitted step.
* The loss and the statements that read the seed of backprop (the loss's own gradient)
  run in float32 (``_in_float32``), their gradient rounded to ``DTYPE``: as NumPy's
  ``_loss_in_float32``.
* float16: the seed of backprop is the loss scale (``value_and_grad(..., scale=1.0)``,
  a float32 scalar: 2**16 is above float16's largest number), so every gradient comes
  out multiplied by it; ``train_step`` passes ``state['scale']`` and
  ``_scaled_update`` (:mod:`~symbackprop.codegen.runtime.jax_mixed`) applies
  ``torch.amp.GradScaler``'s rules with ``jnp.where``, the scaler's state in and out of
  the jitted step.
* bfloat16: no loss scale. bfloat16 keeps float32's 8 exponent bits, so a gradient that
  float32 holds does not flush to zero in bfloat16 for want of range (only its 8-bit
  significand is coarser); the gradients are cast to float32 for the update.
* ``underflow(params, state, <inputs>)`` counts the gradient entries that flush to zero
  in the step's dtype against ``reference_value_and_grad`` (the same code in float32).
"""

from __future__ import annotations

import re
import textwrap

from ..errors import CodegenError
from .emit import Function, call_lines, render_function, returns_running
from .lowering import CONTEXT
from .mixed import constant_lines as constant_lines_of
from .mixed import float32_statements, training_mode_doc
from .runtime import source_of

runtime = "jax_mixed"  # the runtime module, by name: importing it would import JAX

HALF = {"mixed": "float16", "bfloat16": "bfloat16"}  # precision -> the step's dtype
_ROUNDED = "; in float32, rounded to DTYPE"


def _one_call(stmt: str):
    """``(lhs, function, arguments)`` of a statement ``lhs = f(args)``, else None."""
    found = re.fullmatch(r"(\w+) = (\w+)\((.*)\)", stmt)
    if found is None:
        return None
    depth = 0  # f(a)(b) or f(a) + g(b) is not one call: the parentheses must close last
    for i, ch in enumerate(found.group(3)):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth < 0:
            return None
    return found.groups()


def _rewrite(body: list, code: str, how) -> bool:
    """Replace the statement assigning ``code`` in ``body`` by ``how(stmt, comment)``;
    whether there was one."""
    for i, line in enumerate(body):
        if line.startswith(f"{code} = "):
            stmt, _, comment = line.partition("  # ")
            body[i] = how(stmt, comment)
            return True
    return False


def _refuse(m, why: str) -> CodegenError:
    return CodegenError(f"precision {m.precision!r} computes the loss {m.of!r} and its "
                        f"gradient in float32 with the loss scale as the seed of backprop: "
                        f"{why}. Use softmax_cross_entropy as the loss with the optimization "
                        "passes on, or precision 'float32'.")


def _spelling(backend) -> dict:
    """How ``backend`` writes the mixed step's casts: ``cast`` (``.astype({})``, format
    with a dtype), ``seed`` (the loss scale as a float32 scalar) and ``runtime`` (the
    module whose ``_in_float32`` it copies). JAX's unless the backend has its own
    ``mixed_spelling`` (torch: :mod:`~symbackprop.codegen.torch_mixed`)."""
    return getattr(backend, "mixed_spelling", None) or {
        "cast": ".astype({})", "seed": "jnp.asarray(scale, MASTER)", "runtime": runtime}


def make_mixed(m, precision: str, scaler: dict) -> None:
    """Turn the functional model ``m`` (emitted in float32) into the mixed one, in place:
    ``DTYPE`` the half dtype, the loss and its gradient in float32, the seed the loss
    scale (float16). Raises :class:`~symbackprop.errors.CodegenError` when the loss is
    not one call or backprop has no seed statement (``mse``, whose seed the passes fold
    away; no optimization passes).

    Examples
    --------
    >>> from symbackprop.codegen.functional import build
    >>> m = build(sb.models.mlp([4, 3, 2]), optimizer="sgd", precision="mixed")  # calls it
    >>> m.dtype, m.precision, sorted(m.scaler)
    ('float16', 'mixed', ['backoff_factor', 'growth_factor', 'growth_interval', 'loss_scale'])
    """
    em, j = m.em, m.em.j
    em.dtype = HALF[precision]  # the code names DTYPE only: the module defines it
    m.dtype, m.precision, m.scaler = HALF[precision], precision, scaler
    loss = em.code(m.of)
    seed = next((n for n in em.order if j.role(n) == "const" and j.adjoint_of(n) == m.of
                 and not em.inline(n)), None)
    if seed is None:
        raise _refuse(m, "its gradient has no seed statement (dL = 1) to scale")
    readers = [c for c, _ in j.consumers(seed)]
    if any(em.inline(c) for c in readers):
        raise _refuse(m, "the seed is read inside another statement")
    spelling = _spelling(em.backend)
    cast = spelling["cast"].format("DTYPE")
    em.helpers["_in_float32"] = source_of(spelling["runtime"], "_in_float32")

    def loss_line(stmt, comment):
        call = _one_call(stmt)
        if call is None:
            raise _refuse(m, f"its statement is not one call ({stmt})")
        lhs, f, args = call
        return f"{lhs} = _in_float32({f}, {args})  # in float32"

    def grad_line(stmt, comment):
        call = _one_call(stmt)
        lhs, rhs = stmt.split(" = ", 1)
        rhs = f"_in_float32({call[1]}, {call[2]})" if call else f"({rhs})"
        return f"{lhs} = {rhs}{cast}  # {comment}{_ROUNDED}"

    fwd, vg = m.functions[0], m.functions[1]
    for fn in (fwd, vg):
        if not _rewrite(fn.body, loss, loss_line):
            raise _refuse(m, "the loss has no statement of its own")
    for c in readers:
        _rewrite(vg.body, em.namer(c), grad_line)
    if scaler:  # float16: the seed is the loss scale, float32
        _rewrite(vg.body, em.namer(seed), lambda stmt, comment: (
            f"{em.namer(seed)} = {spelling['seed']}  # {comment}, times the loss "
            "scale (float32: 2**16 is above float16's largest number)"))
        vg.params.append("scale=1.0")
        vg.doc += ("\n    The loss in float32, the gradients in DTYPE multiplied by scale (the "
                   "seed of backprop).")
    else:
        vg.doc += "\n    The loss in float32, the gradients in DTYPE."
    # batch norm, layer norm: their statistics (batch norm's running ones) and their
    # backward's sums in float32
    float32_statements(m, spelling["cast"], spelling["runtime"])


def constant_lines(m) -> list[str]:
    """The mixed module's constants after the optimizer's (:func:`.mixed.constant_lines`),
    and the names of the loss scaler's state, which the jitted step carries."""
    return constant_lines_of(m, "jnp") + (
        ["SCALER = ('scale', 'good_steps', 'skipped')  # the loss scaler's state keys"]
        if m.scaler else [])


def _master(text: str) -> str:
    """A block reading MASTER (float32) where it reads DTYPE."""
    return re.sub(r"\bDTYPE\b", "MASTER", text)


def blocks(m, runtime_module) -> list[str]:
    """The blocks after the model's functions: initialisation in float32, the optimizer
    (its ``init_state`` renamed ``_optimizer_state`` under the scaler's), the mixed
    ``train_step``, ``reference_value_and_grad`` and ``underflow``."""
    b = m.em.backend
    init = [_master(x) for x in b.init_source(m.plan)]
    if m.scaler:
        opt_state = b.optimizer_source(runtime_module, "init_state").replace(
            "def init_state(", "def _optimizer_state(", 1)
        state = [opt_state, source_of(runtime, "init_state")]
        step = source_of(runtime, "_scaled_update")
    else:
        state = [b.optimizer_source(runtime_module, "init_state")]
        step = source_of(runtime, "_to_master")
    return [*init, *state, b.optimizer_source(runtime_module, "update"), step, _train_step_block(m),
            _reference_block(m), source_of(runtime, "_flushed"), _underflow_block(m)]


def _data(m) -> list[str]:
    return [m.em.namer(n) for n in m.inputs]


def _wrap_doc(doc: str) -> list[str]:
    return textwrap.wrap(doc, 88, initial_indent='    """', subsequent_indent="    ")


def _train_step_block(m) -> str:
    em, data = m.em, _data(m)
    half = HALF[m.precision]
    doc = (f"One {half} training step on the minibatch ({', '.join(data) or 'no data'}): "
           f"forward and backward pass in {half} (value_and_grad casts the float32 master "
           "parameters)")
    if m.scaler:
        doc += (" with the loss multiplied by state['scale'], then one "
                f"{m.opt.title} update of the masters from the gradients unscaled in float32 "
                "(_scaled_update). Inf or nan in the scaled gradients: the step is skipped "
                "(params and the optimizer state as they were) and the scale halved; a nan "
                "or inf loss changes nothing.")
    else:
        doc += (f", then one {m.opt.title} update of the masters from the gradients cast to "
                "float32 (no loss scaling: bfloat16 has float32's exponent range).")
    context = m.context
    running = "running" in context
    doc += (" Returns the loss, the new parameters and the new state"
            + (" and the new running statistics (batch norm)" if running else "")
            + "; nothing changes in place. " + " ".join(em.backend.step_note().split()) + '"""')
    args = m.args(m.functions[1]) + (["scale=state['scale']"] if m.scaler else [])
    args += [f"{c}={c}" for c in context]
    kwargs = [f"{c}={CONTEXT[c]}" for c in context]
    lines = [*em.backend.step_decorators(context),
             f"def train_step(params, state, {', '.join(data + ['lr=LR'] + kwargs)}):",
             *_wrap_doc(doc)]
    if context:  # what they are, and what a skipped step does to them (torch.amp's rule)
        training_mode_doc(lines, context, _CONTEXT_DOC)
    lhs = "loss, grads, running = " if running else "loss, grads = "
    lines += ["    " + ln for ln in call_lines(lhs, "value_and_grad", args)]
    lines += (["    params, state = _scaled_update(params, grads, loss, state, lr)"] if m.scaler
              else ["    params, state = update(params, _to_master(grads), state, lr=lr)"])
    lines += ["    return loss, params, state" + (", running" if running else "")]
    return "\n".join(lines) + "\n"


_CONTEXT_DOC = {
    "running": "running: from init_running() (float32) or the last step's; None: no running "
               "statistics. The new ones are returned even when the step is skipped on "
               "overflow: the forward pass ran (torch.amp's rule).",
    "rng": "rng: a seed or a jax.random key, which draws the dropout masks (those of the "
           "float32 step for the same key): pass a new one every step, such as "
           "jax.random.fold_in(key, step)."}



def _reference_block(m) -> str:
    """``reference_value_and_grad``: value_and_grad computed in float32 (MASTER), the
    reference of ``underflow``."""
    vg = m.functions[1]
    cast = _spelling(m.em.backend)["cast"].format("DTYPE")
    ref = Function("reference_value_and_grad", list(vg.params),
                   "value_and_grad computed in float32 (MASTER): the reference of "
                   "underflow().", [_master(x.replace(_ROUNDED, "").replace(cast, ""))
                                    for x in vg.body], vg.ret,
                   list(vg.decorators))
    return render_function(ref)


def _underflow_block(m) -> str:
    data, half = _data(m), HALF[m.precision]
    args = m.args(m.functions[1])
    lines = [f"def underflow(params, state, {', '.join(data)}):",
             *_wrap_doc(f"Gradient entries that {half} flushes to zero on the minibatch "
                        f"({', '.join(data)}), per trained parameter: (entries, nonzero in "
                        f"float32, of those zero in {half} without loss scaling, zero in "
                        f"{half} with " + ("state['scale'])" if m.scaler else
                                           "no loss scaling either: bfloat16 needs none)")
                        + '. Changes nothing."""')]
    rest = ", _" if returns_running(m.em, m.functions[1]) else ""  # running=None: unchanged
    calls = [(f"_, reference{rest} = ", "reference_value_and_grad", args),
             (f"_, plain{rest} = ", "value_and_grad", args)]
    if m.scaler:
        calls.append((f"_, scaled{rest} = ", "value_and_grad", args + ["scale=state['scale']"]))
    for lhs, f, a in calls:
        lines += ["    " + ln for ln in call_lines(lhs, f, a)]
    if m.scaler:
        lines += ["    return _flushed(reference, plain, scaled)"]
    else:
        lines += ["    return _flushed(reference, plain, plain)"]
    return "\n".join(lines) + "\n"


__all__ = ["HALF", "blocks", "constant_lines", "make_mixed"]
