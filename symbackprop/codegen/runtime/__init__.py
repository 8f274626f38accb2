"""The fixed parts of generated modules, as ordinary Python that ruff checks and tests run.

Each module here is importable and runnable on its own (it defines the globals the
generated code defines, such as ``DTYPE``); code generation copies the source of the
functions it needs (:func:`source`, :func:`source_of`) instead of filling string
templates.

Where generated code comes in variants, the runtime holds the fullest one as a real
code path, ``if CONDITION:  # variant: NAME``, and generation chooses:
``variants={"NAME": True}`` keeps the block's body (one level less indented) without
the ``if`` line, ``False`` drops the whole block; a variant inside a kept block is
chosen in turn. The ``if`` stays correct when the
module runs alone. The ``if`` line may end in a ruff ``# noqa: CODE`` after the name (a
nested ``if`` that ruff would merge, which generation unnests), dropped with it.

Modules: :mod:`.flat` (flat buffers), :mod:`.init` (weight draws), :mod:`.check`
(the nan/inf check), :mod:`.optimizers` (one module per optimizer), :mod:`.script`
(the training script's data loading, checkpoints and main loop).
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import re
import textwrap
from functools import cache
from pathlib import Path

# a variant's if line may end in a ruff noqa (a nested if that generation unnests)
_VARIANT = re.compile(r"^(\s*)if .*:\s*# variant: (\w+)(?:\s+# noqa: [^#]*)?$")


def source(*objects, variants: dict | None = None) -> str:
    """The source of functions or classes, dedented, two blank lines apart, ending in a
    newline: what a generated module carries of them.

    Examples
    --------
    >>> def _twice(x):
    ...     return 2 * x
    >>> print(source(_twice))
    def _twice(x):
        return 2 * x
    <BLANKLINE>
    """
    return _join([inspect.getsource(o) for o in objects], variants)


def source_of(module, *names: str, variants: dict | None = None) -> str:
    """The source of the top-level statements of a runtime ``module`` that define
    ``names``: functions, classes, assignments (``_FLAT = {}``), or ``"__main__"`` for the
    ``if __name__ == "__main__":`` block; two blank lines apart, ending in a newline.

    ``variants`` chooses the blocks marked ``# variant: NAME`` (see the module's
    docstring); every marked block of the copied text must be chosen. ``module`` may be
    a runtime module's name (``"jax_mixed"``): its source is then read without importing
    it, for the modules that import an optional library (JAX), which ``import
    symbackprop`` must not load.

    Examples
    --------
    >>> from symbackprop.codegen.runtime import flat
    >>> print(source_of(flat, "_FLAT"))
    _FLAT = {}
    <BLANKLINE>
    >>> "if FOLDED" in source_of(flat, "_flat", variants={"folded": True})
    False
    """
    found = _statements(module)
    missing = [n for n in names if n not in found]
    if missing:
        name = module if isinstance(module, str) else module.__name__
        raise KeyError(f"{name} defines no top-level {missing[0]!r}")
    return _join([found[n] for n in names], variants)


@cache
def _statements(module) -> dict:
    if isinstance(module, str):  # a runtime module by name: read, not imported
        text = Path(importlib.util.find_spec(f"{__name__}.{module}").origin).read_text()
    else:
        text = inspect.getsource(module)
    lines = text.splitlines(True)
    out = {}
    for node in ast.parse(text).body:
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        segment = "".join(lines[first - 1:node.end_lineno])
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out[node.name] = segment
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            out.update({t.id: segment for t in targets if isinstance(t, ast.Name)})
        elif isinstance(node, ast.If) and ast.unparse(node.test) == "__name__ == '__main__'":
            out["__main__"] = segment
    return out


def _join(texts: list, variants: dict | None) -> str:
    return "\n\n".join(_choose(textwrap.dedent(t), variants or {}).rstrip("\n") + "\n"
                       for t in texts)


def _choose(text: str, variants: dict) -> str:
    """``text`` with each ``if ...:  # variant: NAME`` block kept (body dedented one
    level, the ``if`` line dropped) or dropped, as ``variants[NAME]`` says."""
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        m = _VARIANT.match(lines[i])
        if not m:
            out.append(lines[i])
            i += 1
            continue
        indent, name = m.groups()
        if name not in variants:
            raise KeyError(f"the variant {name!r} was not chosen (variants={{{name!r}: ...}})")
        i += 1
        body = []
        while i < len(lines) and (not lines[i].strip()
                                  or len(lines[i]) - len(lines[i].lstrip()) > len(indent)):
            body.append(lines[i])
            i += 1
        while body and not body[-1].strip():  # blank lines after the block stay
            body.pop()
            i -= 1
        if variants[name]:  # a variant inside it is chosen too
            out += _choose("\n".join(ln[4:] if ln.strip() else ln for ln in body),
                           variants).split("\n")
    return "\n".join(out)
