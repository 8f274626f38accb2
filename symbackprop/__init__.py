"""symbackprop: a compiler for backpropagation.

Declare a network as a DAG of symbolic ops, get every node's gradient as a
formula and a step-by-step derivation, and generate standalone NumPy code.
"""

from . import models, ops
from .autodiff import Adjoints, differentiate
from .build import parse
from .errors import (
    ArityError,
    CodegenError,
    CycleError,
    GradError,
    GraphError,
    ParseError,
    ShapeError,
    SymbackpropError,
    UnknownOpError,
)
from .graph import Graph, Node, from_networkx, load, save, to_networkx
from .ops.elementwise import elementwise

__version__ = "0.1.0"

# sb.<op> for every built-in op (sb.relu, sb.matmul, sb.softmax_cross_entropy, ...)
for _op in ops.all_ops():
    if _op.name != "ew":
        globals()[_op.name] = ops.builder(_op.name)
del _op

__all__ = [
    "Adjoints", "ArityError", "CodegenError", "CycleError", "GradError", "Graph",
    "GraphError", "Node", "ParseError", "ShapeError", "SymbackpropError", "UnknownOpError",
    "differentiate", "elementwise", "from_networkx", "load", "models", "ops", "parse",
    "save", "to_networkx",
] + [op.name for op in ops.all_ops() if op.name != "ew"]

from .codegen.emit import Compiled, numpy_source
from .codegen.emit import compile_graph as compile

__all__ += ["Compiled", "compile", "numpy_source"]

from . import testing
from .testing import check_grad

__all__ += ["check_grad", "testing"]

from . import optimize

__all__ += ["optimize"]
