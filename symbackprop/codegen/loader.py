"""Executing generated source as a live module.

:func:`load_source` runs a module's text under a ``<symbackprop:NAME>`` file name that
tracebacks can show; :func:`module_name` makes that name from a graph; :func:`plain`
turns a float64 scalar result into a Python ``float``.
"""

from __future__ import annotations

import linecache
import re
import types

import numpy as np


def load_source(source: str, name: str = "symbackprop_generated") -> types.ModuleType:
    """Execute generated source as a module, registered in ``linecache`` for tracebacks.

    Examples
    --------
    >>> load_source("def f():\\n    return 1\\n", "demo").f()
    1
    """
    filename = f"<symbackprop:{name}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    module = types.ModuleType(name)
    module.__file__ = filename
    exec(compile(source, filename, "exec"), module.__dict__)  # noqa: S102 -- our own source
    return module


def module_name(g, suffix: str = "") -> str:
    """The name a graph's generated module is loaded under: the graph's name with every
    run of non-word characters made ``_`` (``"network"`` when it has none), then
    ``suffix``.

    Examples
    --------
    >>> module_name(sb.Graph("my net"), "_train_step")
    'my_net_train_step'
    """
    return (re.sub(r"\W+", "_", str(g.nx.graph.get("name", "network"))) or "network") + suffix


def plain(value):
    """A float64 0-d array or NumPy scalar as a Python ``float`` (the same number);
    anything else unchanged.

    Examples
    --------
    >>> plain(np.float64(-24.0)), plain(np.array(0.5)), plain(np.ones(2))
    (-24.0, 0.5, array([1., 1.]))
    >>> plain(np.float32(0.5)).dtype  # float32 code stays float32
    dtype('float32')
    """
    if isinstance(value, (np.ndarray, np.generic)) and value.ndim == 0 \
            and value.dtype == np.float64:
        return float(value)
    return value


__all__ = ["load_source", "module_name", "plain"]
