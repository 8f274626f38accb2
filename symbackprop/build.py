"""The statement language: ``sb.parse("a = 2*x; b = a + 3; c = b**2")``.

Statements are parsed by Python's parser and walked here; the string is
never evaluated. Assigned names become named nodes, free names become inputs
(or parameters, when listed in ``params``), the last assignment is the output.
Calls may use any registered op: ``h = tanh(w*x + b)``, ``s = sum(v, axis=0)``;
``max(a, b)`` and ``min(a, b)`` are the elementwise maximum and minimum, ``max(v, axis=0)``
with one argument the reduction.
"""

from __future__ import annotations

import ast

from .errors import ArityError, ParseError, ShapeError
from .expr import _error, parse_module, walk
from .graph import Graph, Node
from .ops import registry
from .ops.select import TWO_ARGUMENT_FORMS


def parse(text: str, params=(), name: str = "statements") -> Graph:
    """Build a graph from statements separated by ``;`` or newlines.

    Parameters
    ----------
    text : str
        Assignments such as ``"a = 2*x; b = a + 3; c = b**2"``.
    params : iterable of str
        Free names to declare as parameters rather than inputs.
    name : str
        The graph's name.

    Returns
    -------
    Graph
        Scalar inputs for the free names, one named node per assignment,
        the last assignment as the output.

    Raises
    ------
    ParseError
        For anything that is not an assignment of an arithmetic expression, a
        name assigned twice, or a name used before it is assigned.

    Examples
    --------
    >>> g = sb.parse("a = 2*x; b = a + 3; c = b**2")
    >>> g.nodes("input"), g.outputs
    (['x'], ['c'])
    >>> sb.parse("y = x; import os")
    Traceback (most recent call last):
    ...
    symbackprop.errors.ParseError: statement 2 ('import os') is not an assignment...
    """
    params = set(params)
    g = Graph(name=name)
    tree = parse_module(text)
    if not tree.body:
        raise ParseError("no statements found. Write e.g. 'a = 2*x; b = a + 3'.")
    assigned: dict[str, Node] = {}
    last = None
    for i, st in enumerate(tree.body, 1):
        seg = ast.get_source_segment(text, st) or ""
        if not (isinstance(st, ast.Assign) and len(st.targets) == 1
                and isinstance(st.targets[0], ast.Name)):
            raise ParseError(f"statement {i} ({seg!r}) is not an assignment 'name = expression'."
                             " Write e.g. 'b = a + 3'.")
        target = st.targets[0].id
        if target in g:
            what = "assigned twice" if target in assigned else "used before it is assigned"
            raise ParseError(f"node {target!r} is {what} (statement {i}: {seg!r}). "
                             "Give each value its own name.")

        def name_(n, node):
            if n in g:
                return Node(g, n)
            return g.param(n) if n in params else g.input(n)

        def check(f, node, target=target):
            if f.startswith("_"):
                raise _error(text, node, f"function {f!r} is not allowed: only ops can be called")
            registry.get(f, node=target)  # raises UnknownOpError with close names

        def call(f, args, kwargs, node):
            if not any(isinstance(a, Node) for a in args):
                raise _error(text, node, f"{f}() needs at least one variable argument")
            if len(args) == 2:  # Python's max(a, b): the elementwise maximum
                f = TWO_ARGUMENT_FORMS.get(f, f)
            return g.apply(f, args, kwargs)

        def subscript(v, key, i=i, seg=seg):
            if not isinstance(v, Node):
                raise ParseError(f"statement {i} ({seg!r}): only a variable can be indexed.")
            return v[key]

        try:
            value = walk(st.value, text, name_, call, lambda v: v, check, subscript)
        except (ShapeError, ArityError) as e:  # they name the op's node (slice_1): say whose
            raise type(e)(f"{e} (In statement {i}: {seg!r}.)") from None
        assigned[target] = last = _name(g, value, target)
    g.nx.graph["outputs"] = [last.name]
    return g


def _name(g: Graph, value, target: str) -> Node:
    """Name the node computed by one statement."""
    if not isinstance(value, Node):
        return g.const(value, name=target)
    if g.nx.nodes[value.name].get("auto"):
        return g.name(value, target)
    return g.apply("identity", [value], {}, name=target)
