"""What the mixed-precision tests of batch norm and layer norm (test_mixed_bn.py,
test_mixed_ln.py) share: the arrays as a backend's step takes them, and the gradients of a
mixed module unscaled to float64."""

from __future__ import annotations

import numpy as np


def step_arrays(backend: str, arrays: dict) -> dict:
    """The arrays as the backend's step takes them (torch: tensors; NumPy and JAX: NumPy)."""
    if backend != "torch":
        return dict(arrays)
    import torch

    return {k: torch.from_numpy(np.asarray(v).copy()) for k, v in arrays.items()}


def host(v) -> np.ndarray:
    """A NumPy, JAX or torch array as a NumPy array."""
    return np.asarray(v.detach() if hasattr(v, "detach") else v)


def unscaled_grads(M, backend: str, step: str, p: dict, data: dict, scale: float) -> dict:
    """The gradients of the mixed module M at the step's arrays p and data (X, y), in
    float64 and unscaled: from NumPy's planned step (``step="planned"``: scaled_grads,
    times scale) or from value_and_grad (NumPy's unscaled; JAX's and torch's times scale)."""
    if step == "planned":
        _, _, grads = M.scaled_grads(p, M.init_state(p), data["X"], data["y"], scale)
    elif backend == "numpy":
        grads = M.value_and_grad(**data, **p)[1]
        scale = 1.0
    else:  # (loss, grads), and JAX's batch norm its running statistics after them
        grads = M.value_and_grad(**data, **p, scale=scale)[1]
    return {k: host(v).astype(np.float64) / scale for k, v in grads.items()}
