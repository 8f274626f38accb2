"""``sb.training_script(g, ..., backend="jax")`` and ``train-script --backend jax``: a
standalone JAX training program with data parallelism over every device (issue 15).

The script is the functional training module (:mod:`~symbackprop.codegen.functional`:
``forward``, ``value_and_grad``, ``init_params``, ``init_state``, ``update``, the jitted
``train_step``) and the main program of :mod:`~symbackprop.codegen.runtime.jax_script`:
a ``jax.sharding.Mesh`` over all devices with one ``data`` axis, each global batch split
along it, parameters and state replicated, several hosts through
``jax.distributed.initialize`` (``--coordinator``, ``--num-processes``,
``--process-id``). On one CPU, ``XLA_FLAGS=--xla_force_host_platform_device_count=4``
simulates four devices; the parameters after N steps are the one-device run's. As the
NumPy script, it writes checkpoints (``--out``, ``--checkpoint-every``; process 0,
atomically), resumes from them (``--resume``, checked against the network's name; also
mid-epoch, from a ``last_good`` checkpoint, which a batch meeting nan or inf leaves:
``guarded_step``) and reports the test accuracy or loss after every epoch
(``evaluate``, written here from ``forward``).
"""

from __future__ import annotations

import numbers
import textwrap

from .. import __version__ as _version
from ..errors import CodegenError
from ..graph import Graph
from . import backends, functional
from .emit import returns_running, safe_text
from .module import call_lines, grad_norms_block, step_doc, wrap
from .runtime import atomic, jax_mixed, jax_script, source_of
from .runtime import script as runtime_script

# the main program (runtime/jax_script.py), with the shared atomic write (runtime/atomic.py)
# before save_checkpoint
MAIN = ("parse_args", "host_port", "first_copy", "host", "save_checkpoint", "load_checkpoint",
        "read_data", "guarded_step", "main", "__main__")
# what it copies of the NumPy script's runtime (runtime/script.py): the data, checkpoint and
# output checks, fail and the options (check_tokens: token inputs only)
CHECKS = ("InputError", "is_number", "read_npz", "check_arrays", "read_csv", "check_tokens",
          "check_split", "load_data", "fail", "ScriptParser", "check_network", "check_precision",
          "check_out", "outputs", "option")


def _positive(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
        raise ValueError(f"{name}={v!r}; expected an int >= 1.")
    return int(v)


def _evaluate(m, task) -> tuple[str, str]:
    """``evaluate(params, X, y)`` through the jitted ``forward``, and its metric: the
    accuracy when ``forward`` returns a classifier's scores (the NumPy script's rule:
    the argmax, or > 0 for binary logits), else the loss. A network with batch norm or
    dropout evaluates in evaluation mode, ``evaluate(params, X, y, running)`` with the
    running statistics (issue 15)."""
    fwd = m.functions[0]
    data = {task.features: "X"} | ({task.target: "y"} if task.target else {})
    context = m.context
    fixed = (["training=False"] + (["running=running"] if "running" in context else [])
             if context else [])
    lhs = "out, _ = " if returns_running(m.em, fwd) else "out = "
    body = call_lines(lhs, "forward", m.args(fwd, data) + fixed)
    if task.scores is not None and f"{task.scores!r}:" in (fwd.ret or ""):
        s = f"np.asarray(out[{task.scores!r}])"
        pred = f"({s} > 0)" if task.binary else f"{s}.argmax(axis=1)"
        doc = "Accuracy: the fraction of rows of X whose predicted class is y."
        body.append(f"return float(np.mean({pred} == np.asarray(y)))")
        metric = "acc"
    else:
        doc = f"The loss {safe_text(m.of)} on all of (X, y)."
        body.append(f"return float(out[{m.of!r}])")
        metric = "loss"
    if context:
        doc += " Evaluation mode: no dropout, the running statistics."
    head = "def evaluate(params, X, y, running=None):" if context else "def evaluate(params, X, y):"
    return "\n".join([head, f'    """{doc}"""'] + ["    " + b for b in body]) + "\n", metric


def _grad_norms(m, task) -> str:
    """``grad_norms(params, X, y)``: the norm of each layer's weights' gradient, for the
    NumPy script's ``--log-grad-norms`` and ``--metrics`` (its ``GradNorms``)."""
    vg = m.functions[1]
    data = {task.features: "X"} | ({task.target: "y"} if task.target else {})
    lhs = "_, grads, _ = " if returns_running(m.em, vg) else "_, grads = "
    return grad_norms_block(call_lines(lhs, "value_and_grad", m.args(vg, data)))


def _buffers(m) -> list[str]:
    """``init_buffers(seed)`` and ``train_batch``: batch norm's running statistics and
    dropout's key, kept beside the parameters by the main program (issue 15)."""
    context = m.context
    running, dropout = "running" in context, "rng" in context
    items, what = [], []
    if running:
        items.append('"running": init_running()')
        what.append("the batch norms' running statistics (mean 0, variance 1)")
    if dropout:
        items.append('"key": jax.random.fold_in(jax.random.key(seed), 1)')
        what.append("dropout's key, jax.random.key(seed) folded with 1: a stream apart from "
                    "the initialisation's")
    init = "\n".join([
        "def init_buffers(seed):",
        *textwrap.wrap("What the network keeps besides its parameters, replicated as they "
                       "are and checkpointed under buffers/: " + "; ".join(what) + '."""',
                       88, initial_indent='    """', subsequent_indent="    "),
        "    return {" + ", ".join(items) + "}"]) + "\n"
    doc = ("train_step on one global batch (batch: the inputs by name), in training mode"
           + (", with the running statistics" if running else "")
           + (" and this step's dropout key: the buffers' key folded with the epoch and "
              "the batch's number, the same on every process and device (each device draws "
              "the mask of its own rows)" if dropout else "")
           + ". Returns the loss and the new params, state and buffers.\"\"\"")
    lines = ["def train_batch(params, state, buffers, epoch, number, lr, batch):",
             *textwrap.wrap(doc, 88, initial_indent='    """', subsequent_indent="    ")]
    kw = []
    if dropout:
        lines.append('    rng = jax.random.fold_in(jax.random.fold_in(buffers["key"], epoch), '
                     "number)")
        kw.append("rng=rng")
    if running:
        kw.insert(0, 'running=buffers["running"]')
        lines += ["    loss, params, state, running = train_step(params, state, **batch, lr=lr,",
                  f"                                              {', '.join(kw)})",
                  '    return loss, params, state, {**buffers, "running": running}']
    else:
        lines += [(f"    loss, params, state = train_step(params, state, **batch, lr=lr, "
                  f"{', '.join(kw)})"),
                  "    return loss, params, state, buffers"]
    return [init, "\n".join(lines) + "\n"]


def data_parallel_script(g: Graph, of=None, optimizer: str = "sgd", lr=None, epochs: int = 10,
                         batch_size: int = 32, seed: int = 0, wrt=None, dtype: str = "float64",
                         optimize=True, features=None, target=None, backend="jax",
                         precision=None, growth_interval=2000, **hyper) -> str:
    """The source of the JAX training script (see the module's docstring); the parameters
    are :func:`~symbackprop.codegen.script.training_script`'s. ``batch_size`` is the
    global batch: the script refuses one that the devices do not divide. ``precision``
    ``"mixed"`` or ``"bfloat16"`` (``dtype`` then the half dtype,
    :func:`~symbackprop.codegen.mixed.functional_precision`) trains in mixed precision
    (:mod:`~symbackprop.codegen.jax_mixed`) and prints the underflow counts after every
    epoch; the loss scaler's state is replicated and kept in the checkpoints.

    Examples
    --------
    >>> src = data_parallel_script(sb.models.mlp([4, 3, 2]), optimizer="adam", lr=0.01)
    >>> "jax.sharding.Mesh(np.array(devices), (\\"data\\",))" in src, "import symbackprop" in src
    (True, False)
    """
    # which input is X and which y, and each layer's weights: the NumPy script's rules
    from .script import _data_constants, _data_task, _layers_constant

    b = backends.get(backend)
    if not b.sharded_script:
        raise CodegenError(f"backend {b.name!r} writes no training script; use "
                           f"{', '.join(backends.script_backends())}.")
    epochs, batch_size = _positive("epochs", epochs), _positive("batch_size", batch_size)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed={seed!r}; expected an int >= 0.")
    m = functional.build(g, of, wrt, optimizer, lr, hyper, dtype, optimize, b.name,
                         precision=precision, growth_interval=growth_interval)
    task = _data_task(g, m.of, features, target)
    nm = m.em.namer
    name = safe_text(g.nx.graph.get("name", "network"))
    doc = step_doc(m, f"Train the network {name} with {m.opt.title}: a standalone JAX training "
                      "script, data-parallel over every device.")
    doc += wrap(
        f"Data: an .npz with X (fed to {safe_text(task.features)})"
        + (f" and y (fed to {safe_text(task.target)})" if task.target else "") + ".",
        "Each global batch (--batch-size) is split over all devices (jax.sharding.Mesh, "
        "a 'data' axis); parameters and optimizer state are replicated, and XLA sums the "
        "gradients across devices. Several hosts: --coordinator HOST:PORT --num-processes K "
        "--process-id I on each (jax.distributed.initialize).") + "\n" + (
        f"Generated by symbackprop {_version} (sb.training_script, backend 'jax'). Needs "
        "only JAX (and NumPy,\nwhich JAX depends on, to read the data). Do not edit: "
        "regenerate instead.\n\n"
        "Usage:\n"
        "    python train.py --data data.npz --out checkpoint.npz\n"
        f"    python train.py --data data.npz --epochs {2 * epochs} --resume checkpoint.npz "
        "--out checkpoint.npz\n"
        "    XLA_FLAGS=--xla_force_host_platform_device_count=4 python train.py --data "
        "data.npz")
    evaluate, metric = _evaluate(m, task)
    context = m.context
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
    blocks = [evaluate, _grad_norms(m, task)]
    if context:  # batch norm, dropout (issue 15)
        kept = tuple(k for c, k in (("running", "running"), ("rng", "key")) if c in context)
        constants.append(f"BUFFERS = {kept!r}  # what init_buffers() makes")
        blocks += _buffers(m)
    if "rng" in context:
        constants[:0] = [
            "# dropout's masks are drawn inside the sharded step: each device draws the bits of its",
            "# own rows (the same masks as on one device)",
            'jax.config.update("jax_threefry_partitionable", True)']
    mixed = bool(m.precision)  # the step's underflow() and its log line (codegen/jax_mixed.py)
    # the NumPy script's checks leave the arrays' dtypes to main; one process per host (no MPI)
    checks = {"tokens": task.tokens, "floats": False, "cast": False, "raw": True, "mpi": False}
    blocks += [source_of(runtime_script, *(n for n in CHECKS if task.tokens
                                           or n != "check_tokens"), variants=checks),
               source_of(runtime_script, "shape_option", "add_run_options", "add_watch_options",
                         "GradNorms", "last_good_path")]
    blocks += [source_of(jax_mixed, "underflow_line")] if mixed else []
    variants = {"buffers": bool(context), "plain": not context, "mixed": mixed}
    cut = MAIN.index("save_checkpoint")
    blocks += [source_of(jax_script, *MAIN[:cut], variants=variants),
               source_of(atomic, "atomic_write"),
               source_of(jax_script, *MAIN[cut:], variants=variants)]
    return functional.model_text(
        m, doc, blocks=blocks,
        imports=("argparse", "csv", "json", "os", "sys", "tempfile", "time", "zipfile"),
        constants=constants, library=b.script_imports())


__all__ = ["data_parallel_script"]
