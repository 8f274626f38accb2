"""Charts of per-layer series (matplotlib, the plots extra) and the legible diagram of a
50-layer network with its gradient flow (issue 14, point 3)."""

from __future__ import annotations

import builtins
import re
import shutil
import xml.etree.ElementTree as ET

import pytest

import symbackprop as sb
from symbackprop.cli import load_spec, main
from symbackprop.display.charts import PlotsNotInstalledError, layer_chart
from symbackprop.flow import compare
from symbackprop.render import _heat, svg

pytest.importorskip("matplotlib")
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz 'dot' missing")
SVG = "{http://www.w3.org/2000/svg}"


def series_groups(svg_text: str) -> dict:
    """id -> element of each ``<g id="series-k">`` / ``guide-k`` group of the SVG."""
    root = ET.fromstring(svg_text)
    return {g.get("id"): g for g in root.iter(f"{SVG}g")
            if re.fullmatch(r"(series|guide)-\d+", g.get("id") or "")}


def test_cli_plot_writes_one_series_per_variant(tmp_path, capsys):
    out = tmp_path / "flow.svg"
    assert main(["flow", "mlp:8-8*10-3", "--batch", "16", "--plot", str(out),
                 "--compare", "activation=sigmoid,tanh,relu"]) == 0
    svg = out.read_text()
    groups = series_groups(svg)
    assert sorted(groups) == ["guide-1", "series-1", "series-2", "series-3"]
    for k in (1, 2, 3):  # each series is one line of 11 points (one per layer)
        path = groups[f"series-{k}"].find(f"{SVG}path")
        assert path is not None and len(re.findall(r"[ML]\s*[-\d.]+\s+[-\d.]+",
                                                   path.get("d"))) == 11
    texts = "".join(t.text or "" for t in ET.fromstring(svg).iter(f"{SVG}text"))
    for label in ("sigmoid", "tanh", "relu", "vanishing"):
        assert label in texts
    assert "wrote" in capsys.readouterr().err


def test_png_and_the_notebook_display(tmp_path):
    r = sb.gradient_flow(sb.models.mlp([6, 6, 6, 3]), batch=8)
    png = r.chart(tmp_path / "flow.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = r._repr_svg_()
    assert svg.lstrip().startswith("<?xml") and len(series_groups(svg)) == 2
    c = compare({"a": sb.models.mlp([6, 6, 3]), "b": sb.models.mlp([6, 6, 3], activation="tanh")},
                batch=8)
    assert sum(k.startswith("series") for k in series_groups(c._repr_svg_())) == 2
    assert r.chart() == r.chart()  # the same chart, the same bytes


def test_series_from_any_report_with_gaps():
    """The chart takes plain per-layer series (a cost report's too); a value that is not
    positive leaves a gap on the log axis instead of failing."""
    svg = layer_chart({"flops": [10.0, 0.0, None, 5.0]}, ylabel="FLOPs", log=True)
    assert list(series_groups(svg)) == ["series-1"]


def test_without_matplotlib_one_line_says_how_to_install(monkeypatch, capsys):
    real = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(PlotsNotInstalledError, match=r"pip install symbackprop\[plots\]"):
        layer_chart({"a": [1.0]})
    r = sb.gradient_flow(sb.models.mlp([4, 4, 2]), batch=4)
    assert r._repr_svg_() is None  # a notebook falls back to the text
    assert main(["flow", "mlp:4-4-2", "--plot", "x.svg"]) == 2
    err = capsys.readouterr().err
    assert "pip install symbackprop[plots]" in err and len(err.strip().splitlines()) == 1


# -- the diagram of a 50-layer network ------------------------------------------------------
def svg_size(svg: str) -> tuple[float, float]:
    w, h = re.search(r'<svg width="([\d.]+)pt" height="([\d.]+)pt"', svg).groups()
    return float(w), float(h)


@needs_dot
@pytest.mark.parametrize("kind", ["forward", "joint"])
def test_fifty_layers_with_their_flow_stay_legible(kind):
    g = load_spec("mlp:64-64*50-10")
    flow = sb.gradient_flow(g, batch=16)
    d = sb.render(g, kind, grads=flow)
    image = svg(d)
    w, h = svg_size(image)
    # one cluster for layers 2..50: about 1,300 by 350 points, where the collapsed
    # diagram without the flow is a strip of 51 clusters, about 11,000 points wide
    assert w < 2000 and h < 600, (w, h)
    assert "layers 2..50" in image and "× 49: layer2 … layer50" in image
    cells = d.source.count('WIDTH="6" HEIGHT="14" FIXEDSIZE="TRUE"')
    assert cells == 49  # the strip: one cell per collapsed layer
    plain_w, _ = svg_size(svg(sb.render(g, kind, collapse=True)))
    assert plain_w > 4 * w


def test_strip_cells_follow_the_gradient_scale():
    """The cells are coloured by each layer's max|∂L/∂W| on the legend's scale: a
    vanishing sigmoid net's first collapsed layers are pale, its last ones darker."""
    g = sb.models.mlp([16] + [16] * 12 + [4], activation="sigmoid")
    flow = sb.gradient_flow(g, batch=16)
    src = sb.render(g, grads=flow).source
    colours = re.findall(r'<TD BGCOLOR="(#[0-9a-f]{6})" WIDTH="6"', src)
    assert len(colours) == 11  # layers 2..12
    by_name = {s.name: s.grad_max for s in flow.layers}
    assert colours == [_heat(by_name[f"layer{k}"])[0] for k in range(2, 13)]
    assert colours[0] != colours[-1]
