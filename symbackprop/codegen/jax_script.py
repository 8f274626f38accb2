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
atomically), resumes from them (``--resume``, checked against the network's name) and
reports the test accuracy or loss after every epoch (``evaluate``, written here from
``forward``).
"""

from __future__ import annotations

import numbers

from .. import __version__ as _version
from ..errors import CodegenError
from ..graph import Graph
from . import backends, functional
from .emit import safe_text
from .module import call_lines, step_doc, wrap
from .runtime import jax_mixed, jax_script, source_of

MAIN = ("CheckpointError", "parse_args", "fail", "first_copy", "host", "save_checkpoint",
        "load_checkpoint", "main", "__main__")


def _positive(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
        raise ValueError(f"{name}={v!r}; expected an int >= 1.")
    return int(v)


def _evaluate(m, task) -> tuple[str, str]:
    """``evaluate(params, X, y)`` through the jitted ``forward``, and its metric: the
    accuracy when ``forward`` returns a classifier's scores (the NumPy script's rule:
    the argmax, or > 0 for binary logits), else the loss."""
    fwd = m.functions[0]
    data = {task.features: "X"} | ({task.target: "y"} if task.target else {})
    body = call_lines("out = ", "forward", m.args(fwd, data))
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
    return "\n".join(["def evaluate(params, X, y):", f'    """{doc}"""']
                     + ["    " + b for b in body]) + "\n", metric


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
    from .script import _data_task  # which input is X and which y: the NumPy script's rule

    b = backends.get(backend)
    if not b.sharded_script:
        raise CodegenError(f"backend {b.name!r} writes no training script; use numpy or jax.")
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
    constants = [f"EPOCHS = {epochs}", f"BATCH_SIZE = {batch_size}", f"SEED = {seed}",
                 f"FEATURES = {nm(task.features)!r}  # the input fed from the data's X",
                 (f"TARGET = {nm(task.target) if task.target else None!r}  # the input fed "
                 "from the data's y"),
                 f"NETWORK = {str(g.nx.graph.get('name', 'network'))!r}",
                 f"OPTIMIZER = {m.opt.name!r}",
                 f"METRIC = {metric!r}  # evaluate() returns: 'acc' (accuracy) or 'loss'"]
    mixed = bool(m.precision)  # the step's underflow() and its log line (codegen/jax_mixed.py)
    main = source_of(jax_script, *MAIN, variants={"mixed": mixed})
    blocks = [evaluate, source_of(jax_mixed, "underflow_line"), main] if mixed \
        else [evaluate, main]
    return functional.model_text(
        m, doc, blocks=blocks,
        imports=("argparse", "json", "os", "sys", "tempfile", "time"),
        constants=constants, library=b.imports() + "\nimport numpy as np")


__all__ = ["data_parallel_script"]
