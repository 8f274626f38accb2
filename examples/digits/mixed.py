"""Digits in mixed precision: the MLP of run.py trained by a generated script with
``precision="mixed"`` (float16 forward and backward, float32 master parameters and Adam
state, dynamic loss scaling).

It writes the same split as run.py (scikit-learn's digits scaled to [0, 1], 80/20,
``random_state=0``), generates ``train_digits_mixed.py`` with
``sb.training_script(..., precision="mixed")`` (the command line:
``symbackprop train-script mlp:64-32-10 --loss softmax_cross_entropy --optimizer adam
--lr 0.01 --epochs 50 --precision mixed``), runs it, and prints the script's log: the
test accuracy and, after every epoch, how many gradient entries float16 flushes to zero
without loss scaling and with it. NumPy's float16 is emulated on CPUs, so this is
slower than float32: it shows the mechanism, not the speed.

``--backend jax`` writes the JAX script instead (``train-script ... --backend jax``: the
same plan inside one jitted step, docs/backends.md), ``--backend torch`` the PyTorch one
(in place, on ``cuda`` when there is one), and ``--precision bfloat16`` (JAX and torch)
trains in bfloat16 with float32 masters and no loss scaling.

    python examples/digits/mixed.py [--out DIR] [--backend jax|torch] [--precision bfloat16]

Needs scikit-learn (``pip install symbackprop[examples]``).
"""

from __future__ import annotations

import argparse
import re
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np

import symbackprop as sb

HERE = Path(__file__).resolve().parent
RUN = runpy.run_path(str(HERE / "run.py"))  # its split and settings


def generate(backend: str = "numpy", precision: str = "mixed") -> str:
    """The mixed-precision training script of the digits MLP."""
    g = sb.models.mlp(RUN["SIZES"], activation="relu", loss="softmax_cross_entropy")
    return sb.training_script(g, of="L", optimizer=RUN["OPTIMIZER"], lr=RUN["LR"],
                              epochs=RUN["EPOCHS"], batch_size=RUN["BATCH_SIZE"],
                              seed=RUN["SEED"], precision=precision, backend=backend)


class _Parser(argparse.ArgumentParser):
    """Usage errors on one line, exit status 2, as symbackprop's command line."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv=None) -> dict:
    """Train; returns the last test accuracy, the underflow counts of the last epoch
    (flushed: without loss scaling, flushed_scaled: with it) and the last scale. A bad
    option (bfloat16 on NumPy, a backend that is not installed), a --out that cannot be
    made or a missing scikit-learn is one line and exit status 2."""
    p = _Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="out/digits", help="working directory (out/digits)")
    p.add_argument("--backend", default="numpy", choices=["numpy", "jax", "torch"],
                   help="the script's array library (numpy)")
    p.add_argument("--precision", default="mixed", choices=["mixed", "bfloat16"],
                   help="mixed: float16 with loss scaling; bfloat16: --backend jax or torch")
    args = p.parse_args(argv)
    try:  # the options first: a refused one costs no data
        source = generate(args.backend, args.precision)
        sb.codegen.backends.get(args.backend).require()  # the script imports it
    except (ValueError, sb.SymbackpropError) as e:
        p.error(" ".join(str(e).split()))
    try:
        X_train, X_test, y_train, y_test = RUN["digits_split"]()
    except ImportError:
        p.error("the digits come from scikit-learn, which is not installed: pip install "
                "'symbackprop[examples]'")
    out = Path(args.out).resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        p.error(f"--out {args.out}: {e.strerror or e}")
    data = out / "digits.npz"
    np.savez(data, X=X_train, y=y_train, X_test=X_test, y_test=y_test)
    name = "mixed" if args.backend == "numpy" else f"{args.precision}_{args.backend}"
    script = out / f"train_digits_{name}.py"
    script.write_text(source, encoding="utf-8")
    saved = out / f"checkpoint_{name}.{'pt' if args.backend == 'torch' else 'npz'}"  # torch.save
    proc = subprocess.run([sys.executable, str(script), "--data", str(data), "--out",
                           str(saved)], cwd=out, capture_output=True,
                          text=True, check=False, timeout=600)
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        raise RuntimeError(f"{script.name} failed ({proc.returncode}): {proc.stderr.strip()}")
    acc = float(re.findall(r"test_acc ([0-9.]+)", proc.stdout)[-1])
    if args.precision == "bfloat16":  # no loss scale: as many flush with it as without
        flushed, nonzero = re.findall(r"bfloat16 gradients: (\d+) of (\d+) nonzero entries",
                                      proc.stdout)[-1]
        scaled, scale = flushed, "1"
    else:
        flushed, nonzero, scaled, scale = re.findall(
            r"float16 gradients: (\d+) of (\d+) nonzero entries \S+ flush to zero without "
            r"loss scaling, (\d+) \S+ with scale (\S+);", proc.stdout)[-1]
    result = {"test_acc": acc, "flushed": int(flushed), "nonzero": int(nonzero),
              "flushed_scaled": int(scaled), "scale": float(scale)}
    half = "bfloat16" if args.precision == "bfloat16" else "float16"
    print(f"\nmixed precision ({args.backend}): test accuracy {acc:.4f}; last epoch: "
          f"{flushed} of {nonzero} gradient entries flush to zero in {half} without loss "
          f"scaling, {scaled} with scale {scale}")
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["test_acc"] >= 0.97 else 1)
