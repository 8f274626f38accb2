"""Emit standalone NumPy source from a graph.

One statement per node, variables named after nodes (escaped by one
:class:`Namer`), a comment on every backward line naming the gradient it
computes. The module imports only NumPy; helper functions (``_softmax``, ...)
are copied in only when used. Output is deterministic: the same graph gives
the same bytes.
"""

from __future__ import annotations

import builtins
import keyword
import re
from dataclasses import dataclass, field

import sympy as sp

from .. import __version__ as _version
from .. import sizes
from ..autodiff import Adjoints, differentiate
from ..errors import CodegenError
from ..graph import Graph, dim_symbol, fmt_shape
from ..ops.elementwise import broadcast_shapes
from ..optimize import changes, dump
from ..optimize import optimize as run_passes
from ..optimize import resolve as resolve_passes
from ..optimize.fuse import fuse_for_stability
from . import backends
from .checkpoint import apply_checkpoint
from .lowering import CONTEXT
from .printer import spaced
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
    decorators: list = field(default_factory=list)  # lines before the def (@jax.jit)


class Emitter:
    """Emit the functions of one module from the joint graph ``j``.

    The emitter reads ``j`` and never changes it: it works out the order of the nodes
    once and the code of each node at its first use, so ``j`` must not change while
    the emitter is in use.
    """

    def __init__(self, j: Graph, dtype: str = "float64", backend="numpy"):
        if dtype not in DTYPES:
            raise CodegenError(f"dtype {dtype!r} is not supported; use one of {DTYPES}.")
        self.j, self.dtype = j, dtype
        self.backend = backends.get(backend)  # the array library the code is written for
        lowering = self.backend.lowering
        # the size names (N, H), also those only inside expression sizes ((H - 1)//2 + 1)
        self.sizes = sorted({x for n in j.nx for x in sizes.names(j.nx.nodes[n]["shape"])})
        self.helpers: dict[str, str] = {}
        self.constants: list[str] = []
        # nodes the memory planner leaves as plain statements (mixed precision's float32
        # batch norm: new float32 arrays each step, not half-precision buffers)
        self.unplanned: set[str] = set()
        # the call-time arguments the ops' code reads (batch norm, dropout): names taken
        self.context = [c for c in CONTEXT if any(
            c in lowering(j.opdef(n)).context for n in j.nx if not j.is_leaf(n))]
        self.namer = Namer(reserved=self.sizes + self.context + list(self.backend.reserved))
        # node fused away -> the node whose statement now computes it
        self.absorbed = {a: n for n in j.nx for a in j.fused(n)}
        self.order = j.topo_order()
        self.index = {n: i for i, n in enumerate(j.nx)}  # insertion order: leaves come in it
        for n in self.order:  # fixed names, shared by every function
            self.namer(n)
        # Each node's code is asked for by every reader and by the comments of the
        # gradients it passes on: work it out once.
        self._inline: dict[str, bool] = {}
        self._rhs: dict[str, str] = {}

    def use(self, op, code: str) -> str:
        """``code``, after adding the helpers of ``op``'s lowering it calls (and those they
        call)."""
        helpers = self.backend.lowering(op).helpers
        todo = [code]
        while todo:
            text = todo.pop()
            for name, src in helpers.items():
                if name not in self.helpers and re.search(rf"\b{name}\(", text):
                    self.helpers[name] = src
                    todo.append(src)
        return code

    def use_functions(self, e: sp.Expr) -> None:
        """Add the helpers that the functions of ``e`` print as: erf and the like (no ufunc:
        the helper maps math's) and the stable forms of ops/stable.py (``_sigmoid``)."""
        for name, src in self.backend.function_helpers(e).items():
            self.helpers.setdefault(name, src)

    # -- codes ------------------------------------------------------------------
    def inline(self, n: str) -> bool:
        """Written inside its consumer: scalar constants, and views used once."""
        if n not in self._inline:
            self._inline[n] = self._is_inline(n)
        return self._inline[n]

    def _is_inline(self, n: str) -> bool:
        j = self.j
        if j.role(n) == "const":
            return j.nx.nodes[n]["shape"] == () and j.adjoint_of(n) is None
        return (not j.is_leaf(n) and self.backend.lowering(j.opdef(n)).inline
                and len(j.consumers(n)) == 1 and n not in j.outputs)

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
        j, d = self.j, self.j.nx.nodes[n]
        if j.role(n) == "const":
            if d["shape"] == ():
                if j.adjoint_of(n) is not None:  # the seed dL/dL: a DTYPE scalar, so dL.reshape works
                    return self.backend.scalar(self.backend.expr_code(self.value(n)))
                return self.backend.expr_code(self.value(n))
            self.constants.append(self.backend.constant(self.namer(n), d["value"]))
            return ""
        op = j.opdef(n)
        args = j.args(n)
        how = self.backend.lowering(op)
        if how.expr is not None:
            # A structural op may call a method on its argument ((1 / N).reshape) or keep
            # its dtype (np.broadcast_to(0.5, ...)): give it a DTYPE scalar, not a float.
            codes = [self.backend.scalar(self.rhs(a)) if not op.elementwise and self.inline(a)
                     and j.role(a) == "const" else self.code(a) for a in args]
            attrs = {**d["attrs"], "node": n} if how.context else d["attrs"]
            return self.use(op, spaced(how.expr(codes, attrs)))
        syms, e = op.code_expr(d["attrs"])
        names = {}
        for s, a in zip(syms, args):
            if self.inline(a) and j.role(a) == "const":
                e = e.xreplace({s: self.value(a)})
            else:
                names[s] = self.code(a)
        free = e.free_symbols  # a walk of the expression: once
        # no argument left (constants only, or x * 0): a NumPy scalar of DTYPE, not a Python number
        code = (self.backend.node_code(e, names, d["dtype"] == "float") if free & set(names)
                else self.backend.scalar(self.backend.expr_code(e)))
        self.use_functions(e)
        kept = [j.nx.nodes[a]["shape"] for s, a in zip(syms, args) if s in free]
        if broadcast_shapes(kept) != tuple(d["shape"]):  # x * 0 for x of shape (3,)
            return self.backend.broadcast(code, fmt_shape(d["shape"]))
        return code

    def comment(self, n: str, of: str) -> str:
        """The comment of a backward statement: which gradient it computes."""
        j, nm = self.j, self.namer
        if not j.is_backward(n):
            return ""
        if j.recompute_of(n) is not None:
            return f"{nm(j.recompute_of(n))} again (checkpointing)"
        grad_of, via, adjoint_of = j.grad_of(n), j.via(n), j.adjoint_of(n)
        # A node that is some node's adjoint is named as that (the seed dL is also the
        # term that add passes on to its arguments, but it is dL/dL).
        if grad_of is not None and via is not None and adjoint_of in (None, grad_of):
            via = self.absorbed.get(via, via)
            if via not in j.nx:
                return f"d{nm(of)}/d{nm(grad_of)}"
            return f"d{nm(of)}/d{nm(grad_of)} via {nm(via)} = {self.rhs(via)}"
        if adjoint_of is not None:
            a = adjoint_of
            k = sum(j.phase(c) == "forward"  # uses in the forward pass
                    for c, _ in j.consumers(a)) if a != of else 0
            extra = f", summed over its {k} uses" if grad_of is not None and k > 1 else ""
            return f"d{nm(of)}/d{nm(a)}{extra}" if a != of else f"d{nm(of)}/d{nm(of)} = 1"
        if j.vjp_of(n) is not None:
            return f"for the backward of {nm(j.vjp_of(n))}"
        return ""

    # -- functions ------------------------------------------------------------------
    def function(self, name: str, targets: list[str], doc: str, of: str | None = None) -> Function:
        """Statements computing ``targets`` from the leaves they depend on."""
        j = self.j
        need = j.ancestors(targets)
        # The zero gradient of a leaf the loss does not use, np.broadcast_to(0.0, (N, 3)),
        # reads no node; the leaf is passed all the same when its shape binds a size name.
        need |= {a for a in map(j.adjoint_of, need)
                 if a in j.nx and j.role(a) in ("input", "param")
                 and any(isinstance(s, str) for s in j.nx.nodes[a]["shape"])}
        order = [n for n in self.order if n in need]
        leaves = [n for n in order if j.role(n) in ("input", "param")]
        leaves.sort(key=self.index.__getitem__)
        fn = Function(name, [self.namer(n) for n in leaves], doc)
        fn.body += self.as_arrays(leaves)
        add_context(self, fn, order)
        stmts, backward_started = [], False
        for n in order:
            if j.role(n) in ("input", "param") or self.inline(n):
                continue
            rhs = self.rhs(n)
            if not rhs:
                continue
            if j.is_backward(n) and not backward_started:
                stmts.append("# backward: gradients in reverse order of the forward pass")
                backward_started = True
            stmts += self.recompute_note(n, order)
            c = self.comment(n, of) if of else ""
            stmts.append(f"{self.namer(n)} = {rhs}" + (f"  # {safe_text(c)}" if c else ""))
        # array constants, made at import: where the backend moves them to the function's
        # device (torch), a line for each one the statements read
        consts = [self.namer(n) for n in order
                  if j.role(n) == "const" and not self.inline(n) and not self.rhs(n)]
        lines, helpers = self.backend.constant_lines(consts)
        for key, src in helpers.items():
            self.helpers.setdefault(key, src)
        fn.body += lines + self.bind_sizes(name, leaves, stmts) + stmts
        return fn

    def recompute_note(self, n: str, steps: list[str]) -> list[str]:
        """Before the first copy of a segment that checkpointing recomputes, one comment
        line naming what it computes again and from which kept values; else nothing."""
        j = self.j
        if j.recompute_of(n) is None:
            return []
        steps = [m for m in steps if not j.is_leaf(m) and not self.inline(m)]
        i = steps.index(n)
        if i and j.recompute_of(steps[i - 1]) is not None:
            return []
        block = []
        for m in steps[i:]:
            if j.recompute_of(m) is None:
                break
            block.append(m)
        inside = set(block)
        kept = dict.fromkeys(a for m in block for a in j.args(m)
                             if a not in inside and not j.is_leaf(a))
        names = ", ".join(self.namer(j.recompute_of(m)) for m in block if not self.inline(m))
        src = ", ".join(map(self.namer, kept)) or "the inputs"
        return [(f"# checkpointing: recompute {safe_text(names)} from {safe_text(src)} "
                 "(not kept from the forward pass)")]

    def as_arrays(self, leaves: list[str]) -> list[str]:
        """``X = np.asarray(X, dtype=DTYPE)`` for each leaf (float ones cast to DTYPE): what a
        generated function does first with the arrays, lists or numbers it is given."""
        out, helpers = self.backend.prologue([self.namer(n) for n in leaves])
        for name, src in helpers.items():  # array_api: the namespace of the arrays
            self.helpers.setdefault(name, src)
        for n in leaves:
            out.append(self.backend.asarray(self.namer(n), self.j.nx.nodes[n]["dtype"] == "float"))
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


def context_args(em: Emitter, nodes) -> tuple[list[str], list[str]]:
    """The keyword parameters of a function computing ``nodes`` that their code reads
    (``training=True``, ``running=None``, ``rng=0``: :data:`~.lowering.CONTEXT`), and the
    function's first lines: one that computes gradients runs in training mode
    (``training = True``: its gradients are those of the batch statistics and the mask
    drawn), and a seed becomes a generator once, so that every mask draws from it."""
    j = em.j
    if not em.context:
        return [], []
    used = {c for n in nodes if not j.is_leaf(n)
            for c in em.backend.lowering(j.opdef(n)).context}
    grads = any(j.is_backward(n) for n in nodes)
    params = [f"{c}={CONTEXT[c]}" for c in CONTEXT if c in used
              and not (grads and c == "training")]
    lines = (["training = True  # the gradients are those of the training-mode computation"]
             if grads and "training" in used else [])
    more, helpers = em.backend.context_lines(used)  # NumPy: the generator, made once
    for name, src in helpers.items():
        em.helpers.setdefault(name, src)
    return params, lines + more


def with_note(comment: str | None, note: str) -> str:
    """A statement's comment (``"  # ..."``, or None) with ``note`` added: what a rewrite
    of the statement changed."""
    return f"{comment}; {note}" if comment else f"  # {note}"


def flagged_nodes(j: Graph, flag: str) -> tuple[set, set]:
    """``(ops, vjp)``: the nodes of the joint graph ``j`` whose :class:`OpDef
    <symbackprop.ops.registry.OpDef>` sets ``flag`` (``mixed_float32``,
    ``batch_statistics``), and the backward nodes of their VJPs: the statistics recomputed
    for the backward, its sums, the gradient they pass on.

    Examples
    --------
    >>> g = sb.Graph(); x = g.input("x", shape=("N", 3))
    >>> _ = g.output("L", sb.sum(sb.batch_norm(x, axis=1)))
    >>> ops, vjp = flagged_nodes(sb.differentiate(g, wrt=["x"]).graph, "batch_statistics")
    >>> len(ops), len(vjp) > 0
    (1, True)
    """
    ops = {n for n in j.nx if not j.is_leaf(n) and j.opdef(n) is not None
           and getattr(j.opdef(n), flag)}
    vjp = {n for n in j.nx if j.is_backward(n) and n not in ops
           and (j.vjp_of(n) in ops or (j.via(n) in ops and j.grad_of(n) is not None))}
    return ops, vjp


def statistics_read_outside(j: Graph, ops: set, vjp: set) -> set:
    """The nodes of ``vjp`` (:func:`flagged_nodes`) other than the gradient passed on (a
    node with ``grad_of``) that a node outside ``ops | vjp`` reads: the statistics of the
    backward (a variance, a sum of the incoming gradient), read where the gradient the op
    passes on is fused into the statement of the op before it (``relu`` before the norm:
    ``dz1 = (mean_2 + 1e-05)**(-0.5) * (N * dbn1 - sum_2 - bn1 * sum_3) * (a1 > 0) / N``).

    Examples
    --------
    >>> g = sb.Graph(); x = g.input("x", shape=("N", 3)); w = g.param("w", shape=(3,))
    >>> _ = g.output("L", sb.sum(sb.batch_norm(sb.relu(x), axis=1) * w))
    >>> em = Emitter(sb.optimize.optimize(sb.differentiate(g, wrt=["x"]).graph))
    >>> sorted(map(em.namer, statistics_read_outside(
    ...     em.j, *flagged_nodes(em.j, "batch_statistics"))))
    ['mean_2', 'sum_3', 'sum_4']
    """
    group = ops | vjp
    return {n for n in vjp if j.grad_of(n) is None
            and any(c not in group for c, _ in j.consumers(n))}


def statistic_readers(em: Emitter, ops: set, vjp: set) -> set:
    """The nodes outside ``ops | vjp`` whose statements read a
    :func:`statistics_read_outside` node (through the nodes written inside their consumer,
    :meth:`Emitter.inline`): the statements that hold the VJP's last steps fused with
    the op before it. Mixed precision computes them in float32 and the MPI step takes them
    over every rank's rows (:mod:`~symbackprop.codegen.mixed`,
    :mod:`~symbackprop.codegen.sync`), each a plain statement in the planned step
    (``Emitter.unplanned``), as the ``out=`` calls are not rewritten.

    Examples
    --------
    >>> g = sb.Graph(); x = g.input("x", shape=("N", 3)); w = g.param("w", shape=(3,))
    >>> _ = g.output("L", sb.sum(sb.batch_norm(sb.relu(x), axis=1) * w))
    >>> em = Emitter(sb.optimize.optimize(sb.differentiate(g, wrt=["x"]).graph))
    >>> [em.namer(n) for n in statistic_readers(em, *flagged_nodes(em.j, "batch_statistics"))]
    ['dx']
    """
    j, group = em.j, ops | vjp
    todo = [c for n in statistics_read_outside(j, ops, vjp) for c, _ in j.consumers(n)
            if c not in group]
    readers = set()
    while todo:
        c = todo.pop()
        if em.inline(c):  # written inside its consumer: that statement reads it
            todo += [d for d, _ in j.consumers(c) if d not in group]
        else:
            readers.add(c)
    return readers


def add_context(em: Emitter, fn: Function, nodes) -> list[str]:
    """Add :func:`context_args` to ``fn`` (its parameters last, its lines first); returns
    the names of the parameters added."""
    params, lines = context_args(em, nodes)
    fn.params += params
    fn.body[:0] = lines
    return [p.split("=")[0] for p in params]


def returns_running(em: Emitter, fn: Function) -> bool:
    """Whether ``fn`` returns the new running statistics after its results: a functional
    backend's function that takes ``running`` (its batch norms cannot update the arrays
    passed, so they put new ones into the function's copy of the dict, returned)."""
    return em.backend.functional and f"running={CONTEXT['running']}" in fn.params


def call_lines(lhs: str, fname: str, args: list[str], indent: int = 4) -> list[str]:
    """``lhs + fname(args)`` as one line, or one argument a line when that passes 96
    columns at ``indent``.

    Examples
    --------
    >>> call_lines("loss = ", "f", ["a", "b"])
    ['loss = f(a, b)']
    """
    line = f"{lhs}{fname}({', '.join(args)})"
    if indent + len(line) <= 96:
        return [line]
    return [f"{lhs}{fname}("] + [f"    {a}," for a in args] + [")"]


def render_function(fn: Function) -> str:
    lines = [*fn.decorators, f"def {fn.name}({', '.join(fn.params)}):", f'    """{fn.doc}"""']
    lines += ["    " + b if b else "" for b in fn.body]
    lines.append(f"    return {fn.ret}")
    return "\n".join(lines) + "\n"


def render_module(doc: str, em: Emitter, functions: list[Function], extra: str = "", *,
                  imports=(), constants=(), blocks=(), library: str | None = None) -> str:
    """The module text: docstring, imports (standard library ``imports``, then the
    backend's array library: NumPy), DTYPE and constants (the emitter's, sorted, then
    ``constants`` in order), helpers, functions, then ``blocks`` and ``extra`` (source
    text); ``library`` replaces the backend's import lines (a script importing more)."""
    head = [f'"""{doc}\n"""']
    if any("functools." in d for f in functions for d in f.decorators):
        imports = {*imports, "functools"}  # JAX's jit with static or donated arguments
    if imports:
        head.append("\n".join(f"import {i}" for i in sorted(set(imports))))
    library = em.backend.imports() if library is None else library
    head += ([library] if library else []) + ["\n".join(
        em.backend.dtype_lines(em.dtype) + sorted(set(em.constants)) + list(constants))]
    body = ([em.helpers[k] for k in sorted(em.helpers)] + [render_function(f) for f in functions]
            + list(blocks) + ([extra] if extra else []))
    return em.backend.finish(
        "\n\n".join(head) + "\n\n\n" + "\n\n\n".join(b.strip("\n") for b in body) + "\n")


def dict_code(items) -> str:
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
                 explain: list | None = None, checkpoint="none",
                 backend="numpy") -> tuple[str, Emitter, Function]:
    """The module docstring, the emitter and the ``forward`` function of a differentiated
    graph, after the optimization passes ``optimize`` (see
    :func:`symbackprop.optimize.optimize`; ``explain`` collects what each pass changed)
    and gradient checkpointing (:func:`~symbackprop.codegen.checkpoint.apply_checkpoint`),
    written for ``backend`` (:mod:`~symbackprop.codegen.backends`)."""
    j = run_passes(adj.graph, optimize, explain)
    em = Emitter(apply_checkpoint(j, checkpoint)[0], dtype, backend)
    fwd_out = [o for o in adj.forward.outputs]
    fwd = em.function("forward", fwd_out,
                      f"Forward pass: returns {', '.join(map(safe_text, fwd_out))} in a dict.")
    fwd.ret = dict_code((o, em.code(o)) for o in fwd_out)
    if returns_running(em, fwd):
        fwd.ret += ", running"
        fwd.doc = fwd.doc[:-1] + ", then the running statistics."
    fwd.decorators = em.backend.decorators("forward", fwd.params)
    doc = (f"Forward and backward code for the network {safe_text(describe(adj.forward))}.\n\n"
           f"Generated by symbackprop {_version}: loss {safe_text(adj.of)}, gradients with "
           f"respect to {', '.join(map(safe_text, adj.wrt))}, dtype {dtype}.\n"
           f"Needs only {em.backend.title}. Do not edit: regenerate instead.")
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
    vg.ret = f"{em.code(adj.of)}, " + dict_code((w, em.code(a)) for w, a in grads)
    if returns_running(em, vg):
        vg.ret += ", running"
        vg.doc += " Then the new running statistics."
    vg.decorators = em.backend.decorators("value_and_grad", vg.params)
    return vg


def running_function(em: Emitter) -> list[Function]:
    """``init_running()`` when the graph has batch norms (else nothing): their running
    statistics, mean 0 and variance 1 per feature as PyTorch starts them, keyed
    ``'<node>.mean'`` and ``'<node>.var'``."""
    j = em.j
    nodes = [n for n in em.order if not j.is_leaf(n)
             and "running" in em.backend.lowering(j.opdef(n)).context]
    if not nodes:
        return []
    items = []
    for n in nodes:
        d = j.nx.nodes[n]
        size = d["shape"][d["attrs"]["axis"]]
        if not isinstance(size, int):
            raise CodegenError(f"node {n!r}: batch norm over axis {d['attrs']['axis']} of size "
                               f"{size!r}; running statistics need a fixed number of features.")
        mean, var = em.backend.running_init(size)
        items += [(f"{n}.mean", mean), (f"{n}.var", var)]
    doc = ("The running statistics of the batch norms, keyed '<node>.mean' and '<node>.var': "
           "mean 0,\n    variance 1 (PyTorch's start). Pass them as running=: training updates "
           "them in place\n    (momentum 0.1, the variance unbiased), evaluation (training=False) "
           "uses them.")
    if em.backend.functional:  # nothing changes in place: the functions return new ones
        doc = doc.replace("training updates them in place\n    (momentum 0.1",
                          "training returns new ones\n    (momentum 0.1")
    fn = Function("init_running", em.backend.running_params(), doc)
    fn.ret = dict_code(items)
    return [fn]


def emit_model(adj: Adjoints, dtype: str = "float64", optimize=True,
               explain: list | None = None, checkpoint="none",
               backend="numpy") -> tuple[str, Emitter, list[Function]]:
    """The ``forward`` and plain ``value_and_grad`` functions for a differentiated graph,
    after the optimization passes ``optimize`` (see :func:`symbackprop.optimize.optimize`;
    ``explain`` collects what each pass changed). The module that ``sb.numpy_source``
    writes plans ``value_and_grad``'s memory instead (:mod:`symbackprop.codegen.gradient_module`)."""
    doc, em, fwd = emit_forward(adj, dtype, optimize, explain, checkpoint, backend)
    return doc, em, [fwd, emit_value_and_grad(em, adj), *running_function(em)]
