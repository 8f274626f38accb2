"""Op declarations. Importing this package registers every built-in op."""

from . import arrays, conv, elementwise, norm, products, select, tensor  # noqa: F401  (registers the ops)
from .elementwise import elementwise as elementwise_op
from .registry import OpDef, all_ops, builder, get, register

__all__ = ["OpDef", "all_ops", "builder", "elementwise_op", "get", "register"]
