"""The fixed parts of generated torch training modules and scripts (issue 15): the exact
nan/inf check of the training step (``check_finite``, in every training module) and, for
``train-script --backend torch``, reading the data, the checkpoints and the main loop.
Code generation copies them after the training module
(:mod:`~symbackprop.codegen.torch_train`); the module-level names below stand in for the
generated module's (``train_step``, ``init_params``, the script's constants).

The script has the NumPy script's features (:mod:`.script`, whose ``GradNorms``,
``last_good_path`` and ``option`` it copies, as it copies the JAX script's ``read_csv``
and :mod:`.atomic`'s ``atomic_write``): checkpoints written atomically with
``torch.save`` (parameters, optimizer state with the loss scaler's, batch norm's running
statistics, dropout's generator state, the shuffling generator's state and the samples
already trained in the epoch) that ``--resume`` continues bit for bit, ``--checkpoint-every``,
a ``last_good`` checkpoint when a batch meets nan or inf, ``--metrics`` and
``--log-grad-norms``, ``.csv`` data and ``--input-shape``.
"""

import argparse
import math
import os
import sys
import time

import numpy as np

try:
    import torch
except ImportError:  # the source is copied without PyTorch
    torch = None

from .atomic import atomic_write
from .jax_script import read_csv, rows_of
from .script import GradNorms, last_good_path, option, shape_option

DTYPE = None  # the generated module's: torch.float64 or torch.float32
EPOCHS = 10
BATCH_SIZE = 32
SEED = 0
LR = 0.01
FEATURES = "X"
TARGET = "y"
NETWORK = "network"
OPTIMIZER = "sgd"
METRIC = "acc"
LAYERS = {"all": ("w",)}  # each layer's weights: --log-grad-norms, --metrics
FEATURE_SHAPE = (2,)  # one row of X
TARGET_KIND = "labels"  # y holds: 'labels', 'values' or None (no y)
TARGET_SHAPE = ()  # one entry of y
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


def fail(message, status=2):
    """One line on stderr, then exit with status (2: bad input; 1: stopped on nan/inf)."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(status)


def load_data(path, device, input_shape=None):
    """X, y, X_test, y_test (None where the file has none) as tensors on ``device``: from an
    .npz, a .csv (numbers only, the target in the last column(s), as the NumPy script
    reads one) or a .pt file (torch.save of a dict of tensors). Float arrays become
    DTYPE, integer ones int64. input_shape (--input-shape, which must be FEATURE_SHAPE)
    reshapes flat rows of X and X_test, row-major."""
    if not os.path.isfile(path):
        fail(f"data file {path} does not exist; expected a .npz, .csv or .pt file")
    try:
        if path.endswith(".pt"):
            data = torch.load(path, weights_only=True)
        elif path.endswith(".csv"):
            data = {k: torch.from_numpy(v) for k, v in read_csv(path).items()}
        else:
            with np.load(path) as f:
                data = {k: torch.from_numpy(f[k]) for k in f.files}
    except Exception as e:  # noqa: BLE001 -- np.load and torch.load raise many kinds
        fail(f"cannot read {path}: {e}")
    if "X" not in data:
        fail(f"{path} has no array X (it has {', '.join(sorted(data)) or 'none'})")
    if "X_test" in data and "y_test" not in data and TARGET is not None:
        fail(f"{path} has X_test but no y_test")

    def tensor(k):
        if k not in data:
            return None
        v = torch.as_tensor(data[k])
        if k.startswith("X"):  # rows of the network's input shape (--input-shape: flat rows)
            v = rows_of(path, k, v, input_shape)
        return v.to(device, DTYPE if v.is_floating_point() else torch.int64)

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
    foreign checkpoint fails in one line."""
    if not os.path.isfile(path):
        fail(f"checkpoint {path} does not exist; expected a file written by this script's "
             "--out")
    try:
        saved = torch.load(path, weights_only=True)
    except Exception as e:  # noqa: BLE001 -- torch.load raises many kinds: say it in one line
        fail(f"checkpoint {path} is not a readable torch.save file ({e})")
    if not isinstance(saved, dict):
        fail(f"checkpoint {path} holds a {type(saved).__name__}; expected a file written by "
             "this script's --out")
    found = (str(saved.get("network", "?")), str(saved.get("optimizer", "?")))
    if found != (NETWORK, OPTIMIZER):
        net = [f"network {n}" if n != "network" else "an unnamed network"
               for n in (found[0], NETWORK)]
        fail(f"checkpoint {path} is for {net[0]} with {found[1]}; expected {net[1]} with "
             f"{OPTIMIZER}")

    def copy(key, into, part):
        for name, t in into.items():
            got = part.get(name) if isinstance(part, dict) else None
            if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(t.shape):
                what = tuple(got.shape) if isinstance(got, torch.Tensor) else "nothing"
                fail(f"checkpoint {path}: {key}/{name} is {what}; expected a tensor of shape "
                     f"{tuple(t.shape)}")
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
        return {k: saved[k] for k in ("epoch", "seen", "loss_sum", "shuffle")}
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        fail(f"checkpoint {path} lacks the entry {e}; expected a file written by this "
             "script's --out")


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
    p = argparse.ArgumentParser(
        description=f"Train {NETWORK} with {OPTIMIZER} (PyTorch).",
        epilog="A nan or inf loss or gradient stops the script, naming the epoch and batch; "
        "the parameters from before that batch are saved next to --out as "
        "NAME.last_good.pt. Exit status: 0 done, 1 stopped on nan/inf, 2 bad input.")
    p.add_argument("--data", required=True, metavar="FILE",
                   help=".npz or .pt with X (and y, X_test, y_test), or .csv (numbers only, "
                   "the target in the last column(s))")
    p.add_argument("--epochs", type=option(int, 1), default=EPOCHS,
                   help=f"train until this epoch, counting the epochs of a resumed "
                   f"checkpoint (default {EPOCHS})")
    p.add_argument("--batch-size", type=option(int, 1), default=BATCH_SIZE,
                   help=f"samples per minibatch; the loss is their mean (default {BATCH_SIZE})")
    p.add_argument("--lr", type=option(float, 0.0, strict=True), default=LR,
                   help=f"learning rate of {OPTIMIZER} (default {LR})")
    p.add_argument("--seed", type=option(int, 0), default=SEED,
                   help=f"seed of the initial parameters, the shuffling and dropout (default "
                   f"{SEED}); --resume restores the generators' states instead")
    p.add_argument("--device", help="cpu, cuda, cuda:1, mps, ... (default: cuda if available)")
    p.add_argument("--checkpoint-every", type=option(int, 0), default=0, metavar="K",
                   help="also save a checkpoint every K epochs (default 0: only at the end)")
    p.add_argument("--resume", metavar="FILE",
                   help="continue from a checkpoint: the same seed and options give the "
                   "same final parameters as a run that was never interrupted")
    p.add_argument("--out", default="checkpoint.pt", metavar="FILE",
                   help="checkpoint to write (torch.save), atomically (default checkpoint.pt)")
    p.add_argument("--log-grad-norms", action="store_true",
                   help="after each epoch print the gradient norm of each layer's weights "
                   "(on the first --batch-size rows) and warn when a layer falls below 1e-3 "
                   "or rises above 1e3 times the last layer's norm")
    p.add_argument("--metrics", metavar="FILE.csv",
                   help="append one row per epoch: epoch, loss, the accuracy or test loss as "
                   "printed, and each layer's gradient norm (grad_norm_LAYER)")
    if len(FEATURE_SHAPE) > 1:  # images: X may also be given as flat rows
        p.add_argument("--input-shape", type=shape_option, metavar="SHAPE",
                       help="X (and X_test) hold flat rows, each the row-major flattening of "
                       f"one sample of this shape, which must be the network's "
                       f"{','.join(map(str, FEATURE_SHAPE))}")
    return p.parse_args(argv)


def train(a, data, params, state, buffers, progress, gen, device, norms=None):
    """Run the epochs after progress["epoch"] up to --epochs, from progress["seen"] samples
    into the next one (a resumed checkpoint), the order drawn by gen (a CPU
    torch.Generator) at each epoch's start. A nan or inf stops it: the state from before
    that batch is saved as last_good, exit status 1."""
    X, y, X_test, y_test = data
    n = len(X)
    if progress["seen"] >= n:
        fail(f"the checkpoint has seen {progress['seen']} samples of the current epoch but "
             f"the data has {n} rows; expected the same data")
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
            batch = {FEATURES: X[rows]} | ({TARGET: y[rows]} if TARGET is not None else {})
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
                fail(f"stopped at epoch {epoch + 1}, batch {seen // a.batch_size + 1} of "
                     f"{n_batches}: {e}. The last good parameters (before this batch) are "
                     f"saved in {path}{kept}", 1)
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
            batch = {FEATURES: X[first]} | ({TARGET: y[first]} if TARGET is not None else {})
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
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    X, y, X_test, y_test = load_data(a.data, device, getattr(a, "input_shape", None))
    if TARGET is not None and y is None:
        fail(f"{a.data} has no array y (the target {TARGET})")
    if y is not None and len(y) != len(X):
        fail(f"X has {len(X)} rows but y has {len(y)}")
    params = init_params(a.seed, device=device)
    state = init_state(params)
    gen = torch.Generator().manual_seed(a.seed)  # the shuffles, on the CPU: any device alike
    buffers = init_buffers(device, a.seed)  # batch norm's running statistics, dropout's rng
    progress = {"epoch": 0, "seen": 0, "loss_sum": 0.0}
    if a.resume:
        progress = load_checkpoint(a.resume, params, state, buffers)
        gen.set_state(progress["shuffle"])
    norms = None
    if a.log_grad_norms or a.metrics:
        try:
            norms = GradNorms(a, {"X": X, "y": y, "X_test": X_test})
        except OSError as e:
            fail(f"cannot write --metrics {a.metrics}: {e.strerror or e}")
    return train(a, (X, y, X_test, y_test), params, state, buffers, progress, gen, device,
                 norms)


if __name__ == "__main__":
    sys.exit(main())
