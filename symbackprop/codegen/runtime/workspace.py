"""The workspace of a planned function: the packer that lays out its arena, and the
read-only constant arrays its lowered calls compare against.

Generated modules carry a copy of these functions (:data:`PACK`, :data:`CONSTANT`, made by
:func:`symbackprop.codegen.runtime.source`); this module runs them as they are, so tests
import it. ``DTYPE`` stands for the generated module's own.

Examples
--------
>>> views, flat, named, blocks = _pack([((2, 3), DTYPE, 0, 1, None)], [("w", (3,), 0)])
>>> views[0].shape, flat.size, named["w"].shape
((2, 3), 3, (3,))
"""

from __future__ import annotations

import numpy as np

from . import source

DTYPE = np.float64  # the generated module defines its own

# NumPy's maximum and minimum run vectorized loops against an array but not against a
# number: np.maximum(z, 0) measured 2-3x slower than np.maximum(z, zeros) (1024 x 256
# float32: 140 us against 52; 128 x 256 float64: 14 against 10), so relu compares with a
# read-only array of zeros made once per shape and layout (against a C-ordered array, a
# transposed z runs 4x slower: one strided loop per row).
_CONSTANTS = {}


def _constant(value, like):
    """A read-only array of like's shape, dtype and layout filled with value, made once
    (NumPy's maximum and minimum against it run vectorized; against a number they do not)."""
    order = "F" if np.isfortran(like) else "C"
    key = (value, like.shape, like.dtype, order)
    v = _CONSTANTS.get(key)
    if v is None:
        v = _CONSTANTS[key] = np.full(like.shape, value, like.dtype, order)
        v.flags.writeable = False
    return v


# Where every buffer of a step goes, decided once per batch size when the workspace is
# made (the sizes are known only then). Greedy by size, as static memory planners do
# (TensorFlow Lite's arena planner, XLA's heap simulator): largest first, each at the
# lowest offset where it overlaps no buffer alive at one of its steps.
# The layout is decided there too. OpenBLAS computes a row-major product C = A @ B as the
# column-major C.T = B.T @ A.T, so for a layer's (N, M) result N is its n dimension; a
# result stored transposed, as an (M, N) array seen through .T, makes M the n dimension.
# Measured on 2-core AMD EPYC (OpenBLAS 0.3.31, Haswell kernels) for M = 128, 256 and
# K = 128 to 784: the products ran 10-30% faster (float32 and float64) with the longer of
# N and M as n, and up to 2x slower with the shorter; equal sizes tied. So a buffer with
# a width (a layer at least 128 wide, written only by ufunc calls and np.matmul) is
# stored transposed when the batch is narrower than the layer, and as it is otherwise.
# Every buffer of a layer has the layer's width, so its ufunc calls see one layout: one
# contiguous loop each, and the column of ones of a fold becomes a contiguous row.
def _pack(arrays, grads, blocks=(), align=64):
    """Views of one arena for the arrays of a step. grads: (name, shape, first step
    written) of the gradients, laid out first and consecutive: one flat buffer, so an
    update is one NumPy call. arrays: (shape, dtype, first step, last step, width) of the
    other buffers; an (N, M) array with a width is stored transposed, as an (M, N) array
    seen through .T, when N < width. Two buffers share bytes only if no step uses both;
    an array may lie over a gradient written after its last step. blocks: pairs (w, b) of
    consecutive gradients of shapes (K, M) and (M,), viewed together as one (K + 1, M)
    array [w; b]. Returns (array views, flat gradient buffer, gradient views by name,
    blocks by pair)."""
    itemsize = np.dtype(DTYPE).itemsize
    size = [int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype, *_ in arrays]
    count = [int(np.prod(shape)) for _, shape, _ in grads]
    end = max([a[3] for a in arrays] + [first for *_, first in grads], default=0) + 1
    placed, at = [], 0  # (start byte, end byte, first step, last step)
    for n, (_, _, first) in zip(count, grads):
        placed.append((at, at + n * itemsize, first, end))
        at += n * itemsize
    offset = [0] * len(arrays)
    for i in sorted(range(len(arrays)), key=lambda i: -size[i]):
        _, _, first, last, _ = arrays[i]
        for lo, hi, _, _ in sorted(p for p in placed if p[2] <= last and first <= p[3]):
            if offset[i] + size[i] <= lo:
                break
            offset[i] = max(offset[i], -(-hi // align) * align)
        placed.append((offset[i], offset[i] + size[i], first, last))
    arena = np.empty(max([hi for _, hi, _, _ in placed], default=0), np.uint8)
    views = []
    for o, n, (shape, dtype, _, _, width) in zip(offset, size, arrays):
        view = arena[o:o + n].view(dtype)
        transposed = width is not None and shape[0] < width
        views.append(view.reshape(shape[::-1]).T if transposed else view.reshape(shape))
    flat = arena[:at].view(DTYPE)
    named, starts, start = {}, {}, 0
    for n, (name, shape, _) in zip(count, grads):
        named[name] = flat[start:start + n].reshape(shape)
        starts[name] = start
        start += n
    joined = {(w, b): flat[starts[w]:starts[b] + named[b].size].reshape(-1, named[b].size)
              for w, b in blocks}
    return views, flat, named, joined


# What generated modules carry: the module-level cache, then the function.
CONSTANT = "_CONSTANTS = {}\n\n\n" + source(_constant)
PACK = source(_pack)
