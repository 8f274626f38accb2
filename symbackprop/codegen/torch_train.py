"""Training modules and scripts of the ``torch`` backend (issue 15): in place, as NumPy's.

The module carries the model's ``forward`` and plain ``value_and_grad`` (one statement
per node, under ``torch.inference_mode()``: :mod:`~symbackprop.codegen.torch_backend`),
``init_params(seed=0, device=None)`` (drawn by a seeded ``torch.Generator`` on the CPU,
then moved to ``device``), the optimizer's ``init_state(params)`` and in-place
``update(params, grads, state)`` (:mod:`symbackprop.codegen.runtime.torch_optimizers`:
NumPy's rules, one ``torch._foreach_*`` call per operation), ``check_finite`` and
``train_step(params, state, <inputs>, lr=LR)``, which changes the parameters and the
state in place and returns the loss as a Python float. NumPy's contract holds: a nan or
inf in the loss or a gradient raises ``FloatingPointError`` before anything changes.

:func:`script_source` adds a main program (:mod:`~symbackprop.codegen.runtime.torch_script`)
that trains on an ``.npz``, ``.csv`` or ``.pt`` file on the device asked for, with the
NumPy script's resumable checkpoints, ``last_good``, ``--metrics`` and ``--log-grad-norms``.
"""

from __future__ import annotations

import numbers

from .. import __version__ as _version
from ..graph import Graph
from . import functional, torch_mixed
from .emit import call_lines, render_module, safe_text
from .jax_mixed import HALF
from .lowering import CONTEXT
from .mixed import constant_lines as mixed_constants
from .module import Model, grad_norms_block, step_doc, wrap
from .optimizers import constant_lines
from .runtime import atomic, source_of, torch_init, torch_script
from .runtime import script as runtime_script
from .runtime import torch_mixed as torch_mixed_runtime
from .runtime.torch_optimizers import adam, momentum, sgd

# optimizer name -> its runtime for torch tensors
RUNTIME = {"sgd": sgd, "momentum": momentum, "adam": adam}
# the script's main program (runtime/torch_script.py), with what it copies of the NumPy
# script's runtime (runtime/script.py: the data checks, fail, the options) and the shared
# atomic write (runtime/atomic.py), in this order
SCRIPT = ((runtime_script, ("InputError", "is_number", "read_npz", "check_arrays", "read_csv")),
          (runtime_script, ("check_tokens",)),  # token inputs only
          (runtime_script, ("check_split", "load_data", "fail", "ScriptParser", "check_network",
                            "check_precision", "check_out", "outputs", "option", "shape_option",
                            "add_run_options", "add_watch_options")),
          (torch_script, ("read_pt", "load_tensors")),
          (atomic, ("atomic_write",)), (torch_script, ("save_checkpoint", "load_checkpoint")),
          (torch_script, ("buffers_state", "restore_buffers")),  # batch norm, dropout only
          (runtime_script, ("last_good_path", "GradNorms")),
          (torch_script, ("parse_args", "train", "main", "__main__")))


def build(g: Graph, of=None, wrt=None, optimizer: str = "sgd", lr=None, hyper=None,
          dtype: str = "float64", optimize=True, checkpoint="none", precision=None,
          growth_interval=2000) -> Model:
    """The model of a torch training module: ``forward`` and the plain ``value_and_grad``
    written for PyTorch (:func:`~symbackprop.codegen.functional.build`'s, which any
    backend without the planned path shares). ``precision`` ``"mixed"`` (float16, loss
    scaling) or ``"bfloat16"`` writes them in that dtype for float32 masters
    (:mod:`~symbackprop.codegen.torch_mixed`)."""
    return functional.build(g, of, wrt, optimizer, lr, hyper, dtype, optimize, "torch",
                            checkpoint, precision if precision in HALF else None,
                            growth_interval)


def init_block(plan: list) -> list[str]:
    """The draws ``plan`` needs and ``init_params(seed=0, device=None)``."""
    kinds = {i.kind for i in plan}
    blocks = [source_of(torch_init, name) for kind, name in (
        ("he", "he_normal"), ("xavier", "xavier_uniform"), ("uniform", "uniform_fan_in"))
        if kind in kinds]
    lines = ["def init_params(seed=0, device=None):",
             ('    """Initial parameters from a seed, drawn by a torch.Generator on the CPU '
              "(not the numbers"),
             ("    of NumPy's init_params), then moved to device: He normal for weights "
              "feeding a"),
             '    rectifier, Xavier/Glorot uniform for the other weights, zero biases."""']
    if any(i.kind != "zeros" for i in plan):
        lines.append("    gen = torch.Generator().manual_seed(seed)")
    lines.append("    params = {")
    for i in plan:
        key, note = repr(i.name), "  # " + i.note.encode("unicode_escape").decode("ascii")
        if i.kind == "zeros":
            lines.append(f"        {key}: torch.zeros({i.shape!r}, dtype=DTYPE),")
        elif i.kind == "he":
            gain = "" if i.gain2 == 2.0 else f", gain2={i.gain2!r}"
            lines.append(f"        {key}: he_normal(gen, {i.shape!r}, fan_in={i.fan_in}{gain}),"
                         f"{note}")
        elif i.kind == "uniform":
            lines.append(f"        {key}: uniform_fan_in(gen, {i.shape!r}, fan_in={i.fan_in}),"
                         f"{note}")
        else:
            lines.append(f"        {key}: xavier_uniform(gen, {i.shape!r}, fan_in={i.fan_in}, "
                         f"fan_out={i.fan_out}),{note}")
    lines += ["    }", "    return {name: p.to(device) for name, p in params.items()}"]
    return blocks + ["\n".join(lines) + "\n"]


def train_step_block(m: Model) -> str:
    """``train_step(params, state, <inputs>, lr=LR)``: value_and_grad, the nan/inf screen,
    update in place; returns the loss."""
    em = m.em
    data = [em.namer(n) for n in m.inputs]
    batch = ", ".join(data) or "no data"
    # batch norm's running statistics and dropout's generator, passed on (NumPy's rule)
    context = m.context
    kwargs = [f"{c}={CONTEXT[c]}" for c in context]
    lines = ["@torch.inference_mode()",
             f"def train_step(params, state, {', '.join(data + ['lr=LR'] + kwargs)}):",
             f'    """One training step on the minibatch ({batch}): forward and backward pass',
             (f"    (value_and_grad), then one {m.opt.title} update (update). params and state "
              "change in place."),
             ("    Returns the loss. Raises FloatingPointError, before changing anything, when "
              "the loss"),
             '    or a gradient is nan or inf."""']
    if context:  # the docstring says what they are
        lines[-1] = lines[-1][:-3]
        text = {"running": "running: from init_running(device), updated in place by the forward "
                           "pass|(even when the step raises).",
                "rng": "rng: a seed or a torch.Generator, which draws the dropout masks (pass "
                       "one|Generator to every step; a seed makes a CPU generator)."}
        lines += ["", "    Training mode."] + ["    " + t for c in context
                                                for t in text[c].split("|")]
        lines[-1] += '"""'
    lines += ["    " + ln for ln in call_lines("loss, grads = ", "value_and_grad",
                                                 m.args(m.functions[1])
                                                 + [f"{c}={c}" for c in context])]
    lines += [
        "    # A sum is finite only if every entry is (inf - inf is nan): the loss and one sum",
        "    # per gradient, read in one transfer, screen every gradient; check_finite, exact,",
        "    # runs only when they trip (a sum can overflow: it then raises only for nan or inf).",
        "    screen = torch.stack([loss] + [grad.sum() for grad in grads.values()]).tolist()",
        "    loss = screen[0]",
        "    if not math.isfinite(sum(screen)):",
        "        check_finite(loss, grads)  # says which gradient",
        "    update(params, grads, state, lr=lr)",
        "    return loss"]
    return "\n".join(lines) + "\n"


def model_text(m: Model, doc: str | None = None, blocks=(), imports=(), constants=(),
               library: str | None = None) -> str:
    """The source of :func:`step_source` for a model made by :func:`build`; a training
    script (:func:`script_source`) gives its own ``doc`` and adds ``blocks`` (its main
    program), ``imports`` and ``constants``."""
    runtime = RUNTIME[m.opt.name]
    if doc is None:
        doc = step_doc(m, f"Training step for the "
                          f"{safe_text(m.g.nx.graph.get('name', 'network'))} network with "
                          f"{m.opt.title}, written for PyTorch.")
        doc += (f"Generated by symbackprop {_version} (sb.train_step, backend 'torch'). "
                "Gradients (value_and_grad)\nand the optimizer (init_state, update) are "
                "separate functions; train_step runs both, under\ntorch.inference_mode() "
                "(no autograd: the gradients are these functions'), on the device of\nthe "
                "tensors passed. Needs only PyTorch. Do not edit: regenerate instead.")
    if m.precision:  # mixed precision (codegen/torch_mixed.py)
        blocks = [*torch_mixed.blocks(m, init_block(m.plan), runtime), *blocks]
        constants = mixed_constants(m, "torch") + list(constants)
    else:
        blocks = [*init_block(m.plan), source_of(runtime, "init_state"),
                  source_of(runtime, "update"), source_of(torch_script, "check_finite"),
                  train_step_block(m), *blocks]
    return render_module(doc, m.em, m.functions, imports=("math", *imports),
                         constants=constant_lines(m.hyper) + list(constants), blocks=blocks,
                         library=library)


def step_source(g: Graph, of=None, wrt=None, optimizer: str = "sgd", lr=None, hyper=None,
                dtype: str = "float64", optimize=True, checkpoint="none", precision=None,
                growth_interval=2000) -> str:
    """The source of a torch training module (see the module's docstring).

    Examples
    --------
    >>> src = step_source(sb.models.mlp([4, 3, 2]), optimizer="sgd")
    >>> print(src[src.index("def update"):src.index("def check_finite")].strip())
    def update(params, grads, state, lr=LR):
        \"\"\"One SGD step, in place: w <- w - lr * dL/dw for every parameter with a gradient (one
        multi-tensor call).\"\"\"
        names = list(grads)
        torch._foreach_add_([params[n] for n in names], [grads[n] for n in names], alpha=-lr)
    """
    return model_text(build(g, of, wrt, optimizer, lr, hyper, dtype, optimize, checkpoint,
                            precision, growth_interval))


def compile_step(g: Graph, of=None, wrt=None, optimizer: str = "sgd", lr=None, hyper=None,
                 dtype: str = "float64", optimize=True, checkpoint="none", precision=None,
                 growth_interval=2000):
    """:func:`step_source` loaded as a :class:`~symbackprop.codegen.compiled.CompiledTrainStep`
    (``sb.compile(g, optimizer=..., backend="torch")``)."""
    from .compiled import CompiledTrainStep
    from .loader import module_name

    m = build(g, of, wrt, optimizer, lr, hyper, dtype, optimize, checkpoint, precision,
              growth_interval)
    step = CompiledTrainStep(model_text(m), module_name(g, "_train_step"),
                             [m.em.namer(n) for n in m.inputs], m.arg_names)
    if "rng" in m.context:  # dropout: the step's own generator is torch's
        import torch

        step.rng = torch.Generator().manual_seed(0)
    return step


def _evaluate(m: Model, task) -> tuple[str, str]:
    """``evaluate(params, X, y)`` through ``forward``, and its metric: the accuracy when
    ``forward`` returns a classifier's scores (the NumPy script's rule: the argmax, or > 0
    for binary logits), else the loss."""
    fwd = m.functions[0]
    data = {task.features: "X"} | ({task.target: "y"} if task.target else {})
    context = m.context
    # evaluation mode: batch norm's running statistics, no dropout
    mode = ["training=False"] if context else []
    mode += ["running=running"] if "running" in context else []
    body = call_lines("out = ", "forward", m.args(fwd, data) + mode)
    if task.scores is not None and f"{task.scores!r}:" in (fwd.ret or ""):
        s = f"out[{task.scores!r}]"
        pred = f"({s} > 0)" if task.binary else f"{s}.argmax(dim=1)"
        doc = "Accuracy: the fraction of rows of X whose predicted class is y."
        body.append(f"return ({pred} == y).double().mean().item()")
        metric = "acc"
    else:
        doc = f"The loss {safe_text(m.of)} on all of (X, y)."
        body.append(f"return float(out[{m.of!r}])")
        metric = "loss"
    head = "def evaluate(params, X, y, running=None):" if "running" in context else \
        "def evaluate(params, X, y):"
    return "\n".join([head, f'    """{doc}"""']
                     + ["    " + b for b in body]) + "\n", metric


def _buffers(m: Model) -> str:
    """``init_buffers(device, seed)``: what the script's train_step also takes, made once
    and carried through the training: batch norm's running statistics (updated in place,
    used by evaluate and saved with --out) and dropout's generator (on the CPU, seeded
    apart from the shuffles': the same masks on every device)."""
    context = m.context
    items = (['"running": init_running(device)'] if "running" in context else []) + \
        (['"rng": torch.Generator().manual_seed(seed + 1)'] if "rng" in context else [])
    return "\n".join([
        "def init_buffers(device, seed):",
        ('    """What train_step also takes: batch norm\'s running statistics (running), '
         "dropout's"),
        '    generator (rng, on the CPU, seeded apart from the shuffles\'); none: {}."""',
        f"    return {{{', '.join(items)}}}"]) + "\n"


def _grad_norms(m: Model, task) -> str:
    """``grad_norms(params, X, y)``: the norm of each layer's weights' gradient, for the
    NumPy script's ``--log-grad-norms`` and ``--metrics`` (its ``GradNorms``); in mixed
    precision those of the float32 gradients (``reference_value_and_grad``), as NumPy's."""
    vg = m.functions[1]
    data = {task.features: "X"} | ({task.target: "y"} if task.target else {})
    name = "reference_value_and_grad" if m.precision else "value_and_grad"
    return grad_norms_block(call_lines("_, grads = ", name, m.args(vg, data)),
                            "math.sqrt(sum(float((grads[w] * grads[w]).sum()) for w in weights))")


def script_source(g: Graph, of=None, optimizer: str = "sgd", lr=None, epochs: int = 10,
                  batch_size: int = 32, seed: int = 0, wrt=None, dtype: str = "float64",
                  optimize=True, features=None, target=None, checkpoint="none",
                  precision=None, growth_interval=2000, **hyper) -> str:
    """A standalone PyTorch training script: the training module and a main program that
    reads ``--data`` (``.npz``, ``.csv`` or ``.pt``), shuffles every epoch with a seeded
    generator, trains on minibatches on ``--device`` and prints one line per epoch (the
    loss, and the test accuracy or loss when the data has ``X_test``, ``y_test``; a
    classifier without a test split reports its training accuracy). It has the NumPy
    script's options: checkpoints (``--out``, default ``checkpoint.pt``, and
    ``--checkpoint-every``; ``torch.save``, atomically) that ``--resume`` continues bit
    for bit, a ``last_good`` checkpoint when a batch meets nan or inf (exit status 1),
    ``--metrics`` and ``--log-grad-norms``, ``--input-shape`` for images.

    Examples
    --------
    >>> src = script_source(sb.models.mlp([4, 3, 2]), optimizer="adam", lr=0.01)
    >>> "def main(argv=None):" in src, "import symbackprop" in src
    (True, False)
    """
    # which input is X and which y, and each layer's weights: the NumPy script's rules
    from .script import _data_constants, _data_task, _layers_constant

    for name, v in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"{name}={v!r}; expected an int >= 1.")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed={seed!r}; expected an int >= 0.")
    m = build(g, of, wrt, optimizer, lr, hyper, dtype, optimize, checkpoint, precision,
              growth_interval)
    task = _data_task(g, m.of, features, target)
    nm = m.em.namer
    name = safe_text(g.nx.graph.get("name", "network"))
    doc = step_doc(m, f"Train the network {name} with {m.opt.title}: a standalone PyTorch "
                      "training script.")
    doc += wrap(
        f"Data: an .npz, .csv or .pt file with X (fed to {safe_text(task.features)})"
        + (f" and y (fed to {safe_text(task.target)})" if task.target else "")
        + ", optionally X_test and y_test.",
        "Runs on --device (default: cuda when available), under torch.inference_mode(): "
        "the gradients are value_and_grad's, not autograd's.") + "\n" + (
        f"Generated by symbackprop {_version} (sb.training_script, backend 'torch'). Needs "
        "only PyTorch\nand NumPy (which reads .npz and .csv data). Do not edit: regenerate "
        "instead.\n\n"
        "Usage:\n"
        "    python train.py --data data.npz --out checkpoint.pt\n"
        f"    python train.py --data data.npz --epochs {2 * epochs} --resume checkpoint.pt\n"
        "    python train.py --data data.npz --device cuda --metrics run.csv\n"
        "Run it with --help for every option.")
    evaluate, metric = _evaluate(m, task)
    constants = [f"EPOCHS = {epochs}", f"BATCH_SIZE = {batch_size}", f"SEED = {seed}",
                 f"FEATURES = {nm(task.features)!r}  # the input fed from the data's X",
                 (f"TARGET_INPUT = {nm(task.target) if task.target else None!r}  # the input "
                  "fed from the data's y"),
                 f"NETWORK = {str(g.nx.graph.get('name', 'network'))!r}",
                 f"OPTIMIZER = {m.opt.name!r}",
                 f"METRIC = {metric!r}  # evaluate() returns: 'acc' (accuracy) or 'loss'",
                 _layers_constant(m),
                 # the NumPy script's data checks read these (load_data, check_split)
                 *_data_constants(g, task),
                 *([] if task.tokens else ["VOCAB = None  # X holds floats"])]
    # mixed precision: the underflow line after every epoch (runtime/torch_mixed.py)
    mixed = [source_of(torch_mixed_runtime, "underflow_line")] if m.precision else []
    buffers = bool(m.context)
    # the NumPy script's checks leave the arrays' dtypes to load_tensors; one process (no MPI)
    variants = {"mixed": bool(m.precision), "buffers": buffers, "tokens": task.tokens,
                "floats": False, "cast": False, "raw": True, "mpi": False}
    main = [source_of(module, *names, variants=variants) for module, names in SCRIPT
            if (buffers or "buffers_state" not in names)
            and (task.tokens or "check_tokens" not in names)]
    return model_text(m, doc, blocks=[evaluate, _grad_norms(m, task), _buffers(m), *mixed,
                                      *main],
                      imports=("argparse", "csv", "os", "sys", "tempfile", "time", "zipfile"),
                      constants=constants, library=m.em.backend.script_imports())


__all__ = ["build", "compile_step", "model_text", "script_source", "step_source"]
