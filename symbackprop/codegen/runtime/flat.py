"""Flat buffers: parameters, gradients and optimizer state as views of one array each.

An optimizer rule then updates every parameter in one NumPy call. Generated
training modules copy these functions (:func:`~symbackprop.codegen.runtime.source_of`);
``init_params`` and ``init_state`` return their arrays as :func:`flat_views`, and
``train_step``'s fast path finds (or makes) the flat buffers with :func:`_flat`. The
globals below stand in for the ones a generated module defines.
"""

import numpy as np

DTYPE = np.float64
TRAINED = ()  # the parameters train_step updates
FOLDED = ()  # layers with the bias in the product


def flat_views(arrays):
    """The arrays copied into one flat DTYPE buffer, returned as views of it (same keys
    and shapes). An optimizer rule then updates every parameter in one NumPy call."""
    flat = np.empty(sum(np.size(a) for a in arrays.values()), dtype=DTYPE)
    views, start = {}, 0
    for name, a in arrays.items():
        views[name] = flat[start:start + np.size(a)].reshape(np.shape(a))
        views[name][...] = a
        start += np.size(a)
    return views


# train_step's fast path: parameters, gradients and optimizer state each live in one flat
# buffer (init_params and init_state already make them so; other arrays are copied into
# one on the first step, and params/state then hold views of it).
_FLAT = {}


def _flat_base(arrays):
    """The flat buffer that the arrays are consecutive views of, in order, or None."""
    first = next(iter(arrays.values()))
    base = getattr(first, "base", None)
    if not isinstance(base, np.ndarray) or base.ndim != 1 or base.dtype != DTYPE \
            or base.size != sum(np.size(a) for a in arrays.values()):
        return None
    address = base.__array_interface__["data"][0]
    for a in arrays.values():
        if getattr(a, "base", None) is not base or not a.flags.c_contiguous \
                or a.__array_interface__["data"][0] != address:
            return None
        address += a.nbytes
    return base


def _flat(params, state):
    """The trained parameters and the optimizer state as views of flat buffers; made on
    the first call, remade only when other arrays are passed."""
    f = _FLAT.get("f")
    boxes = [params, *[v for v in state.values() if type(v) is dict]] if state else [params]
    # the same dicts holding the same arrays (ids stay unique: f keeps the arrays alive);
    # this runs every step, so it touches as few objects as it can
    ids = [id(a) for box in boxes for a in map(box.__getitem__, TRAINED)]
    if f is not None and f["params"] is params and f["state"] is state and ids == f["ids"]:
        return f
    for box in boxes:  # arrays that are not yet views of one flat buffer are copied into one
        if _flat_base({name: box[name] for name in TRAINED}) is None:
            box.update(flat_views({name: box[name] for name in TRAINED}))
    f = _FLAT["f"] = {
        "params": params, "state": state,
        "views": [[box[name] for name in TRAINED] for box in boxes],
        "ids": [id(box[name]) for box in boxes for name in TRAINED],
        "P": _flat_base({name: params[name] for name in TRAINED}),
        "S": {k: _flat_base({name: v[name] for name in TRAINED})
              for k, v in state.items() if type(v) is dict},
    }
    if FOLDED:  # variant: folded
        start, at = 0, {}
        for name in TRAINED:
            at[name], start = start, start + np.size(params[name])
        for w, b in FOLDED:  # [W; b]: the bias rides in the product [h, 1] @ [W; b]
            f[w, b] = f["P"][at[w]:at[b] + np.size(params[b])].reshape(-1, np.size(params[b]))
    return f
