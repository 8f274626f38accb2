"""How the parameters of a generated training step start, and the ``init_params`` source.

:func:`plan_init` decides per parameter: a weight with two or more axes gets He normal
when the layer it computes feeds a rectifier (relu), Xavier/Glorot uniform otherwise;
vectors and scalars (biases) start at zero. A weight's fan-in and fan-out come from the
op that consumes it (``OpDef.fans`` where the op declares it). :func:`init_source` writes
``init_params`` (with the draws it needs from :mod:`symbackprop.codegen.runtime.init`),
and :func:`initial_params` runs that same code in-process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from ..errors import CodegenError
from ..graph import Graph, fmt_shape
from .emit import safe_text
from .loader import load_source
from .runtime import flat, source_of
from .runtime import init as draws


@dataclass
class ParamInit:
    """How one parameter starts: ``kind`` is "he", "xavier", "uniform" or "zeros"."""

    name: str
    shape: tuple
    kind: str
    fan_in: int = 0
    fan_out: int = 0
    gain2: float = 2.0
    note: str = ""


def _rectifier_gain2(opdef, attrs: dict) -> float | None:
    """For an activation that is ``x`` for ``x > 0`` and ``a*x`` for ``x < 0`` (relu:
    ``a = 0``), He's ``gain**2 = 2 / (1 + a**2)``; ``None`` for any other op. Decided
    from the op's SymPy expression, never from its name."""
    if not opdef.elementwise or opdef.expr is None:
        return None
    try:
        syms, e = opdef.expr(attrs)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return _expr_gain2(e, syms[0]) if len(syms) == 1 else None


@lru_cache(maxsize=256)  # every layer asks for the same activation: evaluate it once
def _expr_gain2(e, x) -> float | None:
    """:func:`_rectifier_gain2` for the activation ``e`` of the symbol ``x``."""
    try:
        f = {v: complex(e.subs(x, v).evalf()) for v in (0.5, 1, 2, -0.5, -1, -2)}
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if any(abs(z.imag) > 1e-12 for z in f.values()):
        return None
    f = {k: z.real for k, z in f.items()}
    a = -f[-1]
    ok = (all(abs(f[v] - v) < 1e-12 for v in (0.5, 1, 2))
          and abs(f[-2] - 2 * f[-1]) < 1e-12 and abs(f[-0.5] - 0.5 * f[-1]) < 1e-12
          and 0 <= a < 1)
    return 2 / (1 + a * a) if ok else None


def _activation_after(g: Graph, n: str) -> str | None:
    """The activation a layer output ``n`` feeds: follow its first consumer past
    two-argument elementwise nodes whose other argument is a parameter or a
    constant, or is computed from them alone (adding a bias, or a bias reshaped to
    broadcast over an image), to the first one-argument elementwise op."""
    seen = 0
    while seen < 64:
        seen += 1
        uses = g.consumers(n)
        if not uses:
            return None
        c = uses[0][0]
        if not g.opdef(c).elementwise:
            return None
        args = g.args(c)
        if len(args) == 1:
            return c
        others = [a for a in args if a != n]
        if len(args) == 2 and len(others) == 1 and all(
                g.role(a) in ("param", "const") for a in g.ancestors(others)
                if g.is_leaf(a)):
            n = c
            continue
        return None
    return None


def _fans(g: Graph, p: str) -> tuple[int, int, str | None]:
    """``(fan_in, fan_out, layer)`` of the weight ``p``: asked of the first consumer
    whose op declares ``fans(arg_index, arg_shapes, attrs)`` and answers (``h @ W``: W is
    (fan_in, fan_out); ``W @ h``: (fan_out, fan_in)). With no such layer,
    ``(shape[0], prod(shape[1:]), None)``."""
    shape = tuple(g.nx.nodes[p]["shape"])
    for c, pos in g.consumers(p):
        fans = g.opdef(c).fans
        if fans is not None:
            found = fans(pos, [tuple(g.nx.nodes[a]["shape"]) for a in g.args(c)],
                         g.nx.nodes[c].get("attrs", {}))
            if found is not None:
                return (*found, c)
    return shape[0], math.prod(shape[1:]), None


INITS = ("he", "xavier", "uniform")  # what init= may force on every weight


def plan_init(g: Graph, init: str | None = None) -> list[ParamInit]:
    """Initialisation of every parameter: a weight with two or more axes gets He
    normal when the layer it computes feeds a rectifier (relu), Xavier/Glorot
    uniform otherwise; vectors and scalars (biases) start at zero. The fans come
    from the op that uses the weight (``h @ W``: W is (fan_in, fan_out); ``W @ h``:
    (fan_out, fan_in)). ``init`` ("he", "xavier" or "uniform":
    U(−1/√fan_in, 1/√fan_in)) gives every weight that rule instead.

    Examples
    --------
    >>> [(i.name, i.kind, i.fan_in, i.fan_out) for i in plan_init(sb.models.mlp([4, 3, 2]))]
    [('W1', 'he', 4, 3), ('b1', 'zeros', 0, 0), ('W2', 'xavier', 3, 2), ('b2', 'zeros', 0, 0)]
    """
    if init is not None and init not in INITS:
        raise CodegenError(f"init={init!r} is not one of {', '.join(INITS)}.")
    out = []
    for p in g.nodes("param"):
        shape = tuple(g.nx.nodes[p]["shape"])
        if len(shape) < 2:
            out.append(ParamInit(p, shape, "zeros"))
            continue
        fan_in, fan_out, layer = _fans(g, p)
        if init is not None:
            out.append(ParamInit(p, shape, init, fan_in, fan_out, note=f"init={init}"))
            continue
        act = _activation_after(g, layer) if layer else None
        gain2 = _rectifier_gain2(g.opdef(act), g.nx.nodes[act]["attrs"]) if act else None
        what = f"feeds {g.nx.nodes[act]['op']} at {act}" if act else "feeds no activation"
        if gain2 is not None:
            out.append(ParamInit(p, shape, "he", fan_in, fan_out, gain2, what))
        else:
            out.append(ParamInit(p, shape, "xavier", fan_in, fan_out, note=what))
    return out


def init_source(plan: list[ParamInit]) -> list[str]:
    """The blocks of a generated module that draw the initial parameters: ``he_normal``
    and ``xavier_uniform`` where the plan uses them, then ``init_params(rng=0)``.
    ``init_params`` returns :func:`~symbackprop.codegen.runtime.flat.flat_views`, which
    the module must carry too.

    Examples
    --------
    >>> src = init_source(plan_init(sb.parse("L = (w*x - y)**2", params=["w"])))[-1]
    >>> print(src[src.index("    rng ="):])
        rng = np.random.default_rng(rng)
        return flat_views({
            'w': np.zeros((), dtype=DTYPE),
        })
    <BLANKLINE>
    """
    kinds = {i.kind for i in plan}
    blocks = ([source_of(draws, "he_normal")] if "he" in kinds else []) \
        + ([source_of(draws, "xavier_uniform")] if "xavier" in kinds else []) \
        + ([source_of(draws, "uniform_fan_in")] if "uniform" in kinds else [])
    lines = ["def init_params(rng=0):",
             '    """Initial parameters from a seed (or a np.random.Generator): He normal for',
             "    weights feeding a rectifier, Xavier/Glorot uniform for the other weights,",
             '    zero biases. Draws in the order below: a seed always gives the same values."""',
             "    rng = np.random.default_rng(rng)",
             "    return flat_views({"]
    for i in plan:
        key = repr(i.name)
        if i.kind == "zeros":
            lines.append(f"        {key}: np.zeros({i.shape!r}, dtype=DTYPE),")
        elif i.kind == "he":
            gain = "" if i.gain2 == 2.0 else f", gain2={i.gain2!r}"
            lines.append(f"        {key}: he_normal(rng, {i.shape!r}, fan_in={i.fan_in}{gain}),"
                         f"  # {safe_text(i.note)}")
        elif i.kind == "uniform":
            lines.append(f"        {key}: uniform_fan_in(rng, {i.shape!r}, fan_in={i.fan_in}),"
                         f"  # {safe_text(i.note)}")
        else:
            lines.append(f"        {key}: xavier_uniform(rng, {i.shape!r}, fan_in={i.fan_in}, "
                         f"fan_out={i.fan_out}),  # {safe_text(i.note)}")
    lines.append("    })")
    return blocks + ["\n".join(lines) + "\n"]


def init_text(plan: list[ParamInit]) -> str:
    """The plan for a docstring.

    Examples
    --------
    >>> init_text(plan_init(sb.models.mlp([4, 3, 2])))
    'W1 He normal (feeds relu at h1); W2 Xavier uniform (feeds no activation); b1, b2 zero'
    """
    parts = []
    for i in plan:
        if i.kind == "he":
            parts.append(f"{i.name} He normal ({i.note})")
        elif i.kind == "xavier":
            parts.append(f"{i.name} Xavier uniform ({i.note})")
    zeros = [i.name for i in plan if i.kind == "zeros"]
    if zeros:
        parts.append(f"{', '.join(zeros)} zero")
    return "; ".join(parts)


@lru_cache(maxsize=64)  # random_inputs asks again for every test example of a network
def _init_module(source: str):
    return load_source(source, "symbackprop_init_params")


def initial_params(g: Graph, rng=0, dtype: str = "float64", init: str | None = None) -> dict:
    """The parameters that ``init_params(rng)`` of ``g``'s generated training code returns.

    Drawn by that same code: the ``init_params`` function (with its ``he_normal``,
    ``xavier_uniform`` and ``flat_views`` helpers) that
    :func:`~symbackprop.codegen.train.train_step` and
    :func:`~symbackprop.codegen.script.training_script` write for ``g`` is loaded and
    called, so the rule (:func:`plan_init`) and the draws exist once, and a seed gives
    the same arrays here, in ``sb.compile(g, optimizer=...).init_params(seed)`` and in
    a training script run with ``--seed``.

    Parameters
    ----------
    g : Graph
        The network; every parameter needs a fixed size in every axis.
    rng : int or numpy.random.Generator
        The seed (or the generator to draw from).
    dtype : {"float64", "float32"}
    init : {"he", "xavier", "uniform"}, optional
        Every weight by that rule instead of the default one (:func:`plan_init`).

    Returns
    -------
    dict
        Parameter name -> array (views of one flat buffer, as ``init_params`` returns
        them), in the order of ``g.nodes("param")``: He normal weights where the layer
        feeds a rectifier, Xavier/Glorot uniform for the other weights, zero biases.

    Raises
    ------
    CodegenError
        For a parameter with a size name (such as ``N``) in its shape.

    Examples
    --------
    >>> from symbackprop.codegen.init import initial_params
    >>> g = sb.models.mlp([4, 3, 2])
    >>> p = initial_params(g, 0)
    >>> q = sb.compile(g, optimizer="sgd").init_params(0)
    >>> all(np.array_equal(p[k], q[k]) for k in q), p["b1"].tolist()
    (True, [0.0, 0.0, 0.0])
    """
    if dtype not in ("float64", "float32"):
        raise ValueError(f"dtype {dtype!r}: expected 'float64' or 'float32'.")
    for p in g.nodes("param"):
        shape = g.nx.nodes[p]["shape"]
        if not all(isinstance(d, int) for d in shape):
            raise CodegenError(f"parameter {p!r} has shape {fmt_shape(shape)}; initialising it "
                               "needs a fixed size in every axis.")
    source = "\n\n".join(["import numpy as np", f"DTYPE = np.{dtype}",
                          source_of(flat, "flat_views"), *init_source(plan_init(g, init))])
    return _init_module(source).init_params(rng)


__all__ = ["ParamInit", "init_source", "init_text", "initial_params", "plan_init"]
