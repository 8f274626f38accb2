"""Gradients against central differences, entry by entry, on a random subset of entries."""

from __future__ import annotations

import numpy as np
import pytest


def assert_central_differences(fn, arrays: dict, names, grads: dict, count: int, seed: int,
                               eps: float = 1e-6) -> None:
    """Each gradient ``grads[name]`` of the compiled ``fn`` at ``arrays`` agrees, on
    ``count`` random entries of each of ``names``, with (L(x + eps) - L(x - eps)) / 2eps
    of ``fn.forward``'s loss ``L``."""
    rng = np.random.default_rng(seed)
    for name in names:
        x = arrays[name]
        flat = x.reshape(-1)
        for i in rng.choice(flat.size, size=min(flat.size, count), replace=False):
            xp, xm = flat.copy(), flat.copy()
            xp[i] += eps
            xm[i] -= eps
            lp = fn.forward(**{**arrays, name: xp.reshape(x.shape)})["L"]
            lm = fn.forward(**{**arrays, name: xm.reshape(x.shape)})["L"]
            fd = (lp - lm) / (2 * eps)
            assert grads[name].reshape(-1)[i] == pytest.approx(fd, rel=1e-5, abs=1e-8), \
                f"dL/d{name}[{i}]"
