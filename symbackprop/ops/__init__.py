"""Op declarations. Importing this package registers every built-in op."""

from . import arrays, conv, elementwise, products, select, tensor  # noqa: F401  (registers the ops)
from . import norm  # noqa: F401  (registers batch_norm, dropout_mask: issue 13)
from .elementwise import elementwise as elementwise_op
from .registry import OpDef, all_ops, builder, get, register

__all__ = ["OpDef", "all_ops", "builder", "elementwise_op", "get", "register"]
