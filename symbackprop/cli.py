"""The ``symbackprop`` command line; the only module that prints or exits.

Every command takes a SPEC (see :data:`SPECS`). Errors print on one line, without a
traceback, and exit with status 2; ``check`` exits 1 on a gradient mismatch.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
import traceback

import networkx as nx

from . import models
from .build import parse
from .errors import GraphError, ParseError, SymbackpropError
from .graph import Graph, from_networkx, load

SPECS = """\
SPEC, the network, is one of:
  statements       "a = 2*x; b = a + 3; c = b**2" (parsed, never evaluated)
  a .json file     networkx node-link JSON, as written by g.save(path)
  a .py file       defining graph (an sb.Graph or a networkx DiGraph/MultiDiGraph
                   whose nodes carry op) or build() returning one
  mlp:SIZES        a ready-made MLP such as mlp:784-256-10 (--activation, --loss);
                   a size may repeat: mlp:64-64*50-10 has 50 hidden layers of 64"""

EPILOG = SPECS + """

examples:
  symbackprop derive "a = 2*x; b = a + 3; c = b**2" --wrt x --at x=1
  symbackprop check mlp:784-256-10
  symbackprop codegen mlp:784-256-256-256-10 -o model.py
  symbackprop codegen mlp:64-32-10 --optimizer adam --precision mixed -o step.py
  symbackprop render "L = (w*x - y)**2" --kind derivation --at w=2,x=3,y=10 -o loss.svg
  symbackprop train-script mlp:64-32-10 --optimizer adam --lr 0.01 -o train.py
  symbackprop cost mlp:784-256-256-256-10 --batch 64 --measure
  symbackprop flow "mlp:64-64*50-10" --compare activation=sigmoid,tanh,relu --plot flow.svg
  symbackprop report "a = 2*x; b = a + 3; c = b**2" --at x=1 -o report.html

Mistakes print one line naming the node, what was expected and the fix, and exit
with status 2; check exits 1 when a gradient disagrees with finite differences.
`symbackprop COMMAND --help` lists a command's options."""


CODEGEN = """\
Write the code of SPEC's gradients: forward and value_and_grad, for the array library
of --backend (NumPy by default). With --optimizer, write the training step's module
instead (sb.train_step): forward, value_and_grad, init_params, init_state, update and
train_step, set by --lr, --momentum, --beta1, --beta2, --eps, --precision,
--growth-interval and --fuse-update, which need --optimizer."""


def load_spec(spec: str, activation: str = "relu", loss: str = "softmax_cross_entropy") -> Graph:
    """Turn a SPEC (statements, .json, .py or ``mlp:...``) into a graph.

    Examples
    --------
    >>> load_spec("mlp:4-3-2").nodes("param")
    ['W1', 'b1', 'W2', 'b2']
    >>> load_spec("L = (w*x - y)**2").nx.graph["outputs"]
    ['L']
    """
    if spec.startswith("mlp:"):
        return models.mlp(mlp_sizes(spec), activation=activation, loss=loss)
    if spec.endswith(".json"):
        if not os.path.exists(spec):
            raise GraphError(f"file {spec!r} does not exist.")
        return load(spec)
    if spec.endswith(".py"):
        return _load_py(spec)
    return parse(spec)


def mlp_sizes(spec: str) -> list[int]:
    """The sizes of an ``mlp:`` SPEC; ``W*K`` is K layers of width W.

    Examples
    --------
    >>> mlp_sizes("mlp:64-64*3-10")
    [64, 64, 64, 64, 10]
    """
    sizes = []
    for part in spec[4:].split("-"):
        width, star, count = part.partition("*")
        try:
            w, k = int(width), int(count) if star else 1
            if w < 1 or k < 1:
                raise ValueError
        except ValueError:
            raise ParseError(f"model spec {spec!r}: expected positive sizes like mlp:784-256-10, "
                             "a repeated size as WIDTH*COUNT (mlp:64-64*50-10).") from None
        sizes += [w] * k
    return sizes


def _load_py(path: str) -> Graph:
    """The graph a ``.py`` SPEC defines: ``graph`` or ``build()``, an sb.Graph or a
    networkx graph. Whatever the file raises becomes one line naming its place."""
    if not os.path.exists(path):
        raise GraphError(f"file {path!r} does not exist.")
    ns = _run_user_code(path, runpy.run_path, path)  # the user's own model file
    if callable(ns.get("build")):
        g, what = _run_user_code(path, ns["build"]), "build() returns"
    elif "graph" in ns:
        g, what = ns["graph"], "'graph' is"
    else:
        raise GraphError(f"file {path!r} defines neither 'graph' nor 'build()'. Add one of "
                         "them, giving an sb.Graph or a networkx DiGraph whose nodes carry "
                         "'op'.")
    if isinstance(g, Graph):
        return g
    if isinstance(g, nx.DiGraph):  # MultiDiGraph too
        return from_networkx(g)
    found = ("an undirected networkx graph" if isinstance(g, nx.Graph)
             else "None" if g is None else f"a {type(g).__name__}")
    raise GraphError(f"file {path!r}: {what} {found}; expected an sb.Graph or a networkx "
                     "DiGraph or MultiDiGraph whose nodes carry 'op' (argument order needs "
                     "directed edges).")


def _run_user_code(path: str, fn, *args):
    """``fn(*args)``, where any exception (a SyntaxError, one raised at import or in
    ``build()``) becomes a one-line :class:`GraphError` naming the file and line."""
    try:
        return fn(*args)
    except (Exception, SystemExit) as e:  # noqa: BLE001 -- the user's code may raise anything
        fix = "" if isinstance(e, SymbackpropError) else \
            ". Fix the file: symbackprop runs it to build the graph"
        raise GraphError(f"{_located(path, e)}{fix}.") from None


def _located(path: str, e: BaseException) -> str:
    """``file 'net.py', line 7: ZeroDivisionError: division by zero``: the last line of
    ``path`` the error went through, then the error on one line."""
    def same(f):
        return f is not None and os.path.normcase(os.path.abspath(f)) == \
            os.path.normcase(os.path.abspath(path))

    lines = [fr.lineno for fr in traceback.extract_tb(e.__traceback__) if same(fr.filename)]
    text = str(e)
    if isinstance(e, SyntaxError):  # raised by the compiler: no frame of the file
        text = e.msg or text
        if same(e.filename):
            lines.append(e.lineno)
        elif e.filename and e.lineno:  # a module the file imports
            text += f" ({e.filename}, line {e.lineno})"
    text = " ".join(text.rstrip(".").split())
    where = f"file {path!r}, line {lines[-1]}" if lines and lines[-1] else f"file {path!r}"
    return f"{where}: {type(e).__name__}" + (f": {text}" if text else "")


def parse_at(text: str | None) -> dict:
    """``"w=2,x=3"`` -> ``{"w": 2.0, "x": 3.0}``."""
    out = {}
    for part in filter(None, (text or "").split(",")):
        name, eq, value = part.partition("=")
        try:
            if not eq:
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise ParseError(f"--at {text!r}: expected name=number pairs separated by commas, "
                             "e.g. --at w=2,x=3.") from None
    return out


def _names(text: str | None):
    return None if text is None else [s.strip() for s in text.split(",") if s.strip()]


def _spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC",
                   help="the network: statements, a .json or .py file, or mlp:784-256-10")
    p.add_argument("--of", help="the scalar to differentiate (default: the last scalar output)")
    p.add_argument("--wrt", help="comma-separated nodes (default: parameters, else inputs)")
    p.add_argument("--activation", default="relu", help="for mlp: specs (default relu)")
    p.add_argument("--loss", default="softmax_cross_entropy",
                   help="for mlp: specs: softmax_cross_entropy or mse")


def _write(text: str, out: str | None) -> None:
    if out in (None, "-"):
        sys.stdout.write(text)
    else:
        with open(out, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"wrote {out}", file=sys.stderr)


def _graph(a) -> Graph:
    return load_spec(a.spec, a.activation, a.loss)


# -- commands -----------------------------------------------------------------------
def cmd_codegen(a) -> int:
    from .codegen.gradient_module import source
    from .ops.elementwise import derivative_notes

    passes = False if a.no_opt else (a.passes or True)
    if a.optimizer is not None:  # the training step's module: sb.train_step
        return _codegen_step(a, passes)
    step_only = _given_step_options(a)
    if step_only:  # a training step's option, and no training step
        opt = step_only[0]
        why = ("precision is a training step's (mixed: float16 with float32 master parameters "
               "and loss scaling); --dtype sets forward and value_and_grad's"
               if opt == "--precision" else "it is a training step's option")
        print(f"error: {opt} needs --optimizer: {why}. Add --optimizer sgd|momentum|adam to "
              f"write the training step, or drop {opt}.", file=sys.stderr)
        return 2
    explain: list | None = [] if a.explain else None
    src = source(_graph(a), a.of, _names(a.wrt), dtype=a.dtype or "float64", optimize=passes,
                 explain=explain, checkpoint=_checkpoint(a.checkpoint), backend=a.backend)
    if explain is not None:
        for name, removed, added in explain:
            if name.startswith("memory plan"):  # the planner's decisions, with their reasons
                print(f"== {name}")
                print("".join(f"  {ln}\n" for ln in added), end="")
                continue
            print(f"== pass {name}: {len(removed)} line(s) removed, {len(added)} added")
            print("".join(f"  - {ln}\n" for ln in removed) + "".join(f"  + {ln}\n" for ln in added),
                  end="")
        for op, why in derivative_notes(_graph(a)):
            print(f"== derivative of {op}: in x, not through its output ({why})")
        if not a.output:
            return 0
    _write(src, a.output)
    return 0


def _codegen_step(a, passes) -> int:
    """``codegen --optimizer``: the module of :func:`~symbackprop.codegen.train.train_step`
    (forward, backward, update, train_step) instead of the gradient module."""
    from .codegen.train import train_step

    if a.explain:
        print("error: --explain shows the passes of the gradient module, not of the training "
              "step: drop --explain, or drop --optimizer.", file=sys.stderr)
        return 2
    return _write_source(lambda: train_step(
        _graph(a), a.of, wrt=_names(a.wrt), optimize=passes,
        checkpoint=_checkpoint(a.checkpoint), backend=a.backend, **_step_options(a)), a.output)


def cmd_check(a) -> int:
    from .testing import check_grad

    g = _graph(a)
    report = check_grad(g, a.of, _names(a.wrt), at=parse_at(a.at), sizes={"N": a.batch},
                        tol=a.tol, seed=a.seed)
    print(report)
    return 0 if report.ok else 1


def cmd_train_script(a) -> int:
    from .codegen.script import check_script_backend, training_script

    check_script_backend(a.backend)  # before any option: none applies to no script
    return _write_source(lambda: training_script(
        _graph(a), a.of, epochs=a.epochs, batch_size=a.batch_size, seed=a.seed,
        wrt=_names(a.wrt), features=a.features, target=a.target,
        checkpoint=_checkpoint(a.checkpoint), distributed=a.distributed, backend=a.backend,
        **_step_options(a)), a.output)


def _write_source(make, output) -> int:
    """Write the source that ``make()`` returns to ``output`` (stdout without one). A plain
    ValueError (options that do not go together) is one line, exit 2; symbackprop's own
    errors go on to :func:`main`, which prints them."""
    try:
        src = make()
    except ValueError as e:
        if isinstance(e, SymbackpropError):
            raise
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    _write(src, output)
    return 0


# the training step's options (_step_args) that codegen takes only with --optimizer
_STEP_OPTIONS = ("lr", "momentum", "beta1", "beta2", "eps", "precision", "growth_interval",
                 "fuse_update")


def _given_step_options(a) -> list[str]:
    """The flags of :data:`_STEP_OPTIONS` given on the command line."""
    return [f"--{k.replace('_', '-')}" for k in _STEP_OPTIONS
            if getattr(a, k) not in (None, False)]


def _step_options(a) -> dict:
    """The training step's keyword arguments from the options of :func:`_step_args`
    (``train_step``, ``training_script``); ``ValueError`` for options that do not go
    together: a hyper-parameter of another optimizer, ``--growth-interval`` without
    ``--precision mixed``, ``--dtype`` disagreeing with ``--precision``."""
    from .codegen.mixed import GROWTH_INTERVAL, HALF
    from .codegen.optimizers import OPTIMIZERS

    hyper = {k: getattr(a, k) for k in OPTIMIZERS[a.optimizer].hyper
             if k != "lr" and getattr(a, k, None) is not None}
    others = [k for k in ("momentum", "beta1", "beta2", "eps")
              if getattr(a, k) is not None and k not in hyper]
    if others:
        raise ValueError(f"--{others[0]} does not apply to --optimizer {a.optimizer}.")
    if a.growth_interval is not None and a.precision != "mixed":
        raise ValueError(f"--growth-interval {a.growth_interval} sets the loss scaler of "
                         "--precision mixed" + (f", and --precision {a.precision} has none"
                                                if a.precision else "")
                         + ": add --precision mixed, or drop --growth-interval.")
    if a.dtype is not None and a.precision in HALF:
        raise ValueError(f"--dtype {a.dtype} cannot go with --precision {a.precision}, which "
                         f"computes in {HALF[a.precision]} with float32 master parameters: "
                         "drop --dtype.")
    if a.dtype is not None and a.precision is not None and a.dtype != a.precision:
        raise ValueError(f"--dtype {a.dtype} and --precision {a.precision} disagree: give one "
                         f"of them (--precision {a.precision} alone computes in "
                         f"{a.precision}).")
    return dict(optimizer=a.optimizer, lr=a.lr, dtype=a.dtype or "float64",
                precision=a.precision, fuse_update=a.fuse_update,
                growth_interval=GROWTH_INTERVAL if a.growth_interval is None
                else a.growth_interval, **hyper)


def cmd_derive(a) -> int:
    from .derivation import derive

    d = derive(_graph(a), a.of, _names(a.wrt), at=parse_at(a.at) or None)
    out = {"text": d.text, "latex": d.latex, "markdown": d.markdown}[a.format]()
    _write(out if out.endswith("\n") else out + "\n", a.output)
    _warn(d.warnings)
    return 0


def _warn(warnings: list) -> None:
    """A derivation's values at the edge of a domain (∞, undefined), one line each."""
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)


def cmd_render(a) -> int:
    from .render import render, write_diagram

    obj, warnings = _graph(a), []
    if a.kind == "derivation":  # derived here, so that its warnings can be printed
        from .derivation import derive

        obj = derive(obj, a.of, _names(a.wrt), at=parse_at(a.at))
        warnings = obj.warnings
    diagram = render(obj, a.kind, of=a.of, wrt=_names(a.wrt), at=parse_at(a.at),
                     collapse=a.collapse or None, group=a.group or None, title=a.title)
    _warn(warnings)
    if a.output in (None, "-"):
        sys.stdout.write(diagram.source)
        return 0
    write_diagram(diagram, a.output)  # GraphvizNotFoundError still writes the .dot
    print(f"wrote {a.output}", file=sys.stderr)
    return 0


def cmd_cost(a) -> int:
    import json

    from .cost import cost

    if a.batch < 1:
        raise GraphError(f"--batch {a.batch}: expected a positive number of examples.")
    c = cost(_graph(a), batch=a.batch, of=a.of, wrt=_names(a.wrt), dtype=a.dtype,
             checkpoint=_checkpoint(a.checkpoint), measure=a.measure)
    out = {"text": c.text, "markdown": c.markdown,
           "json": lambda: json.dumps(c.to_dict(), indent=2) + "\n"}[a.format]()
    _write(out, a.output)
    return 0


def _checkpoint(text: str | None):
    """``--checkpoint sqrt|none|h3,h6`` -> the ``checkpoint=`` argument."""
    if text is None or text in ("sqrt", "none"):
        return text or "none"
    return _names(text)


def _checkpoint_arg(c, what="gradient checkpointing: recompute forward values in the "
                    "backward instead of keeping them") -> None:
    c.add_argument("--checkpoint", metavar="sqrt|none|NODES",
                   help=f"{what}: sqrt (√n segments), none, or comma-separated nodes to keep")


def _dtype_arg(c) -> None:
    c.add_argument("--dtype", choices=["float64", "float32"],
                   help="the dtype of the arrays (default float64); --precision float64 or "
                   "float32 sets it too (given both, they must agree); --precision mixed or "
                   "bfloat16 takes no --dtype")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Fills ``{bfloat16_backends}`` in an option's help when the help is printed, not when
    the parser is built: the list is read from the backends' records, and loading those
    imports JAX and PyTorch where installed (seconds on every command otherwise)."""

    def _get_help_string(self, action):
        text = super()._get_help_string(action)
        if "{bfloat16_backends}" in text:
            from .codegen.mixed import precision_backends

            text = text.replace("{bfloat16_backends}",
                                " or ".join(precision_backends("bfloat16")))
        return text


def _step_args(c, optimizer: str | None, what: str) -> None:
    """The training step's options (``sb.train_step``'s), shared by ``train-script`` and
    ``codegen --optimizer``: the update rule and its hyper-parameters, the fused update,
    the precision and the loss scaler's growth interval."""
    c.add_argument("--optimizer", default=optimizer, choices=["sgd", "momentum", "adam"],
                   help=what)
    c.add_argument("--lr", type=float, help="learning rate (default 0.01; adam 0.001)")
    c.add_argument("--momentum", type=float, help="momentum: velocity decay (0.9)")
    c.add_argument("--beta1", type=float, help="adam: first-moment decay (0.9)")
    c.add_argument("--beta2", type=float, help="adam: second-moment decay (0.999)")
    c.add_argument("--eps", type=float, help="adam: denominator epsilon (1e-8)")
    c.add_argument("--fuse-update", action="store_true",
                   help="apply each parameter's update in the backward sweep as soon as its "
                   "gradient is final: no gradient kept to the end of the step (with "
                   "--checkpoint sqrt, about one layer's); a nan/inf gradient leaves a "
                   "partial step")
    c.add_argument("--precision", metavar="{float64,float32,mixed,bfloat16}",
                   help="float64 or float32: as --dtype; mixed: float16 forward and backward, "
                   "float32 master parameters, dynamic loss scaling (NumPy's float16 is "
                   "emulated on CPUs and slow: for correctness and the lesson; the speed "
                   "comes on a GPU backend); bfloat16 (--backend {bfloat16_backends}): bfloat16 "
                   "forward and backward, float32 masters, no loss scaling (default: --dtype)")
    c.add_argument("--growth-interval", type=int, metavar="K",
                   help="--precision mixed: good steps before the loss scale doubles (2000)")


COMPARE_KEYS = ("activation", "model", "init")


def _variants(a) -> dict:
    """label -> (graph, init) for ``flow --compare KEY=V1,V2`` (or the SPEC alone)."""
    from .flow import INITS, MODELS, mlp_variant

    if not a.compare:
        return {"": (_graph(a), a.init)}
    key, eq, values = a.compare.partition("=")
    names = _names(values) if eq else []
    if key not in COMPARE_KEYS or not names:
        raise ParseError(f"--compare {a.compare!r}: expected KEY=V1,V2,... with KEY one of "
                         f"{', '.join(COMPARE_KEYS)}, e.g. --compare activation=sigmoid,tanh,relu.")
    if key == "init":
        bad = [v for v in names if v not in INITS]
        if bad:
            raise ParseError(f"--compare init={values}: {bad[0]!r} is not one of "
                             f"{', '.join(INITS)}.")
        g = _graph(a)
        return {v: (g, v) for v in names}
    if not a.spec.startswith("mlp:"):
        raise ParseError(f"--compare {key}=... needs an mlp: SPEC such as mlp:64-64*50-10 "
                         f"(its sizes make each variant); got {a.spec!r}.")
    sizes = mlp_sizes(a.spec)
    out = {}
    for v in names:
        if key == "model" and v not in MODELS:
            raise ParseError(f"--compare model={values}: {v!r} is not one of "
                             f"{', '.join(MODELS)}.")
        try:
            out[v] = (mlp_variant(sizes, v if key == "model" else "mlp",
                                  v if key == "activation" else a.activation, a.loss), a.init)
        except SymbackpropError as e:  # an unknown activation: name the option
            raise ParseError(f"--compare {key}={values}: {' '.join(str(e).split())}") from None
    return out


def cmd_flow(a) -> int:
    from .flow import FlowComparison, gradient_flow

    if a.plot:  # before the work: a missing extra or a bad extension fails at once
        from .display.charts import check_plot_path

        check_plot_path(a.plot)
    reports = [gradient_flow(g, data=a.data, batch=a.batch, init=init, seed=a.seed,
                             of=a.of, label=label, precision=a.precision)
               for label, (g, init) in _variants(a).items()]
    report = reports[0] if len(reports) == 1 else FlowComparison(reports)
    if a.format == "json":
        import json

        text = json.dumps(report.as_dict(), indent=1, allow_nan=True) + "\n"
    else:
        text = report.text() if a.format == "text" else report.markdown()
    _write(text, a.output)
    if a.plot:
        report.chart(a.plot)
        print(f"wrote {a.plot}", file=sys.stderr)
    return 0


def cmd_report(a) -> int:
    from .report import report

    if a.batch < 1:
        raise GraphError(f"--batch {a.batch}: expected a positive number of examples.")
    r = report(_graph(a), at=parse_at(a.at), of=a.of, wrt=_names(a.wrt), batch=a.batch,
               seed=a.seed, title=a.title or a.spec)
    _write(r.html(), a.output)
    _warn(r.derivation.warnings)
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse's parser whose usage errors are one line (argparse prints its usage block
    first), exit status 2; the subcommands' parsers are of this class too."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="symbackprop", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="A compiler for backpropagation: symbolic gradients of a network,\n"
        "step-by-step derivations, standalone code for an array library (--backend) and\n"
        "Graphviz diagrams.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, text, description=None):
        return sub.add_parser(name, help=text, description=description or text[0].upper()
                              + text[1:] + ".", epilog=SPECS, formatter_class=_HelpFormatter)

    c = command("codegen", "write forward/backward code for an array library (--backend), or "
                "with --optimizer a training step", description=CODEGEN)
    _spec_args(c)
    c.add_argument("-o", "--output", help="output .py file (default: stdout)")
    _dtype_arg(c)
    c.add_argument("--backend", default="numpy",
                   help="the array library: numpy (default), jax (functional, jax.jit), "
                   "array_api (the Python array API standard only), cupy (numpy's code on the GPU) "
                   "or torch (under "
                   "torch.inference_mode(), on the tensors' device)")
    c.add_argument("--no-opt", action="store_true", help="skip the optimization passes")
    c.add_argument("--passes", help="comma-separated passes to run, in order "
                   "(default: simplify,fold,cse,fuse,dce)")
    _checkpoint_arg(c)
    c.add_argument("--explain", action="store_true",
                   help="print what each pass changed and the memory planner's decisions, "
                   "folds included (the code goes to -o only)")
    _step_args(c, None, "write the training step's module (sb.train_step: forward, backward, "
               "update, train_step) with this update rule, instead of forward and "
               "value_and_grad; the options below need it")
    c.set_defaults(run=cmd_codegen)

    c = command("check", "compare gradients with finite differences on random inputs")
    _spec_args(c)
    c.add_argument("--at", help="fixed values, e.g. w=2,x=3 (others are random)")
    c.add_argument("--batch", type=int, default=4, help="size N of random batches (default 4)")
    c.add_argument("--tol", type=float, default=1e-5, help="largest relative error (1e-5)")
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(run=cmd_check)

    c = command("train-script", "write a standalone training script (NumPy, or --backend)")
    _spec_args(c)
    c.add_argument("-o", "--output", help="output .py file (default: stdout)")
    _step_args(c, "sgd", "update rule (default sgd)")
    c.add_argument("--epochs", type=int, default=10, help="the script's default (10)")
    c.add_argument("--batch-size", type=int, default=32, help="the script's default (32)")
    c.add_argument("--seed", type=int, default=0, help="the script's default seed (0)")
    _dtype_arg(c)
    c.add_argument("--features", help="the input fed from the data's X (default: inferred)")
    c.add_argument("--target", help="the input fed from the data's y (default: inferred)")
    c.add_argument("--backend", default="numpy",
                   help="numpy (default), jax: a JAX script splitting every batch over all "
                   "devices (jax.sharding), on several hosts with jax.distributed, torch: "
                   "a PyTorch script on --device, or cupy: the NumPy script with its step on "
                   "the GPU")
    _checkpoint_arg(c)
    c.add_argument("--distributed", choices=["mpi"],
                   help="mpi: a data-parallel script for `mpirun -n K python train.py` "
                   "(mpi4py: pip install symbackprop[distributed])")
    c.set_defaults(run=cmd_train_script)

    c = command("cost", "count what a training step costs: parameters, FLOPs, memory")
    _spec_args(c)
    c.add_argument("--batch", type=int, default=64, help="the batch size N (default 64)")
    c.add_argument("--measure", action="store_true",
                   help="also time the generated forward and forward+backward")
    c.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    _checkpoint_arg(c, "count with gradient checkpointing")
    c.add_argument("--format", default="text", choices=["text", "markdown", "json"])
    c.add_argument("-o", "--output", help="output file (default: stdout)")
    c.set_defaults(run=cmd_cost)

    c = command("derive", "work the chain rule step by step, with numbers")
    _spec_args(c)
    c.add_argument("--at", help="the point, e.g. w=2,x=3,y=10 (scalar graphs; exact numbers)")
    c.add_argument("--format", default="text", choices=["text", "latex", "markdown"])
    c.add_argument("-o", "--output", help="output file (default: stdout)")
    c.set_defaults(run=cmd_derive)

    c = command("render", "draw the graph, its backward graph or a derivation with Graphviz")
    _spec_args(c)
    c.add_argument("--kind", default="forward",
                   choices=["forward", "backward", "joint", "derivation"],
                   help="the view (default forward)")
    c.add_argument("--at", help="for --kind derivation: the point, e.g. x=1 or w=2,x=3,y=10")
    c.add_argument("--collapse", action="store_true",
                   help="collapse each block (an mlp layer) into one node")
    c.add_argument("--group", action="store_true", help="draw each block as a cluster")
    c.add_argument("--title", help="a caption above the diagram")
    c.add_argument("-o", "--output", help="output .svg, .png, .pdf or .dot (default: DOT "
                   "on stdout)")
    c.set_defaults(run=cmd_render)

    c = command("flow", "measure how gradients flow through each layer, on one batch")
    _spec_args(c)
    c.add_argument("--batch", type=int, default=64, help="size of the random batch (64)")
    c.add_argument("--init", choices=["he", "xavier", "uniform"],
                   help="every weight by this rule (default: He before relu, else Xavier)")
    c.add_argument("--seed", type=int, default=0, help="seed of the weights and the batch")
    c.add_argument("--data", help="an .npz with the inputs by name, or X (and y)")
    c.add_argument("--compare", metavar="KEY=V1,V2",
                   help="variants side by side: activation=sigmoid,tanh,relu, "
                   "model=mlp,residual_mlp,mlp+layer_norm (mlp: SPECs) or init=he,xavier,uniform")
    c.add_argument("--precision", choices=["mixed"],
                   help="mixed: also count the dL/dW entries float16 flushes to zero, without "
                   "and with loss scaling")
    c.add_argument("--format", default="text", choices=["text", "markdown", "json"])
    c.add_argument("--plot", metavar="FILE", help="also write the chart, .svg or .png "
                   "(needs matplotlib: pip install symbackprop[plots])")
    c.add_argument("-o", "--output", help="output file (default: stdout)")
    c.set_defaults(run=cmd_flow)

    c = command("report", "write one self-contained HTML page: diagrams, formulas, the "
                "backward sweep step by step, cost and gradient flow")
    _spec_args(c)
    c.add_argument("--at", help="the point, e.g. x=1 (scalar graphs; arrays get a random batch)")
    c.add_argument("--batch", type=int, default=64, help="batch size N of arrays (default 64)")
    c.add_argument("--seed", type=int, default=0, help="seed of the random batch and weights")
    c.add_argument("--title", help="the page's heading (default: the SPEC)")
    c.add_argument("-o", "--output", help="output .html file (default: stdout)")
    c.set_defaults(run=cmd_report)
    return p


def main(argv=None) -> int:
    """Entry point of the ``symbackprop`` command."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except SymbackpropError as e:
        # cli_message: the same error naming command-line flags (--features) where the
        # message names keyword arguments (features=)
        text = getattr(e, "cli_message", None) or str(e)
        print(f"error: {type(e).__name__}: {' '.join(text.split())}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
