"""The generated torch training step against PyTorch eager with autograd (issue 15).

``make bench``'s workload A (784-256-256-256-10 relu, float32, batch 128; batch 1024 and C
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

import contenders
from jax_step import build, timed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="A-b128-f32", help="workloads: A-b128-f32, A-b1024-f32, C")
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
        made = build(key, contenders.TorchEager, contenders.GeneratedTorch)
        results[key] = timed(key, made, a, "PyTorch eager")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
