"""Training code as NumPy source: a train step and its optimizers.

:func:`train_step` emits a module with the model's ``forward`` and
``value_and_grad`` (from :func:`~symbackprop.codegen.emit.emit_model`), an
``init_params`` that initialises the parameters from a seed, the optimizer as
two separate functions (``init_state(params)`` and ``update(params, grads,
state)``), and ``train_step(params, state, **batch)``, which runs forward,
backward and the update in one call. Backprop computes the gradients, the
optimizer uses them: they stay separate functions in the source.

:func:`~symbackprop.codegen.script.training_script` builds a complete training
program around the same module.

Optimizers (one declaration each in :data:`OPTIMIZERS`):

* ``sgd``: ``w <- w - lr * g``;
* ``momentum`` (PyTorch's convention): ``v <- momentum * v + g; w <- w - lr * v``;
* ``adam`` (Kingma & Ba): ``m <- b1 m + (1 - b1) g; v <- b2 v + (1 - b2) g**2;
  w <- w - lr * m_hat / (sqrt(v_hat) + eps)`` with the bias corrections
  ``m_hat = m / (1 - b1**t)``, ``v_hat = v / (1 - b2**t)``.

Parameters are updated in place (the arrays of a dict), so a step copies no
parameter.
"""

from __future__ import annotations

import itertools
import math
import numbers
import re
import textwrap
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache

from .. import __version__ as _version
from ..autodiff import check_of_wrt
from ..errors import CodegenError, GraphError
from ..graph import Graph, fmt_shape
from ..ops import registry
from ..optimize import resolve as resolve_passes
from .emit import (
    Compiled,
    Emitter,
    Function,
    describe,
    emit_model,
    load_source,
    prepare,
    render_function,
    safe_text,
)
from .plan import PACK, plan_function, workspace_source

# -- optimizers ------------------------------------------------------------------------


@dataclass(frozen=True)
class Optimizer:
    """One optimizer: its hyper-parameters (``lr`` first) and its two functions' source."""

    name: str
    title: str
    hyper: dict
    rule: str
    init_state: str
    update: str
    checks: dict = field(default_factory=dict)  # hyper -> (test, what is expected)
    flat_update: str = ""  # the same rule on train_step's flat buffers, with no temporaries
    scaled_update: str = ""  # the flat rule for gradients that arrive multiplied by lr


_POSITIVE = (lambda v: v > 0, "a number > 0")
_FRACTION = (lambda v: 0 <= v < 1, "a number in [0, 1)")

_SGD_INIT = '''def init_state(params):
    """SGD keeps no state."""
    return {}
'''
_SGD_UPDATE = '''def update(params, grads, state, lr=LR):
    """One SGD step, in place: w <- w - lr * dL/dw for every parameter with a gradient."""
    for name, grad in grads.items():
        params[name] -= lr * grad
'''
_MOMENTUM_INIT = '''def init_state(params):
    """Momentum state: a velocity v per parameter, zero at the start."""
    return {"v": flat_views({name: np.zeros_like(w) for name, w in params.items()})}
'''
_MOMENTUM_UPDATE = '''def update(params, grads, state, lr=LR, momentum=MOMENTUM):
    """One momentum step, in place (PyTorch's convention):
    v <- momentum * v + dL/dw, then w <- w - lr * v."""
    for name, grad in grads.items():
        v = state["v"][name]
        v *= momentum
        v += grad
        params[name] -= lr * v
'''
_ADAM_INIT = '''def init_state(params):
    """Adam state: the step count t and, per parameter, the moment estimates m and v."""
    return {
        "t": 0,
        "m": flat_views({name: np.zeros_like(w) for name, w in params.items()}),
        "v": flat_views({name: np.zeros_like(w) for name, w in params.items()}),
    }
'''
_ADAM_UPDATE = '''def update(params, grads, state, lr=LR, beta1=BETA1, beta2=BETA2, eps=EPS):
    """One Adam step, in place (Kingma & Ba, 2015), with g = dL/dw:
    m <- beta1 * m + (1 - beta1) * g, v <- beta2 * v + (1 - beta2) * g**2,
    w <- w - lr * m_hat / (sqrt(v_hat) + eps) where m_hat = m / (1 - beta1**t)
    and v_hat = v / (1 - beta2**t) undo the bias of the zero start."""
    state["t"] += 1
    t = state["t"]
    for name, grad in grads.items():
        m, v = state["m"][name], state["v"][name]
        m *= beta1
        m += (1 - beta1) * grad
        v *= beta2
        v += (1 - beta2) * grad * grad
        m_hat = m / (1 - beta1**t)
        v_hat = v / (1 - beta2**t)
        params[name] -= lr * m_hat / (np.sqrt(v_hat) + eps)
'''

# The fast path: the same rules on the flat buffers of train_step (see _flat), written
# in place. The gradient buffer (part of the step's workspace) and Adam's flat["tmp"] are
# scratch; the arithmetic is the same, in the same order, as update() above.
_SGD_FLAT = '''def _update_flat(flat, g, state, lr):
    """update() on the flat buffers (g: the gradients), in place with no temporary:
    w <- w - lr * g."""
    g *= lr
    flat["P"] -= g
'''
_SGD_SCALED = '''def _update_flat(flat, g, state, lr):
    """update() on the flat buffers, in place: w <- w - g, where g already holds
    lr * dL/dw (train_step passes lr as the seed of backprop, which is linear in it)."""
    flat["P"] -= g
'''
_MOMENTUM_FLAT = '''def _update_flat(flat, g, state, lr, momentum=MOMENTUM):
    """update() on the flat buffers (g: the gradients), in place:
    v <- momentum * v + g; w <- w - lr * v."""
    v = flat["S"]["v"]
    v *= momentum
    v += g
    np.multiply(v, lr, out=g)
    flat["P"] -= g
'''
_ADAM_FLAT = '''def _update_flat(flat, g, state, lr, beta1=BETA1, beta2=BETA2, eps=EPS):
    """update() on the flat buffers (g: the gradients), in place, the same arithmetic in
    the same order."""
    state["t"] += 1
    t = state["t"]
    m, v, tmp = flat["S"]["m"], flat["S"]["v"], flat.get("tmp")
    if tmp is None:  # scratch for the moments, made once
        tmp = flat["tmp"] = np.empty_like(g)
    m *= beta1
    np.multiply(g, 1 - beta1, out=tmp)
    m += tmp
    v *= beta2
    np.multiply(g, 1 - beta2, out=tmp)
    tmp *= g
    v += tmp
    np.divide(v, 1 - beta2**t, out=tmp)  # v_hat
    np.sqrt(tmp, out=tmp)
    tmp += eps
    np.divide(m, 1 - beta1**t, out=g)  # m_hat
    g *= lr
    g /= tmp
    flat["P"] -= g
'''

OPTIMIZERS = {
    "sgd": Optimizer("sgd", "SGD", {"lr": 0.01}, "w <- w - lr * dL/dw", _SGD_INIT, _SGD_UPDATE,
                     {"lr": _POSITIVE}, _SGD_FLAT, _SGD_SCALED),
    "momentum": Optimizer("momentum", "SGD with momentum", {"lr": 0.01, "momentum": 0.9},
                          "v <- momentum * v + dL/dw; w <- w - lr * v",
                          _MOMENTUM_INIT, _MOMENTUM_UPDATE,
                          {"lr": _POSITIVE, "momentum": _FRACTION}, _MOMENTUM_FLAT),
    "adam": Optimizer("adam", "Adam", {"lr": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8},
                      "bias-corrected moment estimates m, v; w <- w - lr * m_hat / "
                      "(sqrt(v_hat) + eps)", _ADAM_INIT, _ADAM_UPDATE,
                      {"lr": _POSITIVE, "beta1": _FRACTION, "beta2": _FRACTION,
                       "eps": _POSITIVE}, _ADAM_FLAT),
}


def resolve_optimizer(optimizer: str, lr=None, hyper: dict | None = None) -> tuple:
    """The :class:`Optimizer` called ``optimizer`` and its hyper-parameters, defaults
    filled in; raises ``ValueError`` for an unknown name or a bad value."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer {optimizer!r} is not one of {', '.join(OPTIMIZERS)}.")
    opt = OPTIMIZERS[optimizer]
    given = dict(hyper or {})
    if lr is not None:
        given["lr"] = lr
    unknown = sorted(set(given) - set(opt.hyper))
    if unknown:
        raise ValueError(f"optimizer {optimizer!r} has no hyper-parameter {unknown[0]!r}; "
                         f"it takes {', '.join(opt.hyper)}.")
    values = {}
    for k, default in opt.hyper.items():
        v = given.get(k, default)
        test, expected = opt.checks.get(k, (lambda v: True, "a number"))
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) \
                or not test(v):
            raise ValueError(f"{optimizer} {k}={v!r}; expected {expected}.")
        values[k] = float(v)
    return opt, values


def _hyper_text(hyper: dict) -> str:
    return ", ".join(f"{k} {v!r}" for k, v in hyper.items())


def _constants(hyper: dict) -> list[str]:
    return [f"{k.upper()} = {v!r}" for k, v in hyper.items()]


# -- reading the graph -------------------------------------------------------------------


def _formula(g: Graph, n: str, top: bool = True, budget: list | None = None) -> str:
    """``L = mean(sub(softplus(logits), mul(logits, y)))``: unnamed nodes expanded."""
    budget = [12] if budget is None else budget
    d = g.nx.nodes[n]
    if not top and (d["op"] in registry.LEAVES or not d.get("auto") or budget[0] <= 0):
        if d["op"] == "const" and d["shape"] == ():
            return str(d["value"])
        return n
    budget[0] -= 1
    args = ", ".join(_formula(g, a, False, budget) for a in g.args(n))
    return f"{d['op']}({args})"


def _params_of(g: Graph, of, wrt) -> tuple[str, list[str]]:
    of, wrt = check_of_wrt(g, of, wrt)
    if not g.nodes("param"):
        raise CodegenError(f"graph {g.nx.graph.get('name')!r} has no parameters to train. "
                           "Declare them with g.param().")
    others = [w for w in wrt if g.role(w) != "param"]
    if others:
        raise CodegenError(f"wrt {others[0]!r} is an {g.role(others[0])}, not a parameter; a "
                           "training step updates parameters only. Declare it with g.param().")
    for p in g.nodes("param"):
        bad = [d for d in g.nx.nodes[p]["shape"] if not isinstance(d, int)]
        if bad:
            raise CodegenError(f"parameter {p!r} has shape {fmt_shape(g.nx.nodes[p]['shape'])}; "
                               "a trained parameter needs a fixed size in every axis.")
    return of, wrt


def _rectifier_gain2(op: str, attrs: dict) -> float | None:
    """For an activation that is ``x`` for ``x > 0`` and ``a*x`` for ``x < 0`` (relu:
    ``a = 0``), He's ``gain**2 = 2 / (1 + a**2)``; ``None`` for any other op. Decided
    from the op's SymPy expression, never from its name."""
    opdef = registry.get(op)
    if not opdef.elementwise or opdef.expr is None:
        return None
    try:
        syms, e = opdef.expr(attrs)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return _expr_gain2(e, syms[0]) if len(syms) == 1 else None


@lru_cache(maxsize=256)  # every layer asks for the same activation: evaluate it once
def _expr_gain2(e, x) -> float | None:
    """:func:`_rectifier_gain2` for the activation ``e`` of the symbol ``x``."""
    try:
        f = {v: complex(e.subs(x, v).evalf()) for v in (0.5, 1, 2, -0.5, -1, -2)}
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if any(abs(z.imag) > 1e-12 for z in f.values()):
        return None
    f = {k: z.real for k, z in f.items()}
    a = -f[-1]
    ok = (all(abs(f[v] - v) < 1e-12 for v in (0.5, 1, 2))
          and abs(f[-2] - 2 * f[-1]) < 1e-12 and abs(f[-0.5] - 0.5 * f[-1]) < 1e-12
          and 0 <= a < 1)
    return 2 / (1 + a * a) if ok else None


def _activation_after(g: Graph, n: str) -> str | None:
    """The activation a layer output ``n`` feeds: follow its first consumer past
    two-argument elementwise nodes whose other argument is a parameter or a
    constant (adding a bias) to the first one-argument elementwise op."""
    seen = 0
    while seen < 64:
        seen += 1
        uses = g.consumers(n)
        if not uses:
            return None
        c = uses[0][0]
        op = g.nx.nodes[c]["op"]
        opdef = registry.get(op)
        if not opdef.elementwise:
            return None
        args = g.args(c)
        if len(args) == 1:
            return c
        others = [a for a in args if a != n]
        if len(args) == 2 and len(others) == 1 and g.role(others[0]) in ("param", "const"):
            n = c
            continue
        return None
    return None


@dataclass
class _Init:
    """How one parameter starts: ``kind`` is "he", "xavier" or "zeros"."""

    name: str
    shape: tuple
    kind: str
    fan_in: int = 0
    fan_out: int = 0
    gain2: float = 2.0
    note: str = ""


def plan_init(g: Graph) -> list[_Init]:
    """Initialisation of every parameter: a weight with two or more axes gets He
    normal when the layer it computes feeds a rectifier (relu), Xavier/Glorot
    uniform otherwise; vectors and scalars (biases) start at zero. The fans come
    from the two-argument structural op that uses the weight (``h @ W``: W is
    (fan_in, fan_out); ``W @ h``: (fan_out, fan_in))."""
    out = []
    for p in g.nodes("param"):
        shape = tuple(g.nx.nodes[p]["shape"])
        if len(shape) < 2:
            out.append(_Init(p, shape, "zeros"))
            continue
        fan_in, fan_out = shape[0], math.prod(shape[1:])
        layer = None
        for c, pos in g.consumers(p):  # the layer: a structural op such as h @ W
            if not registry.get(g.nx.nodes[c]["op"]).elementwise and len(shape) == 2 \
                    and len(g.args(c)) == 2:
                fan_in, fan_out = (shape[1], shape[0]) if pos == 0 else shape
                layer = c
                break
        act = _activation_after(g, layer) if layer else None
        gain2 = _rectifier_gain2(g.nx.nodes[act]["op"], g.nx.nodes[act]["attrs"]) if act else None
        what = f"feeds {g.nx.nodes[act]['op']} at {act}" if act else "feeds no activation"
        if gain2 is not None:
            out.append(_Init(p, shape, "he", fan_in, fan_out, gain2, what))
        else:
            out.append(_Init(p, shape, "xavier", fan_in, fan_out, note=what))
    return out


_HE = '''def he_normal(rng, shape, fan_in, gain2=2.0):
    """He (Kaiming) normal for rectifiers: N(0, gain2 / fan_in); gain2 = 2 for relu."""
    return rng.normal(0.0, np.sqrt(gain2 / fan_in), size=shape).astype(DTYPE)
'''
_XAVIER = '''def xavier_uniform(rng, shape, fan_in, fan_out):
    """Xavier/Glorot uniform: U(-a, a) with a = sqrt(6 / (fan_in + fan_out))."""
    a = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-a, a, size=shape).astype(DTYPE)
'''


def _init_blocks(plan: list[_Init]) -> list[str]:
    kinds = {i.kind for i in plan}
    blocks = ([_HE] if "he" in kinds else []) + ([_XAVIER] if "xavier" in kinds else [])
    lines = ["def init_params(rng=0):",
             '    """Initial parameters from a seed (or a np.random.Generator): He normal for',
             "    weights feeding a rectifier, Xavier/Glorot uniform for the other weights,",
             '    zero biases. Draws in the order below: a seed always gives the same values."""',
             "    rng = np.random.default_rng(rng)",
             "    return flat_views({"]
    for i in plan:
        key = repr(i.name)
        if i.kind == "zeros":
            lines.append(f"        {key}: np.zeros({i.shape!r}, dtype=DTYPE),")
        elif i.kind == "he":
            gain = "" if i.gain2 == 2.0 else f", gain2={i.gain2!r}"
            lines.append(f"        {key}: he_normal(rng, {i.shape!r}, fan_in={i.fan_in}{gain}),"
                         f"  # {safe_text(i.note)}")
        else:
            lines.append(f"        {key}: xavier_uniform(rng, {i.shape!r}, fan_in={i.fan_in}, "
                         f"fan_out={i.fan_out}),  # {safe_text(i.note)}")
    lines.append("    })")
    return blocks + ["\n".join(lines) + "\n"]


def _init_text(plan: list[_Init]) -> str:
    parts = []
    for i in plan:
        if i.kind == "he":
            parts.append(f"{i.name} He normal ({i.note})")
        elif i.kind == "xavier":
            parts.append(f"{i.name} Xavier uniform ({i.note})")
    zeros = [i.name for i in plan if i.kind == "zeros"]
    if zeros:
        parts.append(f"{', '.join(zeros)} zero")
    return "; ".join(parts)



@lru_cache(maxsize=64)  # random_inputs asks again for every test example of a network
def _init_module(source: str):
    return load_source(source, "symbackprop_init_params")


def initial_params(g: Graph, rng=0, dtype: str = "float64") -> dict:
    """The parameters that ``init_params(rng)`` of ``g``'s generated training code returns.

    Drawn by that same code: the ``init_params`` function (with its ``he_normal``,
    ``xavier_uniform`` and ``flat_views`` helpers) that :func:`train_step` and
    :func:`~symbackprop.codegen.script.training_script` write for ``g`` is loaded and
    called, so the rule (:func:`plan_init`) and the draws exist once, and a seed gives
    the same arrays here, in ``sb.compile(g, optimizer=...).init_params(seed)`` and in
    a training script run with ``--seed``.

    Parameters
    ----------
    g : Graph
        The network; every parameter needs a fixed size in every axis.
    rng : int or numpy.random.Generator
        The seed (or the generator to draw from).
    dtype : {"float64", "float32"}

    Returns
    -------
    dict
        Parameter name -> array (views of one flat buffer, as ``init_params`` returns
        them), in the order of ``g.nodes("param")``: He normal weights where the layer
        feeds a rectifier, Xavier/Glorot uniform for the other weights, zero biases.

    Raises
    ------
    CodegenError
        For a parameter with a size name (such as ``N``) in its shape.

    Examples
    --------
    >>> from symbackprop.codegen.train import initial_params
    >>> g = sb.models.mlp([4, 3, 2])
    >>> p = initial_params(g, 0)
    >>> q = sb.compile(g, optimizer="sgd").init_params(0)
    >>> all(np.array_equal(p[k], q[k]) for k in q), p["b1"].tolist()
    (True, [0.0, 0.0, 0.0])
    """
    if dtype not in ("float64", "float32"):
        raise ValueError(f"dtype {dtype!r}: expected 'float64' or 'float32'.")
    for p in g.nodes("param"):
        shape = g.nx.nodes[p]["shape"]
        if not all(isinstance(d, int) for d in shape):
            raise CodegenError(f"parameter {p!r} has shape {fmt_shape(shape)}; initialising it "
                               "needs a fixed size in every axis.")
    source = "\n\n".join(["import numpy as np", f"DTYPE = np.{dtype}", _FLAT_VIEWS,
                           *_init_blocks(plan_init(g))])
    return _init_module(source).init_params(rng)


# -- the training step -------------------------------------------------------------------


def _call_lines(lhs: str, fname: str, args: list[str], indent: int = 4) -> list[str]:
    line = f"{lhs}{fname}({', '.join(args)})"
    if indent + len(line) <= 96:
        return [line]
    return [f"{lhs}{fname}("] + [f"    {a}," for a in args] + [")"]


@dataclass
class _Model:
    """The emitted model functions and what the training code needs to call them."""

    g: Graph
    of: str
    wrt: list
    em: Emitter
    functions: list
    inputs: list  # graph names of the data inputs of value_and_grad, in its order
    opt: Optimizer
    hyper: dict
    plan: list
    dtype: str
    fast: Function | None = None  # loss_and_grads_into: the planned step, if optimizing
    pool: object = None  # its workspace buffers
    grads: list = field(default_factory=list)  # the gradient node of each wrt, in order

    def args(self, fn: Function, data: dict | None = None, fixed: dict | None = None) -> list[str]:
        """Arguments calling an emitted function: ``params['W1']`` for parameters,
        ``data[name]`` (default: the input's own code) for inputs, ``fixed[code]`` for the
        parameters of ``fn`` named there."""
        names = {code: n for n, code in self.em.namer.names.items()}
        out = []
        for code in fn.params:
            if "=" in code:  # scale=1.0: passed by name
                continue
            if code in (fixed or {}):
                out.append(fixed[code])
                continue
            n = names[code]
            if self.em.j.role(n) == "param":
                out.append(f"params[{n!r}]")
            else:
                out.append((data or {}).get(n, code))
        return out


_STEP_LOCALS = {"params", "state", "lr", "loss", "grads", "value_and_grad", "check_finite",
                "update", "float", "flat", "G", "blocks", "math"}


def _model(g: Graph, of, wrt, optimizer, lr, hyper, dtype, optimize, extra_outputs=()) -> _Model:
    opt, values = resolve_optimizer(optimizer, lr, hyper)
    of, wrt = _params_of(g, of, wrt)
    g2 = g  # prepare() and differentiate() leave it unchanged: copy it only to add outputs
    if any(n not in g.outputs for n in extra_outputs):
        g2 = g.copy()
        for n in extra_outputs:
            if n not in g2.outputs:
                g2.nx.graph["outputs"].append(n)
    adj = prepare(g2, of, wrt, optimize)
    _, em, fns = emit_model(adj, dtype, optimize)
    vg = fns[1]
    fast, pool = None, None
    if resolve_passes(optimize):  # memory planning goes with the other optimizations
        grads = [adj.adjoint[w] for w in wrt]
        # consecutive in the flat buffers (TRAINED order), each with a gradient of its own:
        # a layer h @ W + b may then carry its bias inside the product
        uses = Counter(grads)
        own = {w for w, n in zip(wrt, grads) if uses[n] == 1}
        pairs = [(w, adj.adjoint[w], b, adj.adjoint[b]) for w, b in itertools.pairwise(wrt)
                 if w in own and b in own]
        fast, pool = plan_function(
            em, "loss_and_grads_into", [of, *grads], grads,
            "{head}\n\n    The same computation as value_and_grad, with every intermediate array in a "
            "buffer of\n    _workspace() (one arena per batch size, made once) and NumPy calls "
            "writing into it\n    (out=). Every array passed must be of DTYPE (train_step converts the "
            "data), the gradient\n    arrays C-contiguous.",
            of=of, scalable=opt.scaled_update != "", pairs=pairs)
        into = {em.namer(n) for n in grads} | {gb for *_, gb in pool.folds}
        nm = em.namer
        blocks = {gb: f"{gb} = [{nm(adj.adjoint[w])}; {nm(adj.adjoint[b])}]"
                  for w, b, _, gb in pool.folds}
        head = (f"Loss {of}; writes its gradients into "
                + ", ".join(blocks.get(p, p) for p in fast.params if p in into) + ".")
        if pool.folds:
            w, b, block, _ = pool.folds[0]
            head += (f" {block} = [{nm(w)}; {nm(b)}] is {nm(w)} with {nm(b)} as one more row "
                     "(the bias rides in the product)"
                     + (", and so for the other blocks" if len(pool.folds) > 1 else "")
                     + ": views of the flat buffers.")
        opening = '    """'  # the first line starts after the docstring's quotes
        head = re.sub(r"\[[^\[\]]*\]", lambda m: m.group().replace(" ", "\0"), safe_text(head))
        fast.doc = fast.doc.replace("{head}", textwrap.fill(  # never inside [dW2; db2]
            head, 88, initial_indent=opening, subsequent_indent="    ",
            break_on_hyphens=False)[len(opening):].replace("\0", " "))
        if pool.scaled:
            fast.doc += ("\n\n    Every gradient comes out multiplied by scale (backprop is "
                         "linear in its seed):\n    train_step passes lr, so that SGD's update "
                         "is one subtraction.")
        fast.ret = em.code(of)
        fns = [*fns, fast]
    names = {code: n for n, code in em.namer.names.items()}
    inputs = [names[c] for c in vg.params if em.j.role(names[c]) == "input"]
    clash = [em.namer(n) for n in inputs if em.namer(n) in _STEP_LOCALS]
    if clash:
        raise CodegenError(f"input {clash[0]!r} has the name of a variable of the training "
                           "step; rename the input (e.g. g.rename).")
    return _Model(g, of, wrt, em, fns, inputs, opt, values, plan_init(g), dtype, fast, pool,
                  [adj.adjoint[w] for w in wrt])


_FLAT_VIEWS = '''def flat_views(arrays):
    """The arrays copied into one flat DTYPE buffer, returned as views of it (same keys
    and shapes). An optimizer rule then updates every parameter in one NumPy call."""
    flat = np.empty(sum(np.size(a) for a in arrays.values()), dtype=DTYPE)
    views, start = {}, 0
    for name, a in arrays.items():
        views[name] = flat[start:start + np.size(a)].reshape(np.shape(a))
        views[name][...] = a
        start += np.size(a)
    return views
'''

# train_step's fast path: parameters, gradients and optimizer state each live in one flat
# buffer (init_params and init_state already make them so; other arrays are copied into
# one on the first step, and params/state then hold views of it).
_FLAT = '''_FLAT = {}


def _flat_base(arrays):
    """The flat buffer that the arrays are consecutive views of, in order, or None."""
    first = next(iter(arrays.values()))
    base = getattr(first, "base", None)
    if not isinstance(base, np.ndarray) or base.ndim != 1 or base.dtype != DTYPE \\
            or base.size != sum(np.size(a) for a in arrays.values()):
        return None
    address = base.__array_interface__["data"][0]
    for a in arrays.values():
        if getattr(a, "base", None) is not base or not a.flags.c_contiguous \\
                or a.__array_interface__["data"][0] != address:
            return None
        address += a.nbytes
    return base


def _flat(params, state):
    """The trained parameters and the optimizer state as views of flat buffers; made on
    the first call, remade only when other arrays are passed."""
    f = _FLAT.get("f")
    boxes = [params, *[v for v in state.values() if type(v) is dict]] if state else [params]
    # the same dicts holding the same arrays (ids stay unique: f keeps the arrays alive);
    # this runs every step, so it touches as few objects as it can
    ids = [id(a) for box in boxes for a in map(box.__getitem__, TRAINED)]
    if f is not None and f["params"] is params and f["state"] is state and ids == f["ids"]:
        return f
    for box in boxes:  # arrays that are not yet views of one flat buffer are copied into one
        if _flat_base({name: box[name] for name in TRAINED}) is None:
            box.update(flat_views({name: box[name] for name in TRAINED}))
    f = _FLAT["f"] = {
        "params": params, "state": state,
        "views": [[box[name] for name in TRAINED] for box in boxes],
        "ids": [id(box[name]) for box in boxes for name in TRAINED],
        "P": _flat_base({name: params[name] for name in TRAINED}),
        "S": {k: _flat_base({name: v[name] for name in TRAINED})
              for k, v in state.items() if type(v) is dict},
    }
{blocks}    return f
'''
# A layer's weight (K, M) and bias (M,) lie one after the other in P: one (K + 1, M) view.
_FLAT_BLOCKS = '''    start, at = 0, {}
    for name in TRAINED:
        at[name], start = start, start + np.size(params[name])
    for w, b in FOLDED:  # [W; b]: the bias rides in the product [h, 1] @ [W; b]
        f[w, b] = f["P"][at[w]:at[b] + np.size(params[b])].reshape(-1, np.size(params[b]))
'''


_CHECK = '''def check_finite(loss, grads):
    """Raise FloatingPointError if the loss or a gradient holds nan or inf."""
    if not np.isfinite(loss):
        raise FloatingPointError(f"the loss is {float(loss)}")
    for name, grad in grads.items():
        bad = np.size(grad) - np.count_nonzero(np.isfinite(grad))
        if bad:
            raise FloatingPointError(f"the gradient dL/d{name} has {bad} nan or inf entries")
'''


def _train_step_block(m: _Model) -> str:
    em = m.em
    data = [em.namer(n) for n in m.inputs]
    batch = ", ".join(data) or "no data"
    lines = [f"def train_step(params, state, {', '.join(data + ['lr=LR'])}):",
             f'    """One training step on the minibatch ({batch}): forward and backward pass',
             (f"    ({m.fast.name if m.fast else 'value_and_grad'}), then one {m.opt.title} "
              "update (update). params and state"),
             "    change in place. Returns the loss. Raises FloatingPointError, before changing",
             '    anything, when the loss or a gradient is nan or inf."""']
    if m.fast is None:
        lines += ["    " + ln for ln in _call_lines("loss, grads = ", "value_and_grad",
                                                      m.args(m.functions[1]))]
        lines += ["    check_finite(loss, grads)", "    update(params, grads, state, lr=lr)",
                  "    return float(loss)"]
        return "\n".join(lines) + "\n"
    # loss_and_grads_into takes the leaves, then one gradient array per gradient node; two
    # parameters can share one (both arguments of w0 + w1): the second gets a copy
    first = {}
    for w, n in zip(m.wrt, m.grads):
        first.setdefault(n, w)
    fixed = {em.namer(n): f"grads[{w!r}]" for n, w in first.items()}
    for w, b, block, grad_block in m.pool.folds:  # [W; b] and [dW; db]: made once
        fixed[block], fixed[grad_block] = f"flat[{w!r}, {b!r}]", f"blocks[{w!r}, {b!r}]"
    args = m.args(m.fast, fixed=fixed)
    ws = f"_workspace({', '.join(m.pool.sizes)})"
    # the data as arrays of DTYPE, as value_and_grad takes them (a float64 batch for a
    # float32 step, or a list): loss_and_grads_into's products need that, np.dot above all
    lines += ["    " + ln for ln in em.as_arrays(m.inputs)]
    lines += ["    flat = _flat(params, state)"]
    lines += ["    " + ln for ln in em.bind_sizes("train_step", m.inputs, [ws])]
    blocks = "blocks" if m.pool.folds else "_"
    lines += [f"    _, G, grads, {blocks} = {ws}  # the gradients: views of G, in the workspace"]
    if m.pool.scaled:  # the gradients come out as lr * dL/dw
        args.append("scale=lr")
    lines += ["    " + ln for ln in _call_lines("loss = ", m.fast.name, args)]
    lines += [f"    grads[{w!r}][...] = grads[{first[n]!r}]"
              for w, n in zip(m.wrt, m.grads) if first[n] != w]
    # A sum of squares is finite only if every term is (squares cannot cancel an inf): one
    # BLAS call (3x faster than G.sum()) screens every gradient; check_finite, exact, runs
    # only when the screen trips (a square can overflow: it then raises only for nan or inf).
    lines += ["    if not math.isfinite(loss + np.dot(G, G)):",
              "        check_finite(loss, grads)  # says which gradient",
              "    _update_flat(flat, G, state, lr)",
              "    return float(loss)"]
    return "\n".join(lines) + "\n"


def _wrap(*lines: str) -> str:
    """Docstring lines wrapped at 88 columns, continuations indented."""
    def fill(ln):  # never break inside parentheses: (3, 2) stays on one line
        ln = re.sub(r"\([^()]*\)", lambda m: m.group().replace(" ", "\0"), ln)
        return textwrap.fill(ln, 88, subsequent_indent="    ", break_long_words=False,
                             break_on_hyphens=False).replace("\0", " ")
    return "".join(fill(ln) + "\n" for ln in lines)


def _step_doc(m: _Model, what: str) -> str:
    g = m.g
    return f"{what}\n\n" + _wrap(
        f"Network {safe_text(describe(g, shapes=True))}.",
        f"Loss: {safe_text(m.of)} = {safe_text(_formula(g, m.of))}.",
        f"Optimizer: {m.opt.title} ({m.opt.rule}); {_hyper_text(m.hyper)}.",
        f"Initialisation: {safe_text(_init_text(m.plan))}.",
        f"Trained parameters: {', '.join(map(safe_text, m.wrt))}; dtype {m.dtype}.") + "\n"


def _module(doc: str, m: _Model, functions: list, blocks: list, imports=(),
            constants=()) -> str:
    """Docstring, imports, DTYPE and constants, helpers, functions, blocks (the layout of
    :func:`~symbackprop.codegen.emit.render_module`, with standard-library imports)."""
    em = m.em
    head = [f'"""{doc}\n"""']
    imports = {*imports, *(("math",) if m.fast is not None else ())}  # train_step uses math
    if imports:
        head.append("\n".join(f"import {i}" for i in sorted(imports)))
    head += ["import numpy as np", "\n".join(
        [f"DTYPE = np.{em.dtype}"] + sorted(set(em.constants)) + list(constants))]
    body = ([em.helpers[k] for k in sorted(em.helpers)]
            + [render_function(f) for f in functions] + list(blocks))
    return "\n\n".join(head) + "\n\n\n" + "\n\n\n".join(b.strip("\n") for b in body) + "\n"


def _step_blocks(m: _Model) -> list[str]:
    flat = []
    if m.fast is not None:
        # the flat gradient buffer, in the order of TRAINED; a gradient node shared by two
        # parameters is written by loss_and_grads_into for the first, copied for the other
        first, layout = set(), []
        for w, n in zip(m.wrt, m.grads):
            layout.append((w, tuple(m.g.nx.nodes[w]["shape"]),
                           m.em.namer(n) if n not in first else None))
            first.add(n)
        consts = f"TRAINED = {tuple(m.wrt)!r}  # the parameters train_step updates\n"
        if m.pool.folds:
            consts += (f"FOLDED = {tuple((w, b) for w, b, *_ in m.pool.folds)!r}  # layers with "
                       "the bias in the product\n")
        flat = [consts + _FLAT.replace("{blocks}", _FLAT_BLOCKS if m.pool.folds else ""),
                m.opt.scaled_update if m.pool.scaled else m.opt.flat_update, PACK,
                workspace_source(m.em, m.pool, layout)]
    return ([_FLAT_VIEWS] + _init_blocks(m.plan) + [m.opt.init_state, m.opt.update, _CHECK]
            + flat + [_train_step_block(m)])


def train_step(g: Graph, of: str | None = None, optimizer: str = "sgd", lr: float | None = None,
               wrt=None, dtype: str = "float64", optimize=True, **hyper) -> str:
    """NumPy source of a training step: gradients, optimizer and update, as separate functions.

    Parameters
    ----------
    g : Graph
        The network; its loss is a mean over the minibatch.
    of : str, optional
        The scalar loss (default: the last scalar output).
    optimizer : {"sgd", "momentum", "adam"}
        ``sgd``: ``w <- w - lr * g``. ``momentum`` (PyTorch's convention):
        ``v <- momentum * v + g; w <- w - lr * v``. ``adam``: bias-corrected
        first and second moments (``beta1``, ``beta2``, ``eps``).
    lr : float, optional
        Learning rate (default 0.01 for sgd and momentum, 0.001 for adam).
    wrt : list of str, optional
        Parameters to train (default: all); the others stay fixed.
    dtype : {"float64", "float32"}
    optimize : bool, str or list of str
        Optimization passes, as for :func:`~symbackprop.codegen.emit.numpy_source`.
    **hyper
        ``momentum=0.9``; ``beta1=0.9, beta2=0.999, eps=1e-8``.

    Returns
    -------
    str
        A module importing only NumPy, with ``forward``, ``value_and_grad``,
        ``init_params(rng=0)``, ``init_state(params)``,
        ``update(params, grads, state, lr=LR, ...)``, ``check_finite(loss, grads)``
        and ``train_step(params, state, <inputs>, lr=LR)``. ``params`` is a dict
        of arrays keyed by parameter name, updated in place; ``train_step``
        returns the loss and raises ``FloatingPointError``, changing nothing, when
        the loss or a gradient is nan or inf. Make it live with
        ``sb.compile(g, optimizer=..., lr=...)``.

    Raises
    ------
    ValueError
        For an unknown optimizer or hyper-parameter, or a bad value.
    CodegenError
        When the graph has no parameters or ``wrt`` names a non-parameter.

    Examples
    --------
    >>> src = sb.train_step(sb.parse("L = (w*x - y)**2", params=["w"]), optimizer="sgd", lr=0.1)
    >>> print(src[src.index("def update"):src.index("def check_finite")].strip())
    def update(params, grads, state, lr=LR):
        \"\"\"One SGD step, in place: w <- w - lr * dL/dw for every parameter with a gradient.\"\"\"
        for name, grad in grads.items():
            params[name] -= lr * grad

    See Also
    --------
    symbackprop.training_script : the same code inside a complete training program.
    symbackprop.compile : ``optimizer=`` loads it as a :class:`CompiledTrainStep`.
    """
    return _step_source(_model(g, of, wrt, optimizer, lr, hyper, dtype, optimize))


def _step_source(m: _Model) -> str:
    g = m.g
    doc = _step_doc(m, f"Training step for the {safe_text(g.nx.graph.get('name', 'network'))} "
                       f"network with {m.opt.title}.")
    doc += (f"Generated by symbackprop {_version} (sb.train_step). Gradients (value_and_grad) "
            "and the optimizer\n(init_state, update) are separate functions; train_step runs "
            "both. Needs only NumPy.\nDo not edit: regenerate instead.")
    return _module(doc, m, m.functions, _step_blocks(m), constants=_constants(m.hyper))


class CompiledTrainStep(Compiled):
    """A training step loaded as a live module (made by ``sb.compile(g, optimizer=...)``).

    Besides ``forward`` and ``value_and_grad`` it has ``init_params(seed)``,
    ``init_state(params)``, ``update(params, grads, state)`` and
    ``train_step(params, state, **batch)``; ``inputs`` lists the batch arrays.

    Examples
    --------
    >>> g = sb.parse("L = (w*x - y)**2", params=["w"])
    >>> step = sb.compile(g, optimizer="sgd", lr=0.1)
    >>> params = {"w": np.array(2.0)}
    >>> state = step.init_state(params)
    >>> step.train_step(params, state, x=3.0, y=10.0)  # the loss before the step
    16.0
    >>> float(params["w"])  # 2 - 0.1 * (-24)
    4.4
    """

    def __init__(self, source: str, name: str, inputs: list):
        super().__init__(source, name)
        self.inputs = list(inputs)

    def init_params(self, seed=0) -> dict:
        """Fresh parameters (He/Xavier weights, zero biases) from a seed."""
        return self.module.init_params(seed)

    def init_state(self, params: dict) -> dict:
        """The optimizer's initial state for ``params``."""
        return self.module.init_state(params)

    def update(self, params: dict, grads: dict, state: dict, **hyper) -> None:
        """One optimizer step on ``params``, in place."""
        self.module.update(params, grads, state, **hyper)

    def train_step(self, params: dict, state: dict, lr: float | None = None, **batch) -> float:
        """Forward, backward and update on one minibatch; returns the loss."""
        batch = {getattr(self, "arg_names", {}).get(k, k): v for k, v in batch.items()}
        missing = [n for n in self.inputs if n not in batch]
        extra = sorted(set(batch) - set(self.inputs))
        if missing or extra:
            raise GraphError(f"train_step() takes the arrays {', '.join(self.inputs)}; "
                             + (f"missing {', '.join(missing)}" if missing
                                else f"got unknown {', '.join(extra)}") + ". Pass them by name.")
        kw = {} if lr is None else {"lr": lr}
        return self.module.train_step(params, state, **{n: batch[n] for n in self.inputs}, **kw)


def compile_train_step(g: Graph, of: str | None = None, wrt=None, dtype: str = "float64",
                       optimize=True, optimizer: str = "sgd", lr: float | None = None,
                       **hyper) -> CompiledTrainStep:
    """Generate :func:`train_step` source for ``g`` and load it (what
    ``sb.compile(g, optimizer=...)`` does)."""
    m = _model(g, of, wrt, optimizer, lr, hyper, dtype, optimize)
    src = _step_source(m)
    name = re.sub(r"\W+", "_", str(g.nx.graph.get("name", "network"))) + "_train_step"
    fn = CompiledTrainStep(src, name, [m.em.namer(n) for n in m.inputs])
    # node name -> parameter name, so arrays are passed by node name (as Compiled does)
    fn.arg_names = {n: m.em.namer(n) for n in g.nodes("input") + g.nodes("param")}
    return fn


__all__ = ["OPTIMIZERS", "CompiledTrainStep", "Optimizer", "compile_train_step", "initial_params",
           "plan_init", "resolve_optimizer", "train_step"]
