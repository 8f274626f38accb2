"""The draws of ``init_params``: He normal and Xavier/Glorot uniform weights (and the plain
uniform U(-1/sqrt(fan_in), 1/sqrt(fan_in)) that ``sb.gradient_flow(init="uniform")`` asks for).

Generated training modules copy the ones their parameters need
(:func:`~symbackprop.codegen.init.init_source`); ``DTYPE`` stands in for the generated
module's.
"""

import numpy as np

DTYPE = np.float64


def he_normal(rng, shape, fan_in, gain2=2.0):
    """He (Kaiming) normal for rectifiers: N(0, gain2 / fan_in); gain2 = 2 for relu."""
    return rng.normal(0.0, np.sqrt(gain2 / fan_in), size=shape).astype(DTYPE)


def xavier_uniform(rng, shape, fan_in, fan_out):
    """Xavier/Glorot uniform: U(-a, a) with a = sqrt(6 / (fan_in + fan_out))."""
    a = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-a, a, size=shape).astype(DTYPE)


def uniform_fan_in(rng, shape, fan_in):
    """U(-a, a) with a = 1 / sqrt(fan_in): PyTorch's default for nn.Linear weights."""
    a = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-a, a, size=shape).astype(DTYPE)
