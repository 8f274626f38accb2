"""Diagram labels: every text a diagram writes, and its escaping for DOT.

:class:`NodeText` says how :mod:`~symbackprop.render` writes the nodes of one graph:
a node's name, its formula in its arguments' names (``z1 = X @ W1 + b1``,
``c = b²``), short unnamed nodes inlined in their consumers' formulas
(``L = (w·x − y)²``), values and gradients at a point (:func:`.numbers.fmt`: the
same text as a derivation's), and each local derivative (``∂c/∂b = 2b = 10``).
Texts are plain Unicode; :func:`esc` makes them safe inside an HTML-like label and
:func:`html`, :func:`small`, :func:`colored` mark them up. render decides only where
they go and in which colour.
"""

from __future__ import annotations

import re

import numpy as np
import sympy as sp
from sympy.printing.precedence import PRECEDENCE

from ..graph import Graph, fmt_shape
from ..ops.elementwise import X
from .numbers import fmt, number
from .printers import formula, precedence_of, text

_ATOM = PRECEDENCE["Atom"]
INLINE_MAX = 24  # an unnamed node is written inside its consumers' formulas up to this length


# -- escaping and markup ----------------------------------------------------------------------
def esc(s) -> str:
    """Text made safe inside an HTML-like Graphviz label (newlines become line breaks).

    Examples
    --------
    >>> from symbackprop.display.labels import esc
    >>> esc('a<b & "c"')
    'a&lt;b &amp; &quot;c&quot;'
    """
    s = str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    s = s.replace('"', "&quot;")
    s = re.sub(r"\r\n?|\n", "<BR/>", s)
    return re.sub(r"[\x00-\x1f\x7f]", " ", s)


def html(*lines) -> str:
    """An HTML-like label from already escaped lines (empty ones are dropped)."""
    return "<" + "<BR/>".join(line for line in lines if line) + ">"


def small(s: str, color: str = "#6b7280", size: int = 10) -> str:
    """Escaped text ``s`` in small print."""
    return f'<FONT POINT-SIZE="{size}" COLOR="{color}">{s}</FONT>'


def colored(s: str, color: str) -> str:
    """Escaped text ``s`` in ``color``."""
    return f'<FONT COLOR="{color}">{s}</FONT>'


# -- texts that depend on no graph --------------------------------------------------------------
def partial(of: str, n: str) -> str:
    """``∂L/∂h1``: the gradient of ``of`` with respect to ``n`` (already written)."""
    return f"∂{of}/∂{n}"


def largest(of: str, n: str) -> str:
    """``max|∂L/∂W1|``: the largest entry of a gradient."""
    return f"max|{partial(of, n)}|"


def magnitude(of: str, n: str, m: float) -> str:
    """``max|∂L/∂W1| = 0.0512``: the largest entry of a gradient, to 3 digits."""
    return f"{largest(of, n)} = {fmt(m, digits=3)}"


def repeated(first: str, last: str, count: int) -> str:
    """``× 49: layer2 … layer50 (the same structure)``: a run of collapsed layers."""
    return f"× {count}: {first} … {last} (the same structure)"


def strip(of: str, first: str, v1: float, last: str, v2: float) -> str:
    """``max|∂L/∂W| per layer: 2.3e−31 (layer2) … 0.29 (layer50)``: under a gradient strip."""
    return (f"{largest(of, 'W')} per layer: {fmt(v1, digits=2)} ({first}) … "
            f"{fmt(v2, digits=2)} ({last})")


def value(v) -> str:
    """A node's value at a point, as the derivation's text writes it."""
    return fmt(v)


def parameters(count: int) -> str:
    """``200,960 parameters``."""
    return f"{count:,} parameters"


def warning(w: str) -> str:
    """A derivation's warning (a value at the edge of a domain), as a line."""
    return f"warning: {w}"


def derivation_key(values, gradients) -> str:
    """What the colours of a derivation diagram mean; ``values(words)`` and
    ``gradients(words)`` mark up the words that name each colour."""
    return (f"values {values('in blue')} flow right; local derivatives "
            f"and gradients {gradients('in red')} flow left")


def shape(s) -> str:
    """A node's shape, ``(N, 784)``; empty for a scalar."""
    return fmt_shape(s) if s else ""


def attribute(v) -> str:
    """An op attribute's value inside ``op(x, axis=0)``."""
    if isinstance(v, sp.Basic):
        return formula(v)
    if isinstance(v, (list, tuple)):
        return fmt_shape(tuple(v))
    return str(v)


def caption(der) -> str:
    """A derivation's answer, ``∂c/∂x = 20 at x = 1``, as its text writes the numbers."""
    point = ", ".join(f"{k} = {fmt(v)}" for k, v in (der.at or {}).items()
                      if np.size(v) == 1)
    wrts = [der.wrt] if isinstance(der.wrt, str) else list(der.wrt or [])
    answer = ", ".join(f"{partial(der.of, w)} = {fmt(der.grads[w])}" for w in wrts
                       if w in der.grads)
    return f"{answer} at {point}" if point and answer else answer


def legend(lo: float, vanishing: float, mid: float, hi: float) -> list[tuple[float, str]]:
    """The marks of the gradient-magnitude legend: ``(magnitude, text)``."""
    return [(lo, f"≤ {fmt(lo)}"), (vanishing, f"{fmt(vanishing)}  vanishing"),
            (mid, fmt(mid)), (1.0, "1"), (hi, f"≥ {fmt(hi)}  exploding")]


# -- the nodes of one graph -------------------------------------------------------------------
class NodeText:
    """How a diagram writes the nodes of graph ``g``.

    ``adjoints`` maps each adjoint node to the forward nodes it is the gradient of
    (those are written by name, never inlined). Formulas come from each op's
    declaration: elementwise ops from their display expression, others from their
    ``notation``, else ``op(args, attr=value)``.

    Examples
    --------
    >>> from symbackprop.display.labels import NodeText
    >>> t = NodeText(sb.parse("L = (w*x - y)**2"))
    >>> t.formula("L")[0], t.name("sub_1")
    ('(w·x − y)²', '(w·x − y)')
    """

    def __init__(self, g: Graph, adjoints: dict | None = None):
        self.g = g
        self.adjoints = adjoints or {}
        self.refs: dict[str, tuple[str, int]] = {}
        for n in g.topo_order():
            self.refs[n] = self._ref(n)

    def _scalar_const(self, n) -> bool:
        return self.g.role(n) == "const" and self.g.nx.nodes[n]["shape"] == () \
            and n not in self.adjoints

    def _ref(self, n) -> tuple[str, int]:
        """How ``n`` appears inside other formulas: its name, its value (a scalar
        constant) or, for a short unnamed op, its own formula."""
        d = self.g.nx.nodes[n]
        if self._scalar_const(n):
            v = sp.sympify(d["value"])
            return formula(v), precedence_of(v)
        if d.get("auto") and not self.g.is_leaf(n) and n not in self.adjoints:
            s, prec = self.formula(n)
            if len(s) <= INLINE_MAX:
                return s, prec
        return str(n), _ATOM

    def ref(self, n) -> str:
        """``n`` inside another formula (unparenthesized)."""
        return self.refs[n][0]

    def formula(self, n) -> tuple[str, int]:
        """The right-hand side of ``n = ...`` in argument names, and its precedence."""
        d = self.g.nx.nodes[n]
        op = self.g.opdef(n)
        args = self.g.args(n)
        refs = [self.refs[a] for a in args]
        if op.elementwise and op.display is not None:  # tensor displays are matrix algebra
            e = op.display(list(X[:len(args)]), d["attrs"])
            e = sp.sympify(e).xreplace(self._const_args(args))
            names = {X[i].name: r for i, r in enumerate(refs)}
            return formula(e, names), precedence_of(e, names)
        texts = [t if p >= PRECEDENCE["Pow"] else f"({t})" for t, p in refs]
        note = op.notation
        s = note(texts, d["attrs"]) if callable(note) else \
            note.format(*texts) if isinstance(note, str) else None
        if s is not None:
            return s, PRECEDENCE["Mul"] if " " in s else _ATOM
        extra = [f"{k}={attribute(v)}" for k, v in d["attrs"].items()
                 if v is not None and v != op.attrs.get(k)]
        return f"{op.name}({', '.join([t for t, _ in refs] + extra)})", _ATOM

    def constant(self, n) -> str:
        """A scalar constant's value, as formulas write it."""
        return formula(sp.sympify(self.g.nx.nodes[n]["value"]))

    def _const_args(self, args) -> dict:
        """``{x_i: value}`` for the scalar constant arguments, written as numbers."""
        return {X[i]: sp.sympify(self.g.nx.nodes[a]["value"]) for i, a in enumerate(args)
                if self._scalar_const(a)}

    def name(self, n) -> str:
        """``n`` after ∂: ``h1``, or ``(w·x − y)`` for an unnamed node."""
        s, prec = self.refs.get(n, (str(n), _ATOM))
        return s if prec >= _ATOM else f"({s})"

    # -- at a point (a derivation) ---------------------------------------------------------
    def gradient(self, of: str, n: str, step) -> tuple[str, str, str]:
        """``(head, chain, value)`` of ``n``'s gradient in a derivation step:
        ``("∂c/∂x", "10·2", "20")``; without a point, the δ-form formula as the
        value and no chain."""
        head = partial(of, self.name(n))
        if step.grad_value is None:
            return head, "", text(step.formula)
        chain = " + ".join(f"{number(t.upstream_value, factor=True)}·"
                           f"{number(t.local_value, factor=True)}"
                           for t in step.terms if t.local_value is not None
                           and t.upstream_value is not None)
        return head, chain, fmt(step.grad_value)

    def local(self, of: str, u: str, v: str, term) -> str:
        """``∂c/∂b = 2b = 10``: the local derivative of consumer ``v`` in its argument
        ``u``, from the op's declaration (so unnamed nodes stay factored, ``2·(w·x − y)``);
        for a tensor op, its whole vector-Jacobian product."""
        op = self.g.opdef(v)
        if term.vjp or op.local_grads is None:
            value = "" if term.product_value is None else fmt(term.product_value)
            return f"{partial(of, self.name(u))} via {self.name(v)}: {text(term.local)}" + (
                f" = {value}" if value else "")
        args = self.g.args(v)
        e = sp.sympify(op.local_grads(self.g.nx.nodes[v]["attrs"])[term.arg])
        e = e.xreplace(self._const_args(args))
        names = {X[i].name: self.refs[a] for i, a in enumerate(args)}
        names["y"] = self.refs[v]
        local = formula(e, names)
        value = fmt(term.local_value) if term.local_value is not None else ""
        return f"{partial(self.name(v), self.name(u))} = " + (
            local if local == value or not value else f"{local} = {value}")
