"""Adam's initial state in a generated JAX training module: the functional runtime's
(:mod:`symbackprop.codegen.runtime.functional.adam`), with the step count ``t`` an int32
array (``update`` adds 1 to it and returns int32 again) instead of a Python ``0`` (see the
package's docstring)."""

try:
    import jax.numpy as jnp
except ImportError:  # generating JAX source needs no JAX; running this function does
    jnp = None


def init_state(params):
    """Adam state: the step count t and, per parameter, the moment estimates m and v, zero
    at the start (w * 0: zeros of w's shape, dtype and placement). t is an int32 array, as
    every step returns it: a Python 0 would give the jitted train_step a second signature
    after the first step."""
    return {"t": jnp.zeros((), jnp.int32), "m": {name: w * 0 for name, w in params.items()},
            "v": {name: w * 0 for name, w in params.items()}}
