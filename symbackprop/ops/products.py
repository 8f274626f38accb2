"""Products of tensors: ``sb.einsum(spec, *xs)``.

(The batched matrix product ``a @ b`` is ``matmul``'s, declared in
:mod:`symbackprop.ops.tensor`.) An einsum's VJP is an einsum: for operand ``i`` with
subscripts ``s_i`` and output subscripts ``o``, the gradient is
``einsum("o,s_j,...->s_i", δ, x_j, ...)`` over the other operands ``x_j``, broadcast
along the axes of ``s_i`` that no other subscript names (those the forward einsum
summed out of ``x_i`` alone). How NumPy computes it (``np.einsum`` or ``np.matmul``)
is :mod:`symbackprop.codegen.lowering`'s.
"""

from __future__ import annotations

import sympy as sp
from sympy.printing.precedence import PRECEDENCE

from .registry import OpDef, ShapeMismatch, apply, entries, register

_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def parse_spec(spec, nargs: int | None = None) -> tuple[tuple[str, ...], str]:
    """The input subscripts and the output subscripts of an einsum ``spec``; raises
    :class:`ShapeMismatch` for a spec symbackprop does not take (no ``->``, an ellipsis,
    a repeated letter in one operand or in the output, an output letter no input has, or
    ``nargs`` operands for a spec naming another number).

    Examples
    --------
    >>> parse_spec("bhqd,bhkd->bhqk")
    (('bhqd', 'bhkd'), 'bhqk')
    >>> parse_spec("ij->")
    (('ij',), '')
    """
    if not isinstance(spec, str) or spec.count("->") != 1:
        raise ShapeMismatch(f"einsum spec {spec!r} has no single '->'",
                            "Write the output explicitly, e.g. 'ij,jk->ik'.")
    lhs, out = spec.replace(" ", "").split("->")
    if "." in spec:
        raise ShapeMismatch(f"einsum spec {spec!r} has an ellipsis ('...'), which "
                            "symbackprop does not support",
                            "Name every axis with a letter, e.g. 'bij,bjk->bik'.")
    ins = tuple(lhs.split(","))
    bad = sorted(set(lhs.replace(",", "") + out) - _LETTERS)
    if bad:
        raise ShapeMismatch(f"einsum spec {spec!r} has the characters {''.join(bad)!r}, "
                            "which are not subscript letters",
                            "Use letters a-z and A-Z, commas between operands, one '->'.")
    if nargs is not None and len(ins) != nargs:
        raise ShapeMismatch(f"einsum spec {spec!r} names {len(ins)} operand(s), "
                            f"given {nargs}", "Give one operand per comma-separated term.")
    for s in ins:
        rep = sorted({c for c in s if s.count(c) > 1})
        if rep:
            raise ShapeMismatch(
                f"einsum spec {spec!r} repeats {''.join(rep)!r} in the operand {s!r} "
                "(a diagonal), which symbackprop does not differentiate",
                "Give each axis of an operand its own letter.")
    rep = sorted({c for c in out if out.count(c) > 1})
    if rep:
        raise ShapeMismatch(f"einsum spec {spec!r} repeats {''.join(rep)!r} in the output",
                            "Name each output axis once.")
    unknown = sorted(set(out) - set("".join(ins)))
    if unknown:
        raise ShapeMismatch(f"einsum spec {spec!r} has the output letters "
                            f"{''.join(unknown)!r}, which no operand has",
                            "Every output letter must name an axis of some operand.")
    return ins, out


def _einsum_shape(shapes, attrs, names):
    ins, out = parse_spec(attrs["spec"], len(shapes))
    size: dict[str, object] = {}
    where: dict[str, str] = {}
    for s, shape, name in zip(ins, shapes, names):
        if len(s) != len(shape):
            raise ShapeMismatch(
                f"einsum spec {attrs['spec']!r} gives {name} {len(s)} axes ({s!r}), "
                f"it has {len(shape)}", f"Write {len(shape)} letters for {name}.")
        for c, d in zip(s, shape):
            if c in size and size[c] != d:
                raise ShapeMismatch(
                    f"letter {c!r} is {size[c]} in {where[c]} and {d} in {name}",
                    "An einsum letter names one size in every operand.")
            size.setdefault(c, d)
            where.setdefault(c, name)
    return tuple(size[c] for c in out)


def _einsum_vjp(g, args, out, attrs):
    """For each float operand, the einsum of δ and the other operands with its own
    subscripts as output (broadcast along the letters only it has)."""
    ins, o = parse_spec(attrs["spec"], len(args))
    grads = []
    for i, (s, x) in enumerate(zip(ins, args)):
        if x.dtype != "float":
            grads.append(None)
            continue
        others = [(t, y) for j, (t, y) in enumerate(zip(ins, args)) if j != i]
        seen = set(o).union(*(set(t) for t, _ in others))
        kept = "".join(c for c in s if c in seen)
        if not others and o == kept:
            d = g
        else:
            spec = ",".join([o] + [t for t, _ in others]) + "->" + kept
            d = apply("einsum", g, *[y for _, y in others], spec=spec)
        if kept != s:  # letters summed out of x alone: δ is the same along them
            d = apply("reshape", d, shape=tuple(x.shape[k] if c in seen else 1
                                                 for k, c in enumerate(s)))
            d = apply("broadcast_to", d, shape=tuple(x.shape))
        grads.append(d)
    return grads


def summed_letters(spec: str) -> str:
    """The letters an einsum sums over (in no output), in order of appearance.

    Examples
    --------
    >>> summed_letters("bhqd,bhkd->bhqk"), summed_letters("ij->ji")
    ('d', '')
    """
    ins, out = parse_spec(spec)
    return "".join(dict.fromkeys(c for c in "".join(ins) if c not in out))


def _einsum_notation(texts, attrs) -> str:
    ins, out = parse_spec(attrs["spec"], len(texts))
    summed = summed_letters(attrs["spec"])
    terms = " ".join(f"{t}[{s}]" for t, s in zip(texts, ins))
    return (f"Σ_{summed} " if summed else "") + f"{terms} → [{out}]"


def _operand(p, x, paren: str, calls: bool = False) -> str:
    """An operand's text, in ``paren`` unless it is a name (its subscripts follow it), or
    with ``calls``, a function applied (``softmax(S) @ V``)."""
    text = p._print(x)
    bare = (sp.Symbol, sp.MatrixSymbol) + ((sp.Function,) if calls else ())
    return text if isinstance(x, bare) else paren.format(text)


class EinsumDisplay(sp.Expr):
    """An einsum in formulas, in index notation: ``Σ_d Q_{bhqd} K_{bhkd}``."""

    precedence = PRECEDENCE["Mul"]  # a product: in parentheses when scaled (c·(Σ_d ...))

    def __new__(cls, spec, *args):
        spec = spec if isinstance(spec, sp.Symbol) else sp.Symbol(spec)  # rebuilt from args
        return sp.Expr.__new__(cls, spec, *args)

    def _parts(self):
        spec = self.args[0].name
        ins, _ = parse_spec(spec)
        return summed_letters(spec), list(zip(self.args[1:], ins))

    def _sympystr(self, p):
        summed, terms = self._parts()
        body = " ".join(f"{_operand(p, x, '({})')}_{s}" for x, s in terms)
        return f"Σ_{summed} {body}" if summed else body

    def _latex(self, p):
        summed, terms = self._parts()
        paren = r"\left({}\right)"
        body = r"\, ".join(f"{{{_operand(p, x, paren)}}}_{{{s}}}" for x, s in terms)
        return rf"\sum_{{{summed}}} {body}" if summed else body

    def _pretty(self, p):
        from sympy.printing.pretty.stringpict import prettyForm
        return prettyForm(self._sympystr(p))


class BatchedMatMulDisplay(sp.Expr):
    """A product of stacks of matrices in formulas, ``A @ B`` (matmul's display when an
    argument has more than 2 axes, which formulas show as a name, not a matrix)."""

    precedence = PRECEDENCE["Mul"]

    def _sympystr(self, p):
        return " @ ".join(_operand(p, x, "({})", calls=True) for x in self.args)

    def _latex(self, p):
        return r" \mathbin{@} ".join(_operand(p, x, r"\left({}\right)", calls=True)
                                     for x in self.args)

    def _pretty(self, p):
        from sympy.printing.pretty.stringpict import prettyForm
        return prettyForm(self._sympystr(p))


def _einsum_flops(arg_shapes, out_shape, attrs):
    """One product of the operands for each combination of the letters' values (the
    terms), a multiply-add (2) for each when some letter is summed: 2 m k n for 'ij,jk->ik'."""
    ins, out = parse_spec(attrs["spec"], len(arg_shapes))
    size = {c: int(d) for s, shape in zip(ins, arg_shapes) for c, d in zip(s, shape)}
    terms = entries(size.values())
    summed = bool(set(size) - set(out))
    return terms * max(1, len(ins) - 1) * (2 if summed else 1)


register(OpDef(
    name="einsum", arity=None, attrs={"spec": None}, shape=_einsum_shape,
    vjp=_einsum_vjp, flops=_einsum_flops, notation=_einsum_notation,
    display=lambda args, attrs: EinsumDisplay(attrs["spec"], *args),
    doc="Einstein summation with an explicit output, e.g. 'bhqd,bhkd->bhqk' (no '...', "
        "no repeated letter within one operand)"))


def einsum(spec: str, *xs):
    """``sb.einsum(spec, *xs)``: Einstein summation of the nodes ``xs``, NumPy's notation
    with an explicit output (``'bhqd,bhkd->bhqk'``); its gradients are einsums.

    Examples
    --------
    >>> import symbackprop as sb
    >>> g = sb.Graph(); q = g.input("q", shape=(2, 3, 4)); k = g.input("k", shape=(2, 5, 4))
    >>> sb.einsum("bqd,bkd->bqk", q, k).shape
    (2, 3, 5)
    """
    return apply("einsum", *xs, spec=spec)
