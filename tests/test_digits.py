"""The digits example: its generated script is a golden file, and it learns (>= 97%).

``UPDATE_GOLDEN=1 pytest tests/test_digits.py`` rewrites examples/digits/train_digits.py.
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


def test_generated_script_matches_the_golden_file(example):
    golden = example["GOLDEN"]
    source = example["generate"]()
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(source, encoding="utf-8")
    assert golden.read_text(encoding="utf-8") == source, (
        f"{golden.name} is stale: rerun with UPDATE_GOLDEN=1 and review the diff")
    assert example["generate"]() == source  # byte-stable


def test_golden_file_is_ruff_clean(example):
    r = subprocess.run([str(RUFF), "check", "--no-cache", str(example["GOLDEN"])],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout


def test_digits_reaches_97_percent_next_to_sklearn(example, tmp_path, capsys):
    pytest.importorskip("sklearn")
    status = example["main"](["--out", str(tmp_path)])
    out = capsys.readouterr().out
    ours = re.search(r"symbackprop script \(generated\) +([0-9.]+) +([0-9.]+)s", out)
    theirs = re.search(r"scikit-learn MLPClassifier +([0-9.]+) +([0-9.]+)s", out)
    assert ours and theirs, out
    assert float(ours.group(1)) >= 0.97, out
    assert status == 0
    assert len(re.findall(r"^epoch +\d+/50 ", out, re.MULTILINE)) == 50
    assert (tmp_path / "train_digits.py").read_text() == example["GOLDEN"].read_text()
