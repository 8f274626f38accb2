"""The optimizers of functional training modules (the ``jax`` backend, issue 15), one
module each: ``init_state(params)`` and ``update(params, grads, state, lr=LR, ...)``,
which returns new parameters and a new state and changes nothing. They call no array
library (arithmetic operators only), so any array type runs them: under ``jax.jit`` the
training step donates the old buffers. The in-place counterparts are
:mod:`symbackprop.codegen.runtime.optimizers`; module constants (``LR``, ...) stand in
for the generated module's.
"""
