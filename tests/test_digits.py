"""The digits example: its generated scripts are golden files, and they learn (the MLP
>= 97%, the CNN >= 98.5%).

``UPDATE_GOLDEN=1 pytest tests/test_digits.py`` rewrites examples/digits/train_digits.py and
train_digits_cnn.py.
"""

from __future__ import annotations

import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "examples" / "digits" / "run.py"
RUFF = Path(sys.executable).with_name("ruff")


@pytest.fixture(scope="module")
def example() -> dict:
    return runpy.run_path(str(RUN))


GOLDENS = [("GOLDEN", "generate"), ("GOLDEN_CNN", "generate_cnn")]


@pytest.mark.parametrize("golden, generate", GOLDENS)
def test_generated_script_matches_the_golden_file(example, golden, generate):
    golden = example[golden]
    source = example[generate]()
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(source, encoding="utf-8")
    assert golden.read_text(encoding="utf-8") == source, (
        f"{golden.name} is stale: rerun with UPDATE_GOLDEN=1 and review the diff")
    assert example[generate]() == source  # byte-stable


@pytest.mark.parametrize("golden", ["GOLDEN", "GOLDEN_CNN"])
def test_golden_file_is_ruff_clean(example, golden):
    r = subprocess.run([str(RUFF), "check", "--no-cache", str(example[golden])],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout


@pytest.mark.slow
def test_digits_mlp_97_and_cnn_98_5_percent_next_to_sklearn(example, tmp_path, capsys):
    pytest.importorskip("sklearn")
    status = example["main"](["--out", str(tmp_path)])
    out = capsys.readouterr().out
    ours = re.search(r"symbackprop script \(generated\) +([0-9.]+) +([0-9.]+)s", out)
    cnn = re.search(r"symbackprop CNN script \(generated\) +([0-9.]+) +([0-9.]+)s", out)
    theirs = re.search(r"scikit-learn MLPClassifier +([0-9.]+) +([0-9.]+)s", out)
    assert ours and cnn and theirs, out
    assert float(ours.group(1)) >= 0.97, out
    assert float(cnn.group(1)) >= 0.985, out
    assert float(cnn.group(1)) > max(float(ours.group(1)), float(theirs.group(1))), out
    assert status == 0
    assert len(re.findall(r"^epoch +\d+/50 ", out, re.MULTILINE)) == 50
    assert len(re.findall(r"^epoch +\d+/30 ", out, re.MULTILINE)) == 30
    assert (tmp_path / "train_digits.py").read_text() == example["GOLDEN"].read_text()
    assert (tmp_path / "train_digits_cnn.py").read_text() == example["GOLDEN_CNN"].read_text()
