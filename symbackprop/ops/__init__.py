"""Op declarations. Importing this package registers every built-in op."""

from . import elementwise, tensor  # noqa: F401  (registers the ops)
from . import select  # noqa: F401  (maximum, where, clip, comparisons, max, logsumexp, ...)
from .elementwise import elementwise as elementwise_op
from .registry import OpDef, all_ops, builder, get, register

__all__ = ["OpDef", "all_ops", "builder", "elementwise_op", "get", "register"]
