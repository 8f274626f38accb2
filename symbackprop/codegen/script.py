"""A standalone training script as NumPy source.

:func:`training_script` adds to the module of
:func:`~symbackprop.codegen.train.train_step` everything a standalone training
run needs (data loading and checks, minibatches, progress lines, NaN/inf guard,
atomic checkpoints, resume, a command line) and imports only NumPy and the
standard library. Which inputs the data arrays ``X`` and ``y`` feed, and whether
the network is a classifier, is read from the graph; the fixed part of every
script is real Python in :mod:`symbackprop.codegen.runtime.script` (:data:`RUNTIME`
names what is copied).
"""

from __future__ import annotations

import math
import numbers
import textwrap
from dataclasses import dataclass

import networkx as nx

from .. import __version__ as _version
from ..errors import CodegenError
from ..graph import Graph, fmt_shape
from ..layers import layers
from . import backends
from .emit import Function, call_lines, safe_text
from .mixed import check_growth_interval, functional_precision, resolve_precision
from .mixed import constant_lines as mixed_constants
from .module import (
    Model,
    assemble,
    build_model,
    check_fusable,
    check_fusable_backend,
    grad_norms_block,
    params_of,
    step_blocks,
    step_doc,
    wrap,
)
from .optimizers import constant_lines
from .runtime import atomic, cupy_script, source_of
from .runtime import mixed as runtime_mixed
from .runtime import script as runtime_script

# The fixed part of every training script, in this order; it reads the constants above it
# (and runtime/atomic.py's atomic_write, shared with the JAX and torch scripts, goes just
# before save_checkpoint).
RUNTIME = ("InputError", "is_number", "read_npz", "check_arrays", "read_csv", "check_split",
           "load_data", "save_checkpoint", "load_checkpoint", "fail", "ScriptParser",
           "check_network", "check_precision", "check_out", "outputs", "last_good_path",
           "GradNorms", "train", "option", "shape_option", "parse_args", "add_run_options",
           "add_watch_options", "main", "__main__")
# and in a data-parallel script (distributed="mpi"), before InputError, fail and last_good_path
MPI_RUNTIME = {"InputError": ("MPI",),
               "last_good_path": ("world_rank", "mpi_world", "abort_all", "shard", "allreduce")}


@dataclass
class _Task:
    """What the data arrays mean for the network."""

    features: str  # the graph input fed from X
    target: str | None  # the graph input fed from y (None: unsupervised, e.g. an autoencoder)
    kind: str | None  # "labels", "values" or None
    scores: str | None = None  # classifiers: the node whose argmax (or sign) is the class
    n_classes: int | None = None
    binary: bool = False
    tokens: bool = False  # X holds integer token ids (an index into a table, sb.embedding)
    vocab: int | None = None  # tokens are 0..vocab-1 (None: only >= 0 is known)


def _option_error(message) -> CodegenError:
    """A CodegenError whose text ``message(opt)`` names options through ``opt``: as
    keyword arguments (``features=``), and in ``cli_message``, which the CLI prints, as
    the command line's flags (``--features``).

    Examples
    --------
    >>> e = _option_error(lambda opt: f"Pass {opt('features')}<input>.")
    >>> str(e), e.cli_message
    ('Pass features=<input>.', 'Pass --features <input>.')
    """
    e = CodegenError(message(lambda name: f"{name}="))
    e.cli_message = message(lambda name: f"--{name.replace('_', '-')} ")
    return e


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
            raise _option_error(lambda opt, name=name, what=what: (
                f"{opt(what)}{name!r} is not an input the loss {of!r} uses; inputs: "
                f"{', '.join(inputs) or 'none'}."))
    ints = [n for n in inputs if g.nx.nodes[n]["dtype"] == "int"]
    floats = [n for n in inputs if g.nx.nodes[n]["dtype"] == "float"]
    if target is None and len(inputs) > 1:
        if len(ints) == 1:
            target = ints[0]
        elif (not ints and len(floats) == 2) or (not floats and len(ints) == 2):
            pair = floats or ints  # two float inputs, or integer tokens and integer labels
            dist = {n: nx.shortest_path_length(g.nx, n, of) for n in pair}
            a, b = pair
            if dist[a] != dist[b]:
                target = a if dist[a] < dist[b] else b
    rest = [n for n in inputs if n != target]
    if features is None and len(rest) == 1:
        features = rest[0]
    if features is None or len(inputs) > 2 or (target is None and len(inputs) == 2):
        raise _option_error(lambda opt: (
            f"cannot tell which inputs the data arrays X and y feed among "
            f"{', '.join(inputs) or 'none'}; a training script takes one input of features "
            f"and at most one target. Pass {opt('features')}<input> and {opt('target')}<input>."))
    tokens, vocab = g.nx.nodes[features]["dtype"] != "float", None
    if tokens:
        vocab = _index_range(g, features)
        if vocab is False:
            raise CodegenError(f"features input {features!r} holds integers but indexes no "
                               "table (sb.embedding or sb.take); declare it as float.")
    fshape = g.nx.nodes[features]["shape"]
    if not fshape or not isinstance(fshape[0], str) \
            or not all(isinstance(d, int) for d in fshape[1:]):
        raise CodegenError(f"features input {features!r} has shape {fmt_shape(fshape)}; "
                           "expected a batch size name first and fixed sizes after, e.g. "
                           "(N, 64).")
    if target is None:
        return _Task(features, None, None, tokens=tokens, vocab=vocab)
    tshape = g.nx.nodes[target]["shape"]
    if not tshape or tshape[0] != fshape[0] \
            or not all(isinstance(d, int) for d in tshape[1:]):
        raise CodegenError(f"target input {target!r} has shape {fmt_shape(tshape)}; expected "
                           f"({fshape[0]}, ...) with fixed sizes after the batch size.")
    if g.nx.nodes[target]["dtype"] != "int":
        return _Task(features, target, "values", tokens=tokens, vocab=vocab)
    task = _Task(features, target, "labels", tokens=tokens, vocab=vocab)
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


def _index_range(g: Graph, ids: str):
    """The number of valid values of the integer input ``ids`` where it indexes a table
    (``take(E, ids, axis)``: the size of E's axis; the smallest over several tables),
    None when a table's size is not fixed, False when it indexes nothing."""
    sizes = []
    for c, pos in g.consumers(ids):
        axis = g.nx.nodes[c].get("attrs", {}).get("axis")
        tables = [a for k, a in enumerate(g.args(c)) if k != pos
                  and g.nx.nodes[a]["dtype"] == "float"]
        if not isinstance(axis, int) or len(tables) != 1:
            continue
        shape = g.nx.nodes[tables[0]]["shape"]
        if -len(shape) <= axis < len(shape):
            sizes.append(shape[axis])
    if not sizes:
        return False
    fixed = [d for d in sizes if isinstance(d, int)]
    return min(fixed) if fixed else None


def _positive_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
        raise ValueError(f"{name}={v!r}; expected an int >= 1.")
    return int(v)


def _script_constants(m: Model, task: _Task, metric: str, epochs, batch_size,
                      seed) -> list[str]:
    """The script's constants: the network's and optimizer's, the run's defaults, the
    data's (:func:`_data_constants`), METRIC, LAYERS, the loss scaler's (mixed
    precision) and BUFFERS (batch norm, dropout)."""
    constants = [
        f"NETWORK = {str(m.g.nx.graph.get('name', 'network'))!r}",
        f"OPTIMIZER = {m.opt.name!r}",
        *constant_lines(m.hyper),
        f"EPOCHS = {epochs}",
        f"BATCH_SIZE = {batch_size}",
        f"SEED = {seed}",
        *_data_constants(m.g, task),
        f"METRIC = {metric!r}  # evaluate() returns: 'acc' (accuracy) or 'loss'",
        _layers_constant(m),
    ]
    if m.precision == "mixed":
        constants += mixed_constants(m)
    if m.context:  # batch norm, dropout: their state in checkpoints (issue 13)
        constants.append("BUFFERS = {}  # batch norm's running statistics, dropout's "
                         "generator: main fills it")
    return constants


def _data_constants(g: Graph, task: _Task) -> list[str]:
    """The constants that the NumPy script's data checks read (``load_data``,
    ``check_split``, ``read_csv``): the torch and JAX scripts copy those checks too."""
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
    if task.tokens:
        x_npz += (f" integer tokens in 0..{task.vocab - 1}" if task.vocab
                  else " integer tokens >= 0")
    if task.target is None:
        npz = f"an array {x_npz}, optionally X_test"
        csv = f"rows of {n_feat} feature columns"
    else:
        npz = f"arrays {x_npz} and {y_npz}, optionally X_test and y_test"
        csv = f"rows of {n_feat} feature columns then {y_csv}"
    tokens = [f"VOCAB = {task.vocab!r}  # X holds integer token ids 0..VOCAB-1"] \
        if task.tokens else []
    return [
        f"FEATURE_SHAPE = {fshape!r}  # one row of X",
        f"TARGET = {task.kind!r}  # y holds: 'labels' (class indices), 'values' or None (no y)",
        f"TARGET_SHAPE = {tshape!r}  # one entry of y",
        f"N_CLASSES = {task.n_classes!r}",
        f"CSV_COLUMNS = {n_feat + tcols}",
        f"DATA_NPZ = {npz!r}",
        f"DATA_CSV = {csv!r}",
        *tokens,
    ]


def _script_functions(m: Model, task: _Task) -> tuple[list[Function], list[str], str]:
    """``predict`` (classifiers), ``minibatch`` and ``evaluate``."""
    em, fns, blocks = m.em, [], []
    x, y = em.namer(task.features), (em.namer(task.target) if task.target else None)
    keys = [(x, "X")] + ([(y, "y")] if y else [])
    sources = ", ".join(f"{k} from {v}" for k, v in keys)
    context = m.context
    # the cupy script's dropout: NumPy's generator on the host, its draws copied (HostDraws)
    host_draws = em.backend.on_device and "rng" in context
    if context:  # batch norm, dropout: their state rides with every minibatch (issue 13)
        if not host_draws:  # else init_buffers is the host's (a NumPy generator)
            blocks.append(_init_buffers(context))
        sources += ", and BUFFERS"
    if host_draws:
        sources += ";\n    dropout's generator draws through HostDraws (NumPy's draws, copied to the GPU)"
    blocks.append("\n".join([
        "def minibatch(X, y, idx):",
        f'    """The network\'s inputs for the rows idx of the data: {sources}."""',
        "    return {" + ", ".join(f"{k!r}: {v}[idx]" for k, v in keys)
        + (", **BUFFERS" if context else "")
        + (", 'rng': HostDraws(BUFFERS['rng'])" if host_draws else "") + "}"]) + "\n")
    # evaluation mode: the running statistics, no dropout
    fixed = (["training=False"] + (["running=BUFFERS['running']"] if "running" in context
                                   else [])) if context else []
    data = {task.features: "X"} | ({task.target: "y"} if task.target else {})
    if task.scores is not None:
        s = em.code(task.scores)
        rule = (f"1 where {safe_text(task.scores)} > 0" if task.binary
                else f"the argmax of {safe_text(task.scores)}")
        pred = em.function("predict", [task.scores],
                           f"Predicted class of each row: {rule}.")
        pred.ret = (f"({s} > 0).astype(np.int64)" if task.binary else f"{s}.argmax(axis=1)")
        fns.append(pred)
        body = call_lines("return float(np.mean(", "predict", m.args(pred, data) + fixed)
        body[-1] += " == y))"
        doc = "Accuracy: the fraction of rows of X whose predicted class is y."
        metric = "acc"
    else:
        fwd = m.functions[0]
        body = call_lines("return float(", "forward", m.args(fwd, data) + fixed)
        body[-1] += f"[{m.of!r}])"
        doc = f"The loss {safe_text(m.of)} on all of (X, y)."
        metric = "loss"
    blocks.append("\n".join(["def evaluate(params, X, y):", f'    """{doc}"""']
                            + ["    " + b for b in body]) + "\n")
    vg = next(f for f in m.functions if f.name == "value_and_grad")
    # mixed precision: the norms of the float32 gradients (float16's flush to zero)
    # the cupy script's dropout: the NumPy script's masks (its rng=0: default_rng(0)'s draws)
    call = call_lines("_, grads = ", "reference_value_and_grad" if m.precision == "mixed"
                      else "value_and_grad", m.args(vg, data)
                      + (["rng=HostDraws(0)"] if host_draws else []))
    blocks.append(grad_norms_block(call))
    return fns, blocks, metric



def _check_distributable(m: Model, task: _Task) -> None:
    """Refuse, with one line, what ``distributed="mpi"`` cannot train as one process does:
    a random draw (dropout's mask) whose first axis is not the batch's rows (RowDraws, in
    the script, draws the global batch's mask and keeps this rank's rows). Batch norm
    trains with its statistics over every rank's rows (:mod:`.sync`)."""
    context = m.context
    if "rng" not in context:
        return
    batch = m.g.nx.nodes[task.features]["shape"][0]
    for n in m.g.nx:
        if m.g.is_leaf(n) or "rng" not in m.em.backend.lowering(m.g.opdef(n)).context:
            continue
        shape = tuple(m.g.nx.nodes[n]["shape"])  # the draw's shape: the node's own
        if not shape or shape[0] != batch or batch in shape[1:]:
            raise _option_error(lambda opt, n=n, shape=shape: (
                f"{opt('distributed')}mpi draws dropout masks by rows of the global batch, "
                f"but the mask {safe_text(n)} has shape {fmt_shape(shape)}, whose first axis is not "
                f"the batch {batch!r} alone; apply dropout to arrays of shape ({batch}, ...), "
                "or train this network in one process."))


def _init_buffers(context: list[str]) -> str:
    """The script's ``init_buffers(seed)``: what ``BUFFERS`` starts with."""
    items = {"running": '"running": init_running()',
             "rng": '"rng": np.random.default_rng([seed, 1])'}
    doc = {"running": "the batch norms' running statistics (mean 0, variance 1)",
           "rng": ("dropout's generator, seeded by [seed, 1]: a stream of its own, apart "
                   "from the initialisation's and shuffling's")}
    text = ("What the network keeps besides its parameters, which train_step updates and "
            "the checkpoints hold: " + "; ".join(doc[c] for c in context) + '."""')
    return "\n".join([
        "def init_buffers(seed):",
        *textwrap.wrap(text, 88, initial_indent='    """', subsequent_indent="    "),
        "    return {" + ", ".join(items[c] for c in context) + "}"]) + "\n"


def _layers_constant(m: Model) -> str:
    """``LAYERS = {'layer1': ('W1',), ...}``: the trained weights of each layer
    (:func:`symbackprop.layers.layers`), for ``--log-grad-norms`` and ``--metrics``."""
    trained = set(m.wrt)
    found = [(s.name, tuple(w for w in s.weights if w in trained)) for s in layers(m.g)]
    found = [(k, ws) for k, ws in found if ws] or [("all", tuple(m.wrt))]
    items = [f"    {str(k)!r}: {ws!r}," for k, ws in found]
    return "\n".join(["LAYERS = {  # each layer's weights: --log-grad-norms, --metrics", *items,
                      "}"])


def training_script(g: Graph, of: str | None = None, optimizer: str = "sgd",
                    lr: float | None = None, epochs: int = 10, batch_size: int = 32,
                    seed: int = 0, wrt=None, dtype: str = "float64", optimize=True,
                    features: str | None = None, target: str | None = None,
                    checkpoint="none", distributed: str | None = None,
                    precision: str | None = None, growth_interval: int = 2000, backend: str = "numpy",
                    fuse_update: bool = False,
                    **hyper) -> str:
    """Source of a standalone training script (NumPy and the standard library only).

    Parameters
    ----------
    g : Graph
        The network. Its loss must be a mean over the minibatch; it takes one input
        of features (fed from the data's ``X``) and at most one target (``y``).
    of : str, optional
        The scalar loss (default: the last scalar output).
    optimizer, lr, wrt, dtype, optimize, checkpoint, precision, growth_interval, fuse_update, **hyper
        As for :func:`~symbackprop.codegen.train.train_step` (``checkpoint="sqrt"``: the
        step recomputes forward values instead of keeping them; the same training;
        ``fuse_update=True``: each parameter updated in the backward sweep, the same
        training; a nan/inf gradient stops the run after a partial step, whose parameters
        the script saves, saying so).
        ``precision="mixed"``: the script trains in mixed precision, its checkpoints keep
        the loss scaler's state, and every epoch it prints how many gradient entries
        float16 flushes to zero without and with loss scaling. With ``backend="jax"``,
        ``"mixed"`` and ``"bfloat16"`` (no loss scaling) as in
        :mod:`~symbackprop.codegen.jax_mixed`; the scaler's state is replicated over the
        devices and saved in the checkpoints.
    epochs, batch_size, seed : int
        The script's defaults for ``--epochs``, ``--batch-size`` and ``--seed``.
    features, target : str, optional
        The inputs fed from ``X`` and ``y``. By default the integer input is the
        target (or, of two float inputs, the one nearer the loss) and the other
        input the features; a graph with one input (an autoencoder) has no target.
    distributed : {None, "mpi"}
        ``"mpi"``: a data-parallel script, run as ``mpirun -n K python train.py ...``
        with mpi4py (``pip install symbackprop[distributed]``): every rank reads the
        data and shuffles alike, computes the gradient of its K-th of each global
        batch (``--batch-size``, a multiple of K), and one ``Allreduce`` of the flat
        gradient buffer sums them; rank 0 alone prints and writes checkpoints, which
        resume on any K. Without ``mpirun`` it runs as one process. With dropout,
        every rank draws the global batch's masks and keeps its rows' (the one-process
        masks); with ``precision="mixed"`` the float32 gradients are summed and every rank
        skips the same overflowing steps; batch norm takes the global batch's statistics
        over every rank's rows (SyncBatchNorm, :mod:`~symbackprop.codegen.sync`). See
        ``docs/training.md``, "Data parallel with MPI".
    backend : {"numpy", "jax", "torch", "cupy"}
        ``"jax"``: a JAX script, each global batch split over every device
        (:func:`~symbackprop.codegen.jax_script.data_parallel_script`, docs/backends.md).
        ``"torch"``: a PyTorch script on ``--device``
        (:func:`~symbackprop.codegen.torch_train.script_source`).
        ``"cupy"``: this script with the cupy training step, on the GPU: the data copied
        there once and each epoch's order (NumPy's) once an epoch, the initial parameters
        NumPy's draws copied there, checkpoints through ``cp.asnumpy``; the same seed
        trains as the NumPy script. With dropout, the masks' uniform draws are the NumPy
        script's generator's, made on the host and copied to the GPU every step
        (``HostDraws``): the NumPy script's masks, and a generator state the checkpoints
        keep. Refused: ``distributed``. The NumPy, torch and
        cupy scripts (and JAX's) have resumable checkpoints, ``last_good``, ``--metrics``
        and ``--log-grad-norms``.

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
        For a bad optimizer, hyper-parameter, epochs, batch size or seed; for a
        ``growth_interval`` other than 2000 without ``precision="mixed"`` (the loss
        scaler's).
    CodegenError
        For a backend that writes no training script (array_api: see
        :func:`~symbackprop.codegen.backends.script_backends`), checked before any other
        option; when the graph's inputs cannot be mapped to ``X`` and ``y``; with
        ``distributed="mpi"``, for dropout on an array whose first axis is not the batch,
        or ``optimize=False`` (no flat gradient buffer).

    Examples
    --------
    >>> src = sb.training_script(sb.models.mlp([4, 3, 2]), optimizer="adam", lr=0.01)
    >>> src.splitlines()[0]
    '\"\"\"Train the network mlp_4_3_2 with Adam: a standalone NumPy training script.'
    >>> "import sympy" in src or "symbackprop" in src.split("Generated by")[1].split("\\n")[1]
    False
    """
    b = backends.get(backend)
    _check_backend_options(b, distributed, fuse_update, optimize)
    check_growth_interval(precision, growth_interval)
    own = _backend_script(b, g, checkpoint, precision, dtype, of=of, optimizer=optimizer, lr=lr,
                          epochs=epochs, batch_size=batch_size, seed=seed, wrt=wrt,
                          optimize=optimize, features=features, target=target,
                          growth_interval=growth_interval, **hyper)
    if own is not None:  # torch's script, JAX's
        return own
    epochs, batch_size = _check_run_options(epochs, batch_size, seed, distributed)
    precision, _ = resolve_precision(precision, dtype, b.title)
    of0, _ = params_of(g, of, wrt)
    task = _data_task(g, of0, features, target)
    m = build_model(g, of, wrt, optimizer, lr, hyper, dtype, optimize,
                    extra_outputs=[n for n in (task.scores, of0) if n is not None],
                    checkpoint=checkpoint, precision=precision, growth_interval=growth_interval,
                    fuse_update=fuse_update, backend=backend,
                    # data parallel: batch norm over every rank's rows (codegen/sync.py)
                    sync_batch_norm=distributed == "mpi")
    fns, blocks, metric = _script_functions(m, task)
    if distributed == "mpi":
        _check_distributable(m, task)
    call = _generated_call(m, b, backend, hyper, checkpoint, distributed, growth_interval,
                           epochs, batch_size, seed)
    doc = _script_doc(m, task, b, call, epochs, distributed)
    constants = _script_constants(m, task, metric, epochs, batch_size, seed)
    host = _host_sources(m, task, b, distributed)
    return _assemble_script(doc, m, b, fns, step_blocks(m, distributed) + blocks, host,
                            constants)


def check_script_backend(backend) -> None:
    """One ``CodegenError`` line for a backend (a name or a
    :class:`~.backends.Backend`) that writes no training script, naming those that do
    (:func:`~.backends.script_backends`); the command line checks it before its options.

    Examples
    --------
    >>> check_script_backend("jax")
    >>> check_script_backend("array_api")
    Traceback (most recent call last):
    ...
    symbackprop.errors.CodegenError: backend='array_api' writes no training script, only a training step (sb.train_step); for a script use backend='numpy', 'jax', 'torch' or 'cupy'.
    """
    b = backends.get(backend)
    if backends.writes_script(b):
        return
    scripts = backends.script_backends()

    def names(fmt):
        return f"{', '.join(map(fmt, scripts[:-1]))} or {fmt(scripts[-1])}"

    e = CodegenError(f"backend={b.name!r} writes no training script, only a training step "
                     f"(sb.train_step); for a script use backend={names(repr)}.")
    e.cli_message = (f"--backend {b.name} writes no training script, only a training step "
                     f"(codegen --optimizer); for a script use --backend {names(str)}.")
    raise e


def _check_backend_options(b, distributed, fuse_update, optimize) -> None:
    """Refuse the options that backend ``b`` (a :class:`~.backends.Backend`) cannot take,
    each in one line read from the records: first a backend that writes no training script
    at all, before any option is looked at; then ``fuse_update`` without the planned step
    and ``distributed`` but for the script that mpirun runs (NumPy's, on the host)."""
    check_script_backend(b)
    if fuse_update:
        check_fusable_backend(b)
        check_fusable(optimize, distributed=distributed)

    def mpirun_runs(x) -> bool:  # the NumPy script, arrays on the host: not torch's or
        # JAX's own script, not the GPU's
        return x.trainer() is None and not x.functional and not x.on_device

    if distributed is not None and not mpirun_runs(b):
        # the others' records only now: loading them imports JAX and PyTorch (seconds)
        mpi = [n for n in backends.script_backends() if mpirun_runs(backends.get(n))]
        how = (" splits each batch over its devices itself, across several processes too "
               "with its own --coordinator, --num-processes and --process-id options "
               "(jax.distributed)" if b.sharded_script else " runs as one process")
        raise _option_error(lambda opt: (
            f"{opt('distributed')}{distributed} is the {' and '.join(mpi)} script's (mpirun); "
            f"the {b.name} script{how}: drop {opt('distributed')}{distributed}, or use "
            f"{opt('backend')}{mpi[0]}."))


def _backend_script(b, g, checkpoint, precision, dtype, **options) -> str | None:
    """The script of a backend that writes its own (torch: its ``trainer``; JAX: the
    data-parallel one), or None for the backends with NumPy's script (numpy, cupy).
    ``options``: :func:`training_script`'s, by keyword, which both writers take."""
    trainer = b.trainer()
    if trainer is None and not b.functional:
        return None
    if trainer is None and checkpoint not in (None, "none"):  # the data-parallel script
        given = checkpoint if isinstance(checkpoint, str) else ",".join(checkpoint)
        raise _option_error(lambda opt: (
            f"{opt('checkpoint')}{given}: the {b.name} script has no gradient checkpointing "
            f"(XLA decides what it keeps): drop {opt('checkpoint').strip(' =')}."))
    precision, dtype = functional_precision(precision, dtype, b)
    if trainer is not None:  # issue 15: the backend's own script (torch)
        return trainer.script_source(g, checkpoint=checkpoint, precision=precision,
                                     dtype=dtype, **options)
    from .jax_script import data_parallel_script  # issue 15: data parallelism through JAX

    return data_parallel_script(g, backend=b, precision=precision, dtype=dtype, **options)


def _check_run_options(epochs, batch_size, seed, distributed) -> tuple[int, int]:
    """``(epochs, batch_size)`` as ints; ``ValueError`` for a bad one, a bad ``seed`` or
    ``distributed``."""
    epochs = _positive_int("epochs", epochs)
    batch_size = _positive_int("batch_size", batch_size)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed={seed!r}; expected an int >= 0.")
    if distributed not in (None, "mpi"):
        raise ValueError(f"distributed={distributed!r}; expected None (one process) or 'mpi' "
                         "(data parallel under mpirun).")
    return epochs, batch_size


def _generated_call(m: Model, b, backend, hyper, checkpoint, distributed, growth_interval,
                    epochs, batch_size, seed) -> str:
    """The ``sb.training_script(...)`` call that wrote the script, for its docstring: the
    options that differ from their defaults, and the run's defaults."""
    mixed = m.precision == "mixed"
    given = "".join(f", {k}={float(v)!r}" for k, v in sorted(hyper.items()))
    given += "" if mixed or m.dtype == "float64" else f", dtype={m.dtype!r}"
    if mixed:
        given += ", precision='mixed'" + ("" if growth_interval == 2000
                                          else f", growth_interval={growth_interval!r}")
    given += "" if checkpoint in (None, "none") else f", checkpoint={checkpoint!r}"
    given += f", distributed={distributed!r}" if distributed == "mpi" else ""
    given += ", fuse_update=True" if m.fused else ""
    given += f", backend={backend!r}" if b.on_device else ""
    return (f"sb.training_script(graph, of={m.of!r}, optimizer={m.opt.name!r}, "
            f"lr={m.hyper['lr']!r}{given},\n{' ' * 19}epochs={epochs}, "
            f"batch_size={batch_size}, seed={seed})")


def _script_doc(m: Model, task: _Task, b, call: str, epochs: int, distributed) -> str:
    """The generated script's docstring: the step's description (:func:`step_doc`), the
    data, the ``call`` that wrote it, what it needs, its usage, then a paragraph for the
    GPU (cupy) or for MPI."""
    mpi = distributed == "mpi"
    name = safe_text(m.g.nx.graph.get("name", "network"))
    doc = step_doc(m, f"Train the network {name} with {m.opt.title}: a standalone {b.title} "
                      "training script.")
    if b.on_device:
        needs = (f"Needs {b.title} with a GPU (the training step), NumPy (the data and\n"
                 "checkpoints, on the host) and the Python standard library.")
    elif mpi:
        needs = ("Needs NumPy, the Python standard library and mpi4py with an MPI library (pip "
                 "install mpi4py mpich).")
    else:
        needs = "Needs only NumPy and the Python standard library."
    run = "python train.py" if not mpi else "mpirun -n 2 python train.py"
    doc += wrap(f"Data: X feeds {safe_text(task.features)}; {_data_text(task)}.") + "\n" + (
            f"Generated by symbackprop {_version} with\n    "
            + "\n    ".join(map(safe_text, call.split("\n"))) + "\n"
            f"{needs} Do not edit: regenerate "
            "instead.\n\n"
            "Usage:\n"
            f"    {run} --data data.npz --out checkpoint.npz\n"
            f"    {run} --data data.npz --epochs {2 * epochs} --resume "
            "checkpoint.npz\n"
            "Run it with --help for every option.")
    if b.on_device:
        doc += _device_text(m)
    if mpi:
        doc += _mpi_text(m)
    return doc


def _data_text(task: _Task) -> str:
    """What y holds and what the script reports, for the docstring's "Data:" line."""
    if task.kind == "labels" and task.scores:
        return (f"classification into {task.n_classes} classes: y holds integer labels, the "
                f"predicted class is {'1 where' if task.binary else 'the argmax of'} "
                f"{safe_text(task.scores)}{' > 0' if task.binary else ''}; the script reports "
                "accuracy")
    if task.kind is None:
        return f"unsupervised: the loss needs only X (fed to {safe_text(task.features)})"
    return f"y holds {task.kind} fed to {safe_text(task.target)}; the script reports loss"


def _device_text(m: Model) -> str:
    """The docstring's paragraph on the GPU script (cupy): what is copied, and when."""
    text = ("\n\nOn the GPU: the data is copied to the GPU once, each epoch's order (NumPy's, "
            "from --seed)\nonce per epoch, and the batches are taken there; the initial "
            "parameters are NumPy's\ndraws, copied; checkpoints are NumPy arrays. The same "
            "seed trains as the NumPy script.")
    if "rng" in m.context:
        text += ("\nDropout: the masks are NumPy's draws on the host, copied to the GPU "
                 "every step\n(HostDraws): the NumPy script's masks, and a generator "
                 "state the checkpoints keep.")
    return text


def _mpi_text(m: Model) -> str:
    """The docstring's paragraph on the data-parallel script: how the ranks split the
    work, and how dropout, batch norm and mixed precision stay the one process's."""
    text = ("\n\nData parallel (MPI): each of the K ranks (mpirun -n K) reads the data and "
            "shuffles\nalike, computes the gradient of its K-th of every global batch "
            "(--batch-size, a\nmultiple of K) and one Allreduce sums the flat gradient "
            "buffers; rank 0 alone prints\nand writes checkpoints, which resume on any K. "
            "Set OPENBLAS_NUM_THREADS (e.g. 1) so\nthat the ranks do not share cores. "
            "Without mpirun it runs as one process.")
    if "rng" in m.context:
        text += ("\nDropout: every rank draws the masks of the whole global batch and keeps "
                 "its rows'\n(RowDraws): the one process's masks and generator state.")
    if m.synced:
        text += ("\nBatch norm: the global batch's mean and variance, and the sums of its "
                 "backward, over\nevery rank's rows (RowSums, SyncBatchNorm): the one "
                 "process's running statistics.")
    if m.precision == "mixed":
        text += ("\nMixed precision: the ranks sum float32 gradients (_summed_update) and "
                 "all take the\none process's overflow decisions, so the scaler's state "
                 "is the same on every rank.")
    return text


def _runtime_names(m: Model, task: _Task, mpi: bool) -> tuple[str, ...]:
    """:data:`RUNTIME` with the functions that the data and the options add: check_tokens
    (token ids), the buffers' state in checkpoints (batch norm, dropout) and, with MPI,
    :data:`MPI_RUNTIME`, RowDraws (dropout), RowSums (batch norm) and last_rank_buffers."""
    runtime = RUNTIME if not task.tokens else tuple(
        n for name in RUNTIME for n in (("check_tokens", name) if name == "check_split"
                                        else (name,)))
    buffers = bool(m.context)
    if buffers:  # batch norm, dropout: their state in checkpoints (issue 13)
        runtime = tuple(n for name in runtime for n in (
            ("buffers_state", "restore_buffers", name) if name == "save_checkpoint" else (name,)))
    if mpi:  # data parallel (issue 15)
        dropout, synced = "rng" in m.context, m.synced  # synced: batch norm (RowSums)
        runtime = tuple(n for name in runtime for n in (
            (*MPI_RUNTIME.get(name, ()), name) if name == "InputError"
            else (name, *MPI_RUNTIME.get(name, ()), *(("RowDraws",) if dropout else ()),
                  *(("RowSums",) if synced else ()), *(("last_rank_buffers",) if buffers else ()))
            if name == "last_good_path" else (name,)))
    return runtime


def _variants(m: Model, task: _Task, b, mpi: bool) -> dict[str, bool]:
    """The ``# variant:`` blocks of the runtime functions that the script keeps."""
    mixed = m.precision == "mixed"
    return {"tokens": task.tokens, "floats": not task.tokens, "cast": True, "raw": False,
            "buffers": bool(m.context),
            "mixed": mixed and not mpi, "mixed_mpi": mixed and mpi, "mpi": mpi,
            "mpi_dropout": mpi and "rng" in m.context, "mpi_syncbn": mpi and m.synced,
            "single": not mpi, "fused": m.fused, "device": b.on_device, "host": not b.on_device}


def _host_sources(m: Model, task: _Task, b, distributed) -> list[str]:
    """The runtime's source blocks (NumPy code on the host: data, shuffling, checkpoints,
    the command line), the shared atomic write just before save_checkpoint; on the GPU
    with dropout, the host's init_buffers and HostDraws before the ``__main__`` block."""
    mpi = distributed == "mpi"
    runtime = _runtime_names(m, task, mpi)
    variants = _variants(m, task, b, mpi)
    cut = runtime.index("save_checkpoint")  # the shared atomic write comes just before it
    host = [source_of(runtime_script, *runtime[:cut], variants=variants),
            source_of(atomic, "atomic_write"),
            source_of(runtime_script, *runtime[cut:], variants=variants)]
    if b.on_device and "rng" in m.context:  # dropout on the GPU: NumPy's generator, on the
        # host (written with np, after the host's runtime and before its __main__ block)
        host[-1:] = [source_of(runtime_script, *runtime[cut:-1], variants=variants),
                     _init_buffers(m.context), source_of(cupy_script, "HostDraws"),
                     source_of(runtime_script, runtime[-1], variants=variants)]
    return host


def _assemble_script(doc: str, m: Model, b, fns: list[Function], blocks: list[str],
                     host: list[str], constants: list[str]) -> str:
    """The script's text: the model's functions and ``fns``, then ``blocks`` (the step's,
    the script's) and, with mixed precision, underflow_line; then the ``host`` runtime.
    On the GPU the step's part is the backend's code (cupy: cp for np, its rewrites) and
    the host's part NumPy's (data, shuffling, checkpoints: NumPy arrays)."""
    if m.precision == "mixed":
        blocks = blocks + [source_of(runtime_mixed, "underflow_line")]
    imports = ("argparse", "csv", "json", "os", "sys", "tempfile", "time", "zipfile")
    if not b.on_device:
        return assemble(doc, m, m.functions + fns, blocks + host, imports=imports,
                        constants=constants)
    blocks = blocks + [source_of(cupy_script, "HostGenerator", "no_device")]
    text = assemble(doc, m, m.functions + fns, blocks, imports=imports, constants=constants,
                    library=b.script_imports())
    return text + "\n\n" + "\n\n".join(host)


__all__ = ["training_script"]
