"""Memory planning: compute a step in preallocated buffers.

The planned function writes every intermediate array into a buffer from a
workspace allocated once per batch shape and reused across calls, and writes
the gradients into arrays the caller owns (views of one flat buffer in the
training step). Elementwise expressions are lowered to ufunc calls with
``out=``; a buffer is reused as soon as the last reader of its value has run
(liveness), and a node may overwrite an argument it is the last reader of
(in place) when the lowered calls read that argument before writing.

The plain ``value_and_grad`` keeps allocating: it returns fresh arrays a
caller may hold on to. The planned function is for the training step, where
nothing escapes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy as sp

from ..ops import registry
from ..ops.elementwise import broadcast_shapes
from .emit import Emitter, Function, safe_text
from .printer import FloatStep, expr_code, float_steps

_UNARY = {sp.exp: "np.exp", sp.log: "np.log", sp.tanh: "np.tanh", sp.sin: "np.sin",
          sp.cos: "np.cos", sp.Abs: "np.abs", sp.sign: "np.sign", sp.cosh: "np.cosh",
          sp.sinh: "np.sinh", sp.tan: "np.tan"}


@dataclass
class Pool:
    """Buffers by (shape, kind); ``kind`` is "f" (DTYPE) or "b" (bool)."""

    buffers: list = field(default_factory=list)  # (shape, kind)
    free: list = field(default_factory=list)  # indices

    def take(self, shape: tuple, kind: str = "f", avoid=()) -> int:
        for i in self.free:
            if self.buffers[i] == (shape, kind) and i not in avoid:
                self.free.remove(i)
                return i
        self.buffers.append((shape, kind))
        return len(self.buffers) - 1

    def give(self, i: int) -> None:
        if i not in self.free:
            self.free.append(i)


class Lowering:
    """Turn one elementwise SymPy expression into ufunc calls writing to ``out``.

    ``steps`` lists ``(code, codes read, code written)``. The first computed
    operand of every operation is computed straight into that operation's
    destination, so a chain ``a*b + c`` runs in place: two calls, no temporary.
    """

    def __init__(self, leaves: dict, shapes: dict, temp):
        self.leaves, self.shapes, self.temp = leaves, shapes, temp
        self.steps: list[tuple[str, set, str]] = []

    def shape(self, e) -> tuple:
        return broadcast_shapes([self.shapes[s] for s in e.free_symbols if s in self.shapes])

    def call(self, fn: str, args: list[str], dest: str) -> str:
        self.steps.append((f"{fn}({', '.join(args)}, out={dest})", set(args), dest))
        return dest

    def value(self, e, dest=None, dest_shape=None) -> str:
        """Code holding the value of ``e``: a leaf, a number, or ``dest`` (or a
        temporary when ``dest`` is None or of another shape) after computing it."""
        if e in self.leaves:
            return self.leaves[e]
        if not e.free_symbols & set(self.leaves):  # a number, or sizes such as 1/N
            code = expr_code(e)
            return code if code.replace(".", "").isalnum() else f"({code})"
        kind = "b" if isinstance(e, sp.Heaviside) else "f"
        if dest is None or dest_shape != self.shape(e) or kind == "b":
            dest, dest_shape = self.temp(self.shape(e), kind), self.shape(e)
        return self.compute(e, dest, dest_shape)

    def compute(self, e, d, ds) -> str:
        if isinstance(e, sp.Heaviside):  # only as a factor next to an array (see float_steps)
            return self.call("np.greater", [self.value(e.args[0]), "0"], d)
        if isinstance(e, FloatStep):  # a step summed, negated or alone: as floats
            return self.call("np.heaviside", [self.value(e.args[0], d, ds),
                                              self.value(e.args[1])], d)
        if isinstance(e, sp.Add):
            terms = [(1, t) if not _negated(t) else (-1, -t) for t in e.args]
            return self.chain(terms, d, ds, "np.add", "np.subtract", "np.negative")
        if isinstance(e, sp.Mul) and e.as_coeff_Mul()[0] == -1:
            return self.call("np.negative", [self.value(-e, d, ds)], d)
        if isinstance(e, sp.Mul):
            terms = [(1, f) if not _reciprocal(f) else (-1, 1 / f) for f in e.args]
            return self.chain(terms, d, ds, "np.multiply", "np.divide", None)
        if isinstance(e, sp.Pow):
            b, p = e.args
            if p == 2:
                return self.call("np.square", [self.value(b, d, ds)], d)
            if p == sp.Rational(1, 2):
                return self.call("np.sqrt", [self.value(b, d, ds)], d)
            if p == -1:
                return self.call("np.divide", ["1", self.value(b, d, ds)], d)
            return self.call("np.power", [self.value(b, d, ds), self.value(p)], d)
        if isinstance(e, (sp.Max, sp.Min)) and len(e.args) == 2:
            a, b = sorted(e.args, key=lambda t: t.is_number)
            fn = "np.maximum" if isinstance(e, sp.Max) else "np.minimum"
            return self.call(fn, [self.value(a, d, ds), self.value(b)], d)
        if e.func in _UNARY:
            return self.call(_UNARY[e.func], [self.value(e.args[0], d, ds)], d)
        raise NotImplementedError(f"cannot lower {e} to ufuncs")

    def chain(self, terms, d, ds, op, inverse, negate) -> str:
        """t0 op t1 op t2 ... with the inverse op for negated (reciprocal) terms."""
        terms = sorted(terms, key=lambda t: t[0] < 0)  # a positive term first, if any
        # The first term computed at full shape is computed straight into d.
        k = next((i for i, (_, t) in enumerate(terms) if t not in self.leaves
                  and t.free_symbols & set(self.leaves) and self.shape(t) == ds
                  and not isinstance(t, sp.Heaviside)), None)
        codes = [None] * len(terms)
        if k is not None:
            codes[k] = (terms[k][0], self.value(terms[k][1], d, ds))
        for i, (sign, t) in enumerate(terms):
            if i != k:
                codes[i] = (sign, self.value(t))
        if k is None:
            first, rest = codes[0], codes[1:]
        elif codes[k][0] > 0:  # d holds a positive term: accumulate the others into it
            first, rest = codes[k], codes[:k] + codes[k + 1:]
        else:  # d holds a negated term: start from a positive one, minus d
            rest = codes[:k] + codes[k + 1:]
            pos = next((i for i, c in enumerate(rest) if c[0] > 0), None)
            if pos is not None:
                acc = self.call(inverse, [rest[pos][1], d], d)
                return self.fold(acc, rest[:pos] + rest[pos + 1:], d, op, inverse)
            first = codes[k]
        sign, acc = first
        if sign < 0:  # every term is negated, or a reciprocal
            acc = self.call(negate, [acc], d) if negate else self.call(inverse, ["1", acc], d)
        return self.fold(acc, rest, d, op, inverse)

    def fold(self, acc, rest, d, op, inverse) -> str:
        for sign, c in rest:
            acc = self.call(op if sign > 0 else inverse, [acc, c], d)
        return acc


def _negated(t) -> bool:
    c, _ = t.as_coeff_Mul()
    return c.is_Number and c < 0


def _reciprocal(f) -> bool:
    return isinstance(f, sp.Pow) and f.args[1].is_Number and f.args[1] < 0


def lower(expr, leaves: dict, shapes: dict, out: str, out_shape: tuple,
          temp) -> list[tuple[str, set, str]]:
    """Ufunc calls computing ``expr`` into ``out``; ``temp(shape, kind)`` names a scratch
    buffer. ``leaves`` maps symbols to code, ``shapes`` symbols to shapes."""
    low = Lowering(leaves, shapes, temp)
    code = low.value(float_steps(expr), out, out_shape)
    if code != out:  # a leaf, a number, or a value of another shape: copy it in
        low.steps.append((f"np.copyto({out}, {code})", {code}, out))
    return low.steps


def alias_safe(steps, out: str, alias: str) -> bool:
    """When ``out`` shares its buffer with ``alias``, no step reads ``alias`` after a
    step has written ``out``."""
    written = False
    for _, reads, dest in steps:
        if written and alias in reads:
            return False
        written |= dest == out
    return True


def _out_op(op) -> bool:
    return op.elementwise and op.numpy is None or op.numpy_out is not None


def plan_function(em: Emitter, name: str, targets: list[str], into: list[str], doc: str,
                  of: str | None = None) -> tuple[Function, Pool]:
    """Statements computing ``targets`` with every array in a planned buffer.

    The nodes in ``into`` (the gradients) are written into arrays the caller
    passes, as parameters named after those nodes (``dW1``). Returns the
    function and the pool of workspace buffers it uses (see :func:`workspace_source`).
    """
    into = {n: em.namer(n) for n in into}
    j = em.j
    need = j.ancestors(targets)
    order = [n for n in j.topo_order() if n in need]
    leaves = sorted((n for n in order if j.role(n) in ("input", "param")), key=list(j.nx).index)
    steps = [n for n in order if j.role(n) not in ("input", "param") and not em.inline(n)]

    def reads(n):  # the computed nodes whose values n reads (through inlined views)
        out = []
        for a in j.args(n):
            out += reads(a) if em.inline(a) and j.nx.nodes[a]["op"] != "const" else [a]
        return out

    last = {}
    for i, n in enumerate(steps):
        for a in reads(n):
            last[a] = i
    for t in targets:
        last[t] = len(steps)
    # A structural op computed the plain way may return a view of its argument (h.T used
    # twice, x.reshape(...), np.broadcast_to): the argument's buffer lives as long as it.
    for n in reversed(steps):
        op = registry.get(j.nx.nodes[n]["op"]) if j.role(n) == "op" else None
        if op is not None and not op.elementwise and op.numpy_out is None and n in last:
            for a in reads(n):
                last[a] = max(last.get(a, -1), last[n])
    pool, owner, body, binds = Pool(), {}, [], {}  # owner: node -> buffer index
    fn = Function(name, [em.namer(n) for n in leaves] + list(into.values()), doc)
    together = _with_grad(em, steps)  # value node -> its gradient, computed in one call
    seeds = {j.args(c)[-1] for c in together.values()}  # constants they take as numbers
    unread = {g for g in seeds if {c for c, _ in j.consumers(g)} <= set(together.values())}

    def buffer_for(n):  # a fresh buffer for n's value, named after it
        owner[n] = pool.take(j.nx.nodes[n]["shape"], "f", avoid=set(owner.values()))
        binds.setdefault(owner[n], []).append(em.namer(n))

    for i, n in enumerate(steps):
        d = j.nx.nodes[n]
        op = registry.get(d["op"]) if d["op"] != "const" else None
        comment = em.comment(n, of) if of else ""
        planned = (op is not None and _out_op(op) and d["shape"] != () and d["dtype"] == "float"
                   and _lowerable(em, n, op))
        if n in together.values() or n in unread:
            pass  # computed with its value, above
        elif n in together:
            c = together[n]
            if c not in into:
                buffer_for(c)
            args = j.args(c)
            call = em.use(op, op.numpy_with_grad([em.code(a) for a in args[:-1]], d["attrs"],
                                                 em.rhs(args[-1]), em.code(c)))  # g: a constant
            body.append(f"{em.namer(n)} = {call}  # and {em.namer(c)}, its gradient")
        elif not planned:
            rhs = em.rhs(n)
            target = f"{into[n]}[...]" if n in into else em.namer(n)
            if rhs:
                body.append(f"{target} = {rhs}" + (f"  # {safe_text(comment)}" if comment else ""))
        else:
            temps: list[int] = []

            def temp(shape, kind, temps=temps):
                k = pool.take(shape, kind, avoid=set(owner.values()) | set(temps))
                temps.append(k)
                return f"_ws[{k}]"

            out = em.code(n)
            if n not in into:
                # Overwrite an argument in place when this is its last read and the
                # calls read it before they write (checked on a trial lowering).
                trial = _lines(em, n, op, out, lambda shape, kind: "_scratch")
                # Only an argument read directly: one read through a view (h.T) is another
                # layout of the same memory, which the calls would overwrite under it.
                chosen = next((a for a in dict.fromkeys(j.args(n))
                               if a in owner and last.get(a) == i
                               and j.nx.nodes[a]["shape"] == d["shape"]
                               and alias_safe(trial, out, em.code(a))), None)
                if chosen is not None:
                    owner[n] = owner.pop(chosen)
                    binds.setdefault(owner[n], []).append(em.namer(n))
                else:
                    buffer_for(n)
            lines = _lines(em, n, op, out, temp)
            if comment:
                lines[-1] = (lines[-1][0] + f"  # {safe_text(comment)}",) + lines[-1][1:]
            body += [ln for ln, _, _ in lines]
            for k in temps:
                pool.give(k)
        for a in set(reads(n)):  # values read for the last time free their buffers
            if last.get(a) == i and a in owner:
                pool.give(owner.pop(a))
    ws_sizes = sorted({x for shape, _ in pool.buffers for x in shape if isinstance(x, str)})
    ws_call = f"_ws = _workspace({', '.join(ws_sizes)})"
    fn.body = em.bind_sizes(name, leaves, [*body, ws_call]) + [ws_call]
    for k in sorted(binds):
        fn.body.append(" = ".join(binds[k]) + f" = _ws[{k}]")
    fn.body += body
    return fn, pool


def _lowerable(em: Emitter, n: str, op) -> bool:
    """Whether node ``n`` can be written with out= calls (an elementwise expression with a
    function the lowering does not know, such as atan, is computed the plain way)."""
    try:
        _lines(em, n, op, "_out", lambda shape, kind: "_scratch")
    except NotImplementedError:
        return False
    return True


def _with_grad(em: Emitter, steps: list[str]) -> dict:
    """Nodes whose op computes its value and gradient in one call (``numpy_with_grad``),
    paired with the gradient node its VJP made, when that gradient reads the same
    arguments and an incoming adjoint known by then (the loss's seed)."""
    j, out = em.j, {}
    for n in steps:
        d = j.nx.nodes[n]
        if d["op"] in registry.LEAVES or registry.get(d["op"]).numpy_with_grad is None:
            continue
        for c in steps:
            args = j.args(c)
            g = j.nx.nodes[args[-1]] if args else {}
            if j.nx.nodes[c].get("vjp_of") == n and args[:-1] == j.args(n) \
                    and g.get("op") == "const" and g["shape"] == ():
                out[n] = c
    return out


def _lines(em: Emitter, n: str, op, out: str, temp) -> list[tuple[str, set, str]]:
    j = em.j
    d = j.nx.nodes[n]
    args = j.args(n)
    if op.numpy_out is not None:
        code = em.use(op, op.numpy_out([em.code(a) for a in args], d["attrs"], out,
                                       [j.nx.nodes[a]["shape"] for a in args]))
        return [(code, {em.code(a) for a in args}, out)]
    syms, e = op.code_expr(d["attrs"])
    leaves, shapes = {}, {}
    for s, a in zip(syms, args):
        if em.inline(a) and j.nx.nodes[a]["op"] == "const":
            e = e.xreplace({s: em.value(a)})
        else:
            leaves[s], shapes[s] = em.code(a), j.nx.nodes[a]["shape"]
    return lower(e, leaves, shapes, out, d["shape"], temp)


def workspace_source(em: Emitter, pool: Pool) -> str:
    """The ``_workspace(N, ...)`` function allocating the pool's buffers once per size."""
    sizes = sorted({d for shape, _ in pool.buffers for d in shape if isinstance(d, str)})
    key = ", ".join(sizes)
    rows = []
    for i, (shape, kind) in enumerate(pool.buffers):
        dims = ", ".join(str(x) for x in shape) + ("," if len(shape) == 1 else "")
        dt = "DTYPE" if kind == "f" else "bool"
        rows.append(f"            np.empty(({dims}), {dt}),  # _ws[{i}]")
    return "\n".join([
        "_WORKSPACES = {}",
        "",
        "",
        f"def _workspace({key}):",
        '    """The arrays of one step for these sizes: allocated on first use, then reused."""',
        f"    ws = _WORKSPACES.get(({key}{',' if len(sizes) == 1 else ''}))",
        "    if ws is None:",
        f"        ws = _WORKSPACES[({key}{',' if len(sizes) == 1 else ''})] = [",
        *rows,
        "        ]",
        "    return ws",
    ]) + "\n"
