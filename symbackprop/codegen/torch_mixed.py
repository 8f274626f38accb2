"""Mixed precision for the torch training module (``precision="mixed"`` or ``"bfloat16"``
with ``backend="torch"``; issue 15).

NumPy's plan (:mod:`~symbackprop.codegen.mixed`, docs/training.md "Mixed precision")
with JAX's rewrite of the model (:func:`~symbackprop.codegen.jax_mixed.make_mixed`:
``DTYPE`` the half dtype, the loss and its own gradient in float32 through
``_in_float32``, the seed of backprop the loss scale), spelled for torch
(:data:`~symbackprop.codegen.torch_backend.TorchBackend.mixed_spelling`), and torch's
in-place step: float32 master parameters (``MASTER``) and optimizer state changed in
place by the float32 module's ``update``; ``value_and_grad`` casts the masters to
``DTYPE`` in its first lines. float16: ``_scaled_update``
(:mod:`~symbackprop.codegen.runtime.torch_mixed`) applies ``torch.amp.GradScaler``'s
rules, the scaler's state in the state dict. bfloat16: no loss scale
(``_master_update``).
"""

from __future__ import annotations

import re
import textwrap

from .emit import call_lines
from .jax_mixed import HALF, _reference_block, _underflow_block
from .lowering import CONTEXT
from .mixed import training_mode_doc
from .runtime import source_of, torch_mixed, torch_script


def _master(text: str) -> str:
    """A block reading MASTER (float32) where it reads DTYPE."""
    return re.sub(r"\bDTYPE\b", "MASTER", text)


def blocks(m, init: list[str], runtime_module) -> list[str]:
    """The blocks after the model's functions: ``init`` (the float32 module's
    initialisation) on MASTER, the optimizer (its ``init_state`` renamed
    ``_optimizer_state`` under the scaler's), ``check_finite``, the update rule, the mixed
    ``train_step``, ``reference_value_and_grad`` and ``underflow``."""
    init = [_master(x) for x in init]
    if m.scaler:
        state = [source_of(runtime_module, "init_state").replace(
            "def init_state(", "def _optimizer_state(", 1), source_of(torch_mixed, "init_state")]
        rule = source_of(torch_mixed, "_screen", "_scaled_update")
    else:
        state = [source_of(runtime_module, "init_state")]
        rule = source_of(torch_mixed, "_screen", "_master_update")
    return [*init, *state, source_of(runtime_module, "update"),
            source_of(torch_script, "check_finite"), rule, _train_step_block(m),
            _reference_block(m), source_of(torch_mixed, "_flushed"), _underflow_block(m)]


def _train_step_block(m) -> str:
    data = [m.em.namer(n) for n in m.inputs]
    half = HALF[m.precision]
    doc = (f"One {half} training step on the minibatch ({', '.join(data) or 'no data'}): "
           f"forward and backward pass in {half} (value_and_grad casts the float32 master "
           "parameters)")
    if m.scaler:
        doc += (" with the loss multiplied by state['scale'], then one "
                f"{m.opt.title} update of the masters from the gradients unscaled in float32 "
                "(_scaled_update). Inf or nan in the scaled gradients: the step is skipped "
                "(params and the optimizer state untouched) and the scale halved.")
    else:
        doc += (f", then one {m.opt.title} update of the masters from the gradients cast to "
                "float32 (no loss scaling: bfloat16 has float32's exponent range).")
    doc += (" params and state change in place. Returns the loss. Raises FloatingPointError, "
            "before changing anything, when the loss is nan or inf" +
            ("." if m.scaler else " or a gradient is.") + '"""')
    context = m.context
    args = m.args(m.functions[1]) + (["scale=state['scale']"] if m.scaler else [])
    args += [f"{c}={c}" for c in context]
    rule = "_scaled_update" if m.scaler else "_master_update"
    kwargs = [f"{c}={CONTEXT[c]}" for c in context]
    lines = ["@torch.inference_mode()",
             f"def train_step(params, state, {', '.join(data + ['lr=LR'] + kwargs)}):",
             *textwrap.wrap(doc, 88, initial_indent='    """', subsequent_indent="    ")]
    if context:  # what they are, and what a skipped step does to them (torch.amp's rule)
        text = {"running": "running: from init_running(device) (float32), updated in place by "
                           "the forward pass, even when the step is skipped on overflow or "
                           "raises (the forward pass ran: torch.amp's rule).",
                "rng": "rng: a seed or a torch.Generator, which draws the dropout masks (pass "
                       "one Generator to every step; a seed makes a CPU generator): the "
                       "float32 step's masks, drawn on a skipped step too."}
        training_mode_doc(lines, context, text)
    lines += ["    " + ln for ln in call_lines("loss, grads = ", "value_and_grad", args)]
    lines += [f"    return {rule}(params, grads, loss, state, lr)"]
    return "\n".join(lines) + "\n"


__all__ = ["blocks"]
