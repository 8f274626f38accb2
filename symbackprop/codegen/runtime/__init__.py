"""The fixed parts of generated modules, as ordinary Python that ruff checks and tests run.

Each module here is importable and runnable on its own (it defines the globals the
generated code defines, such as ``DTYPE``); code generation copies the source of the
functions it needs (:func:`source`) instead of filling string templates.
"""

from __future__ import annotations

import inspect
import textwrap


def source(*objects) -> str:
    """The source of functions or classes, dedented, two blank lines apart, ending in a
    newline: what a generated module carries of them.

    Examples
    --------
    >>> def _twice(x):
    ...     return 2 * x
    >>> print(source(_twice))
    def _twice(x):
        return 2 * x
    <BLANKLINE>
    """
    return "\n\n".join(textwrap.dedent(inspect.getsource(o)).rstrip("\n") + "\n"
                       for o in objects)
