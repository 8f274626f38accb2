"""Gradients against central differences, entry by entry, on a random subset of entries;
and the mean softmax cross-entropy's gradient by hand, for references written in float64."""

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


def softmax_cross_entropy_grad(logits, y):
    """dL/dlogits of the mean over the rows of -log softmax(logits)[i, y[i]], by hand:
    (softmax(logits) - onehot(y)) / N, the softmax shifted by each row's maximum."""
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    dlogits = e / e.sum(axis=1, keepdims=True)
    dlogits[np.arange(len(y)), y] -= 1
    return dlogits / len(y)
