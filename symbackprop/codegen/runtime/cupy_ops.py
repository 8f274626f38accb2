"""The CuPy versions of the NumPy runtime functions whose NumPy code CuPy cannot run
(the ``cupy`` backend, :mod:`symbackprop.codegen.cupy_backend`).

The cupy module is NumPy's module with ``cp`` for ``np``; these functions replace the
few that use what CuPy arrays lack: ``__array_interface__`` (host memory only: a device
array has ``__cuda_array_interface__``). Generated modules carry their source
(:func:`~symbackprop.codegen.runtime.source`). Here ``cp`` is NumPy, so that this module
imports, and its tests run, on a machine without a GPU: ``np.shares_memory`` and
``cupy.shares_memory`` take the same arguments and mean the same.
"""

from __future__ import annotations

import numpy as cp  # stands in for CuPy here; generated modules import cupy as cp

DTYPE = cp.float64  # the generated module defines its own


def _flat_base(arrays):
    """The flat buffer that the arrays are consecutive views of, in order, or None."""
    first = next(iter(arrays.values()))
    base = getattr(first, "base", None)
    if not isinstance(base, cp.ndarray) or base.ndim != 1 or base.dtype != DTYPE \
            or base.size != sum(a.size for a in arrays.values()):
        return None
    start = 0
    for a in arrays.values():
        # a device array has no host address: a contiguous view of DTYPE whose first
        # entry is base[start] is base[start:start + a.size]
        if getattr(a, "base", None) is not base or not a.flags.c_contiguous or a.size and \
                not cp.shares_memory(a.reshape(-1)[:1], base[start:start + 1]):
            return None
        start += a.size
    return base
