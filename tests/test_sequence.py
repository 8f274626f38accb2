"""The sequence example: its generated script is a golden file, and the transformer learns
whether a sequence of digits is sorted (>= 95% test accuracy).

``UPDATE_GOLDEN=1 pytest tests/test_sequence.py`` rewrites examples/sequence/train_sequence.py.
"""

from __future__ import annotations

import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "examples" / "sequence" / "run.py"
RUFF = Path(sys.executable).with_name("ruff")


@pytest.fixture(scope="module")
def example() -> dict:
    return runpy.run_path(str(RUN))


def test_generated_script_matches_the_golden_file(example):
    golden = example["GOLDEN"]
    source = example["generate"]()
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(source, encoding="utf-8")
    assert golden.read_text(encoding="utf-8") == source, (
        f"{golden.name} is stale: rerun with UPDATE_GOLDEN=1 and review the diff")


def test_golden_file_is_ruff_clean(example):
    r = subprocess.run([str(RUFF), "check", "--no-cache", str(example["GOLDEN"])],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout


def test_the_task_labels_say_sorted_and_are_balanced(example):
    X_train, X_test, y_train, y_test = example["sequence_split"]()
    for X, y in ((X_train, y_train), (X_test, y_test)):
        assert X.dtype.kind == "i" and X.min() >= 0 and X.max() < example["VOCAB"]
        assert np.array_equal(y, [list(r) == sorted(r) for r in X])  # an independent rule
        assert 0.45 <= y.mean() <= 0.55


@pytest.mark.slow
def test_sequence_reaches_95_percent(example, tmp_path, capsys):
    status = example["main"](["--out", str(tmp_path)])
    out = capsys.readouterr().out
    acc = re.search(r"test accuracy ([0-9.]+) after ([0-9.]+)s training", out)
    assert acc, out
    assert float(acc.group(1)) >= 0.95, out
    assert status == 0
    assert len(re.findall(r"^epoch +\d+/30 ", out, re.MULTILINE)) == 30
    assert (tmp_path / "train_sequence.py").read_text() == example["GOLDEN"].read_text()
