import os

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
    return bool(request.config.getoption("--update-golden")
                or os.environ.get("UPDATE_GOLDEN", "") not in ("", "0"))


# Property tests explore new random graphs on developers' runs; under CI they replay a
# fixed sequence, so a landing is never decided by a chance draw. (A new failure found
# locally becomes a regression test, as in tests/test_plan.py.)
try:
    from hypothesis import settings as _hyp_settings

    _hyp_settings.register_profile("ci", derandomize=True)
    if os.environ.get("CI"):
        _hyp_settings.load_profile("ci")
except ImportError:  # hypothesis is a dev extra
    pass
