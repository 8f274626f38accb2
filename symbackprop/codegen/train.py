"""Training code as NumPy source: a train step and its optimizer.

:func:`train_step` emits a module with the model's ``forward`` and
``value_and_grad`` (from :func:`~symbackprop.codegen.emit.emit_model`), an
``init_params`` that initialises the parameters from a seed
(:mod:`~symbackprop.codegen.init`), the optimizer as two separate functions
(``init_state(params)`` and ``update(params, grads, state)``,
:mod:`~symbackprop.codegen.optimizers`), and ``train_step(params, state, **batch)``,
which runs forward, backward and the update in one call. Backprop computes the
gradients, the optimizer uses them: they stay separate functions in the source.
The blocks and the layout are :mod:`~symbackprop.codegen.module`'s.

:func:`~symbackprop.codegen.script.training_script` builds a complete training
program around the same module; :func:`~symbackprop.codegen.compiled.compile_graph`
(``sb.compile``) loads it.

Parameters are updated in place (the arrays of a dict), so a step copies no
parameter.
"""

from __future__ import annotations

from .. import __version__ as _version
from ..graph import Graph
from . import backends, functional
from .emit import safe_text
from .mixed import check_growth_interval, functional_precision
from .mixed import constant_lines as mixed_constants
from .module import Model, assemble, build_model, check_fusable_backend, step_blocks, step_doc
from .optimizers import constant_lines


def train_step(g: Graph, of: str | None = None, optimizer: str = "sgd", lr: float | None = None,
               wrt=None, dtype: str = "float64", optimize=True, checkpoint="none",
               precision: str | None = None, growth_interval: int = 2000, backend: str = "numpy",
               fuse_update: bool = False, **hyper) -> str:
    """NumPy source of a training step: gradients, optimizer and update, as separate functions.

    Parameters
    ----------
    g : Graph
        The network; its loss is a mean over the minibatch.
    of : str, optional
        The scalar loss (default: the last scalar output).
    optimizer : {"sgd", "momentum", "adam"}
        ``sgd``: ``w <- w - lr * g``. ``momentum`` (PyTorch's convention):
        ``v <- momentum * v + g; w <- w - lr * v``. ``adam``: bias-corrected
        first and second moments (``beta1``, ``beta2``, ``eps``).
    lr : float, optional
        Learning rate (default 0.01 for sgd and momentum, 0.001 for adam).
    wrt : list of str, optional
        Parameters to train (default: all); the others stay fixed.
    dtype : {"float64", "float32"}
    optimize : bool, str or list of str
        Optimization passes, as for :func:`~symbackprop.codegen.emit.numpy_source`.
    checkpoint : "none", "sqrt" or list of str
        Gradient checkpointing, as for :func:`~symbackprop.codegen.gradient_module.numpy_source`:
        the step keeps less of its forward pass and computes the rest again; the same
        parameters come out, bit for bit.
    precision : {None, "float64", "float32", "mixed"}
        None: ``dtype``. ``"mixed"``: forward and backward in float16, float32 master
        parameters and optimizer state, dynamic loss scaling (the scale, 2**16 at first,
        halves on inf/nan in the scaled gradients, whose step is skipped, and doubles
        after ``growth_interval`` good steps); the state then holds ``scale``,
        ``good_steps`` and ``skipped``, and the module has ``underflow(params, state,
        <inputs>)`` (docs/training.md, "Mixed precision"). ``"bfloat16"`` is refused:
        NumPy has no bfloat16. With ``backend="jax"`` both are written functionally
        (:mod:`~symbackprop.codegen.jax_mixed`): ``"mixed"`` as above, the scaler's state
        in and out of the jitted step; ``"bfloat16"`` computes in bfloat16 for float32
        masters with no loss scaling (bfloat16 has float32's exponent range).
    growth_interval : int
        Mixed precision: good steps in a row before the loss scale doubles (2000); another
        value without ``precision="mixed"`` is a ``ValueError`` (no loss scaler to set).
    backend : {"numpy", "jax", "array_api", "torch", "cupy"}
        The array library (:mod:`~symbackprop.codegen.backends`). ``"cupy"`` writes this
        module with CuPy for NumPy (the same planned, in-place step, on the GPU). ``"torch"`` writes an
        in-place module as NumPy's (:mod:`~symbackprop.codegen.torch_train`): its
        functions run under ``torch.inference_mode()`` on the device of the tensors
        passed, ``init_params(seed, device=None)`` draws with a ``torch.Generator``. ``"jax"`` and
        ``"array_api"`` write a functional module (:mod:`~symbackprop.codegen.functional`):
        ``update`` and ``train_step`` return new parameters and state, ``train_step``
        returns ``(loss, params, state)``. JAX's runs under ``jax.jit`` with the buffers of
        ``params`` and ``state`` donated, and ``init_params(seed)`` draws with
        ``jax.random``; the array API one's ``init_params(xp, seed)`` makes arrays of the
        namespace ``xp`` from Python's ``random``.
    fuse_update : bool
        The fused update (as PyTorch's optimizer in backward): each parameter's update is
        applied in the backward sweep as soon as its gradient is final, so no gradient is
        kept to the end of the step (with ``checkpoint="sqrt"`` the step holds about √n
        activations and one layer's gradients). Parameters and state come out bit for bit
        as without it. A nan/inf loss changes nothing (``FloatingPointError``); a gradient
        with nan/inf leaves its parameters as they were but not the others, updated in the
        same sweep: ``train_step`` raises ``FloatingPointError`` after that partial step,
        with ``.skipped`` and ``.updated`` (docs/training.md, "The fused update"). Needs
        the optimizations on; refused with ``precision="mixed"`` and other backends.
    **hyper
        ``momentum=0.9``; ``beta1=0.9, beta2=0.999, eps=1e-8``.

    Returns
    -------
    str
        A module importing only NumPy, with ``forward``, ``value_and_grad``,
        ``init_params(rng=0)``, ``init_state(params)``,
        ``update(params, grads, state, lr=LR, ...)``, ``check_finite(loss, grads)``
        and ``train_step(params, state, <inputs>, lr=LR)``. ``params`` is a dict
        of arrays keyed by parameter name, updated in place; ``train_step``
        returns the loss and raises ``FloatingPointError``, changing nothing, when
        the loss or a gradient is nan or inf. Make it live with
        ``sb.compile(g, optimizer=..., lr=...)``.

    Raises
    ------
    ValueError
        For an unknown optimizer or hyper-parameter, or a bad value.
    CodegenError
        When the graph has no parameters or ``wrt`` names a non-parameter.

    Examples
    --------
    >>> src = sb.train_step(sb.parse("L = (w*x - y)**2", params=["w"]), optimizer="sgd", lr=0.1)
    >>> print(src[src.index("def update"):src.index("def check_finite")].strip())
    def update(params, grads, state, lr=LR):
        \"\"\"One SGD step, in place: w <- w - lr * dL/dw for every parameter with a gradient.\"\"\"
        for name, grad in grads.items():
            params[name] -= lr * grad

    See Also
    --------
    symbackprop.training_script : the same code inside a complete training program.
    symbackprop.compile : ``optimizer=`` loads it as a :class:`CompiledTrainStep`.
    """
    b = backends.get(backend)
    if fuse_update:
        check_fusable_backend(b)
    check_growth_interval(precision, growth_interval)
    trainer = b.trainer()
    if trainer is not None:  # a backend's own in-place module (torch)
        precision, dtype = functional_precision(precision, dtype, b)
        return trainer.step_source(g, of, wrt, optimizer, lr, hyper, dtype, optimize,
                                   checkpoint, precision, growth_interval)
    if b.functional:
        precision, dtype = functional_precision(precision, dtype, b)
        return functional.step_source(g, of, wrt, optimizer, lr, hyper, dtype, optimize,
                                      backend, checkpoint, precision, growth_interval)
    return step_source(build_model(g, of, wrt, optimizer, lr, hyper, dtype, optimize,
                                   checkpoint=checkpoint, precision=precision,
                                   growth_interval=growth_interval, fuse_update=fuse_update,
                                   backend=backend))


def step_source(m: Model) -> str:
    """The source of :func:`train_step` for a model built by
    :func:`~symbackprop.codegen.module.build_model`.

    Examples
    --------
    >>> from symbackprop.codegen.module import build_model
    >>> g = sb.models.mlp([4, 3, 2])
    >>> step_source(build_model(g, optimizer="sgd")) == sb.train_step(g, optimizer="sgd")
    True
    """
    g = m.g
    doc = step_doc(m, f"Training step for the {safe_text(g.nx.graph.get('name', 'network'))} "
                      f"network with {m.opt.title}.")
    doc += (f"Generated by symbackprop {_version} (sb.train_step). Gradients (value_and_grad) "
            "and the optimizer\n(init_state, update) are separate functions; train_step runs "
            f"both. Needs only {m.em.backend.title}.\nDo not edit: regenerate instead.")
    constants = constant_lines(m.hyper) + (mixed_constants(m) if m.precision == "mixed" else [])
    return assemble(doc, m, m.functions, step_blocks(m), constants=constants)


__all__ = ["step_source", "train_step"]
