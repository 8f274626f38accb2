"""Gradient checking against central finite differences, and random inputs.

Finite differences are computed from the generated forward code only, so
they are an independent check of the generated backward code. A loss, gradient
or difference that is NaN or infinite fails the check, naming the node where it
starts and why (:mod:`symbackprop.edges`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from . import sizes as size_exprs
from .autodiff import check_of_wrt, differentiate
from .codegen.compiled import compile_graph
from .codegen.init import initial_params, plan_init
from .derivation import point_values
from .display import fmt, special
from .edges import culprit, entry, explain, origin
from .errors import GradError
from .graph import Graph, fmt_shape


def resolve_shape(shape, sizes: dict) -> tuple:
    """Replace size names by numbers from ``sizes`` (e.g. ``{"N": 8}``; a name not given is
    4) and size expressions (``"(H + 1)//2"``) by their values for those numbers."""
    def value(d):
        if d in sizes:
            return sizes[d]
        return size_exprs.value(d, {n: sizes.get(n, 4) for n in size_exprs.names(d)})
    return tuple(value(d) if isinstance(d, str) else d for d in shape)


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


def _fixed_params(g: Graph, sizes: dict) -> Graph:
    """``g`` itself, or a copy whose parameters have their size names replaced by numbers."""
    fixed = {p: resolve_shape(g.nx.nodes[p]["shape"], sizes) for p in g.nodes("param")}
    if all(tuple(g.nx.nodes[p]["shape"]) == s for p, s in fixed.items()):
        return g
    g = g.copy()
    for p, s in fixed.items():
        g.nx.nodes[p]["shape"] = s
    return g


def random_inputs(g: Graph, sizes: dict | None = None, seed: int = 0) -> dict:
    """Random arrays for every input and parameter of ``g``.

    Weights are initialised as the generated training code's ``init_params(seed)``
    initialises them, with the same values (:func:`~symbackprop.codegen.init.initial_params`):
    He normal where the layer feeds a rectifier such as relu, Xavier/Glorot uniform
    otherwise (:func:`~symbackprop.codegen.init.plan_init`), so a deep network starts
    here as it starts in training. The other parameters (biases, scalars), which
    ``init_params`` sets to zero, are uniform in [-1, 1]: a gradient checked at zero
    would miss what a zero hides (a product with the bias, relu's kink at 0). Float
    inputs are uniform in [0.2, 1.2] (inside the domain of log and sqrt), integer
    inputs are class labels in range.

    Examples
    --------
    >>> g = sb.models.mlp([4, 3, 2])
    >>> arrays = sb.testing.random_inputs(g, {"N": 5}, seed=1)
    >>> arrays["X"].shape, arrays["y"].dtype.kind, arrays["W1"].shape
    ((5, 4), 'i', (4, 3))
    >>> bool((arrays["W1"] == sb.compile(g, optimizer="sgd").init_params(1)["W1"]).all())
    True
    """
    rng = np.random.default_rng(seed)
    sizes = {"N": 4, **(sizes or {})}
    out = {}
    for n in g.nodes("input"):
        d = g.nx.nodes[n]
        shape = resolve_shape(d["shape"], sizes)
        if d["dtype"] == "int":
            out[n] = rng.integers(0, _classes(g, n), size=shape)
        else:
            out[n] = rng.uniform(0.2, 1.2, size=shape)
    fixed = _fixed_params(g, sizes)
    weights = {i.name for i in plan_init(fixed) if i.kind != "zeros"}
    init = initial_params(fixed, seed) if weights else {}
    for n in g.nodes("param"):
        d = fixed.nx.nodes[n]
        if d["dtype"] == "int":
            out[n] = rng.integers(0, _classes(g, n), size=d["shape"])
        elif n in weights:
            out[n] = np.array(init[n])  # its own array, not a view of init_params' buffer
        else:
            out[n] = rng.uniform(-1, 1, size=d["shape"])
    return out


@dataclass
class GradCheck:
    """Result of :func:`check_grad`: worst relative error per ``wrt`` node.

    ``errors[k]`` is NaN where a gradient or its finite-difference estimate is not
    finite; ``not_finite`` then says which, where it starts and why, one line each
    (``"loss L is −∞ at x = 0: log's argument is 0 (node 'L')"``), and ``ok`` is False.
    """

    errors: dict = field(default_factory=dict)
    checked: dict = field(default_factory=dict)
    tol: float = 1e-5
    loss: float = float("nan")
    not_finite: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.not_finite and all(e <= self.tol for e in self.errors.values())

    def __str__(self) -> str:
        lines = [f"{'node':<16} {'entries':>8} {'worst rel. error':>18}"]
        for k, e in self.errors.items():
            flag = "ok" if e <= self.tol else "NOT FINITE" if math.isnan(e) else "MISMATCH"
            lines.append(f"{k:<16} {self.checked[k]:>8} {e:>18.2e}  {flag}")
        lines += self.not_finite
        verdict = "not finite" if self.not_finite else "all ok" if self.ok \
            else "gradient mismatch"
        lines.append(f"{verdict} (tolerance {self.tol:g}, loss {self.loss:.6g})")
        return "\n".join(lines)


class _Blame:
    """Finds where a value that is not finite starts: the joint forward and backward
    graph evaluated node by node with NumPy (built only when something is not finite)."""

    def __init__(self, g: Graph, of: str, wrt: list):
        self.g, self.of, self.wrt, self._adj = g, of, wrt, None

    def __call__(self, arrays: dict, target: str | None = None) -> str:
        """``": log's argument is 0 (node 'L')"`` for ``target`` (default: the loss),
        the adjoint of a ``wrt`` node when ``target`` names one."""
        if self._adj is None:
            self._adj = differentiate(self.g, self.of, self.wrt)
        j = self._adj.graph
        values = point_values(j, arrays, scalar=False)
        node = self._adj.adjoint[target] if target is not None else self.of
        n = origin(j, values, node)
        if n is None:  # the generated code's fused or stable forms differ from node by node
            return ": node by node every value is finite; only the generated code is not"
        return f": {explain(j, n, values)} (node {culprit(j, n)!r})"


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
        A loss, gradient entry or finite-difference estimate that is NaN or
        infinite fails the check: ``.not_finite`` names the node where it starts
        and why.

    Examples
    --------
    >>> report = sb.check_grad(sb.parse("L = (w*x - y)**2"), at={"w": 2, "x": 3, "y": 10})
    >>> report.ok, round(report.loss, 6)
    (True, 16.0)
    >>> report = sb.check_grad(sb.parse("L = log(x)"), at={"x": 0})
    >>> report.ok, report.not_finite[0]
    (False, "loss L is −∞ at x = 0: log's argument is 0 (node 'L')")
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
    with np.errstate(all="ignore"):  # NaN and inf are reported below, with their cause
        loss, grads = fn.value_and_grad(**arrays)
    rng = np.random.default_rng(seed + 1)
    report = GradCheck(tol=tol, loss=float(loss))
    blame, point = _Blame(g, of, wrt), _point(at or {}, arrays, seed)
    if not math.isfinite(report.loss):
        report.not_finite.append(f"loss {of} is {special(report.loss)} at {point}"
                                 f"{blame(arrays)}")

    def moved(k, idx, v) -> dict:
        x = np.array(arrays[k], dtype=float)  # a copy, also of a 0-d value
        x[idx] = v
        return {**arrays, k: x}

    def f(k, idx, v):
        with np.errstate(all="ignore"):
            return float(fn.value_and_grad(**moved(k, idx, v))[0])

    def name(k, idx) -> str:
        return f"d{of}/d{k}" + (f"[{', '.join(map(str, idx))}]" if idx else "")

    for k in wrt:
        x = np.asarray(arrays[k], dtype=float)
        idxs = list(np.ndindex(x.shape)) if x.ndim else [()]
        if len(idxs) > max_entries:
            idxs = [idxs[i] for i in rng.choice(len(idxs), max_entries, replace=False)]
        report.checked[k] = len(idxs)
        bad = entry(grads[k])  # every entry, not only the sampled ones
        if bad is not None:
            an = float(np.asarray(grads[k])[bad])
            report.errors[k] = math.nan
            report.not_finite.append(f"{name(k, bad)} is {special(an)} at {point}"
                                     f"{blame(arrays, k)}")
            continue
        worst = 0.0
        for idx in idxs:
            x0 = float(x[idx])
            plus, minus = f(k, idx, x0 + eps), f(k, idx, x0 - eps)
            fd = (plus - minus) / (2 * eps)
            an = float(np.asarray(grads[k])[idx])
            if not math.isfinite(fd):
                worst = math.nan
                if not math.isfinite(report.loss):
                    break  # already reported: the loss itself is not finite
                v, side = (x0 + eps, plus) if not math.isfinite(plus) else (x0 - eps, minus)
                at_v = name(k, idx).replace(f"d{of}/d", "", 1)
                report.not_finite.append(
                    f"the finite-difference estimate of {name(k, idx)} is {special(fd)} at "
                    f"{point}: {of} is {special(side)} at {at_v} = {fmt(v)}"
                    f"{blame(moved(k, idx, v))}; pass a smaller eps (now {eps:g})")
                break
            worst = max(worst, abs(fd - an) / max(abs(fd), abs(an), 1e-3))
        report.errors[k] = worst
    return report


def _point(at: dict, arrays: dict, seed: int) -> str:
    """``x = 0`` or ``w = 2, random x (seed 0)``: the point checked, for messages."""
    given = [f"{k} = {fmt(float(np.asarray(v)))}" if np.size(v) == 1 else f"{k} as given"
             for k, v in at.items()]
    rest = [k for k in arrays if k not in at]
    if rest:
        given.append(f"random {', '.join(rest)} (seed {seed})")
    return ", ".join(given)


# -- random networks for property tests -----------------------------------------------
_INPUT_SHAPES = ((), (3,), ("N", 3), (3, 3))
_PARAM_SHAPES = ((), (3,), (3, 3))
_LIMIT = 30.0  # bound on |value| of every drawn node, so finite differences stay accurate
_CONSTS = (0.5, 2.0, -1.5, 3.0, 1.0, 0.0)  # scalar constant arguments; no division by 0
_UNARY = ("neg", "tanh", "sigmoid", "relu", "softplus", "square", "sin", "cos", "exp",
          "sum", "mean", "transpose")
_BINARY = ("add", "sub", "mul", "div", "matmul")


def _size(d) -> int:
    return 4 if isinstance(d, str) else d  # a size name is 4, as in random_inputs


def random_graphs(min_ops: int = 1, max_ops: int = 8, max_leaves: int = 3):
    """A hypothesis strategy drawing small random networks with a scalar loss ``L``.

    Nodes are drawn in order and every new op node takes its arguments only from
    nodes drawn before it, so every graph is a DAG. First come one to ``max_leaves``
    leaves, parameters ``w<i>`` of shape ``()``, ``(3,)`` or ``(3, 3)`` (the first is
    always the parameter ``w0``) and inputs ``x<i>`` of those shapes or ``("N", 3)``;
    then ``min_ops`` to ``max_ops`` steps, each applying one op to earlier nodes or
    scalar constants:
    ``add``, ``sub``, ``mul``, ``div``, ``neg``, ``exp``, ``tanh``, ``sigmoid``,
    ``relu``, ``softplus``, ``square``, ``sin``, ``cos``, ``sum`` or ``mean`` over one
    axis, ``matmul`` where the inner sizes match (transposing an argument if needed)
    and ``transpose``. The loss ``L`` is the ``sum`` or ``mean`` of the last node, or a
    weighted sum of such reductions of a few op nodes; sometimes the last node is also
    an output ``y``. Op nodes that ``L`` does not use may remain.

    Values stay where the ops are smooth and finite differences accurate, for the
    arrays of :func:`random_inputs`: ``exp`` is only taken of ``tanh(x)``, division
    is only by a nonzero constant, ``1 + square(x)`` or ``exp(tanh(x))``, and an op is
    drawn only if a bound on the magnitude of its result stays below 30. ``relu`` can still
    meet an argument near 0 at a given point (``x - x`` is exactly 0): tests that
    need smoothness check the arguments of ``relu`` at the point they use.

    Parameters
    ----------
    min_ops, max_ops : int
        Number of steps; ``exp`` and ``div`` by a node add two or three nodes in one.
    max_leaves : int
        Largest number of inputs and parameters.

    Returns
    -------
    hypothesis.strategies.SearchStrategy
        Of :class:`~symbackprop.graph.Graph`. Examples shrink towards fewer leaves
        and steps, the ops listed first and chains (each op applied to the latest node).

    Examples
    --------
    >>> from hypothesis import given
    >>> @given(sb.testing.random_graphs(max_ops=4))  # doctest: +SKIP
    ... def test_loss_is_finite(g):
    ...     arrays = sb.testing.random_inputs(g)
    ...     assert np.isfinite(sb.compile(g).forward(**arrays)["L"])
    """
    from hypothesis import strategies as st  # a dev dependency: imported only here

    from .ops.elementwise import broadcast_shapes
    from .ops.registry import ShapeMismatch

    def broadcasts(a: tuple, b: tuple) -> bool:
        try:
            broadcast_shapes([a, b])
        except ShapeMismatch:
            return False
        return True

    @st.composite
    def graphs(draw) -> Graph:
        g = Graph("random")
        bound: dict[str, float] = {}  # node -> bound on |value|
        pool: list[str] = []  # nodes later ops may use, in the order they were drawn

        def add(node, b: float):
            bound[node.name] = b
            pool.append(node.name)
            return node

        for i in range(draw(st.integers(1, max_leaves))):
            if i == 0 or draw(st.booleans()):  # a trained parameter has fixed sizes
                add(g.param(f"w{i}", draw(st.sampled_from(_PARAM_SHAPES))), 1.0)
            else:
                add(g.input(f"x{i}", draw(st.sampled_from(_INPUT_SHAPES))), 1.2)

        for _ in range(draw(st.integers(min_ops, max_ops))):
            # the first argument counts back from the latest node, so shrinking gives chains
            a = g[pool[-1 - draw(st.integers(0, len(pool) - 1))]]
            ba = bound[a.name]
            unary = {"neg": ba, "tanh": 1.0, "sigmoid": 1.0, "relu": ba, "softplus": ba + 0.7,
                     "square": ba * ba, "sin": 1.0, "cos": 1.0, "exp": math.e}
            if a.ndim:
                unary.update(sum=ba * max(_size(d) for d in a.shape), mean=ba, transpose=ba)
            choices = {op: [None] for op in _UNARY if unary.get(op, _LIMIT + 1) <= _LIMIT}
            # binary ops: the second argument, an earlier node or a constant
            for n in pool:
                bn = bound[n]
                if broadcasts(a.shape, g.nx.nodes[n]["shape"]):
                    for op, b in (("add", ba + bn), ("sub", ba + bn), ("mul", ba * bn),
                                  ("div", max(ba, bn) * math.e)):
                        if b <= _LIMIT:
                            choices.setdefault(op, []).append(n)
            for c in _CONSTS:
                for op, b in (("add", ba + abs(c)), ("sub", ba + abs(c)), ("mul", ba * abs(c)),
                              ("div", ba / (abs(c) or 1))):
                    if b <= _LIMIT and (op != "div" or c != 0):
                        choices.setdefault(op, []).append(c)
            if a.ndim == 2:
                for n in pool:
                    s = g.nx.nodes[n]["shape"]
                    if len(s) != 2 or ba * bound[n] * max(_size(d) for d in s) > _LIMIT:
                        continue
                    # (left, right, which argument is transposed)
                    for case in ((a.name, n, None, s[0] == a.shape[1]),
                                 (a.name, n, 1, s[1] == a.shape[1]),
                                 (n, a.name, None, s[1] == a.shape[0]),
                                 (n, a.name, 0, s[0] == a.shape[0])):
                        if case[3]:
                            choices.setdefault("matmul", []).append(case[:3])
            op = draw(st.sampled_from([o for o in _UNARY + _BINARY if o in choices]))
            b = draw(st.sampled_from(choices[op]))
            if op == "exp":
                add(g.apply("exp", [add(g.apply("tanh", [a]), 1.0)]), math.e)
            elif op in ("sum", "mean"):
                axis = draw(st.sampled_from(list(range(a.ndim)) + [-1]))
                keep = draw(st.booleans())
                s = _size(a.shape[axis]) if op == "sum" else 1
                add(g.apply(op, [a], {"axis": axis, "keepdims": keep}), ba * s)
            elif op == "matmul":
                left, right, t = b
                args = [g[left], g[right]]
                if t is not None:
                    args[t] = add(args[t].T, bound[args[t].name])
                k = _size(args[0].shape[1])
                add(args[0] @ args[1], bound[left] * bound[right] * k)
            elif op in _BINARY:
                swap = draw(st.booleans())
                const = not isinstance(b, str)
                other = b if const else g[b]
                bb = abs(b) if const else bound[b]
                if op == "div":
                    num, den = (other, a) if swap and not const else (a, other)
                    bnum = bb if num is other else ba
                    if not const:  # a denominator >= 1 / e: 1 + den**2 or exp(tanh(den))
                        bd = bound[den.name]
                        if 1 + bd * bd <= _LIMIT and draw(st.booleans()):
                            den = add(1 + add(g.apply("square", [den]), bd * bd), 1 + bd * bd)
                        else:
                            den = add(g.apply("exp", [add(g.apply("tanh", [den]), 1.0)]), math.e)
                        bnum *= math.e
                    else:
                        bnum /= abs(b)
                    add(g.apply("div", [num, den]), bnum)
                else:
                    args = [other, a] if swap else [a, other]
                    add(g.apply(op, args), ba * bb if op == "mul" else ba + bb)
            else:
                add(g.apply(op, [a]), unary[op])

        last = pool[-1]
        if draw(st.booleans()):
            pool[-1] = last = g.output("y", g[last]).name
        ops = [n for n in pool if not g.is_leaf(n)]
        terms = [last] + draw(st.lists(st.sampled_from(ops), max_size=2))
        loss = None
        for n in terms:
            r = g.apply(draw(st.sampled_from(["sum", "mean"])), [g[n]])
            if len(terms) > 1:
                r = r * draw(st.sampled_from([1.0, 0.5, -2.0]))
            loss = r if loss is None else loss + r
        g.output("L", loss)
        return g

    return graphs()
