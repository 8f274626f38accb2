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

    python examples/digits/mixed.py [--out DIR]

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


def generate() -> str:
    """The mixed-precision training script of the digits MLP."""
    g = sb.models.mlp(RUN["SIZES"], activation="relu", loss="softmax_cross_entropy")
    return sb.training_script(g, of="L", optimizer=RUN["OPTIMIZER"], lr=RUN["LR"],
                              epochs=RUN["EPOCHS"], batch_size=RUN["BATCH_SIZE"],
                              seed=RUN["SEED"], precision="mixed")


def main(argv=None) -> dict:
    """Train; returns the last test accuracy, the underflow counts of the last epoch
    (flushed: without loss scaling, flushed_scaled: with it) and the last scale."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="out/digits", help="working directory (out/digits)")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    X_train, X_test, y_train, y_test = RUN["digits_split"]()
    data = out / "digits.npz"
    np.savez(data, X=X_train, y=y_train, X_test=X_test, y_test=y_test)
    script = out / "train_digits_mixed.py"
    script.write_text(generate(), encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script), "--data", str(data), "--out",
                           str(out / "checkpoint_mixed.npz")], cwd=out, capture_output=True,
                          text=True, check=False, timeout=600)
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        raise RuntimeError(f"{script.name} failed ({proc.returncode}): {proc.stderr.strip()}")
    acc = float(re.findall(r"test_acc ([0-9.]+)", proc.stdout)[-1])
    flushed, nonzero, scaled, scale = re.findall(
        r"float16 gradients: (\d+) of (\d+) nonzero entries \S+ flush to zero without loss "
        r"scaling, (\d+) \S+ with scale (\S+);", proc.stdout)[-1]
    result = {"test_acc": acc, "flushed": int(flushed), "nonzero": int(nonzero),
              "flushed_scaled": int(scaled), "scale": float(scale)}
    print(f"\nmixed precision: test accuracy {acc:.4f}; last epoch: {flushed} of {nonzero} "
          f"gradient entries flush to zero in float16 without loss scaling, {scaled} with "
          f"scale {scale}")
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["test_acc"] >= 0.97 else 1)
