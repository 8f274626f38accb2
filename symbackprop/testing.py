"""Gradient checking against central finite differences, and random inputs.

Finite differences are computed from the generated forward code only, so
they are an independent check of the generated backward code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .autodiff import check_of_wrt
from .codegen.emit import compile_graph
from .errors import GradError
from .graph import Graph, fmt_shape


def resolve_shape(shape, sizes: dict) -> tuple:
    """Replace size names by numbers from ``sizes`` (e.g. ``{"N": 8}``)."""
    return tuple(sizes.get(d, 4) if isinstance(d, str) else d for d in shape)


def _classes(g: Graph, n: str) -> int:
    """For an integer input, the number of classes: the last size of a float
    argument of the same consumer whose leading sizes match (logits for labels)."""
    shape = g.nx.nodes[n]["shape"]
    for c, _ in g.consumers(n):
        for a in g.args(c):
            s = g.nx.nodes[a]["shape"]
            if a != n and len(s) == len(shape) + 1 and tuple(s[:-1]) == tuple(shape) \
                    and isinstance(s[-1], int):
                return s[-1]
    return 2


def random_inputs(g: Graph, sizes: dict | None = None, seed: int = 0) -> dict:
    """Random arrays for every input and parameter of ``g``.

    Float inputs are uniform in [0.2, 1.2] (inside the domain of log and
    sqrt), parameters uniform in [-1, 1] scaled by 1/sqrt(fan-in) for 2-D
    ones, integer inputs are class labels in range.

    Examples
    --------
    >>> arrays = sb.testing.random_inputs(sb.models.mlp([4, 3, 2]), {"N": 5})
    >>> arrays["X"].shape, arrays["y"].dtype.kind, arrays["W1"].shape
    ((5, 4), 'i', (4, 3))
    """
    rng = np.random.default_rng(seed)
    sizes = {"N": 4, **(sizes or {})}
    out = {}
    for n in g.nodes("input") + g.nodes("param"):
        d = g.nx.nodes[n]
        shape = resolve_shape(d["shape"], sizes)
        if d["dtype"] == "int":
            out[n] = rng.integers(0, _classes(g, n), size=shape)
        elif d["op"] == "param":
            scale = 1 / np.sqrt(shape[0]) if len(shape) == 2 else 1.0
            out[n] = rng.uniform(-1, 1, size=shape) * scale
        else:
            out[n] = rng.uniform(0.2, 1.2, size=shape)
    return out


@dataclass
class GradCheck:
    """Result of :func:`check_grad`: worst relative error per ``wrt`` node."""

    errors: dict = field(default_factory=dict)
    checked: dict = field(default_factory=dict)
    tol: float = 1e-5
    loss: float = float("nan")

    @property
    def ok(self) -> bool:
        return all(e <= self.tol for e in self.errors.values())

    def __str__(self) -> str:
        lines = [f"{'node':<16} {'entries':>8} {'worst rel. error':>18}"]
        for k, e in self.errors.items():
            flag = "ok" if e <= self.tol else "MISMATCH"
            lines.append(f"{k:<16} {self.checked[k]:>8} {e:>18.2e}  {flag}")
        lines.append(f"{'all ok' if self.ok else 'gradient mismatch'} "
                     f"(tolerance {self.tol:g}, loss {self.loss:.6g})")
        return "\n".join(lines)


def check_grad(g: Graph, of: str | None = None, wrt=None, at: dict | None = None,
               sizes: dict | None = None, eps: float = 1e-6, tol: float = 1e-5,
               max_entries: int = 20, seed: int = 0) -> GradCheck:
    """Compare generated gradients with central finite differences.

    Parameters
    ----------
    g : Graph
        The network.
    of, wrt
        As for :func:`symbackprop.numpy_source`.
    at : dict, optional
        Values of inputs and parameters; missing ones are drawn by
        :func:`random_inputs`.
    sizes : dict, optional
        Values of size names for random inputs (default ``{"N": 4}``).
    eps : float
        Finite-difference step.
    tol : float
        Largest accepted relative error ``|fd - grad| / max(|fd|, |grad|, 1e-3)``.
    max_entries : int
        Entries checked per node, chosen at random when there are more.

    Returns
    -------
    GradCheck
        ``.errors`` maps each ``wrt`` name to its worst relative error; ``.ok``.

    Examples
    --------
    >>> report = sb.check_grad(sb.parse("L = (w*x - y)**2"), at={"w": 2, "x": 3, "y": 10})
    >>> report.ok, round(report.loss, 6)
    (True, 16.0)
    """
    of, wrt = check_of_wrt(g, of, wrt)
    arrays = random_inputs(g, sizes, seed)
    for k, v in (at or {}).items():
        if k not in g:
            raise GradError(f"at: {k!r} is not a node of the graph; give values of inputs "
                            "and parameters.")
        arrays[k] = np.array(v, dtype=float if g.nx.nodes[k]["dtype"] == "float" else int)
        want = g.nx.nodes[k]["shape"]
        if len(arrays[k].shape) != len(want):
            raise GradError(f"at: {k!r} has shape {arrays[k].shape}, expected {fmt_shape(want)}.")
    fn = compile_graph(g, of, wrt)
    loss, grads = fn.value_and_grad(**arrays)
    rng = np.random.default_rng(seed + 1)
    report = GradCheck(tol=tol, loss=float(loss))

    def f(k, idx, v):
        x = np.array(arrays[k], dtype=float)  # a copy, also of a 0-d value
        x[idx] = v
        return float(fn.value_and_grad(**{**arrays, k: x})[0])

    for k in wrt:
        x = np.asarray(arrays[k], dtype=float)
        idxs = list(np.ndindex(x.shape)) if x.ndim else [()]
        if len(idxs) > max_entries:
            idxs = [idxs[i] for i in rng.choice(len(idxs), max_entries, replace=False)]
        worst = 0.0
        for idx in idxs:
            x0 = float(x[idx])
            fd = (f(k, idx, x0 + eps) - f(k, idx, x0 - eps)) / (2 * eps)
            an = float(np.asarray(grads[k])[idx])
            worst = max(worst, abs(fd - an) / max(abs(fd), abs(an), 1e-3))
        report.errors[k], report.checked[k] = worst, len(idxs)
    return report
