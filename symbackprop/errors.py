"""Exception classes.

Every error names the node, says what was expected and what was found, and
how to fix it. Each class also subclasses the matching builtin, so callers
can catch ``ValueError`` or ``KeyError`` as they would from NumPy.
"""

from __future__ import annotations


class SymbackpropError(Exception):
    """Base class of every error raised by symbackprop."""


class GraphError(SymbackpropError, ValueError):
    """The graph is malformed (duplicate names, bad roles, bad arguments)."""


class CycleError(GraphError):
    """The graph has a cycle; the message names the nodes on it."""


class UnknownOpError(SymbackpropError, KeyError):
    """A node uses an op that is not registered."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class ArityError(SymbackpropError, TypeError):
    """An op got the wrong number of arguments."""


class ShapeError(SymbackpropError, ValueError):
    """Argument shapes do not fit the op."""


class GradError(SymbackpropError, ValueError):
    """A gradient cannot be taken as asked (non-scalar loss, unknown wrt, ...)."""


class ParseError(SymbackpropError, SyntaxError):
    """A statement string or a JSON file could not be read."""


class CodegenError(SymbackpropError, NotImplementedError):
    """An op has no NumPy emitter."""


class GraphvizError(SymbackpropError, RuntimeError):
    """Graphviz's ``dot`` program failed on a diagram."""


class GraphvizNotFoundError(GraphvizError):
    """Graphviz's ``dot`` program is not installed; the ``.dot`` file is written anyway."""


class NumericalWarning(UserWarning):
    """Generated code gives NaN or infinity where the mathematics has a finite value."""
