"""The ``torch`` backend (issue 15): plain PyTorch tensor code under ``torch.inference_mode()``.

:data:`TORCH` is its op table (``lowering.TABLES["torch"]``), :class:`TorchPrinter` its
elementwise printer, :mod:`~symbackprop.codegen.runtime.torch_ops` its helpers and
:data:`BACKEND` its record. The generated functions run without autograd (the gradients
are symbackprop's, one statement per node) on the device of the tensors they are given:
every function opens with ``device = _device(<its arguments>)``, turns what it is given
into tensors there (``torch.as_tensor(X, dtype=DTYPE, device=device)``) and makes every
new tensor with that device and ``DTYPE``. Convolution and pooling call
``torch.nn.functional``'s and ``torch.nn.grad``'s plain tensor functions. Batch norm and
dropout follow NumPy's code: ``training=True, running=None`` (a dict of tensors from
``init_running(device=None)``, updated in place) and ``rng=0`` (a seed or a
``torch.Generator``; a seed makes a CPU generator, whose masks are moved to the tensors'
device: the same seed, the same masks on every device).

The training module is in place, as NumPy's: :mod:`~symbackprop.codegen.torch_train`.

Examples
--------
>>> from symbackprop.codegen import backends
>>> b = backends.get("torch")
>>> b.lowering("sum").expr(["x"], {"axis": 0, "keepdims": False})
'x.sum(dim=0)'
>>> b.lowering("concat").expr(["a", "b"], {"axis": 1})
'torch.cat((a, b), dim=1)'
"""

from __future__ import annotations

import sympy as sp

from ..errors import CodegenError
from ..ops.arrays import index_text
from ..ops.stable import StableFunction
from .array_api_backend import index_code
from .backends import Backend
from .lowering import (
    TABLES,
    Lowering,
    _axis_code,
    _shape_code,
    _tuple_code,
    numpy_call,
)
from .printer import MATH_ONLY, FloatStep, Printer, float_steps
from .runtime import source
from .runtime import torch_mixed as torch_mixed_runtime
from .runtime import torch_ops as ops


def _helpers(*fns) -> dict:
    return {f.__name__: source(f) for f in fns}


def _reduce(method: str, extra: str = ""):
    """``x.<method>(dim=..., keepdim=True)``; no axis: over every axis."""
    def code(c, a):
        parts = [] if a["axis"] is None else [f"dim={_axis_code(a['axis'])}"]
        if a["keepdims"]:
            parts = parts or ["dim=None"]
            parts.append("keepdim=True")
        return f"{c[0]}.{method}({', '.join(parts + ([extra] if extra else []))})"
    return code


def _transpose(c, a) -> str:
    return f"{c[0]}.T" if a["axes"] is None else f"{c[0]}.permute{_axis_code(tuple(a['axes']))}"


def _backwards(index) -> bool:
    """Whether an index (``(":", "-2::-2")``) has a slice stepping backwards, which torch's
    indexing refuses."""
    entries = index if isinstance(index, (tuple, list)) else (index,)
    return any(isinstance(e, str) and e.count(":") == 2 and e.split(":")[2].strip().startswith("-")
               for e in entries)


_CONV = _helpers(ops._conv)

TORCH: dict[str, Lowering] = {
    "identity": Lowering(lambda c, a: c[0]),
    "matmul": Lowering(lambda c, a: f"{c[0]} @ {c[1]}"),
    "transpose": Lowering(_transpose, inline=True),
    "sum": Lowering(_reduce("sum")),
    "mean": Lowering(_reduce("mean")),
    "max": Lowering(_reduce("amax")),
    "min": Lowering(_reduce("amin")),
    "var": Lowering(_reduce("var", "correction=0")),
    "std": Lowering(_reduce("std", "correction=0")),
    "reshape": Lowering(lambda c, a: f"{c[0]}.reshape({_shape_code(a['shape'])})"),
    "broadcast_to": Lowering(
        lambda c, a: f"torch.broadcast_to({c[0]}, {_shape_code(a['shape'])})"),
    "softmax": Lowering(lambda c, a: f"_softmax({c[0]}, axis={a['axis']})",
                        helpers=_helpers(ops._softmax)),
    "log_softmax": Lowering(lambda c, a: f"_log_softmax({c[0]}, axis={a['axis']})",
                            helpers=_helpers(ops._log_softmax)),
    "softmax_cross_entropy": Lowering(lambda c, a: f"_softmax_cross_entropy({c[0]}, {c[1]})",
                                      helpers=_helpers(ops._softmax_cross_entropy)),
    "softmax_cross_entropy_grad": Lowering(
        lambda c, a: f"_softmax_cross_entropy_grad({c[0]}, {c[1]}, {c[2]})",
        helpers=_helpers(ops._softmax_cross_entropy_grad)),
    "onehot": Lowering(
        lambda c, a: f"torch.nn.functional.one_hot({c[0]}, {a['num']}).to(DTYPE)"),
    "argmax": Lowering(lambda c, a: f"{c[0]}.argmax(dim={a['axis']})"),
    "mse": Lowering(lambda c, a: f"torch.mean(({c[0]} - {c[1]}) ** 2)"),
    "layer_norm": Lowering(lambda c, a: f"_layer_norm({c[0]}, eps={a['eps']!r})",
                           helpers=_helpers(ops._layer_norm)),
    "einsum": Lowering(lambda c, a: f"torch.einsum({a['spec']!r}, {', '.join(c)})"),
    # a condition of 0/1 floats (a comparison's value) or booleans made the booleans
    # torch.where wants
    "where": Lowering(lambda c, a: f"torch.where({c[0]} != 0, {c[1]}, {c[2]})"),
    "logsumexp": Lowering(
        lambda c, a: f"_logsumexp({c[0]}, axis={_axis_code(a['axis'])}"
        + (", keepdims=True)" if a["keepdims"] else ")"),
        helpers=_helpers(ops._logsumexp)),
    "slice": Lowering(lambda c, a: f"_slice({c[0]}, {index_code(a['index'])})"
                      if _backwards(a["index"]) else f"{c[0]}[{index_text(a['index'])}]",
                      helpers=_helpers(ops._forward_index, ops._slice)),
    "unslice": Lowering(
        lambda c, a: f"_unslice({c[0]}, {_shape_code(a['shape'])}, {index_code(a['index'])})",
        helpers=_helpers(ops._forward_index, ops._unslice)),
    "concat": Lowering(lambda c, a: f"torch.cat({_tuple_code(c)}, dim={a['axis']})"),
    "stack": Lowering(lambda c, a: f"torch.stack({_tuple_code(c)}, dim={a['axis']})"),
    "take": Lowering(lambda c, a: f"{c[0]}[{c[1]}]" if a["axis"] == 0
                     else f"_take({c[0]}, {c[1]}, {a['axis']})", helpers=_helpers(ops._take)),
    "take_grad": Lowering(lambda c, a: f"_take_grad({c[0]}, {c[1]}, {a['size']}, {a['axis']})",
                          helpers=_helpers(ops._take_grad)),
    # -- convolution and pooling: torch.nn.functional and torch.nn.grad
    "conv1d": numpy_call("conv1d", _CONV),
    "conv2d": numpy_call("conv2d", _CONV),
    "conv_grad_input": numpy_call("conv_grad_input", _helpers(ops._conv_grad_input)),
    "conv_grad_weight": numpy_call("conv_grad_weight", _helpers(ops._conv_grad_weight)),
    "max_pool2d": numpy_call("max_pool2d", _helpers(ops._max_pool2d)),
    "max_pool2d_grad": numpy_call("max_pool2d_grad", _helpers(ops._max_pool2d_grad)),
    "avg_pool2d": numpy_call("avg_pool2d", _helpers(ops._avg_pool2d)),
    "avg_pool2d_grad": numpy_call("avg_pool2d_grad", _helpers(ops._avg_pool2d_grad)),
    # -- batch norm and dropout: NumPy's calls (the running statistics a dict of tensors
    # updated in place, the masks drawn by a torch.Generator)
    "batch_norm": Lowering(
        lambda c, a: f"_batch_norm({c[0]}, {a['axis']}, {a['eps']!r}, {a['momentum']!r}, "
                     f"training, running, {a.get('node')!r})",
        helpers=_helpers(ops._batch_norm), context=("training", "running")),
    "dropout_mask": Lowering(lambda c, a: f"_dropout_mask({c[0]}, {a['p']!r}, rng, training)",
                             helpers=_helpers(ops._dropout_mask),
                             context=("training", "rng")),
}
TABLES["torch"] = TORCH

# The stable functions of ops/stable.py, by name: the source of the helper _<name>
FUNCTIONS = {"sigmoid": source(ops._sigmoid), "softplus": source(ops._softplus),
             "sech2": source(ops._sech2)}
# SymPy's functions that torch has no top-level name for, by the helper name the printer
# calls: torch.special's
SPECIAL = {"erf": "torch.special.erf(x)", "erfc": "torch.special.erfc(x)",
           "lgamma": "torch.lgamma(x)"}


def special_helper(name: str) -> str:
    """Source of the helper ``_<name>`` that the printer calls for SymPy's ``name``.

    Examples
    --------
    >>> print(special_helper("erf").splitlines()[1].strip())
    return torch.special.erf(x)
    """
    if name == "gamma":
        return source(ops._gamma)
    if name not in SPECIAL:
        raise CodegenError(f"function {name} has no torch code.")
    return f"def _{name}(x):\n    return {SPECIAL[name]}\n"


def _step_product(e) -> tuple | None:
    """``(g, x)`` when ``e`` is a product ``g * Heaviside(x, 0)`` (g: the other factors,
    not all numbers): the gradient of a relu, which PyTorch computes in one pass
    (``_step_grad``); None otherwise."""
    if not isinstance(e, sp.Mul):
        return None
    steps = [f for f in e.args if isinstance(f, sp.Heaviside) and len(f.args) > 1
             and f.args[1] == 0]
    rest = [f for f in e.args if not (isinstance(f, sp.Heaviside) and f in steps)]
    if len(steps) != 1 or all(f.is_number for f in rest):
        return None
    return sp.Mul(*rest), steps[0].args[0]


class TorchPrinter(Printer):
    """Elementwise expressions as PyTorch code (``torch.exp``, ``torch.clamp(z, min=0)``).

    PyTorch's ``maximum`` and ``heaviside`` take tensors only: a maximum with a number is
    ``torch.clamp``, a step with another value at 0 than 0 or 1 the helper ``_heaviside``.
    A product with a step, ``g * (x > 0)`` (a relu's gradient), is ``_step_grad(g, x)``:
    one pass, where PyTorch's boolean comparison and the product with it take two, each
    several times slower.

    Examples
    --------
    >>> from symbackprop.codegen.printer import expr_code
    >>> h = sp.Symbol("h")
    >>> expr_code(sp.Max(h, 0), printer=TorchPrinter)
    'torch.clamp(h, min=0)'
    >>> expr_code(1 / (1 + sp.exp(-h)), printer=TorchPrinter)
    '1 / (1 + torch.exp(-h))'
    >>> expr_code(sp.Symbol("dh") * sp.Heaviside(h, 0), printer=TorchPrinter)
    '_step_grad(dh, h)'
    """

    prefix = "torch"

    def _print_Mul(self, e):
        step = _step_product(e)
        if step is None:
            return super()._print_Mul(e)
        return f"_step_grad({self._print(step[0])}, {self._print(step[1])})"

    def _pairwise(self, fn, args):
        args = sorted(args, key=lambda a: a.is_number)
        code = self._print(args[0])
        bound = "min" if fn.endswith("maximum") else "max"
        for a in args[1:]:
            code = (f"torch.clamp({code}, {bound}={self._print(a)})" if a.is_number
                    else f"{fn}({code}, {self._print(a)})")
        return code

    def _print_Heaviside(self, e):
        at0 = e.args[1] if len(e.args) > 1 else sp.S.Half
        if at0 in (0, 1):
            return super()._print_Heaviside(e)
        return f"_heaviside({self._print(e.args[0])}, {self._print(at0)})"

    def _print_FloatStep(self, e):
        return f"_heaviside({self._print(e.args[0])}, {self._print(e.args[1])})"


# The outermost calls of an elementwise expression that have an in-place form, by the
# SymPy function printed as that call
_IN_PLACE = {sp.Max: "torch.clamp", sp.Min: "torch.clamp", sp.tanh: "torch.tanh",
             sp.exp: "torch.exp"}


def in_place_call(e: sp.Expr, tensors) -> str | None:
    """The call (``torch.clamp``) that may write the value of ``e`` into the tensor its
    argument makes, when that argument is arithmetic (``+ - * / **``) on one of
    ``tensors``: a new tensor of the value's shape and dtype that nothing else holds, so
    ``torch.clamp_(matmul_1 + b1, min=0)`` saves the allocation and a pass of
    ``torch.clamp(matmul_1 + b1, min=0)``. None otherwise (a bare name may be a
    parameter, a function call may return its argument).

    Examples
    --------
    >>> z, b = sp.symbols("z b")
    >>> in_place_call(sp.Max(z + b, 0), {z, b})
    'torch.clamp'
    >>> in_place_call(sp.Max(z, 0), {z}) is None
    True
    """
    call = _IN_PLACE.get(type(e))
    args = [a for a in e.args if not a.is_number]
    if call is None or len(args) != 1 or len(e.args) > 2:
        return None
    inner = args[0]
    return call if isinstance(inner, (sp.Add, sp.Mul, sp.Pow)) \
        and inner.free_symbols & set(tensors) else None


class TorchBackend(Backend):
    """The module template of the ``torch`` backend: ``import torch``, ``DTYPE =
    torch.float64``, ``@torch.inference_mode()`` on ``forward`` and ``value_and_grad``,
    which open with ``device = _device(...)`` and make their tensors on that device."""

    name = "torch"
    title = "PyTorch"
    library = "torch"
    extra = "torch"
    package = "torch"
    printer = TorchPrinter
    planned = False
    functional = False
    reserved = ("torch", "device")
    half_dtypes = ("float16", "bfloat16")  # precision "mixed" and "bfloat16" (codegen/torch_mixed.py)

    @property
    def mixed_spelling(self) -> dict:
        """How the mixed step (:func:`~symbackprop.codegen.jax_mixed.make_mixed`) writes a
        cast, the scaled seed of backprop and where ``_in_float32`` comes from."""
        return {"cast": ".to({})", "seed": "torch.full((), scale, dtype=MASTER, device=device)",
                "runtime": torch_mixed_runtime}

    def imports(self) -> str:
        return "import torch"

    def dtype_lines(self, dtype: str) -> list[str]:
        return [f"DTYPE = torch.{dtype}"]

    def decorators(self, function: str, params=()) -> list[str]:
        return ["@torch.inference_mode()"]

    def node_code(self, e: sp.Expr, names: dict, floating: bool) -> str:
        """In place where :func:`in_place_call` allows it, on floats only (an integer
        tensor's ``tanh`` is a new float tensor)."""
        code = self.expr_code(e, names)
        call = in_place_call(e, names) if floating else None
        return f"{call}_{code[len(call):]}" if call and code.startswith(f"{call}(") else code

    def function_helpers(self, e: sp.Expr) -> dict:
        out = {}
        for f in e.atoms(sp.Function):
            name = type(f).__name__
            if isinstance(f, StableFunction):
                out[f"_{name}"] = FUNCTIONS[name] if name in FUNCTIONS else special_helper(name)
            elif name in MATH_ONLY:
                out[f"_{MATH_ONLY[name]}"] = special_helper(MATH_ONLY[name])
        steps = float_steps(e)
        if any(_step_product(m) for m in steps.atoms(sp.Mul)):
            out["_step_grad"] = source(ops._step_grad)
        if steps.atoms(FloatStep) or any(len(h.args) > 1 and h.args[1] not in (0, 1)
                                         for h in steps.atoms(sp.Heaviside)):
            out["_heaviside"] = source(ops._heaviside)
        return out

    def scalar(self, code: str) -> str:
        return f"torch.full((), {code}, dtype=DTYPE, device=device)"

    def broadcast(self, code: str, shape: str) -> str:
        return f"torch.broadcast_to({code}, {shape})"

    def constant(self, name: str, value) -> str:
        # made once at import, on the default device; each function reads it on its own
        # device through _constant (constant_lines)
        return f"{name} = torch.tensor({value!r}, dtype=DTYPE)"

    def constant_lines(self, names: list[str]) -> tuple[list[str], dict]:
        """``C = _constant('C', device)``: the constant on the function's device (the one
        made at import when it is there, else a copy made once per device and kept)."""
        if not names:
            return [], {}
        return ([f"{c} = _constant({c!r}, device)  # on the inputs' device" for c in names],
                {"_constant": source(ops._constant)})

    def asarray(self, name: str, floating: bool) -> str:
        dtype = "DTYPE" if floating else "torch.int64"
        return f"{name} = torch.as_tensor({name}, dtype={dtype}, device=device)"

    def prologue(self, names: list[str]) -> tuple[list[str], dict]:
        return ([f"device = _device({', '.join(names)})"], {"_device": source(ops._device)})

    def context_lines(self, used) -> tuple[list[str], dict]:
        """The generator, made once: a seed becomes a CPU ``torch.Generator``."""
        if "rng" not in used:
            return [], {}
        return (["rng = _generator(rng)  # a seed or a torch.Generator"],
                {"_generator": source(ops._generator)})

    def running_init(self, size: int) -> tuple[str, str]:
        return (f"torch.zeros({size}, dtype=DTYPE, device=device)",
                f"torch.ones({size}, dtype=DTYPE, device=device)")

    def running_params(self) -> list[str]:
        return ["device=None"]

    def trainer(self):
        from . import torch_train

        return torch_train

    def install_hint(self, alone: bool = False) -> str:
        """The extra, and PyTorch's CPU build (a plain ``pip install torch`` on Linux
        fetches a CUDA build of several GB)."""
        return (f"{super().install_hint(alone)} (on a machine without a GPU, the CPU build first: "
                "pip install torch --index-url https://download.pytorch.org/whl/cpu)")


BACKEND = TorchBackend()

__all__ = ["BACKEND", "TORCH", "TorchBackend", "TorchPrinter", "special_helper"]
