"""Backends: which array library generated code is written for (issue 15).

A backend is one :class:`Backend` record: its op table (``lowering.TABLES[name]``: how
each structural op is written), its elementwise printer (a
:class:`~symbackprop.codegen.printer.Printer` subclass writing ``jnp.exp``, ``xp.exp``),
its runtime helpers (``codegen/runtime/<backend>_ops.py``, real Python copied into the
modules that call them) and its module template: the imports and ``DTYPE`` lines, how a
function turns its arguments into arrays, how a scalar or a broadcast is written, and
the decorators of the generated functions (``@jax.jit``). Code generation asks the
record and never tests a backend's name.

* ``numpy``: the default, and the one backend with the memory-planned path (``out=``,
  :mod:`~symbackprop.codegen.plan`).
* ``jax`` (:mod:`~symbackprop.codegen.jax_backend`): functional code under ``jax.jit``.
* ``array_api`` (:mod:`~symbackprop.codegen.array_api_backend`): functional code that
  uses only the Python array API standard, on the namespace of the arrays it is given.
* ``torch`` (:mod:`~symbackprop.codegen.torch_backend`): plain tensor code under
  ``torch.inference_mode()``, on the device of the tensors given; its training step
  changes parameters in place (:mod:`~symbackprop.codegen.torch_train`).
* ``cupy`` (:mod:`~symbackprop.codegen.cupy_backend`): NumPy's memory-planned code with
  ``cp`` for ``np``, on the GPU.

The records of ``jax`` and ``array_api`` live in their own modules, imported when first
asked for (:func:`get`), so ``import symbackprop`` imports no JAX.

Examples
--------
>>> get("numpy").title, get("jax").functional, get("array_api").planned
('NumPy', True, False)
>>> get("tensorflow")
Traceback (most recent call last):
...
symbackprop.errors.CodegenError: unknown backend 'tensorflow'; use one of numpy, jax, array_api, torch, cupy.
"""

from __future__ import annotations

import importlib
import importlib.util

import sympy as sp

from ..errors import CodegenError
from ..ops import registry
from . import lowering as _lowering
from .printer import Printer, expr_code
from .runtime import source_of


class Backend:
    """One array library that generated code can be written for; this base class is
    NumPy, and its methods write NumPy's text. A backend subclasses it and overrides
    the text it writes differently.

    Attributes
    ----------
    name : str
        The key of :data:`~symbackprop.codegen.lowering.TABLES` and of ``backend=``.
    title : str
        The library's name in docstrings ("Needs only NumPy.").
    library : str or None
        The module that running the generated code imports (None: none; the array API
        module runs on whatever library its arrays come from).
    extra : str
        The extra of ``pip install symbackprop[extra]`` that installs the library.
    package : str
        The library's own package on PyPI, which a training script (which needs no
        symbackprop) names when the library is missing.
    printer : type
        The :class:`~symbackprop.codegen.printer.Printer` writing elementwise code.
    planned : bool
        Whether ``value_and_grad`` and the training step take the memory-planned path
        (calls writing into a workspace with ``out=``); NumPy's alone.
    functional : bool
        Arrays never change: ``update`` and ``train_step`` return new parameters and
        optimizer state instead of changing them in place.
    reserved : tuple
        Names the generated code uses (the library's alias), kept from node names.
    """

    name = "numpy"
    title = "NumPy"
    library: str | None = "numpy"
    extra = ""
    package = "numpy"
    printer: type = Printer
    planned = True
    functional = False
    reserved: tuple = ()
    sharded_script = False  # writes a data-parallel training script (codegen/jax_script.py)
    # the dtypes its mixed-precision training step computes in, with float32 masters
    # (codegen/jax_mixed.py): "float16" for precision="mixed", "bfloat16"; NumPy's mixed
    # step is the planned one (codegen/mixed.py)
    half_dtypes: tuple = ()
    # its arrays live on a device (cupy's GPU): the NumPy training script's data, shuffling
    # and checkpoints stay NumPy arrays on the host, moved with cp.asarray and cp.asnumpy
    # (the "device" variants of codegen/runtime/script.py)
    on_device = False

    # -- the module ------------------------------------------------------------------------
    def imports(self) -> str:
        """The import lines of the array library."""
        return "import numpy as np"

    def dtype_lines(self, dtype: str) -> list[str]:
        """The lines defining ``DTYPE`` (before the module's constants)."""
        return [f"DTYPE = np.{dtype}"]

    def script_imports(self) -> str:
        """The import lines of a training script: NumPy's (its data, shuffling and
        checkpoints are NumPy arrays), then the library's, guarded: run where the library
        is missing, the script stops with one line naming what to install and exit status
        2, as for bad input (the MPI script says the same of mpi4py), not a traceback. A
        generated module keeps a plain import: a program imports it and may catch the
        ImportError; exiting is a script's business."""
        own = [ln for ln in self.imports().splitlines() if ln != _NUMPY_IMPORT]
        if not own:
            return _NUMPY_IMPORT
        message = _string_lines(f"{_PROG}: error: this script needs {self.title} ({{e}}); "
                                f"install it with: {self.install_hint(alone=True)}")
        message[-1] += ", file=sys.stderr)"
        return "\n".join([
            _NUMPY_IMPORT, "",
            f"try:  # without {self.title}: one line naming what to install, exit status 2",
            *(f"    {ln}" for ln in own),
            "except ImportError as e:",
            f"    print({message[0]}",
            *(f"          {ln}" for ln in message[1:]),
            "    sys.exit(2)"])

    def decorators(self, function: str, params=()) -> list[str]:
        """The decorator lines of a generated model function (``forward``,
        ``value_and_grad``) taking the parameters ``params`` (``training=True`` among
        them: a mode that JAX must see as a Python value)."""
        return []

    # -- statements ------------------------------------------------------------------------
    def table(self) -> dict:
        return _lowering.TABLES[self.name]

    def lowering(self, op) -> _lowering.Lowering:
        """The :class:`~symbackprop.codegen.lowering.Lowering` of ``op`` for this backend."""
        return _lowering.lowering(op, self.name)

    def expr_code(self, e: sp.Expr, names: dict | None = None) -> str:
        """The code of an elementwise expression (:func:`~symbackprop.codegen.printer.expr_code`)."""
        return expr_code(e, names, self.printer)

    def node_code(self, e: sp.Expr, names: dict, floating: bool) -> str:
        """The code of an elementwise node: its expression ``e`` over ``names`` (the codes of
        the nodes it reads, at least one), of floats when ``floating``. A backend may compute
        it in place where that is safe (torch's)."""
        return self.expr_code(e, names)

    def function_helpers(self, e: sp.Expr) -> dict:
        """Name -> source of the helpers that the printed code of ``e`` calls."""
        return _lowering.function_helpers(e)

    def scalar(self, code: str) -> str:
        """A scalar of DTYPE (an array: methods such as ``.reshape`` apply)."""
        return f"DTYPE({code})"

    def broadcast(self, code: str, shape: str) -> str:
        return f"np.broadcast_to({code}, {shape})"

    def constant(self, name: str, value) -> str:
        """The module-level line defining a constant array."""
        return f"{name} = np.array({value!r}, dtype=DTYPE)"

    def constant_lines(self, names: list[str]) -> tuple[list[str], dict]:
        """Lines before a function's statements for the module's array constants
        ``names`` that it reads, with the helpers they call: none where the constant made at
        import serves every call (torch moves it to the function's device)."""
        return [], {}

    def asarray(self, name: str, floating: bool) -> str:
        """A function's first look at an argument: an array (of DTYPE when floating)."""
        cast = ", dtype=DTYPE" if floating else ""
        return f"{name} = np.asarray({name}{cast})"

    def finish(self, text: str) -> str:
        """The finished module text as this backend writes it: NumPy's as it is; a
        library mirroring NumPy's API (CuPy) rewrites NumPy's text here."""
        return text

    def prologue(self, names: list[str]) -> tuple[list[str], dict]:
        """Lines that open every generated function taking the arguments ``names``,
        before :meth:`asarray` (with the helpers they call)."""
        return [], {}

    # -- batch norm's and dropout's state (issue 13; functional backends: issue 15) ----------
    def context_lines(self, used) -> tuple[list[str], dict]:
        """Lines opening a function whose ops read the call-time arguments ``used``
        (:data:`~symbackprop.codegen.lowering.CONTEXT`: ``running``, ``rng``), after
        ``training = True``, and the helpers they call: NumPy makes the generator once."""
        return (["rng = np.random.default_rng(rng)  # a seed or a np.random.Generator"]
                if "rng" in used else []), {}

    def running_init(self, size: int) -> tuple[str, str]:
        """The code of one batch norm's running mean and variance at the start (zeros and
        ones of ``size`` features), in ``init_running``."""
        return f"np.zeros({size}, DTYPE)", f"np.ones({size}, DTYPE)"

    def running_params(self) -> list[str]:
        """The parameters of ``init_running`` (the array API's takes the namespace)."""
        return []

    # -- the functional training module (symbackprop.codegen.functional) --------------------
    def step_decorators(self, context=()) -> list[str]:
        """The decorator lines of ``train_step``; ``context``: the names of
        :data:`~symbackprop.codegen.lowering.CONTEXT` it takes (``running`` is donated
        with the parameters and state)."""
        return []

    def step_imports(self) -> tuple:
        """Standard-library modules the training module imports."""
        return ()

    def step_note(self) -> str:
        """The last sentence of ``train_step``'s docstring."""
        return ""

    def init_source(self, plan: list) -> list[str]:
        """The blocks drawing the initial parameters (``init_params(seed=0)``) for the plan
        of :func:`~symbackprop.codegen.init.plan_init`."""
        raise CodegenError(f"backend {self.name!r} writes no functional training module.")

    def optimizer_source(self, runtime, name: str) -> str:
        """The source of the optimizer's ``name`` (``init_state``, ``update``) in the
        functional training module: that of ``runtime``, its module in
        :mod:`~symbackprop.codegen.runtime.functional` (JAX writes its own Adam: an int32
        step count, the bias corrections in the moments' dtype)."""
        return source_of(runtime, name)

    # -- a training module of its own (torch: in place, not planned) ------------------------
    def trainer(self):
        """The module writing this backend's training module and script
        (:mod:`~symbackprop.codegen.torch_train`: ``step_source``, ``compile_step``,
        ``script_source``), or None: NumPy's planned module, or the functional one."""
        return None  # noqa: RET501 -- the answer "none", not a procedure's end

    # -- installation -------------------------------------------------------------------------
    def install_hint(self, alone: bool = False) -> str:
        """The command installing the library: symbackprop's extra (:meth:`require`'s
        error), or ``alone`` the library's own package (a training script's line when the
        library is missing: the script needs no symbackprop)."""
        extra = f"'symbackprop[{self.extra or self.name}]'"
        return f"pip install {self.package if alone else extra}"

    def require(self) -> None:
        """Raise :class:`~symbackprop.errors.CodegenError` (one line naming the extra to
        install) when running this backend's code needs a library that is missing (CuPy's:
        or a CUDA device that it does not see)."""
        if self.library and importlib.util.find_spec(self.library) is None:
            raise CodegenError(
                f"backend {self.name!r} needs {self.title}, which is not installed; install "
                f"it with: {self.install_hint()}.")


_NUMPY_IMPORT = "import numpy as np"
# a script's name in its one-line errors (runtime/script.py's fail), as one word for
# _string_lines
_PROG = "{os.path.basename(sys.argv[0]) or 'train.py'}".replace(" ", "\0")


def _string_lines(text: str, width: int = 80) -> list[str]:
    """``text`` as adjacent string literals of about ``width`` characters, split after
    spaces; an f-string where a part has a ``{field}``. NUL stands for a space that must
    not split (inside a field).

    Examples
    --------
    >>> for part in _string_lines("this script needs JAX ({e}); install it with: pip "
    ...                           "install jax", width=30):
    ...     print(part)
    f"this script needs JAX ({e}); "
    "install it with: pip install "
    "jax"
    """
    parts, line = [], ""
    for word in text.split(" "):
        if line and len(line) + len(word) > width:
            parts.append(line)
            line = ""
        line += word + " "
    parts.append(line[:-1])
    return [("f" if "{" in p else "") + '"' + p.replace("\0", " ") + '"' for p in parts]


NUMPY = Backend()

# name -> the module defining its record (BACKEND), imported on first use
_MODULES = {"jax": "jax_backend", "array_api": "array_api_backend"}
_MODULES["torch"] = "torch_backend"  # issue 15: plain tensor code under torch.inference_mode()
_MODULES["cupy"] = "cupy_backend"  # issue 15: NumPy's planned code with cp for np
_LOADED: dict[str, Backend] = {"numpy": NUMPY}
NAMES = ("numpy", *_MODULES)


def get(backend: str | Backend = "numpy") -> Backend:
    """The :class:`Backend` called ``backend`` (a record is returned as it is); raises
    :class:`~symbackprop.errors.CodegenError` for an unknown name."""
    if isinstance(backend, Backend):
        return backend
    found = _LOADED.get(backend)
    if found is None:
        if backend not in _MODULES:
            raise CodegenError(f"unknown backend {backend!r}; use one of {', '.join(NAMES)}.")
        module = importlib.import_module(f"{__package__}.{_MODULES[backend]}")
        found = _LOADED[backend] = module.BACKEND
    return found


def has_code(op: str, backend: str) -> bool:
    """Whether op ``op`` (a name) has code for ``backend``.

    Examples
    --------
    >>> has_code("softmax", "jax"), has_code("dropout_mask", "array_api"), has_code("relu", "jax")
    (True, False, True)
    """
    try:
        get(backend).lowering(registry.get(op))
    except CodegenError:
        return False
    return True


def script_backends() -> tuple[str, ...]:
    """The backends that write a training script (``sb.training_script``, ``train-script``):
    their own (a ``trainer``, torch), the data-parallel one (``sharded_script``, jax) or the
    NumPy one (every planned backend: numpy, cupy).

    Examples
    --------
    >>> script_backends()
    ('numpy', 'jax', 'torch', 'cupy')
    """
    return tuple(n for n in NAMES if writes_script(get(n)))


def writes_script(b: Backend) -> bool:
    """Whether backend ``b`` writes a training script: its own (a ``trainer``), the
    data-parallel one (``sharded_script``) or, planned, the NumPy one. Loads no other
    backend (a record's module imports its library where installed: seconds for JAX and
    PyTorch), as :func:`script_backends` does."""
    if b.trainer() is not None:
        return True
    return b.sharded_script if b.functional else True


__all__ = ["NAMES", "NUMPY", "Backend", "get", "has_code", "script_backends", "writes_script"]

