"""The optimizers' functions as a generated training module carries them, one module each.

Every module defines ``init_state(params)``, ``update(params, grads, state, lr=LR, ...)``
and ``_update_flat(flat, g, state, lr, ...)`` (the same rule on train_step's flat
buffers, in place, with no temporaries); :mod:`.sgd_scaled` is SGD's flat rule for
gradients that arrive multiplied by lr. The records that choose among them are
:data:`symbackprop.codegen.optimizers.OPTIMIZERS`. Module constants (``LR``, ...)
stand in for the generated module's, which hold the chosen hyper-parameters.
"""
