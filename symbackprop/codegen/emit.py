"""Emit standalone NumPy source from a graph, and load it as a live module.

One statement per node, variables named after nodes (escaped by one
:class:`Namer`), a comment on every backward line naming the gradient it
computes. The module imports only NumPy; helper functions (``_softmax``, ...)
are copied in only when used. Output is deterministic: the same graph gives
the same bytes.
"""

from __future__ import annotations

import builtins
import keyword
import linecache
import re
import types
from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from .. import __version__ as _version
from ..autodiff import Adjoints, differentiate
from ..errors import CodegenError, GraphError
from ..graph import Graph, dim_symbol, fmt_shape
from ..ops import registry
from ..ops.elementwise import broadcast_shapes
from ..ops.stable import StableFunction
from ..optimize import changes, dump
from ..optimize import optimize as run_passes
from ..optimize import resolve as resolve_passes
from ..optimize.fuse import fuse_for_stability
from .printer import MATH_ONLY, expr_code, math_helper, spaced
from .stability import warn_unstable

DTYPES = ("float64", "float32")
RESERVED = {"np", "DTYPE"} | set(dir(builtins))


class Namer:
    """Turn node names into unique, safe Python identifiers, the same way every time.

    Examples
    --------
    >>> from symbackprop.codegen.emit import Namer
    >>> n = Namer()
    >>> n("h 1"), n("class"), n("x; import os"), n("h_1")
    ('h_1', 'class_', 'x_import_os', 'h_1_')
    """

    def __init__(self, reserved=()):
        self.taken = set(RESERVED) | set(reserved)
        self.names: dict[str, str] = {}

    def __call__(self, name, base: str | None = None) -> str:
        """The identifier of ``name`` (a node name, or any other key such as a tuple for a
        variable that is no node's), made from ``base`` (default: the name) the first time."""
        if name in self.names:
            return self.names[name]
        base = re.sub(r"\W+", "_", str(name if base is None else base)).strip("_") or "node"
        if base[0].isdigit():
            base = "n" + base
        if keyword.iskeyword(base) or base in self.taken:
            base += "_"
        code, k = base, 1
        while code in self.taken:
            k += 1
            code = f"{base}_{k}"
        self.taken.add(code)
        self.names[name] = code
        return code


def safe_text(s: str) -> str:
    """Text safe inside a comment or a docstring: one line, no quotes run, no escapes."""
    s = str(s).encode("unicode_escape").decode("ascii").replace('"""', '\\"\\"\\"')
    return s


@dataclass
class Function:
    """One emitted function: its name, parameters, body lines and return line."""

    name: str
    params: list
    doc: str
    body: list = field(default_factory=list)
    ret: str = ""


class Emitter:
    """Emit the functions of one module from the joint graph ``j``.

    The emitter reads ``j`` and never changes it: it works out the order of the nodes
    once and the code of each node at its first use, so ``j`` must not change while
    the emitter is in use.
    """

    def __init__(self, j: Graph, dtype: str = "float64"):
        if dtype not in DTYPES:
            raise CodegenError(f"dtype {dtype!r} is not supported; use one of {DTYPES}.")
        self.j, self.dtype = j, dtype
        self.sizes = sorted({d for n in j.nx for d in j.nx.nodes[n]["shape"] if isinstance(d, str)})
        self.helpers: dict[str, str] = {}
        self.constants: list[str] = []
        self.namer = Namer(reserved=self.sizes)
        # node fused away -> the node whose statement now computes it
        self.absorbed = {a: n for n in j.nx for a in j.nx.nodes[n].get("fused", ())}
        self.order = j.topo_order()
        self.index = {n: i for i, n in enumerate(j.nx)}  # insertion order: leaves come in it
        for n in self.order:  # fixed names, shared by every function
            self.namer(n)
        # Each node's code is asked for by every reader and by the comments of the
        # gradients it passes on: work it out once.
        self._inline: dict[str, bool] = {}
        self._rhs: dict[str, str] = {}

    def use(self, op, code: str) -> str:
        """``code``, after adding the helpers of ``op`` it calls (and those they call)."""
        todo = [code]
        while todo:
            text = todo.pop()
            for name, src in op.helpers.items():
                if name not in self.helpers and re.search(rf"\b{name}\(", text):
                    self.helpers[name] = src
                    todo.append(src)
        return code

    def use_functions(self, e: sp.Expr) -> None:
        """Add the helpers that the functions of ``e`` print as: erf and the like (no ufunc:
        the helper maps math's) and the stable forms of ops/stable.py (``_sigmoid``)."""
        for f in e.atoms(sp.Function):
            if isinstance(f, StableFunction):
                self.helpers.setdefault(f"_{type(f).__name__}", f.helper)
            elif type(f).__name__ in MATH_ONLY:
                name = MATH_ONLY[type(f).__name__]
                self.helpers.setdefault(f"_{name}", math_helper(name))

    # -- codes ------------------------------------------------------------------
    def inline(self, n: str) -> bool:
        """Written inside its consumer: scalar constants, and views used once."""
        if n not in self._inline:
            self._inline[n] = self._is_inline(n)
        return self._inline[n]

    def _is_inline(self, n: str) -> bool:
        d = self.j.nx.nodes[n]
        if d["op"] == "const":
            return d["shape"] == () and "adjoint_of" not in d
        return (d["op"] not in registry.LEAVES and registry.get(d["op"]).inline
                and len(self.j.consumers(n)) == 1 and n not in self.j.outputs)

    def value(self, n: str) -> sp.Expr:
        """A scalar constant as a SymPy number or expression of size names."""
        v = self.j.nx.nodes[n]["value"]
        v = sp.sympify(v)
        return v.xreplace({s: dim_symbol(s.name) for s in v.free_symbols})

    def code(self, n: str) -> str:
        """The code that stands for node ``n`` in an expression."""
        if self.inline(n):
            c = self.rhs(n)
            return f"({c})" if not re.fullmatch(r"[\w.]+", c) else c
        return self.namer(n)

    def rhs(self, n: str) -> str:
        """The expression computing node ``n`` ("" for an array constant, which is
        defined at the top of the module)."""
        if n not in self._rhs:
            self._rhs[n] = self._make_rhs(n)
        return self._rhs[n]

    def _make_rhs(self, n: str) -> str:
        d = self.j.nx.nodes[n]
        if d["op"] == "const":
            if d["shape"] == ():
                if "adjoint_of" in d:  # the seed dL/dL: a DTYPE scalar, so dL.reshape works
                    return f"DTYPE({expr_code(self.value(n))})"
                return expr_code(self.value(n))
            self.constants.append(f"{self.namer(n)} = np.array({d['value']!r}, dtype=DTYPE)")
            return ""
        op = registry.get(d["op"])
        args = self.j.args(n)
        if op.numpy is not None:
            # A structural op may call a method on its argument ((1 / N).reshape) or keep
            # its dtype (np.broadcast_to(0.5, ...)): give it a DTYPE scalar, not a float.
            codes = [f"DTYPE({self.rhs(a)})" if not op.elementwise and self.inline(a)
                     and self.j.nx.nodes[a]["op"] == "const" else self.code(a) for a in args]
            return self.use(op, spaced(op.numpy(codes, d["attrs"])))
        if not op.elementwise:
            raise CodegenError(f"node {n!r}: op {op.name!r} has no NumPy form. Give its OpDef "
                               "a numpy= template.")
        syms, e = op.code_expr(d["attrs"])
        names = {}
        for s, a in zip(syms, args):
            if self.inline(a) and self.j.nx.nodes[a]["op"] == "const":
                e = e.xreplace({s: self.value(a)})
            else:
                names[s] = self.code(a)
        free = e.free_symbols  # a walk of the expression: once
        # no argument left (constants only, or x * 0): a NumPy scalar of DTYPE, not a Python number
        code = expr_code(e, names) if free & set(names) else f"DTYPE({expr_code(e)})"
        self.use_functions(e)
        kept = [self.j.nx.nodes[a]["shape"] for s, a in zip(syms, args) if s in free]
        if broadcast_shapes(kept) != tuple(d["shape"]):  # x * 0 for x of shape (3,)
            return f"np.broadcast_to({code}, {fmt_shape(d['shape'])})"
        return code

    def comment(self, n: str, of: str) -> str:
        d = self.j.nx.nodes[n]
        if d.get("phase") != "backward":
            return ""
        nm = self.namer
        # A node that is some node's adjoint is named as that (the seed dL is also the
        # term that add passes on to its arguments, but it is dL/dL).
        if "grad_of" in d and "via" in d and d.get("adjoint_of", d["grad_of"]) == d["grad_of"]:
            via = self.absorbed.get(d["via"], d["via"])
            if via not in self.j.nx:
                return f"d{nm(of)}/d{nm(d['grad_of'])}"
            return f"d{nm(of)}/d{nm(d['grad_of'])} via {nm(via)} = {self.rhs(via)}"
        if "adjoint_of" in d:
            a = d["adjoint_of"]
            k = sum(self.j.nx.nodes[c].get("phase") == "forward"  # uses in the forward pass
                    for c, _ in self.j.consumers(a)) if a != of else 0
            extra = f", summed over its {k} uses" if "grad_of" in d and k > 1 else ""
            return f"d{nm(of)}/d{nm(a)}{extra}" if a != of else f"d{nm(of)}/d{nm(of)} = 1"
        if "vjp_of" in d:
            return f"for the backward of {nm(d['vjp_of'])}"
        return ""

    # -- functions ------------------------------------------------------------------
    def function(self, name: str, targets: list[str], doc: str, of: str | None = None) -> Function:
        """Statements computing ``targets`` from the leaves they depend on."""
        j = self.j
        need = j.ancestors(targets)
        # The zero gradient of a leaf the loss does not use, np.broadcast_to(0.0, (N, 3)),
        # reads no node; the leaf is passed all the same when its shape binds a size name.
        need |= {a for a in (j.nx.nodes[n].get("adjoint_of") for n in need)
                 if a in j.nx and j.role(a) in ("input", "param")
                 and any(isinstance(s, str) for s in j.nx.nodes[a]["shape"])}
        order = [n for n in self.order if n in need]
        leaves = [n for n in order if j.role(n) in ("input", "param")]
        leaves.sort(key=self.index.__getitem__)
        fn = Function(name, [self.namer(n) for n in leaves], doc)
        fn.body += self.as_arrays(leaves)
        stmts, backward_started = [], False
        for n in order:
            if j.role(n) in ("input", "param") or self.inline(n):
                continue
            rhs = self.rhs(n)
            if not rhs:
                continue
            if j.nx.nodes[n].get("phase") == "backward" and not backward_started:
                stmts.append("# backward: gradients in reverse order of the forward pass")
                backward_started = True
            c = self.comment(n, of) if of else ""
            stmts.append(f"{self.namer(n)} = {rhs}" + (f"  # {safe_text(c)}" if c else ""))
        fn.body += self.bind_sizes(name, leaves, stmts) + stmts
        return fn

    def as_arrays(self, leaves: list[str]) -> list[str]:
        """``X = np.asarray(X, dtype=DTYPE)`` for each leaf (float ones cast to DTYPE): what a
        generated function does first with the arrays, lists or numbers it is given."""
        out = []
        for n in leaves:
            cast = ", dtype=DTYPE" if self.j.nx.nodes[n]["dtype"] == "float" else ""
            out.append(f"{self.namer(n)} = np.asarray({self.namer(n)}{cast})")
        return out

    def bind_sizes(self, fname: str, leaves: list[str], stmts: list[str]) -> list[str]:
        """``N = X.shape[0]`` for each size name the statements use, from the first leaf
        that has it."""
        text, out = "\n".join(stmts), []
        for s in self.sizes:
            if re.search(rf"\b{s}\b", text):
                src = next(((n, i) for n in leaves
                            for i, d in enumerate(self.j.nx.nodes[n]["shape"]) if d == s), None)
                if src is None:
                    raise CodegenError(f"size {s!r} is used but no input of {fname}() has it.")
                out.append(f"{s} = {self.namer(src[0])}.shape[{src[1]}]")
        return out


def render_function(fn: Function) -> str:
    lines = [f"def {fn.name}({', '.join(fn.params)}):", f'    """{fn.doc}"""']
    lines += ["    " + b if b else "" for b in fn.body]
    lines.append(f"    return {fn.ret}")
    return "\n".join(lines) + "\n"


def render_module(doc: str, em: Emitter, functions: list[Function], extra: str = "") -> str:
    """The module text: docstring, import, DTYPE and constants, helpers, functions."""
    head = [f'"""{doc}\n"""', "import numpy as np", "\n".join(
        [f"DTYPE = np.{em.dtype}"] + sorted(set(em.constants)))]
    blocks = [em.helpers[k] for k in sorted(em.helpers)] + [render_function(f) for f in functions]
    if extra:
        blocks.append(extra)
    return "\n\n".join(head) + "\n\n\n" + "\n\n\n".join(b.strip("\n") for b in blocks) + "\n"


def _dict_code(items) -> str:
    return "{" + ", ".join(f"{k!r}: {v}" for k, v in items) + "}"


def describe(g: Graph, shapes: bool = False) -> str:
    """One line naming a graph's inputs, parameters and outputs, with their shapes if
    asked (for docstrings; not yet escaped)."""
    def leaf(n):
        d = g.nx.nodes[n]
        return n if not shapes else (f"{n} {fmt_shape(d['shape'])}"
                                     + (" int" if d["dtype"] == "int" else ""))

    def names(role):
        return ", ".join(map(leaf, g.nodes(role))) or "none"
    return (f"{g.nx.graph.get('name', 'network')}: inputs {names('input')}; "
            f"parameters {names('param')}; outputs {', '.join(g.outputs)}")


def prepare(g: Graph, of: str | None = None, wrt=None, optimize=True,
            explain: list | None = None) -> Adjoints:
    """Differentiate ``g`` after simplifying it when ``optimize`` includes ``simplify``
    (rewrites such as log(softmax) -> log_softmax must happen before the gradient is
    built, or the backward would still divide by the probabilities) and merging the
    elementwise chains that have a stable form when ``optimize`` includes ``fuse``
    (:func:`~symbackprop.optimize.fuse.fuse_for_stability`). An op whose code still gives
    NaN or infinity where the mathematics does not gets a warning
    (:func:`~symbackprop.codegen.stability.warn_unstable`)."""
    passes = resolve_passes(optimize)
    sub: list | None = [] if explain is not None else None
    if "simplify" in passes:
        g = run_passes(g, ["simplify"], sub)
    if "fuse" in passes:
        before = dump(g) if explain is not None else None
        g = fuse_for_stability(g)
        if explain is not None:
            sub.append(("fuse for stability", *changes(before, dump(g))))
    if explain is not None:
        explain += [(f"{name} (forward graph)", rm, add) for name, rm, add in sub]
    warn_unstable(g)
    return differentiate(g, of, wrt)


def emit_forward(adj: Adjoints, dtype: str = "float64", optimize=True,
                 explain: list | None = None) -> tuple[str, Emitter, Function]:
    """The module docstring, the emitter and the ``forward`` function of a differentiated
    graph, after the optimization passes ``optimize`` (see
    :func:`symbackprop.optimize.optimize`; ``explain`` collects what each pass changed)."""
    em = Emitter(run_passes(adj.graph, optimize, explain), dtype)
    fwd_out = [o for o in adj.forward.outputs]
    fwd = em.function("forward", fwd_out,
                      f"Forward pass: returns {', '.join(map(safe_text, fwd_out))} in a dict.")
    fwd.ret = _dict_code((o, em.code(o)) for o in fwd_out)
    doc = (f"Forward and backward code for the network {safe_text(describe(adj.forward))}.\n\n"
           f"Generated by symbackprop {_version}: loss {safe_text(adj.of)}, gradients with "
           f"respect to {', '.join(map(safe_text, adj.wrt))}, dtype {dtype}.\n"
           "Needs only NumPy. Do not edit: regenerate instead.")
    return doc, em, fwd


def value_and_grad_doc(adj: Adjoints) -> str:
    """The first line of ``value_and_grad``'s docstring."""
    return (f"Loss {safe_text(adj.of)} and its gradients, keyed by "
            f"{', '.join(map(safe_text, adj.wrt))}.")


def emit_value_and_grad(em: Emitter, adj: Adjoints) -> Function:
    """``value_and_grad`` the plain way: one statement per node, every array new."""
    grads = [(w, adj.adjoint[w]) for w in adj.wrt]
    vg = em.function("value_and_grad", [adj.of] + [a for _, a in grads], value_and_grad_doc(adj),
                     of=adj.of)
    vg.ret = f"{em.code(adj.of)}, " + _dict_code((w, em.code(a)) for w, a in grads)
    return vg


def emit_model(adj: Adjoints, dtype: str = "float64", optimize=True,
               explain: list | None = None) -> tuple[str, Emitter, list[Function]]:
    """The ``forward`` and plain ``value_and_grad`` functions for a differentiated graph,
    after the optimization passes ``optimize`` (see :func:`symbackprop.optimize.optimize`;
    ``explain`` collects what each pass changed). The module that ``sb.numpy_source``
    writes plans ``value_and_grad``'s memory instead (:mod:`symbackprop.codegen.model`)."""
    doc, em, fwd = emit_forward(adj, dtype, optimize, explain)
    return doc, em, [fwd, emit_value_and_grad(em, adj)]


class Compiled:
    """Generated code loaded as a live module.

    ``forward`` and ``value_and_grad`` return a float64 scalar result (a 0-d array or
    NumPy scalar: the loss, the gradient of a scalar parameter) as a plain Python
    ``float``, the same 64-bit number; float32 code keeps its scalars ``np.float32``
    (float32 end to end) and arrays stay NumPy arrays.

    Attributes
    ----------
    source : str
        The module's source (also visible in tracebacks).
    module : module
        The loaded module.
    """

    def __init__(self, source: str, name: str = "symbackprop_generated"):
        self.source = source
        self.module = load_source(source, name)

    def _call(self, fname: str, arrays: dict):
        f = getattr(self.module, fname)
        params = f.__code__.co_varnames[:f.__code__.co_argcount]
        arrays = {getattr(self, "arg_names", {}).get(k, k): v for k, v in arrays.items()}
        missing = [p for p in params if p not in arrays]
        if missing:
            raise GraphError(f"{fname}() needs the arrays {', '.join(map(repr, missing))}; "
                             f"got {', '.join(map(repr, arrays)) or 'none'}. Pass them by name.")
        return f(**{p: arrays[p] for p in params})

    def forward(self, **arrays) -> dict:
        """Run the forward pass; returns a dict of the outputs.

        Examples
        --------
        >>> fn = sb.compile(sb.models.mlp([2, 2]))
        >>> out = fn.forward(X=np.ones((3, 2)), y=np.array([0, 1, 1]), W1=np.zeros((2, 2)),
        ...                  b1=np.zeros(2))
        >>> out["logits"].shape, out["L"]  # ln 2
        ((3, 2), 0.6931471805599453)
        """
        return {k: plain(v) for k, v in self._call("forward", arrays).items()}

    def value_and_grad(self, **arrays):
        """Return ``(loss, {wrt name: gradient})``.

        Examples
        --------
        >>> fn = sb.compile(sb.parse("L = (w*x - y)**2"), wrt=["w"])
        >>> fn.value_and_grad(w=2.0, x=3.0, y=10.0)
        (16.0, {'w': -24.0})
        """
        loss, grads = self._call("value_and_grad", arrays)
        return plain(loss), {k: plain(v) for k, v in grads.items()}


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


def load_source(source: str, name: str = "symbackprop_generated") -> types.ModuleType:
    """Execute generated source as a module, registered in ``linecache`` for tracebacks."""
    filename = f"<symbackprop:{name}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    module = types.ModuleType(name)
    module.__file__ = filename
    exec(compile(source, filename, "exec"), module.__dict__)  # noqa: S102 -- our own source
    return module


def compile_graph(g: Graph, of: str | None = None, wrt=None, dtype: str = "float64",
                  optimize=True, optimizer: str | None = None, **hyper) -> Compiled:
    """Generate the NumPy code for ``g`` and load it (see :func:`numpy_source`).

    With ``optimizer="sgd"|"momentum"|"adam"`` (and ``lr=...``, ``momentum=...``,
    ``beta1=...``, ...), the code is :func:`symbackprop.train_step`'s and the result a
    :class:`~symbackprop.codegen.train.CompiledTrainStep` that also has
    ``init_params``, ``init_state``, ``update`` and ``train_step``.

    Returns
    -------
    Compiled
        With ``forward(**arrays)``, ``value_and_grad(**arrays)`` and ``source``.

    Examples
    --------
    >>> fn = sb.compile(sb.parse("L = (w*x - y)**2"), wrt=["w"])
    >>> loss, grads = fn.value_and_grad(w=2.0, x=3.0, y=10.0)
    >>> float(loss), float(grads["w"])
    (16.0, -24.0)
    """
    if optimizer is not None:
        from .train import compile_train_step  # here: train.py imports this module

        return compile_train_step(g, of, wrt, dtype, optimize, optimizer, **hyper)
    if hyper:
        raise TypeError(f"compile() got {', '.join(sorted(hyper))} without optimizer=; pass "
                        "optimizer='sgd', 'momentum' or 'adam' to compile a training step.")
    from .model import model_source  # here: model.py imports this module

    src, em = model_source(prepare(g, of, wrt, optimize), dtype, optimize)
    fn = Compiled(src, name=_module_name(g))
    # node name -> parameter name, so arrays are passed by node name ("h 1", "class")
    fn.arg_names = {n: em.namer(n) for n in g.nodes("input") + g.nodes("param")}
    return fn


def _module_name(g: Graph) -> str:
    return re.sub(r"\W+", "_", str(g.nx.graph.get("name", "network"))) or "network"

