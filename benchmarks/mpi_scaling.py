"""Data-parallel scaling of the generated training script under MPI (issue 15).

Times the training step of ``sb.training_script(g, distributed="mpi")`` (the script's own
``shard``, ``minibatch`` and ``train_step``: its share of the forward and backward pass, one
Allreduce of the flat gradient buffer, the update) on A (784-256-256-256-10, float64, SGD)
at a global batch of 1024, in one process and under ``mpirun -n K``, every process with one
BLAS thread. Runs alternate (1 process, K processes, 1 process, ...) so that a change in
the machine's load falls on both; each run reports the median step time of rank 0. Prints
the medians and their ratio (target: K = 2 at most 0.6x one process).

    python benchmarks/mpi_scaling.py                    # K = 2, 3 rounds
    python benchmarks/mpi_scaling.py --ranks 2 --rounds 5 --batch 1024 --steps 40
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WIDTHS = [784, 256, 256, 256, 10]  # workload A


def worker(script: str, batch: int, steps: int, warmup: int) -> None:
    """Inside each process: load the generated script as a module, connect to MPI as its
    main does, and time its training step on random data; rank 0 prints JSON."""
    import numpy as np

    spec = importlib.util.spec_from_file_location("train", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # its main() runs only as __main__
    mod.MPI, mod.COMM = mod.mpi_world()
    comm = mod.COMM
    rng = np.random.default_rng(0)
    n = batch * 8
    X = rng.random((n, WIDTHS[0]))
    y = rng.integers(0, WIDTHS[-1], n)
    params = mod.init_params(0)
    state = mod.init_state(params)
    order = rng.permutation(n)
    times = []
    for step in range(warmup + steps):
        idx = order[(step % 8) * batch:(step % 8 + 1) * batch]
        comm.Barrier()  # every rank starts the step together: its time is the slowest's
        start = time.perf_counter()
        mine, share = mod.shard(idx)
        mod.train_step(params, state, **mod.minibatch(X, y, mine), lr=0.01, share=share)
        times.append(time.perf_counter() - start)
    G = mod._workspace(len(mine))[1]  # the flat gradient buffer: the Allreduce alone
    reduce = []
    for _ in range(warmup + steps):
        comm.Barrier()
        start = time.perf_counter()
        if comm.Get_size() > 1:
            comm.Allreduce(mod.MPI.IN_PLACE, G, op=mod.MPI.SUM)
        reduce.append(time.perf_counter() - start)
    if comm.Get_rank() == 0:
        print(json.dumps({"ranks": comm.Get_size(), "median_s": statistics.median(
            times[warmup:]), "min_s": min(times[warmup:]),
            "allreduce_s": statistics.median(reduce[warmup:]), "floats": int(G.size)}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=1024, help="the global batch (1024)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--worker", metavar="SCRIPT", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        worker(a.worker, a.batch, a.steps, a.warmup)
        return
    import symbackprop as sb

    mpirun = shutil.which("mpirun", path=f"{Path(sys.executable).parent}{os.pathsep}"
                          f"{os.environ.get('PATH', '')}")
    if mpirun is None or importlib.util.find_spec("mpi4py") is None:  # make bench goes on
        print("MPI scaling: skipped, mpirun or mpi4py is missing (pip install "
              "symbackprop[distributed])")
        return
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               HYDRA_LAUNCHER="fork", HYDRA_IFACE="lo")
    with tempfile.TemporaryDirectory() as d:
        script = Path(d) / "train_a.py"
        script.write_text(sb.training_script(sb.models.mlp(WIDTHS), optimizer="sgd", lr=0.01,
                                             distributed="mpi"))
        cmd = [sys.executable, __file__, "--worker", str(script), "--batch", str(a.batch),
               "--steps", str(a.steps), "--warmup", str(a.warmup)]
        shard = [*cmd[:5], str(a.batch // a.ranks), *cmd[6:]]  # one process, one shard
        runs, reduce = {1: [], a.ranks: [], "shard": []}, []
        for _ in range(a.rounds):
            for k, times in runs.items():
                full = shard if k == "shard" else cmd if k == 1 else \
                    [mpirun, "-n", str(k), *cmd]
                out = subprocess.run(full, env=env, capture_output=True, text=True,
                                     timeout=600, check=True).stdout
                got = json.loads(out.strip().splitlines()[-1])
                times.append(got["median_s"])
                if k == a.ranks:
                    reduce.append(got["allreduce_s"])
    one, par = statistics.median(runs[1]), statistics.median(runs[a.ranks])
    part, ar = statistics.median(runs["shard"]), statistics.median(reduce)
    print(f"A (784-256-256-256-10) float64 SGD, global batch {a.batch}, 1 BLAS thread per "
          f"process, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"  1 process:   {one * 1e3:7.2f} ms/step  (runs: "
          f"{', '.join(f'{t * 1e3:.2f}' for t in runs[1])})")
    print(f"  {a.ranks} processes: {par * 1e3:7.2f} ms/step  (runs: "
          f"{', '.join(f'{t * 1e3:.2f}' for t in runs[a.ranks])})")
    print(f"  ratio {par / one:.3f} (target <= 0.6 for 2 processes); scaling efficiency "
          f"{one / (a.ranks * par):.2f}")
    paired = [k / o for k, o in zip(runs[a.ranks], runs[1])]
    print(f"  ratio round by round (K processes / the 1 process run just before): "
          f"{', '.join(f'{r:.2f}' for r in paired)}")
    print(f"  parts: one process on a shard of {a.batch // a.ranks} rows {part * 1e3:.2f} ms, "
          f"the Allreduce of {got['floats']} floats alone {ar * 1e3:.2f} ms: "
          f"(shard + Allreduce) / one process = {(part + ar) / one:.3f}")


if __name__ == "__main__":
    main()
