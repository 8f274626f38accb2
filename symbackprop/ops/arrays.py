"""Array ops: slicing, concatenation, stacking, splitting and gathering.

* ``x[i]``, ``x[a:b]``, ``x[:, 1:3]``, ``x[..., -1]``, ``x[::2]``: op ``slice`` with static
  bounds. Its attribute ``index`` is the *normalised* index, one entry per axis of the
  argument: an ``int`` selects one position (and drops the axis), a string is a slice
  written as Python writes it (``":"``, ``"1:3"``, ``"::2"``, ``"::-1"``). Strings keep
  the index JSON-serialisable and hashable, so saved graphs load back the same.
  Its VJP is ``unslice``: the gradient scattered into zeros of the argument's shape
  (a zero-padded δ), whose own VJP is the slice again.
* ``sb.concat(xs, axis)``, ``sb.stack(xs, axis)``: VJPs are slices of δ.
* ``sb.split(x, sections, axis)``: not an op but a list of ``slice`` nodes, one per part.
* ``sb.take(x, idx, axis=0)`` with an integer ``idx``, and ``sb.embedding(ids, E)``
  (``take(E, ids, axis=0)``): the VJP is ``take_grad``, a scatter-add (repeated indices
  accumulate), whose own VJP is ``take`` again.

How NumPy computes these is :mod:`symbackprop.codegen.lowering`.
"""

from __future__ import annotations

import itertools
import math

import sympy as sp

from .. import sizes
from .registry import OpDef, ShapeMismatch, apply, moves_data, per_entry, register
from .tensor import norm_axes


def _apply(ref, op, args, **attrs):
    return ref.graph.apply(op, list(args), attrs)


# -- indices ----------------------------------------------------------------------------
def _slice_text(start, stop, step) -> str:
    """A slice as Python writes it: ``":"``, ``"1:3"``, ``"::2"``, ``"-3:"``."""
    s = "" if start is None else str(start)
    e = "" if stop is None else str(stop)
    return f"{s}:{e}" + ("" if step == 1 else f":{step}")


def _parse_slice(text: str):
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise ShapeMismatch(f"index entry {text!r} is not a slice 'start:stop:step'",
                            "Write slices as '1:3', '::2' or ':'.")
    try:
        vals = [None if p.strip() == "" else int(p) for p in parts]
    except ValueError:
        raise ShapeMismatch(f"index entry {text!r} has bounds that are not integers",
                            "Slice with integer bounds only.") from None
    start, stop = vals[0], vals[1]
    step = 1 if len(vals) == 2 or vals[2] is None else vals[2]
    if step == 0:
        raise ShapeMismatch("slice step 0", "Use a non-zero step.")
    return start, stop, step


def index_entries(key) -> tuple:
    """A Python index (``x[...]``'s key) as stored entries: ints, slice strings and
    ``"..."``; anything else (arrays, ``None``, floats) is refused.

    Examples
    --------
    >>> index_entries((slice(None), slice(1, 3)))
    (':', '1:3')
    >>> index_entries((Ellipsis, -1))
    ('...', -1)
    """
    key = key if isinstance(key, tuple) else (key,)
    out = []
    for k in key:
        if isinstance(k, bool) or not isinstance(k, (int, slice, type(Ellipsis), str)):
            raise TypeError(
                f"cannot index a node with {k!r}: only integers, slices with integer bounds "
                "and ... are static indices. Gather with sb.take(x, idx, axis) for an "
                "integer index node, and add axes with sb.reshape.")
        if isinstance(k, slice):
            for b in (k.start, k.stop, k.step):
                if b is not None and (isinstance(b, bool) or not isinstance(b, int)):
                    raise TypeError(f"slice bound {b!r} is not an integer: slices of nodes "
                                    "need static integer bounds.")
            out.append(_slice_text(k.start, k.stop, 1 if k.step is None else k.step))
        elif k is Ellipsis:
            out.append("...")
        else:
            out.append(k)
    return tuple(out)


def normalize_index(entries, shape) -> tuple:
    """The normal form of an index on an array of ``shape``: one entry per axis, ints
    non-negative where the axis size is known, slices canonical (``"0:3"`` on an axis of
    3 is ``":"``). Raises :class:`ShapeMismatch` for an index out of bounds (naming the
    axis, its size and the index), a slice past the end, or too many indices.

    Examples
    --------
    >>> normalize_index(("...", -1), (2, 3))
    (':', 2)
    >>> normalize_index(("0:3:1",), (3, 4))
    (':', ':')
    >>> normalize_index(("::-1", 1), ("N", 4))
    ('::-1', 1)
    """
    if isinstance(entries, (int, str)):
        entries = (entries,)
    entries = tuple(entries)
    if sum(e == "..." for e in entries) > 1:
        raise ShapeMismatch("the index has more than one '...'", "Use at most one '...'.")
    used = sum(e != "..." for e in entries)
    if used > len(shape):
        raise ShapeMismatch(f"{used} indices for {len(shape)} dimension(s)",
                            f"Index at most {len(shape)} axes.")
    if "..." in entries:
        i = entries.index("...")
        entries = entries[:i] + (":",) * (len(shape) - used) + entries[i + 1:]
    entries = entries + (":",) * (len(shape) - len(entries))
    out = []
    for axis, (e, n) in enumerate(zip(entries, shape)):
        if isinstance(e, bool) or not isinstance(e, (int, str)):
            raise ShapeMismatch(f"index entry {e!r} on axis {axis} is neither an int nor a "
                                "slice", "Index with integers and slices such as '1:3'.")
        if isinstance(e, int):
            if isinstance(n, int):
                if not -n <= e < n:
                    raise ShapeMismatch(
                        f"index {e} is out of bounds for axis {axis} of size {n}",
                        f"Use an index between {-n} and {n - 1}.")
                e %= n
            out.append(e)
            continue
        start, stop, step = _parse_slice(e)
        if isinstance(n, int):
            for b in (start, stop):
                if b is not None and not -n <= b <= n:
                    raise ShapeMismatch(
                        f"slice {e!r} is out of bounds for axis {axis} of size {n} "
                        f"(bound {b})", f"Keep slice bounds between {-n} and {n}.")
            start, stop, step = slice(start, stop, step).indices(n)
            if step > 0:
                start = None if start == 0 else start
                stop = None if stop >= n else stop
            else:
                start = None if start == n - 1 else start
                stop = None if stop < 0 else stop
        out.append(_slice_text(start, stop, step))
    return tuple(out)


def _axis_length(text: str, n, axis: int):
    """The length of slice ``text`` on an axis of size ``n`` (an int, or a size name when
    the slice's length does not depend on it)."""
    start, stop, step = _parse_slice(text)
    if isinstance(n, int):
        return len(range(*slice(start, stop, step).indices(n)))
    if (start, stop) == (None, None) and step in (1, -1):
        return n
    if step > 0 and start is not None and stop is not None and (start >= 0) == (stop >= 0):
        return max(0, -(-(stop - start) // step))
    if step > 0 and start is None and stop is not None and stop >= 0:
        return -(-stop // step)
    if step > 0 and stop is None and start is not None and start < 0:
        return -(start // step)
    # The length depends on n: an expression in it (x[1:] is n - 1, x[::2] is (n + 1)//2),
    # assuming n is at least as large as the bounds (a bound past the end would clip).
    m = sizes.to_sympy(n)

    def at(b, default):
        return default if b is None else (m + b if b < 0 else sp.Integer(b))
    if step > 0:
        lo, hi = at(start, sp.Integer(0)), at(stop, m)
    else:
        lo, hi = at(stop, sp.Integer(-1)), at(start, m - 1)
    try:
        return sizes.from_sympy((hi - lo + abs(step) - 1) // abs(step))
    except ValueError:
        raise ShapeMismatch(
            f"slice {text!r} of axis {axis}, of symbolic size {n}, has a length that "
            f"depends on {n}", f"Slice axis {axis} fully (':'), with bounds of one sign "
            "('1:3', '-3:'), or give it a fixed size.") from None


def _slice_shape(shapes, attrs, names):
    s = tuple(shapes[0])
    index = normalize_index(attrs["index"], s)
    return tuple(_axis_length(e, n, i) for i, (e, n) in enumerate(zip(index, s))
                 if isinstance(e, str))


def index_text(index) -> str:
    """The index as written inside brackets, trailing full axes left out: ``1:3``,
    ``:, 0``, ``...`` for all of it."""
    parts = [str(e) for e in index]
    while parts and parts[-1] == ":":
        parts.pop()
    return ", ".join(parts) if parts else "..."


def _slice_vjp(g, args, out, attrs):
    (x,) = args
    index = normalize_index(attrs["index"], x.shape)
    return [_apply(g, "unslice", [g], index=index, shape=tuple(x.shape))]


class _Sliced(sp.Function):
    """``x[1:3]`` in formulas."""

    nargs = 2

    def _sympystr(self, p):
        return f"{p._print(self.args[0])}[{self.args[1].name}]"

    def _latex(self, p):
        return f"{p._print(self.args[0])}_{{[{self.args[1].name}]}}"


class _Padded(sp.Function):
    """``pad(δ, x[1:3])``: δ in the place of a slice, zeros elsewhere, in formulas."""

    nargs = 2

    def _sympystr(self, p):
        return f"pad({p._print(self.args[0])} → [{self.args[1].name}])"

    def _latex(self, p):
        return rf"\operatorname{{pad}}\left({p._print(self.args[0])} \to [{self.args[1].name}]\right)"


register(OpDef(
    name="slice", arity=1, attrs={"index": ()}, shape=_slice_shape, vjp=_slice_vjp,
    flops=moves_data,
    dtype=lambda d, a: d[0],
    notation=lambda t, a: f"{t[0]}[{index_text(a['index'])}]",
    display=lambda args, attrs: _Sliced(args[0], sp.Symbol(index_text(attrs["index"]))),
    doc="x[i], x[a:b], x[:, 1:3], x[..., -1], x[::2]: static bounds, steps, negative indices"))


def _unslice_shape(shapes, attrs, names):
    target = tuple(attrs["shape"] or ())
    want = _slice_shape([target], attrs, names)
    if tuple(shapes[0]) != want:
        raise ShapeMismatch(f"the slice [{index_text(attrs['index'])}] of {target} is {want}",
                            "Pass a gradient of the slice's shape.")
    return target


register(OpDef(
    name="unslice", arity=1, attrs={"index": (), "shape": None}, shape=_unslice_shape,
    flops=moves_data,
    internal=True,  # the VJP of slice builds it
    vjp=lambda G, args, out, attrs: [_apply(G, "slice", [G], index=attrs["index"])],
    notation=lambda t, a: f"pad({t[0]} → [{index_text(a['index'])}])",
    display=lambda args, attrs: _Padded(args[0], sp.Symbol(index_text(attrs["index"]))),
    doc="zeros of shape with the argument written at [index]: the gradient of a slice"))


# -- concat and stack ---------------------------------------------------------------------
def _concat_shape(shapes, attrs, names):
    first = tuple(shapes[0])
    if not first:
        raise ShapeMismatch("concat cannot join 0-d arguments", "Use sb.stack for scalars.")
    (axis,) = norm_axes(attrs["axis"], len(first))
    for name, s in zip(names, shapes):
        s = tuple(s)
        if len(s) != len(first) or any(a != b for i, (a, b) in enumerate(zip(s, first))
                                        if i != axis):
            raise ShapeMismatch(
                f"{names[0]} is {first} but {name} is {s}: off axis {axis} the shapes "
                "must be equal", "Concatenate along the axis where they differ, or "
                "reshape them to agree on every other axis.")
    along = [s[axis] for s in shapes]
    if all(isinstance(d, int) for d in along):
        total = sum(along)
    elif sum(isinstance(d, str) for d in along) == 1:
        # one symbolic size: the sum is an expression (H + 3), and each argument's slice
        # of the gradient has static bounds (counted from the start before it, from the end
        # after it)
        total = sizes.from_sympy(sum(sizes.to_sympy(d) for d in along))
    else:
        raise ShapeMismatch(
            f"sizes {', '.join(map(str, along))} along axis {axis} have more than one "
            "symbolic size", "Concatenate along an axis where at most one argument has a "
            "symbolic size.")
    return first[:axis] + (total,) + first[axis + 1:]


def _concat_vjp(g, args, out, attrs):
    (axis,) = norm_axes(attrs["axis"], g.ndim)
    grads, at = [], 0
    after = [sum(a.shape[axis] for a in args[i + 1:]) if all(
        isinstance(a.shape[axis], int) for a in args[i + 1:]) else None
        for i in range(len(args))]
    for a, rest in zip(args, after):
        n = a.shape[axis]
        if at is not None:
            span = (at, at + n) if isinstance(n, int) else (at, -rest if rest else None)
        else:  # after the symbolic size: counted from the end
            span = (-rest - n, -rest if rest else None)
        index = (":",) * axis + (_slice_text(*span, 1),)
        grads.append(_apply(g, "slice", [g], index=normalize_index(index, g.shape))
                     if a.dtype == "float" else None)
        at = at + n if at is not None and isinstance(n, int) else None
    return grads


class _Joined(sp.Function):
    """``concat(a, b, axis=1)`` in formulas: the arguments, then the axis (the last
    argument, an Integer)."""

    op = ""

    def _sympystr(self, p):
        *xs, axis = self.args
        return f"{self.op}({', '.join(p._print(x) for x in xs)}, axis={axis})"

    def _latex(self, p):
        *xs, axis = self.args
        return (rf"\operatorname{{{self.op}}}\left("
                rf"{', '.join(p._print(x) for x in xs)};\ \text{{axis}}={axis}\right)")


class _Concat(_Joined):
    """``concat(a, b, axis=1)``."""

    op = "concat"


class _Stack(_Joined):
    """``stack(a, b, axis=0)``."""

    op = "stack"


def _join_notation(name):
    return lambda t, a: f"{name}({', '.join(t)}, axis={a['axis']})"


register(OpDef(
    name="concat", arity=None, attrs={"axis": 0}, shape=_concat_shape, vjp=_concat_vjp,
    flops=moves_data,
    dtype=lambda d, a: "float" if "float" in d else "int",
    notation=_join_notation("concat"),
    display=lambda args, attrs: _Concat(*args, sp.Integer(attrs["axis"])),
    doc="join arrays along an existing axis (sb.concat([a, b], axis))"))


def _stack_shape(shapes, attrs, names):
    first = tuple(shapes[0])
    for name, s in zip(names, shapes):
        if tuple(s) != first:
            raise ShapeMismatch(f"{names[0]} is {first} but {name} is {tuple(s)}: stack "
                                "needs equal shapes", "Give every argument the same shape.")
    (axis,) = norm_axes(attrs["axis"], len(first) + 1)
    return first[:axis] + (len(shapes),) + first[axis:]


def _stack_vjp(g, args, out, attrs):
    (axis,) = norm_axes(attrs["axis"], g.ndim)
    return [_apply(g, "slice", [g], index=normalize_index((":",) * axis + (i,), g.shape))
            if a.dtype == "float" else None for i, a in enumerate(args)]


register(OpDef(
    name="stack", arity=None, attrs={"axis": 0}, shape=_stack_shape, vjp=_stack_vjp,
    flops=moves_data,
    dtype=lambda d, a: "float" if "float" in d else "int",
    notation=_join_notation("stack"),
    display=lambda args, attrs: _Stack(*args, sp.Integer(attrs["axis"])),
    doc="join arrays along a new axis (sb.stack([a, b], axis))"))


# -- take and embedding -------------------------------------------------------------------
def _int_index(dtypes, attrs):
    if dtypes[1] != "int":
        raise ShapeMismatch(f"the index argument has dtype {dtypes[1]}; gathering needs "
                            "integer indices", "Declare the index input with dtype='int'.")
    return dtypes[0]


def _take_shape(shapes, attrs, names):
    x, idx = tuple(shapes[0]), tuple(shapes[1])
    (axis,) = norm_axes(attrs["axis"], len(x))
    return x[:axis] + idx + x[axis + 1:]


def _take_vjp(g, args, out, attrs):
    x, idx = args
    (axis,) = norm_axes(attrs["axis"], x.ndim)
    return [_apply(g, "take_grad", [g, idx], axis=axis, size=x.shape[axis]), None]


def _take_fans(i, shapes, attrs):
    """A table taken from (an embedding): each output entry is one entry of the table
    (fan-in 1); fan-out, the size of one row."""
    if i != 0:
        return None
    x = shapes[0]
    (axis,) = norm_axes(attrs["axis"], len(x))
    rest = [d for k, d in enumerate(x) if k != axis]
    return (1, math.prod(rest)) if all(isinstance(d, int) for d in rest) else None


register(OpDef(
    name="take", arity=2, attrs={"axis": 0}, shape=_take_shape, vjp=_take_vjp,
    flops=moves_data,
    dtype=_int_index, fans=_take_fans,
    notation=lambda t, a: f"take({t[0]}, {t[1]}, axis={a['axis']})",
    display=lambda args, attrs: sp.Function("take")(*args),
    doc="gather x's entries at integer indices idx along axis (np.take)"))


def _take_grad_shape(shapes, attrs, names):
    g, idx = tuple(shapes[0]), tuple(shapes[1])
    axis, k = attrs["axis"], len(idx)
    if not isinstance(axis, int) or axis < 0 or g[axis:axis + k] != idx:
        raise ShapeMismatch(f"the gradient {g} does not hold the index shape {idx} at axis "
                            f"{axis}", "Pass the gradient of take's output.")
    return g[:axis] + (attrs["size"],) + g[axis + k:]


register(OpDef(
    name="take_grad", arity=2, attrs={"axis": 0, "size": None}, shape=_take_grad_shape,
    flops=per_entry(1, of=0),  # each entry of g added in
    internal=True,  # the VJP of take builds it
    vjp=lambda G, args, out, attrs: [_apply(G, "take", [G, args[1]], axis=attrs["axis"]),
                                     None],
    dtype=_int_index,
    notation=lambda t, a: f"scatter_add({t[0]}, {t[1]}, axis={a['axis']})",
    display=lambda args, attrs: sp.Function("scatter_add")(*args),
    doc="zeros of size `size` along axis with g added at the indices (repeats accumulate)"))


# -- builder functions that take lists --------------------------------------------------------
def _nodes(xs, more) -> list:
    return [xs, *more] if not isinstance(xs, (list, tuple)) else [*xs, *more]


def concat(xs, *more, axis: int = 0):
    """Join nodes along an existing axis: ``np.concatenate``.

    ``sb.concat([a, b], axis=1)`` (also ``sb.concat(a, b, axis=1)``); the gradient of
    each argument is its slice of δ.

    Examples
    --------
    >>> g = sb.Graph(); a = g.input("a", shape=("N", 2)); b = g.input("b", shape=("N", 3))
    >>> sb.concat([a, b], axis=1).shape
    ('N', 5)
    """
    return apply("concat", *_nodes(xs, more), axis=axis)


def stack(xs, *more, axis: int = 0):
    """Join nodes of one shape along a new axis: ``np.stack``.

    Examples
    --------
    >>> g = sb.Graph(); a = g.input("a", shape=(3,)); b = g.input("b", shape=(3,))
    >>> sb.stack([a, b], axis=1).shape
    (3, 2)
    """
    return apply("stack", *_nodes(xs, more), axis=axis)


def split(x, sections, axis: int = 0) -> list:
    """Split ``x`` along ``axis``, as ``np.split``: a list of nodes, each a static slice
    of ``x`` (op ``slice``), so each part's gradient is a zero-padded δ.

    ``sections`` is the number of equal parts (it must divide the axis size) or the
    sorted positions where parts start (``[2, 5]``: ``x[:2], x[2:5], x[5:]``).

    Examples
    --------
    >>> g = sb.Graph(); x = g.input("x", shape=("N", 6))
    >>> [p.shape for p in sb.split(x, 3, axis=1)]
    [('N', 2), ('N', 2), ('N', 2)]
    >>> [p.shape for p in sb.split(x, [1, 4], axis=-1)]
    [('N', 1), ('N', 3), ('N', 2)]
    """
    from ..errors import ShapeError

    try:
        (ax,) = norm_axes(axis, x.ndim)
    except ShapeMismatch as e:
        raise ShapeError(f"split of {x.name!r} (shape {x.shape}): {e.found}. {e.fix}") from None
    n = x.shape[ax]
    if not isinstance(n, int):
        raise ShapeError(f"split of {x.name!r}: axis {ax} has symbolic size {n}. "
                         "Split an axis of fixed size.")
    if isinstance(sections, int) and not isinstance(sections, bool):
        if sections < 1 or n % sections:
            raise ShapeError(f"split of {x.name!r}: {sections} equal parts do not divide axis "
                             f"{ax} of size {n}. Pass a divisor of {n} or split positions.")
        points = [n // sections * k for k in range(1, sections)]
    else:
        points = list(sections)
        if any(not isinstance(p, int) or not 0 <= p <= n for p in points) \
                or points != sorted(points):
            raise ShapeError(f"split of {x.name!r}: positions {points} are not sorted "
                             f"integers between 0 and {n} (axis {ax} of size {n}).")
    bounds = [0, *points, n]
    return [apply("slice", x, index=normalize_index(
        (":",) * ax + (_slice_text(a, b, 1),), x.shape)) for a, b in itertools.pairwise(bounds)]


def embedding(ids, E):
    """Rows of the table ``E`` (V, d) at the integer ``ids`` of any shape:
    ``take(E, ids, axis=0)``, of shape ``ids.shape + (d,)``. Its gradient for ``E``
    scatter-adds δ into the rows (a token used twice gets both contributions).

    Examples
    --------
    >>> g = sb.Graph(); ids = g.input("ids", shape=("N", 5), dtype="int")
    >>> sb.embedding(ids, g.param("E", shape=(10, 4))).shape
    ('N', 5, 4)
    """
    return apply("take", E, ids, axis=0)
