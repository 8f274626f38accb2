"""Imports flow one way: errors -> ops -> graph -> build -> autodiff
-> display/formulas/optimize -> derive -> codegen.runtime -> codegen -> codegen.compiled
-> render -> report -> cli. A module imports
(at module level) only from earlier layers.

Display hooks (``Graph._repr_mimebundle_``) import render lazily inside the method:
that is the one sanctioned exception, and it is not a module-level import.
"""

import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parent.parent / "symbackprop"
LAYERS = [
    ["errors", "ops.stable", "sizes"],
    ["expr", "ops.registry"],
    ["ops.elementwise", "ops.tensor", "ops.products", "ops.select", "ops.arrays", "ops.conv", "ops.norm", "ops"],
    ["graph"],
    ["build", "models", "layers"],
    ["autodiff"],
    ["display", "display.numbers", "display.printers", "display.expressions", "display.labels",
     "display.charts", "display.mathml", "edges", "formulas", "optimize", "optimize.rewrite",
     "optimize.dce", "optimize.cse",
     "optimize.fold", "optimize.fuse", "optimize.simplify",
     # the lowering table and the runtime it copies depend on ops alone; derivations
     # evaluate ops at a point through it
     "codegen.runtime", "codegen.runtime.numpy_ops", "codegen.layout", "codegen.printer",
     "codegen.lowering",
     # the backends (issue 15): each one's table, printer and runtime helpers
     "codegen.runtime.jax_ops", "codegen.runtime.jax_init", "codegen.runtime.array_api_ops",
     "codegen.runtime.jax_optimizers", "codegen.runtime.jax_optimizers.adam",
     "codegen.backends", "codegen.jax_backend", "codegen.array_api_backend",
     "codegen.runtime.torch_ops", "codegen.runtime.torch_init", "codegen.torch_backend",
     "codegen.runtime.torch_mixed"],
    ["derivation"],
    ["codegen.runtime.flat", "codegen.runtime.init", "codegen.runtime.check", "codegen.runtime.fused",
     "codegen.runtime.script", "codegen.runtime.atomic", "codegen.runtime.optimizers", "codegen.runtime.optimizers.sgd",
     "codegen.runtime.optimizers.sgd_scaled", "codegen.runtime.optimizers.momentum",
     "codegen.runtime.optimizers.adam", "codegen.runtime.workspace", "codegen.runtime.mixed",
     "codegen.runtime.functional", "codegen.runtime.functional.sgd",
     "codegen.runtime.functional.momentum", "codegen.runtime.functional.adam",
     "codegen.runtime.jax_script", "codegen.runtime.jax_mixed", "codegen.runtime.torch_script", "codegen.runtime.cupy_ops",
     "codegen.runtime.cupy_script",
     "codegen.runtime.torch_optimizers", "codegen.runtime.torch_optimizers.sgd",
     "codegen.runtime.torch_optimizers.momentum", "codegen.runtime.torch_optimizers.adam"],
    ["codegen", "codegen.stability", "codegen.loader", "codegen.emit", "codegen.plan", "codegen.gradient_module",
     "codegen.optimizers", "codegen.init", "codegen.module", "codegen.train", "codegen.script",
     "codegen.checkpoint", "codegen.mixed", "codegen.sync", "codegen.functional", "codegen.jax_script",
     "codegen.jax_mixed", "codegen.torch_train", "codegen.torch_mixed",
     "codegen.cupy_backend"],  # NumPy's module, rewritten: it reads the runtime's flat
    ["codegen.compiled", "testing", "cost", "flow"],
    ["render"],
    ["report"],
    ["cli"],
    ["__main__"],  # python -m symbackprop: the command
]
LAYER = {m: i for i, ms in enumerate(LAYERS) for m in ms}


def _module(path: pathlib.Path) -> str:
    rel = path.relative_to(PKG).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(parts)


def _imports(path: pathlib.Path) -> set[str]:
    """Package modules imported at module level by the file at ``path``."""
    mod = _module(path)
    package = mod.split(".")[:-1] if path.name != "__init__.py" else mod.split(".") if mod else []
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - node.level + 1] if node.level > 1 else package
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            names = [f"{target}.{a.name}".strip(".") for a in node.names]
            found |= {n for n in names if n in LAYER} or {target}
    return {f for f in found if f in LAYER}


FILES = sorted(p for p in PKG.rglob("*.py") if p.name != "conftest.py" and _module(p))


def test_every_module_has_a_layer():
    assert sorted({_module(p) for p in FILES} - set(LAYER)) == []


@pytest.mark.parametrize("path", FILES, ids=_module)
def test_imports_flow_one_way(path):
    mod = _module(path)
    backward = sorted(m for m in _imports(path) if LAYER[m] > LAYER[mod]
                      and not (mod.startswith(m + ".") or m == mod))
    assert not backward, f"{mod} imports {backward}, which come later in the layering"


def test_importing_symbackprop_loads_no_optional_library():
    """The backends' libraries are imported when their code is run (or their source written
    from a runtime module that imports them: read by name, runtime.source_of), never by
    ``import symbackprop``: JAX alone added 1.2 s to every command's start."""
    import subprocess
    import sys

    optional = ("jax", "torch", "cupy", "mpi4py", "array_api_strict", "matplotlib", "sklearn",
                "selenium")
    code = ("import sys, symbackprop, symbackprop.cli; "
            f"print([m for m in {optional!r} if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, check=True)
    assert r.stdout.strip() == "[]", r.stdout
