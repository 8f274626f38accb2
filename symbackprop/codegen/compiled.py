"""Generated code as live objects: :class:`Compiled`, :class:`CompiledTrainStep` and
:func:`compile_graph` (``sb.compile``).

The source comes from :mod:`~symbackprop.codegen.emit` (``forward``,
``value_and_grad``) or :mod:`~symbackprop.codegen.train` (a training step); it is
executed by :func:`~symbackprop.codegen.loader.load_source`.
"""

from __future__ import annotations

import inspect

import numpy as np

from ..errors import GraphError
from ..graph import Graph
from . import backends, functional
from .emit import prepare
from .gradient_module import model_source
from .loader import load_source, module_name, plain
from .mixed import check_growth_interval, functional_precision, resolve_precision
from .module import build_model, check_fusable_backend
from .train import step_source


class Compiled:
    """Generated code loaded as a live module.

    ``forward`` and ``value_and_grad`` return a float64 scalar result (a 0-d array or
    NumPy scalar: the loss, the gradient of a scalar parameter) as a plain Python
    ``float``, the same 64-bit number; float32 code keeps its scalars ``np.float32``
    (float32 end to end) and arrays stay NumPy arrays.

    Parameters
    ----------
    source : str
        The module's source.
    name : str
        The module's name (tracebacks show ``<symbackprop:NAME>``).
    arg_names : dict, optional
        Graph name -> the code's argument name, for inputs and parameters whose names
        are not identifiers (``"h 1"``, ``"class"``): arrays may be passed by either.

    Attributes
    ----------
    source : str
        The module's source (also visible in tracebacks).
    module : module
        The loaded module.
    arg_names : dict
        As given (empty by default).
    """

    def __init__(self, source: str, name: str = "symbackprop_generated",
                 arg_names: dict | None = None):
        self.source = source
        self.module = load_source(source, name)
        self.arg_names = dict(arg_names or {})
        # only the names the code spells differently are mapped on each call
        self._renamed = {k: v for k, v in self.arg_names.items() if k != v}
        self._params: dict[str, tuple] = {}

    def _call(self, fname: str, arrays: dict):
        f = getattr(self.module, fname)
        params = self._params.get(fname)
        py = getattr(f, "__wrapped__", f)  # the Python function under a decorator (jax.jit)
        if params is None:
            params = self._params[fname] = py.__code__.co_varnames[:py.__code__.co_argcount]
        if self._renamed:
            arrays = {self._renamed.get(k, k): v for k, v in arrays.items()}
        # keyword arguments with a default (training=, running=, rng=: batch norm and
        # dropout) are passed when given
        required = params[:len(params) - len(py.__defaults__ or ())]
        try:
            kwargs = {p: arrays[p] for p in params if p in arrays or p in required}
        except KeyError:
            missing = [p for p in required if p not in arrays]
            raise GraphError(f"{fname}() needs the arrays {', '.join(map(repr, missing))}; got "
                             f"{', '.join(map(repr, arrays)) or 'none'}. Pass them by name.") \
                from None
        return f(**kwargs)

    @staticmethod
    def _running_back(result, arrays: dict, n: int):
        """The first ``n`` results of a function of a functional backend that returns the
        new running statistics after them (batch norm, issue 15), those written into the
        dict passed as ``running=`` (as NumPy's code updates it in place); ``result`` as it
        is otherwise."""
        if not isinstance(result, tuple) or len(result) != n + 1:
            return result
        *first, running = result
        if isinstance(arrays.get("running"), dict) and running is not None:
            arrays["running"].update(running)
        return first[0] if n == 1 else tuple(first)

    def forward(self, **arrays) -> dict:
        """Run the forward pass; returns a dict of the outputs.

        Examples
        --------
        >>> fn = sb.compile(sb.models.mlp([2, 2]))
        >>> out = fn.forward(X=np.ones((3, 2)), y=np.array([0, 1, 1]), W1=np.zeros((2, 2)),
        ...                  b1=np.zeros(2))
        >>> out["logits"].shape, out["L"]  # ln 2
        ((3, 2), 0.6931471805599453)
        """
        out = self._running_back(self._call("forward", arrays), arrays, 1)
        return {k: plain(v) for k, v in out.items()}

    def init_running(self, **namespace) -> dict:
        """Batch norm's running statistics, mean 0 and variance 1 per feature, keyed
        ``'<node>.mean'`` and ``'<node>.var'`` (graphs with ``sb.batch_norm``): pass them
        as ``running=`` to ``forward``, ``value_and_grad`` and ``train_step``, which update
        them in training mode, and to ``forward(..., training=False)``, which uses them.
        The code of a functional backend returns new statistics instead; these methods
        put them into the dict passed. The ``array_api`` backend's takes ``xp=``."""
        return self.module.init_running(**namespace)

    def value_and_grad(self, **arrays):
        """Return ``(loss, {wrt name: gradient})``.

        Examples
        --------
        >>> fn = sb.compile(sb.parse("L = (w*x - y)**2"), wrt=["w"])
        >>> fn.value_and_grad(w=2.0, x=3.0, y=10.0)
        (16.0, {'w': -24.0})
        """
        loss, grads = self._running_back(self._call("value_and_grad", arrays), arrays, 2)
        return plain(loss), {k: plain(v) for k, v in grads.items()}


class CompiledTrainStep(Compiled):
    """A training step loaded as a live module (made by ``sb.compile(g, optimizer=...)``).

    Besides ``forward`` and ``value_and_grad`` it has ``init_params(seed)``,
    ``init_state(params)``, ``update(params, grads, state)`` and
    ``train_step(params, state, **batch)``; ``inputs`` lists the batch arrays.

    Examples
    --------
    >>> g = sb.parse("L = (w*x - y)**2", params=["w"])
    >>> step = sb.compile(g, optimizer="sgd", lr=0.1)
    >>> params = {"w": np.array(2.0)}
    >>> state = step.init_state(params)
    >>> step.train_step(params, state, x=3.0, y=10.0)  # the loss before the step
    16.0
    >>> float(params["w"])  # 2 - 0.1 * (-24)
    4.4
    """

    def __init__(self, source: str, name: str, inputs: list, arg_names: dict | None = None):
        super().__init__(source, name, arg_names)
        self.inputs = list(inputs)
        # what batch norm and dropout carry between steps, when the caller passes nothing
        self.running, self.rng = None, np.random.default_rng(0)

    def init_params(self, seed=0) -> dict:
        """Fresh parameters (He/Xavier weights, zero biases) from a seed."""
        return self.module.init_params(seed)

    def init_state(self, params: dict) -> dict:
        """The optimizer's initial state for ``params``."""
        return self.module.init_state(params)

    def update(self, params: dict, grads: dict, state: dict, **hyper) -> None:
        """One optimizer step on ``params``, in place."""
        self.module.update(params, grads, state, **hyper)

    def train_step(self, params: dict, state: dict, lr: float | None = None, running=None,
                   rng=None, **batch) -> float:
        """Forward, backward and update on one minibatch; returns the loss. A graph with
        batch norm or dropout also takes ``running`` (:meth:`init_running`, updated in
        place) and ``rng`` (a seed or a ``np.random.Generator``). Left out, they are the
        step's own: ``self.running`` (made by the first step, for ``forward(...,
        training=False, running=step.running)``) and ``self.rng``, one generator of
        seed 0 that every step draws new masks from."""
        batch = {self.arg_names.get(k, k): v for k, v in batch.items()}
        missing = [n for n in self.inputs if n not in batch]
        extra = sorted(set(batch) - set(self.inputs))
        if missing or extra:
            raise GraphError(f"train_step() takes the arrays {', '.join(self.inputs)}; "
                             + (f"missing {', '.join(missing)}" if missing
                                else f"got unknown {', '.join(extra)}") + ". Pass them by name.")
        takes = inspect.signature(self.module.train_step).parameters
        if running is None and "running" in takes:
            if self.running is None:
                self.running = self.module.init_running()
            running = self.running
        if rng is None and "rng" in takes:
            rng = self.rng
        kw = {k: v for k, v in (("lr", lr), ("running", running), ("rng", rng))
              if v is not None}
        return self.module.train_step(params, state, **{n: batch[n] for n in self.inputs}, **kw)

    def underflow(self, params: dict, state: dict, **batch) -> dict:
        """Mixed precision (``precision="mixed"``): the gradient entries that float16
        flushes to zero on one batch, per trained parameter, as ``(entries, nonzero in
        float32, of those zero in float16 without loss scaling, zero with
        state["scale"])``. The float32 reference is value_and_grad computed in float32
        on the same master parameters; nothing changes.

        Examples
        --------
        >>> step = sb.compile(sb.models.mlp([4, 3, 2]), optimizer="sgd", precision="mixed")
        >>> params = step.init_params(0)
        >>> state = step.init_state(params)
        >>> counts = step.underflow(params, state, X=np.ones((5, 4)), y=np.zeros(5, int))
        >>> counts["W1"][0], float(state["scale"])
        (12, 65536.0)
        """
        if not hasattr(self.module, "underflow"):
            raise GraphError("underflow() needs a mixed-precision step: "
                             "sb.compile(g, optimizer=..., precision='mixed').")
        batch = {self.arg_names.get(k, k): v for k, v in batch.items()}
        return self.module.underflow(params, state, **{n: batch[n] for n in self.inputs})


class FunctionalTrainStep(Compiled):
    """A training step of a functional backend (``sb.compile(g, optimizer=...,
    backend="jax")``): nothing changes in place. ``update`` returns ``(params, state)``,
    ``train_step`` returns ``(loss, params, state)``; the arrays passed in are the
    backend's to reuse (JAX donates their buffers), so keep the returned ones.

    Examples
    --------
    >>> g = sb.parse("L = (w*x - y)**2", params=["w"])
    >>> step = sb.compile(g, optimizer="sgd", lr=0.1, backend="jax")
    >>> params = {"w": 2.0}
    >>> loss, params, state = step.train_step(params, step.init_state(params), x=3.0, y=10.0)
    >>> float(loss), float(params["w"])  # the loss before the step; 2 - 0.1 * (-24)
    (16.0, 4.4)
    """

    def __init__(self, source: str, name: str, inputs: list, arg_names: dict | None = None):
        super().__init__(source, name, arg_names)
        self.inputs = list(inputs)
        # what batch norm and dropout carry between steps, when the caller passes nothing
        self.running, self.steps = None, 0

    def init_params(self, seed=0, **namespace) -> dict:
        """Fresh parameters (He/Xavier weights, zero biases) from a seed, drawn by the
        backend's generator; the ``array_api`` backend's takes ``xp=`` too (the array API
        namespace to make them in, such as ``array_api_strict``)."""
        return self.module.init_params(seed=seed, **namespace)

    def init_state(self, params: dict) -> dict:
        """The optimizer's initial state for ``params``."""
        return self.module.init_state(params)

    def update(self, params: dict, grads: dict, state: dict, **hyper) -> tuple:
        """One optimizer step; returns the new ``(params, state)``."""
        return self.module.update(params, grads, state, **hyper)

    def train_step(self, params: dict, state: dict, lr: float | None = None, running=None,
                   rng=None, **batch) -> tuple:
        """Forward, backward and update on one minibatch; returns ``(loss, params,
        state)``, the loss before the step. A graph with batch norm or dropout also takes
        ``running`` (:meth:`init_running`; the step's new statistics are put into this
        dict) and ``rng`` (a seed or a ``jax.random`` key: pass a new one every step).
        Left out, they are the step's own: ``self.running`` (made by the first step, for
        ``forward(..., training=False, running=step.running)``) and the number of steps
        taken so far as the seed (a new mask every step)."""
        batch = {self.arg_names.get(k, k): v for k, v in batch.items()}
        if sorted(batch) != sorted(self.inputs):
            raise GraphError(f"train_step() takes the arrays {', '.join(self.inputs)}; got "
                             f"{', '.join(batch) or 'none'}. Pass them by name.")
        takes = inspect.signature(self.module.train_step).parameters
        if running is None and "running" in takes:
            if self.running is None:
                self.running = self.module.init_running(**self._namespace(params))
            running = self.running
        if rng is None and "rng" in takes:
            rng = self.steps
        self.steps += 1
        kw = {k: v for k, v in (("lr", lr), ("running", running), ("rng", rng))
              if v is not None}
        out = self.module.train_step(params, state, **{n: batch[n] for n in self.inputs}, **kw)
        return self._running_back(out, {"running": running}, 3)

    def _namespace(self, params: dict) -> dict:
        """``xp=`` for an ``init_running`` that takes the namespace (the array API's): the
        namespace of the parameters."""
        if "xp" not in inspect.signature(self.module.init_running).parameters:
            return {}
        return {"xp": next(iter(params.values())).__array_namespace__()}

    def underflow(self, params: dict, state: dict, **batch) -> dict:
        """Mixed precision (``precision="mixed"`` or ``"bfloat16"``): the gradient entries
        that the step's dtype flushes to zero on one batch, per trained parameter, as
        ``(entries, nonzero in float32, of those zero without loss scaling, zero with
        state["scale"])`` (bfloat16: no loss scale, the last two are equal), as
        :meth:`CompiledTrainStep.underflow`; nothing changes.

        Examples
        --------
        >>> step = sb.compile(sb.models.mlp([4, 3, 2]), optimizer="sgd", precision="mixed",
        ...                   backend="jax")
        >>> params = step.init_params(0)
        >>> state = step.init_state(params)
        >>> counts = step.underflow(params, state, X=np.ones((5, 4)), y=np.zeros(5, int))
        >>> counts["W1"][0], float(state["scale"])
        (12, 65536.0)
        """
        if not hasattr(self.module, "underflow"):
            raise GraphError("underflow() needs a mixed-precision step: sb.compile(g, "
                             "optimizer=..., precision='mixed', backend=...).")
        batch = {self.arg_names.get(k, k): v for k, v in batch.items()}
        return self.module.underflow(params, state, **{n: batch[n] for n in self.inputs})


def compile_graph(g: Graph, of: str | None = None, wrt=None, dtype: str = "float64",
                  optimize=True, optimizer: str | None = None, checkpoint="none",
                  precision: str | None = None, growth_interval: int = 2000, backend: str = "numpy",
                  fuse_update: bool = False, **hyper) -> Compiled:
    """Generate the NumPy code for ``g`` and load it (see
    :func:`~symbackprop.codegen.gradient_module.numpy_source`).

    With ``optimizer="sgd"|"momentum"|"adam"`` (and ``lr=...``, ``momentum=...``,
    ``beta1=...``, ...), the code is :func:`symbackprop.train_step`'s and the result a
    :class:`CompiledTrainStep` that also has ``init_params``, ``init_state``,
    ``update`` and ``train_step``.

    ``precision="mixed"`` (with ``optimizer=``; ``growth_interval=2000``) compiles
    :func:`symbackprop.train_step`'s mixed-precision step: float16 forward and backward,
    float32 masters, dynamic loss scaling; its :meth:`CompiledTrainStep.underflow`
    counts the gradient entries float16 flushes to zero.

    ``checkpoint="sqrt"`` (or a list of node names to keep) recomputes forward values in
    the backward pass instead of keeping them (gradient checkpointing,
    :mod:`symbackprop.codegen.checkpoint`): less memory, bit-identical results.

    ``fuse_update=True`` (with ``optimizer=``) applies each parameter's update in the
    backward sweep as soon as its gradient is final (:func:`symbackprop.train_step`): no
    gradient is kept to the end of the step; bit-identical results, but a nan/inf gradient
    leaves a partial step (``FloatingPointError`` with ``.skipped`` and ``.updated``).

    ``backend="cupy"`` loads NumPy's code written against CuPy (the same memory-planned,
    in-place step; arrays passed are moved to the GPU, results are CuPy arrays).
    ``backend="jax"``, ``"array_api"`` or ``"torch"`` writes the code for that array library
    (:func:`~symbackprop.codegen.gradient_module.source`); its results are that library's
    arrays (``array_api``: the library of the arrays passed). A training step of a
    functional backend is a :class:`FunctionalTrainStep`; torch's, in place, a
    :class:`CompiledTrainStep` (its arrays are torch tensors). A backend whose library is not
    installed raises :class:`~symbackprop.errors.CodegenError` naming the extra to install.

    Returns
    -------
    Compiled
        With ``forward(**arrays)``, ``value_and_grad(**arrays)`` and ``source``.
        Arrays are passed by node name (``"h 1"``) or by the code's name (``h_1``).

    Examples
    --------
    >>> fn = sb.compile(sb.parse("L = (w*x - y)**2"), wrt=["w"])
    >>> loss, grads = fn.value_and_grad(w=2.0, x=3.0, y=10.0)
    >>> float(loss), float(grads["w"])
    (16.0, -24.0)
    """
    b = backends.get(backend)
    b.require()
    if fuse_update and optimizer is None:
        raise TypeError("compile() got fuse_update=True without optimizer=; the fused update "
                        "is a training step's: pass optimizer='sgd', 'momentum' or 'adam'.")
    if fuse_update:
        check_fusable_backend(b)
    check_growth_interval(precision, growth_interval)
    if optimizer is not None and b.trainer() is not None:  # in place, the backend's own (torch)
        lr = hyper.pop("lr", None)
        precision, dtype = functional_precision(precision, dtype, b)
        return b.trainer().compile_step(g, of, wrt, optimizer, lr, hyper, dtype, optimize,
                                        checkpoint, precision, growth_interval)
    if b.trainer() is not None:  # mixed ones need a training step (below)
        mixed = precision if precision in ("mixed", "bfloat16") else None
        if mixed:
            raise TypeError(f"compile() got precision={mixed!r} without optimizer=; "
                            "mixed precision is a training step's (float32 masters, loss "
                            "scaling): pass optimizer=.")
        dtype = functional_precision(precision, dtype, b)[1]
        precision = None
    if b.functional:
        precision, dtype = functional_precision(precision, dtype, b)
    if optimizer is not None and b.functional:
        lr = hyper.pop("lr", None)
        m = functional.build(g, of, wrt, optimizer, lr, hyper, dtype, optimize, b.name,
                             checkpoint, precision, growth_interval)
        return FunctionalTrainStep(functional.model_text(m), module_name(g, "_train_step"),
                                   [m.em.namer(n) for n in m.inputs], m.arg_names)
    if optimizer is not None:
        lr = hyper.pop("lr", None)
        m = build_model(g, of, wrt, optimizer, lr, hyper, dtype, optimize,
                        checkpoint=checkpoint, precision=precision,
                        growth_interval=growth_interval, fuse_update=fuse_update,
                        backend=b.name)
        return CompiledTrainStep(step_source(m), module_name(g, "_train_step"),
                                 [m.em.namer(n) for n in m.inputs], m.arg_names)
    if b.functional:  # dtype is the precision's; mixed ones need a training step
        mixed, precision = (precision if precision in ("mixed", "bfloat16") else None), None
    else:
        mixed = (precision if precision is not None
                 and resolve_precision(precision, dtype)[0] == "mixed" else None)
    if mixed:
        raise TypeError(f"compile() got precision={mixed!r} without optimizer=; "
                        "mixed precision is a training step's (float32 masters, loss scaling): "
                        "pass optimizer=.")
    if precision is not None:
        dtype = resolve_precision(precision, dtype)[1]
    if hyper:
        raise TypeError(f"compile() got {', '.join(sorted(hyper))} without optimizer=; pass "
                        "optimizer='sgd', 'momentum' or 'adam' to compile a training step.")
    src, em = model_source(prepare(g, of, wrt, optimize), dtype, optimize,
                           checkpoint=checkpoint, backend=b.name)
    arg_names = {n: em.namer(n) for n in g.nodes("input") + g.nodes("param")}
    return Compiled(src, module_name(g), arg_names)


__all__ = ["Compiled", "CompiledTrainStep", "FunctionalTrainStep", "compile_graph"]
