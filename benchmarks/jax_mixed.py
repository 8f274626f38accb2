"""Mixed precision on the JAX backend: step time against float32 (issue 15).

Times the generated JAX training step (``sb.compile(g, optimizer="adam",
backend="jax", precision=...)``, its own jitted ``train_step`` with donated buffers) on A
(784-256-256-256-10, relu, softmax cross-entropy) in float32, ``precision="mixed"``
(float16 with dynamic loss scaling) and ``precision="bfloat16"``, at batch 128 and 1024,
on JAX's default device. Steps of the three precisions alternate in blocks, so that a
change in the machine's load falls on all of them; prints the medians and the ratios to
float32. On a CPU, XLA computes float16 and bfloat16 by converting to float32 and back
(there is no half-precision arithmetic to gain), so expect mixed to be slower there; the
gain is on GPUs with half-precision units.

    python benchmarks/jax_mixed.py                 # batch 128 and 1024, 5 rounds
    python benchmarks/jax_mixed.py --batch 1024 --rounds 9 --steps 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

WIDTHS = [784, 256, 256, 256, 10]  # workload A
PRECISIONS = ("float32", "mixed", "bfloat16")


def steppers(batch: int) -> dict:
    """precision -> a function running one step (and waiting for it)."""
    import jax

    import symbackprop as sb

    g = sb.models.mlp(WIDTHS, activation="relu", loss="softmax_cross_entropy")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(batch, WIDTHS[0])).astype(np.float32)
    y = rng.integers(0, WIDTHS[-1], batch)
    out = {}
    for precision in PRECISIONS:
        step = sb.compile(g, optimizer="adam", lr=1e-3, backend="jax", dtype="float32",
                          precision=None if precision == "float32" else precision)
        Xd, yd = jax.device_put(X), jax.device_put(y)
        box = {"params": step.init_params(0)}
        box["state"] = step.init_state(box["params"])

        def run(step=step, box=box, Xd=Xd, yd=yd):
            loss, box["params"], box["state"] = step.module.train_step(
                box["params"], box["state"], Xd, yd)
            loss.block_until_ready()
        for _ in range(3):  # compile (twice: the state's Python scalars become arrays)
            run()
        out[precision] = run
    return out


def time_all(fns: dict, rounds: int, steps: int) -> dict:
    """Median seconds per step of each function, blocks of ``steps`` calls alternating."""
    blocks = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            start = time.perf_counter()
            for _ in range(steps):
                f()
            blocks[k].append((time.perf_counter() - start) / steps)
    return {k: statistics.median(v) for k, v in blocks.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, nargs="+", default=[128, 1024])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=10, help="steps per timed block")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args(argv)
    import jax

    device = jax.devices()[0]
    kind = getattr(device, "device_kind", "")
    results = {"device": device.platform if kind in ("", device.platform)
               else f"{device.platform} ({kind})",
               "jax": jax.__version__, "batches": {}}
    print(f"JAX {jax.__version__} on {results['device']}; A {'-'.join(map(str, WIDTHS))}, Adam")
    for batch in a.batch:
        med = time_all(steppers(batch), a.rounds, a.steps)
        results["batches"][batch] = med
        print(f"batch {batch:5d}: " + "  ".join(
            f"{k} {1e3 * v:.2f} ms ({v / med['float32']:.2f}x)" for k, v in med.items()),
            flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
