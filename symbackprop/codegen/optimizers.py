"""The optimizers a training step can use, one record each.

* ``sgd``: ``w <- w - lr * g``;
* ``momentum`` (PyTorch's convention): ``v <- momentum * v + g; w <- w - lr * v``;
* ``adam`` (Kingma & Ba): ``m <- b1 m + (1 - b1) g; v <- b2 v + (1 - b2) g**2;
  w <- w - lr * m_hat / (sqrt(v_hat) + eps)`` with the bias corrections
  ``m_hat = m / (1 - b1**t)``, ``v_hat = v / (1 - b2**t)``.

A record names its hyper-parameters (``lr`` first) with their defaults and checks, and
the runtime module (:mod:`symbackprop.codegen.runtime.optimizers`) whose functions a
generated module copies: ``init_state``, ``update`` and ``_update_flat`` (the same rule
on train_step's flat buffers).
"""

from __future__ import annotations

import math
import numbers
import types
from dataclasses import dataclass, field

from .runtime import source_of
from .runtime.optimizers import adam, momentum, sgd, sgd_scaled


@dataclass(frozen=True)
class Optimizer:
    """One optimizer.

    Attributes
    ----------
    name, title : str
        ``"momentum"``, ``"SGD with momentum"``.
    hyper : dict
        Hyper-parameter -> default, ``lr`` first; they become the generated module's
        constants (``LR``, ``MOMENTUM``, ...).
    rule : str
        The update rule in one line, for docstrings.
    runtime : module
        The runtime module with ``init_state``, ``update`` and ``_update_flat``.
    checks : dict
        Hyper-parameter -> (test, what is expected).
    scaled : module or None
        A runtime module whose ``_update_flat`` takes gradients already multiplied by
        lr (train_step then passes lr as the seed of backprop); None when the rule is
        not linear in the gradient.
    scratch : int
        Fused update (``fuse_update=True``): the scratch arrays ``_update_part`` needs, each
        the size of the largest part (the scaled rule needs none).
    start : tuple of str
        Fused update: the statements run once a step, after the loss check and before the
        first part is updated (Adam counts the step there), ``{state}`` standing for the
        state's name.

    Examples
    --------
    >>> print(OPTIMIZERS["sgd"].update)
    def update(params, grads, state, lr=LR):
        \"\"\"One SGD step, in place: w <- w - lr * dL/dw for every parameter with a gradient.\"\"\"
        for name, grad in grads.items():
            params[name] -= lr * grad
    <BLANKLINE>
    """

    name: str
    title: str
    hyper: dict
    rule: str
    runtime: types.ModuleType
    checks: dict = field(default_factory=dict)
    scaled: types.ModuleType | None = None
    scratch: int = 1
    start: tuple = ()

    @property
    def init_state(self) -> str:
        """Source of ``init_state(params)``."""
        return source_of(self.runtime, "init_state")

    @property
    def update(self) -> str:
        """Source of ``update(params, grads, state, lr=LR, ...)``."""
        return source_of(self.runtime, "update")

    @property
    def flat_update(self) -> str:
        """Source of ``_update_flat(flat, g, state, lr, ...)``: the rule on the flat
        buffers of train_step, in place with no temporaries."""
        return source_of(self.runtime, "_update_flat")

    @property
    def scaled_update(self) -> str:
        """Source of the flat rule for gradients that arrive multiplied by lr ("" when
        there is none)."""
        return source_of(self.scaled, "_update_flat") if self.scaled else ""

    def part_update(self, scaled: bool = False) -> str:
        """Source of ``_update_part(flat, at, g, state, lr, ...)``: the flat rule on one part
        of the flat buffers, for the fused update (of the scaled rule with ``scaled``)."""
        return source_of(self.scaled if scaled else self.runtime, "_update_part")


_POSITIVE = (lambda v: v > 0, "a number > 0")
_FRACTION = (lambda v: 0 <= v < 1, "a number in [0, 1)")

OPTIMIZERS = {
    "sgd": Optimizer("sgd", "SGD", {"lr": 0.01}, "w <- w - lr * dL/dw", sgd,
                     {"lr": _POSITIVE}, sgd_scaled),
    "momentum": Optimizer("momentum", "SGD with momentum", {"lr": 0.01, "momentum": 0.9},
                          "v <- momentum * v + dL/dw; w <- w - lr * v", momentum,
                          {"lr": _POSITIVE, "momentum": _FRACTION}),
    "adam": Optimizer("adam", "Adam", {"lr": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8},
                      "bias-corrected moment estimates m, v; w <- w - lr * m_hat / "
                      "(sqrt(v_hat) + eps)", adam,
                      {"lr": _POSITIVE, "beta1": _FRACTION, "beta2": _FRACTION,
                       "eps": _POSITIVE}, scratch=2, start=('{state}["t"] += 1',)),
}


def resolve_optimizer(optimizer: str, lr=None, hyper: dict | None = None) -> tuple:
    """The :class:`Optimizer` called ``optimizer`` and its hyper-parameters, defaults
    filled in; raises ``ValueError`` for an unknown name or a bad value.

    Examples
    --------
    >>> opt, values = resolve_optimizer("momentum", lr=0.1)
    >>> opt.title, values
    ('SGD with momentum', {'lr': 0.1, 'momentum': 0.9})
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer {optimizer!r} is not one of {', '.join(OPTIMIZERS)}.")
    opt = OPTIMIZERS[optimizer]
    given = dict(hyper or {})
    if lr is not None:
        given["lr"] = lr
    unknown = sorted(set(given) - set(opt.hyper))
    if unknown:
        raise ValueError(f"optimizer {optimizer!r} has no hyper-parameter {unknown[0]!r}; "
                         f"it takes {', '.join(opt.hyper)}.")
    values = {}
    for k, default in opt.hyper.items():
        v = given.get(k, default)
        test, expected = opt.checks.get(k, (lambda v: True, "a number"))
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) \
                or not test(v):
            raise ValueError(f"{optimizer} {k}={v!r}; expected {expected}.")
        values[k] = float(v)
    return opt, values


def hyper_text(hyper: dict) -> str:
    """The hyper-parameters for a docstring.

    Examples
    --------
    >>> hyper_text({"lr": 0.01, "momentum": 0.9})
    'lr 0.01, momentum 0.9'
    """
    return ", ".join(f"{k} {v!r}" for k, v in hyper.items())


def constant_lines(hyper: dict) -> list[str]:
    """The hyper-parameters as module constants.

    Examples
    --------
    >>> constant_lines({"lr": 0.01, "momentum": 0.9})
    ['LR = 0.01', 'MOMENTUM = 0.9']
    """
    return [f"{k.upper()} = {v!r}" for k, v in hyper.items()]


__all__ = ["OPTIMIZERS", "Optimizer", "constant_lines", "hyper_text", "resolve_optimizer"]
