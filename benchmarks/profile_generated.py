"""Where does a generated function spend its time? Median time of each statement.

Rewrites one function of the generated module so that a clock is read after every top-level
statement, runs it many times, and prints each statement with its median time and share.
The clock reads add well under a microsecond per statement, so read small numbers with care.

    python benchmarks/profile_generated.py                       # A: 784-256-256-256-10, b128
    python benchmarks/profile_generated.py --sizes 64,32,10 --batch 32 --function forward
    python benchmarks/profile_generated.py --dtype float32 --batch 1024
    python benchmarks/profile_generated.py --train-step                # train_step's statements
    python benchmarks/profile_generated.py --train-step --function loss_and_grads_into
    python benchmarks/profile_generated.py --network D --dtype float32 --train-step  # the CNN
    python benchmarks/profile_generated.py --network E --dtype float32 --batch 16  # the block

With ``--train-step`` the module is ``sb.train_step(g, optimizer="sgd", lr=0.01)``'s and every
run calls its ``train_step``; ``--function`` names the function whose statements are timed.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "2")  # 2, as bench.py, unless set (1 on a loaded machine)

import argparse
import ast
import functools
import gc
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import handwritten as hw
import networks

import symbackprop as sb


def instrument(source: str, name: str):
    """The function ``name`` of ``source``, recording ``perf_counter()`` after each statement."""
    tree = ast.parse(source)
    fn = next(f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == name)
    body = [s for s in fn.body if not (isinstance(s, ast.Expr)
                                       and isinstance(s.value, ast.Constant))]
    texts = [ast.get_source_segment(source, s) for s in body]
    tick = ast.parse("_ticks.append(_clock())").body[0]
    new = [ast.parse("_ticks.append(_clock())").body[0]]
    for s in body:
        if isinstance(s, ast.Return):  # time the returned expression, then return it
            new += [ast.Assign([ast.Name("_ret", ast.Store())], s.value), tick,
                    ast.Return(ast.Name("_ret", ast.Load()))]
        else:
            new += [s, tick]
    fn.body = new
    ast.fix_missing_locations(tree)
    ns = {}
    exec(compile(tree, "<profiled>", "exec"), ns)  # noqa: S102 -- our own generated source
    return ns, texts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="784,256,256,256,10")
    p.add_argument("--activation", default="relu")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--dtype", default="float64")
    p.add_argument("--function", default=None,
                   help="function to time statement by statement (default value_and_grad, "
                   "or train_step with --train-step)")
    p.add_argument("--train-step", action="store_true",
                   help="profile the generated training step module (SGD, lr 0.01)")
    p.add_argument("--network", choices=("D", "E"), default=None,
                   help="profile workload D (the digits CNN) or E (the transformer block) "
                   "of benchmarks/networks.py instead of an MLP (--sizes is ignored)")
    p.add_argument("--seconds", type=float, default=3.0)
    a = p.parse_args(argv)
    sizes = [int(s) for s in a.sizes.split(",")]
    if a.network:
        return profile_network(a)
    g = sb.models.mlp(sizes, activation=a.activation)
    rng = np.random.default_rng(0)
    params = hw.init_params(sizes, a.activation, np.dtype(a.dtype), rng)
    X, y = hw.make_batch(sizes, a.batch, np.dtype(a.dtype), rng)
    title = f"{'-'.join(map(str, sizes))} {a.activation}, batch {a.batch}, {a.dtype}"
    return profile(g, a, params, {"X": X, "y": y}, title)


def profile_network(a) -> int:
    """Workload D or E: the generated module of its network, on random parameters (as
    bench.py makes them) and a random batch of ``a.batch``."""
    g = networks.digits_cnn() if a.network == "D" else networks.transformer_block()
    dtype = np.dtype(a.dtype)
    rng = np.random.default_rng(0)
    params = hw.init_network({k: g[k].shape for k in g.nodes("param")}, dtype, rng)
    X = rng.standard_normal((a.batch, *g["X"].shape[1:])).astype(dtype)
    batch = {"X": X}
    if "y" in g.nodes("input"):
        batch["y"] = rng.integers(0, 10, size=a.batch).astype(np.int64)
    return profile(g, a, params, batch, f"workload {a.network}, batch {a.batch}, {a.dtype}")


def profile(g, a, params: dict, batch: dict, title: str) -> int:
    """Generate ``g``'s module (the training step with ``a.train_step``), instrument
    ``a.function`` and time its statements on ``params`` and ``batch``."""
    if a.train_step:
        source = sb.train_step(g, of="L", optimizer="sgd", lr=0.01, dtype=a.dtype)
    else:
        source = sb.numpy_source(g, dtype=a.dtype)
    a.function = a.function or ("train_step" if a.train_step else "value_and_grad")
    ns, texts = instrument(source, a.function)
    ns["_clock"] = time.perf_counter
    if a.train_step:
        f = functools.partial(ns["train_step"], params, ns["init_state"](params), **batch)
    else:
        fn = ns[a.function]
        names = fn.__code__.co_varnames[:fn.__code__.co_argcount]
        # loss_and_grads_into writes the gradients into arrays of its caller: dW1, ...
        arrays = dict(params, **batch, **{f"d{k}": np.empty_like(v) for k, v in params.items()})
        f = functools.partial(fn, **{k: arrays[k] for k in names})
    return run(f, ns, texts, a.seconds, f"{a.function} of {title}")


def run(f, ns, texts, seconds, title) -> int:
    """Call ``f`` for ``seconds`` and print each statement's median time and share."""
    per = [[] for _ in texts]
    ns["_ticks"] = []
    f()
    gc.disable()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        ns["_ticks"] = ticks = []
        f()
        for i in range(len(texts)):
            per[i].append(ticks[i + 1] - ticks[i])
    gc.enable()
    med = [statistics.median(t) for t in per]
    total = sum(med)
    print(f"{title}: {total * 1e3:.3f} ms summed over {len(texts)} statements "
          f"({len(per[0])} runs)")
    for t, text in zip(med, texts):
        line = " ".join(text.split())
        print(f"{t * 1e6:9.1f} us {t / total * 100:5.1f}%  {line[:90]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
