"""The module of ``sb.numpy_source`` and ``sb.compile``: ``forward``, and ``value_and_grad``
on the memory-planned path where planning applies.

``value_and_grad`` allocates only what it returns: the gradients, new arrays on every
call that the caller owns and may keep. It hands them to ``loss_and_grads_into``, the
planned function (:func:`~symbackprop.codegen.plan.plan_function`), which writes every
intermediate array into a workspace made once per batch size (``_workspace``, laid out by
``_pack``) with NumPy calls writing into it (``out=``): the training step's code, less the
update. The plain ``value_and_grad`` (:func:`~symbackprop.codegen.emit.emit_value_and_grad`),
one statement per node, stays for ``optimize=False`` and for graphs whose every value is a
scalar (``L = (w*x - y)**2``), where a workspace buys nothing and the plain code is the
one to read.

The workspace is shared by the calls of one batch size, so one loaded module must not run
``value_and_grad`` in two threads at once (the plain code may).
"""

from __future__ import annotations

from ..autodiff import Adjoints
from ..graph import Graph, fmt_shape
from ..optimize import resolve as resolve_passes
from .emit import (
    Emitter,
    Function,
    add_context,
    call_lines,
    context_args,
    dict_code,
    emit_forward,
    emit_value_and_grad,
    prepare,
    render_module,
    running_function,
    safe_text,
    value_and_grad_doc,
)
from .plan import PACK, Plan, flat_pairs, plan_function, workspace_source

PLANNED = "loss_and_grads_into"


def plans(em: Emitter) -> bool:
    """Whether ``value_and_grad`` takes the planned path: some value is an array."""
    j = em.j
    return any(j.nx.nodes[n]["shape"] != () for n in j.nx)


def planned_value_and_grad(em: Emitter, adj: Adjoints) -> tuple[list[Function], str, Plan]:
    """``value_and_grad`` on the planned path and the planned function it calls, the
    workspace's source (``_pack`` and ``_workspace``), and the plan's decisions."""
    j, nm = em.j, em.namer
    grads = list(dict.fromkeys(adj.adjoint[w] for w in adj.wrt))  # a node may serve two
    fast, pool = plan_function(
        em, PLANNED, [adj.of, *grads], grads,
        f"Loss {safe_text(adj.of)}; writes its gradients into "
        f"{', '.join(nm(n) for n in grads)}.\n\n"
        "    value_and_grad's computation with every intermediate array in a buffer of\n"
        "    _workspace() (one arena per batch size, made once) and NumPy calls writing "
        "into it\n    (out=). Every array passed must be of DTYPE, the gradient arrays "
        "C-contiguous.", of=adj.of, marker=True)
    fast.ret = em.code(adj.of)
    need = j.ancestors([adj.of, *grads])
    context = add_context(em, fast, need)  # batch norm's running statistics, dropout's rng
    names = {nm(n): n for n in em.order if j.role(n) in ("input", "param")}
    leaves = [names[p] for p in fast.params if p in names]  # (the gradients come after)
    vg = Function("value_and_grad", [nm(n) for n in leaves],
                  value_and_grad_doc(adj) + "\n\n    The gradients are new arrays on every "
                  "call, the caller's to keep; the\n    intermediate arrays live in the "
                  f"workspace ({PLANNED}).")
    new = [f"{nm(n)} = np.empty({fmt_shape(j.nx.nodes[n]['shape'])}, DTYPE)" for n in grads]
    vg.body = em.as_arrays(leaves) + em.bind_sizes("value_and_grad", leaves, new) + new
    vg.params += context_args(em, need)[0]  # passed on as they are
    vg.body += call_lines(f"{em.namer(adj.of)} = ", PLANNED, [
        p if "=" not in p else f"{p.split('=')[0]}={p.split('=')[0]}" for p in fast.params
        if "=" not in p or p.split("=")[0] in context])
    vg.ret = f"{em.namer(adj.of)}, " + dict_code((w, nm(adj.adjoint[w])) for w in adj.wrt)
    return [vg, fast], PACK + "\n\n" + workspace_source(em, pool), pool.plan


def model_functions(adj: Adjoints, dtype: str = "float64", optimize=True,
                    explain: list | None = None, checkpoint="none",
                    backend="numpy") -> tuple[str, Emitter, list[Function], str]:
    """The module docstring, the emitter, the functions (``forward``, ``value_and_grad``
    and, when planned, ``loss_and_grads_into``) and the source that follows them (the
    workspace, when planned). ``explain`` also receives the planner's decisions: those of
    value_and_grad, and where the training step carries a bias in its product and why
    not elsewhere (:func:`step_plan`). A backend without the planned path
    (:attr:`~symbackprop.codegen.backends.Backend.planned`: the functional ones) gets the
    plain ``value_and_grad``."""
    doc, em, fwd = emit_forward(adj, dtype, optimize, explain, checkpoint, backend)
    if resolve_passes(optimize) and em.backend.planned and plans(em):
        fns, extra, plan = planned_value_and_grad(em, adj)
        if explain is not None:
            explain.append(("memory plan of value_and_grad", [], plan.explain(em)))
            step_em, plan = step_plan(adj, dtype, optimize, checkpoint)
            explain.append(("memory plan of train_step: bias in the product", [],
                            [c.text(step_em) for c in plan.fold_choices]))
        return doc, em, [fwd, *fns, *running_function(em)], extra
    return doc, em, [fwd, emit_value_and_grad(em, adj), *running_function(em)], ""


def step_plan(adj: Adjoints, dtype: str = "float64", optimize=True,
              checkpoint="none") -> tuple[Emitter, Plan]:
    """The plan of the training step's gradient function (``loss_and_grads_into`` of
    ``sb.train_step``, which keeps weights and biases in flat buffers and so may fold a
    bias into its product), and the emitter naming its nodes."""
    _, em, _ = emit_forward(adj, dtype, optimize, checkpoint=checkpoint)
    grads = [adj.adjoint[w] for w in adj.wrt]
    _, pool = plan_function(em, PLANNED, [adj.of, *grads], grads, "", of=adj.of,
                            pairs=flat_pairs(adj))
    return em, pool.plan


def model_source(adj: Adjoints, dtype: str = "float64", optimize=True,
                 explain: list | None = None, checkpoint="none",
                 backend="numpy") -> tuple[str, Emitter]:
    """The module's source and its emitter (which names the arguments)."""
    doc, em, fns, extra = model_functions(adj, dtype, optimize, explain, checkpoint, backend)
    return render_module(doc, em, fns, extra), em


def numpy_source(g: Graph, of: str | None = None, wrt=None, dtype: str = "float64",
                 optimize=True, explain: list | None = None, checkpoint="none") -> str:
    """Standalone NumPy source with ``forward`` and ``value_and_grad`` functions.

    Parameters
    ----------
    g : Graph
        The network.
    of : str, optional
        The scalar loss; by default the last scalar output.
    wrt : list of str, optional
        Nodes to differentiate with respect to; by default the parameters.
    dtype : {"float64", "float32"}
        The floating dtype of every array in the generated code.
    optimize : bool, str or list of str
        Optimization passes to run on the joint graph: ``True`` (default) for
        all, ``False`` for none, or pass names (see :mod:`symbackprop.optimize`).
    explain : list, optional
        Receives ``(pass, lines removed, lines added)`` for each pass.
    checkpoint : "none", "sqrt" or list of str
        Gradient checkpointing: the backward recomputes the forward values it reads
        instead of keeping them, but for the kept ones: ``"sqrt"`` keeps every ⌈√n⌉-th
        of the n values (Chen et al. 2016), a list the nodes named
        (:mod:`symbackprop.codegen.checkpoint`). The results are bit-identical.

    Returns
    -------
    str
        Python source importing only NumPy. ``forward(**arrays)`` returns a
        dict of the graph's outputs; ``value_and_grad(**arrays)`` returns the
        loss and a dict of gradients keyed by the ``wrt`` names: new arrays on
        every call, the caller's to keep. With optimization on, a graph of
        arrays computes them in ``loss_and_grads_into``, every intermediate in
        a workspace made once per batch size (:mod:`symbackprop.codegen.gradient_module`);
        a graph of scalars, or ``optimize=False``, gets the plain code below.

    Examples
    --------
    >>> src = sb.numpy_source(sb.parse("L = (w*x - y)**2"), wrt=["w"])
    >>> print(src[src.index("def value_and_grad"):])  # doctest: +NORMALIZE_WHITESPACE
    def value_and_grad(w, x, y):
        \"\"\"Loss L and its gradients, keyed by w.\"\"\"
        w = np.asarray(w, dtype=DTYPE)
        x = np.asarray(x, dtype=DTYPE)
        y = np.asarray(y, dtype=DTYPE)
        sub_1 = w * x - y
        L = sub_1**2
        # backward: gradients in reverse order of the forward pass
        dw = 2 * sub_1 * x  # dL/dw via sub_1 = w * x - y
        return L, {'w': dw}
    <BLANKLINE>
    """
    return model_source(prepare(g, of, wrt, optimize, explain), dtype, optimize, explain,
                        checkpoint)[0]


def source(g: Graph, of: str | None = None, wrt=None, dtype: str = "float64", optimize=True,
           explain: list | None = None, checkpoint="none", backend: str = "numpy") -> str:
    """Standalone source with ``forward`` and ``value_and_grad`` for the array library
    ``backend``: ``"numpy"`` (:func:`numpy_source`, memory-planned), ``"jax"`` (functional
    ``jax.numpy`` code, ``@jax.jit`` on each function, float64 turning on JAX's 64-bit
    mode), ``"array_api"`` (functional code using only the Python array API standard, on
    the namespace of the arrays passed), ``"torch"`` (plain PyTorch tensor code under
    ``torch.inference_mode()``, on the device of the tensors passed) or ``"cupy"``
    (:func:`numpy_source`'s module with ``import cupy as cp``, on the GPU). The other parameters
    are :func:`numpy_source`'s.

    The module imports only its array library (the array API one imports nothing) and is
    written one statement per node, each backward line commented with the gradient it
    computes. An op the backend has no code for raises
    :class:`~symbackprop.errors.CodegenError` (``op 'conv2d' has no array_api code``);
    so does an unknown backend. Generating needs no JAX; running the code does.

    Examples
    --------
    >>> src = sb.source(sb.parse("L = (w*x - y)**2"), wrt=["w"], backend="jax")
    >>> print(src[src.index("@jax.jit", src.index("def forward")):])  # doctest: +NORMALIZE_WHITESPACE
    @jax.jit
    def value_and_grad(w, x, y):
        \"\"\"Loss L and its gradients, keyed by w.\"\"\"
        w = jnp.asarray(w, dtype=DTYPE)
        x = jnp.asarray(x, dtype=DTYPE)
        y = jnp.asarray(y, dtype=DTYPE)
        sub_1 = w * x - y
        L = sub_1**2
        # backward: gradients in reverse order of the forward pass
        dw = 2 * sub_1 * x  # dL/dw via sub_1 = w * x - y
        return L, {'w': dw}
    <BLANKLINE>
    """
    return model_source(prepare(g, of, wrt, optimize, explain), dtype, optimize, explain,
                        checkpoint, backend)[0]
