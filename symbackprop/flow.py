"""How gradients flow through a network: :func:`gradient_flow` (``sb.gradient_flow``).

The generated code runs one forward and one backward pass on a batch (random inputs and
labels of the right kind, or the user's data), with parameters drawn by the generated
``init_params`` for the chosen initialisation, and every layer is measured: the norm of
its weights' gradient ‖∂L/∂W‖, of its output's adjoint ‖∂L/∂h‖, their ratio to the last
layer's, the grad:data ratio ‖∂L/∂W‖/‖W‖, the dead or saturated units of its activation,
and the activation's local derivative on the batch next to its bound over the reals,
derived by SymPy from the op's declaration (σ′ ≤ 1/4, tanh′ ≤ 1, relu′ ∈ {0, 1}).

Layers are the models' blocks (``sb.models.block``: ``layer1``, ``block2``, ...); a graph
without blocks gets one layer per weight (a parameter of two or more axes; with none, per
parameter), reaching through the ops that follow it up to its activation.

Thresholds (documented in docs/training.md, *How gradients flow*):

* ``VANISHING = 1e-3``, ``EXPLODING = 1e3``: a layer whose ‖∂L/∂W‖ is below 1e-3 or
  above 1e3 times the last layer's is flagged ``vanishing`` or ``exploding``;
* ``DEAD = 0.5``: a layer with more than half its units dead is flagged ``dead``; a unit
  is dead when its activation's local derivative is 0 for every sample of the batch (a
  ReLU whose input is ≤ 0 throughout);
* ``SATURATED = 0.02``: an activation value is saturated where its local derivative is
  below 2% of the op's largest derivative: |tanh| > 0.99, σ outside [0.005, 0.995].
  Ops whose derivative is piecewise constant (relu) are never saturated, only dead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import sympy as sp

from .autodiff import default_of
from .errors import GraphError, ShapeError
from .graph import Graph, fmt_shape
from .layers import layers
from .ops.elementwise import X as _XS
from .ops.elementwise import Y as _Y
from .ops.elementwise import _kinks

VANISHING, EXPLODING, DEAD, SATURATED = 1e-3, 1e3, 0.5, 0.02
LESSON = 0.9  # the lessons' per-layer factor: 0.9 ** 50 ≈ 0.005
INITS = ("he", "xavier", "uniform")


# -- the closed-form bound of a local derivative -------------------------------------------
@dataclass(frozen=True)
class Bound:
    """The largest |f′| over the reals of a one-argument elementwise op, from SymPy.

    ``value`` is a SymPy number (``1/4``) or ``oo``; ``steps`` is True where f′ takes only
    a few constant values (relu′ ∈ {0, 1}: its units die instead of saturating);
    ``exact`` is False where SymPy could not decide and ``value`` was read off a grid.
    """

    op: str
    derivative: sp.Expr
    value: sp.Expr
    steps: bool
    exact: bool = True

    @property
    def number(self) -> float:
        return float(self.value)

    def text(self) -> str:
        """``max|sigmoid′| = 1/4``."""
        v = "∞" if self.value is sp.oo else str(self.value) if self.exact \
            else f"≈ {self.number:.3g}"
        return f"max|{self.op}′| = {v}" if self.exact else f"max|{self.op}′| {v} (on a grid)"


def _sup_abs(d: sp.Expr, x: sp.Symbol) -> sp.Expr:
    """sup over the reals of |d(x)|, piece by piece of its Piecewise form."""
    from sympy.calculus.util import maximum, minimum

    pw = sp.piecewise_fold(d.rewrite(sp.Piecewise))
    pieces = pw.args if isinstance(pw, sp.Piecewise) else [(pw, sp.true)]
    best, covered = sp.S.Zero, sp.S.EmptySet
    for e, cond in pieces:
        dom = (sp.S.Reals if cond is sp.true else cond.as_set()) - covered
        covered = covered | dom
        if dom is sp.S.EmptySet:
            continue
        v = abs(e) if not e.has(x) else sp.Max(abs(maximum(e, x, dom)), abs(minimum(e, x, dom)))
        best = sp.Max(best, v)
    return sp.nsimplify(best) if best.is_Float else best


@lru_cache(maxsize=64)  # every layer asks about the same op; SymPy takes a while for σ
def bound(op_name: str) -> Bound:
    """The bound of the local derivative of the one-argument elementwise op ``op_name``.

    Derived from the op's declared expression (``OpDef.expr``): f′ by SymPy, then its
    largest absolute value over the reals (:func:`sympy.calculus.util.maximum` on each
    piece); never a table keyed on op names.

    Examples
    --------
    >>> from symbackprop.flow import bound
    >>> bound("sigmoid").value, bound("tanh").value, bound("relu").value, bound("relu").steps
    (1/4, 1, 1, True)
    """
    from .ops import registry

    op = registry.get(op_name)
    (x0,), e = op.expr({})
    x = sp.Symbol("x", real=True)
    d = _kinks(sp.diff(e, x0)).xreplace({x0: x})
    steps = _kinks(sp.diff(d, x)).rewrite(sp.Piecewise)
    steps = bool(sp.piecewise_fold(steps) == 0 or steps == 0)
    try:
        v = _sup_abs(d, x)
        if not (v.is_number and (v.is_finite or v is sp.oo)):
            raise ValueError(v)
        return Bound(op_name, d, v, steps)
    except (NotImplementedError, ValueError, TypeError, AttributeError):
        return Bound(op_name, d, sp.Float(_grid_sup(sp.lambdify(x, d, "numpy"))), steps,
                     exact=False)


def _grid_sup(f) -> float:
    """max |f| on [−30, 30]: a grid of step 1e−3, then finer grids around the largest
    value, rounded up by one part in 1e9 (an estimate, marked so in the text)."""
    lo, hi, best = -30.0, 30.0, 0.0
    with np.errstate(all="ignore"):
        for _ in range(4):
            grid = np.linspace(lo, hi, 60001)
            vals = np.abs(np.broadcast_to(f(grid), grid.shape))
            i = int(np.nanargmax(vals))
            best = max(best, float(vals[i]))
            step = grid[1] - grid[0]
            lo, hi = grid[i] - 2 * step, grid[i] + 2 * step
    return best * (1 + 1e-9)


@lru_cache(maxsize=64)
def _local(op_name: str):
    """The op's declared local derivative as a NumPy function of (x, y)."""
    from .ops import registry

    d = registry.get(op_name).local_grads({})[0]
    f = sp.lambdify((_XS[0], _Y), d, modules="numpy")
    return lambda x, y: np.broadcast_to(f(x, y), np.shape(y))


# -- the report -----------------------------------------------------------------------------
@dataclass
class LayerFlow:
    """What :func:`gradient_flow` measured for one layer (see the module notes)."""

    name: str
    weights: list
    output: str | None
    activation_op: str | None
    grad_norm: float  # ‖∂L/∂W‖ over the layer's weights together
    weight_norm: float  # ‖W‖
    grad_max: float  # max |∂L/∂W|, for the diagram's colours
    out_grad_norm: float | None  # ‖∂L/∂h‖ of the layer's output
    ratio: float = math.nan  # grad_norm / the last layer's
    dead: float | None = None  # fraction of units dead on the whole batch
    saturated: float | None = None  # fraction of activation values saturated
    local_mean: float | None = None  # mean |f′| of the activation on the batch
    local_bound: float | None = None  # max |f′| over the reals
    gain: float | None = None  # ‖∂L/∂z‖ / ‖∂L/∂a‖ across the activation, measured
    flags: list = field(default_factory=list)
    # precision="mixed": ∂L/∂W entries (nonzero in float32, of those zero in float16 without
    # loss scaling, zero with it)
    underflow: tuple | None = None

    @property
    def grad_data(self) -> float:
        """‖∂L/∂W‖ / ‖W‖."""
        return self.grad_norm / self.weight_norm if self.weight_norm else math.inf

    def as_dict(self) -> dict:
        return {"layer": self.name, "weights": list(self.weights), "output": self.output,
                "activation": self.activation_op, "grad_norm": self.grad_norm,
                "weight_norm": self.weight_norm, "grad_max": self.grad_max,
                "out_grad_norm": self.out_grad_norm, "ratio": self.ratio,
                "grad_data": self.grad_data, "dead": self.dead, "saturated": self.saturated,
                "local_mean": self.local_mean, "local_bound": self.local_bound,
                "gain": self.gain, "flags": list(self.flags)} | (
                    {} if self.underflow is None else {"underflow": list(self.underflow)})


def _g(v, digits: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and not math.isfinite(v):
        return "∞" if v > 0 else "−∞" if v < 0 else "nan"
    s = f"{v:.{digits}g}"
    if "e" in s:
        m, e = s.split("e")
        s = f"{m}e{int(e)}".replace("-", "−")
    return s


def short_name(name: str) -> str:
    """A network's name with runs of three or more equal sizes written once with their
    count: ``mlp_64_64_64_64_10`` -> ``mlp_64x4_10``.

    Examples
    --------
    >>> from symbackprop.flow import short_name
    >>> short_name("mlp_" + "_".join(["64"] * 51 + ["10"]))
    'mlp_64x51_10'
    """
    parts, out = name.split("_"), []
    for p in parts:
        if out and out[-1][0] == p:
            out[-1][1] += 1
        else:
            out.append([p, 1])
    return "_".join(p if k < 3 else f"{p}x{k}" if p.isdigit() else "_".join([p] * k)
                    for p, k in out)


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.0f}%"


def _ranges(ks: list[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``1..3, 7``."""
    out, start = [], None
    for i, k in enumerate(ks):
        if start is None:
            start = k
        if i + 1 == len(ks) or ks[i + 1] != k + 1:
            out.append(f"{start}" if start == k else f"{start}..{k}")
            start = None
    return ", ".join(out)


@dataclass
class FlowReport:
    """The result of :func:`gradient_flow`: one :class:`LayerFlow` per layer, and the
    products of the local derivatives; ``.text()``, ``.markdown()``, ``.as_dict()``,
    ``.chart()`` (SVG) and ``render(g, grads=report)``."""

    name: str
    init: str
    batch: int
    seed: int
    loss: float
    layers: list
    label: str = ""
    scale: float | None = None  # precision="mixed": the loss scale of the underflow counts

    # -- the chain of local derivatives -------------------------------------------------
    def _with_activation(self):
        return [s for s in self.layers if s.local_mean is not None]

    @property
    def measured_product(self) -> float | None:
        """∏ over the layers of the mean local derivative of their activation."""
        acts = self._with_activation()
        return math.prod(s.local_mean for s in acts) if acts else None

    @property
    def bound_product(self) -> float | None:
        """∏ over the layers of max |f′| of their activation: the closed-form bound."""
        acts = self._with_activation()
        return math.prod(s.local_bound for s in acts) if acts else None

    @property
    def first_ratio(self) -> float:
        """‖∂L/∂W‖ of the first layer over the last layer's."""
        return self.layers[0].ratio if self.layers else math.nan

    def flagged(self, flag: str) -> list[int]:
        """1-based numbers of the layers with ``flag``."""
        return [i for i, s in enumerate(self.layers, 1) if flag in s.flags]

    def node_grads(self) -> dict:
        """``{weight: max|∂L/∂W|}`` for ``sb.render(g, grads=...)``'s colours."""
        return {s.weights[0]: s.grad_max for s in self.layers}

    def series(self, what: str = "ratio") -> list[float]:
        """One value per layer: ``ratio``, ``grad_norm``, ``out_grad_norm``,
        ``grad_data``, ``dead``, ``local_mean``."""
        return [getattr(s, what) for s in self.layers]

    # -- text ------------------------------------------------------------------------------
    def summary(self) -> list[str]:
        acts = self._with_activation()
        last = self.layers[-1] if self.layers else None
        lines = [(f"first layer / last layer: ‖∂L/∂W‖ ratio {_g(self.first_ratio)}; the last "
                  f"layer's ‖∂L/∂W‖ = {_g(last and last.grad_norm)}, grad:data = "
                  f"{_g(last and last.grad_data)}")]
        if acts:
            ops = sorted({s.activation_op for s in acts})
            bounds = ", ".join(bound(o).text() for o in ops)
            n = len(acts)
            lines.append(
                f"local derivatives over {n} activation layers: measured ∏ mean|f′| = "
                f"{_g(self.measured_product)}; bound ∏ max|f′| = {_g(self.bound_product)} "
                f"({bounds}); the lessons' {LESSON}^{n} = {_g(LESSON ** n)}")
        for flag in ("vanishing", "exploding", "dead"):
            ks = self.flagged(flag)
            if ks:
                lines.append(f"{flag}: layers {_ranges(ks)}")
        if not any(self.flagged(f) for f in ("vanishing", "exploding", "dead")):
            lines.append("flags: none")
        flushed = [(x.name, *x.underflow) for x in self.layers if x.underflow is not None]
        if flushed:  # precision="mixed"
            lines.append("float16 ∂L/∂W entries flushed to zero, without / with loss scale "
                         f"{self.scale:g} (of those nonzero in float32): " + ", ".join(
                             f"{k} {a}/{b} of {n}" for k, n, a, b in flushed))
        return lines

    HEAD = ("layer", "‖∂L/∂W‖", "‖∂L/∂h‖", "ratio", "grad:data", "dead", "saturated",
            "mean f′", "max f′", "flags")

    def rows(self) -> list[tuple]:
        return [(s.name, _g(s.grad_norm), _g(s.out_grad_norm), _g(s.ratio), _g(s.grad_data),
                 _pct(s.dead), _pct(s.saturated), _g(s.local_mean),
                 _g(s.local_bound), ",".join(s.flags)) for s in self.layers]

    def title(self) -> str:
        return (f"gradient flow of {short_name(self.name)}: init {self.init}, batch {self.batch}, seed "
                f"{self.seed}; loss {_g(self.loss, 4)}")

    def text(self) -> str:
        """A table, one row per layer, then the summary.

        Examples
        --------
        >>> r = sb.gradient_flow(sb.models.mlp([4, 3, 2]), batch=8)
        >>> print(r.text())  # doctest: +ELLIPSIS
        gradient flow of mlp_4_3_2: init default, batch 8, seed 0; loss ...
        layer   ‖∂L/∂W‖  ‖∂L/∂h‖  ratio  grad:data  dead  saturated  mean f′  max f′  flags
        layer1  ...
        """
        return "\n".join([self.title(), _table(self.HEAD, self.rows()), *self.summary()]) + "\n"

    def markdown(self) -> str:
        """The same as a Markdown table."""
        return "\n".join([f"**{self.title()}**", "", _md(self.HEAD, self.rows()), "",
                          *(f"- {s}" for s in self.summary())]) + "\n"

    def as_dict(self) -> dict:
        """Everything as plain Python values (``symbackprop flow --format json``)."""
        return {"name": self.name, "label": self.label, "init": self.init,
                "batch": self.batch, "seed": self.seed, "loss": self.loss,
                "layers": [s.as_dict() for s in self.layers],
                "first_ratio": self.first_ratio, "measured_product": self.measured_product,
                "bound_product": self.bound_product,
                "lesson": LESSON ** len(self._with_activation()),
                "flags": {f: self.flagged(f) for f in ("vanishing", "exploding", "dead")}}

    def __str__(self) -> str:
        return self.text()

    def chart(self, path=None, what: str = "ratio"):
        """The per-layer chart (needs matplotlib, ``pip install symbackprop[plots]``);
        see :func:`symbackprop.display.charts.layer_chart`."""
        return FlowComparison([self]).chart(path, what)

    def _repr_svg_(self):
        return _svg_or_none(self)


def _svg_or_none(obj):
    from .display.charts import PlotsNotInstalledError

    try:
        return obj.chart()
    except PlotsNotInstalledError:
        return None  # Jupyter shows the text instead


def _table(head, rows) -> str:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
                     for r in [head, *rows])


def _md(head, rows) -> str:
    def row(r):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |"
    return "\n".join([row(head), "|" + "---|" * len(head), *(row(r) for r in rows)])


@dataclass
class FlowComparison:
    """Several :class:`FlowReport` side by side (``symbackprop flow --compare``)."""

    reports: list

    def _labels(self):
        return [r.label or short_name(r.name) for r in self.reports]

    def text(self, markdown: bool = False) -> str:
        """The ratio of each layer's ‖∂L/∂W‖ to the last layer's, one column per variant,
        then each variant's summary."""
        labels = self._labels()
        depth = max(len(r.layers) for r in self.reports)
        head = ("layer", *(f"{lab} ratio" for lab in labels))
        rows = []
        for i in range(depth):
            cells = []
            for r in self.reports:
                s = r.layers[i] if i < len(r.layers) else None
                cells.append("" if s is None else _g(s.ratio) + (
                    f" {','.join(s.flags)}" if s.flags else ""))
            rows.append((str(i + 1), *cells))
        rows.append(("loss", *(_g(r.loss, 4) for r in self.reports)))
        rows.append(("last ‖∂L/∂W‖", *(_g(r.layers[-1].grad_norm) for r in self.reports)))
        rows.append(("∏ mean|f′|", *(_g(r.measured_product) for r in self.reports)))
        rows.append(("∏ max|f′|", *(_g(r.bound_product) for r in self.reports)))
        first = f"ratio: ‖∂L/∂W‖ over the last layer's; init {self.reports[0].init}, batch " \
            f"{self.reports[0].batch}, seed {self.reports[0].seed}"
        if markdown:
            parts = [first, "", _md(head, rows), ""]
            for lab, r in zip(labels, self.reports):
                parts += [f"**{lab}**", "", *(f"- {s}" for s in r.summary()), ""]
            return "\n".join(parts)
        parts = [first, _table(head, rows), ""]
        for lab, r in zip(labels, self.reports):
            parts += [f"{lab}:", *(f"  {s}" for s in r.summary())]
        return "\n".join(parts) + "\n"

    def markdown(self) -> str:
        return self.text(markdown=True)

    def as_dict(self) -> dict:
        return {"variants": [r.as_dict() for r in self.reports]}

    def __str__(self) -> str:
        return self.text()

    def chart(self, path=None, what: str = "ratio"):
        """One line per variant on a log axis, with the 1e-3 guide line; SVG text, or the
        file ``path`` (.svg or .png) written."""
        from .display.charts import layer_chart

        names = {"ratio": "‖∂L/∂W‖ / last layer's", "grad_norm": "‖∂L/∂W‖",
                 "out_grad_norm": "‖∂L/∂h‖", "grad_data": "‖∂L/∂W‖ / ‖W‖"}
        series = {lab: r.series(what) for lab, r in zip(self._labels(), self.reports)}
        title = "gradient flow: " + ", ".join(self._labels())
        guides = {"vanishing (1e−3)": VANISHING} if what == "ratio" else {}
        return layer_chart(series, ylabel=names.get(what, what), title=title, guides=guides,
                           path=path)

    def _repr_svg_(self):
        return _svg_or_none(self)


# -- running it ---------------------------------------------------------------------------------
def _inputs(g: Graph, of: str, batch: int, rng) -> dict:
    """Standard-normal float inputs and integer labels in range, for the batch size."""
    from .testing import _classes

    out = {}
    for n in g.nodes("input"):
        d = g.nx.nodes[n]
        shape = tuple(batch if isinstance(s, str) else s for s in d["shape"])
        out[n] = rng.integers(0, _classes(g, n), size=shape) if d["dtype"] == "int" \
            else rng.standard_normal(shape)
    return out


def _data(g: Graph, of: str, data) -> dict:
    """The user's arrays: a dict or an ``.npz`` path, keyed by input names or as a training
    script's ``X`` (and ``y``)."""
    if isinstance(data, (str, bytes)) or hasattr(data, "__fspath__"):
        import os

        if not os.path.exists(data):
            raise GraphError(f"data file {str(data)!r} does not exist.")
        try:
            with np.load(data) as z:
                data = {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise GraphError(f"data file {str(data)!r} is not a readable .npz ({e}); save "
                             "it with np.savez(path, X=..., y=...).") from None
    inputs = [n for n in g.nodes("input") if n in g.ancestors([of])]
    if not all(n in data for n in inputs):
        from .codegen.script import _data_task

        task = _data_task(g, of)
        keys = {task.features: "X", **({task.target: "y"} if task.target else {})}
        missing = [k for k in keys.values() if k not in data]
        if missing:
            raise GraphError(f"data has arrays {', '.join(sorted(data)) or 'none'}; expected "
                             f"{', '.join(inputs)} (the inputs) or X and y.")
        data = {n: data[k] for n, k in keys.items()}
    out = {}
    for n in inputs:
        a = np.asarray(data[n])
        want = g.nx.nodes[n]["shape"]
        sizes = {}
        ok = a.ndim == len(want) and all(
            (sizes.setdefault(w, d) == d) if isinstance(w, str) else w == d
            for w, d in zip(want, a.shape))
        if not ok:
            raise ShapeError(f"data for input {n!r} has shape {a.shape}; the network expects "
                             f"{fmt_shape(want)}. Pass arrays of that shape.")
        if g.nx.nodes[n]["dtype"] == "int" and a.dtype.kind not in "iu":
            raise ShapeError(f"data for input {n!r} holds {a.dtype}; the network expects "
                             "integer labels.")
        out[n] = a
    return out


def gradient_flow(g: Graph, data=None, batch: int = 64, init: str | None = None,
                  seed: int = 0, of: str | None = None, label: str = "",
                  precision: str | None = None) -> FlowReport:
    """Run the generated forward and backward passes on one batch and measure, layer by
    layer, how the gradient flows (see the module notes for every column and threshold).

    Parameters
    ----------
    g : Graph
        The network (its layers: ``block`` attributes, else one per weight).
    data : dict or path, optional
        Arrays by input name, or as a training script's ``X`` and ``y``; a dict or an
        ``.npz`` file. By default one random batch: standard-normal features, labels
        uniform over the classes.
    batch : int
        The batch size of the random batch.
    init : {"he", "xavier", "uniform"}, optional
        Every weight drawn by that rule by the generated ``init_params`` (uniform:
        U(−1/√fan_in, 1/√fan_in)); by default the generated code's own rule (He normal
        before a rectifier, Xavier uniform otherwise). Biases start at zero.
    seed : int
        Seed of the parameters (``init_params(seed)``) and of the random batch.
    of : str, optional
        The loss (default: the last scalar output).
    precision : {None, "mixed"}
        ``"mixed"`` also counts, per layer, the ∂L/∂W entries that float16 flushes to
        zero without loss scaling and with the first loss scale 2**16 (the
        mixed-precision step's ``underflow`` on the same batch and parameters, cast to
        float32): ``LayerFlow.underflow`` and one summary line.

    Returns
    -------
    FlowReport

    Examples
    --------
    >>> r = sb.gradient_flow(sb.models.mlp([8] + [8] * 20 + [3], activation="sigmoid"))
    >>> r.flagged("vanishing")[:3], r.measured_product <= r.bound_product == 0.25 ** 20
    ([1, 2, 3], True)
    """
    from .codegen.compiled import compile_graph
    from .codegen.init import initial_params

    if precision not in (None, "mixed"):
        raise GraphError(f"precision={precision!r}: gradient_flow measures in float64; "
                         "precision='mixed' adds the float16 underflow counts.")
    if init is not None and init not in INITS:
        raise GraphError(f"init={init!r} is not one of {', '.join(INITS)} (or None: the "
                         "generated code's own rule).")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise GraphError(f"batch={batch!r}; expected a positive int.")
    of = default_of(g) if of is None else of
    found = layers(g)
    if not found:
        raise GraphError(f"network {g.nx.graph.get('name', '')!r} has no parameters: no "
                         "layer to measure.")
    acts = [s.activation for s in found if s.activation is not None]
    act_args = [g.args(a)[0] for a in acts]
    probes = [n for n in dict.fromkeys([s.output for s in found if s.output] + acts + act_args)
              if g.nx.nodes[n]["dtype"] == "float" and n in g.ancestors([of])]
    weights = [w for s in found for w in s.weights]
    j = g.copy()
    j.nx.graph["outputs"] = list(dict.fromkeys(list(g.outputs) + probes))
    fn = compile_graph(j, of=of, wrt=list(dict.fromkeys(weights + probes)))
    rng = np.random.default_rng(seed)
    arrays = _inputs(g, of, batch, rng) if data is None else _data(g, of, data)
    params = {k: np.array(v) for k, v in initial_params(g, seed, init=init).items()}
    values = fn.forward(**arrays, **params)
    loss, grads = fn.value_and_grad(**arrays, **params)

    def norm(n):
        return float(np.linalg.norm(np.asarray(grads[n]))) if n in grads else None

    out = []
    for s in found:
        gw = [np.asarray(grads[w]) for w in s.weights]
        f = LayerFlow(s.name, s.weights, s.output, None,
                      grad_norm=float(math.sqrt(sum(float(np.sum(a * a)) for a in gw))),
                      weight_norm=float(math.sqrt(sum(float(np.sum(params[w] ** 2))
                                                      for w in s.weights))),
                      grad_max=float(max(np.abs(a).max() if a.size else 0.0 for a in gw)),
                      out_grad_norm=norm(s.output) if s.output else None)
        if s.activation is not None and s.activation in values:
            a = s.activation
            z = g.args(a)[0]
            op = g.nx.nodes[a]["op"]
            b = bound(op)
            zv = np.asarray(values[z] if z in values else arrays.get(z, params.get(z)))
            d = np.abs(_local(op)(zv, np.asarray(values[a])))
            f.activation_op, f.local_bound = op, b.number
            f.local_mean = float(d.mean())
            units = d.reshape(d.shape[0], -1) if d.ndim > 1 else d.reshape(-1, 1)
            f.dead = float(np.mean(np.all(units == 0, axis=0)))
            if not b.steps and math.isfinite(b.number) and b.number > 0:
                f.saturated = float(np.mean(d < SATURATED * b.number))
            da, dz = norm(a), norm(z)
            f.gain = dz / da if da and dz is not None else None
        out.append(f)
    last = out[-1].grad_norm
    for f in out:
        f.ratio = f.grad_norm / last if last else math.inf
        if f.ratio < VANISHING:
            f.flags.append("vanishing")
        elif f.ratio > EXPLODING:
            f.flags.append("exploding")
        if f.dead is not None and f.dead > DEAD:
            f.flags.append("dead")
    n_batch = next((np.shape(v)[0] for k, v in arrays.items()
                    if any(isinstance(s, str) for s in g.nx.nodes[k]["shape"][:1])), batch)
    scale = None
    if precision == "mixed":  # float16's flush to zero, with and without loss scaling
        step = compile_graph(g, of=of, wrt=weights, optimizer="sgd", precision="mixed")
        masters = {k: np.asarray(v, dtype=np.float32) for k, v in params.items()}
        state = step.init_state(masters)
        counts, scale = step.underflow(masters, state, **arrays), state["scale"]
        for f in out:
            f.underflow = tuple(sum(counts[w][k] for w in f.weights) for k in (1, 2, 3))
    return FlowReport(str(g.nx.graph.get("name") or "network"), init or "default",
                      int(n_batch), seed, float(loss), out, label=label, scale=scale)


MODELS = ("mlp", "residual_mlp", "mlp+layer_norm")  # the variants of an mlp: SPEC


def mlp_variant(sizes, model: str = "mlp", activation: str = "relu",
                loss: str = "softmax_cross_entropy") -> Graph:
    """The network ``model`` with the sizes of an ``mlp:`` SPEC: ``mlp``,
    ``mlp+layer_norm`` (:func:`sb.models.mlp` with ``layer_norm=True``) or
    ``residual_mlp`` (layer 1, a residual block for each further hidden layer, the
    output layer: as deep as the mlp; its hidden sizes must be equal).

    Examples
    --------
    >>> from symbackprop.flow import mlp_variant
    >>> g = mlp_variant([4, 3, 3, 3, 2], "residual_mlp")
    >>> g.nodes("param")[::2]
    ['W1', 'W2', 'W3', 'W4']
    """
    from . import models

    sizes = [int(s) for s in sizes]
    if model not in MODELS:
        raise GraphError(f"model {model!r} is not one of {', '.join(MODELS)}.")
    if model != "residual_mlp":
        return models.mlp(sizes, activation=activation, loss=loss,
                          layer_norm=model == "mlp+layer_norm")
    hidden = sizes[1:-1]
    if not hidden or len(set(hidden)) != 1:
        raise GraphError(f"model residual_mlp needs hidden layers of one width (the skip "
                         f"connections add them); got {'-'.join(map(str, sizes))}. Use sizes "
                         "like 64-64*50-10.")
    if loss != "softmax_cross_entropy":
        raise GraphError(f"model residual_mlp is a classifier (softmax_cross_entropy); got "
                         f"loss {loss!r}.")
    g = models.residual_mlp(sizes[0], hidden[0], len(hidden) - 1, sizes[-1],
                            activation=activation)
    return g


def compare(variants: dict, **options) -> FlowComparison:
    """:func:`gradient_flow` of each network of ``variants`` (label -> Graph, or label ->
    (Graph, init)), side by side.

    Examples
    --------
    >>> from symbackprop.flow import compare
    >>> c = compare({"sigmoid": sb.models.mlp([4, 4, 4, 2], activation="sigmoid"),
    ...              "relu": sb.models.mlp([4, 4, 4, 2])}, batch=8)
    >>> [r.label for r in c.reports]
    ['sigmoid', 'relu']
    """
    reports = []
    for label, v in variants.items():
        g, init = v if isinstance(v, tuple) else (v, options.get("init"))
        reports.append(gradient_flow(g, **{**options, "init": init, "label": label}))
    return FlowComparison(reports)


__all__ = ["DEAD", "EXPLODING", "MODELS", "SATURATED", "VANISHING", "FlowComparison",
           "FlowReport", "LayerFlow", "bound", "compare", "gradient_flow", "layers",
           "mlp_variant"]
