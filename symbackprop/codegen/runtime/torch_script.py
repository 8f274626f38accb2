"""The fixed parts of generated torch training modules and scripts (issue 15): the exact
nan/inf check of the training step (``check_finite``, in every training module) and, for
``train-script --backend torch``, reading the data, the checkpoints and the main loop.
Code generation copies them after the training module
(:mod:`~symbackprop.codegen.torch_train`); the module-level names below stand in for the
generated module's (``train_step``, ``init_params``, the script's constants).

The script has the NumPy script's features (:mod:`.script`, whose data checks
``InputError``, ``is_number``, ``read_npz``, ``read_csv``, ``check_split`` and
``load_data``, and ``fail``, ``ScriptParser``, ``check_network``, ``check_precision``,
``check_out``, ``outputs``, ``GradNorms``, ``last_good_path`` and ``option`` it copies, as
it copies :mod:`.atomic`'s ``atomic_write``): bad data (also a ``.pt`` file, checked
alike), a bad option or checkpoint stops it with one line, exit status 2; checkpoints
written atomically with ``torch.save`` (parameters, optimizer state with the loss scaler's, batch norm's running
statistics, dropout's generator state, the shuffling generator's state and the samples
already trained in the epoch) that ``--resume`` continues bit for bit, ``--checkpoint-every``,
a ``last_good`` checkpoint when a batch meets nan or inf, ``--metrics`` and
``--log-grad-norms``, ``.csv`` data and ``--input-shape``.
"""

import math
import os
import sys
import time

import numpy as np

try:
    import torch
except ImportError:  # the source is copied without PyTorch
    torch = None

try:  # copied into the script
    from .atomic import atomic_write
    from .script import (
        InputError,
        ScriptParser,
        add_run_options,
        add_watch_options,
        check_arrays,
        check_network,
        check_precision,
        check_split,
        fail,
        last_good_path,
        load_data,
        outputs,
    )
except ImportError:  # this file run alone (python .../runtime/torch_script.py)
    from atomic import atomic_write
    from script import (
        InputError,
        ScriptParser,
        add_run_options,
        add_watch_options,
        check_arrays,
        check_network,
        check_precision,
        check_split,
        fail,
        last_good_path,
        load_data,
        outputs,
    )

DTYPE = None  # the generated module's: torch.float64 or torch.float32
EPOCHS = 10
BATCH_SIZE = 32
SEED = 0
LR = 0.01
FEATURES = "X"  # the input fed from the data's X
TARGET_INPUT = "y"  # the input fed from the data's y (None: the loss needs X alone)
NETWORK = "network"
OPTIMIZER = "sgd"
METRIC = "acc"
LAYERS = {"all": ("w",)}  # each layer's weights: --log-grad-norms, --metrics
FEATURE_SHAPE = (2,)  # one row of X
TARGET = "labels"  # y holds: 'labels' (class indices), 'values' or None (no y)
TARGET_SHAPE = ()  # one entry of y
N_CLASSES = 3
CSV_COLUMNS = 3
DATA_NPZ = "arrays X (N, 2) and y (N,) integer labels in 0..2, optionally X_test and y_test"
DATA_CSV = "rows of 2 feature columns then 1 label column"
VOCAB = None  # X holds integer token ids 0..VOCAB-1 (None: X holds floats)
BUFFERS = False  # batch norm or dropout: init_buffers() makes 'running' and/or 'rng'
MIXED = False  # mixed precision: the module has underflow() (codegen/torch_mixed.py)


def init_params(seed=0, device=None):  # the generated module's
    raise NotImplementedError


def init_state(params):  # the generated module's
    raise NotImplementedError


def init_buffers(device, seed):  # the generated script's
    raise NotImplementedError


def train_step(params, state, lr=LR, **batch):  # the generated module's
    raise NotImplementedError


def evaluate(params, X, y, **running):  # the generated module's
    raise NotImplementedError


def grad_norms(params, X, y):  # the generated script's
    raise NotImplementedError


def underflow(params, state, **batch):  # stand-in: a mixed-precision module's
    raise NotImplementedError


def underflow_line(counts, state):  # stand-in: runtime/torch_mixed.py's
    raise NotImplementedError


def check_finite(loss, grads):
    """Raise FloatingPointError if the loss or a gradient holds nan or inf (exact: every
    entry is looked at)."""
    if not math.isfinite(loss):
        raise FloatingPointError(f"the loss is {float(loss)}")
    for name, grad in grads.items():
        bad = grad.numel() - int(torch.isfinite(grad).sum())
        if bad:
            raise FloatingPointError(f"the gradient dL/d{name} has {bad} nan or inf entries")


def read_pt(path):
    """The arrays of a .pt file (torch.save of a dict of tensors), as NumPy arrays by name,
    checked as read_npz's (check_arrays): X (and y) present, X_test and y_test both or
    neither."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- torch.load raises many kinds: say it in one line
        raise InputError(f"{path} is not a readable torch.save file ({e}); expected a dict "
                         f"of tensors: {DATA_NPZ}") from None
    if not isinstance(saved, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in saved.values()):
        raise InputError(f"{path} holds a {type(saved).__name__}; expected a dict of tensors: "
                         f"{DATA_NPZ}")
    try:
        arrays = {str(k): v.numpy(force=True) for k, v in saved.items()}
    except (TypeError, RuntimeError) as e:  # a dtype NumPy lacks (bfloat16)
        raise InputError(f"{path}: {e}; expected {DATA_NPZ}") from None
    return check_arrays(path, arrays, "tensor")


def load_tensors(path, device, input_shape=None):
    """X, y, X_test, y_test (None where the file has none) as tensors on ``device``: from
    an .npz or .csv file through the NumPy script's load_data, or a .pt file (torch.save
    of a dict of tensors) through the same checks (check_split); raises InputError with
    one line saying what is wrong. Float data becomes DTYPE, labels and token ids int64.
    input_shape (--input-shape, which must be FEATURE_SHAPE) reshapes flat rows of X and
    X_test, row-major."""
    if not os.path.isfile(path) or not path.endswith((".npz", ".csv", ".pt")):
        what = "does not exist" if not os.path.isfile(path) else "is not .npz, .csv or .pt"
        raise InputError(f"data file {path} {what}; expected a .npz or .pt file with "
                         f"{DATA_NPZ}, or a .csv file with {DATA_CSV}")
    if not path.endswith(".pt"):
        data = load_data(path, input_shape)
    else:
        if input_shape is not None and tuple(input_shape) != FEATURE_SHAPE:
            raise InputError(f"--input-shape {','.join(map(str, input_shape))} is not the "
                             f"network's input shape {FEATURE_SHAPE}; pass --input-shape "
                             f"{','.join(map(str, FEATURE_SHAPE))}")
        arrays = read_pt(path)
        data = dict(zip(("X", "y"), check_split(path, arrays, "X", "y", input_shape),
                        strict=True))
        data["X_test"] = data["y_test"] = None
        if "X_test" in arrays:
            data["X_test"], data["y_test"] = check_split(path, arrays, "X_test", "y_test",
                                                         input_shape)

    def tensor(k):
        if data[k] is None:
            return None
        floats = k.startswith("X") and VOCAB is None or k.startswith("y") and TARGET == "values"
        return torch.from_numpy(np.ascontiguousarray(data[k])).to(
            device, DTYPE if floats else torch.int64)

    return tensor("X"), tensor("y"), tensor("X_test"), tensor("y_test")


def save_checkpoint(path, params, state, buffers, progress):
    """Write the parameters, the optimizer state (with the loss scaler's), the buffers
    (batch norm's running statistics, dropout's generator state) and progress (epochs
    done, samples already trained in the next epoch and their loss sum, the shuffling
    generator's state at that epoch's start) to path with torch.save, atomically
    (atomic_write). Tensors are saved on the CPU: any device resumes them."""
    saved = {"network": NETWORK, "optimizer": OPTIMIZER, **progress,
             "params": {k: v.cpu() for k, v in params.items()},
             "state": {k: {n: t.cpu() for n, t in v.items()} if isinstance(v, dict) else v
                       for k, v in state.items()}}
    if "running" in buffers:
        saved["running"] = {k: v.cpu() for k, v in buffers["running"].items()}
    if "rng" in buffers:
        saved["rng"] = buffers["rng"].get_state()
    atomic_write(path, lambda f: torch.save(saved, f))


def load_checkpoint(path, params, state, buffers):
    """Put a checkpoint of save_checkpoint into params, state and buffers (fresh ones of
    this network, on the training device: every tensor checked for its shape and copied
    in, keeping its dtype and device) and return its progress; a missing, unreadable or
    foreign checkpoint raises InputError, one line."""
    if not os.path.isfile(path):
        raise InputError(f"checkpoint {path} does not exist; expected a file written by this "
                         "script's --out")
    try:
        saved = torch.load(path, weights_only=True)
    except Exception as e:  # noqa: BLE001 -- torch.load raises many kinds: say it in one line
        raise InputError(f"checkpoint {path} is not a readable torch.save file ({e})") from None
    if not isinstance(saved, dict):
        raise InputError(f"checkpoint {path} holds a {type(saved).__name__}; expected a file "
                         "written by this script's --out")
    check_network(path, saved)
    written = saved.get("state")
    check_precision(path, isinstance(written, dict) and "scale" in written, "scale" in state)

    def copy(key, into, part):
        for name, t in into.items():
            got = part.get(name) if isinstance(part, dict) else None
            if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(t.shape):
                what = tuple(got.shape) if isinstance(got, torch.Tensor) else "nothing"
                raise InputError(f"checkpoint {path}: {key}/{name} is {what}; expected a "
                                 f"tensor of shape {tuple(t.shape)}")
            t.copy_(got)

    try:
        copy("params", params, saved["params"])
        for key, value in state.items():
            if isinstance(value, dict):
                copy("state/" + key, value, saved["state"][key])
            else:  # a count or the loss scale: the type init_state gives it
                state[key] = type(value)(saved["state"][key])
        if "running" in buffers:
            copy("running", buffers["running"], saved["running"])
        if "rng" in buffers:
            buffers["rng"].set_state(saved["rng"])
        torch.Generator().set_state(saved["shuffle"])  # checked here: main restores it
        return {"epoch": int(saved["epoch"]), "seen": int(saved["seen"]),
                "loss_sum": float(saved["loss_sum"]), "shuffle": saved["shuffle"]}
    except KeyError as e:
        raise InputError(f"checkpoint {path} lacks {e}; expected a file written by this "
                         "script's --out") from None
    except (TypeError, ValueError, RuntimeError) as e:
        raise InputError(f"checkpoint {path} has a bad entry: {e}; expected a file written "
                         "by this script's --out") from None


def buffers_state(buffers):
    """What a last_good checkpoint keeps of the buffers: copies of the running statistics
    and the dropout generator's state, taken before a batch."""
    saved = {}
    if "running" in buffers:
        saved["running"] = {k: v.clone() for k, v in buffers["running"].items()}
    if "rng" in buffers:
        saved["rng"] = buffers["rng"].get_state()
    return saved


def restore_buffers(buffers, saved):
    """Put back what buffers_state() took (a failed step's forward pass moved them)."""
    for k, v in saved.get("running", {}).items():
        buffers["running"][k].copy_(v)
    if "rng" in saved:
        buffers["rng"].set_state(saved["rng"])


def parse_args(argv=None):
    """The command line: the NumPy script's options, and --device."""
    p = ScriptParser(
        description=f"Train {NETWORK} with {OPTIMIZER} (PyTorch).",
        epilog="A nan or inf loss or gradient stops the script, naming the epoch and batch; "
        "the parameters from before that batch are saved next to --out as "
        "NAME.last_good.pt. Exit status: 0 done, 1 stopped on nan/inf, 2 bad input.")
    add_run_options(p, out="checkpoint.pt", formats=".npz or .pt")
    p.add_argument("--device", help="cpu, cuda, cuda:1, mps, ... (default: cuda if available)")
    add_watch_options(p)
    return p.parse_args(argv)


def train(a, data, params, state, buffers, progress, gen, device, norms=None):
    """Run the epochs after progress["epoch"] up to --epochs, from progress["seen"] samples
    into the next one (a resumed checkpoint), the order drawn by gen (a CPU
    torch.Generator) at each epoch's start. A nan or inf stops it: the state from before
    that batch is saved as last_good. Returns the exit status (1: stopped on nan/inf)."""
    X, y, X_test, y_test = data
    n = len(X)
    epoch, seen, total = progress["epoch"], progress["seen"], progress["loss_sum"]
    if epoch >= a.epochs:
        print(f"the checkpoint is at epoch {epoch}; nothing to do for --epochs {a.epochs}")
        return 0
    running = {k: v for k, v in buffers.items() if k == "running"}  # evaluate's
    n_batches = -(-n // a.batch_size)
    while epoch < a.epochs:
        start = time.perf_counter()
        shuffle = gen.get_state()  # a checkpoint inside this epoch restarts here
        order = torch.randperm(n, generator=gen).to(device)
        while seen < n:
            rows = order[seen:seen + a.batch_size]
            batch = {FEATURES: X[rows]} | ({TARGET_INPUT: y[rows]} if TARGET else {})
            if BUFFERS:  # variant: buffers
                before = buffers_state(buffers)  # what a last_good checkpoint keeps
            try:
                total += train_step(params, state, lr=a.lr, **batch, **buffers) * len(rows)
            except FloatingPointError as e:
                if BUFFERS:  # variant: buffers
                    restore_buffers(buffers, before)
                path = last_good_path(a.out)
                save_checkpoint(path, params, state, buffers, {
                    "epoch": epoch, "seen": seen, "loss_sum": total, "shuffle": shuffle})
                kept = f"; {a.out} is unchanged" if os.path.exists(a.out) else ""
                return fail(f"stopped at epoch {epoch + 1}, batch {seen // a.batch_size + 1} "
                            f"of {n_batches}: {e}. The last good parameters (before this "
                            f"batch) are saved in {path}{kept}", 1)
            seen += len(rows)
        epoch += 1
        line, score = f"epoch {epoch}/{a.epochs}  loss {total / n:.6f}", None
        if X_test is not None:
            score = evaluate(params, X_test, y_test, **running)
            line += f"  test_{METRIC} {score:.4f}"
        elif METRIC == "acc":
            score = evaluate(params, X, y, **running)
            line += f"  train_acc {score:.4f}"
        print(f"{line}  {device}  {time.perf_counter() - start:.2f} s", flush=True)
        if MIXED:  # variant: mixed
            # gradient entries the half dtype flushes to zero, on the first rows
            first = slice(0, a.batch_size)
            batch = {FEATURES: X[first]} | ({TARGET_INPUT: y[first]} if TARGET else {})
            print(underflow_line(underflow(params, state, **batch), state), flush=True)
        if norms is not None:
            norms.log(epoch, params, total / n, score)
        seen, total = 0, 0.0
        if epoch == a.epochs or a.checkpoint_every and epoch % a.checkpoint_every == 0:
            save_checkpoint(a.out, params, state, buffers, {
                "epoch": epoch, "seen": 0, "loss_sum": 0.0, "shuffle": gen.get_state()})
    return 0


def main(argv=None):
    a = parse_args(argv)
    try:
        device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as e:  # a malformed device string
        return fail(f"--device {a.device}: {e}", 2)
    if device.type == "cuda" and not torch.cuda.is_available():
        return fail(f"--device {a.device}: this PyTorch sees no CUDA device; pass --device cpu",
                    2)
    params = init_params(a.seed, device=device)
    state = init_state(params)
    gen = torch.Generator().manual_seed(a.seed)  # the shuffles, on the CPU: any device alike
    buffers = init_buffers(device, a.seed)  # batch norm's running statistics, dropout's rng
    progress = {"epoch": 0, "seen": 0, "loss_sum": 0.0}
    try:
        X, y, X_test, y_test = load_tensors(a.data, device, getattr(a, "input_shape", None))
        if a.resume:
            progress = load_checkpoint(a.resume, params, state, buffers)
            gen.set_state(progress["shuffle"])
            if progress["seen"] >= len(X) or progress["seen"] % a.batch_size:
                # a resumed epoch continues at a batch boundary of the run that wrote it
                raise InputError(f"the checkpoint has seen {progress['seen']} samples of epoch "
                                 f"{progress['epoch'] + 1}, which is not a whole number of "
                                 f"batches of --batch-size {a.batch_size} within the "
                                 f"{len(X)} rows of {a.data}; resume with the data and "
                                 "--batch-size it was written with")
        norms = outputs(a, {"X": X, "y": y, "X_test": X_test})  # --out, --metrics
    except InputError as e:
        return fail(e, 2)
    return train(a, (X, y, X_test, y_test), params, state, buffers, progress, gen, device,
                 norms)


if __name__ == "__main__":
    sys.exit(main())
