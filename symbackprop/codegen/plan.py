"""Memory planning: compute a step in one preallocated arena.

The planned function writes every intermediate array into a buffer of a
workspace allocated once per batch shape and reused across calls, and writes
the gradients into arrays the caller owns (in the training step, views of the
flat gradient buffer at the start of the same arena). Elementwise expressions
are lowered to ufunc calls with ``out=``; a node may overwrite an argument it
is the last reader of (in place) when the lowered calls read that argument, and
every view of it they read (``h.T``, ``x.reshape(...)``: a view shares its
base's buffer), before writing.

Each buffer is alive from the step that first writes it to the step that last
reads it. Where buffers go is decided when the workspace is made, for its
sizes (:data:`PACK`): two buffers share bytes only if they are never alive at
the same step, and a buffer may lie over a gradient that is written after it
has died, so a forward value the backward pass is done with makes room for
the gradients. The step then needs about the larger of its activations and
its gradients, not their sum.

Two callers: the training step (codegen/train.py), which passes views of its flat
gradient buffer, and ``value_and_grad`` (codegen/gradient_module.py), which passes new arrays
on every call, the caller's to keep: nothing returned lives in the workspace.

:func:`plan_function` works in phases: liveness (:func:`_liveness`), one typed
:class:`Decision` per step (:func:`_decide`; the folds, :func:`_folds`, each with
its reason), buffer assignment (:func:`_assign`), then text (:func:`_text`).
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache

import sympy as sp

from .. import sizes
from ..graph import fmt_shape
from ..ops.elementwise import broadcast_shapes
from .emit import Emitter, Function, safe_text
from .layout import transposable
from .printer import FloatStep, expr_code, float_steps
from .runtime import flat, source_of
from .runtime.workspace import CONSTANT, PACK  # noqa: F401 -- PACK: generated modules carry it

_UNARY = {sp.exp: "np.exp", sp.log: "np.log", sp.tanh: "np.tanh", sp.sin: "np.sin",
          sp.cos: "np.cos", sp.Abs: "np.abs", sp.sign: "np.sign", sp.cosh: "np.cosh",
          sp.sinh: "np.sinh", sp.tan: "np.tan"}


@dataclass
class Buffer:
    """One buffer of a planned function's workspace: alive from step ``first`` (which
    writes it) to step ``last`` (the last reading it)."""

    shape: tuple
    kind: str  # "f" (DTYPE) or "b" (bool)
    first: int
    last: int
    # None, or the width of a buffer only ufunc calls and np.matmul write, stored
    # transposed for a batch narrower than it (see runtime/workspace.py)
    width: int | None = None


@dataclass
class Pool:
    """The buffers of a planned function (:class:`Buffer`). A buffer is never handed out
    twice here: buffers share memory when the workspace is packed, by their steps."""

    buffers: list = field(default_factory=list)
    writes: dict = field(default_factory=dict)  # gradient array -> first step writing it
    end: int = 0  # the number of steps
    sizes: list = field(default_factory=list)  # the size names _workspace() takes
    scaled: bool = False  # the planned function takes scale=, which multiplies the gradients
    # (W, b, code of [W; b], code of [dW; db]) of every fold: the caller passes the blocks
    folds: list = field(default_factory=list)
    plan: object = None  # the Plan: decisions, liveness and folds (Plan.explain)

    def take(self, shape: tuple, kind: str = "f", step: int = 0, width=None) -> int:
        """A new buffer, alive at ``step``."""
        self.buffers.append(Buffer(tuple(shape), kind, step, step, width))
        return len(self.buffers) - 1

    def keep(self, i: int, step: int) -> None:
        """Buffer ``i`` is still read at ``step``."""
        self.buffers[i].last = max(self.buffers[i].last, step)


class UfuncLowering:
    """Turn one elementwise SymPy expression into ufunc calls writing to ``out``.

    ``steps`` lists ``(code, codes read, code written)``. The first computed
    operand of every operation is computed straight into that operation's
    destination, so a chain ``a*b + c`` runs in place: two calls, no temporary.
    (Not :class:`symbackprop.codegen.lowering.Lowering`, an op's code per array library.)
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
            return code if code.replace(".", "").isalnum() or _enclosed(code) else f"({code})"
        kind = "b" if _boolean_step(e) else "f"
        if dest is None or dest_shape != self.shape(e) or kind == "b":
            dest, dest_shape = self.temp(self.shape(e), kind), self.shape(e)
        return self.compute(e, dest, dest_shape)

    def compute(self, e, d, ds) -> str:
        if _boolean_step(e):  # only as a factor next to an array (see float_steps)
            fn = "np.greater" if _at_zero(e) == 0 else "np.greater_equal"
            return self.call(fn, [self.value(e.args[0]), "0"], d)
        if isinstance(e, sp.Heaviside):  # a tie shared (max(a, b) at a = b): as floats
            return self.call("np.heaviside", [self.value(e.args[0], d, ds),
                                              self.value(_at_zero(e))], d)
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
            x, y = self.value(a, d, ds), self.value(b)
            if b.is_number:  # against an array of b (see CONSTANT): NumPy's vectorized loop
                y = f"_constant({y}, {d})"
            return self.call(fn, [x, y], d)
        if e.func in _UNARY:
            return self.call(_UNARY[e.func], [self.value(e.args[0], d, ds)], d)
        raise NotImplementedError(f"cannot lower {e} to ufuncs")

    def chain(self, terms, d, ds, op, inverse, negate) -> str:
        """t0 op t1 op t2 ... with the inverse op for negated (reciprocal) terms."""
        terms = sorted(terms, key=lambda t: t[0] < 0)  # a positive term first, if any
        # The first term computed at full shape is computed straight into d.
        k = next((i for i, (_, t) in enumerate(terms) if t not in self.leaves
                  and t.free_symbols & set(self.leaves) and self.shape(t) == ds
                  and not _boolean_step(t)), None)
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
                return self.accumulate(acc, rest[:pos] + rest[pos + 1:], d, op, inverse)
            first = codes[k]
        sign, acc = first
        if sign < 0:  # every term is negated, or a reciprocal
            acc = self.call(negate, [acc], d) if negate else self.call(inverse, ["1", acc], d)
        return self.accumulate(acc, rest, d, op, inverse)

    def accumulate(self, acc, rest, d, op, inverse) -> str:
        for sign, c in rest:
            acc = self.call(op if sign > 0 else inverse, [acc, c], d)
        return acc


def _at_zero(e) -> sp.Expr:
    """The value of the step ``Heaviside(x, a)`` at ``x = 0``: ``a`` (SymPy's default 1/2)."""
    return e.args[1] if len(e.args) > 1 else sp.S.Half


def _boolean_step(e) -> bool:
    """A step written as a comparison, ``x > 0`` or ``x >= 0`` (its value at 0 is 0 or 1),
    as the plain code's printer writes it."""
    return isinstance(e, sp.Heaviside) and _at_zero(e) in (0, 1)


def _negated(t) -> bool:
    c, _ = t.as_coeff_Mul()
    return c.is_Number and c < 0


def _reciprocal(f) -> bool:
    return isinstance(f, sp.Pow) and f.args[1].is_Number and f.args[1] < 0


def _enclosed(code: str) -> bool:
    """Whether ``code`` is one parenthesised group, ``((H + 1)//2)`` (a size's floor
    division), so that no second pair is put around it."""
    depth = 0
    for i, c in enumerate(code):
        depth += (c == "(") - (c == ")")
        if depth == 0 and i < len(code) - 1:
            return False
    return code.startswith("(") and depth == 0


def lower(expr, leaves: dict, shapes: dict, out: str, out_shape: tuple,
          temp) -> list[tuple[str, set, str]]:
    """Ufunc calls computing ``expr`` into ``out``; ``temp(shape, kind)`` names a scratch
    buffer. ``leaves`` maps symbols to code, ``shapes`` symbols to shapes."""
    low = UfuncLowering(leaves, shapes, temp)
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


@dataclass(eq=False)  # one object per layer, compared (and hashed) by identity
class Fold:
    """``f(h @ W + b)`` computed from one product ``[h, 1] @ [W; b]``, and the gradients
    of ``W`` and ``b`` as one product ``[h, 1].T @ dz``.

    In the training step W and b lie one after the other in the flat buffers, so
    ``[W; b]`` (and ``[dW; db]``) is a (K + 1, M) view of them; h is written beside a
    column of ones. A layer so saves its bias add and its bias-gradient sum: two NumPy
    calls and two passes over (N, M) arrays, for one more row in each product.
    """

    node: str  # f(h @ W + b): the elementwise node that adds the bias
    product: str  # h @ W
    h: str
    W: str
    b: str
    dW: str
    db: str
    expr: tuple  # (symbols, expression) of node with b folded in, and its arguments

    def bias_only(self) -> bool:
        """Whether ``node`` is ``h @ W + b`` itself: nothing is left to compute."""
        (syms, e), args = self.expr
        return e == syms[args.index(self.product)]

    def names(self, em: Emitter) -> tuple[str, str, str]:
        """Codes of ``[h, 1]``, ``[W; b]`` and ``[dW; db]``."""
        nm = em.namer
        return (nm(("ones", self.h), f"{nm(self.h)}_ones"),
                nm(("block", self.W, self.b), f"{nm(self.W)}_{nm(self.b)}"),
                nm(("block", self.dW, self.db), f"{nm(self.dW)}_{nm(self.db)}"))


@dataclass(frozen=True)
class FoldChoice:
    """Whether the layer of weight ``W`` and bias ``b`` carries its bias in the product,
    and why (``--explain`` lists these)."""

    W: str
    b: str
    folded: bool
    why: str

    def text(self, em: Emitter) -> str:
        return (f"{em.namer(self.W)}, {em.namer(self.b)}: "
                f"{'folded' if self.folded else 'not folded'}: {self.why}")


def _folds(em: Emitter, steps: list[str], pairs, planned) -> tuple[dict[str, Fold], list]:
    """The layers ``f(h @ W + b)`` whose bias can ride in the product: ``pairs`` lists
    ``(W, dW, b, db)`` for parameters consecutive in the caller's flat buffers; ``planned(n)``
    says whether a step is lowered to ufunc calls. Returns the folds, keyed by every node
    a fold changes, and one :class:`FoldChoice` per pair of a weight and its bias."""
    out, choices = {}, []
    for W, dW, b, db in pairs:
        fold, why = _fold(em, steps, W, dW, b, db, planned, out)
        if why is None:  # not a weight (K, M) and a bias (M,): nothing to say
            continue
        again = _fold_again(em, fold, planned) if fold is not None else None
        if fold is not None and again is None:
            fold, why = None, "its copy recomputed for checkpointing cannot fold the same way"
        choices.append(FoldChoice(W, b, fold is not None, why))
        if fold is not None:
            for n in (fold.node, fold.product, dW, db):
                out[n] = fold
            for f in again:  # checkpointing's copies: folded exactly as the forward
                for n in (f.node, f.product) if f.node != fold.node else ():
                    out[n] = f
                if j_h(em, f.dW) == f.h:
                    out[dW] = out[db] = f
    return out, choices


def j_h(em: Emitter, dW: str) -> str:
    """The ``h`` that ``dW = h.T @ dz`` reads (through its transpose)."""
    return em.j.args(em.j.args(dW)[0])[0]


def _fold_again(em: Emitter, fold: Fold, planned) -> list[Fold] | None:
    """Gradient checkpointing (:mod:`~symbackprop.codegen.checkpoint`) computes a folded
    layer again in the backward: the folds of the copies (the copy of the product and of
    its node, and the ``h`` that the gradients read), so the copies compute what the
    forward computed, bit for bit; ``None`` where a copy cannot fold. Without copies: []."""
    j, out = em.j, []
    copies = [c for c, _ in j.consumers(fold.b) if j.recompute_of(c) == fold.node]
    for node in copies:
        product = next((a for a in j.args(node) if j.recompute_of(a) == fold.product), None)
        if product is None or j.args(product)[1:] != [fold.W]:
            return None
        expr = _without_bias(j, node, product, fold.b)
        op = j.opdef(node)
        if expr is None or not planned(node) or _lower_node(em, node, op, expr) is None:
            return None
        out.append(Fold(node, product, j.args(product)[0], fold.W, fold.b, fold.dW, fold.db,
                        expr))
    h = j_h(em, fold.dW)
    if h != fold.h and all(f.h != h for f in out):  # the forward's layer kept, h recomputed
        out.append(Fold(fold.node, fold.product, h, fold.W, fold.b, fold.dW, fold.db,
                        fold.expr))
    for f in out:
        if j.is_leaf(f.h) or not j.opdef(f.h).elementwise or not planned(f.h):
            return None
    return out


def _fold(em: Emitter, steps, W, dW, b, db, planned, taken) -> tuple[Fold | None, str | None]:
    """The fold of one layer, or ``None`` and the reason it does not fold (``None`` for a
    pair that is no weight and bias)."""
    j = em.j
    sw, sb_ = j.nx.nodes[W]["shape"], j.nx.nodes[b]["shape"]
    if len(sw) != 2 or tuple(sb_) != (sw[1],) or not all(isinstance(x, int) for x in sw):
        return None, None
    # In float32 a pass over an array costs half as much and the fold's extra cost, a
    # strided pass (per-row overhead), as much: measured on the 784-256-256-256-10
    # network, folds made the float64 step 2.5-3% faster (batch 128 and 1024), the
    # float32 one no faster at batch 128 and 2% slower at batch 1024.
    if em.dtype != "float64":
        return None, f"{em.dtype} (a fold pays off in float64 only)"
    # The fold saves two passes over the (N, M) output (bias add, bias-gradient sum)
    # and costs about one over the (N, K) input: ufuncs writing and reading h beside
    # its column of ones run 30-60% slower than on a contiguous array. Measured at
    # batch 128, float64: a 256 -> 256 layer 16 us faster folded, a 256 -> 10 one 18 us
    # slower; 64 -> 64 layers (50 of them, batch 64) as many instructions either way
    # (callgrind), and their wider buffers cost memory.
    k, m = sw
    if 2 * m < k:
        return None, f"{k} -> {m} layer narrower than half its input"
    if k < 128:
        return None, f"{k} -> {m} layer: input narrower than 128"
    inside = set(steps)
    # what each gradient node is the gradient of, and through which node
    via = {n: (j.grad_of(n), em.absorbed.get(j.via(n), j.via(n))) for n in (dW, db)
           if n in inside and j.grad_of(n) is not None and j.via(n) is not None}
    # W's only forward use is a product h @ W, whose VJP made dW = h.T @ dz
    if dW not in via or via[dW][0] != W:
        return None, f"d{em.namer(W)} is not the gradient of one product's weight"
    product = via[dW][1]
    op = j.opdef(product) if product in inside else None
    if op is None or not em.backend.lowering(op).bias_fold or j.args(product)[1:] != [W]:
        return None, f"{em.namer(W)} is not read by a product that can carry a bias"
    h = j.args(product)[0]
    uses = j.consumers(product)
    # (checkpointing's copies of the layer read b too: _fold_again folds them alike)
    if len(uses) != 1 or [u for u in j.consumers(b) if j.recompute_of(u[0]) != uses[0][0]] \
            != [(uses[0][0], j.args(uses[0][0]).index(b))]:
        # the bare product or the bias is read elsewhere (a derivative, say)
        return None, "the product or the bias is read elsewhere"
    node, grad_args = uses[0][0], j.args(dW)
    # dW = h.T @ dz, the transpose made by the product's own VJP; db the row sum of
    # the same dz (the VJP of a bias broadcast over the rows)
    if len(grad_args) != 2 or j.args(grad_args[0]) != [h] \
            and j.args(grad_args[0]) != [_again(j, h)] \
            or j.vjp_of(grad_args[0]) != product \
            or via.get(db) != (b, node) or j.args(db) != grad_args[1:]:
        return None, "the gradients are not h.T @ dz and the row sum of dz"
    # h must be written by ufunc calls: they can write beside the column of ones
    if h not in inside or j.is_leaf(h) or node not in inside \
            or not j.opdef(h).elementwise or not planned(h):
        return None, f"its input {em.namer(h)} is not written by ufunc calls"
    if any(n in taken for n in (node, product, dW, db)):
        # one bias per node (an RNN cell adds two): the first is folded
        return None, f"{em.namer(node)} already carries another folded bias"
    expr = _without_bias(j, node, product, b)
    op = j.opdef(node)
    if expr is None or not op.elementwise or not planned(node) \
            or _lower_node(em, node, op, expr) is None:
        return None, f"{em.namer(node)} cannot be written without the bias as ufunc calls"
    return Fold(node, product, h, W, b, dW, db, expr), \
        f"{em.namer(product)} = {em.namer(h)} @ {em.namer(W)} + {em.namer(b)} as one product"


def _again(j, h: str) -> str | None:
    """The copy of ``h`` that gradient checkpointing recomputes, if there is one."""
    return next((c for c in j.nx if j.recompute_of(c) == h), None)


def flat_pairs(adj) -> list[tuple[str, str, str, str]]:
    """``(W, dW, b, db)`` for each two parameters one after the other in ``adj.wrt`` (the
    order of the training step's flat buffers), each with a gradient node of its own: the
    layers :func:`plan_function` may fold (``pairs``)."""
    grads = [adj.adjoint[w] for w in adj.wrt]
    uses = Counter(grads)
    own = {w for w, n in zip(adj.wrt, grads) if uses[n] == 1}
    return [(w, adj.adjoint[w], b, adj.adjoint[b]) for w, b in itertools.pairwise(adj.wrt)
            if w in own and b in own]


def flat_gradients(g, wrt: list, grads: list, namer, pool) -> tuple[list, str, str]:
    """The flat gradient buffer of a planned training step, in the order of ``TRAINED``
    (``wrt``, with gradient nodes ``grads``): its layout ``(parameter, shape, gradient
    variable or None)`` (a gradient node shared by two parameters is written by
    ``loss_and_grads_into`` for the first, copied for the other), the ``TRAINED`` and
    ``FOLDED`` constants, and the flat buffers' runtime source."""
    first, layout = set(), []
    for w, n in zip(wrt, grads):
        layout.append((w, tuple(g.nx.nodes[w]["shape"]), namer(n) if n not in first else None))
        first.add(n)
    consts = f"TRAINED = {tuple(wrt)!r}  # the parameters train_step updates\n"
    if pool.folds:
        consts += (f"FOLDED = {tuple((w, b) for w, b, *_ in pool.folds)!r}  # layers with "
                   "the bias in the product\n")
    buffers = source_of(flat, "_FLAT", "_flat_base", "_flat",
                        variants={"folded": bool(pool.folds)})
    return layout, consts, buffers


def _without_bias(j, node: str, product: str, b: str):
    """``node``'s expression with ``x + b`` replaced by ``x`` (x: the product), when the two
    appear only as that sum: ``((symbols, expression), arguments)``, or ``None``."""
    op = j.opdef(node)
    syms, e = op.code_expr(j.nx.nodes[node]["attrs"])
    args = j.args(node)
    if args.count(product) != 1 or args.count(b) != 1:
        return None
    e2 = _sum_as_one(e, syms[args.index(product)], syms[args.index(b)])
    if e2 is None:
        return None
    keep = [(s, a) for s, a in zip(syms, args) if a != b]
    return ([s for s, _ in keep], e2), [a for _, a in keep]


@lru_cache(maxsize=256)
def _sum_as_one(e, x, xb):
    """``e`` with ``x + xb`` replaced by ``x``, or ``None`` when ``x`` or ``xb`` also
    appears on its own (every layer asks about the same expression: worked out once)."""
    u = sp.Dummy("u")
    e2 = e.subs(x + xb, u)
    if {x, xb} & e2.free_symbols or e2.xreplace({u: x + xb}) != e:
        return None
    return e2.xreplace({u: x})


# -- the decisions: one per step of a planned function ----------------------------------

@dataclass(frozen=True)
class Decision:
    """How the planned function computes one step (a node), and why."""

    why: str


@dataclass(frozen=True)
class Plain(Decision):
    """The node's plain statement (:meth:`Emitter.rhs`): a new array or scalar, or a
    gradient written into the caller's array with ``[...] =``."""


@dataclass(frozen=True)
class Lowered(Decision):
    """NumPy calls writing into the node's buffer (``out=``): ufunc calls of its
    elementwise expression, or its op's own call.

    ``lines`` are ``(code, codes read, code written)`` with scratch placeholders, bound to
    buffers of their own (``wanted``: shape and kind of each) after the node's. ``own``:
    the node gets a buffer of the workspace (``False``: it writes the caller's gradient
    array); ``any_layout``: only calls that write any memory layout write it (see
    :func:`_width`); ``overwrites``: the argument whose buffer it takes over (in place);
    ``ones``: the fold whose input ``h`` this is (its buffer is ``[h, 1]``)."""

    lines: tuple = ()
    wanted: tuple = ()
    own: bool = True
    any_layout: bool = True
    overwrites: str | None = None
    ones: Fold | None = None


@dataclass(frozen=True)
class WithGrad(Decision):
    """The op's one call computing the value and writing the gradient node ``grad``."""

    grad: str = ""


@dataclass(frozen=True)
class FoldProduct(Decision):
    """``[h, 1] @ [W; b]``: the product of a fold, with the bias added."""

    fold: Fold | None = None


@dataclass(frozen=True)
class FoldGrads(Decision):
    """``[h, 1].T @ dz``: the gradients of a fold's weight and bias in one product."""

    fold: Fold | None = None


@dataclass(frozen=True)
class BiasOnly(Decision):
    """A fold's ``h @ W + b`` itself: nothing is left to compute, the product's buffer is
    the node's."""

    fold: Fold | None = None


@dataclass(frozen=True)
class Skipped(Decision):
    """Computed by another step (the reason says which), or read by nothing."""


@dataclass(frozen=True)
class Part:
    """One part of the fused update (``fuse_update=True``): a parameter, or a folded layer's
    ``[W; b]``, updated by the optimizer's rule in the backward sweep as soon as its
    gradient ``grad`` is final and no later step reads the parameters (:func:`_parts`)."""

    params: tuple  # the parameters (one, or a fold's W and b)
    grad: str  # the gradient node whose buffer the rule reads (a fold's: dW, as [dW; db])
    code: str  # its code in the planned function (dW1, dW2_db2)


@dataclass
class Plan:
    """What :func:`plan_function` works out, phase by phase, for one function."""

    steps: list  # the computed nodes, in order
    leaves: list
    into: dict  # gradient node -> the caller's array it is written into
    last: dict  # node -> the last step reading it (liveness)
    together: dict  # value node -> its gradient node, computed in one call
    folds: dict  # node -> the Fold changing it
    fold_choices: list
    decisions: dict = field(default_factory=dict)  # node -> Decision
    scaled: bool = False
    updates: dict = field(default_factory=dict)  # fused: step -> the Parts updated after it
    loss_step: int | None = None  # fused: the step computing the loss, checked right after
    pinned: set = field(default_factory=set)  # fused: values an update reads (never overwritten)
    fused_args: tuple = ()  # fused: the codes of the arguments flat, state and lr

    def explain(self, em: Emitter) -> list[str]:
        """One line per decision on a fold, then one per step not written by out= calls
        (lowered steps are the rule; these are where the plan does something else)."""
        out = [c.text(em) for c in self.fold_choices]
        for n in self.steps:
            d = self.decisions[n]
            if not isinstance(d, Lowered):
                out.append(f"{em.namer(n)}: {type(d).__name__}: {d.why}")
        return out


def _reads(em: Emitter, n: str) -> list[str]:
    """The computed nodes whose values ``n`` reads (through inlined views)."""
    out = []
    for a in em.j.args(n):
        out += _reads(em, a) if em.inline(a) and em.j.role(a) != "const" else [a]
    return out


def _may_view(em: Emitter, n: str, together: dict) -> bool:
    """Whether step ``n``, computed the plain way, may return a view of its arguments'
    memory: a structural op without an ``out=`` form (h.T used twice, x.reshape(...),
    x[::-1], np.broadcast_to). Those with a gradient in the same call return a new scalar."""
    op = em.j.opdef(n)
    return op is not None and not op.elementwise and em.backend.lowering(op).out is None \
        and n not in together


def _bases(em: Emitter, n: str, together: dict) -> set[str]:
    """The values whose buffers the array ``n`` stands for may lie in: ``n`` itself, and
    through views (inlined ones such as ``h.T``, or steps :func:`_may_view`) the values
    they are views of, transitively."""
    j = em.j
    if j.is_leaf(n):
        return {n}
    if em.inline(n) and j.role(n) != "const":  # written inside its reader: no array of its own
        return set().union(*(_bases(em, a, together) for a in j.args(n)))
    if _may_view(em, n, together):
        return {n}.union(*(_bases(em, a, together) for a in j.args(n)))
    return {n}


def _liveness(em: Emitter, steps: list[str], targets: list[str], together: dict) -> dict:
    """The last step reading each value (``len(steps)`` for the function's results)."""
    last = {}
    for i, n in enumerate(steps):
        for a in _reads(em, n):
            last[a] = i
    for t in targets:
        last[t] = len(steps)
    # A view shares its base's buffer (h.T used twice, x.reshape(...), np.broadcast_to):
    # the base's buffer lives as long as the view.
    for n in reversed(steps):
        if n in last and _may_view(em, n, together):
            for a in _reads(em, n):
                last[a] = max(last.get(a, -1), last[n])
    return last


def _out_op(em: Emitter, op) -> bool:
    """Whether an op can write into a given array: ufunc calls of its elementwise
    expression, or its own ``out=`` call."""
    low = em.backend.lowering(op)
    return op.elementwise and low.expr is None or low.out is not None


def _decide(em: Emitter, p: Plan, unread: set, unused: set, lowered) -> None:
    """One :class:`Decision` per step, in order. Whether a step may overwrite an argument
    depends on which earlier values hold a buffer still alive: tracked here as the
    buffers will be handed out (:func:`_assign`)."""
    into, folds = p.into, p.folds
    sources = {f.h: f for f in folds.values()}
    held = set()  # values holding a buffer of the workspace now
    for i, n in enumerate(p.steps):
        f = folds.get(n)
        if n in p.together.values() or n in unread:
            dec = Skipped("computed with its value, in one call")
        elif n in unused:
            dec = Skipped("a transpose of a fold's input: its products read [h, 1].T")
        elif n in p.together:
            dec = WithGrad(f"computes {em.namer(p.together[n])} in the same call",
                           p.together[n])
        elif f is not None and n == f.db:
            dec = Skipped("the last row of [dW; db], written with dW")
        elif f is not None and n == f.dW:
            dec = FoldGrads("weight and bias gradients in one product", f)
        elif f is not None and n == f.product:
            dec = FoldProduct("the bias rides in the product", f)
        elif f is not None and f.bias_only() and n not in sources:
            dec = BiasOnly("h @ W + b itself: the product already added the bias", f)
        elif lowered(n) is None:
            dec = Plain(_plain_reason(em, n))
        else:
            dec = _lowered(em, p, i, n, sources, held, lowered)
        p.decisions[n] = dec
        # the values holding a buffer after this step (as _assign hands them out)
        if isinstance(dec, WithGrad) and dec.grad not in into:
            held.add(dec.grad)
        elif isinstance(dec, FoldProduct) or isinstance(dec, Lowered) and dec.own:
            held.add(n)
            held.discard(getattr(dec, "overwrites", None))
        elif isinstance(dec, BiasOnly):
            held.discard(f.product)
            held.add(n)
        for a in set(_reads(em, n)):
            if p.last.get(a) == i:
                held.discard(a)


def _plain_reason(em: Emitter, n: str) -> str:
    """Why step ``n`` is not written by ``out=`` calls."""
    j = em.j
    d = j.nx.nodes[n]
    if j.is_leaf(n):
        return "a constant"
    if d["shape"] == ():
        return "a scalar"
    if d["dtype"] != "float":
        return "not floats"
    if not _out_op(em, j.opdef(n)):
        return f"{j.opdef(n).name} has no out= form"
    return "its expression has a function the ufunc lowering does not know"


def _lowered(em: Emitter, p: Plan, i: int, n: str, sources: dict, held: set,
             lowered) -> Lowered:
    """The decision for step ``i``, ``n``, written by ``out=`` calls: into the caller's
    array, over an argument (in place), or into a buffer of its own. ``sources``: the
    inputs ``h`` of folds; ``held``: the values holding a buffer now."""
    j = em.j
    d, op, f = j.nx.nodes[n], j.opdef(n), p.folds.get(n)
    lines, wanted = lowered(n)
    out = em.code(n)
    if n in p.into:
        return Lowered("out= calls into the caller's array", lines, wanted, own=False)
    # Overwrite an argument in place when this is its last read and the ufunc calls read
    # it before they write. Not with a product (BLAS cannot write over its operand: NumPy
    # would copy it), nor into or out of the buffer of an h of a fold (written beside its
    # column of ones, strided in the plain layout: ufuncs run slower there than on a
    # contiguous array). Only an argument read directly: one read through a view (h.T) is
    # another layout of the same memory, which the calls would overwrite under it. For the
    # same reason, every argument that may be a view of it (neg_1.T, reshape_1 =
    # neg_1.reshape(...)) is read by the calls before they write, as the argument itself.
    views = {a: {em.code(x) for x in j.args(n) if a in _bases(em, x, p.together)}
             for a in j.args(n)}
    chosen = next((a for a in dict.fromkeys(j.args(n))
                   if a in held and p.last.get(a) == i and op.elementwise
                   and a not in sources and a not in p.pinned
                   and j.nx.nodes[a]["shape"] == d["shape"]
                   and all(alias_safe(lines, out, c) for c in views[a])), None)
    if chosen is not None and n not in sources:
        return Lowered(f"out= calls over {em.namer(chosen)}, read for the last time", lines,
                       wanted, overwrites=chosen)
    low = em.backend.lowering(op)
    any_layout = low.out is None or f is not None or low.any_layout
    ones = sources.get(n)
    why = "out= calls into a buffer of its own"
    if ones is not None:
        why = "out= calls into a buffer beside a column of ones (input of a folded product)"
    if chosen is not None and len(lines) > 1 and ones is not None:
        # an h of a fold: the calls run in the contiguous buffer of the argument, the
        # last writes beside the column of ones
        staged, staged_wanted = _lower_node(em, n, op, f.expr if f else None,
                                            out=em.code(chosen))
        code, reads_, dest = staged[-1]
        if code.endswith(f"out={dest})"):
            lines = (*staged[:-1], (code[:-len(dest) - 1] + f"{out})", reads_, out))
            wanted = staged_wanted
            why += f", computed in {em.namer(chosen)}'s buffer first"
    return Lowered(why, tuple(lines), wanted, any_layout=any_layout, ones=ones)


# -- buffers: the workspace each step writes ------------------------------------------------

@dataclass
class _Buffers:
    """The buffer assignment of a planned function: which buffer each value holds, the
    names bound to each buffer, the buffers with a column of ones, and each step's calls
    with their scratch buffers bound."""

    owner: dict = field(default_factory=dict)  # value -> index of the buffer it holds now
    binds: dict = field(default_factory=dict)  # buffer index -> names bound to it
    ones: dict = field(default_factory=dict)  # buffer index -> code of [h, 1]
    lines: dict = field(default_factory=dict)  # step -> its calls, scratch bound
    home: dict = field(default_factory=dict)  # value -> the buffer it was written into


def _assign(em: Emitter, p: Plan, pool: Pool) -> _Buffers:
    """Hand out the workspace's buffers, step by step: a buffer is alive from the step
    that first writes it to the last step that reads a value it holds."""
    j, into = em.j, p.into
    b = _Buffers()

    def take(n, i, any_layout, ones=None):  # a fresh buffer for n's value, named after it
        # any_layout: only calls that write into any memory layout write n (see _width)
        shape = j.nx.nodes[n]["shape"]
        width = _width(shape) if any_layout else None
        if ones is not None:  # with a column of ones beside it
            rows, cols = shape
            b.owner[n] = pool.take((rows, cols + 1), "f", i, width)
            b.ones[b.owner[n]] = ones.names(em)[0]
        else:
            b.owner[n] = pool.take(shape, "f", i, width)
        b.home[n] = b.owner[n]
        b.binds.setdefault(b.owner[n], []).append(em.namer(n))

    def move(src, n):  # n's value takes over the buffer of src
        b.owner[n] = b.home[n] = b.owner.pop(src)
        b.binds.setdefault(b.owner[n], []).append(em.namer(n))

    for i, n in enumerate(p.steps):
        dec = p.decisions[n]
        if isinstance(dec, WithGrad):
            if dec.grad not in into:
                take(dec.grad, i, False)
            else:
                pool.writes.setdefault(into[dec.grad], i)
        elif isinstance(dec, FoldGrads) and dec.fold.dW not in into:  # fused: [dW; db] here
            b.owner[n] = b.home[n] = pool.take(_ones_shape(j, dec.fold.W), "f", i)
            b.binds.setdefault(b.owner[n], []).append(dec.fold.names(em)[2])
        elif isinstance(dec, FoldGrads):
            pool.writes[into[dec.fold.dW]] = pool.writes[into[dec.fold.db]] = i
        elif isinstance(dec, FoldProduct):
            take(n, i, em.backend.lowering(j.opdef(n)).any_layout)
        elif isinstance(dec, BiasOnly):
            move(dec.fold.product, n)
        elif isinstance(dec, Lowered):
            if dec.overwrites is not None:
                move(dec.overwrites, n)
            elif dec.own:
                take(n, i, dec.any_layout, dec.ones)
            b.lines[n] = _bind_scratch(list(dec.lines), dec.wanted, pool, i)  # after n's own
        reads = set(_reads(em, n)) | {a for part in p.updates.get(i, ()) for a in
                                      _held(em, part.grad)}
        for a in reads:  # values read for the last time free their buffers
            if p.last.get(a) == i and a in b.owner:
                pool.keep(b.owner.pop(a), i)
        if n in into:
            pool.writes.setdefault(into[n], i)
    pool.end = len(p.steps)
    pool.sizes = sorted({x for buf in pool.buffers for x in sizes.names(buf.shape)})
    for k in b.owner.values():  # values read by the caller (the loss): alive to the end
        pool.keep(k, pool.end)
    return b


# -- text ------------------------------------------------------------------------------------

def _text(em: Emitter, p: Plan, b: _Buffers, of, marker: bool, start=()) -> list[str]:
    """The statements of the steps, in order; with ``marker``, a comment where the
    backward pass starts (as in the plain value_and_grad). Fused (``p.updates``): the
    loss's check after its step (then the lines ``start``, the optimizer's once-a-step
    statements), and each part's update after the step that makes it due."""
    j, into, body = em.j, p.into, []
    started = not marker

    def product(f, x, y, shapes, out):  # x @ y, written by the op of the fold's product
        op = j.opdef(f.product)
        return em.use(op, em.backend.lowering(op).out([x, y], j.nx.nodes[f.product]["attrs"],
                                                      out, shapes))

    for i, n in enumerate(p.steps):
        dec = p.decisions[n]
        comment = em.comment(n, of) if of else ""
        nm = em.namer
        if not started and j.is_backward(n) and not isinstance(dec, (Skipped, BiasOnly)) \
                and (not isinstance(dec, Plain) or em.rhs(n)):
            body.append("# backward: gradients in reverse order of the forward pass")
            started = True
        if not isinstance(dec, Skipped):
            body += em.recompute_note(n, p.steps)
        if isinstance(dec, WithGrad):
            op, c = j.opdef(n), dec.grad
            args = j.args(c)
            seed = "scale" if p.scaled and n == of else em.rhs(args[-1])  # a constant
            call = em.use(op, em.backend.lowering(op).with_grad([em.code(a) for a in args[:-1]],
                                                     j.nx.nodes[n]["attrs"], seed, em.code(c)))
            body.append(f"{nm(n)} = {call}  # and {nm(c)}, its gradient")
        elif isinstance(dec, FoldGrads):
            f = dec.fold
            hb, _, grads = f.names(em)
            dz = j.args(n)[1]
            call = product(f, hb + ".T", em.code(dz),
                           [_ones_shape(j, f.h)[::-1], j.nx.nodes[dz]["shape"]], grads)
            h, w, bias, o = (nm(x) for x in (f.h, f.W, f.b, of or "L"))
            body.append(f"{call}  # d{o}/d{w}, d{o}/d{bias} via {nm(f.product)} = "
                        f"{h} @ {w} + {bias}")
        elif isinstance(dec, FoldProduct):
            f = dec.fold
            hb, block, _ = f.names(em)
            call = product(f, hb, block, [_ones_shape(j, f.h), _ones_shape(j, f.W)], em.code(n))
            h, w, bias = (nm(x) for x in (f.h, f.W, f.b))
            body.append(f"{call}  # {nm(n)} = {h} @ {w} + {bias}, as [{h}, 1] @ [{w}; {bias}]")
        elif isinstance(dec, Plain):
            rhs = em.rhs(n)
            target = f"{into[n]}[...]" if n in into else nm(n)
            if rhs:
                body.append(f"{target} = {rhs}" + (f"  # {safe_text(comment)}" if comment else ""))
        elif isinstance(dec, Lowered):
            lines = b.lines[n]
            if any("_constant(" in code for code, _, _ in lines):
                em.helpers.setdefault("_constant", CONSTANT)
            if comment:
                lines[-1] = (lines[-1][0] + f"  # {safe_text(comment)}",) + lines[-1][1:]
            body += [ln for ln, _, _ in lines]
            if dec.ones is not None:
                h, (_, block, _) = nm(n), dec.ones.names(em)
                body.append(f"{b.ones[b.home[n]]}[:, -1] = 1  # [{h}, 1] @ {block} adds "
                            "the bias in the product")
        if i == p.loss_step:
            body += [f"if not math.isfinite({em.code(of)}):  # before any parameter changes",
                     f"    return {em.code(of)}  # train_step raises: nothing was updated"]
            body += [ln.format(state=p.fused_args[1]) + "  # the loss is finite: this step "
                     "updates" for ln in start]
        for part in p.updates.get(i, ()):
            names = [nm(w) for w in part.params]
            key = repr(part.params[0] if len(part.params) == 1 else part.params)
            final = ", ".join(f"d{nm(of)}/d{w}" for w in names)
            args = ", ".join([p.fused_args[0], key, part.code, *p.fused_args[1:]])
            body.append(f"_fused({args})  # {final} final, "
                        f"{', '.join(names)} read no more: update now")
    return body


def plan_function(em: Emitter, name: str, targets: list[str], into: list[str], doc: str,
                  of: str | None = None, scalable: bool = False,
                  pairs=(), marker: bool = False, fused=None,
                  start=()) -> tuple[Function, Pool]:
    """Statements computing ``targets`` with every array in a planned buffer.

    The nodes in ``into`` (the gradients) are written into arrays the caller
    passes, as parameters named after those nodes (``dW1``). Returns the
    function and the pool of workspace buffers it uses (see :func:`workspace_source`);
    ``pool.plan`` keeps the decisions (:meth:`Plan.explain`).

    The work goes in phases: liveness (the last step reading each value), one
    :class:`Decision` per step (plain, lowered to ``out=`` calls, in place, value with
    gradient, a fold's product or gradients, skipped), buffer assignment, then text.

    With ``scalable``, when the loss ``of`` computes its own gradient in one call and
    every other adjoint flows from that one, the function takes ``scale=1.0`` as the
    seed: backprop is linear in it, so the gradients come out multiplied by ``scale``
    (``pool.scaled`` says whether it does).

    ``pairs`` lists ``(W, dW, b, db)`` for parameters ``W``, ``b`` (and their gradient
    nodes) that the caller keeps one after the other in its flat buffers: a layer
    ``f(h @ W + b)`` is then computed with its bias inside the product (:class:`Fold`);
    the function takes ``[W; b]`` after ``W`` instead of ``b``, and ``[dW; db]`` in
    place of ``dW`` and ``db`` (``pool.folds``).

    ``marker``: a comment where the backward pass starts.

    ``fused`` (the fused update, ``fuse_update=True``): ``(parameter, gradient node)`` of
    every trained parameter, in the flat buffers' order, with ``into`` empty. No gradient
    is written into the caller's arrays: each lives in a buffer of the workspace until
    the optimizer's rule has read it, one call ``_fused(flat, key, grad, state, lr)``
    right after the step that makes it due (:func:`_parts`), and its bytes then serve
    later steps. The function takes ``flat, state, lr`` after the leaves, checks the loss
    ``of`` right after computing it (a nan/inf loss returns before any update, as it is),
    and then runs ``start`` (the optimizer's once-a-step lines, Adam's step count, with
    ``{state}`` for the state's argument).
    """
    j = em.j
    into = {n: em.namer(n) for n in into}
    grads = [n for _, n in fused or ()]
    need = j.ancestors([*targets, *grads])
    # The zero gradient of a leaf the loss does not use, np.broadcast_to(0.0, (N, 3)),
    # reads no node; the leaf is passed all the same when its shape binds a size name
    # (as Emitter.function does).
    need |= {a for a in (j.adjoint_of(n) for n in need)
             if a in j.nx and j.role(a) in ("input", "param")
             and any(isinstance(s, str) for s in j.nx.nodes[a]["shape"])}
    order = [n for n in em.order if n in need]
    leaves = sorted((n for n in order if j.role(n) in ("input", "param")),
                    key=em.index.__getitem__)
    steps = [n for n in order if j.role(n) not in ("input", "param") and not em.inline(n)]
    together = _with_grad(em, steps)  # value node -> its gradient, computed in one call
    p = Plan(steps, leaves, into, _liveness(em, steps, targets, together), together, {}, [])
    seeds = {j.args(c)[-1] for c in together.values()}  # constants they take as numbers
    unread = {g for g in seeds if {c for c, _ in j.consumers(g)} <= set(together.values())}
    p.scaled = scalable and of in together and j.args(together[of])[-1] in unread
    cache = {}

    def lowered(n):
        """n's out= calls and scratch buffers, worked out once (they decide whether n is
        planned and whether it can overwrite an argument, and are then the code), or None."""
        if n not in cache:
            d, op = j.nx.nodes[n], j.opdef(n)
            ok = (op is not None and _out_op(em, op) and d["shape"] != () and d["dtype"] == "float"
                  and n not in together and n not in together.values() and n not in unread
                  and n not in em.unplanned)  # mixed precision's float32 ones
            fold = p.folds.get(n)
            cache[n] = _lower_node(em, n, op, fold.expr if fold else None) if ok else None
        return cache[n]

    folds, p.fold_choices = _folds(em, steps, pairs, lowered)
    p.folds.update(folds)
    for f in p.folds.values():  # lowered again, with the bias in the product
        cache.pop(f.node, None)
    # an h.T of its own (two products of h share it) that only folded products read, which
    # read [h, 1].T instead
    transposes = {j.args(f.dW)[0] for f in p.folds.values()}
    unused = {t for t in transposes if not em.inline(t) and t not in targets
              and all(c in p.folds and c == p.folds[c].dW for c, _ in j.consumers(t))}
    pool = Pool(scaled=p.scaled, plan=p)
    fn = Function(name, _fold_params(em, leaves, into, p.folds), doc)
    if fused:
        _parts(em, p, fused, of)
        # (named by the namer: a node may be called flat, as a CNN's flattened features)
        p.fused_args = tuple(em.namer(("fused", a), a) for a in ("flat", "state", "lr"))
        fn.params += list(p.fused_args)
    if pool.scaled:
        fn.params.append("scale=1.0")
    for f in dict.fromkeys(p.folds.values()):
        _, block, grads = f.names(em)
        if (f.W, f.b, block, grads) not in pool.folds:  # a layer and its checkpointed copy
            pool.folds.append((f.W, f.b, block, grads))
    _decide(em, p, unread, unused, lowered)
    buffers = _assign(em, p, pool)
    body = _text(em, p, buffers, of, marker, start)
    ws_call = f"_ws = _workspace({', '.join(pool.sizes)})[0]"
    fn.body = em.bind_sizes(name, leaves, [*body, ws_call]) + [ws_call]
    for k in sorted(buffers.binds):
        if k in buffers.ones:
            ones = buffers.ones[k]
            fn.body += [f"{ones} = _ws[{k}]", " = ".join(buffers.binds[k]) + f" = {ones}[:, :-1]"]
        else:
            fn.body.append(" = ".join(buffers.binds[k]) + f" = _ws[{k}]")
    fn.body += body
    return fn, pool


def _held(em: Emitter, n: str) -> list[str]:
    """The computed values whose buffers hold node ``n``'s value: ``n`` itself, or what an
    inlined view of it (a transpose, a broadcast) reads."""
    return _reads(em, n) if em.inline(n) else [n]


def _parts(em: Emitter, p: Plan, fused, of: str) -> None:
    """The fused update's :class:`Part` s and where each is updated (``p.updates``): after
    the last of the step that makes its gradient final, the last step reading one of its
    parameters (an update before it would change what that step reads: a later gradient,
    a recomputed forward value) and the loss's step (``p.loss_step``, checked first). The
    values holding the gradient live until then and are never overwritten in place
    (``p.pinned``). A folded layer is one part: its ``[W; b]`` and ``[dW; db]``."""
    pos = {n: i for i, n in enumerate(p.steps)}
    p.loss_step = pos.get(of, max((pos[a] for a in _held(em, of) if a in pos), default=-1))
    folded = {f.b for f in p.folds.values()}
    for w, n in fused:
        f = p.folds.get(n)
        if w in folded:
            continue  # with its weight, as [dW; db]
        part = (Part((w, f.b), n, f.names(em)[2]) if f is not None and f.W == w and f.dW == n
                else Part((w,), n, em.code(n)))
        held = _held(em, n)
        due = max([p.loss_step, *(pos[a] for a in held if a in pos),
                   *(p.last.get(a, -1) for a in part.params)])
        for a in held:
            p.last[a] = max(p.last.get(a, -1), due)
        p.pinned.update(held)
        p.updates.setdefault(due, []).append(part)


def _ones_shape(j, n: str) -> tuple:
    """The shape of ``[h, 1]`` (h: (N, K)) or ``[W; b]`` (W: (K, M))."""
    shape = j.nx.nodes[n]["shape"]
    return (shape[0], shape[1] + 1) if j.role(n) != "param" else (shape[0] + 1, shape[1])


def _fold_params(em: Emitter, leaves: list[str], into: dict, folds: dict) -> list[str]:
    """The parameters of a planned function: the leaves, then the gradient arrays; a fold
    takes ``[W; b]`` after ``W`` instead of ``b``, and ``[dW; db]`` instead of both."""
    by_w = {f.W: f for f in folds.values()}
    by_b, by_dw, by_db = ({getattr(f, k) for f in folds.values()} for k in ("b", "dW", "db"))
    out = []
    for n in leaves:
        if n not in by_b:
            out.append(em.namer(n))
        if n in by_w:
            out.append(by_w[n].names(em)[1])
    for n, code in into.items():
        if n in by_dw:
            out.append(folds[n].names(em)[2])
        elif n not in by_db:
            out.append(code)
    return out


class _Scratch:
    """Records the scratch buffers a lowering asks for and names them by placeholders:
    the pool hands them out later (:func:`_bind_scratch`), after the choice of the node's
    own buffer, which reads the same lowering."""

    def __init__(self):
        self.wanted: list[tuple[tuple, str]] = []

    def __call__(self, shape: tuple, kind: str) -> str:
        self.wanted.append((tuple(shape), kind))
        return f"_ws[\0{len(self.wanted) - 1}\0]"


# Placeholders in lowered code (NUL and SOH never occur in generated code): \0k\0 for the
# k-th scratch buffer, \1name\1 for the argument of symbol name, \1\1 for the output.
_SCRATCH = re.compile("\0(\\d+)\0")
_SLOT = re.compile("\1(\\w*)\1")


def _width(shape: tuple):
    """The width of a buffer of this shape that only ufunc calls and np.matmul (any
    memory layout) write: the workspace stores it transposed for a batch narrower than it
    (see :data:`PACK`); ``None`` for a shape that is always stored as it is."""
    return shape[1] if transposable(shape) else None


def _bind_scratch(lines: list, wanted: tuple, pool: Pool, step: int) -> list:
    """``lines`` with a buffer of ``pool`` taken, in order, for each scratch placeholder."""
    taken = [str(pool.take(shape, kind, step, _width(shape))) for shape, kind in wanted]
    return [(_SCRATCH.sub(lambda m: taken[int(m.group(1))], code), reads, dest)
            for code, reads, dest in lines]


@lru_cache(maxsize=1024)
def _lowered_form(e, shapes: tuple, out_shape: tuple) -> tuple[tuple, tuple]:
    """:func:`lower` of ``e`` with placeholders for its arguments (``shapes``: symbol and
    shape of each), its output and its scratch buffers. Every layer of a network lowers
    the same expressions over arrays of the same shapes: work each out once (the lowering
    reads the arguments' symbols and shapes, never their code)."""
    scratch = _Scratch()
    steps = lower(e, {s: f"\1{s.name}\1" for s, _ in shapes}, dict(shapes), "\1\1",
                  out_shape, scratch)
    return tuple(steps), tuple(scratch.wanted)


def _lower_node(em: Emitter, n: str, op, expr=None, out=None) -> tuple[list, tuple] | None:
    """Node ``n`` as out= calls writing to its code (or to ``out``), and the scratch buffers
    they use, still as placeholders (see :func:`_bind_scratch`); ``None`` when it cannot be
    (an elementwise expression with a function the lowering does not know, such as atan, is
    computed the plain way). ``expr``: ``((symbols, expression), arguments)`` to compute
    instead of the op's own (a fold's, without the bias)."""
    j = em.j
    d = j.nx.nodes[n]
    args = j.args(n)
    out = out or em.code(n)
    if em.backend.lowering(op).out is not None and expr is None:
        code = em.use(op, em.backend.lowering(op).out([em.code(a) for a in args], d["attrs"], out,
                                       [j.nx.nodes[a]["shape"] for a in args]))
        return [(code, {em.code(a) for a in args}, out)], ()
    (syms, e), args = expr if expr is not None else (op.code_expr(d["attrs"]), args)
    codes, shapes = {"": out}, []
    for s, a in zip(syms, args):
        if em.inline(a) and j.role(a) == "const":
            e = e.xreplace({s: em.value(a)})
        else:
            codes[s.name] = em.code(a)
            shapes.append((s, j.nx.nodes[a]["shape"]))
    try:
        steps, wanted = _lowered_form(e, tuple(shapes), tuple(d["shape"]))
    except NotImplementedError:
        return None

    def fill(text):
        return _SLOT.sub(lambda m: codes[m.group(1)], text)
    return [(fill(code), {fill(r) for r in reads}, fill(dest)) for code, reads, dest in steps], \
        wanted


def _with_grad(em: Emitter, steps: list[str]) -> dict:
    """Nodes whose op computes its value and gradient in one call (``with_grad``),
    paired with the gradient node its VJP made, when that gradient reads the same
    arguments and an incoming adjoint known by then (the loss's seed)."""
    j, out = em.j, {}
    for n in steps:
        if j.is_leaf(n) or em.backend.lowering(j.opdef(n)).with_grad is None:
            continue
        for c in steps:
            args = j.args(c)
            if j.vjp_of(c) == n and args and args[:-1] == j.args(n) \
                    and j.role(args[-1]) == "const" and j.nx.nodes[args[-1]]["shape"] == ():
                out[n] = c
    return out


def workspace_source(em: Emitter, pool: Pool, grads=(), blocks: bool = True) -> str:
    """The ``_workspace(N, ...)`` function: the pool's buffers and the flat gradient
    buffer laid out as ``grads`` (``(name, shape, code)``: ``code`` names the array of
    the planned function that receives it, ``None`` when the caller fills it after)
    as views of one arena, made once per size (see :data:`PACK`); ``blocks``: the views
    ``[dW; db]`` of the folds' gradients in that buffer (the fused update has none)."""
    sizes = pool.sizes
    key = ", ".join(sizes) + ("," if len(sizes) == 1 else "")
    rows = []
    for i, buf in enumerate(pool.buffers):
        dt = "DTYPE" if buf.kind == "f" else "bool"
        rows.append(f"                ({fmt_shape(buf.shape)}, {dt}, {buf.first}, {buf.last}, "
                    f"{buf.width}),  # _ws[{i}]")
    grad_rows = [f"                ({name!r}, {fmt_shape(shape)}, "
                 f"{pool.writes.get(code, pool.end)}),"
                 for name, shape, code in grads]
    pairs = ", ".join(f"({w!r}, {b!r})" for w, b, *_ in pool.folds)
    note = "# the gradients [w; b] of layers with the bias in the product"
    blocks = [f"            [{pairs}],  {note}"] if pool.folds and blocks else []
    return "\n".join([
        "_WORKSPACES = {}",
        "",
        "",
        f"def _workspace({', '.join(sizes)}):",
        '    """The arrays of one step for these sizes, as views of one arena made on first use',
        "    and reused: (arrays, flat gradient buffer, its views by name, blocks [dW; db]).",
        '    Every array lives from its first to its last step; _pack places them."""',
        f"    ws = _WORKSPACES.get(({key}))",
        "    if ws is None:",
        f"        ws = _WORKSPACES[({key})] = _pack(",
        "            [  # shape, dtype, first and last step alive, width (transposed below it)",
        *rows,
        "            ],",
        "            [  # the gradients, in order: name, shape, first step writing it",
        *grad_rows,
        "            ],",
        *blocks,
        "        )",
        "    return ws",
    ]) + "\n"
