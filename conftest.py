import numpy as np
import pytest

import symbackprop as sb


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace):
    doctest_namespace["sb"] = sb
    doctest_namespace["np"] = np
