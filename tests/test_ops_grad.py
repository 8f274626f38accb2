"""One gradient-check harness for every registered op (JAX's ``LAX_GRAD_OPS`` style).

``DOMAINS`` says, per op name, how to build valid inputs: shapes (``"N"`` is a
size name, bound to 4), value ranges (``pos`` for log/sqrt, ``away0`` for
relu/abs/div, integer labels) and attributes. For every case the harness
builds ``out = op(a0, a1, ...)`` and ``L = sum(out * C)`` with ``C`` a random
constant input, then checks

(a) the forward value of ``out`` against an independent evaluation: the op's
    SymPy expression (``OpDef.expr``) evaluated by mpmath for elementwise ops,
    a hand-written NumPy reference from the table for the others;
(b) every float argument's gradient from ``value_and_grad`` against central
    finite differences of ``forward`` in float64, entry by entry and as a
    dot-product test ``<v, J^T u>``;
(c) that ``dtype="float32"`` gives float32 results close to float64 ones.

Non-differentiable ops (``differentiable=False``) get the forward check only.
A registered op with no ``DOMAINS`` entry fails ``test_every_op_has_a_domain``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field

import conv_cases  # convolution and pooling cases (issue 13)
import mpmath
import numpy as np
import pytest
import sympy as sp

import symbackprop as sb
from symbackprop.ops.elementwise import X

N = 4  # value of the size name "N"
SEED = 1234

# A user-defined op, declared in one line: it must work like a built-in one.
swish = sb.elementwise("swish", lambda x: x / (1 + sp.exp(-x)))


# -- the table ------------------------------------------------------------------------
@dataclass
class Case:
    """Arguments as ``(shape, kind)``; kind is ``real``, ``pos``, ``away0``, ``small``
    or ``labels:K`` (integers in [0, K))."""

    args: list
    attrs: dict = field(default_factory=dict)
    ref: object = None  # numpy reference ``ref(*arrays, **attrs)``; None: use OpDef.expr
    id: str = ""


def _ew_cases(*kinds) -> list[Case]:
    """Elementwise cases: same shapes, broadcasting (N,3)+(3,), (N,1)*(1,3), scalars."""
    if len(kinds) == 1:
        (k,) = kinds
        return [Case([(("N", 3), k)], id="N3"), Case([((), k)], id="scalar"),
                Case([((2, 1, 3), k)], id="3d")]
    a, b = kinds
    return [Case([(("N", 3), a), (("N", 3), b)], id="same"),
            Case([(("N", 3), a), ((3,), b)], id="N3+3"),
            Case([((3,), a), (("N", 3), b)], id="3+N3"),
            Case([(("N", 1), a), ((1, 3), b)], id="N1*13"),
            Case([((), a), ((2, 3), b)], id="scalar+23")]


def _softmax(x, axis):
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def _xent(logits, labels):
    logp = np.log(_softmax(logits, 1))
    return -np.mean([logp[i, k] for i, k in enumerate(labels)])


def _xent_grad(logits, labels, g, batch):
    return (_softmax(logits, 1) - np.eye(logits.shape[1])[labels]) * g / len(labels)


def _layer_norm(x, eps):
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps)


def _reduce_cases(fn) -> list[Case]:
    cases = []
    for axis in (0, 1, None, -1):
        for keep in (False, True):
            cases.append(Case([(("N", 3), "real")], {"axis": axis, "keepdims": keep},
                              ref=lambda a, axis, keepdims: fn(a, axis=axis, keepdims=keepdims),
                              id=f"axis{axis}-keep{keep}"))
    cases.append(Case([((2, 3, 2), "real")], {"axis": (0, 2), "keepdims": False},
                      ref=lambda a, axis, keepdims: fn(a, axis=axis, keepdims=keepdims),
                      id="axis02"))
    cases.append(Case([((), "real")], {"axis": None, "keepdims": False},
                      ref=lambda a, axis, keepdims: fn(a), id="scalar"))
    return cases


def _transpose_ref(a, axes):
    # written out with einsum so the reference is not the code under test's a.T
    if axes is None:
        return np.einsum("ij->ji", a)
    letters = "ijk"[:a.ndim]
    return np.einsum(f"{letters}->{''.join(letters[i] for i in axes)}", a)


def _batched_matmul_ref(a, b):
    # einsum's ellipsis broadcasts the leading axes; not the code under test's np.matmul
    return np.einsum("...ij,...jk->...ik", a, b)


def _einsum_ref(*xs, spec):
    return np.einsum(spec, *xs, optimize=False)


# spec, operand shapes: products np.matmul computes, and the others np.einsum does
EINSUM_CASES = [
    ("bhqd,bhkd->bhqk", [("N", 2, 3, 4), ("N", 2, 5, 4)]),  # attention scores
    ("bhqk,bhkd->bhqd", [("N", 2, 3, 5), ("N", 2, 5, 4)]),  # weighted sum of values
    ("bhqd,bhqk->bhkd", [(2, 2, 3, 4), (2, 2, 3, 5)]),  # operands in the other order
    ("bij,bjk->bki", [(2, 3, 4), (2, 4, 5)]),  # transposed output
    ("ij,jk->ik", [(3, 4), (4, 2)]),
    ("ij->ji", [(3, 4)]),  # transpose
    ("ijk->i", [(3, 2, 4)]),  # sum
    ("ij,j->i", [(3, 4), (4,)]),  # matrix-vector
    ("i,j->ij", [(3,), (4,)]),  # outer product
    ("ij,ij->", [(3, 4), (3, 4)]),  # full contraction
    ("ijk,jl->il", [(2, 3, 4), (3, 5)]),  # k summed out of one operand alone
    ("nchw,oc->nohw", [("N", 3, 2, 2), (4, 3)]),  # a 1x1 convolution
    ("ij,jk,kl->il", [(2, 3), (3, 4), (4, 2)]),  # three operands
    ("btd,hde->bhte", [(2, 3, 4), (2, 4, 3)]),  # per-head projection
]


def _slice_ref(a, index):
    """x[index] through the positions each entry keeps (range over the axis)."""
    if "..." in index:
        i = index.index("...")
        index = index[:i] + (":",) * (a.ndim - len(index) + 1) + index[i + 1:]
    index = tuple(index) + (":",) * (a.ndim - len(index))
    keep = []
    for e, n in zip(index, a.shape):
        if isinstance(e, int):
            keep.append(e % n)
        else:
            parts = [None if p == "" else int(p) for p in e.split(":")]
            keep.append(list(range(n))[slice(*parts)])
    out = a
    for axis, k in enumerate(keep):  # one axis at a time, ints last so axes stay put
        if not isinstance(k, int):
            out = np.stack([np.take(out, j, axis=axis) for j in k], axis=axis)
    for axis in reversed([i for i, k in enumerate(keep) if isinstance(k, int)]):
        out = np.take(out, keep[axis], axis=axis)
    return out


def _unslice_ref(g, index, shape):
    """Zeros with g at the slice: by brute force, each position of the full array
    compared to the positions the slice keeps."""
    shape = tuple(N if d == "N" else d for d in shape)
    out = np.zeros(shape)
    pos = _slice_ref(np.arange(int(np.prod(shape))).reshape(shape), index)
    for flat, v in zip(pos.ravel(), g.ravel()):
        out.reshape(-1)[flat] = v
    return out


def _take_ref(a, idx, axis):
    out = [np.moveaxis(a, axis, 0)[i] for i in idx.ravel()]
    return np.moveaxis(np.array(out).reshape(idx.shape + out[0].shape), list(range(idx.ndim)),
                       list(range(axis, axis + idx.ndim)))


def _take_grad_ref(g, idx, axis, size):
    """Scatter-add by a Python loop over the index entries."""
    gm = np.moveaxis(g, list(range(axis, axis + idx.ndim)), list(range(idx.ndim)))
    gm = gm.reshape((idx.size,) + gm.shape[idx.ndim:])
    out = np.zeros((size,) + gm.shape[1:])
    for j, i in enumerate(idx.ravel()):
        out[i] += gm[j]
    return np.moveaxis(out, 0, axis)


def _concat_ref(*xs, axis):
    parts = [np.moveaxis(x, axis, 0) for x in xs]
    return np.moveaxis(np.array([row for p in parts for row in p]), 0, axis)


def _stack_ref(*xs, axis):
    return np.moveaxis(np.array(xs), 0, axis)


_ARRAY_DOMAINS: dict[str, list[Case]] = {
    "slice": [Case([(("N", 5), "real")], {"index": (":", "1:3")}, ref=_slice_ref, id="cols"),
              Case([(("N", 5), "real")], {"index": ("...", -1)}, ref=_slice_ref, id="last"),
              Case([((5, 4), "real")], {"index": (0,)}, ref=_slice_ref, id="row0"),
              Case([((6, 3), "real")], {"index": ("::2",)}, ref=_slice_ref, id="step2"),
              Case([((6, 3), "real")], {"index": ("-2::-2", 1)}, ref=_slice_ref,
                   id="negstep"),
              Case([((2, 3, 4), "real")], {"index": (1, "...", "-3:-1")}, ref=_slice_ref,
                   id="3d")],
    "unslice": [Case([(("N", 2), "real")], {"index": (":", "1:3"), "shape": ("N", 5)},
                     ref=_unslice_ref, id="cols"),
                Case([((3,), "real")], {"index": ("::-2", 1), "shape": (6, 3)},
                     ref=_unslice_ref, id="negstep")],
    "concat": [Case([(("N", 2), "real"), (("N", 3), "real")], {"axis": 1}, ref=_concat_ref,
                    id="axis1"),
               Case([((2, 3), "real"), ((1, 3), "real"), ((3, 3), "real")], {"axis": 0},
                    ref=_concat_ref, id="three"),
               Case([((2, 3, 2), "real"), ((2, 3, 1), "real")], {"axis": -1},
                    ref=_concat_ref, id="last")],
    "stack": [Case([(("N", 3), "real"), (("N", 3), "real")], {"axis": 0}, ref=_stack_ref,
                   id="axis0"),
              Case([((2, 3), "real"), ((2, 3), "real"), ((2, 3), "real")], {"axis": -1},
                   ref=_stack_ref, id="last")],
    # labels:3 on 7 or 12 entries: indices repeat, so the scatter-add must accumulate
    "take": [Case([((3, 4), "real"), ((7,), "labels:3")], {"axis": 0}, ref=_take_ref,
                  id="rows-repeated"),
             Case([((2, 3, 4), "real"), ((3, 4), "labels:3")], {"axis": 1}, ref=_take_ref,
                  id="axis1-2d-idx"),
             Case([((4, 3), "real"), (("N", 3), "labels:4")], {"axis": 0}, ref=_take_ref,
                  id="embedding")],
    "take_grad": [Case([((7, 4), "real"), ((7,), "labels:3")], {"axis": 0, "size": 3},
                       ref=_take_grad_ref, id="rows-repeated"),
                  Case([((2, 3, 4, 4), "real"), ((3, 4), "labels:3")], {"axis": 1, "size": 3},
                       ref=_take_grad_ref, id="axis1-2d-idx")],
}


DOMAINS: dict[str, list[Case]] = {
    # elementwise: the reference is OpDef.expr evaluated by mpmath
    "add": _ew_cases("real", "real"),
    "sub": _ew_cases("real", "real"),
    "mul": _ew_cases("real", "real"),
    "div": _ew_cases("real", "away0"),
    "pow": _ew_cases("pos", "real"),
    "neg": _ew_cases("real"),
    "exp": _ew_cases("real"),
    "log": _ew_cases("pos"),
    "sqrt": _ew_cases("pos"),
    "abs": _ew_cases("away0"),
    "sin": _ew_cases("real"),
    "cos": _ew_cases("real"),
    "tanh": _ew_cases("real"),
    "sigmoid": _ew_cases("real"),
    "relu": _ew_cases("away0"),
    "softplus": _ew_cases("real"),
    "square": _ew_cases("real"),
    "swish": _ew_cases("real"),
    "ew": [Case([(("N", 3), "real"), ((3,), "real")], {"expr": X[0] * sp.sin(X[1])},
                id="x0*sin(x1)"),
           Case([(("N", 1), "pos"), ((1, 3), "real"), ((), "real")],
                {"expr": X[0] ** 2 * X[2] - sp.exp(X[1]) / X[0]}, id="3args"),
           Case([(("N", 3), "away0")], {"expr": X[0] * sp.Heaviside(X[0], 0)}, id="heaviside")],
    # structural: hand-written NumPy references
    "identity": [Case([(("N", 3), "real")], ref=lambda a: a.copy()),
                 Case([((), "real")], ref=lambda a: a.copy(), id="scalar")],
    "matmul": [Case([(("N", 3), "real"), ((3, 2), "real")],
                    ref=lambda a, b: np.einsum("ij,jk->ik", a, b), id="N3@32"),
               Case([((1, 5), "real"), ((5, 1), "real")],
                    ref=lambda a, b: np.einsum("ij,jk->ik", a, b), id="inner"),
               # batched (issue 13): leading axes broadcast as NumPy's matmul does
               *[Case([(sa, "real"), (sb_, "real")], ref=_batched_matmul_ref, id=i)
                 for sa, sb_, i in [((2, 1, 3, 4), (5, 4, 6), "2134@546"),
                                    (("N", 2, 3), (3, 4), "N23@34"),
                                    ((3, 4), ("N", 4, 2), "34@N42"),
                                    ((2, 3, 4), (2, 4, 5), "234@245"),
                                    ((1, 3, 2), (4, 2, 3), "132@423")]]],
    "transpose": [Case([(("N", 3), "real")], {"axes": None}, ref=_transpose_ref, id="T"),
                  Case([((2, 3, 4), "real")], {"axes": (1, 0, 2)}, ref=_transpose_ref,
                       id="axes102"),
                  Case([((2, 3, 4), "real")], {"axes": (2, 0, 1)}, ref=_transpose_ref,
                       id="axes201")],
    "sum": _reduce_cases(np.sum),
    "mean": _reduce_cases(np.mean),
    "reshape": [Case([((2, 6), "real")], {"shape": (3, 4)},
                     ref=lambda a, shape: np.array(a.ravel().tolist()).reshape(shape), id="34"),
                Case([((2, 3, 2), "real")], {"shape": (-1,)},
                     ref=lambda a, shape: np.array(a.ravel().tolist()), id="flat"),
                Case([((2, 3, 2), "real")], {"shape": (6, -1)},
                     ref=lambda a, shape: np.array(a.ravel().tolist()).reshape(6, 2), id="6,-1"),
                Case([(("N", 3), "real")], {"shape": ("N", 3, 1)},
                     ref=lambda a, shape: a[:, :, None], id="symbolic")],
    "broadcast_to": [Case([((3,), "real")], {"shape": ("N", 3)},
                          ref=lambda a, shape: np.stack([a] * N), id="3->N3"),
                     Case([(("N", 1), "real")], {"shape": ("N", 3)},
                          ref=lambda a, shape: np.concatenate([a] * 3, axis=1), id="N1->N3"),
                     Case([((), "real")], {"shape": (2, 3)},
                          ref=lambda a, shape: np.full((2, 3), float(a)), id="scalar")],
    "softmax": [Case([(("N", 5), "real")], {"axis": -1}, ref=_softmax, id="last"),
                Case([(("N", 5), "real")], {"axis": 0}, ref=_softmax, id="axis0")],
    "log_softmax": [Case([(("N", 5), "real")], {"axis": -1},
                         ref=lambda a, axis: np.log(_softmax(a, axis)), id="last"),
                    Case([(("N", 5), "real")], {"axis": 0},
                         ref=lambda a, axis: np.log(_softmax(a, axis)), id="axis0")],
    "softmax_cross_entropy": [Case([(("N", 5), "real"), (("N",), "labels:5")], ref=_xent)],
    "softmax_cross_entropy_grad": [Case([(("N", 5), "real"), (("N",), "labels:5"), ((), "real")],
                                        {"batch": "N"}, ref=_xent_grad)],
    "mse": [Case([(("N", 3), "real"), (("N", 3), "real")],
                 ref=lambda a, b: np.mean((a - b) ** 2)),
            Case([((), "real"), ((), "real")], ref=lambda a, b: (a - b) ** 2, id="scalar")],
    "layer_norm": [Case([(("N", 5), "real")], {"eps": 1e-5}, ref=_layer_norm),
                   Case([((2, 3, 4), "real")], {"eps": 0.1}, ref=_layer_norm, id="3d-eps")],
    # products (issue 13): the reference is np.einsum without optimize (the code under
    # test calls np.matmul or np.einsum(..., optimize=True))
    "einsum": [Case([(sh, "real") for sh in shapes], {"spec": spec}, ref=_einsum_ref, id=spec)
               for spec, shapes in EINSUM_CASES],
    # arrays (issue 13): slicing, joining, gathering; references by explicit loops or
    # index arithmetic, not the NumPy calls the generated code makes
    **_ARRAY_DOMAINS,
    # not differentiable: forward only
    "onehot": [Case([(("N",), "labels:5")], {"num": 5},
                    ref=lambda a, num: (a[:, None] == np.arange(num)).astype(float))],
    "argmax": [Case([(("N", 5), "real")], {"axis": -1},
                    ref=lambda a, axis: np.array([int(np.nanargmax(r)) for r in a]), id="last"),
               Case([(("N", 5), "real")], {"axis": 0},
                    ref=lambda a, axis: np.array([int(np.nanargmax(c)) for c in a.T]),
                    id="axis0")],
    # -- convolution and pooling (issue 13): cases and loop references in conv_cases.py
    **conv_cases.domains(Case),
}

# -- selecting ops (issue 13): tests/test_select.py has their ties, bounds and errors --------
def _lse(a, axis, keepdims):  # naive: fine for the harness's values in [-1.5, 1.5]
    return np.log(np.sum(np.exp(a), axis=axis, keepdims=keepdims))


def _clip_ref(a, lo, hi):
    return np.array([min(max(v, -np.inf if lo is None else lo), np.inf if hi is None else hi)
                     for v in np.ravel(a)]).reshape(np.shape(a))


def _cmp_cases(rel):
    return [Case(c.args, ref=lambda a, b: rel(*np.broadcast_arrays(a, b)).astype(float), id=c.id)
            for c in _ew_cases("real", "real")]


DOMAINS.update({
    "maximum": _ew_cases("real", "real"),
    "minimum": _ew_cases("real", "real"),
    "greater": _cmp_cases(np.greater),
    "less": _cmp_cases(np.less),
    "greater_equal": _cmp_cases(np.greater_equal),
    "less_equal": _cmp_cases(np.less_equal),
    "where": [Case([(("N", 3), "labels:2"), (("N", 3), "real"), (("N", 3), "real")],
                   ref=lambda c, a, b: np.array([x if k else y for k, x, y in zip(
                       c.ravel(), a.ravel(), b.ravel())]).reshape(c.shape), id="same"),
              Case([(("N", 1), "labels:2"), ((3,), "real"), ((), "real")],
                   ref=lambda c, a, b: np.select([np.broadcast_to(c, (N, 3)) != 0],
                                                 [np.broadcast_to(a, (N, 3))], b), id="bcast")],
    "clip": [Case([(("N", 3), "real")], {"lo": -0.5, "hi": 0.7}, ref=_clip_ref, id="both"),
             Case([((2, 1, 3), "real")], {"lo": 0, "hi": None}, ref=_clip_ref, id="lo"),
             Case([((), "real")], {"lo": None, "hi": 0.25}, ref=_clip_ref, id="hi-scalar")],
    "max": _reduce_cases(np.max),
    "min": _reduce_cases(np.min),
    "logsumexp": [Case(c.args, c.attrs, ref=lambda a, axis, keepdims: _lse(a, axis, keepdims),
                       id=c.id) for c in _reduce_cases(np.sum)],
    "var": _reduce_cases(lambda a, axis=None, keepdims=False: np.mean(
        (a - np.mean(a, axis=axis, keepdims=True)) ** 2, axis=axis, keepdims=keepdims)),
    "std": _reduce_cases(lambda a, axis=None, keepdims=False: np.sqrt(np.mean(
        (a - np.mean(a, axis=axis, keepdims=True)) ** 2, axis=axis, keepdims=keepdims))),
})


# -- normalization and dropout (issue 13): tests/test_norm.py has their modes and errors ------
def _batch_norm_ref(x, axis):
    """Per feature of axis, by a loop over the features: (x - mean) / sqrt(var + 1e-5)."""
    xs = np.moveaxis(x, axis, 0)
    out = np.empty_like(xs)
    for c in range(len(xs)):
        v = xs[c]
        out[c] = (v - v.sum() / v.size) / np.sqrt(((v - v.sum() / v.size) ** 2).sum() / v.size
                                                   + 1e-5)
    return np.moveaxis(out, 0, axis)


def _mask_ref(a, p):
    """The mask of the seed-0 generator, which every generated function uses by default."""
    u = np.random.default_rng(0).random(a.shape)
    return np.where(u >= p, 1 / (1 - p), 0.0)


DOMAINS.update({
    "batch_norm": [Case([(("N", 3), "real")], {"axis": 1}, ref=_batch_norm_ref, id="ND"),
                   Case([(("N", 3, 2, 3), "real")], {"axis": 1}, ref=_batch_norm_ref,
                        id="NCHW"),
                   Case([((2, 3, 5), "real")], {"axis": -1}, ref=_batch_norm_ref, id="last")],
    "dropout_mask": [Case([(("N", 5), "real")], {"p": 0.25}, ref=_mask_ref, id="p0.25"),
                     Case([((2, 3, 4), "real")], {"p": 0.0}, ref=_mask_ref, id="p0")],
})


def _value(shape, kind, rng):
    shape = tuple(N if d == "N" else d for d in shape)
    if kind.startswith("labels:"):
        return rng.integers(0, int(kind.split(":")[1]), size=shape)
    if kind == "real":
        return rng.uniform(-1.5, 1.5, size=shape)
    if kind == "pos":
        return rng.uniform(0.5, 2.0, size=shape)
    if kind == "away0":
        return rng.choice([-1.0, 1.0], size=shape) * rng.uniform(0.3, 1.5, size=shape)
    raise ValueError(kind)


# -- building and evaluating one case -----------------------------------------------------
@dataclass
class Built:
    graph: sb.Graph
    arrays: dict
    wrt: list
    opdef: sb.ops.OpDef


def build(name: str, case: Case, seed: int = SEED) -> Built:
    """``out = op(a0, ...)`` and ``L = sum(out * C)`` (or, for an op with no
    derivative, an unrelated loss ``L = sum(p * p)``) with random arrays."""
    rng = np.random.default_rng(seed)
    opdef = sb.ops.get(name)
    g = sb.Graph(name=f"case_{name}")
    args, arrays, wrt = [], {}, []
    for i, (shape, kind) in enumerate(case.args):
        is_int = kind.startswith("labels:")
        args.append(g.input(f"a{i}", shape=shape, dtype="int" if is_int else "float"))
        arrays[f"a{i}"] = _value(shape, kind, rng)
        if not is_int:
            wrt.append(f"a{i}")
    out = g.output("out", g.apply(name, args, dict(case.attrs)))
    if opdef.differentiable:
        C = g.input("C", shape=out.shape)
        arrays["C"] = _value(out.shape, "real", rng)
    else:
        p = g.param("p", shape=(2,))
        arrays["p"] = _value((2,), "real", rng)
        wrt = ["p"]
    g.output("L", sb.sum(C * out if opdef.differentiable else p * p))
    return Built(g, arrays, wrt, opdef)


_COMPILED: dict = {}


def compiled(name: str, case: Case, dtype: str = "float64", optimize=True):
    """``build`` and ``sb.compile`` once per case, dtype and optimize (tests share them)."""
    key = (name, id(case), dtype, optimize)
    if key not in _COMPILED:
        b = build(name, case)
        _COMPILED[key] = b, sb.compile(b.graph, of="L", wrt=b.wrt, dtype=dtype,
                                       optimize=optimize)
    return _COMPILED[key]


def reference(name: str, case: Case, arrays: dict) -> np.ndarray:
    """The expected ``out``, computed without the code under test."""
    vals = [arrays[f"a{i}"] for i in range(len(case.args))]
    if case.ref is not None:
        return np.asarray(case.ref(*vals, **case.attrs), dtype=float)
    syms, expr = sb.ops.get(name).expr(case.attrs)
    with mpmath.workdps(30):  # mpmath, not NumPy: independent of the NumPy printer
        f = sp.lambdify(syms, expr, modules="mpmath")
        return np.vectorize(lambda *xs: float(f(*map(mpmath.mpf, xs))), otypes=[float])(*vals)


def cases():
    for op in sb.ops.all_ops():
        for k, case in enumerate(DOMAINS.get(op.name, [])):
            yield pytest.param(op.name, case, id=f"{op.name}-{case.id or k}")


ALL_CASES = list(cases())


# -- the harness ----------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "case"), ALL_CASES)
def test_forward_matches_reference(name, case):
    b, fn = compiled(name, case)
    got = fn.forward(**b.arrays)["out"]
    want = reference(name, case, b.arrays)
    assert np.shape(got) == want.shape
    if b.graph.nx.nodes["out"]["dtype"] == "int":
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("optimize", [True, False], ids=["optimized", "raw"])
@pytest.mark.parametrize(("name", "case"), ALL_CASES)
def test_gradient_matches_finite_differences(name, case, optimize):
    """With the optimization passes (what users get) and without (autodiff as built)."""
    b, fn = compiled(name, case, optimize=optimize)
    if not b.opdef.differentiable:
        pytest.skip(f"{name} is not differentiable (forward-only check)")
    loss, grads = fn.value_and_grad(**b.arrays)
    assert sorted(grads) == sorted(b.wrt)
    assert float(loss) == pytest.approx(float(fn.forward(**b.arrays)["L"]), rel=1e-14, abs=1e-14)

    def L(**changed):
        return float(fn.forward(**{**b.arrays, **changed})["L"])

    eps = 1e-5
    rng = np.random.default_rng(SEED + 1)
    for w in b.wrt:
        x = np.asarray(b.arrays[w], dtype=float)
        gw = np.asarray(grads[w])
        assert gw.shape == x.shape, f"d{w} has shape {gw.shape}, {w} has {x.shape}"
        fd = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            xp, xm = x.copy(), x.copy()
            xp[idx] += eps
            xm[idx] -= eps
            fd[idx] = (L(**{w: xp}) - L(**{w: xm})) / (2 * eps)
        scale = max(1.0, float(np.abs(fd).max()))
        np.testing.assert_allclose(gw, fd, rtol=1e-6, atol=1e-7 * scale,
                                   err_msg=f"dL/d{w} of op {name}")
        # dot-product test: <v, J^T u> against the directional difference along v
        v = rng.standard_normal(x.shape)
        directional = (L(**{w: x + eps * v}) - L(**{w: x - eps * v})) / (2 * eps)
        assert float(np.sum(v * gw)) == pytest.approx(
            directional, rel=1e-6, abs=1e-7 * scale * max(1.0, float(np.abs(v).sum())))


@pytest.mark.parametrize(("name", "case"), ALL_CASES)
def test_float32_stays_float32(name, case):
    b, f64 = compiled(name, case)
    _, f32 = compiled(name, case, "float32")
    out32, out64 = f32.forward(**b.arrays)["out"], f64.forward(**b.arrays)["out"]
    if b.graph.nx.nodes["out"]["dtype"] == "float":
        assert np.asarray(out32).dtype == np.float32, f"forward of {name} upcast"
        np.testing.assert_allclose(out32, out64, rtol=1e-4, atol=1e-5)
    else:
        np.testing.assert_array_equal(out32, out64)
    (l32, g32), (l64, g64) = f32.value_and_grad(**b.arrays), f64.value_and_grad(**b.arrays)
    assert isinstance(l32, (np.ndarray, np.generic)) and l32.dtype == np.float32
    assert float(l32) == pytest.approx(float(l64), rel=1e-4, abs=1e-4)
    for w in b.wrt:
        assert isinstance(g32[w], (np.ndarray, np.generic)), f"d{w} is {type(g32[w])}"
        assert g32[w].dtype == np.float32, f"d{w} of {name} is {g32[w].dtype}"
        scale = max(1.0, float(np.abs(g64[w]).max()))
        np.testing.assert_allclose(g32[w], g64[w], rtol=1e-4, atol=1e-5 * scale)


def test_every_op_has_a_domain():
    """Adding an op without a DOMAINS entry fails here. Checked in a fresh
    interpreter, so the built-in set is exactly what ``import symbackprop`` registers,
    and in this process, for ops registered since (``swish`` above)."""
    code = "import json, symbackprop as sb; print(json.dumps([o.name for o in sb.ops.all_ops()]))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    builtin = json.loads(res.stdout)
    assert len(builtin) >= 30
    names = set(builtin) | {op.name for op in sb.ops.all_ops()}
    missing = sorted(n for n in names if n not in DOMAINS)
    assert not missing, f"ops with no DOMAINS entry in tests/test_ops_grad.py: {missing}"
    stale = sorted(set(DOMAINS) - names)
    assert not stale, f"DOMAINS entries for ops that are not registered: {stale}"


def test_non_differentiable_ops_are_declared_so():
    nondiff = {op.name for op in sb.ops.all_ops() if not op.differentiable}
    assert {"argmax", "onehot"} <= nondiff
    for name in nondiff:
        assert sb.ops.get(name).vjp is None


# -- user-defined ops and derivatives through the output ---------------------------------------
def test_user_defined_swish_works_like_relu():
    g = sb.Graph()
    X_ = g.input("X", shape=("N", 3))
    W = g.param("W", shape=(3, 2))
    h = swish(X_ @ W)
    assert h.op == "swish" and h.shape == ("N", 2)
    g.output("L", sb.mean(h * h))
    report = sb.check_grad(g, sizes={"N": 5})
    assert report.ok, str(report)
    # the same network with sb.relu in its place builds the same structure
    g2 = sb.Graph()
    h2 = sb.relu(g2.input("X", shape=("N", 3)) @ g2.param("W", shape=(3, 2)))
    assert h2.shape == h.shape
    assert "swish" in {op.name for op in sb.ops.all_ops()}
    src = sb.numpy_source(g)
    assert "np.exp" in src


def test_swish_gradient_against_finite_differences():
    g = sb.Graph()
    z = g.param("z", shape=(7,))
    g.output("L", sb.sum(swish(z)))
    zs = np.linspace(-3, 3, 7)
    fn = sb.compile(g)
    _, grads = fn.value_and_grad(z=zs)
    s = 1 / (1 + np.exp(-zs))
    np.testing.assert_allclose(grads["z"], s + zs * s * (1 - s), rtol=1e-12)
    eps = 1e-6
    fd = [(fn.forward(z=zs + eps * e)["L"] - fn.forward(z=zs - eps * e)["L"]) / (2 * eps)
          for e in np.eye(7)]
    np.testing.assert_allclose(grads["z"], fd, rtol=1e-7)


Y = sp.Symbol("y", real=True)


def test_derivatives_are_rewritten_through_the_output():
    get = sb.ops.get
    assert get("sigmoid").local_grads({}) == [Y * (1 - Y)]
    assert get("tanh").local_grads({}) == [1 - Y ** 2]
    assert get("exp").local_grads({}) == [Y]
    assert get("relu").local_grads({}) == [sp.Heaviside(Y, 0)]
    for name in ("sigmoid", "tanh", "exp"):
        assert X[0] not in get(name).local_grads({})[0].free_symbols


def test_nonsmooth_points_relu_and_abs_have_zero_derivative_at_zero():
    for op in (sb.relu, sb.abs):
        g = sb.Graph()
        x = g.param("x", shape=(3,))
        g.output("L", sb.sum(op(x)))
        _, grads = sb.compile(g).value_and_grad(x=np.array([0.0, -2.0, 3.0]))
        want = [0.0, 0.0, 1.0] if op is sb.relu else [0.0, -1.0, 1.0]
        np.testing.assert_array_equal(grads["x"], want)
    assert get_relu_grad_at(0.0) == 0


def get_relu_grad_at(v: float) -> float:
    d = sb.ops.get("relu").local_grads({})[0]
    return float(d.subs(Y, v))
