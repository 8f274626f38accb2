"""The optimizers of generated torch training modules (issue 15), one module each:
``init_state(params)`` and ``update(params, grads, state, lr=LR, ...)``, which changes the
parameters and the state in place as the NumPy rules of
:mod:`symbackprop.codegen.runtime.optimizers` do, the same arithmetic in the same order,
each step one ``torch._foreach_*`` call over all the parameters (PyTorch's own optimizers'
multi-tensor path). Module constants (``LR``, ...) stand in for the generated module's.
"""
