"""Gradient formulas in δ-form, for display only.

:func:`grad` reads the joint forward + backward graph built by
:func:`~symbackprop.autodiff.differentiate` and gives every node on the
gradient path its adjoint ∂L/∂node as a SymPy expression in δ-form, in terms
of the adjoints of its consumers (δ_b = 2b·δ_c), as textbooks write it.

Nothing here differentiates: the formulas are *read* from the adjoint graph.
The display expressions and their printers are in :mod:`~symbackprop.display`;
:mod:`~symbackprop.derivation` works the same backward sweep step by step.
"""

from __future__ import annotations

import difflib

import sympy as sp

from .autodiff import Adjoints, differentiate
from .display.expressions import _Display, _is_mat, build, canonical, realize, substitute
from .display.printers import _simple, latex, text
from .errors import GradError
from .graph import Graph

#: Largest joint graph (nodes) for which :meth:`Gradients.expanded` substitutes fully.
MAX_EXPANDED_NODES = 200

__all__ = ["Gradients", "grad"]


class Gradients:
    """∂L/∂node for every node on the gradient path, as SymPy expressions.

    Made by :func:`grad`. ``grads[name]`` (or ``grads.formula(name)``) is the
    δ-form: the adjoint in terms of the adjoints δ of the node's consumers;
    ``grads.expanded(name)`` substitutes every δ, for small graphs.

    Attributes
    ----------
    graph : Graph
        The joint forward + backward graph.
    adjoints : Adjoints
        The outcome of :func:`~symbackprop.autodiff.differentiate`.
    of : str
        The scalar differentiated.
    wrt : list of str
        The nodes the gradient was asked for.
    nodes : list of str
        The nodes with a formula, in the order the backward sweep visits them.
    """

    def __init__(self, adj: Adjoints):
        self.adjoints = adj
        self.graph = adj.graph
        self.of = adj.of
        self.wrt = list(adj.wrt)
        self._d = _Display(adj)
        self.nodes = list(adj.order) + [w for w in adj.wrt if w not in adj.order]
        self._terms: dict[str, list] = {}
        self._expanded: dict[str, sp.Basic] = {}
        self._shown = {n: self._formula(n) for n in self.nodes}  # as written, for printing
        self._formulas = {n: canonical(e) for n, e in self._shown.items()}

    def _formula(self, n: str):
        if n == self.of:
            return sp.Integer(1)
        terms = [(c, i, self._d.contribution(c, t))
                 for c, i, t in self.adjoints.contributions.get(n, [])]
        self._terms[n] = terms
        if not terms:  # no path: the adjoint node is a zero
            return self._d.backward(self.adjoints.adjoint[n], {}, {})
        exprs = [e for _, _, e in terms]
        if len(exprs) == 1:
            return exprs[0]
        return build(sp.MatAdd, *exprs) if any(map(_is_mat, exprs)) else sp.Add(*exprs)

    def _check(self, name: str) -> str:
        if name not in self._formulas:
            close = difflib.get_close_matches(str(name), self.nodes, n=3)
            hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
            raise GradError(f"node {name!r} is not on the gradient path from "
                            f"{', '.join(self.wrt)} to {self.of!r}.{hint} "
                            f"Nodes with gradients: {', '.join(self.nodes)}.")
        return name

    def __getitem__(self, name: str):
        return self._formulas[self._check(name)]

    def __contains__(self, name) -> bool:
        return name in self._formulas

    def __iter__(self):
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def keys(self) -> list[str]:
        return list(self.nodes)

    def formula(self, name: str):
        """∂of/∂name in δ-form (the same as ``grads[name]``).

        Examples
        --------
        >>> grads = sb.grad(sb.parse("a = 2*x; b = a + 3; c = b**2"), wrt="x")
        >>> grads.formula("b"), grads.formula("x")
        (2*b*delta_c, 2*delta_a)
        """
        return self[name]

    def terms(self, name: str) -> list:
        """``(consumer, arg position, expression)`` for each term summed into δ_name."""
        self._check(name)
        return list(self._terms.get(name, []))

    def delta(self, name: str):
        """The symbol δ_name standing for ∂of/∂name in other formulas."""
        return self._d.delta(name)

    def symbol(self, name: str):
        """How node ``name`` appears in formulas: its symbol, or its expression if unnamed."""
        return canonical(self._d.expr(name))

    def label(self, name: str) -> str:
        """``W₁`` for a named node, ``w·x − y`` for an unnamed one."""
        return self._d.label(name)

    def expanded(self, name: str):
        """∂of/∂name with every δ substituted: in terms of forward nodes only.

        Raises
        ------
        GradError
            If the joint graph has more than ``MAX_EXPANDED_NODES`` nodes
            (the fully substituted formula grows too large to read).

        Examples
        --------
        >>> import sympy
        >>> grads = sb.grad(sb.parse("L = (w*x - y)**2"), wrt="w")
        >>> e = grads.expanded("w"); e
        x*(2*w*x - 2*y)
        >>> w, x, y = sympy.symbols("w x y")
        >>> sympy.expand(e - 2*x*(w*x - y))
        0
        """
        self._check(name)
        size = len(self.graph)
        if size > MAX_EXPANDED_NODES:
            raise GradError(f"graph for {self.of!r} has {size} nodes; expanded formulas are "
                            f"built only up to {MAX_EXPANDED_NODES} nodes. Use the δ-form "
                            f"grads[{name!r}] instead.")
        if not self._expanded:
            fwd = {}  # named forward nodes -> their definitions in inputs and parameters
            for n in self.adjoints.forward.topo_order():
                if not self._d.auto(n) and not self.graph.is_leaf(n):
                    fwd[self._d.symbol(n)] = substitute(self._d.definition(n), fwd)
            subs = {self.delta(self.of): sp.Integer(1)}
            for n in self.nodes:  # backward order: every δ used is already expanded
                e = substitute(self._formulas[n], subs)
                subs[self.delta(n)] = e
                self._expanded[n] = realize(canonical(substitute(e, fwd)))
        return self._expanded[name]

    def _lhs(self, n: str) -> tuple[str, str]:
        lab, lat = self.label(n), self._d.label_latex(n)
        if not _simple(lab):
            lab, lat = f"({lab})", rf"\left({lat}\right)"
        of_t, of_l = self.label(self.of), self._d.label_latex(self.of)
        return f"∂{of_t}/∂{lab}", rf"\frac{{\partial {of_l}}}{{\partial {lat}}}"

    def line(self, name: str) -> str:
        """``∂L/∂W₁ = Xᵀ δ_z1``: one formula on one line."""
        return f"{self._lhs(self._check(name))[0]} = {text(self._shown[name])}"

    def text(self) -> str:
        """Every node's formula on one line each, in backward-sweep order."""
        of = self.label(self.of)
        lines = [f"Gradients of {of} (δ_n stands for ∂{of}/∂n):"]
        lines += ["  " + self.line(n) for n in self.nodes]
        return "\n".join(lines)

    def latex(self) -> str:
        """The formulas as a LaTeX ``aligned`` block."""
        rows = [rf"{self._lhs(n)[1]} &= {latex(self._shown[n])}" for n in self.nodes]
        return "\\begin{aligned}\n" + " \\\\\n".join(rows) + "\n\\end{aligned}"

    def __str__(self) -> str:
        return self.text()

    def __repr__(self) -> str:
        return f"<Gradients of {self.of!r} for {len(self.nodes)} nodes>"

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        """Jupyter: the joint graph as SVG and the formulas as LaTeX. (render is imported
        here, not at the top: it comes later in the layering.)"""
        from .render import mimebundle

        return mimebundle(self, include, exclude, extra={"text/latex": self._repr_latex_()})

    def _repr_latex_(self) -> str:
        return "$$" + self.latex() + "$$"


def grad(g: Graph, of: str | None = None, wrt=None) -> Gradients:
    """Gradient formulas: ∂of/∂node for every node on the gradient path.

    Parameters
    ----------
    g : Graph
        The network.
    of : str, optional
        A scalar node; by default the last scalar output.
    wrt : str or list of str, optional
        Nodes to differentiate with respect to; by default the parameters
        (or, with none, the float inputs).

    Returns
    -------
    Gradients
        ``grads[name]`` is the δ-form SymPy expression of ∂of/∂name,
        ``grads.expanded(name)`` the fully substituted one, ``print(grads)``
        lists them all.

    Raises
    ------
    GradError
        If ``of`` is not a scalar or a name is not in the graph.

    See Also
    --------
    derive : the same backward sweep, step by step, with numbers.
    symbackprop.differentiate : the joint graph the formulas are read from.

    Notes
    -----
    A δ-form formula refers to the adjoints of the node's consumers: for a
    node used by an unnamed node, the δ shown is that of the named node the
    adjoint was built for (the MLP's ``∂L/∂W₁ = Xᵀ δ_z1``, since
    ``δ_(X W₁) = δ_z1``).

    Examples
    --------
    >>> grads = sb.grad(sb.parse("a = 2*x; b = a + 3; c = b**2"), wrt="x")
    >>> print(grads)
    Gradients of c (δ_n stands for ∂c/∂n):
      ∂c/∂c = 1
      ∂c/∂b = 2b·δ_c
      ∂c/∂a = δ_b
      ∂c/∂x = 2δ_a
    >>> grads.expanded("x")
    8*x + 12
    >>> grads = sb.grad(sb.models.mlp([784, 256, 10]))
    >>> grads["W1"]
    X.T*delta_z1
    >>> for name in ("W1", "z1", "b1"):
    ...     print(grads.line(name))
    ∂L/∂W₁ = Xᵀ δ_z1
    ∂L/∂z₁ = δ_h1 ∘ 1[h₁ > 0]
    ∂L/∂b₁ = 𝟙ᵀ δ_z1
    """
    return Gradients(differentiate(g, of, wrt))

