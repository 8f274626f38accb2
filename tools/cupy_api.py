"""Write tests/cupy_api.txt: the names of CuPy's API that the cupy backend's tests check
generated code against when CuPy is not installed (issue 15).

Run with an interpreter in which ``import cupy`` works; no GPU is needed (CuPy imports
without one and fails only when it allocates)::

    python -m venv /tmp/cupyvenv && /tmp/cupyvenv/bin/pip install cupy-cuda12x
    /tmp/cupyvenv/bin/python tools/cupy_api.py tests/cupy_api.txt

It lists every public attribute of the modules below, one dotted name a line, and the
methods of every ufunc (``cupy.add.at``) and of ``cupy.random.Generator``, after a header
naming the CuPy version it came from.
"""

from __future__ import annotations

import sys

import cupy
import cupyx
import cupyx.scipy.special

MODULES = ["cupy", "cupy.random", "cupy.linalg", "cupy.lib", "cupy.lib.stride_tricks",
           "cupy.cuda.runtime",  # getDeviceCount: the cupy script asks for a device first
           "cupyx", "cupyx.scipy", "cupyx.scipy.special"]


def names() -> list[str]:
    out = set()
    for path in MODULES:
        obj = cupy if path.startswith("cupy.") or path == "cupy" else cupyx
        for part in path.split(".")[1:]:
            obj = getattr(obj, part)
        for name in dir(obj):
            if name.startswith("__"):
                continue
            out.add(f"{path}.{name}")
            value = getattr(obj, name)
            if isinstance(value, cupy.ufunc):
                out |= {f"{path}.{name}.{m}" for m in dir(value) if not m.startswith("_")}
    out |= {f"cupy.random.Generator.{m}" for m in dir(cupy.random.Generator)
            if not m.startswith("_")}
    return sorted(out)


if __name__ == "__main__":
    with open(sys.argv[1], "w") as f:
        f.write(f"# CuPy {cupy.__version__}'s API (cupy-cuda12x from PyPI), written by "
                "tools/cupy_api.py: dir() of " + ", ".join(MODULES) + ", the methods of "
                "every ufunc and of cupy.random.Generator\n")
        f.write("\n".join(names()) + "\n")
