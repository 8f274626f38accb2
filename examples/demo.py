"""The main job of `make demo`: the lessons' worked examples, end to end.

1. derivations of the two worked examples, with numbers (text);
2. the MLP's gradient formulas (delta form);
3. generated NumPy code for a small network, checked against finite differences;
4. diagrams of the worked examples and the MLP, written to out/, and a report page each
   for the chain and a small MLP (out/chain_report.html, out/mlp_report.html);
5. how gradients flow through 50 layers: sigmoid, tanh and relu side by side (and the
   chart out/flow_activations.svg when matplotlib is installed);
6. the digits example: generated training scripts (an MLP and a CNN) against scikit-learn;
7. the sequence example: a transformer classifier trained by a generated script;
8. the scale example: the 784-256-256-256-10 MLP data-parallel on 4 JAX devices and on 2
   MPI ranks, equal to one process.
"""

from __future__ import annotations

import os
import runpy
import subprocess
import sys

import symbackprop as sb

HERE = os.path.dirname(os.path.abspath(__file__))


def banner(title: str) -> None:
    print(f"\n{'=' * 78}\n{title}\n{'=' * 78}")


def main() -> int:
    banner("1. Chain rule, step by step: a = 2x, b = a + 3, c = b², at x = 1")
    print(sb.derive(sb.parse("a = 2*x; b = a + 3; c = b**2"), of="c", wrt="x",
                    at={"x": 1}).text())

    banner("   Squared error: L = (w·x − y)² at w = 2, x = 3, y = 10")
    print(sb.derive(sb.parse("L = (w*x - y)**2"), of="L", wrt="w",
                    at={"w": 2, "x": 3, "y": 10}).text())

    banner("2. Gradient formulas of a 784-256-256-256-10 ReLU classifier (delta form)")
    mlp = sb.models.mlp([784, 256, 256, 256, 10])
    cost = sb.cost(mlp, batch=64)  # parameters, FLOPs, memory: `symbackprop cost SPEC`
    print(f"{cost.weights:,} weights and {cost.biases:,} biases; backward "
          f"{cost.ratio:.2f}x the forward's FLOPs")
    print(sb.grad(mlp, of="L").text())

    banner("3. Generated NumPy code (64-32-10 classifier), checked by finite differences")
    small = sb.models.mlp([64, 32, 10])
    src = sb.numpy_source(small)
    print(src[src.index("def value_and_grad"):])
    print(sb.check_grad(small, sizes={"N": 8}))

    banner("4. Diagrams")
    runpy.run_path(os.path.join(HERE, "diagrams.py"), run_name="__main__")
    # one self-contained page each: symbackprop report SPEC [--at x=1] -o out/NAME.html
    out = os.path.join(os.path.dirname(HERE), "out")
    os.makedirs(out, exist_ok=True)
    for name, g, at in (("chain_report", sb.parse("a = 2*x; b = a + 3; c = b**2"), {"x": 1}),
                        ("mlp_report", sb.models.mlp([64, 32, 10]), None)):
        print(f"  {sb.report(g, at=at).write(os.path.join(out, name + '.html'))}")

    banner("5. How gradients flow: 50 hidden layers of 64, three activations (one batch of 64)")
    from symbackprop.display.charts import PlotsNotInstalledError
    from symbackprop.flow import compare

    deep = [64] + [64] * 50 + [10]  # symbackprop flow "mlp:64-64*50-10" --compare ...
    flow = compare({a: sb.models.mlp(deep, activation=a) for a in ("sigmoid", "tanh", "relu")})
    text = flow.text().splitlines()
    print("\n".join(text[:4] + ["..."] + text[-20:]))
    try:
        chart = os.path.join(os.path.dirname(HERE), "out", "flow_activations.svg")
        os.makedirs(os.path.dirname(chart), exist_ok=True)
        print(f"  {flow.chart(chart)}")
    except PlotsNotInstalledError as e:
        print(f"(no chart: {e})")

    banner("6. Digits: generated NumPy training scripts (MLP, CNN) against scikit-learn")
    status = subprocess.call([sys.executable, os.path.join(HERE, "digits", "run.py")])

    banner("7. Sequence: a transformer classifier trained by a generated NumPy script")
    status = subprocess.call([sys.executable, os.path.join(HERE, "sequence", "run.py")]) or status

    banner("8. Scale: one network data-parallel on 4 JAX devices and on 2 MPI ranks")
    return subprocess.call([sys.executable, os.path.join(HERE, "scale", "run.py")]) or status


if __name__ == "__main__":
    sys.exit(main())
