"""The fixed parts of generated torch training modules and scripts (issue 15): the exact
nan/inf check of the training step (``check_finite``, in every training module) and, for
``train-script --backend torch``, reading the data, writing the parameters and the main
loop. Code generation copies them after the training module
(:mod:`~symbackprop.codegen.torch_train`); the module-level names below stand in for the
generated module's (``train_step``, ``init_params``, the script's constants).
"""

import argparse
import math
import os
import sys
import tempfile
import time

try:
    import torch
except ImportError:  # the source is copied without PyTorch
    torch = None

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


def fail(message):
    """One line on stderr, exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def load_data(path, device):
    """X, y, X_test, y_test (None where the file has none) as tensors on ``device``: from an
    .npz (read with NumPy, which PyTorch reads arrays from) or a .pt file (torch.save of a
    dict of tensors). Float arrays become DTYPE, integer ones int64."""
    try:
        if path.endswith(".pt"):
            data = torch.load(path, weights_only=True)
        else:
            import numpy as np  # only to read the .npz

            with np.load(path) as f:
                data = {k: torch.from_numpy(f[k]) for k in f.files}
    except (OSError, ValueError, RuntimeError) as e:
        fail(f"cannot read {path}: {e}")
    if "X" not in data:
        fail(f"{path} has no array X (it has {', '.join(sorted(data)) or 'none'})")
    if "X_test" in data and "y_test" not in data and TARGET is not None:
        fail(f"{path} has X_test but no y_test")

    def tensor(k):
        if k not in data:
            return None
        v = torch.as_tensor(data[k])
        return v.to(device, DTYPE if v.is_floating_point() else torch.int64)

    return tensor("X"), tensor("y"), tensor("X_test"), tensor("y_test")


def save_params(params, state, epoch, path, running=None):
    """Write the parameters, the optimizer state, the epochs done and, with batch norm, the
    running statistics to ``path`` (torch.save), atomically: a temporary file in the same
    folder, then os.replace."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    os.close(fd)
    saved = {"network": NETWORK, "optimizer": OPTIMIZER, "epoch": epoch,
             "params": {k: v.cpu() for k, v in params.items()}, "state": state}
    if running is not None:
        saved["running"] = {k: v.cpu() for k, v in running.items()}
    torch.save(saved, tmp)
    os.replace(tmp, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=f"Train {NETWORK} with {OPTIMIZER} (PyTorch).")
    p.add_argument("--data", required=True, help=".npz or .pt with X (and y, X_test, y_test)")
    p.add_argument("--epochs", type=int, default=EPOCHS)
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    p.add_argument("--lr", type=float, default=LR)
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--device", help="cpu, cuda, cuda:1, mps, ... (default: cuda if available)")
    p.add_argument("--out", help="write the parameters and optimizer state here (torch.save)")
    a = p.parse_args(argv)
    if a.epochs < 1 or a.batch_size < 1:
        fail("--epochs and --batch-size must be at least 1")
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    X, y, X_test, y_test = load_data(a.data, device)
    if TARGET is not None and y is None:
        fail(f"{a.data} has no array y (the target {TARGET})")
    if y is not None and len(y) != len(X):
        fail(f"X has {len(X)} rows but y has {len(y)}")
    params = init_params(a.seed, device=device)
    state = init_state(params)
    gen = torch.Generator().manual_seed(a.seed)  # the shuffles, on the CPU: any device alike
    buffers = init_buffers(device, a.seed)  # batch norm's running statistics, dropout's rng
    running = {k: v for k, v in buffers.items() if k == "running"}  # evaluate's
    n = len(X)
    for epoch in range(1, a.epochs + 1):
        start = time.perf_counter()
        order = torch.randperm(n, generator=gen).to(device)
        total = 0.0
        for first in range(0, n, a.batch_size):
            rows = order[first:first + a.batch_size]
            batch = {FEATURES: X[rows]} | ({TARGET: y[rows]} if TARGET is not None else {})
            try:
                total += train_step(params, state, lr=a.lr, **batch, **buffers) * len(rows)
            except FloatingPointError as e:
                fail(f"epoch {epoch}, batch at row {first}: {e}; the parameters are those "
                     "before this batch")
        line = f"epoch {epoch}/{a.epochs}  loss {total / n:.6f}"
        if X_test is not None:
            line += f"  test_{METRIC} {evaluate(params, X_test, y_test, **running):.4f}"
        elif METRIC == "acc":
            line += f"  train_acc {evaluate(params, X, y, **running):.4f}"
        print(f"{line}  {device}  {time.perf_counter() - start:.2f} s", flush=True)
        if MIXED:  # variant: mixed
            # gradient entries the half dtype flushes to zero, on the first rows
            rows = slice(0, a.batch_size)
            batch = {FEATURES: X[rows]} | ({TARGET: y[rows]} if TARGET is not None else {})
            print(underflow_line(underflow(params, state, **batch), state), flush=True)
    if a.out:
        save_params(params, state, a.epochs, a.out, buffers.get("running"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
