"""The generated torch training step against PyTorch eager with autograd (issue 15).

``make bench``'s workload A (784-256-256-256-10 relu, float32, batch 128; and batch 1024
with ``--only``) with ``make bench``'s own contenders (``benchmarks/contenders.py``:
``TorchEager``, ``GeneratedTorch``), timed as ``benchmarks/jax_step.py`` times JAX's:
PyTorch eager, the generated step and a second, independent PyTorch eager step (the null
comparison: its ratio to the first shows what the machine's noise alone gives), in blocks
of ``--block`` seconds in a fresh random order each round. Printed: the medians over
rounds of the per-round ratios to PyTorch eager, wall and CPU time, with their quartiles.
A ratio per round cancels what a whole round shares (a slower phase of the machine), which
the ratio of two contenders' overall medians does not.

    python benchmarks/torch_step.py                          # A-b128-f32, 40 rounds
    python benchmarks/torch_step.py --threads 1 --rounds 80 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import contenders
import handwritten as hw
from jax_step import timed

import symbackprop as sb

LR = 0.01
WORKLOADS = {  # make bench's
    "A-b128-f32": ((784, 256, 256, 256, 10), "relu", 128, "float32"),
    "A-b1024-f32": ((784, 256, 256, 256, 10), "relu", 1024, "float32"),
}


def build(key: str) -> dict:
    """name -> contender (``step()``, ``params()``) of workload ``key``, checked to agree
    after one step (float32: to 1e-4)."""
    sizes, act, batch, dtype = WORKLOADS[key]
    rng = np.random.default_rng(0)
    p0 = hw.init_params(sizes, act, np.dtype(dtype), rng)
    X, y = hw.make_batch(sizes, batch, np.dtype(dtype), rng)
    g = sb.models.mlp(list(sizes), activation=act)
    made = {name: cls(g, p0, X, y, LR, np.dtype(dtype), activation=act)
            for name, cls in (("hand", contenders.TorchEager),
                              ("generated", contenders.GeneratedTorch),
                              ("hand again", contenders.TorchEager))}
    losses = {name: c.step() for name, c in made.items()}
    for name, c in made.items():
        if not np.isclose(losses[name], losses["hand"], rtol=1e-4):
            raise AssertionError(f"{key}: {name}'s loss {losses[name]} against {losses['hand']}")
        for k, v in c.params().items():
            if not np.allclose(v, made["hand"].params()[k], rtol=1e-4, atol=1e-6):
                raise AssertionError(f"{key}: {name}'s {k} differs from PyTorch eager's")
    return made


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="A-b128-f32", help="workloads: A-b128-f32, A-b1024-f32")
    p.add_argument("--threads", type=int, default=2, help="torch threads (make bench's: 2)")
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--block", type=float, default=0.15, help="timed seconds per block")
    p.add_argument("--drop", type=float, default=0.03, help="untimed seconds before each block")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(a.threads)  # contenders.py's torch threads
    import torch

    print(f"PyTorch {torch.__version__}, {a.threads} threads, {os.cpu_count()} CPUs; "
          f"load average {os.getloadavg()[0]:.2f}")
    results = {}
    for key in [k.strip() for k in a.only.split(",") if k.strip()]:
        results[key] = timed(key, build(key), a, "PyTorch eager")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
