"""The generated JAX training step against a hand-written ``jax.jit`` step (issue 15).

Two parts, on ``make bench``'s workloads C (64-64x50-10 tanh, batch 64, float64) and A
(784-256-256-256-10 relu, float32, batch 128 and 1024), with ``make bench``'s own
contenders (``benchmarks/contenders.py``: ``JaxJit`` and ``GeneratedJax``):

1. **The compiled programs.** Both steps are lowered and compiled for the same arrays
   (``jax.jit(f).lower(...).compile()``); printed per program: XLA's fusions, dots,
   copies, transposes and converts in the optimized HLO, the parameter buffers aliased
   to outputs (donation that happened), and ``cost_analysis()``'s flops and bytes.
2. **Interleaved timing** in one process: the hand-written step, the generated step
   and a second, independent copy of the hand-written step (the null comparison: its
   ratio to the first shows what the machine's noise alone gives), in blocks of
   ``--block`` seconds in a fresh random order each round. Per round, each step's
   median wall time and its CPU time per call (all threads; a step descheduled by
   another job loses wall time, not CPU time); printed: the medians over rounds of
   the per-round ratios to the hand-written step, with their quartiles.

    python benchmarks/jax_step.py                     # C, A-b128, A-b1024; 40 rounds
    python benchmarks/jax_step.py --only C --rounds 80 --json out.json
    python benchmarks/jax_step.py --no-timing         # the programs alone
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import contenders
import handwritten as hw

import symbackprop as sb

LR = 0.01
WORKLOADS = {  # make bench's
    "C": ((64,) + (64,) * 50 + (10,), "tanh", 64, "float64"),
    "A-b128-f32": ((784, 256, 256, 256, 10), "relu", 128, "float32"),
    "A-b1024-f32": ((784, 256, 256, 256, 10), "relu", 1024, "float32"),
}


def build(key: str, hand=None, generated=None, workloads=WORKLOADS) -> dict:
    """name -> contender (``step()``, ``params()``) of workload ``key``: ``hand`` (default
    :class:`contenders.JaxJit`), ``generated`` (default :class:`contenders.GeneratedJax`)
    and a second ``hand`` (the null comparison), checked to agree after one step (float32
    to 1e-4, float64 to 1e-9)."""
    hand, generated = hand or contenders.JaxJit, generated or contenders.GeneratedJax
    sizes, act, batch, dtype = workloads[key]
    rng = np.random.default_rng(0)
    p0 = hw.init_params(sizes, act, np.dtype(dtype), rng)
    X, y = hw.make_batch(sizes, batch, np.dtype(dtype), rng)
    g = sb.models.mlp(list(sizes), activation=act)
    made = {name: cls(g, p0, X, y, LR, np.dtype(dtype), activation=act)
            for name, cls in (("hand", hand), ("generated", generated), ("hand again", hand))}
    losses = {name: c.step() for name, c in made.items()}
    rtol = 1e-4 if dtype == "float32" else 1e-9
    for name, c in made.items():
        if not np.isclose(losses[name], losses["hand"], rtol=rtol):
            raise AssertionError(f"{key}: {name}'s loss {losses[name]} against {losses['hand']}")
        for k, v in c.params().items():
            ref = made["hand"].params()[k]
            if not np.allclose(v, ref, rtol=rtol, atol=rtol * 1e-2):
                raise AssertionError(f"{key}: {name}'s {k} differs from {hand.label}'s")
    return made


def program(c) -> dict:
    """Counts in the optimized HLO of contender ``c``'s jitted step, and its cost."""
    if isinstance(c, contenders.GeneratedJax):
        lowered = c._step.lower(c.ps, c.state, c.X, c.y)
    else:
        lowered = c._step.lower(c.ps, c.X, c.y)
    compiled = lowered.compile()
    text = compiled.as_text()
    entry = text[text.index("\nENTRY"):]
    header = text[:text.index("\n")]

    def count(op, where=text):
        return len(re.findall(rf"= \S+ {op}\(", where))

    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return {"fusions": count("fusion", entry), "dots": count("dot"),
            "copies": count("copy", entry), "transposes": count("transpose"),
            "converts": count("convert"), "tanh": count("tanh"),
            "aliased_buffers": header.count("may-alias") + header.count("must-alias"),
            "flops": cost.get("flops"), "bytes_accessed": cost.get("bytes accessed")}


def interleave(made: dict, rounds: int, block: float, drop: float, seed: int) -> dict:
    """name -> {"wall": per-round median seconds, "cpu": per-round CPU seconds per call}."""
    out = {name: {"wall": [], "cpu": []} for name in made}
    rng = random.Random(seed)
    clock = time.perf_counter
    for c in made.values():  # warm
        for _ in range(5):
            c.step()
    gc.collect()
    gc.disable()
    try:
        for _ in range(rounds):
            order = list(made)
            rng.shuffle(order)
            for name in order:
                step = made[name].step
                end = clock() + drop
                while clock() < end:
                    step()
                times, cpu0, end = [], time.process_time(), clock() + block
                while True:
                    t0 = clock()
                    step()
                    t1 = clock()
                    times.append(t1 - t0)
                    if t1 >= end:
                        break
                out[name]["cpu"].append((time.process_time() - cpu0) / len(times))
                out[name]["wall"].append(statistics.median(times))
    finally:
        gc.enable()
    return out


def ratios(t: dict, name: str, kind: str) -> dict:
    """Median and quartiles of the per-round ratios of ``name`` to the hand-written step."""
    r = [a / b for a, b in zip(t[name][kind], t["hand"][kind])]
    q = statistics.quantiles(r, n=4)
    return {"median": statistics.median(r), "q1": q[0], "q3": q[2]}


def timed(key: str, made: dict, a, label: str) -> dict:
    """Time ``made`` interleaved (``a``: the command line's rounds, block, drop, seed) and
    print the generated step's and the null comparison's ratios to ``made["hand"]`` (called
    ``label``). Returns the timings, the load average before and after, and the ratios."""
    load0 = os.getloadavg()[0]
    t = interleave(made, a.rounds, a.block, a.drop, a.seed)
    load1 = os.getloadavg()[0]
    res = {"timing": t, "load_average": [load0, load1]}
    print(f"{key}: {a.rounds} rounds of {a.block} s blocks, load average {load0:.2f} "
          f"-> {load1:.2f}")
    for name in ("generated", "hand again"):
        res[name] = {kind: ratios(t, name, kind) for kind in ("wall", "cpu")}
        w, c = res[name]["wall"], res[name]["cpu"]
        print(f"  {name:10s} / {label}: wall {w['median']:.3f}x ({w['q1']:.3f}-{w['q3']:.3f}), "
              f"CPU {c['median']:.3f}x ({c['q1']:.3f}-{c['q3']:.3f})")
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=",".join(WORKLOADS), help="workloads: C, A-b128-f32, A-b1024-f32")
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--block", type=float, default=0.15, help="timed seconds per block")
    p.add_argument("--drop", type=float, default=0.03, help="untimed seconds before each block")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-timing", action="store_true", help="compare the programs alone")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    import jax

    print(f"JAX {jax.__version__} on {jax.devices()[0].device_kind}, {os.cpu_count()} CPUs; "
          f"load average {os.getloadavg()[0]:.2f}")
    results = {}
    for key in [k.strip() for k in a.only.split(",") if k.strip()]:
        made = build(key)
        progs = {name: program(made[name]) for name in ("hand", "generated")}
        res = results[key] = {"programs": progs}
        print(f"\n{key}: the compiled steps")
        for field in progs["hand"]:
            print(f"  {field:16s} hand {progs['hand'][field]!s:>14}   generated "
                  f"{progs['generated'][field]!s:>14}")
        if a.no_timing:
            continue
        res.update(timed(key, made, a, "hand"))
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
