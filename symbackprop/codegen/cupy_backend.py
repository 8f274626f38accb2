"""The ``cupy`` backend (issue 15): NumPy's memory-planned, in-place code on the GPU.

CuPy mirrors NumPy's API, ``out=`` included, so the ``cupy`` module is the ``numpy``
module, written by the same code (the planner, the workspace, the flat buffers, the
optimizers, mixed precision) with ``cp`` for ``np`` (``import cupy as cp``): one
statement per node, the arrays on the GPU. What CuPy lacks or spells otherwise is
declared here, and nowhere else:

* :data:`CUPY`, the op table: NumPy's entries (:data:`~symbackprop.codegen.lowering.NUMPY`)
  but ``einsum``, whose CuPy function takes no ``out=`` and no ``optimize=True``;
* :class:`CupyPrinter` and :meth:`CupyBackend.function_helpers`: ``cp.exp``; erf, erfc,
  gamma and lgamma from ``cupyx.scipy.special`` (NumPy's code maps Python's ``math``
  over the array, which a device array cannot do);
* :data:`REWRITES`, applied by :meth:`CupyBackend.finish` to the finished module text:
  the alias, then each NumPy construct CuPy cannot run, replaced by CuPy's (every
  rewrite is of text that code generation copies verbatim, and the tests check that
  none of the replaced constructs is left).

Examples
--------
>>> from symbackprop.codegen import backends
>>> b = backends.get("cupy")
>>> b.planned, b.functional, b.imports()
(True, False, 'import cupy as cp')
>>> b.finish("import cupy as cp\\n\\nx = np.maximum(np.exp(y), 0)\\n")
'import cupy as cp\\n\\nx = cp.maximum(cp.exp(y), 0)\\n'
"""

from __future__ import annotations

import importlib
import re

import sympy as sp

from ..errors import CodegenError
from ..ops.stable import StableFunction
from .backends import Backend
from .lowering import NUMPY, NUMPY_FUNCTIONS, TABLES, Lowering, _einsum_operands
from .printer import MATH_ONLY, Printer
from .runtime import cupy_ops, cupy_script, flat, source_of


def _einsum_code(c, a, out=None) -> str:
    """NumPy's einsum code for CuPy: a product is ``cp.matmul`` (with ``out=``); any other
    spec is ``cp.einsum`` without ``out=`` (CuPy has none: the result is copied into the
    planned buffer) and without ``optimize=True`` (CuPy's takes False, a path or
    cuTensorNet)."""
    ops, product = _einsum_operands(c, a)
    if product:
        return f"np.matmul({ops[0]}, {ops[1]}{'' if out is None else f', out={out}'})"
    call = f"cp.einsum({a['spec']!r}, {', '.join(ops)})"
    return call if out is None else f"cp.copyto({out}, {call})"


CUPY: dict[str, Lowering] = {
    **NUMPY,
    "einsum": Lowering(_einsum_code, out=lambda c, a, o, s: _einsum_code(c, a, out=o)),
}
TABLES["cupy"] = CUPY

# SymPy's functions that NumPy maps Python's math over (codegen/lowering.py's math_helper),
# by the helper name the printer calls: cupyx.scipy.special's function of that name
SPECIAL = {"erf": "erf", "erfc": "erfc", "gamma": "gamma", "lgamma": "gammaln"}


def special_helper(name: str) -> str:
    """Source of the helper ``_<name>``: ``cupyx.scipy.special``'s function.

    Examples
    --------
    >>> print(special_helper("lgamma").splitlines()[1].strip())
    return cupyx.scipy.special.gammaln(x)
    """
    if name not in SPECIAL:
        raise CodegenError(f"function {name} has no cupy code (cupyx.scipy.special has none).")
    return f"def _{name}(x):\n    return cupyx.scipy.special.{SPECIAL[name]}(x)\n"


_NP = re.compile(r"\bnp\.")


def _tail(text: str, start: str) -> str:
    """``text`` from the line ``start`` begins."""
    return text[text.index(start):]


# (NumPy's text after the alias changed, CuPy's text), in order; each is text that code
# generation copies verbatim from codegen/runtime (or writes in one place), so an exact
# replacement finds every use:
REWRITES: list[tuple[str, str]] = [
    # the flat-buffer check reads host addresses (__array_interface__): CuPy's version
    # compares the first entries of the views with shares_memory (the loop of each
    # _flat_base: a mixed module's reads MASTER for DTYPE before it)
    (_tail(_NP.sub("cp.", source_of(flat, "_flat_base")), "    address = "),
     _tail(source_of(cupy_ops, "_flat_base"), "    start = 0")),
    # the read-only caches (_rows, _ones, _constant): a CuPy array has no writeable flag
    ("\n        v.flags.writeable = False", ""),
    # the initial draws: CuPy's Generator draws standard_normal, not normal(loc, scale),
    # and the scales are numbers (cp.sqrt of a number is an array on the device)
    ("rng.normal(0.0, cp.sqrt(gain2 / fan_in), size=shape)",
     "(math.sqrt(gain2 / fan_in) * rng.standard_normal(size=shape))"),
    ("cp.sqrt(6.0 / (fan_in + fan_out))", "math.sqrt(6.0 / (fan_in + fan_out))"),
    ("1.0 / cp.sqrt(fan_in)", "1.0 / math.sqrt(fan_in)"),
    # sizes of shapes (tuples): CuPy's prod takes only device arrays
    ("int(cp.prod(", "int(math.prod("),
    # the labels' flat positions: NumPy's ravel_multi_index raises for a label out of
    # range, CuPy's wraps it unless asked to raise (a check that waits for the GPU)
    ("cp.ravel_multi_index((_rows(n), labels), logits.shape)",
     "cp.ravel_multi_index((_rows(n), labels), logits.shape, mode='raise')"),
    # mixed precision's overflow check: CuPy's errstate is cupyx's (the same arguments)
    ("cp.errstate(", "cupyx.errstate("),
]
# what must not be left in a cupy module (the tests check): NumPy's constructs above
LEFT_OUT = ("np.", "__array_interface__", "writeable", "rng.normal(", "cp.errstate(",
            "cp.vectorize", "optimize=True", "cp.prod(", "cp.sqrt(fan_in)", "cp.sqrt(6.0")


def _import_math(text: str) -> str:
    """``text`` importing math (which the rewrites call), sorted into the module's
    standard-library imports (its first block of imports, none aliased), or as their block
    before its first import (the library's: ``import cupy as cp``, or NumPy's in a
    script)."""
    at = re.search(r"^import ", text, re.MULTILINE).start()
    std = re.match(r"(?:import \w+\n)+(?=\n)", text[at:])
    if std:
        lines = sorted([*std[0].splitlines(), "import math"])
        return text[:at] + "\n".join(lines) + "\n" + text[at + std.end():]
    return text[:at] + "import math\n\n" + text[at:]


class CupyPrinter(Printer):
    """Elementwise expressions as CuPy code (``cp.exp``, ``cp.maximum``).

    Examples
    --------
    >>> from symbackprop.codegen.printer import expr_code
    >>> expr_code(1 / (1 + sp.exp(-sp.Symbol("h"))), printer=CupyPrinter)
    '1 / (1 + cp.exp(-h))'
    """

    prefix = "cp"


class CupyBackend(Backend):
    """The module template of the ``cupy`` backend: NumPy's, memory-planned and in
    place, with ``import cupy as cp`` (and ``cupyx`` where a rewrite calls it). The
    arrays passed are moved to the GPU by ``cp.asarray``; results are CuPy arrays
    (``cp.asnumpy`` brings them back)."""

    name = "cupy"
    title = "CuPy"
    library = "cupy"
    extra = "cupy"
    package = "cupy-cuda12x"  # the wheel for CUDA 12; the module is cupy
    printer = CupyPrinter
    planned = True
    functional = False
    reserved = ("cp", "cupyx")
    on_device = True  # the training script: the step on the GPU, data and checkpoints NumPy's

    def imports(self) -> str:
        return "import cupy as cp"

    def dtype_lines(self, dtype: str) -> list[str]:
        return [f"DTYPE = cp.{dtype}"]

    def function_helpers(self, e: sp.Expr) -> dict:
        out = {}
        for f in e.atoms(sp.Function):
            name = type(f).__name__
            if name in SPECIAL:
                out[f"_{name}"] = special_helper(name)
            elif isinstance(f, StableFunction):
                out[f"_{name}"] = NUMPY_FUNCTIONS[name]
            elif name in MATH_ONLY:
                out[f"_{MATH_ONLY[name]}"] = special_helper(MATH_ONLY[name])
        return out

    def broadcast(self, code: str, shape: str) -> str:
        return f"cp.broadcast_to({code}, {shape})"

    def constant(self, name: str, value) -> str:
        return f"{name} = cp.array({value!r}, dtype=DTYPE)"

    def asarray(self, name: str, floating: bool) -> str:
        cast = ", dtype=DTYPE" if floating else ""
        return f"{name} = cp.asarray({name}{cast})"

    def install_hint(self, alone: bool = False) -> str:  # the wheel's name is not the module's
        return super().install_hint(alone) + ("" if alone else f" (the wheel {self.package}, for CUDA 12)")

    def require(self) -> None:
        """Installed, and seeing a CUDA device: CuPy imports without one, and the compiled
        code would fail at its first allocation with CUDA's traceback."""
        super().require()
        problem = cupy_script.no_device(importlib.import_module("cupy"))
        if problem is not None:
            raise CodegenError(
                f"backend 'cupy' runs on a CUDA GPU, and CuPy sees no CUDA device here "
                f"({problem}); on this machine use backend='numpy' (the same code, on the CPU).")

    def finish(self, text: str) -> str:
        text = _NP.sub("cp.", text)
        for old, new in REWRITES:
            text = text.replace(old, new)
        if "cupyx." in text:  # cupyx ships with cupy; its scipy module is imported alone
            sub = "cupyx.scipy.special" if "cupyx.scipy.special." in text else "cupyx"
            # after the alias's line, indented as it is (a script's is guarded: try:)
            text = re.sub(r"^( *)import cupy as cp\n", lambda m: f"{m[0]}{m[1]}import {sub}\n",
                          text, count=1, flags=re.MULTILINE)
        if "math." in text and not re.search(r"^import math$", text, re.MULTILINE):
            text = _import_math(text)
        return text


BACKEND = CupyBackend()

__all__ = ["BACKEND", "CUPY", "REWRITES", "CupyBackend", "CupyPrinter", "special_helper"]
