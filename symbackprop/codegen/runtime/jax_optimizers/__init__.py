"""The optimizer states of generated JAX training modules (issue 15), where they differ
from :mod:`symbackprop.codegen.runtime.functional`'s: one module per optimizer whose
functional ``init_state`` holds a Python number, with an ``init_state`` holding an array
of a fixed dtype instead (``update`` stays the functional one).

Why: ``train_step`` is jitted, and ``jax.jit`` keys its cache on the kind and type of
every argument. A Python ``0`` in the first state enters as a weakly typed scalar and
comes back from the step as an array, so the second step has another signature: a
second cache entry and a slow second call (on a change of weak type, a second trace and
compilation). An array of the dtype the step returns keeps one signature from the first
step on.
"""
