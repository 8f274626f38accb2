"""The main program of a generated JAX training script (issue 15): data parallelism
through JAX's own engine, never a home-made one.

Each global batch is split over every device (``jax.sharding.Mesh`` over one ``data``
axis, the batch ``PartitionSpec("data")``), the parameters and optimizer state are
replicated, and the generated ``train_step`` (jitted, its buffers donated) runs as one
SPMD program: XLA sums the gradients across devices. On several hosts,
``--coordinator``, ``--num-processes`` and ``--process-id`` (all three or none, checked
by ``parse_args`` first) call ``jax.distributed.initialize``, and each process feeds its
rows of every global batch (``jax.make_array_from_process_local_data``). Process 0 alone prints and writes the
checkpoints (``--out``, ``--checkpoint-every``), atomically (:mod:`.atomic`'s
``atomic_write``, shared with the NumPy and torch scripts), in the NumPy script's
layout (``network``, ``optimizer``, ``params/NAME``, ``state/KEY[/NAME]``,
``progress/epoch``, ``progress/seen``, ``progress/loss_sum``, ``progress/rng``: the
shuffling generator's state as JSON); ``--resume`` continues from one where it was
written, so that the final parameters are an uninterrupted run's.

A nan or inf stops the run at the batch that met it, as the NumPy script's does, without
a transfer from the devices per step: ``guarded_step`` runs each step inside one more
``jax.jit``, and once a step's loss or new parameters are not finite it and every later
step of the epoch return their inputs unchanged (``jnp.where`` on a flag the steps carry).
At the epoch's end the flag is read with the losses; if a step failed, the parameters,
optimizer state and buffers from before that batch are written to ``NAME.last_good.npz``
beside ``--out`` (with the samples seen in the epoch, so that ``--resume`` continues from
that batch) and the script stops with one line, exit status 1. The generated script copies these functions;
``init_params``, ``init_state``, ``train_step``, ``evaluate``, ``DTYPE`` and the
constants below are the generated module's (here stand-ins, so that the file runs and
ruff checks it). NumPy, which JAX depends on, reads the data and writes the checkpoints.

A network with batch norm or dropout (``BUFFERS``) keeps buffers besides its parameters
(``init_buffers``, the generated module's): the running statistics, replicated as the
parameters and returned anew by every step, and dropout's key, which ``train_batch``
folds with the epoch and the batch's number (one key for every process and device:
each device draws the bits of its own rows, so the masks are a one-device run's). The
checkpoints hold them under ``buffers/`` (``buffers/running/NAME``, ``buffers/key``: the
key's raw data). ``--metrics FILE.csv`` and ``--log-grad-norms`` are the NumPy script's
(its ``GradNorms``, copied beside these). The data is read and checked by the NumPy
script's code (its ``InputError``, ``read_npz``, ``read_csv``, ``check_split`` and
``load_data``, copied): ``.npz`` or ``.csv`` (numbers only, the target in the last
column(s), an optional header line). As there, bad data, a bad option (its ``option`` and
``ScriptParser``), an ``--out`` or ``--metrics`` that cannot be written (its ``outputs``) or
a checkpoint of another network or precision (its ``check_network``, ``check_precision``)
stops the script with one line (its ``fail``), exit status 2.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

try:
    import jax
except ImportError:  # generating the script needs no JAX; running it does
    jax = None

try:  # copied into the script
    from .atomic import atomic_write
    from .script import (
        InputError,
        ScriptParser,
        add_run_options,
        add_watch_options,
        check_network,
        check_precision,
        fail,
        last_good_path,
        load_data,
        option,
        outputs,
    )
except ImportError:  # this file run alone (python .../runtime/jax_script.py)
    from atomic import atomic_write
    from script import (
        InputError,
        ScriptParser,
        add_run_options,
        add_watch_options,
        check_network,
        check_precision,
        fail,
        last_good_path,
        load_data,
        option,
        outputs,
    )

DTYPE = np.float32
EPOCHS = 10
BATCH_SIZE = 32
SEED = 0
LR = 0.01
FEATURES = "X"  # the input fed from the data's X
TARGET_INPUT = "y"  # the input fed from the data's y (None: the loss needs X alone)
NETWORK = "network"
OPTIMIZER = "sgd"
METRIC = "loss"  # evaluate() returns: 'acc' (accuracy) or 'loss'
LAYERS = {"all": ("w",)}  # each layer's weights: --log-grad-norms, --metrics
FEATURE_SHAPE = (2,)  # one row of X
TARGET = "values"  # y holds: 'labels' (class indices), 'values' or None (no y)
TARGET_SHAPE = (1,)  # one entry of y
N_CLASSES = None
CSV_COLUMNS = 3
DATA_NPZ = "arrays X (N, 2) and y (N, 1) targets, optionally X_test and y_test"
DATA_CSV = "rows of 2 feature columns then 1 target column"
VOCAB = None  # X holds integer token ids 0..VOCAB-1 (None: X holds floats)
BUFFERS = None  # batch norm or dropout: what init_buffers() makes ('running', 'key')
MIXED = False  # mixed precision: the module has underflow() (codegen/jax_mixed.py)


def init_params(seed=0):  # stand-in: the generated module's
    raise NotImplementedError


def init_state(params):  # stand-in: the generated module's
    raise NotImplementedError


def train_step(params, state, lr=LR, **batch):  # stand-in: the generated module's
    raise NotImplementedError


def evaluate(params, X, y, running=None):  # stand-in: the generated module's
    raise NotImplementedError


def grad_norms(params, X, y):  # stand-in: the generated module's
    raise NotImplementedError


def init_buffers(seed):  # stand-in: the generated module's (batch norm, dropout)
    raise NotImplementedError


def train_batch(params, state, buffers, epoch, number, lr, batch):  # stand-in: likewise
    raise NotImplementedError


def underflow(params, state, **batch):  # stand-in: a mixed-precision module's
    raise NotImplementedError


def underflow_line(counts, state):  # stand-in: runtime/jax_mixed.py's
    raise NotImplementedError


def parse_args(argv=None):
    """The command line."""
    p = ScriptParser(
        description="Train the network with JAX: every global batch is split over all "
        "devices (jax.sharding, a 'data' axis), the parameters are replicated.",
        epilog="Bad data, options or checkpoints stop the script with one line saying what is "
        "wrong. A nan or inf loss or gradient stops it, naming the epoch and batch; the "
        "parameters from before that batch are saved next to --out as NAME.last_good.npz. "
        "Exit status: 0 done, 1 stopped on nan/inf, 2 bad input.")
    add_run_options(p, out=None, split="devices", full_batches=True)
    add_watch_options(p)
    hosts = "several hosts: all three of --coordinator, --num-processes and --process-id, " \
        "or none (one host)"
    p.add_argument("--coordinator", type=host_port, metavar="HOST:PORT",
                   help="the address of process 0, which every process reaches (port: an int "
                   f"1..65535), for jax.distributed.initialize; {hosts}")
    p.add_argument("--num-processes", type=option(int, 1), metavar="K",
                   help="how many processes train together, one per host, each started alike "
                   "but for --process-id")
    p.add_argument("--process-id", type=option(int, 0), metavar="I",
                   help="this process's number, 0..K-1 (each process its own); process 0 "
                   "prints and writes the checkpoints")
    a = p.parse_args(argv)
    given = [f"--{k.replace('_', '-')}" for k in ("coordinator", "num_processes", "process_id")
             if getattr(a, k) is not None]
    if 0 < len(given) < 3:
        lacks = [k for k in ("--coordinator", "--num-processes", "--process-id")
                 if k not in given]
        p.error(f"{' and '.join(given)} without {' and '.join(lacks)}; expected {hosts}")
    if given and a.process_id >= a.num_processes:
        p.error(f"argument --process-id: {a.process_id} is not below --num-processes "
                f"{a.num_processes}; expected 0..{a.num_processes - 1}, each process its own")
    return a


def host_port(text):
    """An argparse type: HOST:PORT, the port an int 1..65535 (checked here: a bad address
    would crash jax.distributed.initialize)."""
    host, colon, port = text.rpartition(":")
    if not colon or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT with a port 1..65535 "
                                         "(such as 10.0.0.1:1234)")
    return text


def first_copy(x):
    """A replicated array's value as NumPy (on several hosts no process sees every copy)."""
    return np.asarray(x.addressable_data(0))


def save_checkpoint(path, params, state, progress, buffers=None):
    """params, optimizer state, progress (the epochs done, the samples already trained in
    the next epoch and their summed loss, the shuffling generator's state at that epoch's
    start) and the buffers of batch norm and dropout to path, atomically (atomic_write).
    Process 0 alone writes (the others return)."""
    if jax.process_index():
        return
    arrays = {"network": np.array(NETWORK), "optimizer": np.array(OPTIMIZER),
              "progress/epoch": np.array(progress["epoch"]),
              "progress/seen": np.array(progress["seen"]),
              "progress/loss_sum": np.array(progress["loss_sum"]),
              "progress/rng": np.array(json.dumps(progress["rng"]))}
    arrays.update({"params/" + k: first_copy(v) for k, v in params.items()})
    for key, value in state.items():
        if isinstance(value, dict):
            arrays.update({f"state/{key}/{k}": first_copy(v) for k, v in value.items()})
        else:
            arrays["state/" + key] = first_copy(value) if hasattr(value, "addressable_data") \
                else np.array(value)
    if BUFFERS is not None:  # variant: buffers
        arrays.update({"buffers/running/" + k: first_copy(v)
                       for k, v in buffers.get("running", {}).items()})
        if "key" in buffers:  # the key's raw data (uint32)
            arrays["buffers/key"] = first_copy(jax.random.key_data(buffers["key"]))
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load_checkpoint(path):
    """params and optimizer state (NumPy arrays, init_state's structure), the progress
    (epoch, seen, loss_sum, rng: save_checkpoint's; seen 0 in a checkpoint written before
    there were mid-epoch ones) and the buffers (None without batch norm and dropout), from
    a checkpoint of this network and optimizer; raises InputError saying in one line what
    is wrong."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise InputError(f"checkpoint {path} does not exist; expected a .npz file "
                         "written by this script's --out") from None
    except (OSError, ValueError, EOFError) as e:
        raise InputError(f"checkpoint {path} is not a readable .npz file ({e})") from None
    check_network(path, arrays)
    fresh = init_params(0)
    fresh_state = init_state(fresh)
    check_precision(path, "state/scale" in arrays, "scale" in fresh_state)

    def array(key, like):
        if key not in arrays or arrays[key].shape != np.shape(like):
            shape = arrays[key].shape if key in arrays else "nothing"
            raise InputError(f"checkpoint {path}: {key} is {shape}; expected an array "
                             f"of shape {np.shape(like)}")
        return arrays[key].astype(np.asarray(like).dtype)

    params = {k: array("params/" + k, v) for k, v in fresh.items()}
    state = {}
    for key, value in fresh_state.items():
        if isinstance(value, dict):
            state[key] = {k: array(f"state/{key}/{k}", v) for k, v in value.items()}
        else:  # a count such as Adam's t, the loss scale: the dtype init_state gives it
            state[key] = array("state/" + key, value)
    buffers = None
    if BUFFERS is not None:  # variant: buffers
        fresh_buffers, buffers = init_buffers(0), {}
        if "running" in fresh_buffers:
            buffers["running"] = {k: array("buffers/running/" + k, v)
                                  for k, v in fresh_buffers["running"].items()}
        if "key" in fresh_buffers:
            raw = array("buffers/key", jax.random.key_data(fresh_buffers["key"]))
            buffers["key"] = jax.random.wrap_key_data(raw)
    try:
        progress = {"epoch": int(arrays["progress/epoch"]),
                    "seen": int(arrays.get("progress/seen", 0)),
                    "loss_sum": float(arrays.get("progress/loss_sum", 0.0)),
                    "rng": json.loads(str(arrays["progress/rng"]))}
        np.random.default_rng().bit_generator.state = progress["rng"]  # checked
    except KeyError as e:
        raise InputError(f"checkpoint {path} lacks {e}; expected a file written by this "
                         "script's --out") from None
    except (ValueError, TypeError) as e:
        raise InputError(f"checkpoint {path} has a bad entry: {e}; expected a file written "
                         "by this script's --out") from None
    return params, state, progress, buffers


def host(params):
    """The parameters as NumPy arrays (one copy each), for evaluate."""
    return {k: first_copy(v) for k, v in params.items()}


def read_data(path, input_shape=None):
    """The training data (by input name) and the test split (None without one) of a .npz
    or .csv file, as NumPy arrays, checked by the NumPy script's load_data (InputError:
    one line saying what is wrong)."""
    arrays = load_data(path, input_shape)
    data = {FEATURES: arrays["X"]} | ({TARGET_INPUT: arrays["y"]} if TARGET else {})
    # a held-out split: evaluated after every epoch (each process, on its own devices)
    test = (arrays["X_test"], arrays["y_test"]) if arrays["X_test"] is not None else None
    return data, test


def guarded_step(params, state, buffers, ok, epoch, number, lr, batch):
    """One training step (jitted by main, params, state and buffers donated) that changes
    nothing once a step has met nan or inf: ok, a boolean array, becomes False at a step
    whose loss or new parameters are not finite, and from then on every step returns
    params, state and the running statistics as it got them. So nothing is read back from
    the devices per step, and the state from before the bad batch is still there at the
    epoch's end. Returns the loss, params, state, buffers and ok."""
    if BUFFERS is None:  # variant: plain
        loss, new, new_state = train_step(params, state, lr=lr, **batch)
        new_buffers = buffers
    if BUFFERS is not None:  # variant: buffers
        loss, new, new_state, new_buffers = train_batch(params, state, buffers, epoch, number,
                                                        lr, batch)
    leaves = jax.tree_util.tree_leaves(new)
    ok = ok & jax.numpy.isfinite(loss) & jax.numpy.all(
        jax.numpy.stack([jax.numpy.isfinite(w).all() for w in leaves]))

    def keep(a, b):  # the new value while every step has been finite, else the old one
        return jax.tree_util.tree_map(lambda x, y: jax.numpy.where(ok, x, y), a, b)

    if BUFFERS is not None:  # variant: buffers
        kept = {k: keep(v, buffers[k]) for k, v in new_buffers.items() if k == "running"}
        new_buffers = {**new_buffers, **kept}  # (dropout's key does not change)
    return loss, keep(new, params), keep(new_state, state), new_buffers, ok


def main(argv=None):
    """Train on --data for --epochs (from --resume's epoch), one line per epoch; --out
    saves a checkpoint (also every --checkpoint-every epochs)."""
    a = parse_args(argv)
    if a.coordinator:  # checked by parse_args: all three, valid
        jax.distributed.initialize(a.coordinator, a.num_processes, a.process_id)
    devices = jax.devices()
    if a.batch_size % len(devices):
        return fail(f"--batch-size {a.batch_size} does not split over the {len(devices)} "
                    f"devices: use a multiple of {len(devices)}.", 2)
    # automatic sharding: XLA places the gradient sums across devices (an explicit mesh
    # would ask every product for its output's sharding)
    mesh = jax.sharding.Mesh(np.array(devices), ("data",))
    rows_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    try:
        data, test = read_data(a.data, getattr(a, "input_shape", None))
        n = len(data[FEATURES])
        if n < a.batch_size:
            raise InputError(f"--batch-size {a.batch_size} is larger than the {n} examples "
                             f"of {a.data}.")
        if a.checkpoint_every and not a.out:
            raise InputError(f"--checkpoint-every {a.checkpoint_every} writes to --out FILE: "
                             "pass one.")
        if a.resume:
            params, state, progress, buffers = load_checkpoint(a.resume)
            if progress["seen"] >= n or progress["seen"] % a.batch_size:
                raise InputError(f"the checkpoint has seen {progress['seen']} samples of epoch "
                                 f"{progress['epoch'] + 1}, which is not a whole number of "
                                 f"batches of --batch-size {a.batch_size} within the {n} rows "
                                 f"of {a.data}; resume with the data and --batch-size it was "
                                 "written with")
    except InputError as e:
        return fail(e, 2)
    per = a.batch_size // jax.process_count()  # this process's rows of each global batch
    first = jax.process_index() * per
    if a.resume:
        params, state, buffers = jax.device_put((params, state, buffers), replicated)
    else:
        params = jax.device_put(init_params(a.seed), replicated)
        state = jax.device_put(init_state(params), replicated)
        buffers = None
        progress = {"epoch": 0, "seen": 0, "loss_sum": 0.0,
                    "rng": np.random.default_rng(a.seed).bit_generator.state}
        if BUFFERS is not None:  # variant: buffers
            buffers = jax.device_put(init_buffers(a.seed), replicated)
    norms = problem = None  # --out, --log-grad-norms, --metrics: process 0 alone writes
    if jax.process_index() == 0:
        try:
            norms = outputs(a, {"X": data[FEATURES], "y": data.get(TARGET_INPUT),
                                "X_test": None if test is None else test[0]})
        except InputError as e:
            problem = e
    if jax.process_count() > 1:  # the others stop with process 0, not wait in its first step
        from jax.experimental import multihost_utils

        if multihost_utils.broadcast_one_to_all(np.array(problem is not None)):
            return 2 if problem is None else fail(problem, 2)
    elif problem is not None:
        return fail(problem, 2)
    done, loss_sum = progress["epoch"], progress["loss_sum"]
    if done >= a.epochs and jax.process_index() == 0:
        print(f"the checkpoint is at epoch {done}; nothing to do for --epochs {a.epochs}")
    order_rng = np.random.default_rng()
    order_rng.bit_generator.state = progress["rng"]
    step = jax.jit(guarded_step, donate_argnums=(0, 1, 2))
    ok = jax.device_put(np.array(True), replicated)  # no step has met nan or inf
    n_batches = n // a.batch_size  # full batches only: each splits evenly
    for epoch in range(done + 1, a.epochs + 1):
        start, losses = time.perf_counter(), []
        rng_state = order_rng.bit_generator.state  # a checkpoint inside this epoch restarts here
        order = order_rng.permutation(n)
        skip = progress["seen"] // a.batch_size if epoch == done + 1 else 0  # resumed
        for b in range(skip, n_batches):
            rows = order[b * a.batch_size + first:b * a.batch_size + first + per]
            batch = {}
            for name, values in data.items():
                local = values[rows]
                if local.dtype.kind == "f":
                    local = local.astype(DTYPE)
                batch[name] = jax.make_array_from_process_local_data(rows_sharding, local)
            loss, params, state, buffers, ok = step(params, state, buffers, ok, epoch, b, a.lr,
                                                    batch)
            losses.append((loss, ok))
        values = [float(first_copy(v)) for v, _ in losses]  # one read back per epoch
        good = [bool(first_copy(f)) for _, f in losses]
        if not all(good):  # the first step that met nan or inf changed nothing, nor did later ones
            bad = good.index(False)
            path = last_good_path(a.out or "checkpoint.npz")
            loss_sum += sum(values[:bad]) * a.batch_size
            save_checkpoint(path, params, state, {"epoch": epoch - 1,
                                                  "seen": (skip + bad) * a.batch_size,
                                                  "loss_sum": loss_sum, "rng": rng_state},
                            buffers)
            kept = f"; {a.out} is unchanged" if a.out and os.path.exists(a.out) else ""
            what = f"the loss is {values[bad]}" if not np.isfinite(values[bad]) else \
                "a gradient is nan or inf (the updated parameters were not finite)"
            return fail(f"stopped at epoch {epoch}, batch {skip + bad + 1} of {n_batches}: "
                        f"{what}. The last good parameters (before this batch) are saved in "
                        f"{path}{kept}", 1)
        loss_sum += sum(values) * a.batch_size
        mean = loss_sum / (n_batches * a.batch_size)
        # the NumPy script's report: test accuracy or loss, else train accuracy
        split = test if test is not None else (data[FEATURES], data[TARGET_INPUT]) \
            if METRIC == "acc" else None
        score, value = "", None
        if split is not None:
            if BUFFERS is None:  # variant: plain
                value = evaluate(host(params), *split)
            if BUFFERS is not None:  # variant: buffers
                value = evaluate(host(params), *split, host(buffers.get("running", {})))
            score = f"  {'test' if test is not None else 'train'}_{METRIC} {value:.4f}"
        if jax.process_index() == 0:
            print(f"epoch {epoch}/{a.epochs}  loss {mean:.6f}{score}  {len(devices)} "
                  f"device(s)  {time.perf_counter() - start:.2f} s", flush=True)
        if norms is not None:
            norms.log(epoch, host(params), mean, value)
        if MIXED:  # variant: mixed
            # on the first --batch-size rows, as NumPy's script (each process: as evaluate)
            scaler = {k: first_copy(v) for k, v in state.items() if not isinstance(v, dict)}
            counts = underflow(host(params), scaler,
                               **{k: v[:a.batch_size] for k, v in data.items()})
            if jax.process_index() == 0:
                print(underflow_line(counts, scaler), flush=True)
        loss_sum = 0.0
        if a.out and (epoch == a.epochs or a.checkpoint_every
                      and epoch % a.checkpoint_every == 0):
            save_checkpoint(a.out, params, state, {"epoch": epoch, "seen": 0, "loss_sum": 0.0,
                                                   "rng": order_rng.bit_generator.state},
                            buffers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
