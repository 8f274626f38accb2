"""The draws of ``init_params`` in generated torch training modules (issue 15): He normal
and Xavier/Glorot uniform weights, as :mod:`symbackprop.codegen.runtime.init` draws them
for NumPy, from a seeded ``torch.Generator`` on the CPU (PyTorch's generator: other
numbers than NumPy's for the same seed; the same numbers on every device, as the
parameters are moved there after they are drawn). ``DTYPE`` stands in for the generated
module's; PyTorch is imported only when it is installed (the source is copied without it).
"""

try:
    import torch
except ImportError:  # generating torch source needs no PyTorch; running these draws does
    torch = None

DTYPE = None  # the generated module's: torch.float64 or torch.float32


def he_normal(gen, shape, fan_in, gain2=2.0):
    """He (Kaiming) normal for rectifiers: N(0, gain2 / fan_in); gain2 = 2 for relu."""
    return torch.randn(shape, generator=gen, dtype=DTYPE) * (gain2 / fan_in) ** 0.5


def xavier_uniform(gen, shape, fan_in, fan_out):
    """Xavier/Glorot uniform: U(-a, a) with a = sqrt(6 / (fan_in + fan_out))."""
    a = (6.0 / (fan_in + fan_out)) ** 0.5
    return torch.rand(shape, generator=gen, dtype=DTYPE) * (2 * a) - a


def uniform_fan_in(gen, shape, fan_in):
    """U(-a, a) with a = 1 / sqrt(fan_in): PyTorch's default for nn.Linear weights."""
    a = 1.0 / fan_in**0.5
    return torch.rand(shape, generator=gen, dtype=DTYPE) * (2 * a) - a
