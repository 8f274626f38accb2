"""A standalone training script as NumPy source.

:func:`training_script` adds to the module of
:func:`~symbackprop.codegen.train.train_step` everything a standalone training
run needs (data loading and checks, minibatches, progress lines, NaN/inf guard,
atomic checkpoints, resume, a command line) and imports only NumPy and the
standard library. Which inputs the data arrays ``X`` and ``y`` feed, and whether
the network is a classifier, is read from the graph; the fixed part of every
script is ``_RUNTIME``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import networkx as nx

from .. import __version__ as _version
from ..errors import CodegenError
from ..graph import Graph, fmt_shape
from .emit import Function, safe_text
from .train import (
    _call_lines,
    _constants,
    _Model,
    _model,
    _module,
    _params_of,
    _step_blocks,
    _step_doc,
    _wrap,
)


@dataclass
class _Task:
    """What the data arrays mean for the network."""

    features: str  # the graph input fed from X
    target: str | None  # the graph input fed from y (None: unsupervised, e.g. an autoencoder)
    kind: str | None  # "labels", "values" or None
    scores: str | None = None  # classifiers: the node whose argmax (or sign) is the class
    n_classes: int | None = None
    binary: bool = False


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
        elif not ints and len(floats) == 2:
            dist = {n: nx.shortest_path_length(g.nx, n, of) for n in floats}
            a, b = floats
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
        As for :func:`~symbackprop.codegen.train.train_step`.
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
        # a graph given no name is called "network"
        net = [f"network {n}" if n != "network" else "an unnamed network"
               for n in (found[0], NETWORK)]
        raise InputError(f"checkpoint {path} is for {net[0]} with {found[1]}; "
                         f"expected {net[1]} with {OPTIMIZER}")
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
        print(f"{line}  {time.perf_counter() - start:.3f}s", flush=True)
        seen, loss_sum = 0, 0.0
        if epoch == args.epochs or args.checkpoint_every and epoch % args.checkpoint_every == 0:
            save_checkpoint(args.out, params, state, {"epoch": epoch, "seen": 0,
                                                      "loss_sum": 0.0,
                                                      "rng": rng.bit_generator.state})
    print(f"done: {epoch} epochs, {train_time:.3f}s training (evaluation excluded), "
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


__all__ = ["training_script"]
