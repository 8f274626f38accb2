"""Sequence: a transformer classifier trained by a generated NumPy script.

The task, made here: is a sequence of 8 digits (tokens 0..9) sorted (non-decreasing)?
Half the sequences are sorted random draws; of the others, half are random draws
(reversed where they happen to be sorted) and half are sorted draws with one adjacent
pair of different digits swapped, so one look at a single position cannot tell; only
comparing neighbours can. symbackprop generates ``train_sequence.py`` (committed next
to this file) for ``sb.models.transformer_classifier`` (embedding, learned positions,
2 pre-norm blocks of 4 heads, mean pool, linear head; Adam, float32) with
``sb.training_script``; this example writes 4000 training and 1000 test sequences
(seeded) to an ``.npz`` of integer tokens, runs the script in a subprocess and prints its
test accuracy and training time.

    python examples/sequence/run.py [--out DIR]

Needs only NumPy.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import symbackprop as sb

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "train_sequence.py"
VOCAB, SEQ_LEN, D_MODEL, HEADS, D_FF, LAYERS = 10, 8, 32, 4, 64, 2
OPTIMIZER = "adam"
LR = 3e-3
EPOCHS = 30
BATCH_SIZE = 64
SEED = 0
N_TRAIN, N_TEST = 4000, 1000


def generate() -> str:
    """The source of the training script (the bytes of ``train_sequence.py``)."""
    g = sb.models.transformer_classifier(VOCAB, SEQ_LEN, D_MODEL, HEADS, D_FF, LAYERS, 2)
    return sb.training_script(g, of="L", optimizer=OPTIMIZER, lr=LR, epochs=EPOCHS,
                              batch_size=BATCH_SIZE, seed=SEED, dtype="float32")


def make_sequences(n: int, rng: np.random.Generator):
    """``n`` sequences (n, SEQ_LEN) of tokens 0..VOCAB-1 and labels: 1 where sorted."""
    X = np.sort(rng.integers(0, VOCAB, (n, SEQ_LEN)), axis=1)  # sorted: the first half
    neg = X[n // 2:]  # a view: the unsorted half is edited in place
    k = len(neg) // 2
    drawn = rng.integers(0, VOCAB, (k, SEQ_LEN))
    already = (np.diff(drawn, axis=1) >= 0).all(axis=1)
    drawn[already] = drawn[already][:, ::-1]  # sorted by chance: reversed (unless constant)
    neg[:k] = drawn
    for row in neg[k:]:  # near misses: one adjacent pair of different digits swapped
        steps = np.flatnonzero(np.diff(row) != 0)
        if len(steps) == 0:  # a constant row: any permutation of distinct digits
            row[:] = rng.permutation(VOCAB)[:SEQ_LEN]
            continue
        j = rng.choice(steps)
        row[j], row[j + 1] = row[j + 1], row[j]
    y = (np.diff(X, axis=1) >= 0).all(axis=1).astype(np.int64)  # the label, from the data
    order = rng.permutation(n)
    return X[order], y[order]


def sequence_split():
    """X_train, X_test, y_train, y_test from one seeded generator."""
    rng = np.random.default_rng(SEED)
    X_train, y_train = make_sequences(N_TRAIN, rng)
    X_test, y_test = make_sequences(N_TEST, rng)
    return X_train, X_test, y_train, y_test


def run_script(script: Path, data: Path, out: Path, echo: bool = True) -> dict:
    """Run the generated script in a subprocess; its test accuracy and times."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(script), "--data", str(data), "--out",
                           str(out / "checkpoint.npz")], cwd=out, capture_output=True,
                          text=True, check=False)
    wall = time.perf_counter() - start
    if echo:
        sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        raise RuntimeError(f"{script.name} failed ({proc.returncode}): {proc.stderr.strip()}")
    accs = re.findall(r"test_acc ([0-9.]+)", proc.stdout)
    train = re.search(r"done: \d+ epochs, ([0-9.]+)s training", proc.stdout)
    return {"acc": float(accs[-1]), "train_s": float(train.group(1)), "wall_s": wall}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="out/sequence", help="working directory (out/sequence)")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")

    source = generate()
    script = out / "train_sequence.py"
    script.write_text(source, encoding="utf-8")
    if not GOLDEN.exists() or GOLDEN.read_text(encoding="utf-8") != source:
        print(f"note: {GOLDEN.name} differs from the generator's output; regenerate it with "
              "UPDATE_GOLDEN=1 pytest tests/test_sequence.py", file=sys.stderr)
    X_train, X_test, y_train, y_test = sequence_split()
    data = out / "sequence.npz"
    np.savez(data, X=X_train, y=y_train, X_test=X_test, y_test=y_test)
    print(f"sorted or not: {len(X_train)} training and {len(X_test)} test sequences of "
          f"{SEQ_LEN} digits ({y_train.mean():.0%} sorted); transformer_classifier d_model "
          f"{D_MODEL}, {HEADS} heads, d_ff {D_FF}, {LAYERS} blocks; {OPTIMIZER} lr {LR}, "
          f"{EPOCHS} epochs, batch {BATCH_SIZE}, seed {SEED}, float32\n")
    ours = run_script(script, data, out)
    print(f"\ntest accuracy {ours['acc']:.4f} after {ours['train_s']:.2f}s training "
          f"(evaluation excluded; the subprocess took {ours['wall_s']:.2f}s with start-up)")
    return 0 if ours["acc"] >= 0.95 else 1


if __name__ == "__main__":
    sys.exit(main())
