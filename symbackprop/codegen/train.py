"""Training code as NumPy source: a train step and a complete training script.

:func:`train_step` emits a module with the model's ``forward`` and
``value_and_grad`` (from :func:`~symbackprop.codegen.emit.emit_model`), an
``init_params`` that initialises the parameters from a seed, the optimizer as
two separate functions (``init_state(params)`` and ``update(params, grads,
state)``), and ``train_step(params, state, **batch)``, which runs forward,
backward and the update in one call. Backprop computes the gradients, the
optimizer uses them: they stay separate functions in the source.

:func:`training_script` adds to the same module everything a standalone
training run needs (data loading and checks, minibatches, progress lines,
NaN/inf guard, atomic checkpoints, resume, a command line) and imports only
NumPy and the standard library.

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

import math
import numbers
import re
import textwrap
from dataclasses import dataclass, field

import networkx as nx

from .. import __version__ as _version
from ..autodiff import check_of_wrt
from ..errors import CodegenError, GraphError
from ..graph import Graph, fmt_shape
from ..ops import registry
from ..optimize import resolve as resolve_passes
from .emit import Compiled, Emitter, Function, emit_model, prepare, render_function, safe_text
from .plan import plan_function, workspace_source

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

OPTIMIZERS = {
    "sgd": Optimizer("sgd", "SGD", {"lr": 0.01}, "w <- w - lr * dL/dw", _SGD_INIT, _SGD_UPDATE,
                     {"lr": _POSITIVE}),
    "momentum": Optimizer("momentum", "SGD with momentum", {"lr": 0.01, "momentum": 0.9},
                          "v <- momentum * v + dL/dw; w <- w - lr * v",
                          _MOMENTUM_INIT, _MOMENTUM_UPDATE,
                          {"lr": _POSITIVE, "momentum": _FRACTION}),
    "adam": Optimizer("adam", "Adam", {"lr": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8},
                      "bias-corrected moment estimates m, v; w <- w - lr * m_hat / "
                      "(sqrt(v_hat) + eps)", _ADAM_INIT, _ADAM_UPDATE,
                      {"lr": _POSITIVE, "beta1": _FRACTION, "beta2": _FRACTION,
                       "eps": _POSITIVE}),
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


def _leaf_text(g: Graph, n: str) -> str:
    d = g.nx.nodes[n]
    return f"{n} {fmt_shape(d['shape'])}" + (" int" if d["dtype"] == "int" else "")


def _network_text(g: Graph) -> str:
    name = g.nx.graph.get("name", "network")
    inputs = ", ".join(_leaf_text(g, n) for n in g.nodes("input")) or "none"
    params = ", ".join(_leaf_text(g, n) for n in g.nodes("param"))
    return (f"{name}: inputs {inputs}; parameters {params}; "
            f"outputs {', '.join(g.outputs)}")


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
        if len(syms) != 1:
            return None
        f = {v: complex(e.subs(syms[0], v).evalf()) for v in (0.5, 1, 2, -0.5, -1, -2)}
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

    def args(self, fn: Function, data: dict | None = None) -> list[str]:
        """Arguments calling an emitted function: ``params['W1']`` for parameters,
        ``data[name]`` (default: the input's own code) for inputs."""
        names = {code: n for n, code in self.em.namer.names.items()}
        out = []
        for code in fn.params:
            n = names[code]
            if self.em.j.role(n) == "param":
                out.append(f"params[{n!r}]")
            else:
                out.append((data or {}).get(n, code))
        return out


_STEP_LOCALS = {"params", "state", "lr", "loss", "grads", "value_and_grad", "check_finite",
                "update", "float"}


def _model(g: Graph, of, wrt, optimizer, lr, hyper, dtype, optimize, extra_outputs=()) -> _Model:
    opt, values = resolve_optimizer(optimizer, lr, hyper)
    of, wrt = _params_of(g, of, wrt)
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
        fast, pool = plan_function(
            em, "loss_and_grads_into", [of, *grads], grads,
            f"Loss {safe_text(of)}; writes its gradients into {', '.join(map(em.namer, grads))}."
            "\n\n    The same computation as value_and_grad, with every intermediate array in a "
            "buffer of\n    _workspace() (allocated once per batch size) and NumPy calls "
            "writing into it (out=).", of=of)
        fast.ret = em.code(of)
        fns = [*fns, fast]
    names = {code: n for n, code in em.namer.names.items()}
    inputs = [names[c] for c in vg.params if em.j.role(names[c]) == "input"]
    clash = [em.namer(n) for n in inputs if em.namer(n) in _STEP_LOCALS]
    if clash:
        raise CodegenError(f"input {clash[0]!r} has the name of a variable of the training "
                           "step; rename the input (e.g. g.rename).")
    return _Model(g, of, wrt, em, fns, inputs, opt, values, plan_init(g), dtype, fast, pool)


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
    """The trained parameters, their gradients and the optimizer state as views of flat
    buffers; made on the first call, remade only when other arrays are passed."""
    f = _FLAT.get("f")
    if f is not None and f["params"] is params and f["state"] is state \\
            and all(box[name] is view for box, name, view in f["views"]):
        return f
    views = []

    def adopt(box):
        base = _flat_base({name: box[name] for name in TRAINED})
        if base is None:
            box.update(flat_views({name: box[name] for name in TRAINED}))
            base = _flat_base({name: box[name] for name in TRAINED})
        views.extend((box, name, box[name]) for name in TRAINED)
        return {"all": base}

    grads = flat_views({name: np.zeros_like(params[name], dtype=DTYPE) for name in TRAINED})
    f = _FLAT["f"] = {
        "params": params, "state": state, "grads": grads, "P": adopt(params),
        "G": {"all": _flat_base(grads)},
        "S": {k: adopt(v) if isinstance(v, dict) else v for k, v in state.items()},
    }
    f["views"] = views
    return f


def _update_flat(flat, state, lr):
    """update() on the flat buffers: one NumPy call per rule, not one per parameter. The
    state's scalars (Adam's step count t) go in and come back out."""
    s = flat["S"]
    s.update((k, v) for k, v in state.items() if not isinstance(v, dict))
    update(flat["P"], flat["G"], s, lr=lr)
    state.update((k, v) for k, v in s.items() if not isinstance(v, dict))
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
    # loss_and_grads_into takes the leaves, then one gradient array per trained parameter
    args = m.args(m.fast)[:-len(m.wrt)] + [f"grads[{w!r}]" for w in m.wrt]
    lines += ["    flat = _flat(params, state)", '    grads = flat["grads"]']
    lines += ["    " + ln for ln in _call_lines("loss = ", m.fast.name, args)]
    lines += ['    if not (np.isfinite(loss) and np.isfinite(flat["G"]["all"].sum())):',
              "        check_finite(loss, grads)  # says which gradient",
              "    _update_flat(flat, state, lr)",
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
        f"Network {safe_text(_network_text(g))}.",
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
    if imports:
        head.append("\n".join(f"import {i}" for i in sorted(imports)))
    head += ["import numpy as np", "\n".join(
        [f"DTYPE = np.{em.dtype}"] + sorted(set(em.constants)) + list(constants))]
    body = ([em.helpers[k] for k in sorted(em.helpers)]
            + [render_function(f) for f in functions] + list(blocks))
    return "\n\n".join(head) + "\n\n\n" + "\n\n\n".join(b.strip("\n") for b in body) + "\n"


def _step_blocks(m: _Model) -> list[str]:
    flat = [] if m.fast is None else [
        f"TRAINED = {tuple(m.wrt)!r}  # the parameters train_step updates\n" + _FLAT,
        workspace_source(m.em, m.pool)]
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
    training_script : the same code inside a complete training program.
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


# -- the training script ------------------------------------------------------------------


@dataclass
class _Task:
    """What the data arrays mean for the network."""

    features: str  # the graph input fed from X
    target: str | None  # the graph input fed from y (None: unsupervised, e.g. an autoencoder)
    kind: str | None  # "labels", "values" or None
    scores: str | None = None  # classifiers: the node whose argmax (or sign) is the class
    n_classes: int | None = None
    binary: bool = False


def _data_task(g: Graph, of: str, features=None, target=None) -> _Task:
    """Which input is X and which is y, and whether the loss is a classifier's.

    The target is the integer input when there is one, else the one of two float
    inputs nearer the loss (fewer edges); the features are the other input. A
    classifier is recognised from its integer labels (N,): the node that consumes
    them with a float argument of shape (N, C) (``softmax_cross_entropy(logits,
    y)``) gives the class as its argmax; one of shape (N,) holds binary logits and
    predicts class 1 where it is > 0 (``sb.models.logistic_regression``).
    """
    need = g.ancestors([of])
    inputs = [n for n in g.nodes("input") if n in need]
    for name, what in ((features, "features"), (target, "target")):
        if name is not None and name not in inputs:
            raise CodegenError(f"{what}={name!r} is not an input the loss {of!r} uses; inputs: "
                               f"{', '.join(inputs) or 'none'}.")
    ints = [n for n in inputs if g.nx.nodes[n]["dtype"] == "int"]
    floats = [n for n in inputs if g.nx.nodes[n]["dtype"] == "float"]
    if target is None and len(inputs) > 1:
        if len(ints) == 1:
            target = ints[0]
        elif not ints and len(floats) == 2:
            dist = {n: nx.shortest_path_length(g.nx, n, of) for n in floats}
            a, b = floats
            if dist[a] != dist[b]:
                target = a if dist[a] < dist[b] else b
    rest = [n for n in inputs if n != target]
    if features is None and len(rest) == 1:
        features = rest[0]
    if features is None or len(inputs) > 2 or (target is None and len(inputs) == 2):
        raise CodegenError(
            f"cannot tell which inputs the data arrays X and y feed among "
            f"{', '.join(inputs) or 'none'}; a training script takes one input of features "
            "and at most one target. Pass features=<input> and target=<input>.")
    if g.nx.nodes[features]["dtype"] != "float":
        raise CodegenError(f"features input {features!r} holds integers; declare it as float.")
    fshape = g.nx.nodes[features]["shape"]
    if not fshape or not isinstance(fshape[0], str) \
            or not all(isinstance(d, int) for d in fshape[1:]):
        raise CodegenError(f"features input {features!r} has shape {fmt_shape(fshape)}; "
                           "expected a batch size name first and fixed sizes after, e.g. "
                           "(N, 64).")
    if target is None:
        return _Task(features, None, None)
    tshape = g.nx.nodes[target]["shape"]
    if not tshape or tshape[0] != fshape[0] \
            or not all(isinstance(d, int) for d in tshape[1:]):
        raise CodegenError(f"target input {target!r} has shape {fmt_shape(tshape)}; expected "
                           f"({fshape[0]}, ...) with fixed sizes after the batch size.")
    if g.nx.nodes[target]["dtype"] != "int":
        return _Task(features, target, "values")
    task = _Task(features, target, "labels")
    if len(tshape) != 1:
        return task
    for c, _ in g.consumers(target):
        for a in g.args(c):
            s = g.nx.nodes[a]["shape"]
            if a == target or g.nx.nodes[a]["dtype"] != "float":
                continue
            if len(s) == 2 and s[0] == tshape[0] and isinstance(s[1], int) and s[1] >= 2:
                task.scores, task.n_classes = a, s[1]
                return task
            if tuple(s) == tuple(tshape) and task.scores is None:
                task.scores, task.n_classes, task.binary = a, 2, True
    return task


def _positive_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
        raise ValueError(f"{name}={v!r}; expected an int >= 1.")
    return int(v)


def _script_constants(m: _Model, task: _Task, epochs, batch_size, seed) -> list[str]:
    g = m.g
    fshape = tuple(g.nx.nodes[task.features]["shape"][1:])
    tshape = tuple(g.nx.nodes[task.target]["shape"][1:]) if task.target else ()
    n_feat = math.prod(fshape)
    tcols = 0 if task.target is None else 1 if task.kind == "labels" else math.prod(tshape)
    if task.kind == "labels":
        classes = f" in 0..{task.n_classes - 1}" if task.n_classes else ""
        y_npz, y_csv = f"y {fmt_shape(('N',) + tshape)} integer labels{classes}", "1 label column"
    elif task.kind == "values":
        y_npz = f"y {fmt_shape(('N',) + tshape)} targets"
        y_csv = f"{tcols} target column{'s' if tcols > 1 else ''}"
    x_npz = f"X {fmt_shape(('N',) + fshape)}"
    if task.target is None:
        npz = f"an array {x_npz}, optionally X_test"
        csv = f"rows of {n_feat} feature columns"
    else:
        npz = f"arrays {x_npz} and {y_npz}, optionally X_test and y_test"
        csv = f"rows of {n_feat} feature columns then {y_csv}"
    return [
        f"NETWORK = {str(g.nx.graph.get('name', 'network'))!r}",
        f"OPTIMIZER = {m.opt.name!r}",
        *_constants(m.hyper),
        f"EPOCHS = {epochs}",
        f"BATCH_SIZE = {batch_size}",
        f"SEED = {seed}",
        f"FEATURE_SHAPE = {fshape!r}  # one row of X",
        f"TARGET = {task.kind!r}  # y holds: 'labels' (class indices), 'values' or None (no y)",
        f"TARGET_SHAPE = {tshape!r}  # one entry of y",
        f"N_CLASSES = {task.n_classes!r}",
        f"CSV_COLUMNS = {n_feat + tcols}",
        f"DATA_NPZ = {npz!r}",
        f"DATA_CSV = {csv!r}",
    ]


def _script_functions(m: _Model, task: _Task) -> tuple[list[Function], list[str], str]:
    """``predict`` (classifiers), ``minibatch`` and ``evaluate``."""
    em, fns, blocks = m.em, [], []
    x, y = em.namer(task.features), (em.namer(task.target) if task.target else None)
    keys = [(x, "X")] + ([(y, "y")] if y else [])
    sources = ", ".join(f"{k} from {v}" for k, v in keys)
    blocks.append("\n".join([
        "def minibatch(X, y, idx):",
        f'    """The network\'s inputs for the rows idx of the data: {sources}."""',
        "    return {" + ", ".join(f"{k!r}: {v}[idx]" for k, v in keys) + "}"]) + "\n")
    data = {task.features: "X"} | ({task.target: "y"} if task.target else {})
    if task.scores is not None:
        s = em.code(task.scores)
        rule = (f"1 where {safe_text(task.scores)} > 0" if task.binary
                else f"the argmax of {safe_text(task.scores)}")
        pred = em.function("predict", [task.scores],
                           f"Predicted class of each row: {rule}.")
        pred.ret = (f"({s} > 0).astype(np.int64)" if task.binary else f"{s}.argmax(axis=1)")
        fns.append(pred)
        body = _call_lines("return float(np.mean(", "predict", m.args(pred, data))
        body[-1] += " == y))"
        doc = "Accuracy: the fraction of rows of X whose predicted class is y."
        metric = "acc"
    else:
        fwd = m.functions[0]
        body = _call_lines("return float(", "forward", m.args(fwd, data))
        body[-1] += f"[{m.of!r}])"
        doc = f"The loss {safe_text(m.of)} on all of (X, y)."
        metric = "loss"
    blocks.append("\n".join(["def evaluate(params, X, y):", f'    """{doc}"""']
                            + ["    " + b for b in body]) + "\n")
    return fns, blocks, metric


def training_script(g: Graph, of: str | None = None, optimizer: str = "sgd",
                    lr: float | None = None, epochs: int = 10, batch_size: int = 32,
                    seed: int = 0, wrt=None, dtype: str = "float64", optimize=True,
                    features: str | None = None, target: str | None = None, **hyper) -> str:
    """Source of a standalone training script (NumPy and the standard library only).

    Parameters
    ----------
    g : Graph
        The network. Its loss must be a mean over the minibatch; it takes one input
        of features (fed from the data's ``X``) and at most one target (``y``).
    of : str, optional
        The scalar loss (default: the last scalar output).
    optimizer, lr, wrt, dtype, optimize, **hyper
        As for :func:`train_step`.
    epochs, batch_size, seed : int
        The script's defaults for ``--epochs``, ``--batch-size`` and ``--seed``.
    features, target : str, optional
        The inputs fed from ``X`` and ``y``. By default the integer input is the
        target (or, of two float inputs, the one nearer the loss) and the other
        input the features; a graph with one input (an autoencoder) has no target.

    Returns
    -------
    str
        A Python program. ``python train.py --data DATA.npz`` initialises the
        parameters (He normal for weights feeding relu, Xavier/Glorot uniform for
        the others, zero biases) from ``--seed``, reads and checks the data
        (``.npz`` with ``X``, ``y``, optionally ``X_test``, ``y_test``; or ``.csv``
        with the label last), shuffles every epoch, trains on minibatches, prints
        one line per epoch (loss; accuracy for classifiers, on the test split when
        there is one; seconds), stops on a nan/inf loss or gradient naming the
        epoch and batch, and saves checkpoints atomically (``--out``,
        ``--checkpoint-every``) that ``--resume`` continues bit for bit. See
        ``docs/training.md``.

    Raises
    ------
    ValueError
        For a bad optimizer, hyper-parameter, epochs, batch size or seed.
    CodegenError
        When the graph's inputs cannot be mapped to ``X`` and ``y``.

    Examples
    --------
    >>> src = sb.training_script(sb.models.mlp([4, 3, 2]), optimizer="adam", lr=0.01)
    >>> src.splitlines()[0]
    '\"\"\"Train the network mlp_4_3_2 with Adam: a standalone NumPy training script.'
    >>> "import sympy" in src or "symbackprop" in src.split("Generated by")[1].split("\\n")[1]
    False
    """
    epochs = _positive_int("epochs", epochs)
    batch_size = _positive_int("batch_size", batch_size)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed={seed!r}; expected an int >= 0.")
    of0, _ = _params_of(g, of, wrt)
    task = _data_task(g, of0, features, target)
    extra = [n for n in (task.scores, of0) if n is not None]
    m = _model(g, of, wrt, optimizer, lr, hyper, dtype, optimize, extra_outputs=extra)
    fns, blocks, metric = _script_functions(m, task)
    name = safe_text(g.nx.graph.get("name", "network"))
    given = "".join(f", {k}={float(v)!r}" for k, v in sorted(hyper.items()))
    given += "" if dtype == "float64" else f", dtype={dtype!r}"
    call = (f"sb.training_script(graph, of={m.of!r}, optimizer={m.opt.name!r}, "
            f"lr={m.hyper['lr']!r}{given},\n{' ' * 19}epochs={epochs}, "
            f"batch_size={batch_size}, seed={seed})")
    if task.kind == "labels" and task.scores:
        what = (f"classification into {task.n_classes} classes: y holds integer labels, the "
                f"predicted class is {'1 where' if task.binary else 'the argmax of'} "
                f"{safe_text(task.scores)}{' > 0' if task.binary else ''}; the script reports "
                "accuracy")
    elif task.kind is None:
        what = f"unsupervised: the loss needs only X (fed to {safe_text(task.features)})"
    else:
        what = f"y holds {task.kind} fed to {safe_text(task.target)}; the script reports loss"
    doc = _step_doc(m, f"Train the network {name} with {m.opt.title}: a standalone NumPy "
                       "training script.")
    doc += _wrap(f"Data: X feeds {safe_text(task.features)}; {what}.") + "\n" + (
            f"Generated by symbackprop {_version} with\n    "
            + "\n    ".join(map(safe_text, call.split("\n"))) + "\n"
            "Needs only NumPy and the Python standard library. Do not edit: regenerate "
            "instead.\n\n"
            "Usage:\n"
            "    python train.py --data data.npz --out checkpoint.npz\n"
            f"    python train.py --data data.npz --epochs {2 * epochs} --resume "
            "checkpoint.npz\n"
            "Run it with --help for every option.")
    constants = _script_constants(m, task, epochs, batch_size, seed)
    constants.append(f"METRIC = {metric!r}  # evaluate() returns: 'acc' (accuracy) or 'loss'")
    blocks = _step_blocks(m) + blocks + _RUNTIME
    return _module(doc, m, m.functions + fns, blocks,
                   imports=("argparse", "csv", "json", "os", "sys", "tempfile", "time",
                            "zipfile"), constants=constants)


# The fixed part of every training script. It reads the constants above it.
_RUNTIME = ['''class InputError(Exception):
    """Bad data, checkpoint or option: the message says what was found and what was expected."""
''', '''def is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True
''', '''def read_npz(path):
    """The arrays of a .npz file, by name."""
    with open(path, "rb") as f:
        if f.read(2) != b"PK":
            raise InputError(f"{path} is not a .npz file (not a zip archive); expected "
                             f"{DATA_NPZ}")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {name: f[name] for name in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise InputError(f"{path} is not a readable .npz file ({e}); "
                         f"expected {DATA_NPZ}") from None
    needed = ["X"] if TARGET is None else ["X", "y"]
    for name in needed:
        if name not in arrays:
            found = ", ".join(sorted(arrays)) or "no arrays"
            raise InputError(f"{path} has no array {name!r} (found {found}); expected {DATA_NPZ}")
    if TARGET is not None and ("X_test" in arrays) != ("y_test" in arrays):
        has, lacks = ("X_test", "y_test") if "X_test" in arrays else ("y_test", "X_test")
        raise InputError(f"{path} has {has} but no {lacks}; expected both or neither")
    return arrays
''', '''def read_csv(path):
    """X and y from a .csv file: numbers only, the label (target) in the last column(s);
    a first line without any number is a header and is skipped."""
    rows, first = [], True
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for line, cells in enumerate(csv.reader(f), start=1):
                if not any(cell.strip() for cell in cells):
                    continue
                numeric = [is_number(cell) for cell in cells]
                if first and not any(numeric):
                    first = False
                    continue
                first = False
                if not all(numeric):
                    column = numeric.index(False)
                    raise InputError(f"{path}, line {line}, column {column + 1}: "
                                     f"{cells[column].strip()!r} is not a number; expected "
                                     "numeric cells only")
                if len(cells) != CSV_COLUMNS:
                    raise InputError(f"{path}, line {line}: {len(cells)} columns; expected "
                                     f"{CSV_COLUMNS}: {DATA_CSV}")
                rows.append([float(cell) for cell in cells])
    except UnicodeDecodeError:
        raise InputError(f"{path} is not a text file; expected {DATA_CSV}") from None
    if not rows:
        raise InputError(f"{path} has no data rows; expected {DATA_CSV}")
    table = np.array(rows)
    n_features = int(np.prod(FEATURE_SHAPE))
    arrays = {"X": table[:, :n_features].reshape((len(table),) + FEATURE_SHAPE)}
    if TARGET == "labels":
        arrays["y"] = table[:, -1]
    elif TARGET == "values":
        arrays["y"] = table[:, n_features:].reshape((len(table),) + TARGET_SHAPE)
    return arrays
''', '''def check_split(path, arrays, x_name, y_name):
    """X and y of one split, checked against the network and converted."""
    X = np.asarray(arrays[x_name])
    if X.dtype.kind not in "biuf":
        raise InputError(f"{path}: {x_name} holds {X.dtype} values; expected numbers")
    if X.ndim == 0 or len(X) == 0:
        raise InputError(f"{path}: {x_name} has no rows (shape {X.shape}); expected "
                         "at least one sample")
    if X.shape[1:] != FEATURE_SHAPE:
        if X.ndim == 2 and len(FEATURE_SHAPE) == 1:
            found, expected = f"{X.shape[1]} features", f"{FEATURE_SHAPE[0]} features"
        else:
            found, expected = f"rows of shape {X.shape[1:]}", f"rows of shape {FEATURE_SHAPE}"
        raise InputError(f"{path}: {x_name} has {found} (shape {X.shape}); the network "
                         f"expects {expected}")
    X = X.astype(DTYPE)
    if TARGET is None:
        return X, None
    y = np.asarray(arrays[y_name])
    if y.dtype.kind not in "biuf":
        raise InputError(f"{path}: {y_name} holds {y.dtype} values; expected numbers")
    if TARGET == "values" and y.ndim == 1 and TARGET_SHAPE == (1,):
        y = y.reshape(-1, 1)
    if y.ndim == 0 or len(y) != len(X):
        raise InputError(f"{path}: {x_name} has {len(X)} rows but {y_name} has "
                         f"{y.size if y.ndim == 0 else len(y)}; expected one target per row")
    if y.shape[1:] != TARGET_SHAPE:
        raise InputError(f"{path}: {y_name} has shape {y.shape}; expected "
                         f"{(len(X),) + TARGET_SHAPE}")
    if TARGET == "values":
        return X, y.astype(DTYPE)
    expected = f"integer labels 0..{N_CLASSES - 1}" if N_CLASSES else "integer labels >= 0"
    bad = np.flatnonzero(y != np.round(y)) if y.dtype.kind == "f" else []
    if len(bad):
        raise InputError(f"{path}: {y_name}[{bad[0]}] = {y[bad[0]]} is not an integer; "
                         f"expected {expected}")
    bad = np.flatnonzero((y < 0) | (y >= (N_CLASSES or np.inf)))
    if len(bad):
        raise InputError(f"{path}: {y_name}[{bad[0]}] = {y[bad[0]]:g} is outside the class "
                         f"range; expected {expected}")
    return X, y.astype(np.int64)
''', '''def load_data(path):
    """X, y (and X_test, y_test when present) from a .npz or .csv file, checked; raises
    InputError with one line saying what is wrong."""
    expected = f"a .npz file with {DATA_NPZ}, or a .csv file with {DATA_CSV}"
    if not os.path.isfile(path):
        raise InputError(f"data file {path} does not exist; expected {expected}")
    if os.path.getsize(path) == 0:
        raise InputError(f"data file {path} is empty; expected {expected}")
    if path.endswith(".npz"):
        arrays = read_npz(path)
    elif path.endswith(".csv"):
        arrays = read_csv(path)
    else:
        raise InputError(f"data file {path} is neither .npz nor .csv; expected {expected}")
    data = dict(zip(("X", "y"), check_split(path, arrays, "X", "y")))
    data["X_test"] = data["y_test"] = None
    if "X_test" in arrays:
        data["X_test"], data["y_test"] = check_split(path, arrays, "X_test", "y_test")
    return data
''', '''def save_checkpoint(path, params, state, progress):
    """Write params, optimizer state and progress (epoch, samples seen in the next epoch,
    their loss sum, random state) to path atomically: a temporary file in the same
    directory, then os.replace, so an interruption never leaves half a file."""
    arrays = {"network": np.array(NETWORK), "optimizer": np.array(OPTIMIZER),
              "progress/epoch": np.array(progress["epoch"]),
              "progress/seen": np.array(progress["seen"]),
              "progress/loss_sum": np.array(progress["loss_sum"]),
              "progress/rng": np.array(json.dumps(progress["rng"]))}
    for name, w in params.items():
        arrays["params/" + name] = w
    for key, value in state.items():
        if isinstance(value, dict):
            for name, a in value.items():
                arrays[f"state/{key}/{name}"] = a
        else:
            arrays["state/" + key] = np.array(value)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".checkpoint-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
''', '''def load_checkpoint(path):
    """params, optimizer state and progress saved by save_checkpoint, checked against
    the network; raises InputError with one line saying what is wrong."""
    if not os.path.isfile(path):
        raise InputError(f"checkpoint {path} does not exist; expected a .npz file written "
                         "by this script's --out")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {name: f[name] for name in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise InputError(f"checkpoint {path} is not a readable .npz file ({e})") from None
    found = (str(arrays.get("network", "?")), str(arrays.get("optimizer", "?")))
    if found != (NETWORK, OPTIMIZER):
        raise InputError(f"checkpoint {path} is for network {found[0]} with {found[1]}; "
                         f"expected network {NETWORK} with {OPTIMIZER}")
    params = init_params(0)
    state = init_state(params)
    targets = {"params/" + name: w for name, w in params.items()}
    for key, value in state.items():
        if isinstance(value, dict):
            targets.update({f"state/{key}/{name}": a for name, a in value.items()})
    for key, target in targets.items():
        if key not in arrays or arrays[key].shape != target.shape:
            found = arrays[key].shape if key in arrays else "nothing"
            raise InputError(f"checkpoint {path}: {key} is {found}; expected an array of "
                             f"shape {target.shape}")
        target[...] = arrays[key]
    try:
        for key, value in state.items():
            if not isinstance(value, dict):
                state[key] = type(value)(arrays["state/" + key])
        progress = {"epoch": int(arrays["progress/epoch"]), "seen": int(arrays["progress/seen"]),
                    "loss_sum": float(arrays["progress/loss_sum"]),
                    "rng": json.loads(str(arrays["progress/rng"]))}
    except (KeyError, ValueError, TypeError) as e:
        raise InputError(f"checkpoint {path} lacks the progress entry {e}; expected a file "
                         "written by this script's --out") from None
    return params, state, progress
''', '''def fail(message, status):
    """Print one line to stderr and return the exit status."""
    prog = os.path.basename(sys.argv[0]) or "train.py"
    print(f"{prog}: error: {' '.join(str(message).split())}", file=sys.stderr)
    return status
''', '''def last_good_path(out):
    root, ext = os.path.splitext(out)
    return f"{root}.last_good{ext or '.npz'}"
''', '''def train(args, data, params, state, progress):
    """Run the epochs after progress["epoch"] up to args.epochs. Returns the exit status."""
    X, y = data["X"], data["y"]
    n = len(X)
    if progress["seen"] >= n:
        return fail(f"the checkpoint has seen {progress['seen']} samples of the current "
                    f"epoch but the data has {n} rows; expected the same data", 2)
    n_batches = -(-n // args.batch_size)
    rng = np.random.default_rng()
    rng.bit_generator.state = progress["rng"]
    epoch, seen, loss_sum = progress["epoch"], progress["seen"], progress["loss_sum"]
    if epoch >= args.epochs:
        print(f"the checkpoint is at epoch {epoch}; nothing to do for --epochs {args.epochs}")
        return 0
    train_time, width = 0.0, len(str(args.epochs))
    while epoch < args.epochs:
        start = time.perf_counter()
        rng_state = rng.bit_generator.state  # a checkpoint inside this epoch restarts here
        order = rng.permutation(n)
        while seen < n:
            idx = order[seen:seen + args.batch_size]
            try:
                loss = train_step(params, state, **minibatch(X, y, idx), lr=args.lr)
            except FloatingPointError as e:
                path = last_good_path(args.out)
                save_checkpoint(path, params, state, {"epoch": epoch, "seen": seen,
                                                      "loss_sum": loss_sum, "rng": rng_state})
                kept = f"; {args.out} is unchanged" if os.path.exists(args.out) else ""
                return fail(f"stopped at epoch {epoch + 1}, batch {seen // args.batch_size + 1}"
                            f" of {n_batches}: {e}. The last good parameters (before this "
                            f"batch) are saved in {path}{kept}", 1)
            loss_sum += loss * len(idx)
            seen += len(idx)
        epoch += 1
        train_time += time.perf_counter() - start
        line = f"epoch {epoch:{width}d}/{args.epochs}  loss {loss_sum / n:.6g}"
        if data["X_test"] is not None:
            line += f"  test_{METRIC} {evaluate(params, data['X_test'], data['y_test']):.4f}"
        elif METRIC == "acc":
            line += f"  train_acc {evaluate(params, X, y):.4f}"
        print(f"{line}  {time.perf_counter() - start:.2f}s", flush=True)
        seen, loss_sum = 0, 0.0
        if epoch == args.epochs or args.checkpoint_every and epoch % args.checkpoint_every == 0:
            save_checkpoint(args.out, params, state, {"epoch": epoch, "seen": 0,
                                                      "loss_sum": 0.0,
                                                      "rng": rng.bit_generator.state})
    print(f"done: {epoch} epochs, {train_time:.2f}s training (evaluation excluded), "
          f"checkpoint {args.out}")
    return 0
''', '''def option(kind, low, strict=False):
    """An argparse type: a number of this kind, >= low (> low when strict), finite."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not np.isfinite(value) or value < low or strict and value == low:
            raise argparse.ArgumentTypeError(f"{text} is not a finite number "
                                             f"{'>' if strict else '>='} {low}")
        return value
    return parse
''', '''def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\\n\\n")[0],
        epilog="Data: a .npz file with " + DATA_NPZ + "; or a .csv file with " + DATA_CSV
        + ". Bad data stops the script with one line saying what is wrong, before anything "
        "is written. A nan or inf loss or gradient stops it, naming the epoch and batch; "
        "the parameters from before that batch are saved next to --out as "
        "NAME.last_good.npz. Exit status: 0 done, 1 stopped on nan/inf, 2 bad input.")
    p.add_argument("--data", required=True, metavar="FILE",
                   help="training data, .npz (X, y, optional X_test, y_test) or .csv "
                   "(the label in the last column)")
    p.add_argument("--epochs", type=option(int, 1), default=EPOCHS,
                   help=f"train until this epoch, counting the epochs of a resumed "
                   f"checkpoint (default {EPOCHS})")
    p.add_argument("--batch-size", type=option(int, 1), default=BATCH_SIZE,
                   help=f"samples per minibatch; the loss is their mean (default {BATCH_SIZE})")
    p.add_argument("--lr", type=option(float, 0.0, strict=True), default=LR,
                   help=f"learning rate of {OPTIMIZER} (default {LR})")
    p.add_argument("--seed", type=option(int, 0), default=SEED,
                   help=f"seed of the initial parameters and of the shuffling (default {SEED});"
                   " --resume restores the random state instead")
    p.add_argument("--checkpoint-every", type=option(int, 0), default=0, metavar="K",
                   help="also save a checkpoint every K epochs (default 0: only at the end)")
    p.add_argument("--resume", metavar="FILE",
                   help="continue from a checkpoint: the same seed and options give the "
                   "same final parameters as a run that was never interrupted")
    p.add_argument("--out", default="checkpoint.npz", metavar="FILE",
                   help="checkpoint to write, atomically (default checkpoint.npz)")
    return p.parse_args(argv)
''', '''def main(argv=None):
    args = parse_args(argv)
    try:
        data = load_data(args.data)
        if args.resume:
            params, state, progress = load_checkpoint(args.resume)
        else:
            rng = np.random.default_rng(args.seed)
            params = init_params(rng)
            state = init_state(params)
            progress = {"epoch": 0, "seen": 0, "loss_sum": 0.0, "rng": rng.bit_generator.state}
    except InputError as e:
        return fail(e, 2)
    with np.errstate(all="ignore"):  # a nan or inf is reported by train_step, once
        return train(args, data, params, state, progress)
''', '''if __name__ == "__main__":
    sys.exit(main())
''']


__all__ = ["OPTIMIZERS", "CompiledTrainStep", "Optimizer", "compile_train_step", "plan_init",
           "resolve_optimizer", "train_step", "training_script"]
