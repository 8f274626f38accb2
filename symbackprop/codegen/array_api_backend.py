"""The ``array_api`` backend (issue 15): functional code that uses only the Python array
API standard (https://data-apis.org/array-api/), on the namespace of its arguments.

Every generated function starts with ``xp, DTYPE = _namespace(X, y, W1, ...)``: the
namespace of the arrays it is given (``x.__array_namespace__()``) and that namespace's
float dtype. The module imports nothing, so it runs on any library implementing the
standard; the tests run it on ``array_api_strict``, which rejects anything outside it.

:data:`ARRAY_API` is its op table, :class:`ArrayApiPrinter` its elementwise printer,
:mod:`~symbackprop.codegen.runtime.array_api_ops` its helpers and :data:`BACKEND` its
record. The standard has no ``einsum``, no scatter-add, no convolution, no random numbers:
an ``einsum`` that is no (batched) matrix product is a broadcast product and a sum
(``_einsum``), ``take``'s gradient is a product with a one-hot matrix, convolution and
pooling take the windows as strided slices of the padded array, one per kernel offset
(im2col, then one matmul), batch norm returns its new running statistics as JAX's does,
and dropout has no code (``CodegenError: op 'dropout_mask' has no array_api code: the
array API standard has no random numbers ...``).

Examples
--------
>>> from symbackprop.codegen import backends
>>> backends.get("array_api").lowering("sum").expr(["x"], {"axis": 0, "keepdims": True})
'xp.sum(x, axis=0, keepdims=True)'
>>> index_code((":", "1:3", "...", -1))
'(slice(None, None), slice(1, 3), ..., -1)'
"""

from __future__ import annotations

import sympy as sp

from ..errors import CodegenError
from ..ops.arrays import index_text
from ..ops.stable import StableFunction
from . import backends
from .backends import Backend
from .lowering import (
    NUMPY,
    TABLES,
    Lowering,
    _axis_code,
    _shape_code,
    _tuple_code,
    einsum_as_matmul,
    numpy_call,
)
from .printer import MATH_ONLY, FloatStep, Printer, float_steps
from .runtime import array_api_ops as ops
from .runtime import source


def _helpers(*fns) -> dict:
    return {f.__name__: source(f) for f in fns}


def index_code(index) -> str:
    """An index (``(":", "1:3", "...", -1)``) as a Python tuple: the standard has no
    ``np.s_``."""
    parts = []
    for e in index:
        if isinstance(e, str) and e == "...":
            parts.append("...")
        elif isinstance(e, str) and ":" in e:
            bits = [b.strip() or "None" for b in e.split(":")]
            while len(bits) > 2 and bits[-1] == "None":
                bits.pop()
            parts.append(f"slice({', '.join(bits)})")
        else:
            parts.append(str(e))
    return f"({parts[0]},)" if len(parts) == 1 else f"({', '.join(parts)})"


def _full_index(index) -> str:
    """The index inside brackets with an ellipsis for the axes it leaves out: the standard
    does not fill in trailing axes as NumPy does (``x[0]`` of a matrix is ``x[0, ...]``)."""
    entries = tuple(index) if isinstance(index, (tuple, list)) else (index,)
    return index_text(entries if "..." in entries else entries + ("...",))


def _reduce(fn: str):
    def code(c, a):
        parts = [c[0]] + ([] if a["axis"] is None else [f"axis={_axis_code(a['axis'])}"])
        return f"xp.{fn}({', '.join(parts + (['keepdims=True'] if a['keepdims'] else []))})"
    return code


def _transpose(c, a) -> str:
    return f"{c[0]}.T" if a["axes"] is None else f"xp.permute_dims({c[0]}, {_axis_code(a['axes'])})"


def _einsum(c, a) -> str:
    """A spec that is a (batched) matrix product as ``@`` (BLAS where the library has it);
    any other as the helper ``_einsum`` (broadcast product and sum)."""
    how = einsum_as_matmul(a["spec"])
    if how is None:
        return f"_einsum({a['spec']!r}, {', '.join(c)})"
    first, *swaps = how
    pair = (c[first], c[1 - first])
    a_, b_ = (f"xp.matrix_transpose({x})" if s else x for x, s in zip(pair, swaps))
    return f"{a_} @ {b_}"


# the windows of convolution and pooling: strided slices of the padded array, by offset
_WINDOWS = _helpers(ops._offsets, ops._window_at, ops._pad, ops._conv_out)
_CONV = _WINDOWS | _helpers(ops._conv_cols, ops._conv)

ARRAY_API: dict[str, Lowering] = {
    "identity": Lowering(lambda c, a: c[0]),
    "matmul": Lowering(lambda c, a: f"{c[0]} @ {c[1]}"),
    "transpose": Lowering(_transpose, inline=True),
    "sum": Lowering(_reduce("sum")),
    "mean": Lowering(_reduce("mean")),
    "max": Lowering(_reduce("max")),
    "min": Lowering(_reduce("min")),
    "var": Lowering(_reduce("var")),
    "std": Lowering(_reduce("std")),
    "reshape": Lowering(lambda c, a: f"xp.reshape({c[0]}, {_shape_code(a['shape'])})"),
    "broadcast_to": Lowering(lambda c, a: f"xp.broadcast_to({c[0]}, {_shape_code(a['shape'])})"),
    "softmax": Lowering(lambda c, a: f"_softmax({c[0]}, axis={a['axis']})",
                        helpers=_helpers(ops._softmax)),
    "log_softmax": Lowering(lambda c, a: f"_log_softmax({c[0]}, axis={a['axis']})",
                            helpers=_helpers(ops._log_softmax)),
    "softmax_cross_entropy": Lowering(
        lambda c, a: f"_softmax_cross_entropy({c[0]}, {c[1]})",
        helpers=_helpers(ops._softmax_cross_entropy, ops._onehot)),
    "softmax_cross_entropy_grad": Lowering(
        lambda c, a: f"_softmax_cross_entropy_grad({c[0]}, {c[1]}, {c[2]})",
        helpers=_helpers(ops._softmax_cross_entropy_grad, ops._onehot, ops._softmax)),
    "onehot": Lowering(lambda c, a: f"_onehot({c[0]}, {a['num']}, DTYPE)",
                       helpers=_helpers(ops._onehot)),
    "argmax": Lowering(lambda c, a: f"xp.argmax({c[0]}, axis={a['axis']})"),
    "mse": Lowering(lambda c, a: f"xp.mean(({c[0]} - {c[1]}) ** 2)"),
    "layer_norm": Lowering(lambda c, a: f"_layer_norm({c[0]}, eps={a['eps']!r})",
                           helpers=_helpers(ops._layer_norm)),
    "einsum": Lowering(_einsum, helpers=_helpers(ops._einsum)),
    # a condition of 0/1 floats (a comparison's value) made the boolean array where() wants
    "where": Lowering(lambda c, a: f"xp.where(xp.astype({c[0]}, xp.bool), {c[1]}, {c[2]})"),
    "logsumexp": Lowering(
        lambda c, a: f"_logsumexp({c[0]}, axis={_axis_code(a['axis'])}"
        + (", keepdims=True)" if a["keepdims"] else ")"),
        helpers=_helpers(ops._logsumexp)),
    "slice": Lowering(lambda c, a: f"{c[0]}[{_full_index(a['index'])}]"),
    "unslice": Lowering(
        lambda c, a: f"_unslice({c[0]}, {_shape_code(a['shape'])}, {index_code(a['index'])})",
        helpers=_helpers(ops._unslice)),
    "concat": Lowering(lambda c, a: f"xp.concat({_tuple_code(c)}, axis={a['axis']})"),
    "stack": Lowering(lambda c, a: f"xp.stack({_tuple_code(c)}, axis={a['axis']})"),
    "take": Lowering(lambda c, a: f"_take({c[0]}, {c[1]}, {a['axis']})",
                     helpers=_helpers(ops._take)),
    "take_grad": Lowering(lambda c, a: f"_take_grad({c[0]}, {c[1]}, {a['size']}, {a['axis']})",
                          helpers=_helpers(ops._take_grad, ops._onehot)),
    # -- convolution, pooling and batch norm (issue 15): NumPy's calls, of helpers written
    # with the standard's strided slices and matmul (a loop over the kernel's offsets only)
    "conv1d": numpy_call("conv1d", _CONV),
    "conv2d": numpy_call("conv2d", _CONV),
    "conv_grad_input": numpy_call("conv_grad_input", _WINDOWS | _helpers(ops._conv_grad_input)),
    "conv_grad_weight": numpy_call("conv_grad_weight", _CONV | _helpers(ops._conv_grad_weight)),
    "max_pool2d": numpy_call("max_pool2d", _WINDOWS | _helpers(ops._max_pool2d)),
    "max_pool2d_grad": numpy_call("max_pool2d_grad", _WINDOWS | _helpers(ops._max_pool2d_grad)),
    "avg_pool2d": numpy_call("avg_pool2d", _WINDOWS | _helpers(ops._avg_pool2d)),
    "avg_pool2d_grad": numpy_call("avg_pool2d_grad", _WINDOWS | _helpers(ops._avg_pool2d_grad)),
    # the new running statistics go into the function's copy of running, returned
    "batch_norm": Lowering(NUMPY["batch_norm"].expr, helpers=_helpers(ops._batch_norm),
                           context=("training", "running")),
}
TABLES["array_api"] = ARRAY_API

# Ops the standard cannot write, and why (one line, with the op's name and the backend's)
REFUSED = {  # op: (why, what to do instead); the backends that have it are read from theirs
    "dropout_mask": ("the array API standard has no random numbers to draw dropout's mask from",
                     "no dropout")}

FUNCTIONS = {"sigmoid": source(ops._sigmoid), "softplus": source(ops._softplus),
             "sech2": source(ops._sech2)}
# NumPy's names that the standard spells differently
RENAMED = {"arctan": "atan", "arcsin": "asin", "arccos": "acos", "arctanh": "atanh",
           "arcsinh": "asinh", "arccosh": "acosh", "arctan2": "atan2", "power": "pow"}


class ArrayApiPrinter(Printer):
    """Elementwise expressions in the array API standard's functions (``xp.exp``,
    ``xp.atan``). The standard does not multiply booleans with floats: a step is cast
    (``xp.astype(h > 0, DTYPE)``), a step with another value at 0 is ``_heaviside``.

    Examples
    --------
    >>> from symbackprop.codegen.printer import expr_code
    >>> g, h = sp.symbols("g h")
    >>> expr_code(g * sp.Heaviside(h, 0), printer=ArrayApiPrinter)
    'g * xp.astype(h > 0, DTYPE)'
    >>> expr_code(sp.atan(h), printer=ArrayApiPrinter)
    'xp.atan(h)'
    """

    prefix = "xp"

    def fn(self, name: str) -> str:
        return f"xp.{RENAMED.get(name, name)}"

    def _print_Heaviside(self, e):
        x = self._print(e.args[0])
        at0 = e.args[1] if len(e.args) > 1 else sp.S.Half
        if at0 in (0, 1):
            return f"xp.astype({x} {'>' if at0 == 0 else '>='} 0, DTYPE)"
        return f"_heaviside({x}, {self._print(at0)})"

    def _print_FloatStep(self, e):
        return f"_heaviside({self._print(e.args[0])}, {self._print(e.args[1])})"


class ArrayApiBackend(Backend):
    """The module template of the ``array_api`` backend: no import; every function opens
    with ``xp, DTYPE = _namespace(...)``; ``FLOAT`` names the dtype."""

    name = "array_api"
    title = "the Python array API standard"
    library = None
    extra = "dev"
    package = "array-api-strict"  # the standard's reference library, for the tests
    printer = ArrayApiPrinter
    planned = False
    functional = True
    reserved = ("xp", "FLOAT")

    def imports(self) -> str:
        return ""

    def lowering(self, op) -> Lowering:
        name = op if isinstance(op, str) else op.name
        if name in REFUSED:  # the backends that have it, from their tables
            why, instead = REFUSED[name]
            have = [n for n in backends.NAMES if n != self.name and backends.has_code(name, n)]
            raise CodegenError(f"op {name!r} has no array_api code: {why}. Use backend "
                               f"{', '.join(have[:-1])} or {have[-1]}, or {instead}.")
        return super().lowering(op)

    def context_lines(self, used) -> tuple[list[str], dict]:
        line = "running = None if running is None else dict(running)  # new statistics go into this copy"
        return ([line] if "running" in used else []), {}

    def running_init(self, size: int) -> tuple[str, str]:
        return (f"xp.zeros({size}, dtype=getattr(xp, FLOAT))",
                f"xp.ones({size}, dtype=getattr(xp, FLOAT))")

    def running_params(self) -> list[str]:
        return ["xp"]

    def dtype_lines(self, dtype: str) -> list[str]:
        return [(f'FLOAT = "{dtype}"  # the float dtype, looked up in the namespace of the '
                "arrays passed")]

    def function_helpers(self, e: sp.Expr) -> dict:
        out = {}
        for f in e.atoms(sp.Function):
            name = type(f).__name__
            if isinstance(f, StableFunction) and name in FUNCTIONS:
                out[f"_{name}"] = FUNCTIONS[name]
            elif isinstance(f, StableFunction) or name in MATH_ONLY:
                raise CodegenError(f"function {MATH_ONLY.get(name, name)} has no array_api code: "
                                   "the array API standard has no such function. Use the numpy "
                                   "or jax backend.")
        steps = float_steps(e)
        if steps.atoms(FloatStep) or any(len(h.args) > 1 and h.args[1] not in (0, 1)
                                         for h in steps.atoms(sp.Heaviside)):
            out["_heaviside"] = source(ops._heaviside)
        return out

    def scalar(self, code: str) -> str:
        return f"xp.asarray({code}, dtype=DTYPE)"

    def broadcast(self, code: str, shape: str) -> str:
        return f"xp.broadcast_to({code}, {shape})"

    def constant(self, name: str, value) -> str:
        raise CodegenError(f"constant array {name!r} has no array_api code (a module of the "
                           "array API standard has no namespace before it is called); make "
                           "it an input.")

    def asarray(self, name: str, floating: bool) -> str:
        cast = ", dtype=DTYPE" if floating else ""
        return f"{name} = xp.asarray({name}{cast})"

    def prologue(self, names: list[str]) -> tuple[list[str], dict]:
        return ([f"xp, DTYPE = _namespace({', '.join(names)})"],
                {"_namespace": source(ops._namespace)})

    def step_imports(self) -> tuple:
        return ("math", "random")

    def step_note(self) -> str:
        return ("The arrays are those of\n    the namespace of the arrays passed "
                "(init_params(xp) makes them).")

    def init_source(self, plan: list) -> list[str]:
        kinds = {i.kind for i in plan}
        blocks = [source(fn) for kind, fn in (
            ("he", ops.he_normal), ("xavier", ops.xavier_uniform),
            ("uniform", ops.uniform_fan_in)) if kind in kinds]
        lines = ["def init_params(xp, seed=0):",
                 ('    """Initial parameters as arrays of the array API namespace xp, from a '
                 "seed: He normal"),
                 ("    for weights feeding a rectifier, Xavier/Glorot uniform for the other "
                 "weights, zero"),
                 ("    biases. The standard has no random generator: Python's random module "
                 "draws them"),
                 '    (other numbers than NumPy\'s init_params)."""']
        if any(i.kind != "zeros" for i in plan):
            lines.append("    rng = random.Random(seed)")
        lines.append("    return {")
        for i in plan:
            key = repr(i.name)
            note = "  # " + i.note.encode("unicode_escape").decode("ascii")
            if i.kind == "zeros":
                lines.append(f"        {key}: xp.zeros({i.shape!r}, dtype=getattr(xp, FLOAT)),")
            elif i.kind == "he":
                gain = "" if i.gain2 == 2.0 else f", gain2={i.gain2!r}"
                lines.append(f"        {key}: he_normal(xp, rng, {i.shape!r}, "
                             f"fan_in={i.fan_in}{gain}),{note}")
            elif i.kind == "uniform":
                lines.append(f"        {key}: uniform_fan_in(xp, rng, {i.shape!r}, "
                             f"fan_in={i.fan_in}),{note}")
            else:
                lines.append(f"        {key}: xavier_uniform(xp, rng, {i.shape!r}, "
                             f"fan_in={i.fan_in}, fan_out={i.fan_out}),{note}")
        lines.append("    }")
        return blocks + ["\n".join(lines) + "\n"]


BACKEND = ArrayApiBackend()

__all__ = ["ARRAY_API", "BACKEND", "ArrayApiBackend", "ArrayApiPrinter", "index_code"]
