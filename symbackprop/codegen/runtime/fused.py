"""The fused update (``fuse_update=True``): the optimizer's rule applied in the backward
sweep, one part at a time, as soon as a part's gradient is final.

A *part* is a parameter, or a layer whose bias rides in the product (``[W; b]``, see
``FOLDED``). The planned function (``loss_and_update``) calls :func:`_fused` right after
the step that makes a part's gradient final and nothing reads its parameters any more;
the gradient lives in the workspace until then, and its bytes then serve later steps, so
no flat gradient buffer is kept to the end of the step. The rule (``_update_part`` of
:mod:`.optimizers`) does on the part's views of the flat buffers (from where it starts,
``flat["parts"][key]``) what ``_update_flat`` does on the whole buffers: the same NumPy
calls in the same order, so the parameters and state come out bit for bit as the default
step's.

Non-finite values: the loss is checked before any part is updated (a nan/inf loss
changes nothing, and train_step raises as the default step does); a part whose gradient
holds nan or inf is not updated and is listed in ``flat["skipped"]``; the parts updated
before it in the sweep (and after it) stay updated: undoing them would need the
gradients kept. train_step then raises :func:`_partial_step`'s error.

Generated modules copy these functions; the globals below stand in for theirs.
"""

import math

import numpy as np

DTYPE = np.float64
TRAINED = ()  # the parameters train_step updates
PARTS = ()  # the parts of the fused update: one parameter, or a folded layer's (W, b)
SCRATCH = 0  # scratch arrays the optimizer's rule needs, each the size of the largest part


def _update_part(flat, at, g, state, lr):
    """Stands in for the optimizer's rule on one part (a generated module copies the
    optimizer's own): SGD, w <- w - lr * g."""
    w = flat["P"][at:at + g.size].reshape(g.shape)
    tmp = flat["scratch"][0][:g.size].reshape(g.shape)
    np.multiply(g, lr, out=tmp)
    w -= tmp


def _parts(flat):
    """Where each part starts in the flat buffers (its gradient gives its size and shape),
    worked out once per set of flat buffers and kept in flat with the rule's scratch;
    clears the list of parts skipped by this step."""
    if "parts" not in flat:
        at, start = {}, 0
        for name, w in zip(TRAINED, flat["views"][0]):
            at[name], start = start, start + w.size
        ends = dict(zip(TRAINED, [*list(at.values())[1:], start]))
        flat["parts"] = {key[0] if len(key) == 1 else key: at[key[0]] for key in PARTS}
        size = max([ends[key[-1]] - at[key[0]] for key in PARTS], default=0)
        flat["scratch"] = np.empty((SCRATCH, size), dtype=DTYPE)  # for every part: made once
    flat["skipped"] = []


def _fused(flat, key, g, state, lr):
    """The optimizer's rule on part key, whose gradient g has just become final; a g
    holding nan or inf is not applied: the part is listed in flat["skipped"] instead."""
    g = np.asarray(g)  # (a NumPy scalar, for a parameter of shape ())
    # one BLAS call screens g (a square can overflow: the exact test decides then)
    if not math.isfinite(np.vdot(g, g)) and not np.isfinite(g).all():
        flat["skipped"].append(key)
        return
    # the rule makes the part's views of the flat buffers from where it starts: views kept
    # for every part would cost more memory than the call saves time
    _update_part(flat, flat["parts"][key], g, state, lr)


def _partial_step(flat, loss):
    """The error train_step raises after a step that skipped parts: a FloatingPointError
    naming them, with .skipped (parameter names), .updated and .loss."""
    skipped = [w for key in flat["skipped"] for w in ((key,) if type(key) is str else key)]
    updated = [w for w in TRAINED if w not in skipped]
    e = FloatingPointError(
        f"partial step (fused update): the gradient of {', '.join(skipped)} holds nan or inf "
        f"and was not applied; the update of {', '.join(updated) or 'no other parameter'} "
        f"in the same backward sweep stands (loss {float(loss)})")
    e.skipped, e.updated, e.loss = skipped, updated, float(loss)
    return e
