"""How each op is written for an array library: a table keyed by backend and op name.

An op's declaration (:mod:`symbackprop.ops`) says what the op *is*: its shape rule,
its derivative, how formulas show it. How an array library computes it lives here, one
table per backend (:data:`NUMPY`), each mapping an op name to a :class:`Lowering`. Code
generation asks :func:`lowering` and nothing else; a second backend adds a table (and
:data:`TABLES` names it), not edits across ``ops/``.

Elementwise ops need no entry: the printer writes them from their SymPy expression
(:mod:`symbackprop.codegen.printer`). A structural op that a user declares gets its
code with :func:`register`:

>>> from symbackprop.codegen import lowering
>>> _ = sb.ops.register(sb.ops.OpDef(name="cumsum_rows", arity=1,
...                                  shape=lambda shapes, attrs, names: shapes[0]))
>>> _ = lowering.register("numpy", "cumsum_rows",
...                       lowering.Lowering(expr=lambda c, a: f"np.cumsum({c[0]}, axis=0)"))
>>> cumsum_rows = sb.ops.builder("cumsum_rows")
>>> g = sb.Graph(); x = g.input("x", shape=(3,))
>>> y = g.output("y", cumsum_rows(x)); _ = g.output("L", sb.sum(y))
>>> sb.compile(g, wrt=[]).forward(x=[1.0, 2.0, 3.0])["y"]
array([1., 3., 6.])

(A VJP, ``vjp=...`` in the OpDef, makes it differentiable, as every op of
:mod:`symbackprop.ops.tensor` is.)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from ..errors import CodegenError
from ..ops import registry
from ..ops.arrays import index_text
from ..ops.conv import conv_attrs, pool_attrs
from ..ops.stable import StableFunction
from ..ops.tensor import norm_axes
from . import runtime
from .layout import transposable
from .printer import MATH_ONLY, expr_code
from .runtime import numpy_ops


@dataclass(frozen=True)
class Lowering:
    """One op written for one array library.

    Attributes
    ----------
    expr : callable or None
        ``expr(codes, attrs) -> str``: the expression computing the op from the code of
        its arguments; ``None`` for an elementwise op, which the printer writes from its
        SymPy expression.
    out : callable or None
        ``out(codes, attrs, out, arg_shapes) -> str``: one call writing the result into
        the array ``out`` (the memory-planned code).
    with_grad : callable or None
        ``with_grad(codes, attrs, g, out) -> str``: one call returning the value and
        writing the gradient for the incoming adjoint ``g`` into ``out``.
    helpers : dict
        Name -> source of the module-level helper functions the code calls (and those
        they call); a module gets a helper's source only when its code calls it.
    inline : bool
        A cheap view (``W.T``), written inside its single consumer.
    bias_fold : bool
        A product ``a @ B`` whose VJP for ``B`` is ``a.T @ g``: the planner may compute
        ``a @ B + b`` as ``[a, 1] @ [B; b]``.
    any_layout : bool
        ``out`` writes correctly into an array of any memory layout (a transposed view).
    context : tuple
        Names of :data:`CONTEXT` the code reads (``training``, ``running``, ``rng``):
        every generated function computing the op takes them as keyword arguments, and
        ``expr`` gets the node's name as ``attrs["node"]`` (to key its running state).
    synced : callable or None
        ``synced(codes, attrs) -> str``: the op's code with its batch statistics taken
        over every rank's rows (:attr:`~symbackprop.ops.registry.OpDef.batch_statistics`,
        data parallel: :mod:`~symbackprop.codegen.sync`); it reads ``sync``.
    """

    expr: Callable | None = None
    out: Callable | None = None
    with_grad: Callable | None = None
    helpers: dict = field(default_factory=dict)
    inline: bool = False
    bias_fold: bool = False
    any_layout: bool = False
    context: tuple = ()
    synced: Callable | None = None


# The call-time arguments an op's code may read (Lowering.context), with their defaults:
# the mode, batch norm's running statistics (a dict of arrays), dropout's generator (a
# seed or a np.random.Generator). Functions computing gradients run in training mode.
CONTEXT = {"training": "True", "running": "None", "rng": "0"}


# -- NumPy -------------------------------------------------------------------------------
def _cached(cache: str, fn) -> str:
    """A helper's source after the line defining its module-level cache (``_ROWS = {}``)."""
    return f"{cache} = {{}}\n\n\n" + runtime.source(fn)


def _helpers(*fns) -> dict:
    """Name -> source of :mod:`~symbackprop.codegen.runtime.numpy_ops` helpers."""
    caches = {numpy_ops._rows: "_ROWS", numpy_ops._ones: "_ONES"}
    return {f.__name__: _cached(caches[f], f) if f in caches else runtime.source(f)
            for f in fns}


def _axis_code(axis) -> str:
    return repr(axis if not isinstance(axis, list) else tuple(axis))


def _shape_code(shape) -> str:
    inner = ", ".join(str(d) for d in shape)
    return f"({inner},)" if len(shape) == 1 else f"({inner})"


def _tuple_code(codes) -> str:
    return f"({codes[0]},)" if len(codes) == 1 else f"({', '.join(codes)})"


def _product(shapes) -> str:
    """The NumPy call for a product into a planned buffer. np.dot is the same product for
    2-D arrays with less call overhead than np.matmul (0.3-0.7 us of 1.5-8 us on small
    layers), but it needs a C-contiguous out of the result's dtype, and OpenBLAS runs
    np.matmul's call of a large product faster: 10-25% with a transposed first operand (a
    weight gradient h.T @ dz, 256x256 and 784x256 results), about 4% for 1024x784 @
    784x256 (float32 and float64). So np.matmul where the sizes known at generation (all
    but the batch) multiply to 2**15 or more, and where the planner may store the result
    transposed (see transposable), which np.dot cannot write into."""
    if any(len(s) != 2 for s in shapes):  # a batched product: only np.matmul broadcasts
        return "np.matmul"
    (rows, inner), (_, cols) = shapes
    known = [d for d in (rows, inner, cols) if isinstance(d, int)]
    large = len(known) >= 2 and math.prod(known) >= 2**15
    return "np.matmul" if large or transposable((rows, cols)) else "np.dot"


def _matmul_out(c, out, shapes) -> str:
    """A product into a planned buffer. A stack of matrices times one matrix (``x @ W``, x
    (N, T, K)) runs as one product on the stack's (N·T, K) rows, where np.matmul would run
    one product per matrix (about 20% slower on (16, 64, 128) @ (128, 512)). The planner
    stores an array of more than two axes C-contiguous, so ``out.reshape`` is a view of
    it; the stack's reshape copies only if the stack is not contiguous."""
    a, b = shapes
    if len(a) > 2 and len(b) == 2:
        return (f"np.matmul({c[0]}.reshape(-1, {b[0]}), {c[1]}, "
                f"out={out}.reshape(-1, {b[1]}))")
    return f"{_product(shapes)}({c[0]}, {c[1]}, out={out})"


def _reduce_code(method):
    def code(c, a):
        parts = [] if a["axis"] is None else [f"axis={_axis_code(a['axis'])}"]
        if a["keepdims"]:
            parts.append("keepdims=True")
        return f"{c[0]}.{method}({', '.join(parts)})"
    return code


def _np_reduce_code(fn):
    """``np.<fn>(x, axis=..., keepdims=...)``: var and std (population, ddof=0)."""
    def code(c, a):
        parts = [c[0]] + ([] if a["axis"] is None else [f"axis={_axis_code(a['axis'])}"])
        return f"np.{fn}({', '.join(parts + (['keepdims=True'] if a['keepdims'] else []))})"
    return code


def _reduce_out(fn):
    def code(c, a, out, shapes):
        axes = norm_axes(a["axis"], len(shapes[0]))
        if fn == "sum" and len(shapes[0]) == 2 and not a["keepdims"] and len(axes) == 1:
            # One matrix-vector product with ones is 2-3x faster than NumPy's
            # reduction over a 2-D axis (db = dz.sum(axis=0) in every layer).
            if axes == (0,):
                return f"np.dot(_ones(len({c[0]}), {c[0]}.dtype), {c[0]}, out={out})"
            return f"np.dot({c[0]}, _ones({c[0]}.shape[1], {c[0]}.dtype), out={out})"
        keep = ", keepdims=True" if a["keepdims"] else ""
        return f"np.{fn}({c[0]}, axis={_axis_code(a['axis'])}{keep}, out={out})"
    return code


_XENT_HELPERS = _helpers(
    numpy_ops._softmax_cross_entropy, numpy_ops._shifted_exp, numpy_ops._ones,
    numpy_ops._rows, numpy_ops._softmax_cross_entropy_with_grad,
    numpy_ops._softmax_cross_entropy_grad)

# -- products (issue 13)
def einsum_as_matmul(spec: str) -> tuple[int, bool, bool] | None:
    """Whether the einsum ``spec`` is a (batched) matrix product that ``np.matmul`` computes:
    two operands and an output of the same number n >= 2 of axes, the same batch letters
    first in all three, then ``ik`` in the output from one operand with ``ij`` (or ``ji``)
    and the other with ``jk`` (or ``kj``), ``j`` summed. Returns which operand comes first
    and whether to swap the last two axes of the first and of the second, or ``None`` for
    any other spec (``np.einsum`` computes those). ``np.einsum`` runs batched contractions
    without BLAS, so attention's ``bhqd,bhkd->bhqk`` is a matmul.

    Examples
    --------
    >>> einsum_as_matmul("bhqd,bhkd->bhqk"), einsum_as_matmul("ij,jk->ik")
    ((0, False, True), (0, False, False))
    >>> einsum_as_matmul("bhqd,bhqk->bhkd")
    (1, True, False)
    >>> einsum_as_matmul("bij,bjk->ik") is None, einsum_as_matmul("ij,j->i") is None
    (True, True)
    """
    from ..ops.products import parse_spec

    ins, out = parse_spec(spec)
    if len(ins) != 2 or len(out) < 2 or any(len(s) != len(out) for s in ins):
        return None
    batch, (i, k) = out[:-2], out[-2:]
    if any(s[:-2] != batch for s in ins):
        return None
    first = 0 if i in ins[0][-2:] else 1
    a, b = ins[first], ins[1 - first]
    j = "".join(c for c in a[-2:] if c != i)
    if len(j) != 1 or j in out or set(a[-2:]) != {i, j} or set(b[-2:]) != {j, k}:
        return None
    return first, a[-2:] != i + j, b[-2:] != j + k


def _einsum_operands(c, a) -> tuple:
    """The operands' code, and whether the spec is a product ``np.matmul`` computes."""
    how = einsum_as_matmul(a["spec"])
    if how is None:
        return tuple(c), False
    first, *swaps = how
    pair = (c[first], c[1 - first])
    return tuple(f"np.swapaxes({x}, -1, -2)" if s else x for x, s in zip(pair, swaps)), True


def _einsum_code(c, a, out=None) -> str:
    ops, product = _einsum_operands(c, a)
    into = f", out={out}" if out is not None else ""
    if product:
        return f"np.matmul({ops[0]}, {ops[1]}{into})"
    return f"np.einsum({a['spec']!r}, {', '.join(ops)}{into}, optimize=True)"


# -- convolution and pooling (issue 13): attributes written as tuples, one int per axis
_CONV_HELPERS = _helpers(numpy_ops._pad, numpy_ops._conv_windows, numpy_ops._conv_cols,
                         numpy_ops._group_matmul, numpy_ops._conv)


def _conv_code(fn: str, codes: list, attrs: dict, d: int) -> str:
    stride, padding, dilation, groups = conv_attrs(attrs, d)
    return f"{fn}({', '.join(codes)}, {stride!r}, {padding!r}, {dilation!r}, {groups})"


def _pool_code(fn: str, codes: list, attrs: dict, extra: tuple = ()) -> str:
    k, stride, padding = pool_attrs(attrs)
    return f"{fn}({', '.join(codes)}, {k!r}, {stride!r}, {padding!r}{''.join(', ' + e for e in extra)})"


NUMPY: dict[str, Lowering] = {
    "identity": Lowering(lambda c, a: c[0]),
    "matmul": Lowering(
        lambda c, a: f"{c[0]} @ {c[1]}",
        out=lambda c, a, o, s: _matmul_out(c, o, s),
        bias_fold=True, any_layout=True),
    "transpose": Lowering(
        lambda c, a: f"{c[0]}.T" if a["axes"] is None
        else f"np.transpose({c[0]}, {_axis_code(a['axes'])})", inline=True),
    "sum": Lowering(_reduce_code("sum"), out=_reduce_out("sum"),
                    helpers=_helpers(numpy_ops._ones)),
    "mean": Lowering(_reduce_code("mean"), out=_reduce_out("mean")),
    "reshape": Lowering(lambda c, a: f"{c[0]}.reshape({_shape_code(a['shape'])})"),
    "broadcast_to": Lowering(
        lambda c, a: f"np.broadcast_to({c[0]}, {_shape_code(a['shape'])})"),
    "softmax": Lowering(lambda c, a: f"_softmax({c[0]}, axis={a['axis']})",
                        helpers=_helpers(numpy_ops._softmax)),
    "log_softmax": Lowering(lambda c, a: f"_log_softmax({c[0]}, axis={a['axis']})",
                            helpers=_helpers(numpy_ops._log_softmax)),
    "softmax_cross_entropy": Lowering(
        lambda c, a: f"_softmax_cross_entropy({c[0]}, {c[1]})",
        with_grad=lambda c, a, g, o:
        f"_softmax_cross_entropy_with_grad({c[0]}, {c[1]}, {g}, {o})",
        helpers=_XENT_HELPERS),
    "softmax_cross_entropy_grad": Lowering(
        lambda c, a: f"_softmax_cross_entropy_grad({c[0]}, {c[1]}, {c[2]})",
        out=lambda c, a, o, s: f"_softmax_cross_entropy_grad({c[0]}, {c[1]}, {c[2]}, out={o})",
        helpers=_XENT_HELPERS),
    "onehot": Lowering(lambda c, a: f"np.eye({a['num']}, dtype=DTYPE)[{c[0]}]"),
    "argmax": Lowering(lambda c, a: f"{c[0]}.argmax(axis={a['axis']})"),
    "mse": Lowering(lambda c, a: f"np.mean(({c[0]} - {c[1]}) ** 2)"),
    "layer_norm": Lowering(lambda c, a: f"_layer_norm({c[0]}, eps={a['eps']!r})",
                           helpers=_helpers(numpy_ops._layer_norm)),
    # -- products (issue 13)
    "einsum": Lowering(_einsum_code, out=lambda c, a, o, s: _einsum_code(c, a, out=o)),
    # -- selecting ops (issue 13): maximum, minimum, clip and comparisons are printed
    "where": Lowering(lambda c, a: f"np.where({c[0]}, {c[1]}, {c[2]})"),
    "max": Lowering(_reduce_code("max"), out=_reduce_out("max")),
    "min": Lowering(_reduce_code("min"), out=_reduce_out("min")),
    "logsumexp": Lowering(
        lambda c, a: f"_logsumexp({c[0]}, axis={_axis_code(a['axis'])}"
        + (", keepdims=True)" if a["keepdims"] else ")"),
        helpers=_helpers(numpy_ops._logsumexp)),
    "var": Lowering(_np_reduce_code("var"), out=_reduce_out("var")),
    "std": Lowering(_np_reduce_code("std"), out=_reduce_out("std")),
    # -- arrays (issue 13)
    "slice": Lowering(lambda c, a: f"{c[0]}[{index_text(a['index'])}]"),
    "unslice": Lowering(
        lambda c, a: f"_unslice({c[0]}, {_shape_code(a['shape'])}, "
                     f"np.s_[{index_text(a['index'])}])",
        out=lambda c, a, o, s: f"_unslice({c[0]}, {_shape_code(a['shape'])}, "
                               f"np.s_[{index_text(a['index'])}], out={o})",
        helpers=_helpers(numpy_ops._unslice)),
    "concat": Lowering(
        lambda c, a: f"np.concatenate({_tuple_code(c)}, axis={a['axis']})",
        out=lambda c, a, o, s: f"np.concatenate({_tuple_code(c)}, axis={a['axis']}, out={o})"),
    "stack": Lowering(
        lambda c, a: f"np.stack({_tuple_code(c)}, axis={a['axis']})",
        out=lambda c, a, o, s: f"np.stack({_tuple_code(c)}, axis={a['axis']}, out={o})"),
    "take": Lowering(
        lambda c, a: f"{c[0]}[{c[1]}]" if a["axis"] == 0
        else f"np.take({c[0]}, {c[1]}, axis={a['axis']})"),
    "take_grad": Lowering(
        lambda c, a: f"_take_grad({c[0]}, {c[1]}, {a['size']}, {a['axis']})",
        out=lambda c, a, o, s: f"_take_grad({c[0]}, {c[1]}, {a['size']}, {a['axis']}, out={o})",
        helpers=_helpers(numpy_ops._take_grad)),
    # -- convolution and pooling (issue 13)
    "conv1d": Lowering(lambda c, a: _conv_code("_conv", c, a, 1), helpers=_CONV_HELPERS),
    "conv2d": Lowering(lambda c, a: _conv_code("_conv", c, a, 2), helpers=_CONV_HELPERS),
    "conv_grad_input": Lowering(
        lambda c, a: _conv_code("_conv_grad_input", c + [_shape_code(a["size"])], a,
                                len(a["size"])),
        helpers=_CONV_HELPERS | _helpers(numpy_ops._conv_grad_input)),
    "conv_grad_weight": Lowering(
        lambda c, a: _conv_code("_conv_grad_weight", c + [_shape_code(a["kernel"])], a,
                                len(a["kernel"])),
        helpers=_CONV_HELPERS | _helpers(numpy_ops._conv_grad_weight)),
    "max_pool2d": Lowering(lambda c, a: _pool_code("_max_pool2d", c, a),
                           helpers=_helpers(numpy_ops._pad, numpy_ops._conv_windows,
                                            numpy_ops._max_pool2d)),
    "max_pool2d_grad": Lowering(lambda c, a: _pool_code("_max_pool2d_grad", c, a),
                                helpers=_helpers(numpy_ops._pad, numpy_ops._conv_windows,
                                                 numpy_ops._max_pool2d_grad)),
    "avg_pool2d": Lowering(lambda c, a: _pool_code("_avg_pool2d", c, a),
                           helpers=_helpers(numpy_ops._pad, numpy_ops._conv_windows,
                                            numpy_ops._avg_pool2d)),
    "avg_pool2d_grad": Lowering(
        lambda c, a: _pool_code("_avg_pool2d_grad", c, a, [_shape_code(a["size"])]),
        helpers=_CONV_HELPERS | _helpers(numpy_ops._conv_grad_input,
                                         numpy_ops._avg_pool2d_grad)),
    # -- normalization and dropout (issue 13): they read the mode, the running statistics
    # and the generator, arguments of the functions computing them (``context``)
    "batch_norm": Lowering(
        lambda c, a: f"_batch_norm({c[0]}, {a['axis']}, {a['eps']!r}, {a['momentum']!r}, "
                     f"training, running, {a.get('node')!r})",
        helpers=_helpers(numpy_ops._batch_norm, numpy_ops._sync_batch_norm,
                         numpy_ops._update_running),
        context=("training", "running"),
        # data parallel (MPI): the global batch's statistics (codegen/sync.py, issue 15)
        synced=lambda c, a: f"_sync_batch_norm({c[0]}, {a['axis']}, {a['eps']!r}, "
                            f"{a['momentum']!r}, training, running, {a.get('node')!r}, sync)"),
    "dropout_mask": Lowering(lambda c, a: f"_dropout_mask({c[0]}, {a['p']!r}, rng, training)",
                             helpers=_helpers(numpy_ops._dropout_mask),
                             context=("training", "rng")),
}



def math_helper(name: str) -> str:
    """Source of the generated helper ``_<name>``: ``math.<name>`` on every element, for a
    function NumPy has no ufunc for (erf, erfc, gamma, lgamma). (A template, not a
    function of numpy_ops: SymPy decides which functions these are, one helper each.)

    Examples
    --------
    >>> print(math_helper("erf").splitlines()[0])
    def _erf(x):
    """
    return f'''def _{name}(x):
    """math.{name}, which NumPy has no ufunc for, on every element of x: an array of DTYPE
    (exact, but one Python call per element)."""
    import math

    return np.vectorize(math.{name}, otypes=[DTYPE])(x)
'''


# The functions of ops/stable.py, by name: the source of the helper _<name> that the
# printer calls for each.
NUMPY_FUNCTIONS: dict[str, str] = {
    "sigmoid": runtime.source(numpy_ops._sigmoid),
    "softplus": runtime.source(numpy_ops._softplus),
    "sech2": runtime.source(numpy_ops._sech2),
    "erfc": math_helper("erfc"),
}


def function_helpers(e: sp.Expr) -> dict:
    """Name -> source of the helpers that the printed code of the elementwise expression
    ``e`` calls: the stable functions' (``_sigmoid``) and those mapping math's function
    over an array where NumPy has no ufunc (``_erf``).

    Examples
    --------
    >>> from symbackprop.ops.stable import sigmoid
    >>> x, y = sp.symbols("x y")
    >>> sorted(function_helpers(sigmoid(x) * sp.erf(y)))
    ['_erf', '_sigmoid']
    """
    out = {}
    for f in e.atoms(sp.Function):
        name = type(f).__name__
        if isinstance(f, StableFunction):
            out[f"_{name}"] = NUMPY_FUNCTIONS[name]
        elif name in MATH_ONLY:
            out[f"_{MATH_ONLY[name]}"] = math_helper(MATH_ONLY[name])
    return out


# Backend name -> its table.
TABLES: dict[str, dict[str, Lowering]] = {"numpy": NUMPY}


def numpy_call(op: str, helpers: dict) -> Lowering:
    """Another backend's lowering of ``op`` that writes NumPy's call (the same helper name
    and arguments, as the convolution family's) with that backend's own ``helpers``."""
    return Lowering(NUMPY[op].expr, helpers=helpers)
BACKENDS = tuple(TABLES)
_PRINTED = Lowering()  # an elementwise op: the printer writes it from its expression


def _table_of(backend: str, error: type) -> dict:
    """:data:`TABLES`, after loading the module of ``backend`` when it is a backend whose
    table is not loaded yet (``jax``, ``array_api``: :mod:`~symbackprop.codegen.backends`
    imports them on first use)."""
    if backend not in TABLES:
        from . import backends  # the backends' modules import this one

        try:
            backends.get(backend)
        except CodegenError as e:
            raise error(str(e)) from None
    return TABLES


def register(backend: str, op: str, how: Lowering) -> Lowering:
    """Give op ``op`` (a name) the code ``how`` for ``backend`` (replacing any it had).

    The op itself is declared with :func:`symbackprop.ops.register`; this says how an
    array library computes it. Returns ``how``.

    Examples
    --------
    >>> _ = sb.ops.register(sb.ops.OpDef(name="twice_rows", arity=1,
    ...                                  shape=lambda shapes, attrs, names: shapes[0]))
    >>> how = register("numpy", "twice_rows", Lowering(lambda c, a: f"2 * {c[0]}"))
    >>> lowering("twice_rows") is how
    True
    """
    if backend not in _table_of(backend, ValueError):
        raise ValueError(f"unknown backend {backend!r}; known: {', '.join(TABLES)}.")
    if not isinstance(how, Lowering):
        raise TypeError(f"the code of op {op!r} must be a Lowering, got {type(how).__name__}.")
    TABLES[backend][op] = how
    return how


def lowering(op: registry.OpDef | str, backend: str = "numpy") -> Lowering:
    """The :class:`Lowering` of ``op`` (an OpDef or an op name) for ``backend``: its
    table entry; for an elementwise op (not ``opaque``), a Lowering with no ``expr``
    (the printer writes it from its expression).

    Examples
    --------
    >>> lowering("matmul").bias_fold, lowering("transpose").inline
    (True, True)
    >>> lowering("relu").expr is None
    True
    """
    opdef = registry.get(op) if isinstance(op, str) else op
    table = _table_of(backend, CodegenError).get(backend)
    if table is None:
        raise CodegenError(f"unknown backend {backend!r}; known: {', '.join(TABLES)}.")
    if opdef.elementwise and not opdef.opaque:
        return _PRINTED
    how = table.get(opdef.name)
    if how is not None:
        return how
    name = opdef.name
    raise CodegenError(
        f"op {name!r} has no {backend} code. Register it with "
        f"symbackprop.codegen.lowering.register({backend!r}, {name!r}, Lowering(expr=...)).")


def evaluate(op: registry.OpDef, args: list, attrs: dict, sizes: dict | None = None):
    """The value of ``op`` at the NumPy arrays ``args``, computed as the generated NumPy
    code computes it (derivations evaluated at a point); ``sizes`` binds size names such
    as ``N`` that the code may use. An elementwise op is its printed expression (with
    its helpers, such as ``_sigmoid``), every argument broadcast into the result.

    Examples
    --------
    >>> evaluate(registry.get("softmax"), [np.zeros((1, 2))], {"axis": -1})
    array([[0.5, 0.5]])
    >>> evaluate(registry.get("mul"), [np.ones(2), np.float64(3)], {})
    array([3., 3.])
    >>> evaluate(registry.get("sigmoid"), [np.array([-800.0, 0.0])], {})
    array([0. , 0.5])
    """
    how = lowering(op)
    if how.expr is not None:
        ns = {"np": np, "DTYPE": np.float64, **(sizes or {})}
        if how.context:  # training mode, no running statistics, the generator of seed 0
            ns.update(training=True, running=None, rng=np.random.default_rng(0))
        for src in how.helpers.values():
            exec(src, ns)  # noqa: S102 -- the op's own helper source, e.g. _softmax
        codes = [f"_a{i}" for i in range(len(args))]
        ns.update(zip(codes, args))
        return np.asarray(eval(how.expr(codes, attrs), ns))
    syms, e = op.code_expr(attrs)
    ns = {"np": np, "DTYPE": np.float64}
    for src in function_helpers(e).values():
        exec(src, ns)  # noqa: S102 -- our own helper source, e.g. _sigmoid
    code = expr_code(e, {s: f"_a{i}" for i, s in enumerate(syms)})
    out = eval(code, {**ns, **{f"_a{i}": a for i, a in enumerate(args)}})
    return np.array(np.broadcast_to(out, np.broadcast_shapes(*map(np.shape, args))),
                    dtype=float)
