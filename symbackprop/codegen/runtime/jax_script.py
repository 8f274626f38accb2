"""The main program of a generated JAX training script (issue 15): data parallelism
through JAX's own engine, never a home-made one.

Each global batch is split over every device (``jax.sharding.Mesh`` over one ``data``
axis, the batch ``PartitionSpec("data")``), the parameters and optimizer state are
replicated, and the generated ``train_step`` (jitted, its buffers donated) runs as one
SPMD program: XLA sums the gradients across devices. On several hosts,
``--coordinator``, ``--num-processes`` and ``--process-id`` call
``jax.distributed.initialize``, and each process feeds its rows of every global batch
(``jax.make_array_from_process_local_data``). The generated script copies these
functions; ``init_params``, ``init_state``, ``train_step``, ``DTYPE`` and the constants
below are the generated module's (here stand-ins, so that the file runs and ruff checks
it). NumPy, which JAX depends on, reads the data.
"""

import argparse
import sys
import time

import numpy as np

try:
    import jax
except ImportError:  # generating the script needs no JAX; running it does
    jax = None

DTYPE = np.float32
EPOCHS = 10
BATCH_SIZE = 32
SEED = 0
LR = 0.01
FEATURES = "X"  # the input fed from the data's X
TARGET = "y"  # the input fed from the data's y (None: the loss needs X alone)


def init_params(seed=0):  # stand-in: the generated module's
    raise NotImplementedError


def init_state(params):  # stand-in: the generated module's
    raise NotImplementedError


def train_step(params, state, lr=LR, **batch):  # stand-in: the generated module's
    raise NotImplementedError


def parse_args(argv=None):
    """The command line."""
    p = argparse.ArgumentParser(
        description="Train the network with JAX: every global batch is split over all "
        "devices (jax.sharding, a 'data' axis), the parameters are replicated.")
    p.add_argument("--data", required=True, help=".npz holding X (and y)")
    p.add_argument("--epochs", type=int, default=EPOCHS, help=f"passes over the data ({EPOCHS})")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                   help=f"the global batch, split over the devices ({BATCH_SIZE})")
    p.add_argument("--seed", type=int, default=SEED, help="initial parameters and shuffling")
    p.add_argument("--lr", type=float, default=LR, help=f"learning rate ({LR})")
    p.add_argument("--out", help="write the final parameters to this .npz (process 0)")
    p.add_argument("--coordinator", help="host:port of process 0: train on several hosts "
                   "(jax.distributed.initialize)")
    p.add_argument("--num-processes", type=int, default=1, help="with --coordinator")
    p.add_argument("--process-id", type=int, default=0, help="with --coordinator")
    return p.parse_args(argv)


def fail(message):
    """One line on stderr, exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def first_copy(x):
    """A replicated array's value as NumPy (on several hosts no process sees every copy)."""
    return np.asarray(x.addressable_data(0))


def main(argv=None):
    """Train on --data for --epochs, one line per epoch; --out saves the parameters."""
    a = parse_args(argv)
    if a.coordinator:
        jax.distributed.initialize(a.coordinator, a.num_processes, a.process_id)
    devices = jax.devices()
    if a.batch_size < 1 or a.batch_size % len(devices):
        fail(f"--batch-size {a.batch_size} does not split over the {len(devices)} devices: "
             f"use a multiple of {len(devices)}.")
    # automatic sharding: XLA places the gradient sums across devices (an explicit mesh
    # would ask every product for its output's sharding)
    mesh = jax.sharding.Mesh(np.array(devices), ("data",))
    rows_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    with np.load(a.data) as f:
        data = {FEATURES: f["X"]} | ({TARGET: f["y"]} if TARGET else {})
    n = len(data[FEATURES])
    if n < a.batch_size:
        fail(f"--batch-size {a.batch_size} is larger than the {n} examples of {a.data}.")
    per = a.batch_size // jax.process_count()  # this process's rows of each global batch
    first = jax.process_index() * per
    params = jax.device_put(init_params(a.seed), replicated)
    state = jax.device_put(init_state(params), replicated)
    order_rng = np.random.default_rng(a.seed)
    for epoch in range(1, a.epochs + 1):
        start, losses = time.perf_counter(), []
        order = order_rng.permutation(n)
        for b in range(n // a.batch_size):  # full batches only: each splits evenly
            rows = order[b * a.batch_size + first:b * a.batch_size + first + per]
            batch = {}
            for name, values in data.items():
                local = values[rows]
                if local.dtype.kind == "f":
                    local = local.astype(DTYPE)
                batch[name] = jax.make_array_from_process_local_data(rows_sharding, local)
            loss, params, state = train_step(params, state, lr=a.lr, **batch)
            losses.append(loss)
        mean = float(np.mean([first_copy(v) for v in losses]))
        if jax.process_index() == 0:
            print(f"epoch {epoch}/{a.epochs}  loss {mean:.6f}  {len(devices)} device(s)  "
                  f"{time.perf_counter() - start:.2f} s", flush=True)
        if not np.isfinite(mean):
            fail(f"the loss is {mean} in epoch {epoch}; lower --lr.")
    if a.out and jax.process_index() == 0:
        np.savez(a.out, **{k: first_copy(v) for k, v in params.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
