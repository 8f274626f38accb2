"""The draws of ``init_params`` in generated JAX training modules (issue 15): He normal and
Xavier/Glorot uniform weights, as :mod:`symbackprop.codegen.runtime.init` draws them for
NumPy, from ``jax.random`` keys (JAX's generator: other numbers than NumPy's for the same
seed). ``DTYPE`` stands in for the generated module's; JAX is imported only when it is
installed (the source is copied without it).
"""

try:
    import jax
except ImportError:  # generating JAX source needs no JAX; running these draws does
    jax = None

DTYPE = "float64"  # the generated module's is jnp.float64 or jnp.float32


def he_normal(key, shape, fan_in, gain2=2.0):
    """He (Kaiming) normal for rectifiers: N(0, gain2 / fan_in); gain2 = 2 for relu."""
    return jax.random.normal(key, shape, DTYPE) * (gain2 / fan_in) ** 0.5


def xavier_uniform(key, shape, fan_in, fan_out):
    """Xavier/Glorot uniform: U(-a, a) with a = sqrt(6 / (fan_in + fan_out))."""
    a = (6.0 / (fan_in + fan_out)) ** 0.5
    return jax.random.uniform(key, shape, DTYPE, -a, a)


def uniform_fan_in(key, shape, fan_in):
    """U(-a, a) with a = 1 / sqrt(fan_in): PyTorch's default for nn.Linear weights."""
    a = 1.0 / fan_in**0.5
    return jax.random.uniform(key, shape, DTYPE, -a, a)
