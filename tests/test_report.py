"""The report page (``sb.report``, ``symbackprop report``): one self-contained HTML file.

Without a browser: the page parses, fetches nothing (no remote URL, no ``src``, links only
to its own sections), holds the three diagrams as inline SVG, the formulas as MathML, and
the steps' data, whose every mark names a node or an edge that its diagram draws.

In a browser (Debian's ``chromium`` driven by Selenium through Debian's ``chromedriver``;
skipped with a one-line reason where one is missing): the page loads with no console
error, and stepping marks the node and its edges and shows the lesson's numbers,
10, then 10, then 20; a screenshot is written.
"""

from __future__ import annotations

import html.parser
import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import symbackprop as sb
from symbackprop.flow import FlowReport

report_module = importlib.import_module("symbackprop.report")  # sb.report is the function

CHAIN = "a = 2*x; b = a + 3; c = b**2"  # the lessons' chain: dc/dx = 10 · 1 · 2 = 20
ROOT = Path(__file__).resolve().parent.parent
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz 'dot' missing")


class Page(html.parser.HTMLParser):
    """Every tag and attribute of a page, the text of its scripts and the SVGs' text."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags, self.attrs, self.scripts, self._script = [], [], [], None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += [(tag, k, v or "") for k, v in attrs]
        if tag == "script":
            self._script = [dict(attrs).get("type", ""), ""]

    def handle_data(self, data):
        if self._script is not None:
            self._script[1] += data

    def handle_endtag(self, tag):
        if tag == "script" and self._script is not None:
            self.scripts.append(tuple(self._script))
            self._script = None


def _svgs(text: str) -> dict:
    """``{diagram: svg text}`` of the page's figures."""
    return dict(re.findall(r'<figure class="diagram" data-diagram="(\w+)">(<svg.*?</svg>)',
                           text, flags=re.DOTALL))


def _titles(svg: str) -> tuple[set, set]:
    """The node IDs and the edges (unordered pairs, ports dropped) an SVG draws."""
    root = ET.fromstring(svg)
    nodes, edges = set(), set()
    for g in root.iter("g"):
        title = g.find("title")
        if title is None:
            continue
        if g.get("class") == "node":
            nodes.add(title.text)
        elif g.get("class") == "edge":
            tail, head = (p.split(":")[0] for p in title.text.split("->"))
            edges.add(frozenset((tail, head)))
    return nodes, edges


@pytest.fixture(scope="module")
def chain_page() -> str:
    return sb.report(sb.parse(CHAIN), at={"x": 1}, title="the lessons' chain").html()


@pytest.fixture(scope="module")
def mlp_report():
    return sb.report(sb.models.mlp([4, 3, 2]), batch=8)


# -- the page, read as text ---------------------------------------------------------------------
def test_the_page_fetches_nothing(chain_page, mlp_report):
    for text in (chain_page, mlp_report.html()):
        assert "http://" not in text and "https://" not in text
        assert not re.search(r"url\((?!#)|@import", text)  # CSS fetches nothing either
        page = Page(text)
        assert not [a for a in page.attrs if a[1] == "src"]
        assert {v[:1] for _, k, v in page.attrs if k == "href"} == {"#"}  # its own sections
        assert not {"link", "iframe", "img", "object", "embed", "base"} & set(page.tags)
        kinds = [kind for kind, _ in page.scripts]
        assert kinds == ["application/json", ""]  # the data, then the one inline script


def test_the_page_parses_and_holds_svgs_and_mathml(chain_page):
    page = Page(chain_page)
    assert page.tags[:2] == ["html", "head"] and "svg" in page.tags and "math" in page.tags
    svgs = _svgs(chain_page)
    assert sorted(svgs) == ["derivation", "forward", "joint"] if shutil.which("dot") else []
    for s in svgs.values():
        ET.fromstring(s)  # well-formed
    ids = re.findall(r'\bid="([^"]+)"', chain_page)
    assert len(ids) == len(set(ids))  # the three drawings' IDs are kept apart
    # the formulas: ∂c/∂b = 2b·δ_c, as MathML (a fraction of two ∂s, then 2, b, δ with c)
    grads = sb.grad(sb.parse(CHAIN), wrt="x")
    assert chain_page.count("<math") == 2 * len(grads.nodes)  # the steps and the table
    assert ('<mfrac><mrow><mo>&#8706;</mo><mi>c</mi></mrow><mrow><mo>&#8706;</mo><mi>b</mi>'
            '</mrow></mfrac><mo>=</mo><mrow><mn>2</mn><mo>&InvisibleTimes;</mo><mi>b</mi>'
            '<mo>&InvisibleTimes;</mo><msub><mi>&#948;</mi><mi>c</mi></msub></mrow>') in chain_page
    assert "2b·δ_c" in chain_page  # and its text


def test_the_steps_are_the_lessons_numbers(chain_page):
    data = json.loads(Page(chain_page).scripts[0][1])
    steps = data["steps"]
    assert [s["value"] for s in steps] == ["1", "10", "10", "20"]
    assert [s["node"] for s in steps] == ["c", "b", "a", "x"]
    assert steps[3]["chain"] == "dc/da · da/dx = 10 · 2 = 20"
    assert steps[2]["marks"]["derivation"] == {"nodes": ["a"], "edges": [["a", "b"]]}


@needs_dot
@pytest.mark.parametrize("which", ["chain", "mlp"])
def test_every_mark_names_something_drawn(which, chain_page, mlp_report):
    text = chain_page if which == "chain" else mlp_report.html()
    svgs = {k: _titles(s) for k, s in _svgs(text).items()}
    steps = json.loads(Page(text).scripts[0][1])["steps"]
    assert steps
    for s in steps:
        for key, marks in s["marks"].items():
            nodes, edges = svgs[key]
            assert marks["nodes"] and set(marks["nodes"]) <= nodes, (s["node"], key)
            assert {frozenset(e) for e in marks["edges"]} <= edges, (s["node"], key)
    # in the joint graph a step marks the node's adjoint too: ∂c/∂x is dx, fed by db
    x = steps[-1] if which == "chain" else None
    if x is not None:
        assert x["marks"]["joint"] == {"nodes": ["x", "dx"], "edges": [["db", "dx"], ["x", "dx"]]}


def test_sections_that_do_not_apply_say_why(chain_page, mlp_report):
    assert "every value of this graph is a scalar" in chain_page
    assert "no layers of weights fed by array inputs" in chain_page
    page = mlp_report.html()
    assert 'class="skipped"' not in page
    params = 4 * 3 + 3 + 3 * 2 + 2
    _, rows = mlp_report.cost.table()
    assert rows[-1][:2] == ["total", f"{params:,}"]
    assert f"<td>total</td><td class=num>{params}</td>" in page
    assert mlp_report.flow is not None and len(mlp_report.flow.layers) == 2
    if importlib.util.find_spec("matplotlib") is not None:
        assert 'id="chart-series-1"' in page and 'id="chart-guide-1"' in page


def test_without_dot_or_matplotlib_the_page_says_how(monkeypatch):
    monkeypatch.setattr(report_module, "svg", lambda diagram: None)  # as render.svg without dot

    def no_chart(self, path=None, what="ratio"):
        from symbackprop.display.charts import PlotsNotInstalledError

        raise PlotsNotInstalledError("charts need matplotlib: pip install symbackprop[plots]")
    monkeypatch.setattr(FlowReport, "chart", no_chart)
    r = sb.report(sb.models.mlp([4, 3, 2]), batch=4)
    page = r.html()
    assert "<svg" not in page and set(r.diagrams.values()) == {None}
    assert "Graphviz&#x27;s dot program is not installed" in page
    assert "pip install symbackprop[plots]" in page
    assert "<math" in page and 'id="next"' in page  # the formulas and the steps remain


def test_report_options():
    g = sb.parse("L = (w*x - y)**2")
    r = sb.report(g, at={"w": 2, "x": 3, "y": 10}, wrt="w")
    assert [s["value"] for s in r.steps()] == ["1", "−8", "−8", "−24"]
    formulas = sb.report(g, wrt="w").steps()  # no point: the steps show formulas
    assert formulas[1]["value"] == "2δ_L·(w·x − y)"
    with pytest.raises(sb.GraphError, match="has shape"):
        sb.report(sb.models.mlp([4, 3, 2]), at={"W1": 2})
    with pytest.raises(sb.GraphError, match="batch"):
        sb.report(g, batch=0)
    with pytest.raises(sb.GradError, match="not in the graph"):
        sb.report(g, at={"q": 1})


# -- the command ----------------------------------------------------------------------------------
def _cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "symbackprop.cli", "report", *args],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=120,
                          check=False)


def test_cli_writes_the_page(tmp_path):
    r = _cli(CHAIN, "--at", "x=1", "-o", "report.html", cwd=tmp_path)
    assert r.returncode == 0 and r.stderr.strip() == "wrote report.html"
    text = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and "<h1>" + CHAIN.replace("*", "*") in text


@pytest.mark.parametrize("args, words", [
    (["mlp:4-3-2", "--at", "W1=2"], "has shape (4, 3)"),
    ([CHAIN, "--at", "x=1", "--batch", "0"], "--batch 0"),
    ([CHAIN, "--at", "q=1"], "'q', which is not in the graph"),
    ([CHAIN, "--at", "x"], "expected name=number pairs"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, args, words):
    r = _cli(*args, "-o", "r.html", cwd=tmp_path)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and words in r.stderr, r.stderr
    assert not (tmp_path / "r.html").exists()


# -- in a real browser ----------------------------------------------------------------------------
def _missing() -> str | None:
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (pip install symbackprop[dev])"
    if _chromium() is None:
        return "no Chromium (make test installs Debian's chromium with apt-get)"
    if _driver() is None:
        return "no chromedriver (make test installs Debian's chromium-driver with apt-get)"
    return None


def _chromium():
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)


def _driver():
    return shutil.which("chromedriver") or next(
        (p for p in ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")
         if os.access(p, os.X_OK)), None)


@pytest.fixture(scope="module")
def browser():
    missing = _missing()
    if missing:
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _chromium()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000", "--no-first-run", "--disable-extensions",
                "--disable-background-networking"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # the driver is given: Selenium Manager never runs, so nothing is downloaded
    driver = webdriver.Chrome(options=options, service=Service(_driver()))
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(10)
    driver.implicitly_wait(1)
    yield driver
    driver.quit()


def _load(browser, path: Path) -> None:
    browser.get(path.as_uri())
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == [], severe


def _marked(browser, diagram: str, kind: str = "node") -> list[str]:
    return browser.execute_script(
        "return Array.from(document.querySelectorAll("
        "'figure[data-diagram=\"' + arguments[0] + '\"] g.' + arguments[1] + '.sb-current > title'"
        ")).map(function (t) { return t.textContent; });", diagram, kind)


@needs_dot
def test_stepping_in_the_browser(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    path = sb.report(sb.parse(CHAIN), at={"x": 1}, title="the lessons' chain").write(
        tmp_path / "chain.html")
    _load(browser, path)

    def state():
        return (_marked(browser, "derivation"), browser.find_element(By.ID, "step-value").text,
                browser.find_element(By.ID, "step-number").text)

    assert state() == (["c"], "1", "1")
    seen = []
    for _ in range(3):
        browser.find_element(By.ID, "next").click()
        seen.append(state())
    assert seen == [(["b"], "10", "2"), (["a"], "10", "3"), (["x"], "20", "4")]
    assert _marked(browser, "derivation", "edge") == ["x->a", "x->a"]  # the value and the gradient
    assert _marked(browser, "forward") == ["x"] and _marked(browser, "joint") == ["x", "dx"]
    assert browser.find_element(By.ID, "next").get_property("disabled")
    assert browser.find_element(By.CSS_SELECTOR, "#steps li.sb-current").get_attribute(
        "data-step") == "3"
    # the keyboard and Previous walk back
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_LEFT)
    assert state() == (["a"], "10", "3")
    browser.find_element(By.ID, "prev").click()
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_RIGHT)
    assert state() == (["a"], "10", "3")
    # MathML is laid out (Chromium renders MathML Core): a fraction has height
    height = browser.execute_script(
        "return document.querySelector('#steps mfrac').getBoundingClientRect().height;")
    assert height > 10
    browser.find_element(By.ID, "next").click()
    browser.execute_script("document.getElementById('sweep').scrollIntoView();")
    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


@needs_dot
def test_network_page_in_the_browser(browser, tmp_path, mlp_report):
    from selenium.webdriver.common.by import By

    _load(browser, mlp_report.write(tmp_path / "mlp.html"))
    steps = mlp_report.steps()
    assert browser.find_element(By.ID, "step-number").text == "1"
    browser.find_element(By.ID, "next").click()
    assert _marked(browser, "derivation") == [steps[1]["marks"]["derivation"]["nodes"][0]]
    assert browser.find_element(By.ID, "step-value").text == steps[1]["value"]
    if mlp_report.chart is not None:
        assert browser.find_elements(By.CSS_SELECTOR, "figure.chart svg")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#cost tbody tr")) == len(
        mlp_report.cost.rows) + 1
    browser.save_screenshot(str(tmp_path / "mlp.png"))
