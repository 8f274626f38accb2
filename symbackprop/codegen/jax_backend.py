"""The ``jax`` backend (issue 15): functional code with ``jax.numpy``, under ``jax.jit``.

:data:`JAX` is its op table (``lowering.TABLES["jax"]``), :class:`JaxPrinter` its
elementwise printer, :mod:`~symbackprop.codegen.runtime.jax_ops` its helpers and
:data:`BACKEND` its record. ``jax.numpy`` follows NumPy's API, so most ops are NumPy's
code with ``jnp`` for ``np`` (:func:`_jnp`); the ops whose NumPy code writes into arrays
(``out=``, ``np.add.at``) have functional helpers. Convolution and pooling call helpers
written with ``jax.lax`` (``conv_general_dilated``, ``reduce_window``) under the NumPy
helpers' names and signatures. Batch norm and dropout carry their state functionally: a
function computing them takes ``running`` (a dict it copies, puts the new statistics in
and returns after its results) and ``rng`` (a seed or a ``jax.random`` key, folded with
each mask's number); ``training`` is a static argument of ``jax.jit``.

Examples
--------
>>> from symbackprop.codegen import backends
>>> b = backends.get("jax")
>>> b.lowering("sum").expr(["x"], {"axis": 0, "keepdims": False})
'x.sum(axis=0)'
>>> b.lowering("concat").expr(["a", "b"], {"axis": 1})
'jnp.concatenate((a, b), axis=1)'
"""

from __future__ import annotations

import re

import sympy as sp

from ..errors import CodegenError
from ..ops.arrays import index_text
from ..ops.stable import StableFunction
from .backends import Backend
from .lowering import (
    NUMPY,
    TABLES,
    Lowering,
    _axis_code,
    _shape_code,
    numpy_call,
)
from .printer import MATH_ONLY, Printer
from .runtime import jax_init, jax_ops, source, source_of
from .runtime.jax_optimizers import adam as _adam

_NP = re.compile(r"\bnp\.")


def _jnp(op: str) -> Lowering:
    """NumPy's code of ``op`` with ``jnp`` for ``np`` (no ``out=``: JAX arrays are
    immutable)."""
    how = NUMPY[op]
    return Lowering(lambda c, a: _NP.sub("jnp.", how.expr(c, a)), inline=how.inline)


def _helpers(*fns) -> dict:
    return {f.__name__: source(f) for f in fns}


# -- convolution and pooling: the NumPy code's calls, of these helpers
_CONV = _helpers(jax_ops._conv_dims, jax_ops._conv)
_CONV_GRAD_INPUT = _helpers(jax_ops._conv_dims, jax_ops._conv_grad_input)


JAX: dict[str, Lowering] = {
    **{op: _jnp(op) for op in (
        "identity", "matmul", "transpose", "sum", "mean", "reshape", "broadcast_to", "onehot",
        "argmax", "mse", "einsum", "where", "max", "min", "var", "std", "slice", "concat",
        "stack", "take")},
    "softmax": Lowering(lambda c, a: f"_softmax({c[0]}, axis={a['axis']})",
                        helpers=_helpers(jax_ops._softmax)),
    "log_softmax": Lowering(lambda c, a: f"_log_softmax({c[0]}, axis={a['axis']})",
                            helpers=_helpers(jax_ops._log_softmax)),
    "softmax_cross_entropy": Lowering(lambda c, a: f"_softmax_cross_entropy({c[0]}, {c[1]})",
                                      helpers=_helpers(jax_ops._softmax_cross_entropy)),
    "softmax_cross_entropy_grad": Lowering(
        lambda c, a: f"_softmax_cross_entropy_grad({c[0]}, {c[1]}, {c[2]})",
        helpers=_helpers(jax_ops._softmax_cross_entropy_grad, jax_ops._softmax)),
    "layer_norm": Lowering(lambda c, a: f"_layer_norm({c[0]}, eps={a['eps']!r})",
                           helpers=_helpers(jax_ops._layer_norm)),
    "logsumexp": Lowering(
        lambda c, a: f"_logsumexp({c[0]}, axis={_axis_code(a['axis'])}"
        + (", keepdims=True)" if a["keepdims"] else ")"),
        helpers=_helpers(jax_ops._logsumexp)),
    "unslice": Lowering(
        lambda c, a: f"_unslice({c[0]}, {_shape_code(a['shape'])}, "
                     f"jnp.s_[{index_text(a['index'])}])",
        helpers=_helpers(jax_ops._unslice)),
    "take_grad": Lowering(lambda c, a: f"_take_grad({c[0]}, {c[1]}, {a['size']}, {a['axis']})",
                          helpers=_helpers(jax_ops._take_grad)),
    # -- convolution and pooling (issue 15)
    "conv1d": numpy_call("conv1d", _CONV),
    "conv2d": numpy_call("conv2d", _CONV),
    "conv_grad_input": numpy_call("conv_grad_input", _CONV_GRAD_INPUT),
    "conv_grad_weight": numpy_call("conv_grad_weight", _helpers(jax_ops._conv_grad_weight)),
    "max_pool2d": numpy_call("max_pool2d", _helpers(jax_ops._max_pool2d)),
    "max_pool2d_grad": numpy_call("max_pool2d_grad", _helpers(jax_ops._max_pool2d_grad)),
    "avg_pool2d": numpy_call("avg_pool2d", _helpers(jax_ops._avg_pool2d)),
    "avg_pool2d_grad": numpy_call("avg_pool2d_grad", _CONV_GRAD_INPUT | _helpers(jax_ops._avg_pool2d_grad)),
    # -- normalization and dropout (issue 15): NumPy's call, with functional helpers; the
    # new running statistics go into the function's copy of running (returned), and each
    # mask is drawn from the key rng folded with the mask's number
    "batch_norm": Lowering(NUMPY["batch_norm"].expr, helpers=_helpers(jax_ops._batch_norm),
                           context=("training", "running")),
    "dropout_mask": Lowering(
        lambda c, a: f"_dropout_mask({c[0]}, {a['p']!r}, rng, {a['key']}, training)",
        helpers=_helpers(jax_ops._dropout_mask), context=("training", "rng")),
}
TABLES["jax"] = JAX

# The stable functions of ops/stable.py, by name: the source of the helper _<name>
FUNCTIONS = {"sigmoid": source(jax_ops._sigmoid), "softplus": source(jax_ops._softplus),
             "sech2": source(jax_ops._sech2)}
# SymPy's functions that jax.numpy lacks, by the helper name the printer calls: JAX's own
SPECIAL = {"erf": "erf", "erfc": "erfc", "gamma": "gamma", "lgamma": "gammaln"}
# The optimizers JAX writes itself (runtime/jax_optimizers: an array where the functional
# one holds a Python number), by the name of their functional module
OWN_OPTIMIZERS = {"adam": _adam}


def special_helper(name: str) -> str:
    """Source of the helper ``_<name>``: ``jax.scipy.special``'s function of that name.

    Examples
    --------
    >>> print(special_helper("lgamma").splitlines()[1].strip())
    return jax.scipy.special.gammaln(x)
    """
    if name not in SPECIAL:
        raise CodegenError(f"function {name} has no jax code (jax.scipy.special has none).")
    return f"def _{name}(x):\n    return jax.scipy.special.{SPECIAL[name]}(x)\n"


class JaxPrinter(Printer):
    """Elementwise expressions as ``jax.numpy`` code (``jnp.exp``, ``jnp.maximum``).

    Examples
    --------
    >>> from symbackprop.codegen.printer import expr_code
    >>> expr_code(1 / (1 + sp.exp(-sp.Symbol("h"))), printer=JaxPrinter)
    '1 / (1 + jnp.exp(-h))'
    """

    prefix = "jnp"


class JaxBackend(Backend):
    """The module template of the ``jax`` backend: ``import jax``, ``jax.numpy as jnp``,
    ``@jax.jit`` on ``forward`` and ``value_and_grad``. A float64 module turns on JAX's
    64-bit mode (``jax_enable_x64``: JAX computes in float32 otherwise), for the whole
    process, as JAX's documentation says to; a float32 module leaves it as it is."""

    name = "jax"
    title = "JAX"
    library = "jax"
    extra = "jax"
    package = "jax"  # CPU; on a GPU 'jax[cuda12]'
    printer = JaxPrinter
    planned = False
    functional = True
    reserved = ("jax", "jnp", "functools")
    sharded_script = True
    half_dtypes = ("float16", "bfloat16")  # precision "mixed" and "bfloat16" (codegen/jax_mixed.py)

    def imports(self) -> str:
        return "import jax\nimport jax.numpy as jnp"

    def dtype_lines(self, dtype: str) -> list[str]:
        x64 = ([("# float64 arrays: JAX computes in float32 unless its 64-bit mode is on (for "
                "the whole process)"), 'jax.config.update("jax_enable_x64", True)']
               if dtype == "float64" else [])
        return x64 + [f"DTYPE = jnp.{dtype}"]

    def decorators(self, function: str, params=()) -> list[str]:
        if "training=True" in params:  # the mode picks the code traced: a static argument
            return ['@functools.partial(jax.jit, static_argnames=("training",))']
        return ["@jax.jit"]

    def context_lines(self, used) -> tuple[list[str], dict]:
        lines, helpers = [], {}
        if "running" in used:
            lines.append("running = None if running is None else dict(running)  # new "
                         "statistics go into this copy")
        if "rng" in used:
            lines.append("rng = _prng_key(rng)  # a seed or a jax.random key")
            helpers["_prng_key"] = source(jax_ops._prng_key)
        return lines, helpers

    def running_init(self, size: int) -> tuple[str, str]:
        return f"jnp.zeros({size}, DTYPE)", f"jnp.ones({size}, DTYPE)"

    def function_helpers(self, e: sp.Expr) -> dict:
        out = {}
        for f in e.atoms(sp.Function):
            name = type(f).__name__
            if isinstance(f, StableFunction):
                out[f"_{name}"] = FUNCTIONS[name] if name in FUNCTIONS else special_helper(name)
            elif name in MATH_ONLY:
                out[f"_{MATH_ONLY[name]}"] = special_helper(MATH_ONLY[name])
        return out

    def broadcast(self, code: str, shape: str) -> str:
        return f"jnp.broadcast_to({code}, {shape})"

    def constant(self, name: str, value) -> str:
        return f"{name} = jnp.array({value!r}, dtype=DTYPE)"

    def asarray(self, name: str, floating: bool) -> str:
        cast = ", dtype=DTYPE" if floating else ""
        return f"{name} = jnp.asarray({name}{cast})"

    def step_decorators(self, context=()) -> list[str]:
        if "running" in context:  # batch norm's statistics are donated with the rest
            return [('@functools.partial(jax.jit, donate_argnames=("params", "state", '
                     '"running"))')]
        return ["@functools.partial(jax.jit, donate_argnums=(0, 1))"]

    def step_imports(self) -> tuple:
        return ("functools",)

    def optimizer_source(self, runtime, name: str) -> str:
        own = OWN_OPTIMIZERS.get(runtime.__name__.rpartition(".")[2])
        return source_of(own or runtime, name)

    def step_note(self) -> str:
        return ("The buffers of params and\n    state are donated to the result: use the "
                "returned ones.")

    def init_source(self, plan: list) -> list[str]:
        kinds = {i.kind for i in plan}
        blocks = [source_of(jax_init, name) for kind, name in (
            ("he", "he_normal"), ("xavier", "xavier_uniform"), ("uniform", "uniform_fan_in"))
            if kind in kinds]
        drawn = sum(i.kind != "zeros" for i in plan)
        lines = ["def init_params(seed=0):",
                 ('    """Initial parameters from a seed, drawn with jax.random (not the numbers '
                 "of NumPy's"),
                 ("    init_params): He normal for weights feeding a rectifier, Xavier/Glorot "
                 "uniform for"),
                 '    the other weights, zero biases."""']
        if drawn:
            lines.append(f"    keys = iter(jax.random.split(jax.random.key(seed), {drawn}))")
        lines.append("    return {")
        for i in plan:
            key, note = repr(i.name), "  # " + i.note.encode("unicode_escape").decode("ascii")
            if i.kind == "zeros":
                lines.append(f"        {key}: jnp.zeros({i.shape!r}, dtype=DTYPE),")
            elif i.kind == "he":
                gain = "" if i.gain2 == 2.0 else f", gain2={i.gain2!r}"
                lines.append(f"        {key}: he_normal(next(keys), {i.shape!r}, "
                             f"fan_in={i.fan_in}{gain}),{note}")
            elif i.kind == "uniform":
                lines.append(f"        {key}: uniform_fan_in(next(keys), {i.shape!r}, "
                             f"fan_in={i.fan_in}),{note}")
            else:
                lines.append(f"        {key}: xavier_uniform(next(keys), {i.shape!r}, "
                             f"fan_in={i.fan_in}, fan_out={i.fan_out}),{note}")
        lines.append("    }")
        return blocks + ["\n".join(lines) + "\n"]


BACKEND = JaxBackend()

__all__ = ["BACKEND", "JAX", "JaxBackend", "JaxPrinter", "special_helper"]
