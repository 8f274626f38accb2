"""The generated code and the optional framework contenders, behind one small interface.

Each contender is built from the initial parameters (a dict ``W1, b1, ...``) and the fixed
minibatch, and has ``step()`` (forward, backward and SGD update in place; returns the loss)
and ``params()`` (the current parameters as NumPy arrays, for the correctness check).
"""

from __future__ import annotations

import ast
import functools
import importlib
import os

import numpy as np

import symbackprop as sb


def _dtype_name(dtype) -> str:
    return np.dtype(dtype).name


class _Generated:
    """What both forms of the generated contender share: parameters (updated in place) and
    the generated ``forward`` and ``value_and_grad`` alone, for the (forward + backward) /
    forward ratios.

    The generated functions are called straight from the loaded module, with their arguments
    bound once, as a user calls the standalone file: the ``Compiled`` wrapper's per-call
    argument checks (a few microseconds) are the API's cost, not the generated code's.
    """

    label = "generated"

    def _bind(self, compiled, params, X, y):
        self.compiled = compiled
        self._params = {k: v.copy() for k, v in params.items()}
        self._X, self._y = X, y
        self.rebind()

    def rebind(self):
        """Bind forward and value_and_grad to the current parameter arrays."""
        arrays = dict(self._params, X=self._X, y=self._y)
        self._fwd = self._bound(self.compiled.module.forward, arrays)
        self._vg = self._bound(self.compiled.module.value_and_grad, arrays)

    @staticmethod
    def _bound(f, arrays):
        names = f.__code__.co_varnames[:f.__code__.co_argcount]
        return functools.partial(f, **{n: arrays[n] for n in names})

    def forward(self):
        return self._fwd()

    def value_and_grad(self):
        return self._vg()

    def params(self):
        return self._params

    @property
    def source(self) -> str:
        return self.compiled.source


class GeneratedVG(_Generated):
    """``sb.compile(g)``'s ``value_and_grad``, then ``p -= lr * g`` for every parameter."""

    label = "generated (value_and_grad + update)"

    def __init__(self, g, params, X, y, lr, dtype):
        self._bind(sb.compile(g, dtype=_dtype_name(dtype)), params, X, y)
        self.lr = lr

    def step(self):
        loss, grads = self._vg()
        lr = self.lr
        for k, p in self._params.items():
            p -= lr * grads[k]
        return loss


class GeneratedTrainStep(_Generated):
    """``sb.train_step(g, of="L", optimizer="sgd", lr=lr)`` loaded by
    ``sb.compile(g, of="L", optimizer="sgd", lr=lr)``; its ``train_step(params, state, X, y)``
    runs forward, backward and the update in one call."""

    label = "generated (train_step)"

    def __init__(self, g, params, X, y, lr, dtype):
        c = sb.compile(g, of="L", optimizer="sgd", lr=lr, dtype=_dtype_name(dtype))
        self.lr = lr
        self._bind(c, params, X, y)
        self._step = functools.partial(c.module.train_step, self._params, self.state,
                                       **self._batch())

    def _batch(self) -> dict:
        c = self.compiled
        batch = {c.arg_names.get(k, k): v for k, v in (("X", self._X), ("y", self._y))}
        return {n: batch[n] for n in c.inputs}

    def rebind(self):
        """Forward + backward is what train_step runs: the memory-planned
        ``loss_and_grads_into``, called with the arguments train_step passes it, where the
        module has it. Bound on its first call: binding runs train_step's set-up (the
        flat buffers, the workspace), which belongs to a step, not to construction (the
        peak-memory measurement traces from the first step)."""
        super().rebind()
        if not hasattr(self, "state"):
            self.state = self.compiled.init_state(self._params)
        if hasattr(self.compiled.module, "loss_and_grads_into"):
            self._vg = self._first_planned_call

    def _first_planned_call(self):
        self._vg = _planned_call(self.compiled, self._params, self.state, self._batch(),
                                 self.lr)
        return self._vg()

    def step(self):
        return self._step()


class GeneratedCheckpointed(GeneratedTrainStep):
    """The generated training step compiled with ``checkpoint=`` (``"none"`` or ``"sqrt"``)
    and, with ``fuse_update=True``, the fused update:
    ``sb.compile(g, of="L", optimizer="sgd", lr=lr, checkpoint=checkpoint)``."""

    label = "generated (train_step, checkpointed)"

    def __init__(self, g, params, X, y, lr, dtype, checkpoint="sqrt", fuse_update=False):
        kw = {"fuse_update": True} if fuse_update else {}  # (a checkout without it runs too)
        c = sb.compile(g, of="L", optimizer="sgd", lr=lr, dtype=_dtype_name(dtype),
                       checkpoint=checkpoint, **kw)
        self.lr, self.checkpoint = lr, checkpoint
        self._bind(c, params, X, y)
        self._step = functools.partial(c.module.train_step, self._params, self.state,
                                       **self._batch())


def _planned_call(compiled, params, state, batch, lr):
    """``loss_and_grads_into`` bound to exactly the arguments the generated ``train_step``
    passes it (parameters, views of the flat buffers and of the workspace): train_step's
    statements before that call run once, then its argument expressions are evaluated."""
    tree = ast.parse(compiled.source)
    step = next(f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == "train_step")
    at, call = next((i, s.value) for i, s in enumerate(step.body)
                    if isinstance(s, ast.Assign) and isinstance(s.value, ast.Call)
                    and getattr(s.value.func, "id", None) == "loss_and_grads_into")
    env = dict(vars(compiled.module), params=params, state=state, lr=lr, **batch)
    exec(compile(ast.Module(step.body[:at], []), "<train_step>", "exec"), env)  # noqa: S102

    def value(node):
        return eval(compile(ast.Expression(node), "<train_step>", "eval"), env)

    return functools.partial(compiled.module.loss_and_grads_into, *map(value, call.args),
                             **{k.arg: value(k.value) for k in call.keywords})


def generated_class():
    """The generated-code contender this checkout supports: the generated training step
    when ``sb.train_step`` exists, else value_and_grad plus an update loop."""
    return GeneratedTrainStep if hasattr(sb, "train_step") else GeneratedVG


# -- optional frameworks: used only when importable; never installed by the benchmark ---------

def _torch_threads() -> int:
    """PyTorch's threads: bench.py's BLAS threads (``--blas-threads``, 2 by default, set in
    OMP_NUM_THREADS before anything loads), so that its contenders and NumPy's compute with
    as many cores (1 on a loaded machine, where a second thread waits for a core)."""
    return int(os.environ.get("OMP_NUM_THREADS", "2"))


def available_frameworks() -> dict:
    """Name -> contender class for PyTorch and JAX, when they import."""
    out = {}
    for name, cls in (("pytorch", TorchEager), ("jax", JaxJit), ("generated jax", GeneratedJax),
                      ("generated torch", GeneratedTorch)):
        module = cls.module
        if module not in _IMPORTABLE:
            try:
                importlib.import_module(module)
                _IMPORTABLE[module] = True
            except Exception:  # noqa: BLE001 -- a broken install counts as not available
                _IMPORTABLE[module] = False
        if _IMPORTABLE[module]:
            out[name] = cls
    return out


_IMPORTABLE: dict = {}


def framework_versions() -> dict:
    """Name -> version of each available framework, for the JSON."""
    return {name: getattr(importlib.import_module(cls.module), "__version__", "?")
            for name, cls in available_frameworks().items()}


class TorchEager:
    """PyTorch eager mode: autograd for the gradients, ``p.sub_(lr * g)`` under no_grad."""

    label = "pytorch eager"
    module = "torch"

    def __init__(self, g, params, X, y, lr, dtype, activation="relu"):
        import torch

        torch.set_num_threads(_torch_threads())
        self.torch = torch
        depth = len(params) // 2
        self.names = [n for k in range(1, depth + 1) for n in (f"W{k}", f"b{k}")]
        self.ps = [torch.tensor(params[n]).requires_grad_(True) for n in self.names]
        self.X = torch.from_numpy(X)
        self.y = torch.from_numpy(y).long()
        self.act = torch.relu if activation == "relu" else torch.tanh
        self.lr = lr

    def step(self):
        torch = self.torch
        ps = self.ps
        h = self.X
        depth = len(ps) // 2
        for k in range(depth):
            z = torch.addmm(ps[2 * k + 1], h, ps[2 * k])
            h = self.act(z) if k < depth - 1 else z
        loss = torch.nn.functional.cross_entropy(h, self.y)
        grads = torch.autograd.grad(loss, ps)
        with torch.no_grad():
            for p, gr in zip(ps, grads):
                p.sub_(gr, alpha=self.lr)
        return loss.item()

    def params(self):
        return {n: p.detach().numpy() for n, p in zip(self.names, self.ps)}


class JaxJit:
    """JAX: ``jax.jit`` of value_and_grad plus the SGD update, parameters donated."""

    label = "jax jit"
    module = "jax"

    def __init__(self, g, params, X, y, lr, dtype, activation="relu"):
        import jax
        import jax.numpy as jnp

        # x64 is process-wide and JAX truncates float64 to float32 without it: set it to match
        # each workload, so float32 runs as a float32 user runs it (int32 labels) whether or
        # not a float64 workload came first.
        jax.config.update("jax_enable_x64", np.dtype(dtype) == np.float64)
        self.jax = jax
        act = jax.nn.relu if activation == "relu" else jnp.tanh
        depth = len(params) // 2

        def loss_fn(ps, X, y):
            h = X
            for k in range(1, depth + 1):
                h = h @ ps[f"W{k}"] + ps[f"b{k}"]
                if k < depth:
                    h = act(h)
            logp = jax.nn.log_softmax(h, axis=1)
            return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

        def step(ps, X, y):
            loss, grads = jax.value_and_grad(loss_fn)(ps, X, y)
            return loss, jax.tree_util.tree_map(lambda p, gr: p - lr * gr, ps, grads)

        self._step = jax.jit(step, donate_argnums=0)
        self.ps = {k: jnp.asarray(v) for k, v in params.items()}
        self.X, self.y = jnp.asarray(X), jnp.asarray(y)

    def step(self):
        loss, self.ps = self._step(self.ps, self.X, self.y)
        # Block on the new parameters too: the loss can be ready while the update is still
        # running, and that tail would be timed as part of the next call (or contender).
        self.jax.block_until_ready(self.ps)
        return float(loss)

    def params(self):
        return {k: np.asarray(v) for k, v in self.ps.items()}


class GeneratedJax:
    """The generated training step of the ``jax`` backend (issue 15): ``sb.compile(g,
    optimizer="sgd", backend="jax")``, whose ``train_step`` is jitted with its parameters
    and state donated, against the hand-written ``jax.jit`` step above."""

    label = "generated jax"
    module = "jax"

    def __init__(self, g, params, X, y, lr, dtype, activation="relu"):
        import jax

        # as JaxJit: x64 to match the workload (a float64 module turns it on itself)
        jax.config.update("jax_enable_x64", np.dtype(dtype) == np.float64)
        self.jax = jax
        if g is None:  # given the parameters alone (tests/test_bench.py): the MLP they fit
            depth = len(params) // 2
            g = sb.models.mlp([params["W1"].shape[0]]
                              + [params[f"W{k}"].shape[1] for k in range(1, depth + 1)],
                              activation=activation)
        self.compiled = sb.compile(g, optimizer="sgd", lr=lr, dtype=_dtype_name(dtype),
                                   backend="jax")
        self._step = self.compiled.module.train_step  # the module's own jitted function
        self.ps = {k: jax.numpy.asarray(v) for k, v in params.items()}
        self.state = self.compiled.init_state(self.ps)
        self.X, self.y = jax.numpy.asarray(X), jax.numpy.asarray(y)

    def step(self):
        loss, self.ps, self.state = self._step(self.ps, self.state, self.X, self.y)
        self.jax.block_until_ready(self.ps)  # as JaxJit: the update's tail is this call's
        return float(loss)

    def params(self):
        return {k: np.asarray(v) for k, v in self.ps.items()}


class GeneratedTorch:
    """The generated training step of the ``torch`` backend (issue 15): ``sb.compile(g,
    optimizer="sgd", backend="torch")``, whose ``train_step`` runs symbackprop's gradients
    under ``torch.inference_mode()`` (no tape) and updates the parameters in place, against
    PyTorch eager with autograd (:class:`TorchEager`, the same threads)."""

    label = "generated torch"
    module = "torch"

    def __init__(self, g, params, X, y, lr, dtype, activation="relu"):
        import torch

        torch.set_num_threads(_torch_threads())  # as TorchEager
        if g is None:  # given the parameters alone (tests/test_bench.py): the MLP they fit
            depth = len(params) // 2
            g = sb.models.mlp([params["W1"].shape[0]]
                              + [params[f"W{k}"].shape[1] for k in range(1, depth + 1)],
                              activation=activation)
        self.compiled = sb.compile(g, optimizer="sgd", lr=lr, dtype=_dtype_name(dtype),
                                   backend="torch")
        self.ps = {k: torch.tensor(v) for k, v in params.items()}
        self.state = self.compiled.init_state(self.ps)
        self._step = functools.partial(self.compiled.module.train_step, self.ps, self.state,
                                       torch.from_numpy(X), torch.from_numpy(y))

    def step(self):
        return self._step()  # the loss as a Python float, as TorchEager's loss.item()

    def params(self):
        return {k: v.numpy() for k, v in self.ps.items()}


# -- workloads D and E (issue 13): PyTorch eager, when importable ------------------------------

class TorchCNN:
    """The digits CNN of workload D in PyTorch eager (``F.conv2d``, ``F.max_pool2d``),
    parameters named as ``benchmarks/networks.py``'s ``digits_cnn``; SGD as
    :class:`TorchEager`. ``step()`` returns the loss."""

    label = "pytorch eager"
    module = "torch"

    def __init__(self, params, X, y, lr):
        import torch

        torch.set_num_threads(_torch_threads())
        self.torch = torch
        self.names = list(params)
        self.ps = {k: torch.tensor(v).requires_grad_(True) for k, v in params.items()}
        self.X, self.y, self.lr = torch.from_numpy(X), torch.from_numpy(y).long(), lr

    def step(self):
        torch, p = self.torch, self.ps
        F = torch.nn.functional
        h = self.X
        for k in (1, 2):
            h = F.max_pool2d(torch.relu(F.conv2d(h, p[f"K{k}"], p[f"c{k}"], padding=1)), 2)
        h = torch.relu(h.reshape(h.shape[0], -1) @ p["W1"] + p["b1"])
        loss = F.cross_entropy(h @ p["W2"] + p["b2"], self.y)
        ps = [p[k] for k in self.names]
        grads = torch.autograd.grad(loss, ps)
        with torch.no_grad():
            for q, gr in zip(ps, grads):
                q.sub_(gr, alpha=self.lr)
        return loss.item()

    def params(self):
        return {k: v.detach().numpy() for k, v in self.ps.items()}


class TorchBlock:
    """The transformer block of workload E in PyTorch eager (``F.layer_norm`` without
    weight and bias, batched-matmul attention), parameters named as ``benchmarks/
    networks.py``'s ``transformer_block``. ``value_and_grad()`` returns the loss and the
    gradients as NumPy arrays."""

    label = "pytorch eager"
    module = "torch"

    def __init__(self, params, X, heads):
        import torch

        torch.set_num_threads(_torch_threads())
        self.torch = torch
        self.names = list(params)
        self.ps = {k: torch.tensor(v).requires_grad_(True) for k, v in params.items()}
        self.X, self.heads = torch.from_numpy(X), heads

    def value_and_grad(self):
        torch, p, H = self.torch, self.ps, self.heads
        F = torch.nn.functional
        x = self.X
        n, t, d = x.shape
        dh = d // H
        a = F.layer_norm(x, (d,), eps=1e-5)

        def split(m):
            return m.reshape(n, t, H, dh).transpose(1, 2)

        q, k, v = split(a @ p["Wq"]), split(a @ p["Wk"]), split(a @ p["Wv"])
        att = torch.softmax((q @ k.transpose(-1, -2)) * dh ** -0.5, dim=-1)
        h = x + (att @ v).transpose(1, 2).reshape(n, t, d) @ p["Wo"]
        f = torch.relu(F.layer_norm(h, (d,), eps=1e-5) @ p["W1"] + p["b1"])
        out = h + f @ p["W2"] + p["b2"]
        loss = (out * out).mean()
        grads = torch.autograd.grad(loss, [p[k] for k in self.names])
        return loss.item(), {k: gr.numpy() for k, gr in zip(self.names, grads)}

    def params(self):
        return {k: v.detach().numpy() for k, v in self.ps.items()}


def torch_available() -> bool:
    """Whether PyTorch imports (the D and E columns), memoised as for the MLP workloads."""
    return "pytorch" in available_frameworks()
