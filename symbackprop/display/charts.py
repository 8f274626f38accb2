"""Per-layer charts (matplotlib, an optional extra: ``pip install symbackprop[plots]``).

:func:`layer_chart` draws any per-layer series (gradient norms of a flow report, the
costs of a cost report, ...) as lines on a log axis, one line per series, layers along
the x axis, with horizontal guide lines (the 1e−3 vanishing threshold). It returns SVG
text, or writes an ``.svg`` or ``.png`` file. matplotlib runs on its Agg backend (no
display needed); without matplotlib a :class:`PlotsNotInstalledError` says how to
install it.

In the SVG, each series is a group ``<g id="series-<k>">`` (k = 1, 2, ...) and each guide
``<g id="guide-<k>">``, so a program (a test) can count them.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

from ..errors import SymbackpropError

INSTALL = "pip install symbackprop[plots]"
FORMATS = (".svg", ".png")


class PlotsNotInstalledError(SymbackpropError, ImportError):
    """matplotlib is missing: charts need the ``plots`` extra."""


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise PlotsNotInstalledError(
            f"charts need matplotlib, which is not installed: {INSTALL} (or pip install "
            "'matplotlib>=3.7').") from None
    matplotlib.use("Agg", force=False)  # headless; a notebook's inline backend stays
    import matplotlib.pyplot as plt

    return plt


def check_plot_path(path) -> None:
    """Raise before any work when a chart cannot be written to ``path``: an extension
    other than .svg or .png, or no matplotlib.

    Examples
    --------
    >>> from symbackprop.display.charts import check_plot_path
    >>> check_plot_path("flow.gif")
    Traceback (most recent call last):
    ...
    symbackprop.errors.GraphError: cannot write a chart to 'flow.gif': expected a .svg or .png file.
    """
    from ..errors import GraphError

    if Path(path).suffix.lower() not in FORMATS:
        raise GraphError(f"cannot write a chart to {str(path)!r}: expected a .svg or .png file.")
    _pyplot()


def layer_chart(series: dict, *, ylabel: str = "", title: str = "", guides: dict | None = None,
                path=None, log: bool = True, xlabels=None):
    """A chart of per-layer values, one line per series.

    Parameters
    ----------
    series : dict
        label -> list of values, one per layer (layer 1 first); ``None`` or values that
        are not positive (on a log axis) leave gaps.
    ylabel, title : str
    guides : dict, optional
        label -> y value of a dashed horizontal guide line (``{"vanishing": 1e-3}``).
    path : str or Path, optional
        Write ``.svg`` or ``.png`` there (and return the path); by default return the
        SVG text.
    log : bool
        A log y axis (the default).
    xlabels : list of str, optional
        Tick labels for the layers (default 1, 2, ...).

    Returns
    -------
    str or Path
        The SVG text, or the path written.

    Raises
    ------
    PlotsNotInstalledError
        Without matplotlib.

    Examples
    --------
    >>> from symbackprop.display.charts import layer_chart
    >>> svg = layer_chart({"a": [1e-6, 1e-3, 1], "b": [1, 1, 1]}, guides={"1e-3": 1e-3})
    >>> svg.count('id="series-'), svg.count('id="guide-')
    (2, 1)
    """
    plt = _pyplot()
    depth = max((len(v) for v in series.values()), default=0)
    # text stays text in the SVG (searchable, and the same bytes for the same chart)
    with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": "symbackprop"}):
        fig, ax = plt.subplots(figsize=(min(4 + 0.12 * depth, 12), 3.6), dpi=100)
        return _draw(plt, fig, ax, series, ylabel, title, guides, path, log, xlabels)


def _draw(plt, fig, ax, series, ylabel, title, guides, path, log, xlabels):
    try:
        for k, (label, values) in enumerate(series.items(), 1):
            ys = [math.nan if v is None or not math.isfinite(v) or (log and v <= 0) else v
                  for v in values]
            (line,) = ax.plot(range(1, len(ys) + 1), ys, marker="o", markersize=3,
                              linewidth=1.4, label=str(label) or f"series {k}")
            line.set_gid(f"series-{k}")
        for k, (label, y) in enumerate((guides or {}).items(), 1):
            guide = ax.axhline(y, color="#b91c1c", linestyle="--", linewidth=1, label=label)
            guide.set_gid(f"guide-{k}")
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("layer")
        ax.set_ylabel(ylabel)
        if xlabels is not None:
            ax.set_xticks(range(1, len(xlabels) + 1), list(xlabels))
        if title:
            ax.set_title(title, fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        fig.tight_layout()
        if path is not None:
            path = Path(path)
            if path.suffix.lower() not in FORMATS:
                from ..errors import GraphError

                raise GraphError(f"cannot write a chart to {str(path)!r}: expected a .svg or "
                                 ".png file.")
            meta = {"Date": None} if path.suffix.lower() == ".svg" else {}
            fig.savefig(path, metadata=meta)
            return path
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None})
        return buf.getvalue()
    finally:
        plt.close(fig)


__all__ = ["INSTALL", "PlotsNotInstalledError", "check_plot_path", "layer_chart"]
