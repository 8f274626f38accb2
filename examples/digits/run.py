"""Digits: generated NumPy training scripts (an MLP and a CNN) against scikit-learn's MLPClassifier.

symbackprop generates ``train_digits.py`` (committed next to this file) for an
MLP 64-32-10 (ReLU, softmax cross-entropy, Adam) with ``sb.training_script``,
and ``train_digits_cnn.py`` for ``sb.models.cnn`` (two 3x3 conv blocks of 32
and 64 channels with ReLU and 2x2 max pooling, a dense layer of 128, float32,
Adam). This example writes scikit-learn's bundled digits data (8x8 images
scaled to [0, 1] by /16; an 80/20 split with
``train_test_split(random_state=0)``) to an ``.npz`` (rows of 64 for the MLP,
images (N, 1, 8, 8) for the CNN), runs each generated script in a subprocess,
trains ``MLPClassifier(hidden_layer_sizes=(32,))`` with the MLP's epochs, batch
size, optimizer and learning rate on the same split, and prints the three test
accuracies and training times side by side.

    python examples/digits/run.py [--out DIR]

Needs scikit-learn (``pip install symbackprop[examples]``).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

import symbackprop as sb

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "train_digits.py"
SIZES = (64, 32, 10)
OPTIMIZER = "adam"
LR = 1e-2
EPOCHS = 50
BATCH_SIZE = 32
SEED = 0
# the CNN (docs/training.md, "The digits example", says how these were chosen)
GOLDEN_CNN = HERE / "train_digits_cnn.py"
CNN = {"input_shape": (1, 8, 8), "channels": (32, 64), "kernel": 3, "pool": 2,
       "hidden": (128,), "classes": 10}
CNN_LR = 2e-3
CNN_EPOCHS = 30
CNN_BATCH_SIZE = 64
CNN_DTYPE = "float32"
# its products are small ((64·16, 288) @ (288, 64) at most): one BLAS thread ran an epoch
# faster than two, and two slowed several times over on a machine shared with other jobs
CNN_BLAS_THREADS = 1


def generate() -> str:
    """The source of the MLP's training script (the bytes of ``train_digits.py``)."""
    g = sb.models.mlp(SIZES, activation="relu", loss="softmax_cross_entropy")
    return sb.training_script(g, of="L", optimizer=OPTIMIZER, lr=LR, epochs=EPOCHS,
                              batch_size=BATCH_SIZE, seed=SEED)


def generate_cnn() -> str:
    """The source of the CNN's training script (the bytes of ``train_digits_cnn.py``)."""
    g = sb.models.cnn(**CNN)
    return sb.training_script(g, of="L", optimizer=OPTIMIZER, lr=CNN_LR, epochs=CNN_EPOCHS,
                              batch_size=CNN_BATCH_SIZE, seed=SEED, dtype=CNN_DTYPE)


def digits_split():
    """X_train, X_test, y_train, y_test: digits scaled to [0, 1], 80/20, random_state=0."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    X = digits.data / 16.0
    return train_test_split(X, digits.target, test_size=0.2, random_state=0)


def run_script(script: Path, data: Path, out: Path, echo: bool = True,
               checkpoint: str = "checkpoint.npz", blas_threads: int | None = None) -> dict:
    """Run the generated script in a subprocess; its test accuracy and times."""
    env = dict(os.environ)
    if blas_threads is not None:
        env["OPENBLAS_NUM_THREADS"] = env["OMP_NUM_THREADS"] = str(blas_threads)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(script), "--data", str(data), "--out",
                           str(out / checkpoint)], cwd=out, capture_output=True,
                          text=True, check=False, env=env)
    wall = time.perf_counter() - start
    if echo:
        sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        raise RuntimeError(f"{script.name} failed ({proc.returncode}): {proc.stderr.strip()}")
    accs = re.findall(r"test_acc ([0-9.]+)", proc.stdout)
    train = re.search(r"done: \d+ epochs, ([0-9.]+)s training", proc.stdout)
    return {"acc": float(accs[-1]), "train_s": float(train.group(1)), "wall_s": wall}


def run_sklearn(X_train, X_test, y_train, y_test) -> dict:
    """MLPClassifier with the same layer sizes, epochs, batch size, Adam and lr."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(hidden_layer_sizes=SIZES[1:-1], activation="relu", solver="adam",
                        learning_rate_init=LR, batch_size=BATCH_SIZE, max_iter=EPOCHS,
                        n_iter_no_change=EPOCHS, random_state=SEED)
    start = time.perf_counter()
    with warnings.catch_warnings():  # it runs all max_iter epochs, as asked
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X_train, y_train)
    fit = time.perf_counter() - start
    return {"acc": clf.score(X_test, y_test), "train_s": fit, "epochs": clf.n_iter_}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="out/digits", help="working directory (out/digits)")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")

    scripts = {}
    for golden, make in ((GOLDEN, generate), (GOLDEN_CNN, generate_cnn)):
        source = make()
        scripts[golden.name] = out / golden.name
        scripts[golden.name].write_text(source, encoding="utf-8")
        if not golden.exists() or golden.read_text(encoding="utf-8") != source:
            print(f"note: {golden.name} differs from the generator's output; regenerate it "
                  "with UPDATE_GOLDEN=1 pytest tests/test_digits.py", file=sys.stderr)
    X_train, X_test, y_train, y_test = digits_split()
    data = out / "digits.npz"
    np.savez(data, X=X_train, y=y_train, X_test=X_test, y_test=y_test)
    images = out / "digits_images.npz"  # the same split as (N, 1, 8, 8) images
    np.savez(images, X=X_train.reshape(-1, 1, 8, 8), y=y_train,
             X_test=X_test.reshape(-1, 1, 8, 8), y_test=y_test)
    print(f"digits: {len(X_train)} training and {len(X_test)} test images; MLP "
          f"{'-'.join(map(str, SIZES))}, {OPTIMIZER} lr {LR}, {EPOCHS} epochs, batch "
          f"{BATCH_SIZE}, seed {SEED}\n")
    ours = run_script(scripts[GOLDEN.name], data, out)
    print(f"\nCNN: conv {CNN['kernel']}x{CNN['kernel']} channels "
          f"{'-'.join(map(str, CNN['channels']))} with {CNN['pool']}x{CNN['pool']} max pooling, "
          f"dense {'-'.join(map(str, CNN['hidden']))}, {OPTIMIZER} lr {CNN_LR}, {CNN_EPOCHS} "
          f"epochs, batch {CNN_BATCH_SIZE}, {CNN_DTYPE}, seed {SEED}, {CNN_BLAS_THREADS} BLAS "
          "thread\n")
    cnn = run_script(scripts[GOLDEN_CNN.name], images, out, checkpoint="checkpoint_cnn.npz",
                     blas_threads=CNN_BLAS_THREADS)
    theirs = run_sklearn(X_train, X_test, y_train, y_test)
    print(f"\n{'':34}{'test accuracy':>14}{'training time':>15}")
    for label, r in (("symbackprop CNN script (generated)", cnn),
                     ("symbackprop script (generated)", ours)):
        print(f"{label:34}{r['acc']:>14.4f}{r['train_s']:>14.2f}s")
    print(f"{'scikit-learn MLPClassifier':34}{theirs['acc']:>14.4f}{theirs['train_s']:>14.2f}s")
    print(f"\n(script training times exclude their per-epoch test evaluation; the whole "
          f"subprocesses took {ours['wall_s']:.2f}s (MLP) and {cnn['wall_s']:.2f}s (CNN) "
          "including Python start-up)")
    return 0 if ours["acc"] >= 0.97 and cnn["acc"] >= 0.985 else 1


if __name__ == "__main__":
    sys.exit(main())
