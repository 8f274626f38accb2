"""The fixed part of every generated training script: data loading and checks,
checkpoints, the training loop and the command line.

:func:`~symbackprop.codegen.script.training_script` copies every function here (and the
``__main__`` block) below the network's code. They read the constants and call the
functions that the generated script defines above them (``NETWORK``, ``DATA_NPZ``, ...,
``init_params``, ``train_step``, ``minibatch``, ``evaluate``); the stand-ins below, a
linear least-squares model y = X @ w + b trained with momentum, let this module run
alone: ``python symbackprop/codegen/runtime/script.py --data data.npz``.
"""

import argparse
import csv
import json
import math
import os
import sys
import tempfile
import time
import zipfile

import numpy as np

try:  # copied into the script before save_checkpoint
    from .atomic import atomic_write
except ImportError:  # this file run alone (python .../runtime/script.py)
    from atomic import atomic_write

# -- stand-ins for what a generated script defines (not copied) -------------------------

DTYPE = np.float64
NETWORK = "linear"
OPTIMIZER = "momentum"
LR = 0.01
MOMENTUM = 0.9
EPOCHS = 10
BATCH_SIZE = 32
SEED = 0
FEATURE_SHAPE = (2,)  # one row of X
TARGET = "values"  # y holds: 'labels' (class indices), 'values' or None (no y)
TARGET_SHAPE = (1,)  # one entry of y
N_CLASSES = None
CSV_COLUMNS = 3
DATA_NPZ = "arrays X (N, 2) and y (N, 1) targets, optionally X_test and y_test"
DATA_CSV = "rows of 2 feature columns then 1 target column"
METRIC = "loss"  # evaluate() returns: 'acc' (accuracy) or 'loss'
VOCAB = None  # a script for integer token inputs: X holds token ids 0..VOCAB-1
BUFFERS = None  # batch norm or dropout: {} that main fills from init_buffers or a checkpoint
LAYERS = {"linear": ("w",)}  # each layer's weights: --log-grad-norms, --metrics
DISTRIBUTED = None  # "mpi": a data-parallel script (sb.training_script(..., distributed="mpi"))
FUSED = False  # the fused update (sb.training_script(..., fuse_update=True))
MIXED = False  # precision mixed: the step has underflow() and the loss scaler's state
DEVICE = False  # backend="cupy": the step's arrays are on the GPU, the data and checkpoints NumPy's
cp = np  # stands in for CuPy (a script with DEVICE imports cupy as cp)


def init_params(rng=0):
    """w drawn from N(0, 1/2), b zero."""
    rng = np.random.default_rng(rng)
    return {"w": rng.normal(0.0, np.sqrt(0.5), size=(2, 1)).astype(DTYPE),
            "b": np.zeros(1, dtype=DTYPE)}


def init_state(params):
    """A velocity per parameter, zero at the start."""
    return {"v": {name: np.zeros_like(w) for name, w in params.items()}}


def train_step(params, state, X, y, lr=LR):
    """One momentum step on the mean squared error; returns the loss before the step."""
    err = X @ params["w"] + params["b"] - y
    loss = float(np.mean(err * err))
    grads = {"w": 2 * X.T @ err / err.size, "b": 2 * err.sum(axis=0) / err.size}
    if not np.isfinite(loss) or not all(np.isfinite(g).all() for g in grads.values()):
        raise FloatingPointError(f"the loss is {loss}")
    for name, grad in grads.items():
        v = state["v"][name]
        v *= MOMENTUM
        v += grad
        params[name] -= lr * v
    return loss


def HostGenerator(rng):  # stands in for the class of runtime/cupy_script.py
    """NumPy's draws for init_params (DEVICE: copied to the GPU)."""
    return rng


def no_device(cupy):  # stands in for the function of runtime/cupy_script.py
    """DEVICE: why CuPy can run nothing here, on one line (None: it sees a CUDA device)."""
    return None  # noqa: RET501 -- the answer "none", not a procedure's end


def underflow(params, state, X, y):
    """Mixed precision: per parameter, (entries, nonzero in float32, zero in float16
    without loss scaling, zero with it)."""
    return {}


def underflow_line(counts, state):
    """Mixed precision: the log line of underflow()'s counts."""
    return ""


def init_buffers(seed):
    """What a network with batch norm or dropout keeps besides its parameters: the
    running statistics ("running") and the dropout generator ("rng")."""
    return {"running": {"bn.mean": np.zeros(2), "bn.var": np.ones(2)},
            "rng": np.random.default_rng([seed, 1])}


def minibatch(X, y, idx):
    """The model's inputs for the rows idx of the data."""
    return {"X": X[idx], "y": y[idx]}


def evaluate(params, X, y):
    """The mean squared error on all of (X, y)."""
    err = X @ params["w"] + params["b"] - y
    return float(np.mean(err * err))


def grad_norms(params, X, y):
    """The norm of the gradient of each layer's weights (LAYERS) on (X, y)."""
    err = X @ params["w"] + params["b"] - y
    return {"linear": float(np.linalg.norm(2 * X.T @ err / err.size))}


# -- the runtime (copied, in this order) -------------------------------------------------


MPI = COMM = None  # mpi4py's MPI and MPI.COMM_WORLD, set by main: this rank, the ranks


class InputError(Exception):
    """Bad data, checkpoint or option: the message says what was found and what was expected."""


def is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_npz(path):
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
    return check_arrays(path, arrays)


def check_arrays(path, arrays, kind="array"):
    """arrays (name -> array read from path), once X (and y) are among them and X_test and
    y_test are both there or neither; kind names them in the message ("tensor": .pt)."""
    for name in ["X"] if TARGET is None else ["X", "y"]:
        if name not in arrays:
            found = ", ".join(sorted(arrays)) or f"no {kind}s"
            raise InputError(f"{path} has no {kind} {name!r} (found {found}); expected {DATA_NPZ}")
    if TARGET is not None and ("X_test" in arrays) != ("y_test" in arrays):
        has, lacks = ("X_test", "y_test") if "X_test" in arrays else ("y_test", "X_test")
        raise InputError(f"{path} has {has} but no {lacks}; expected both or neither")
    return arrays


def read_csv(path):
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


def check_tokens(path, X, x_name):
    """X of integer token ids (integers, or floats holding integers, as a .csv gives them)
    in 0..VOCAB-1, as int64."""
    expected = f"integer token ids 0..{VOCAB - 1}" if VOCAB else "integer token ids >= 0"
    if X.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(X) | (X != np.round(X)))
        if len(bad):
            at = ", ".join(map(str, np.unravel_index(bad[0], X.shape)))
            raise InputError(f"{path}: {x_name}[{at}] = {X.flat[bad[0]]} is not an integer; "
                             f"expected {expected}")
    bad = np.flatnonzero((X < 0) | (X >= (VOCAB or np.inf)))
    if len(bad):
        at = ", ".join(map(str, np.unravel_index(bad[0], X.shape)))
        raise InputError(f"{path}: {x_name}[{at}] = {X.flat[bad[0]]:g} is outside the "
                         f"vocabulary; expected {expected}")
    return X.astype(np.int64)


def check_split(path, arrays, x_name, y_name, input_shape=None):
    """X and y of one split, checked against the network and converted. With
    input_shape (--input-shape), flat rows of X are reshaped to it, row-major."""
    X = np.asarray(arrays[x_name])
    if X.dtype.kind not in "biuf":
        raise InputError(f"{path}: {x_name} holds {X.dtype} values; expected numbers")
    if X.ndim == 0 or len(X) == 0:
        raise InputError(f"{path}: {x_name} has no rows (shape {X.shape}); expected "
                         "at least one sample")
    size = int(np.prod(FEATURE_SHAPE))
    flat = X.ndim == 2 and len(FEATURE_SHAPE) > 1
    if input_shape is not None and flat and X.shape[1] == size:
        X = X.reshape((len(X),) + FEATURE_SHAPE)
    if X.shape[1:] != FEATURE_SHAPE:
        if X.ndim == 2 and len(FEATURE_SHAPE) == 1:
            found, expected = f"{X.shape[1]} features", f"{FEATURE_SHAPE[0]} features"
        elif flat:
            found = f"flat rows of {X.shape[1]} values"
            expected = f"rows of shape {FEATURE_SHAPE}"
            shape = ",".join(map(str, FEATURE_SHAPE))
            if input_shape is not None:
                expected += f" (--input-shape {shape} reshapes flat rows of {size} values)"
            elif X.shape[1] == size:
                expected += (f"; pass --input-shape {shape} to reshape flat rows, or save "
                             f"{x_name} with shape (N, {', '.join(map(str, FEATURE_SHAPE))})")
        else:
            found, expected = f"rows of shape {X.shape[1:]}", f"rows of shape {FEATURE_SHAPE}"
        raise InputError(f"{path}: {x_name} has {found} (shape {X.shape}); the network "
                         f"expects {expected}")
    if VOCAB is not None:  # variant: tokens
        X = check_tokens(path, X, x_name)
    if VOCAB is None:  # variant: floats
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
    if DTYPE is not None:  # variant: cast  # noqa: SIM102
        if TARGET == "values":
            return X, y.astype(DTYPE)
    if DTYPE is None:  # variant: raw  # noqa: SIM102
        # the torch and JAX scripts convert the checked arrays to their own dtypes
        if TARGET == "values":
            return X, y
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


def load_data(path, input_shape=None):
    """X, y (and X_test, y_test when present) from a .npz or .csv file, checked; raises
    InputError with one line saying what is wrong. input_shape (--input-shape) must be
    the network's FEATURE_SHAPE: flat rows of X are then reshaped to it."""
    if input_shape is not None and tuple(input_shape) != FEATURE_SHAPE:
        raise InputError(f"--input-shape {','.join(map(str, input_shape))} is not the "
                         f"network's input shape {FEATURE_SHAPE}; pass --input-shape "
                         f"{','.join(map(str, FEATURE_SHAPE))}")
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
    data = dict(zip(("X", "y"), check_split(path, arrays, "X", "y", input_shape)))
    data["X_test"] = data["y_test"] = None
    if "X_test" in arrays:
        data["X_test"], data["y_test"] = check_split(path, arrays, "X_test", "y_test",
                                                     input_shape)
    return data


def buffers_state():
    """BUFFERS as a checkpoint keeps them: copies of the running statistics, and the
    dropout generator's state."""
    saved = {"running": {k: a.copy() for k, a in BUFFERS.get("running", {}).items()}}
    if "rng" in BUFFERS:
        saved["rng"] = BUFFERS["rng"].bit_generator.state
    return saved


def restore_buffers(saved):
    """Put back what buffers_state() saved."""
    for k, a in saved["running"].items():
        BUFFERS["running"][k][...] = a
    if "rng" in saved:
        BUFFERS["rng"].bit_generator.state = saved["rng"]


def save_checkpoint(path, params, state, progress):
    """Write params, optimizer state and progress (epoch, samples seen in the next epoch,
    their loss sum, random state) to path atomically (atomic_write: a temporary file in
    the same directory, then os.replace, so an interruption never leaves half a file)."""
    if COMM is not None:  # variant: mpi
        rank = COMM.Get_rank()  # every rank holds the same parameters: rank 0 alone writes
        if rank:
            return
    arrays = {"network": np.array(NETWORK), "optimizer": np.array(OPTIMIZER),
              "progress/epoch": np.array(progress["epoch"]),
              "progress/seen": np.array(progress["seen"]),
              "progress/loss_sum": np.array(progress["loss_sum"]),
              "progress/rng": np.array(json.dumps(progress["rng"]))}
    for name, w in params.items():
        if DEVICE:  # variant: device
            arrays["params/" + name] = cp.asnumpy(w)  # from the GPU
        if not DEVICE:  # variant: host
            arrays["params/" + name] = w
    for key, value in state.items():
        if isinstance(value, dict):
            for name, a in value.items():
                if DEVICE:  # variant: device
                    arrays[f"state/{key}/{name}"] = cp.asnumpy(a)
                if not DEVICE:  # variant: host
                    arrays[f"state/{key}/{name}"] = a
        else:
            arrays["state/" + key] = np.array(value)
    if BUFFERS is not None:  # variant: buffers
        saved = buffers_state()
        for name, a in saved["running"].items():
            if DEVICE:  # variant: device
                arrays["buffers/running/" + name] = cp.asnumpy(a)
            if not DEVICE:  # variant: host
                arrays["buffers/running/" + name] = a
        if "rng" in saved:
            arrays["buffers/rng"] = np.array(json.dumps(saved["rng"]))
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load_checkpoint(path):
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
    check_network(path, arrays)
    params = init_params(0)
    state = init_state(params)
    check_precision(path, "state/scale" in arrays, "scale" in state)
    targets = {"params/" + name: w for name, w in params.items()}
    for key, value in state.items():
        if isinstance(value, dict):
            targets.update({f"state/{key}/{name}": a for name, a in value.items()})
    if BUFFERS is not None:  # variant: buffers
        fresh = init_buffers(0)
        targets.update({"buffers/running/" + k: a for k, a in fresh.get("running", {}).items()})
    for key, target in targets.items():
        if key not in arrays or arrays[key].shape != target.shape:
            found = arrays[key].shape if key in arrays else "nothing"
            raise InputError(f"checkpoint {path}: {key} is {found}; expected an array of "
                             f"shape {target.shape}")
        if DEVICE:  # variant: device
            target[...] = cp.asarray(arrays[key])  # to the GPU
        if not DEVICE:  # variant: host
            target[...] = arrays[key]
    try:
        for key, value in state.items():
            if not isinstance(value, dict):
                state[key] = type(value)(arrays["state/" + key])
        progress = {"epoch": int(arrays["progress/epoch"]), "seen": int(arrays["progress/seen"]),
                    "loss_sum": float(arrays["progress/loss_sum"]),
                    "rng": json.loads(str(arrays["progress/rng"]))}
        if BUFFERS is not None:  # variant: buffers
            if "rng" in fresh:
                fresh["rng"].bit_generator.state = json.loads(str(arrays["buffers/rng"]))
            BUFFERS.update(fresh)
    except (KeyError, ValueError, TypeError) as e:
        raise InputError(f"checkpoint {path} lacks the progress entry {e}; expected a file "
                         "written by this script's --out") from None
    return params, state, progress


def fail(message, status):
    """Print one line to stderr and return the exit status."""
    if DISTRIBUTED:  # variant: mpi  # noqa: SIM102
        # the ranks meet the same error together (a bad option or data file, mpi4py
        # missing): rank 0 alone says it
        if world_rank():
            return status
    prog = os.path.basename(sys.argv[0]) or "train.py"
    print(f"{prog}: error: {' '.join(str(message).split())}", file=sys.stderr)
    return status


class ScriptParser(argparse.ArgumentParser):
    """argparse's parser whose errors are one line, fail's (argparse prints its usage block
    first), exit status 2: a bad option reads as bad data does, and under MPI rank 0
    alone says it."""

    def error(self, message):
        sys.exit(fail(f"{message} (see --help)", 2))


def check_network(path, entries):
    """Raise InputError unless entries (a checkpoint's, by name) are those of a checkpoint
    of this network and optimizer: a file without the entries network and optimizer is no
    checkpoint of a symbackprop script (the data file, say)."""
    lacks = [k for k in ("network", "optimizer") if k not in entries]
    if lacks:
        found = ", ".join(sorted(map(str, entries))) or "no entries"
        raise InputError(f"{path} is not a checkpoint of a symbackprop training script: it has "
                         f"no {' and no '.join(map(repr, lacks))} entry (found {found}); "
                         "expected a file written by this script's --out")
    found = (str(entries["network"]), str(entries["optimizer"]))
    if found != (NETWORK, OPTIMIZER):
        # a graph given no name is called "network"
        net = [f"network {n}" if n != "network" else "an unnamed network"
               for n in (found[0], NETWORK)]
        raise InputError(f"checkpoint {path} is for {net[0]} with {found[1]}; "
                         f"expected {net[1]} with {OPTIMIZER}")


def check_precision(path, scaled, mixed):
    """Raise InputError when the checkpoint at path was written in another precision than
    this script trains in. scaled: whether it holds the loss scale (state scale), which
    mixed precision alone keeps; mixed: whether this script's state has one."""
    if scaled != mixed:
        written, here = ("in", "without") if scaled else ("without", "in")
        raise InputError(f"checkpoint {path} was written {written} mixed precision (it "
                         f"{'holds' if scaled else 'lacks'} the loss scale state/scale), and "
                         f"this script trains {here} mixed precision; resume it with a script "
                         f"generated {'with' if scaled else 'without'} --precision mixed, as "
                         "the one that wrote it, or train anew without --resume")


def check_out(path):
    """Raise InputError unless a checkpoint can be written to path as atomic_write writes
    it (a new file in path's folder, then moved onto path): checked before training, so
    that a bad --out stops the script at once, not after the last epoch."""
    if os.path.isdir(path) or not os.path.basename(path):  # (runs/: a folder's name)
        what = "is a directory" if os.path.isdir(path) else "names no file"
        raise InputError(f"--out {path} {what}; expected the name of a checkpoint file to "
                         "write")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".checkpoint-")
    except OSError as e:
        raise InputError(f"cannot write --out {path}: {e.strerror or e} (in {folder}); "
                         "expected a file in an existing, writable folder") from None
    os.close(fd)
    os.unlink(probe)


def outputs(args, data):
    """Check --out (check_out) and open --metrics (GradNorms, which writes its header) before
    training: the GradNorms of --log-grad-norms and --metrics, or None without them; raises
    InputError saying in one line what cannot be written. Under MPI rank 0 alone writes:
    its answer is every rank's, so that all stop together (none waits for it in an
    Allreduce)."""
    problem = norms = None
    try:
        if args.out is not None:
            check_out(args.out)
        norms = GradNorms(args, data) if args.log_grad_norms or args.metrics else None
    except InputError as e:
        problem = str(e)
    except OSError as e:
        problem = f"cannot write --metrics {args.metrics}: {e.strerror or e}"
    if DISTRIBUTED:  # variant: mpi
        problem = COMM.bcast(problem, root=0)
    if problem is not None:
        raise InputError(problem)
    return norms


def world_rank():
    """This process's rank in the MPI job: COMM's once mpi4py is imported; before (the
    options are read first) or without mpi4py, the one that the launcher (mpirun of MPICH,
    Open MPI, MVAPICH) puts in the environment; 0 without a launcher."""
    if COMM is not None:
        return COMM.Get_rank()
    for name in ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def mpi_world():
    """mpi4py's MPI module and MPI.COMM_WORLD, imported here: only a data-parallel run needs
    them. InputError naming what to install when mpi4py cannot be imported."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        prog = os.path.basename(sys.argv[0]) or "train.py"
        raise InputError(f"this script trains data parallel with MPI and needs mpi4py ({e}); "
                         "install it with `pip install symbackprop[distributed]` (or `pip "
                         f"install mpi4py mpich`), then run `mpirun -n K python {prog} ...`"
                         ) from None
    return MPI, MPI.COMM_WORLD


def abort_all(kind, value, traceback):
    """sys.excepthook under MPI: an error that one rank meets alone (a full disk, a bug)
    would leave the others waiting in the next Allreduce forever; print it, stop them all."""
    sys.__excepthook__(kind, value, traceback)
    sys.stderr.flush()
    COMM.Abort(1)


def shard(idx):
    """This rank's rows of the global batch idx (consecutive, as even as they can be: every
    rank's when the batch is a multiple of the ranks) and their share of it."""
    k, r = COMM.Get_size(), COMM.Get_rank()
    mine = idx[len(idx) * r // k:len(idx) * (r + 1) // k]
    return mine, len(mine) / len(idx)


def allreduce(G, loss, share):
    """G, this rank's flat gradient buffer, times its share of the global batch, summed
    over the ranks in place by one Allreduce: every rank then holds the gradient of the
    global batch's mean loss. A rank whose loss is nan or inf writes it into G, so that
    every rank sees it and all stop at the same step. Returns the loss."""
    if share != 1.0:
        G *= share
    if not math.isfinite(loss):
        G[0] = loss
    if COMM is not None and COMM.Get_size() > 1:
        COMM.Allreduce(MPI.IN_PLACE, G, op=MPI.SUM)
    return loss


class RowDraws(np.random.Generator):
    """Dropout under MPI: the script's dropout generator (its bit generator, shared) drawing
    the masks of the whole global batch idx, as the one process draws them, and keeping
    this rank's rows (mine, as shard cuts them). Every rank then holds the one process's
    masks for its rows, and every rank's generator the one process's state."""

    def __init__(self, generator, idx, mine):
        super().__init__(generator.bit_generator)
        self.rows, self.total = len(mine), len(idx)
        self.start = len(idx) * COMM.Get_rank() // COMM.Get_size()  # shard's first row

    def random(self, size=None, dtype=np.float64, out=None):
        """Uniform draws of shape size, whose first axis holds this rank's rows: those rows
        of the draws of the global batch's shape."""
        if size is None or out is not None or size[0] != self.rows:
            raise ValueError(f"RowDraws draws arrays whose first axis is the batch's "
                             f"{self.rows} rows, not {size} (out={out is not None})")
        draws = super().random((self.total, *size[1:]), dtype)
        return draws[self.start:self.start + self.rows]


class RowSums:
    """Synchronised batch norm (SyncBatchNorm) under MPI, passed to train_step as sync: sums
    over the rows of every rank that holds rows of the global batch idx (this rank's:
    mine). rows: the global batch's; share: this rank's fraction of it. When some rank holds
    none (a last batch of fewer rows than ranks), the others sum among themselves (a
    communicator split off for the batch: the rank without rows runs no step)."""

    def __init__(self, idx, mine):
        self.rows, self.share, self.comm = len(idx), len(mine) / len(idx), COMM
        if len(idx) < COMM.Get_size():  # every rank takes part in the split
            self.comm = COMM.Split(0 if len(mine) else MPI.UNDEFINED, COMM.Get_rank())

    def sum(self, a):
        """a (this rank's sum over its rows) summed over the ranks: a new array."""
        if self.comm.Get_size() == 1:  # one process: a itself, the one process's numbers
            return a
        out = np.empty_like(a)
        self.comm.Allreduce(np.ascontiguousarray(a), out, op=MPI.SUM)
        return out

    def mean(self, a):
        """a (this rank's mean over its rows): the mean over every rank's rows."""
        return self.sum(a * self.share)

    def grad_sum(self, a):
        """a (this rank's sum over its rows of its gradients, those of the mean loss over
        its own rows: the global batch's divided by share) summed over the ranks in those
        units: each rank's times its share, the total divided by this rank's. A plain sum
        would add the ranks' gradients in different units when the shares differ (a last
        batch that the ranks do not split evenly)."""
        return self.sum(a * self.share) / self.share

    def free(self):
        """Free the communicator split off for a batch some rank holds no rows of."""
        if self.comm is not COMM and self.comm != MPI.COMM_NULL:
            self.comm.Free()


def last_rank_buffers():
    """After a global batch of fewer rows than ranks, where a rank held no rows and ran no
    step (no batch norm statistics, no dropout draws): every rank takes the last rank's
    running statistics and dropout generator (the last rank always holds rows)."""
    last = COMM.Get_size() - 1
    for a in BUFFERS.get("running", {}).values():
        COMM.Bcast(a, root=last)
    if "rng" in BUFFERS:
        BUFFERS["rng"].bit_generator.state = COMM.bcast(BUFFERS["rng"].bit_generator.state,
                                                        root=last)


def last_good_path(out):
    root, ext = os.path.splitext(out)
    return f"{root}.last_good{ext or '.npz'}"


class GradNorms:
    """--log-grad-norms and --metrics: after every epoch, the norm of the gradient of each
    layer's weights (LAYERS) on the first --batch-size rows of the training data; one
    warning line when layers cross 1e-3 or 1e3 times the last layer's norm (vanishing,
    exploding); one CSV row per epoch (appended, so a resumed run continues the file)."""

    VANISHING, EXPLODING = 1e-3, 1e3

    def __init__(self, args, data):
        rows = np.arange(min(len(data["X"]), args.batch_size))
        self.X, self.y = data["X"][rows], None if data["y"] is None else data["y"][rows]
        self.show, self.flags, self.out = args.log_grad_norms, {}, None
        if args.metrics:
            score = [f"test_{METRIC}"] if data["X_test"] is not None else \
                ["train_acc"] if METRIC == "acc" else []
            new = not os.path.exists(args.metrics) or os.path.getsize(args.metrics) == 0
            self.out = args.metrics
            with open(self.out, "a", newline="") as f:  # fails here, before training
                if new:
                    csv.writer(f).writerow(["epoch", "loss", *score,
                                            *(f"grad_norm_{k}" for k in LAYERS)])

    def log(self, epoch, params, loss, score):
        norms = grad_norms(params, self.X, self.y)
        if self.show:
            print("  grad norms  " + "  ".join(f"{k} {v:.3g}" for k, v in norms.items()),
                  flush=True)
            last, crossed = list(norms.values())[-1], {}
            for k, v in norms.items():
                ratio = v / last if last > 0 else 1.0
                flag = "vanishing" if ratio < self.VANISHING else \
                    "exploding" if ratio > self.EXPLODING else None
                if flag is not None and self.flags.get(k) != flag:
                    crossed.setdefault(flag, []).append((k, ratio))
                self.flags[k] = flag
            if crossed:  # one line for every layer that crossed a threshold this epoch
                parts = []
                for flag, ks in crossed.items():
                    ratios = [r for _, r in ks]
                    limit = self.VANISHING if flag == "vanishing" else self.EXPLODING
                    parts.append(f"{', '.join(k for k, _ in ks)} {flag}: gradient norm "
                                 f"{min(ratios):.2g} to {max(ratios):.2g} times the last "
                                 f"layer's (threshold {limit:g})")
                print(f"warning: epoch {epoch}: {'; '.join(parts)}", file=sys.stderr, flush=True)
        if self.out is not None:
            row = [epoch, repr(loss)] + ([] if score is None else [repr(score)]) \
                + [repr(v) for v in norms.values()]
            with open(self.out, "a", newline="") as f:
                csv.writer(f).writerow(row)


def train(args, data, params, state, progress, norms=None):
    """Run the epochs after progress["epoch"] up to args.epochs. Returns the exit status.
    norms: a GradNorms to log gradient norms and metrics after every epoch."""
    X, y = data["X"], data["y"]
    n = len(X)
    if progress["seen"] >= n or progress["seen"] % args.batch_size:
        # a resumed epoch continues at a batch boundary of the run that wrote it
        return fail(f"the checkpoint has seen {progress['seen']} samples of epoch "
                    f"{progress['epoch'] + 1}, which is not a whole number of batches of "
                    f"--batch-size {args.batch_size} within the {n} rows of the data; resume "
                    "with the data and --batch-size it was written with", 2)
    n_batches = -(-n // args.batch_size)
    rng = np.random.default_rng()
    rng.bit_generator.state = progress["rng"]
    epoch, seen, loss_sum = progress["epoch"], progress["seen"], progress["loss_sum"]
    if COMM is not None:  # variant: mpi
        # each rank sums its own rows' losses; rank 0 carries those of a resumed epoch
        loss_sum = 0.0 if COMM.Get_rank() else loss_sum
    if epoch >= args.epochs:
        print(f"the checkpoint is at epoch {epoch}; nothing to do for --epochs {args.epochs}")
        return 0
    train_time, width = 0.0, len(str(args.epochs))
    while epoch < args.epochs:
        start = time.perf_counter()
        rng_state = rng.bit_generator.state  # a checkpoint inside this epoch restarts here
        order = rng.permutation(n)
        if DEVICE:  # variant: device
            order = cp.asarray(order)  # to the GPU, once an epoch: the batches are taken there
        while seen < n:
            idx = order[seen:seen + args.batch_size]
            if BUFFERS is not None:  # variant: buffers
                before = buffers_state()  # what a last_good checkpoint keeps
            try:
                if COMM is None:  # variant: single
                    loss = train_step(params, state, **minibatch(X, y, idx), lr=args.lr)
                if COMM is not None:  # variant: mpi
                    mine, share = shard(idx)  # this rank's rows of the global batch
                    batch = minibatch(X, y, mine)
                    if BUFFERS and "rng" in BUFFERS:  # variant: mpi_dropout
                        # dropout: every rank draws the masks of the whole global batch, as
                        # the one process does, and keeps those of its rows
                        batch["rng"] = RowDraws(batch["rng"], idx, mine)
                    if BUFFERS and "running" in BUFFERS:  # variant: mpi_syncbn
                        # batch norm: the mean and variance of the global batch, and the sums
                        # of its backward, over every rank's rows (SyncBatchNorm)
                        batch["sync"] = RowSums(idx, mine)
                    loss = train_step(params, state, **batch, lr=args.lr, share=share)
                    if BUFFERS and "running" in BUFFERS:  # variant: mpi_syncbn
                        batch["sync"].free()  # (after an error the ranks stop: no need)
                    if BUFFERS and len(idx) < COMM.Get_size():  # variant: buffers
                        last_rank_buffers()  # a rank had no rows: it ran no step
            except FloatingPointError as e:
                path = last_good_path(args.out)
                if BUFFERS is not None:  # variant: buffers
                    restore_buffers(before)
                if COMM is not None:  # variant: mpi
                    loss_sum = COMM.allreduce(loss_sum)  # the ranks stop together
                save_checkpoint(path, params, state, {"epoch": epoch, "seen": seen,
                                                      "loss_sum": loss_sum, "rng": rng_state})
                kept = f"; {args.out} is unchanged" if os.path.exists(args.out) else ""
                if FUSED:  # variant: fused
                    partial = getattr(e, "skipped", None)  # parameters the step did not update
                    if partial:  # the others were, in the same backward sweep
                        return fail(f"stopped at epoch {epoch + 1}, batch "
                                    f"{seen // args.batch_size + 1} of {n_batches}: {e}. The "
                                    f"parameters after this partial step are saved in {path}"
                                    f"{kept}", 1)
                return fail(f"stopped at epoch {epoch + 1}, batch {seen // args.batch_size + 1}"
                            f" of {n_batches}: {e}. The last good parameters (before this "
                            f"batch) are saved in {path}{kept}", 1)
            if COMM is None:  # variant: single
                loss_sum += loss * len(idx)
            if COMM is not None:  # variant: mpi
                loss_sum += loss * len(mine)
            seen += len(idx)
        epoch += 1
        if COMM is not None:  # variant: mpi
            loss_sum = COMM.allreduce(loss_sum)  # the epoch's, over every rank's rows
        train_time += time.perf_counter() - start
        line, score = f"epoch {epoch:{width}d}/{args.epochs}  loss {loss_sum / n:.6g}", None
        if data["X_test"] is not None:
            score = evaluate(params, data["X_test"], data["y_test"])
            line += f"  test_{METRIC} {score:.4f}"
        elif METRIC == "acc":
            score = evaluate(params, X, y)
            line += f"  train_acc {score:.4f}"
        print(f"{line}  {time.perf_counter() - start:.3f}s", flush=True)
        if MIXED and COMM is None:  # variant: mixed
            rows = np.arange(min(n, args.batch_size))  # the first --batch-size rows
            print(underflow_line(underflow(params, state, **minibatch(X, y, rows)), state),
                  flush=True)
        if MIXED and COMM is not None:  # variant: mixed_mpi
            rows = np.arange(min(n, args.batch_size))  # the first --batch-size rows
            if not COMM.Get_rank():  # rank 0 alone prints: the others need no counts
                print(underflow_line(underflow(params, state, **minibatch(X, y, rows)), state),
                      flush=True)
        if norms is not None:
            norms.log(epoch, params, loss_sum / n, score)
        seen, loss_sum = 0, 0.0
        if epoch == args.epochs or args.checkpoint_every and epoch % args.checkpoint_every == 0:
            save_checkpoint(args.out, params, state, {"epoch": epoch, "seen": 0,
                                                      "loss_sum": 0.0,
                                                      "rng": rng.bit_generator.state})
    print(f"done: {epoch} epochs, {train_time:.3f}s training (evaluation excluded), "
          f"checkpoint {args.out}")
    return 0


def option(kind, low, strict=False):
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


def shape_option(text):
    """An argparse type: a shape written as positive ints separated by commas."""
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape such as 1,8,8 (positive "
                                         "ints separated by commas)")
    return shape


def parse_args(argv=None):
    p = ScriptParser(
        description=__doc__.split("\n\n")[0],
        epilog="Data: a .npz file with " + DATA_NPZ + "; or a .csv file with " + DATA_CSV
        + ". Bad data stops the script with one line saying what is wrong, before anything "
        "is written. A nan or inf loss or gradient stops it, naming the epoch and batch; "
        "the parameters from before that batch are saved next to --out as "
        "NAME.last_good.npz. Exit status: 0 done, 1 stopped on nan/inf, 2 bad input.")
    if not DISTRIBUTED:  # variant: single
        add_run_options(p)
    if DISTRIBUTED:  # variant: mpi
        add_run_options(p, split="MPI ranks")
    add_watch_options(p)
    return p.parse_args(argv)


def add_run_options(p, out="checkpoint.npz", formats=".npz", split=None, full_batches=False):
    """The options of every training script (NumPy, cupy, JAX, torch) for a run: --data,
    --epochs, --batch-size, --lr, --seed, --checkpoint-every, --resume and --out. Where the
    scripts differ: out, --out's default (None: a checkpoint only where --out names one,
    JAX's); formats, the files --data reads besides .csv; split, what each global batch is
    split over evenly (None: one process, one device); full_batches, whether an epoch
    trains full batches only (JAX's: the rows after the last full one are left out)."""
    p.add_argument("--data", required=True, metavar="FILE",
                   help=f"training data: {formats} with X (and y, X_test, y_test), or .csv: "
                   "numbers only, the target in the last column(s)")
    p.add_argument("--epochs", type=option(int, 1), default=EPOCHS,
                   help=f"train until this epoch, counting the epochs of a resumed "
                   f"checkpoint (default {EPOCHS})")
    each = f", split evenly over the {split}" if split else ""
    left = ("; each epoch trains full batches only, leaving out the last N mod batch size "
            "of its N shuffled rows (a new shuffle each epoch)" if full_batches else "")
    p.add_argument("--batch-size", type=option(int, 1), default=BATCH_SIZE,
                   help=f"samples per minibatch{each}; the loss is their mean{left} "
                   f"(default {BATCH_SIZE})")
    p.add_argument("--lr", type=option(float, 0.0, strict=True), default=LR,
                   help=f"learning rate of {OPTIMIZER} (default {LR})")
    p.add_argument("--seed", type=option(int, 0), default=SEED,
                   help=f"seed of the initial parameters, the shuffling and any dropout masks "
                   f"(default {SEED}); --resume restores the generators' states instead")
    p.add_argument("--checkpoint-every", type=option(int, 0), default=0, metavar="K",
                   help="also save a checkpoint every K epochs (default 0: only at the end)"
                   + ("; needs --out" if out is None else ""))
    p.add_argument("--resume", metavar="FILE",
                   help="continue from a checkpoint: the same seed and options give the "
                   "same final parameters as a run that was never interrupted")
    default = f"default {out}" if out else \
        "default none: nothing is written but, on nan or inf, checkpoint.last_good.npz"
    p.add_argument("--out", default=out, metavar="FILE",
                   help=f"checkpoint to write, atomically ({default})")


def add_watch_options(p):
    """The options of every training script (NumPy, cupy, JAX, torch) for watching a run
    and shaping its data: --log-grad-norms, --metrics and, for image inputs,
    --input-shape."""
    p.add_argument("--log-grad-norms", action="store_true",
                   help="after each epoch print the gradient norm of each layer's weights "
                   "(on the first --batch-size rows) and warn when a layer falls below 1e-3 "
                   "or rises above 1e3 times the last layer's norm")
    p.add_argument("--metrics", metavar="FILE.csv",
                   help="append one row per epoch: epoch, loss, the accuracy or test loss as "
                   "printed, and each layer's gradient norm (grad_norm_LAYER)")
    if len(FEATURE_SHAPE) > 1:  # images: X may also be given as flat rows
        p.add_argument("--input-shape", type=shape_option,
                       metavar="C,H,W" if len(FEATURE_SHAPE) == 3 else "SHAPE",
                       help="X (and X_test) hold flat rows, each the row-major flattening of "
                       f"one sample of this shape, which must be the network's "
                       f"{','.join(map(str, FEATURE_SHAPE))} (default: X is "
                       f"(N, {', '.join(map(str, FEATURE_SHAPE))}))")


def main(argv=None):
    args = parse_args(argv)
    if DEVICE:  # variant: device
        problem = no_device(cp)  # before any work: CuPy imports without a GPU, then fails
        if problem is not None:
            return fail(f"CuPy sees no CUDA device ({problem}); this script runs its steps on "
                        "a GPU: on this machine, write and run the NumPy script instead "
                        "(symbackprop train-script with --backend numpy)", 2)
    if DISTRIBUTED:  # variant: mpi
        global MPI, COMM
        try:
            MPI, COMM = mpi_world()
        except InputError as e:
            return fail(e, 2)
        sys.excepthook = abort_all
        ranks = COMM.Get_size()
        if args.batch_size % ranks:
            low = args.batch_size // ranks * ranks
            near = f"{low} or {low + ranks}" if low else f"{ranks}"
            return fail(f"--batch-size {args.batch_size} is the global batch, split evenly "
                        f"over the {ranks} MPI ranks, and is not a multiple of {ranks}; pass "
                        f"--batch-size {near}, or run on a number of ranks that divides "
                        f"{args.batch_size} (mpirun -n K)", 2)
        if COMM.Get_rank():  # the other ranks stay quiet: rank 0 prints, logs and writes
            sys.stdout = None  # print() then writes nothing
            args.log_grad_norms = args.metrics = None
    try:
        data = load_data(args.data, getattr(args, "input_shape", None))
        if args.resume:
            params, state, progress = load_checkpoint(args.resume)
        else:
            rng = np.random.default_rng(args.seed)
            if DEVICE:  # variant: device
                params = init_params(HostGenerator(rng))  # drawn by rng, copied to the GPU
            if not DEVICE:  # variant: host
                params = init_params(rng)
            state = init_state(params)
            if BUFFERS is not None:  # variant: buffers
                BUFFERS.update(init_buffers(args.seed))
            progress = {"epoch": 0, "seen": 0, "loss_sum": 0.0, "rng": rng.bit_generator.state}
        norms = outputs(args, data)
    except InputError as e:
        return fail(e, 2)
    if DISTRIBUTED:  # variant: mpi
        # the job that mpirun formed, said once (the other ranks' stdout is None)
        print(f"data parallel over {ranks} MPI rank(s): {args.batch_size // ranks} rows of "
              f"each global batch of {args.batch_size} per rank", flush=True)
    if DEVICE:  # variant: device
        # the data to the GPU, once (GradNorms keeps its rows on the host: the step's
        # functions copy what they are given)
        data = {k: None if a is None else cp.asarray(a) for k, a in data.items()}
    with np.errstate(all="ignore"):  # a nan or inf is reported by train_step, once
        return train(args, data, params, state, progress, norms)


if __name__ == "__main__":
    sys.exit(main())
