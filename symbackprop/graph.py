"""The computation graph: a networkx ``MultiDiGraph`` of named nodes.

Representation (also the on-disk schema, see README "Graph schema"):

* every node has a unique name and the attributes ``op`` (``"input"``,
  ``"param"``, ``"const"`` or a registered op name), ``shape`` (a tuple of
  ints or size names such as ``"N"``), ``dtype`` (``"float"`` or ``"int"``),
  ``attrs`` (the op's attributes) and, for constants, ``value``;
* argument order lives on the edges: one edge per argument, keyed by and
  carrying ``arg`` (its position). A ``MultiDiGraph`` is used so that one node
  can feed another twice (``x * x`` has two edges ``x -> mul``, args 0 and 1);
* ``G.graph["outputs"]`` lists the output node names.

Every node added is checked at once (arity, argument shapes), so mistakes are
reported where they are made, not at code generation.
"""

from __future__ import annotations

import difflib
import heapq
import numbers
from collections.abc import Iterable
from operator import itemgetter

import networkx as nx
import numpy as np
import sympy as sp

from . import sizes
from .errors import ArityError, CycleError, GraphError, ShapeError
from .ops import registry
from .ops.registry import LEAVES, ShapeMismatch

_DTYPES = {"float": "float", "float32": "float", "float64": "float", "int": "int",
           "int32": "int", "int64": "int", "bool": "int"}


def fmt_shape(shape) -> str:
    """Shape as people write it: ``(N, 784)``, ``()``, ``(3,)``."""
    inner = ", ".join(str(d) for d in shape)
    return f"({inner},)" if len(shape) == 1 else f"({inner})"


def _norm_shape(shape, where: str) -> tuple:
    if shape is None:
        return ()
    if isinstance(shape, (int, str)):
        shape = (shape,)
    out = []
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, (int, str)) or (isinstance(d, int) and d < 0):
            raise ShapeError(f"{where}: shape {tuple(shape)!r} has the entry {d!r}; "
                             "use non-negative ints, size names such as 'N' or expressions "
                             "of them such as 'H//2 + 1'.")
        out.append(sizes.normalize(d, where))
    return tuple(out)


def _norm_dtype(dtype, where: str) -> str:
    key = getattr(dtype, "name", dtype)
    if str(key) not in _DTYPES:
        raise GraphError(f"{where}: dtype {dtype!r} is not one of {sorted(_DTYPES)}.")
    return _DTYPES[str(key)]


class Node:
    """A handle on one node of a :class:`Graph`, with operator overloading.

    ``a + b``, ``a - b``, ``a * b``, ``a / b``, ``a ** b``, ``a @ b``, ``-a`` and
    ``a.T`` add nodes to the graph; Python numbers become constants. ``a > b``,
    ``a < b``, ``a >= b`` and ``a <= b`` add a mask of 0.0 and 1.0 (``sb.greater``, ...),
    through which no gradient flows; ``a == b`` is identity of nodes, not a mask.

    Examples
    --------
    >>> g = sb.Graph()
    >>> x = g.input("x")
    >>> y = 2 * x + 1
    >>> y.op, g.args(y.name)
    ('add', ['mul_1', 'const_2'])
    """

    __slots__ = ("graph", "name")
    __array_priority__ = 1000  # so ndarray * node calls Node.__rmul__

    def __init__(self, graph: Graph, name: str):
        self.graph = graph
        self.name = name

    # -- what the node is ---------------------------------------------------
    @property
    def data(self) -> dict:
        return self.graph.nx.nodes[self.name]

    @property
    def op(self) -> str:
        return self.data["op"]

    @property
    def shape(self) -> tuple:
        return self.data["shape"]

    @property
    def dtype(self) -> str:
        return self.data["dtype"]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __repr__(self) -> str:
        return f"<Node {self.name!r} {self.op} {fmt_shape(self.shape)}>"

    def __hash__(self):
        return hash((id(self.graph), self.name))

    def __eq__(self, other):  # identity, not an elementwise comparison
        return isinstance(other, Node) and other.graph is self.graph and other.name == self.name

    # -- operators -----------------------------------------------------------
    def _ap(self, op, *args):
        return self.graph.apply(op, list(args), {})

    def __add__(self, o): return self._ap("add", self, o)
    def __radd__(self, o): return self._ap("add", o, self)
    def __sub__(self, o): return self._ap("sub", self, o)
    def __rsub__(self, o): return self._ap("sub", o, self)
    def __mul__(self, o): return self._ap("mul", self, o)
    def __rmul__(self, o): return self._ap("mul", o, self)
    def __truediv__(self, o): return self._ap("div", self, o)
    def __rtruediv__(self, o): return self._ap("div", o, self)
    def __pow__(self, o): return self._ap("pow", self, o)
    def __rpow__(self, o): return self._ap("pow", o, self)
    def __matmul__(self, o): return self._ap("matmul", self, o)
    def __rmatmul__(self, o): return self._ap("matmul", o, self)
    def __neg__(self): return self._ap("neg", self)
    # Comparisons give a mask node of 0.0 and 1.0 (sb.greater, ...) with no gradient;
    # == stays identity (above), so nodes can be dict keys and list members.
    def __gt__(self, o): return self._ap("greater", self, o)
    def __lt__(self, o): return self._ap("less", self, o)
    def __ge__(self, o): return self._ap("greater_equal", self, o)
    def __le__(self, o): return self._ap("less_equal", self, o)
    def __pos__(self): return self

    def __getitem__(self, key) -> Node:
        """Static slicing, ``x[0]``, ``x[1:3]``, ``x[:, 1:3]``, ``x[..., -1]``, ``x[::2]``
        (op ``slice``); an integer node as the key gathers, ``sb.take(x, key, axis=0)``."""
        from .ops.arrays import index_entries, normalize_index

        if isinstance(key, Node):
            return self.graph.apply("take", [self, key], {"axis": 0})
        entries = index_entries(key)
        try:
            entries = normalize_index(entries, self.shape)
        except ShapeMismatch:
            pass  # the shape rule raises it again, naming the new node
        return self.graph.apply("slice", [self], {"index": entries})

    def __iter__(self):
        # Without this, Python would iterate through __getitem__(0), (1), ... and, along a
        # symbolic axis, never stop.
        raise TypeError(f"node {self.name!r} is not iterable: take parts with x[i] or "
                        "sb.split(x, sections, axis).")

    @property
    def T(self) -> Node:
        """Transpose (reverses the axes)."""
        return self._ap("transpose", self)


class Graph:
    """A network: a DAG of named nodes wrapping a networkx ``MultiDiGraph``.

    Parameters
    ----------
    name : str
        A name for the network, used in generated code and diagrams.

    Examples
    --------
    >>> g = sb.Graph()
    >>> x, w, y = g.input("x"), g.param("w"), g.input("y")
    >>> L = g.output("L", (w * x - y) ** 2)
    >>> g.outputs
    ['L']
    >>> g.nodes()
    ['x', 'w', 'y', 'mul_1', 'sub_1', 'const_1', 'L']
    """

    def __init__(self, name: str = "network"):
        self.nx = nx.MultiDiGraph(name=name, outputs=[])
        self._counts: dict[str, int] = {}

    # -- leaves ------------------------------------------------------------
    def input(self, name: str, shape=(), dtype="float") -> Node:
        """Declare an input (data: not trained), e.g. ``g.input("X", shape=("N", 784))``."""
        return self._leaf("input", name, shape, dtype)

    def param(self, name: str, shape=(), dtype="float") -> Node:
        """Declare a trainable parameter, e.g. ``g.param("W1", shape=(784, 256))``."""
        return self._leaf("param", name, shape, dtype)

    def const(self, value, name: str | None = None) -> Node:
        """A constant: a number, a SymPy expression of size names (``1/N``) or an array."""
        if isinstance(value, Node):
            return value
        if isinstance(value, (list, tuple, np.ndarray)):
            arr = np.asarray(value, dtype=float)
            shape, stored = arr.shape, arr.tolist()
        elif isinstance(value, (numbers.Number, sp.Basic)) and not isinstance(value, bool):
            shape, stored = (), value
            if isinstance(value, sp.Basic):
                bad = [s for s in value.free_symbols if not s.name.isidentifier()]
                if bad or not (value.is_number or value.free_symbols):
                    raise GraphError(f"constant {value!r}: only numbers and size names allowed.")
        else:
            raise GraphError(
                f"constant {value!r} ({type(value).__name__}): expected a number or an array. "
                "Use g.input() for data.")
        new = self._fresh(name, "const")
        self.nx.add_node(new, op="const", shape=tuple(shape), dtype="float", attrs={},
                         value=stored, auto=name is None)
        return Node(self, new)

    def _leaf(self, role, name, shape, dtype) -> Node:
        name = self._check_new_name(name)
        where = f"{role} {name!r}"
        self.nx.add_node(name, op=role, shape=_norm_shape(shape, where),
                         dtype=_norm_dtype(dtype, where), attrs={}, auto=False)
        return Node(self, name)

    # -- ops -----------------------------------------------------------------
    def apply(self, op: str, args: list, attrs: dict | None = None, name: str | None = None) -> Node:
        """Add a node applying ``op`` to ``args``; checks arity and shapes now."""
        opdef = registry.get(op, node=name)
        attrs = {**opdef.attrs, **(attrs or {})}
        unknown = set(attrs) - set(opdef.attrs)
        if unknown:
            raise GraphError(f"op {op!r} has no attribute {min(unknown)!r}; "
                             f"it takes {sorted(opdef.attrs) or 'none'}.")
        nodes = [self._as_node(a) for a in args]
        names = [n.name for n in nodes]
        new = self._fresh(name, op)
        if opdef.arity is not None and len(nodes) != opdef.arity:
            # an op of the name's family taking that many (max(a, b) is maximum(a, b))
            other = [o.name for o in registry.all_ops() if o.name.startswith(op)
                     and o.name != op and not o.internal and o.arity in (len(nodes), None)]
            hint = f" For {len(nodes)} arguments use sb.{other[0]}." if other else ""
            raise ArityError(f"node {new!r}: op {op!r} takes {opdef.arity} argument(s), "
                             f"got {len(nodes)} ({', '.join(names)}). Pass exactly "
                             f"{opdef.arity}.{hint}")
        if opdef.arity is None and not nodes:
            raise ArityError(f"node {new!r}: op {op!r} needs at least one argument.")
        shapes = [self.nx.nodes[n]["shape"] for n in names]
        try:
            shape = tuple(opdef.shape(shapes, attrs, names))
            # a dtype rule may refuse too (take's float index), reported the same way
            dtype = opdef.dtype([self.nx.nodes[n]["dtype"] for n in names], attrs)
        except ShapeMismatch as e:
            given = ", ".join(f"{n} is {fmt_shape(s)}" for n, s in zip(names, shapes))
            raise ShapeError(f"node {new!r} = {op}({', '.join(names)}): {given}; {e.found}."
                             + (f" {e.fix}" if e.fix else "")) from None
        self.nx.add_node(new, op=op, shape=shape, dtype=dtype, attrs=attrs, auto=name is None)
        for i, n in enumerate(names):
            self.nx.add_edge(n, new, key=i, arg=i)
        return Node(self, new)

    def _as_node(self, a) -> Node:
        if isinstance(a, Node):
            if a.graph is not self:
                raise GraphError(f"node {a.name!r} belongs to another graph; build each "
                                 "network in one sb.Graph.")
            return a
        return self.const(a)

    # -- names -----------------------------------------------------------------
    def _check_new_name(self, name) -> str:
        if not isinstance(name, str) or not name:
            raise GraphError(f"node name {name!r}: expected a non-empty string.")
        if name in self.nx:
            raise GraphError(f"node {name!r} already exists; choose another name.")
        return name

    def _fresh(self, name, base) -> str:
        if name is not None:
            return self._check_new_name(name)
        while True:
            self._counts[base] = self._counts.get(base, 0) + 1
            cand = f"{base}_{self._counts[base]}"
            if cand not in self.nx:
                return cand

    def rename(self, old: str, new: str) -> None:
        """Rename node ``old`` to ``new`` (keeps edges and outputs)."""
        if old == new:
            return
        self._check_new_name(new)
        # What nx.relabel_nodes(copy=False) does for one fresh name (the node moves to the
        # end of the insertion order, its edges keep their keys), without its scan of
        # every node: renaming each layer of a deep network would be quadratic.
        G = self.nx
        G.add_node(new, **G.nodes[old])
        edges = [(new, v, k, d) for _, v, k, d in G.out_edges(old, keys=True, data=True)]
        edges += [(u, new, k, d) for u, _, k, d in G.in_edges(old, keys=True, data=True)]
        G.remove_node(old)
        G.add_edges_from(edges)
        G.nodes[new]["auto"] = False
        self.nx.graph["outputs"] = [new if o == old else o for o in self.outputs]

    def output(self, name: str, node) -> Node:
        """Mark ``node`` as an output called ``name`` and return its handle.

        An unnamed node is renamed ``name``; a named one gets an ``identity``
        node called ``name``.
        """
        node = self._as_node(node)
        if node.name != name:
            if self.nx.nodes[node.name].get("auto"):
                self.rename(node.name, name)
                node = Node(self, name)
            else:
                node = self.apply("identity", [node], {}, name=name)
        if name not in self.nx.graph["outputs"]:
            self.nx.graph["outputs"].append(name)
        return node

    def name(self, node, name: str) -> Node:
        """Give an intermediate node a readable name (``h1``) without making it an output."""
        node = self._as_node(node)
        self.rename(node.name, name)
        return Node(self, name)

    # -- queries ------------------------------------------------------------------
    @property
    def outputs(self) -> list[str]:
        return list(self.nx.graph.get("outputs", []))

    def __getitem__(self, name: str) -> Node:
        if name not in self.nx:
            raise KeyError(missing_node_message(self, name))
        return Node(self, name)

    def __contains__(self, name) -> bool:
        return name in self.nx

    def __len__(self) -> int:
        return self.nx.number_of_nodes()

    def nodes(self, role: str | None = None) -> list[str]:
        """Node names in insertion order, optionally only one role
        (``"input"``, ``"param"``, ``"const"`` or ``"op"``)."""
        return [n for n, d in self.nx.nodes(data=True) if role is None or role_of(d) == role]

    def role(self, name: str) -> str:
        """``"input"``, ``"param"``, ``"const"`` or ``"op"``."""
        return role_of(self.nx.nodes[name])

    def is_leaf(self, name: str) -> bool:
        """Whether ``name`` is an input, a parameter or a constant (computes nothing)."""
        return self.nx.nodes[name]["op"] in LEAVES

    def opdef(self, name: str) -> registry.OpDef | None:
        """The :class:`~symbackprop.ops.registry.OpDef` of an op node; ``None`` for a leaf.

        Examples
        --------
        >>> g = sb.parse("y = relu(x)")
        >>> g.opdef("y").name, g.opdef("x")
        ('relu', None)
        """
        op = self.nx.nodes[name]["op"]
        return None if op in LEAVES else registry.get(op, node=name)

    # -- annotations (ANNOTATIONS: what each means, who writes and who reads it) ---------
    def phase(self, name: str) -> str | None:
        """``"forward"`` or ``"backward"`` in a joint graph; ``None`` elsewhere."""
        return self.nx.nodes[name].get("phase")

    def is_backward(self, name: str) -> bool:
        """Whether the backward sweep computes ``name`` (a joint graph's gradient node)."""
        return self.nx.nodes[name].get("phase") == "backward"

    def adjoint_of(self, name: str) -> str | None:
        """The forward node whose whole gradient ``name`` holds (dL/d that node)."""
        return self.nx.nodes[name].get("adjoint_of")

    def grad_of(self, name: str) -> str | None:
        """The forward node of which ``name`` is one consumer's gradient contribution."""
        return self.nx.nodes[name].get("grad_of")

    def via(self, name: str) -> str | None:
        """The consumer through which the contribution ``name`` (see :meth:`grad_of`) flows."""
        return self.nx.nodes[name].get("via")

    def vjp_of(self, name: str) -> str | None:
        """The forward node whose vector-Jacobian rule built ``name`` (its first node)."""
        return self.nx.nodes[name].get("vjp_of")

    def recompute_of(self, name: str) -> str | None:
        """The forward node that ``name``, a copy in the backward, computes again
        (gradient checkpointing)."""
        return self.nx.nodes[name].get("recompute_of")

    def fused(self, name: str) -> list[str]:
        """The nodes merged into ``name`` by fusion (their statements are now its own)."""
        return list(self.nx.nodes[name].get("fused", ()))

    def args(self, name: str) -> list[str]:
        """The arguments of node ``name``, in order (none for a node not in the graph)."""
        if name not in self.nx:  # e.g. a node a pass merged away, named by an attribute
            return []
        # Read networkx's adjacency dicts (_pred, _succ: stable since networkx 2.0 and used by
        # its own algorithms) directly: a view per call costs more than the sort, and a deep
        # network's compile asks for the arguments of a node thousands of times.
        ins = [(d.get("arg"), u) for u, keys in self.nx._pred[name].items()
               for d in keys.values()]
        ins.sort(key=itemgetter(0))  # stable, as sorting the in_edges by arg was
        return [u for _, u in ins]

    def consumers(self, name: str) -> list[tuple[str, int]]:
        """``(consumer, argument position)`` for every use of ``name``, in a fixed order
        (none for a node not in the graph)."""
        if name not in self.nx:
            return []
        # networkx keeps each node's successors in the order they were added
        return [(v, d.get("arg")) for v, keys in self.nx._succ[name].items()
                for d in keys.values()]

    def topo_order(self) -> list[str]:
        """Names in a deterministic topological order: of the nodes ready at each step,
        the one inserted first (networkx's lexicographical_topological_sort keyed by
        insertion order gives the same list, about ten times slower)."""
        G = self.nx
        names = list(G)
        index = {n: i for i, n in enumerate(names)}
        waiting = {n: len(G.pred[n]) for n in names}  # arguments not yet placed
        ready = [index[n] for n in names if not waiting[n]]  # ascending: already a heap
        out = []
        while ready:
            n = names[heapq.heappop(ready)]
            out.append(n)
            for v in G.succ[n]:
                waiting[v] -= 1
                if not waiting[v]:
                    heapq.heappush(ready, index[v])
        if len(out) < len(names):  # the nodes left over lie on or after a cycle
            self.check_acyclic()
        return out

    def check_acyclic(self) -> None:
        if nx.is_directed_acyclic_graph(self.nx):  # fast; find_cycle only to name the cycle
            return
        try:
            cyc = nx.find_cycle(self.nx)
        except nx.NetworkXNoCycle:
            return
        path = [u for u, *_ in cyc] + [cyc[0][0]]
        raise CycleError(f"cycle {' -> '.join(path)}. Remove one of these edges "
                         f"(e.g. {cyc[-1][0]} -> {cyc[-1][1]}).")

    def copy(self) -> Graph:
        new = Graph.__new__(Graph)
        new.nx = self.nx.copy()
        new.nx.graph["outputs"] = self.outputs
        new._counts = dict(self._counts)
        return new

    def ancestors(self, names: Iterable[str]) -> set[str]:
        """The given nodes and everything they depend on."""
        return _closure(names, self.nx.predecessors)

    def descendants(self, names: Iterable[str]) -> set[str]:
        """The given nodes and everything that depends on them."""
        return _closure(names, self.nx.successors)

    def __repr__(self) -> str:
        return (f"<Graph {self.nx.graph.get('name', '')!r}: {len(self)} nodes, "
                f"outputs {self.outputs}>")

    # -- files ----------------------------------------------------------------------
    def save(self, path) -> None:
        """Write the graph as networkx node-link JSON (see README "Graph schema")."""
        save(self, path)

    # -- display (Jupyter) ------------------------------------------------------------
    # The display hooks import render lazily, inside the method: graph.py comes first
    # in the import order and must not depend on render.py at import time.
    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        """Jupyter display hook: the diagram (``sb.render(self)``) as SVG, or text
        with the install hint when Graphviz's ``dot`` is missing."""
        from .render import mimebundle

        return mimebundle(self, include, exclude)

    def _repr_svg_(self) -> str | None:
        """The diagram as SVG text (``None`` without Graphviz's ``dot``)."""
        from .render import svg

        return svg(self)


def _closure(names: Iterable[str], neighbours) -> set[str]:
    """``names`` and every node reachable through ``neighbours``, in one walk for all
    names: linear in the graph, where one networkx walk per name is quadratic."""
    out = set(names)
    todo = list(out)
    while todo:
        for p in neighbours(todo.pop()):
            if p not in out:
                out.add(p)
                todo.append(p)
    return out


# The annotations that differentiation and the passes write on nodes, read through the
# accessors of the same name on Graph: name -> (meaning, written by, read by).
# docs/graph-schema.md shows this table (tests/test_graph.py checks they agree).
ANNOTATIONS = {
    "phase": ('"forward" or "backward": the sweep that computes the node',
              "autodiff.differentiate; optimize.cse marks a merged node forward",
              "autodiff, optimize.cse, edges, display, render, codegen.emit"),
    "adjoint_of": ("the forward node whose whole gradient dL/d(node) this node holds",
                   "autodiff.differentiate", "autodiff, display, edges, render, codegen.emit"),
    "grad_of": ("the forward node of which this node is one consumer's contribution",
                "autodiff.differentiate", "render, codegen.emit, codegen.plan"),
    "via": ("the consumer that contribution flows through", "autodiff.differentiate",
            "edges, codegen.emit, codegen.plan"),
    "vjp_of": ("the forward node whose vector-Jacobian rule built this node",
               "autodiff.differentiate", "edges, render, codegen.emit, codegen.plan"),
    "fused": ("the nodes merged into this one (their statements are now its own)",
              "optimize.fuse", "optimize.fuse, codegen.emit, codegen.plan"),
    "recompute_of": ("the forward node this backward copy computes again (checkpointing)",
                     "codegen.checkpoint", "codegen.emit, codegen.plan, cost, render"),
}


def role_of(data: dict) -> str:
    op = data["op"]
    return op if op in LEAVES else "op"


def missing_node_message(g: Graph, name, what: str = "node") -> str:
    """The message for a name that is not in ``g``, with close names."""
    close = difflib.get_close_matches(str(name), list(g.nx), n=3)
    hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
    return f"{what} {name!r} is not in the graph.{hint} Nodes: {', '.join(g.nx)}."


# -- networkx and JSON ----------------------------------------------------------------
def dim_symbol(name: str) -> sp.Symbol:
    """The SymPy symbol of a size name such as ``N`` (a positive integer)."""
    return sizes.symbol(name)


def to_networkx(g: Graph) -> nx.MultiDiGraph:
    """A copy of the graph as a networkx ``MultiDiGraph`` (the schema in the module doc).

    Examples
    --------
    >>> g = sb.parse("y = x * x")
    >>> G = sb.to_networkx(g)
    >>> sorted((u, v, d["arg"]) for u, v, d in G.edges(data=True))
    [('x', 'y', 0), ('x', 'y', 1)]
    """
    G = g.nx.copy()
    G.graph["outputs"] = g.outputs
    G.graph["counts"] = dict(g._counts)  # so names made after a round trip are the same
    return G


def from_networkx(G: nx.Graph, name: str | None = None) -> Graph:
    """Build a checked :class:`Graph` from a networkx graph whose nodes carry ``op``.

    Argument order comes from the ``arg`` attribute of each edge or, where a
    node has an ``args`` attribute (a list of names), from that list; the
    latter lets a plain ``DiGraph`` express ``x * x``. Outputs come from
    ``G.graph["outputs"]``, else they are the nodes nothing consumes.

    Examples
    --------
    >>> import networkx as nx
    >>> G = nx.DiGraph()
    >>> G.add_node("x", op="input"); G.add_node("y", op="input")
    >>> G.add_node("d", op="sub"); G.add_edge("y", "d", arg=1); G.add_edge("x", "d", arg=0)
    >>> sb.from_networkx(G).args("d")
    ['x', 'y']
    """
    try:
        cyc = nx.find_cycle(G)
    except nx.NetworkXNoCycle:
        cyc = None
    if cyc:
        path = [u for u, *_ in cyc] + [cyc[0][0]]
        raise CycleError(f"cycle {' -> '.join(map(str, path))}. Remove one of these edges.")
    g = Graph(name=name or G.graph.get("name", "network"))
    order = {n: i for i, n in enumerate(G)}
    for n in nx.lexicographical_topological_sort(G, key=order.__getitem__):
        d = G.nodes[n]
        op = d.get("op")
        if op is None:
            raise GraphError(f"node {n!r} has no 'op' attribute; give it op='input', "
                             "'param', 'const' or an op name such as 'mul'.")
        role = role_of(d)
        if role in ("input", "param"):
            g._leaf(op, n, _from_json(d.get("shape", ())), d.get("dtype", "float"))
        elif role == "const":
            if "value" not in d:
                raise GraphError(f"node {n!r}: a const needs a 'value' attribute.")
            g.const(_from_json(d["value"]), name=n)
        else:
            g.apply(op, [Node(g, a) for a in _arg_list(G, n)],
                    _from_json(d.get("attrs") or {}), name=n)
        g.nx.nodes[n]["auto"] = bool(d.get("auto", False))
        if d.get("block") is not None:  # a model's layer, drawn as one cluster
            g.nx.nodes[n]["block"] = d["block"]
        for k, v in d.items():  # keep other annotations (phase, adjoint_of, ...): lossless
            if k not in ("op", "shape", "dtype", "attrs", "value", "args", "auto"):
                g.nx.nodes[n].setdefault(k, v)
    outs = list(G.graph.get("outputs") or [n for n in G if G.out_degree(n) == 0])
    for o in outs:
        if o not in g.nx:
            raise GraphError(missing_node_message(g, o, "output"))
    g.nx.graph["outputs"] = outs
    g._counts.update({str(k): int(v) for k, v in (G.graph.get("counts") or {}).items()})
    return g


def _arg_list(G: nx.Graph, n) -> list:
    if G.nodes[n].get("args") is not None:
        args = list(G.nodes[n]["args"])
        for a in args:
            if a not in G:
                raise GraphError(f"node {n!r}: argument {a!r} is not a node of the graph.")
        return args
    edges = (G.in_edges(n, data=True) if not G.is_multigraph()
             else G.in_edges(n, data=True, keys=False))
    edges = list(edges)
    if len(edges) > 1 and any("arg" not in e[2] for e in edges):
        raise GraphError(f"node {n!r} has {len(edges)} arguments but not every edge has "
                         "an 'arg' position. Set arg=0, 1, ... on its in-edges, or an "
                         "'args' list on the node.")
    edges.sort(key=lambda e: e[2].get("arg", 0))
    pos = [e[2].get("arg", 0) for e in edges]
    if pos != list(range(len(edges))):
        raise GraphError(f"node {n!r}: argument positions {pos} should be "
                         f"{list(range(len(edges)))}.")
    return [e[0] for e in edges]


def _to_json(v):
    if isinstance(v, sp.Basic):
        return {"sympy": str(v)}
    if isinstance(v, dict):
        return {k: _to_json(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_to_json(x) for x in v]
    return v


def _from_json(v):
    from .expr import to_sympy
    from .ops.elementwise import X

    if isinstance(v, dict) and set(v) == {"sympy"}:
        known = {s.name: s for s in X}
        return to_sympy(v["sympy"], lambda n: known.get(n) or dim_symbol(n))
    if isinstance(v, dict):
        return {k: _from_json(x) for k, x in v.items()}
    if isinstance(v, list):
        return tuple(_from_json(x) for x in v)
    return v


def save(g: Graph, path) -> None:
    """Write ``g`` to ``path`` as networkx node-link JSON (stable key order)."""
    import json

    data = nx.node_link_data(to_networkx(g), edges="edges")
    data = _to_json(data)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")


def load(path) -> Graph:
    """Read a graph written by :func:`save` (or any node-link JSON in the schema)."""
    import json

    from .errors import ParseError

    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ParseError(f"file {str(path)!r} is not valid JSON: {e.msg} at line {e.lineno}, "
                         f"column {e.colno}. Write it with g.save() or networkx's "
                         "node_link_data().") from None
    if not isinstance(data, dict) or "nodes" not in data:
        raise ParseError(f"file {str(path)!r} is not networkx node-link JSON: expected an "
                         "object with 'nodes' and 'edges'.")
    key = "edges" if "edges" in data else "links"
    try:
        G = nx.node_link_graph(data, directed=True, multigraph=True, edges=key)
    except (KeyError, TypeError, nx.NetworkXError) as e:
        raise ParseError(f"file {str(path)!r}: malformed node-link data ({e}). Each node needs "
                         "an 'id' and each edge a 'source' and 'target'.") from None
    ids = {d.get("id") for d in data["nodes"] if isinstance(d, dict)}
    for e in data.get(key) or []:  # networkx would silently add the missing end as a node
        ends = [e.get(k) for k in ("source", "target")] if isinstance(e, dict) else []
        for end in ends:
            if end not in ids:
                raise ParseError(f"file {str(path)!r}: edge {ends[0]} -> {ends[1]} uses node "
                                 f"{end!r}, which is not in 'nodes'. Add the node or remove "
                                 "the edge.")
    for n, d in G.nodes(data=True):
        d.pop("id", None)
    return from_networkx(G)
