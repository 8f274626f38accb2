"""Step-by-step derivations: the chain rule worked node by node, for display only.

:func:`derive` walks the backward sweep that :func:`~symbackprop.formulas.grad`
reads and returns each step with its local derivatives and, at a given point,
every number, as a teacher works an example on the board. A :class:`Derivation`
prints as text, LaTeX or Markdown, with a finite-difference check.

Nothing here differentiates: local derivatives come from each op's declaration
(``OpDef.local_grads``), and values at the point are exact SymPy numbers for
scalar graphs, NumPy arrays for tensor graphs.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

import sympy as sp

from .autodiff import check_of_wrt
from .codegen.lowering import evaluate
from .display.expressions import _Display, _indicators, put
from .display.numbers import UNDEFINED, exact, fmt, number, special
from .display.printers import _simple, latex, text
from .edges import culprit, explain, origin, real_value, why
from .errors import GradError
from .formulas import Gradients, grad
from .graph import Graph, dim_symbol
from .ops.elementwise import X, Y

__all__ = ["Derivation", "FiniteDifference", "Step", "Term", "derive"]


# -- derivations -----------------------------------------------------------------------
@dataclass
class Term:
    """One use of a node by ``consumer`` (argument position ``arg``).

    ``local`` is ∂consumer/∂node (e.g. ``2*b``) for scalar elementwise
    consumers; for tensor ops (``vjp=True``) it is the whole vector-Jacobian
    product in terms of the consumer's δ (e.g. ``Xᵀ δ_z1``).
    """

    consumer: str
    arg: int
    local: sp.Basic
    local_value: object
    upstream_value: object
    product_value: object
    vjp: bool = False


@dataclass
class Step:
    """Computing the adjoint of one node, in backward-sweep order."""

    node: str
    label: str
    terms: list
    formula: sp.Basic
    value: object
    grad_value: object


@dataclass
class FiniteDifference:
    """A slope of ``of`` along ``wrt`` from the forward pass alone.

    ``f_plus`` is ``of`` at ``wrt + h``; ``f_minus`` at ``wrt`` (forward
    difference) or ``wrt - h`` (central); ``slope`` their quotient.
    """

    wrt: str
    h: float
    central: bool
    f_plus: object
    f_minus: object
    slope: object


@dataclass
class Derivation:
    """The chain rule worked node by node; made by :func:`derive`.

    Attributes
    ----------
    graph : Graph
        The network differentiated.
    of : str
        The scalar differentiated.
    wrt : list of str
    at : dict
        The point: input and parameter values (exact SymPy numbers for
        scalar graphs), empty when none was given.
    values : dict
        Node -> forward value at the point.
    grads : dict
        Node -> d(of)/d(node) at the point.
    steps : list of Step
        One per node on the gradient path, in backward-sweep order.
    gradients : Gradients
        The formulas the steps show.
    warnings : list of str
        One line per value or gradient that is not a finite real number at the
        point, naming the node where it starts and why: ``"L is −∞ at x = 0
        (node 'L': log's argument is 0)"``. Such values are shown as ∞, −∞, ±∞
        (infinite without a sign, as 1/0) or "undefined" (0/0, √−1).
    """

    graph: Graph
    of: str
    wrt: list
    at: dict
    values: dict
    grads: dict
    steps: list
    gradients: Gradients = field(repr=False, default=None)
    scalar: bool = field(repr=False, default=True)
    warnings: list = field(default_factory=list)

    # -- the numbers ------------------------------------------------------------------
    def finite_difference(self, h: float = 0.01, wrt: str | None = None,
                          central: bool = False) -> FiniteDifference:
        """The slope of ``of`` along ``wrt`` by finite differences of the forward pass.

        Independent of the backward pass: only the forward graph is evaluated,
        exactly, at ``wrt + h`` and at ``wrt`` (or ``wrt - h`` when ``central``).

        Examples
        --------
        >>> d = sb.derive(sb.parse("a = 2*x; b = a + 3; c = b**2"), wrt="x", at={"x": 1})
        >>> fd = d.finite_difference(0.01)
        >>> fd.f_plus, fd.slope
        (63001/2500, 501/25)
        >>> float(fd.slope), round(float(d.finite_difference(1e-6, central=True).slope), 6)
        (20.04, 20.0)
        """
        if not self.scalar or not self.at:
            raise GradError("finite differences here need a scalar graph and a point; "
                            "pass at={...} to derive(), or use sb.check_grad() for tensors.")
        wrt = self.wrt[0] if wrt is None else wrt
        if wrt not in self.at:
            raise GradError(f"wrt {wrt!r} has no value in the point; pass at={{{wrt!r}: ...}}.")
        step = exact(h, "h")

        def f(shift):
            at = dict(self.at)
            at[wrt] = at[wrt] + shift
            return point_values(self.graph, at, True)[self.of]

        plus = f(step)
        minus = f(-step) if central else self.values[self.of]
        slope = (plus - minus) / (2 * step if central else step)
        return FiniteDifference(wrt, h, central, plus, minus, slope)

    # -- text ---------------------------------------------------------------------------
    def _lines(self, tex: bool) -> list[tuple[str, str]]:
        return _derivation_lines(self, tex)

    def text(self) -> str:
        """The derivation in Unicode text, one line per forward node and backward step."""
        return "\n".join(a if not b else f"  {a} = {b}" for a, b in self._lines(False))

    def step_lines(self, tex: bool = False) -> list[tuple[str, str]]:
        """One ``(gradient, chain rule)`` pair per step, in backward-sweep order, as
        :meth:`text` writes them (the report page steps through them).

        Examples
        --------
        >>> d = sb.derive(sb.parse("a = 2*x; b = a + 3; c = b**2"), wrt="x", at={"x": 1})
        >>> d.step_lines()[1:3]
        [('dc/db', '2b = 10'), ('dc/da', 'dc/db · db/da = 10 · 1 = 10')]
        """
        d = self.gradients._d
        return [(_dd(d, self.of, st.node, tex), " = ".join(_step_stages(self, st, tex)))
                for st in self.steps]

    def markdown(self) -> str:
        """The derivation as Markdown: a table per pass (Unicode math)."""
        return _markdown(self)

    def latex(self) -> str:
        """The derivation as a LaTeX ``align*`` environment."""
        return "\\begin{align*}\n" + self._latex_body() + "\n\\end{align*}"

    def _latex_body(self) -> str:
        rows = []
        for a, b in self._lines(True):
            if not b:
                rows.append(f"&{a}")
            else:
                rows.append(f"{a} &{b}" if b.startswith("\\approx") else f"{a} &= {b}")
        return " \\\\\n".join(rows)

    def __str__(self) -> str:
        return self.text()

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        """Jupyter: the derivation diagram as SVG, the steps as LaTeX and Markdown.
        (render is imported here, not at the top: it comes later in the layering.)"""
        from .render import mimebundle

        return mimebundle(self, include, exclude, extra={
            "text/latex": self._repr_latex_(), "text/markdown": self._repr_markdown_()})

    def _repr_latex_(self) -> str:
        return "$$\\begin{aligned}\n" + self._latex_body() + "\n\\end{aligned}$$"

    def _repr_markdown_(self) -> str:
        return self.markdown()


def _leaves_needed(g: Graph, of: str) -> list[str]:
    return [n for n in g.topo_order() if n in g.ancestors([of])
            and g.role(n) in ("input", "param")]


def _check_point(g: Graph, at: dict, of: str) -> None:
    for name in at:
        if name not in g:
            close = difflib.get_close_matches(str(name), list(g.nx), n=3)
            hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
            raise GradError(f"at= names {name!r}, which is not in the graph.{hint} "
                            f"Give values for: {', '.join(_leaves_needed(g, of))}.")
    missing = [n for n in _leaves_needed(g, of) if n not in at]
    if missing:
        raise GradError(f"at= gives no value for {', '.join(map(repr, missing))}, which "
                        f"{of!r} depends on. Add one, e.g. {missing[0]}=1 (--at) or "
                        f"at={{{missing[0]!r}: 1, ...}}.")


class _NotExact(Exception):
    """An op on the way has no SymPy form to evaluate (use NumPy instead)."""


def point_values(g: Graph, at: dict, scalar: bool, edges: dict | None = None) -> dict:
    """Every node's value at the point: exact SymPy numbers for scalar graphs where
    every op has a SymPy form, else NumPy arrays (0-d ones made SymPy floats).

    Exact values that are not finite real numbers are made real where real analysis
    has a value (:func:`~symbackprop.edges.real_value`: log(0) is ``-oo``, √−1 is
    ``nan``). ``edges``, if given, receives ``node -> blamed argument index (or
    None)`` for each node whose exact value is not finite while its arguments are.
    """
    if scalar:
        try:
            return _exact_values(g, at, {} if edges is None else edges)
        except _NotExact:
            pass
    vals = _numeric_values(g, at)
    if scalar:
        vals = {k: None if v is None else sp.Float(float(v), 17) for k, v in vals.items()}
    return vals


def _exact_values(g: Graph, at: dict, edges: dict) -> dict:
    """SymPy values: exact for rationals, others kept to 30 digits so that finite
    differences stay accurate."""
    vals = {}
    G = g.nx
    for n in g.topo_order():
        d = G.nodes[n]
        if g.role(n) in ("input", "param"):
            v = at.get(n)
        elif g.role(n) == "const":
            v = exact(d["value"], f"constant {n!r}")
        else:
            opdef = g.opdef(n)
            args = [vals[a] for a in g.args(n)]
            if any(a is None for a in args):
                v = None
            elif opdef.expr is not None:
                syms, e = opdef.expr(d["attrs"])
                v, cause = real_value(e, syms, args)
                if special(v) is not None and not any(map(special, args)):
                    edges[n] = cause
            elif opdef.display is not None:
                v = opdef.display(args, d["attrs"])
            else:
                raise _NotExact(n)
            if v is not None:
                v = sp.sympify(v).doit()
                if not v.is_number:
                    raise _NotExact(n)
                v = v if v.is_Rational else sp.N(v, 30)
                v = sp.nan if special(v) == UNDEFINED else v  # √−1 is not a real number
        vals[n] = v
    return vals


def _numeric_values(j: Graph, at: dict) -> dict:
    """Values of every node of the joint graph with NumPy (tensor derivations),
    evaluating each op as its generated NumPy code does
    (:func:`symbackprop.codegen.lowering.evaluate`). NaN and infinities pass silently: the
    derivation's warnings say where they start."""
    import numpy as np

    with np.errstate(all="ignore"):
        return _numeric_sweep(j, at)


def _numeric_sweep(j: Graph, at: dict) -> dict:
    import numpy as np

    G = j.nx
    vals, sizes = {}, {}
    for n in j.topo_order():
        d = G.nodes[n]
        if j.role(n) in ("input", "param"):
            if n not in at:
                vals[n] = None
                continue
            v = np.asarray(at[n], dtype=int if d["dtype"] == "int" else float)
            for dim, k in zip(d["shape"], v.shape):
                if isinstance(dim, str):
                    sizes.setdefault(dim, k)
        elif j.role(n) == "const":
            v = d["value"]
            if isinstance(v, sp.Basic):
                v = v.xreplace({dim_symbol(k): s for k, s in sizes.items()})
            v = np.asarray(v if not isinstance(v, sp.Basic) else float(v), dtype=float)
        else:
            args = [vals[a] for a in j.args(n)]
            if any(a is None for a in args):
                vals[n] = None
                continue
            v = evaluate(j.opdef(n), args, d["attrs"], sizes)
        vals[n] = v
    return vals


def derive(g: Graph, of: str | None = None, wrt=None, at: dict | None = None) -> Derivation:
    """The chain rule, step by step, as the backward sweep applies it.

    Parameters
    ----------
    g : Graph
        The network.
    of : str, optional
        A scalar node; by default the last scalar output.
    wrt : str or list of str, optional
        By default the parameters (or, with none, the float inputs).
    at : dict, optional
        Values of the inputs and parameters. For scalar graphs they are made
        exact (``1.01`` is 101/100), so the numbers come out as on paper; for
        tensor graphs they are arrays, and steps show shapes and norms.

    Returns
    -------
    Derivation
        ``.steps`` in backward order, ``.values`` and ``.grads`` at the point,
        ``.text()``, ``.latex()``, ``.markdown()``, and a finite-difference
        check in all three.

    Raises
    ------
    GradError
        For a missing or unknown name, a value missing from ``at``, or a
        non-scalar ``of``.

    See Also
    --------
    grad : the formulas alone.

    Examples
    --------
    >>> d = sb.derive(sb.parse("a = 2*x; b = a + 3; c = b**2"), of="c", wrt="x", at={"x": 1})
    >>> d.values["c"], d.grads["x"]
    (25, 20)
    >>> print(d.text())
    Forward pass at x = 1:
      a = 2x = 2
      b = a + 3 = 5
      c = b² = 25
    Backward pass (chain rule, from c back to x):
      dc/dc = 1
      dc/db = 2b = 10
      dc/da = dc/db · db/da = 10 · 1 = 10
      dc/dx = dc/da · da/dx = 10 · 2 = 20
    So dc/dx = 10 · 1 · 2 = 20.
    Finite-difference check (forward pass only):
      forward, h = 0.01: x = 1.01 gives c = 25.2004; (25.2004 − 25)/0.01 = 20.04
      central, h = 1e-06: (c(x + h) − c(x − h))/(2h) ≈ 20.000000

    At the edge of a domain, values are shown as ∞, −∞, ±∞ or "undefined", and
    ``.warnings`` says where they start:

    >>> d = sb.derive(sb.parse("L = log(x)"), at={"x": 0})
    >>> d.values["L"], d.grads["x"]
    (-oo, oo)
    >>> for line in d.warnings:
    ...     print(line)
    L is −∞ at x = 0 (node 'L': log's argument is 0)
    dL/dx is ∞ at x = 0 (node 'L': log's argument is 0)
    """
    of, wrt = check_of_wrt(g, of, wrt)
    grads = grad(g, of, wrt)
    adj, d = grads.adjoints, grads._d
    G = adj.graph.nx
    scalar = all(G.nodes[n]["shape"] == () for n in g.ancestors([of]))
    at = dict(at or {})
    values, jvals, gvals, edges, local_edges = {}, {}, {}, {}, {}
    if at:
        _check_point(g, at, of)
        if scalar:
            at = {k: exact(v, f"at[{k!r}]") for k, v in at.items()}
        jvals = point_values(adj.graph, at, scalar, edges)
        values = {n: jvals[n] for n in g.ancestors([of])}
    steps = []
    for n in grads.nodes:
        terms = []
        for (c, i, t), (_, _, contrib) in zip(adj.contributions.get(n, []), grads.terms(n)):
            cop = adj.graph.opdef(c)
            up = gvals.get(c)
            if scalar and cop.local_grads is not None:
                local, lval, blame = _local(d, cop, c, i, values)
                if blame is not False:
                    local_edges.setdefault(n, (c, blame))
                prod = None if lval is None or up is None else up * lval
                terms.append(Term(c, i, local, lval, up, prod))
            else:
                terms.append(Term(c, i, contrib, None, up, jvals.get(t), vjp=True))
        if not values:
            gv = None
        elif n == of:
            gv = sp.Integer(1) if scalar else jvals[adj.adjoint[n]]
        elif scalar and terms:  # the chain rule as shown: the sum of the products
            gv = sp.Add(*[t.product_value for t in terms])
        else:
            gv = jvals[adj.adjoint[n]]
        gvals[n] = gv
        steps.append(Step(n, d.label(n), terms, grads[n], values.get(n), gv))
    der = Derivation(graph=g, of=of, wrt=wrt, at=at, values=values,
                     grads=gvals if values else {}, steps=steps, gradients=grads,
                     scalar=scalar)
    if values:
        der.warnings = (_exact_warnings(der, edges, local_edges) if scalar
                        else _numeric_warnings(der, adj, jvals))
    return der


def _local(d: _Display, cop, c: str, i: int, values: dict):
    """∂c/∂(argument i) of a scalar elementwise consumer: shown, at the point, and,
    where the value is not finite though the arguments are, the argument index to
    blame (or None); ``False`` otherwise."""
    G = d.G
    attrs = G.nodes[c]["attrs"]
    args = d.j.args(c)
    raw = cop.local_grads(attrs)[i]
    shows = {**{x: d.expr(a) for x, a in zip(X, args)}, Y: d.expr(c)}
    numbers = {k: v for k, v in shows.items() if isinstance(v, sp.Number)}
    shown = _indicators(put(raw.xreplace(numbers), shows))
    if not values:
        return shown, None, False
    v = raw.xreplace({**{x: values[a] for x, a in zip(X, args)}, Y: values[c]}).doit()
    blame = False
    if special(v) is not None:  # through the op's output y = f(x), so limits see f too
        syms, e = cop.expr(attrs)
        point = [values[a] for a in args]
        v, blame = real_value(sp.sympify(raw).xreplace({Y: e}), syms, point, e)
        blame = False if any(map(special, point)) else blame
    return shown, (v if v.is_Rational else sp.N(v, 30)), blame


# -- warnings at a domain's edge -------------------------------------------------------------
def _point_text(der: Derivation) -> str:
    d = der.gradients._d
    return ", ".join(f"{text(d.expr(k))} = {fmt(v)}" for k, v in der.at.items()) \
        if der.scalar else "the point"


def _reason(der: Derivation, n: str, blame) -> str:
    """``log's argument is 0``: why op node ``n`` is not finite, from its arguments."""
    d = der.gradients._d
    g = der.graph
    args = [(None if g.role(a) == "const" else d.label(a), fmt(der.values[a]))
            for a in g.args(n)]
    return why(g.opdef(n).name, args, blame)


def _exact_warnings(der: Derivation, edges: dict, local_edges: dict) -> list[str]:
    """Where exact values and gradients stop being finite real numbers, and why."""
    d, g, of = der.gradients._d, der.graph, der.of
    at, out = _point_text(der), []
    starts = [n for n in g.topo_order() if n in edges and n in der.values]
    for n in starts:
        out.append(f"{d.label(n)} is {special(der.values[n])} at {at} "
                   f"(node {n!r}: {_reason(der, n, edges[n])})")
    for w in der.wrt:
        kind = special(der.grads.get(w))
        if kind is None:
            continue
        # the first local derivative on the way back to w that is not finite, else the
        # first value that is not finite on the way from w
        found = [(c, b) for st in der.steps for n, (c, b) in local_edges.items()
                 if n == st.node and (n == w or w in g.ancestors([n]))]
        found += [(n, edges[n]) for n in starts if w in g.ancestors([n])]
        where = f" (node {found[0][0]!r}: {_reason(der, *found[0])})" if found else ""
        out.append(f"{_dd(d, of, w, False)} is {kind} at {at}{where}")
    return out


def _numeric_warnings(der: Derivation, adj, jvals: dict) -> list[str]:
    """The same for a tensor derivation, from its NumPy values."""
    d, j, of, out = der.gradients._d, adj.graph, der.of, []
    forward = {n: v for n, v in jvals.items() if n in der.values}
    n = origin(j, forward)
    if n is not None:
        out.append(f"{d.label(n)} is not finite ({special(jvals[n])}) at the point "
                   f"(node {n!r}: {explain(j, n, jvals)})")
    for w in der.wrt:
        a = adj.adjoint.get(w)
        if a is None or special(jvals.get(a)) is None:
            continue
        n = origin(j, jvals, a)
        where = f" (node {culprit(j, n)!r}: {explain(j, n, jvals)})" if n is not None else ""
        out.append(f"{_dd(d, of, w, False)} is not finite ({special(jvals[a])}) at the "
                   f"point{where}")
    return out


# -- derivation text ---------------------------------------------------------------------
def _dd(d: _Display, top: str, n: str, tex: bool) -> str:
    """``dc/db`` or ``\\frac{dc}{db}``; unnamed nodes in parentheses."""
    def lab(k):
        if tex:
            s = d.label_latex(k)
            return s if _simple(d.label(k)) else rf"\left({s}\right)"
        s = d.label(k)
        return s if _simple(s) else f"({s})"
    return rf"\frac{{d{lab(top)}}}{{d{lab(n)}}}" if tex else f"d{lab(top)}/d{lab(n)}"


def _expr(e, tex: bool) -> str:
    return latex(e) if tex else text(e)


def _dot(tex: bool) -> str:
    return r" \cdot " if tex else " · "


def _step_stages(der: Derivation, st: Step, tex: bool) -> list[str]:
    d, of = der.gradients._d, der.of
    dot = _dot(tex)
    if st.node == of:
        return ["1"]
    if not st.terms:
        return [_expr(st.formula, tex)]
    have = bool(der.values)
    if any(t.vjp for t in st.terms):
        stages = [" + ".join(_expr(t.local, tex) for t in st.terms)]
        if have:
            stages.append(number(st.grad_value, tex))
        return stages
    seed = [t.consumer == of for t in st.terms]
    stages = []
    if not any(seed):
        stages.append(" + ".join(_dd(d, of, t.consumer, tex) + dot + _dd(d, t.consumer, st.node, tex)
                                 for t in st.terms))
    sym, vals = [], []
    for t, s in zip(st.terms, seed):
        if t.local.is_Number:
            loc = number(t.local, tex, factor=not s)
        else:
            loc = _expr(t.local, tex)
            if not s and (t.local.is_Add or loc[:1] in "-−"):
                loc = rf"\left({loc}\right)" if tex else f"({loc})"
        if s:
            sym.append(loc)
            vals.append(number(t.local_value, tex) if have else loc)
        else:
            up = number(t.upstream_value, tex) if have else _dd(d, of, t.consumer, tex)
            sym.append(up + dot + loc)
            vals.append(up + dot + number(t.local_value, tex, factor=True) if have else up + dot + loc)
    stages.append(" + ".join(sym))
    stages.append(" + ".join(vals))
    if have:
        stages.append(number(st.grad_value, tex))
    out = []
    for s in stages:
        if not out or out[-1] != s:
            out.append(s)
    return out


def _chain(der: Derivation, w: str) -> list | None:
    """Local values along the path from ``of`` to ``w`` when it is a single chain."""
    by = {s.node: s for s in der.steps}
    factors, n = [], w
    while n != der.of:
        st = by.get(n)
        if st is None or len(st.terms) != 1 or st.terms[0].vjp:
            return None
        factors.append(st.terms[0].local_value)
        n = st.terms[0].consumer
    return factors[::-1]


def _derivation_lines(der: Derivation, tex: bool) -> list[tuple[str, str]]:
    """``(left, right)`` pairs; a pair with an empty right side is a heading
    (already LaTeX when ``tex``)."""
    d, g, of = der.gradients._d, der.graph, der.of
    dot = _dot(tex)

    def heading(words: str, math: str = "") -> tuple[str, str]:
        if tex:
            return (rf"\text{{{words} }} {math}" if math else rf"\text{{{words}}}", "")
        return (words + (f" {math}" if math else "") + ":", "")

    lines: list[tuple[str, str]] = []
    point = ", ".join(f"{_expr(d.expr(k), tex)} = {number(v, tex)}" for k, v in der.at.items())
    lines.append(heading("Forward pass" + (" at" if point and der.scalar else ""),
                         point if der.scalar else ""))
    ancestors = g.ancestors([of])
    for n in g.topo_order():
        if n not in ancestors or g.is_leaf(n):
            continue
        rhs = [_expr(d.definition(n), tex)] if not d.auto(n) else []
        if der.values:
            rhs.append(number(der.values[n], tex))
        lhs = _expr(d.expr(n), tex)
        rhs = [r for r in rhs if r != lhs]
        if rhs:
            lines.append((lhs, " = ".join(rhs)))
    who = ", ".join(_expr(d.expr(w), tex) for w in der.wrt)
    top = _expr(d.expr(of), tex)
    lines.append(heading("Backward pass (chain rule, from", f"{top} \\text{{ back to }} {who}"
                         r"\text{)}") if tex else
                 heading(f"Backward pass (chain rule, from {top} back to {who})"))
    for st in der.steps:
        lines.append((_dd(d, of, st.node, tex), " = ".join(_step_stages(der, st, tex))))
        if len(st.terms) > 1 and not tex:
            note = f"  ({st.label} is used {len(st.terms)} times: the contributions add)"
            lines.append((note, ""))
    if der.values:
        for w in der.wrt:
            chain = _chain(der, w)
            rhs = ""
            if chain and len(chain) > 1:
                rhs = dot.join(number(v, tex, factor=i > 0) for i, v in enumerate(chain)) + " = "
            rhs += number(der.grads[w], tex)
            if tex:
                lines.append((r"\text{So } " + _dd(d, of, w, tex), rhs))
            else:
                lines.append((f"So {_dd(d, of, w, tex)} = {rhs}.", ""))
        if der.scalar:
            lines += _fd_lines(der, tex)
    return lines


def _fd_lines(der: Derivation, tex: bool) -> list[tuple[str, str]]:
    d, of = der.gradients._d, der.of
    title = "Finite-difference check (forward pass only)"
    lines = [(rf"\text{{{title}}}" if tex else title + ":", "")]
    for w in der.wrt:
        if w not in der.at:
            continue
        fwd = der.finite_difference(0.01, w)
        cen = der.finite_difference(1e-6, w, central=True)
        W, F = _expr(d.expr(w), tex), _expr(d.expr(of), tex)
        x1 = number(der.at[w] + exact(0.01), tex)
        fp, f0 = number(fwd.f_plus, tex), number(fwd.f_minus, tex, factor=True)
        slope = number(fwd.slope, tex)
        if special(cen.slope) is not None:
            cval = number(cen.slope, tex)
        else:
            c = float(sp.N(cen.slope, 30))
            cval = f"{c:.6f}" if abs(c) >= 1 else f"{c:.6g}"
            cval = cval.replace("-", "−" if not tex else "-")
        if tex:
            rhs = rf"\frac{{{fp} - {f0}}}{{0.01}} = {slope} \quad (h = 0.01,\ {W} + h = {x1})"
            lines.append((rf"\frac{{{F}({W} + h) - {F}({W})}}{{h}}", rhs))
            lines.append((rf"\frac{{{F}({W} + h) - {F}({W} - h)}}{{2h}}",
                          rf"\approx {cval} \quad (h = 10^{{-6}})"))
        else:
            fwd_line = f"  forward, h = 0.01: {W} = {x1} gives {F} = {fp}; ({fp} − {f0})/0.01"
            lines.append((f"{fwd_line} = {slope}", ""))
            lines.append((f"  central, h = 1e-06: ({F}({W} + h) − {F}({W} − h))/(2h) ≈ {cval}",
                          ""))
    return lines


def _markdown(der: Derivation) -> str:
    d, g, of = der.gradients._d, der.graph, der.of
    out = []
    point = ", ".join(f"{text(d.expr(k))} = {fmt(v)}" for k, v in der.at.items()
                      if der.scalar)
    out.append("**Forward pass**" + (f" at {point}" if point else "") + "\n")
    out.append("| node | expression | value |\n|---|---|---|")
    for n in g.topo_order():
        if g.is_leaf(n) or n not in g.ancestors([of]):
            continue
        expr = text(d.definition(n)) if not d.auto(n) else ""
        val = fmt(der.values[n]) if der.values else ""
        out.append(f"| {_md(d.label(n))} | {_md(expr)} | {_md(val)} |")
    who = ", ".join(d.label(w) for w in der.wrt)
    out.append(f"\n**Backward pass** (chain rule, from {_md(d.label(of))} back to {_md(who)})\n")
    out.append("| gradient | chain rule | value |\n|---|---|---|")
    for st in der.steps:
        stages = _step_stages(der, st, False)
        val = stages[-1] if der.values else ""
        work = " = ".join(stages[:-1] if der.values else stages)
        if len(st.terms) > 1:
            work += f" ({len(st.terms)} uses: the contributions add)"
        out.append(f"| {_md(_dd(d, of, st.node, False))} | {_md(work)} | {_md(val)} |")
    if der.values:
        out.append("")
        for w in der.wrt:
            chain = _chain(der, w)
            rhs = " · ".join(number(v, False, factor=i > 0) for i, v in enumerate(chain)) + " = " \
                if chain and len(chain) > 1 else ""
            out.append(f"So {_md(_dd(d, of, w, False))} = {rhs}{fmt(der.grads[w])}.  ")
        if der.scalar:
            out.append("\n**Finite-difference check** (forward pass only):\n")
            for a, _ in _fd_lines(der, False)[1:]:
                out.append(f"- {_md(a.strip())}")
    return "\n".join(out) + "\n"


def _md(s: str) -> str:
    return s.replace("|", "\\|").replace("*", "\\*")
