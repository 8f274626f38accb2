"""symbackprop: a compiler for backpropagation.

Declare a network as a DAG of symbolic ops, get every node's gradient as a
formula and a step-by-step derivation, generate standalone NumPy code for
the forward pass, the backward pass and training, and draw it all with
Graphviz. Import it as ``sb``; every op is a function ``sb.<name>``.
"""

__version__ = "0.1.0"  # before the imports: generated code cites it

from . import models, ops, optimize, testing
from .autodiff import Adjoints, differentiate
from .build import parse
from .codegen.compiled import Compiled
from .codegen.compiled import compile_graph as compile
from .codegen.gradient_module import numpy_source, source
from .codegen.script import training_script
from .codegen.train import train_step
from .cost import Cost, cost
from .derivation import Derivation, derive
from .errors import (
    ArityError,
    CodegenError,
    CycleError,
    GradError,
    GraphError,
    NumericalWarning,
    ParseError,
    ShapeError,
    SymbackpropError,
    UnknownOpError,
)
from .flow import gradient_flow
from .formulas import Gradients, grad
from .graph import Graph, Node, from_networkx, load, save, to_networkx
from .ops.elementwise import elementwise
from .render import render, to_dot, write_diagram
from .report import report
from .testing import check_grad

# sb.<op> for every built-in op (sb.relu, sb.matmul, sb.softmax_cross_entropy, ...)
_OP_NAMES = [op.name for op in ops.all_ops() if op.name != "ew"]
globals().update({name: ops.builder(name) for name in _OP_NAMES})
einsum = ops.products.einsum  # sb.einsum(spec, *xs): the spec, then the operand nodes
# list-taking builders and the ops made of others (issue 13)
from .ops.arrays import concat, embedding, split, stack  # noqa: F401  (concat, stack: take lists)
from .ops.norm import batch_norm, dropout  # noqa: F401  (dropout: x times a mask node)

__all__ = [
    "Adjoints", "ArityError", "CodegenError", "Compiled", "Cost", "cost", "CycleError", "Derivation",
    "GradError", "Gradients", "Graph", "GraphError", "Node", "NumericalWarning", "ParseError", "ShapeError",
    "SymbackpropError", "UnknownOpError", "check_grad", "compile", "derive", "differentiate",
    "elementwise", "from_networkx", "grad", "gradient_flow", "load", "models", "numpy_source",
    "ops",
    "optimize", "parse", "render", "report", "save", "source", "testing", "to_dot", "to_networkx",
    "train_step",
    "training_script", "write_diagram",
] + [name for name in _OP_NAMES] + ["embedding", "split", "dropout"]  # every op, sb.relu ...
