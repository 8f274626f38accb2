import numpy as np
import pytest

import symbackprop as sb


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace):
    doctest_namespace["sb"] = sb
    doctest_namespace["np"] = np


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite the golden files in tests/golden/ instead of comparing "
                          "(also: UPDATE_GOLDEN=1)")


@pytest.fixture
def update_golden(request) -> bool:
    """True when golden files should be rewritten (--update-golden or UPDATE_GOLDEN=1)."""
    import os

    return bool(request.config.getoption("--update-golden")
                or os.environ.get("UPDATE_GOLDEN", "") not in ("", "0"))
