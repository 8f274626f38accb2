"""docs/lessons.md runs: its code blocks are executed and their printed output compared with
what the page shows.

How the page is read (the rules are repeated in docs/lessons.md, "How this page is tested"):

* a ```python block runs in one namespace shared by all the page's Python blocks, in page
  order; what it prints must equal the ```text block that follows it (only blank lines
  between), or be empty when no such block follows;
* a ```console block is commands (lines starting with ``$ symbackprop``) each followed by
  its output; each command runs through the CLI's ``main()`` in this process (stdout and
  stderr together, as a terminal shows them), must exit 0, and must print what follows it;
* a ```sh block is commands without shown output: each must exit 0;
* comparison is exact line by line after stripping trailing spaces and trailing blank
  lines, with two normalisations: a line that is exactly ``...`` in the shown output stands
  for any number of lines (as doctest's ELLIPSIS), and in a block marked by the comment
  ``<!-- lessons-test: timings -->`` on the line before its fence, each number followed by a
  unit of time (``61.3 ms``, ``5.7 h``) is replaced by ``<time>`` on both sides, and the
  other numbers of a line that has a time by ``<n>`` (so only the timing lines lose their
  numbers; the lines without a time are compared exactly). Nothing else varies: every network, batch and initialisation on the page is seeded.

Run ``python tests/test_lessons.py`` to print each block's actual output (for editing the
page).
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PAGE = Path(__file__).resolve().parents[1] / "docs" / "lessons.md"
TIMINGS_MARK = "<!-- lessons-test: timings -->"
TIME = re.compile(r"\d[\d,]*(?:\.\d+)?(?:e[+-−]?\d+)?\s?(?:ns|µs|us|ms|s|min|h)\b")
NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?(?:e[+-−]?\d+)?")
BUDGET_S = 20.0  # CPU seconds for the whole page (4-5 s of wall time on a quiet 2-core machine)


@dataclass
class Block:
    kind: str  # "python", "console" or "sh"
    line: int  # 1-based line of the opening fence
    body: list
    expected: list | None  # python: the following ```text block; console: per command
    timings: bool


def blocks(text: str) -> list[Block]:
    """The page's runnable blocks, in order, each with the output it shows."""
    lines = text.splitlines()
    fences = []  # (kind, line index of the fence, body lines, marked)
    i = 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        kind, start = m.group(1), i
        j = i + 1
        while j < len(lines) and lines[j].rstrip() != "```":
            j += 1
        marked = start > 0 and lines[start - 1].strip() == TIMINGS_MARK
        fences.append((kind, start, lines[start + 1:j], marked, j))
        i = j + 1
    out = []
    for k, (kind, start, body, marked, end) in enumerate(fences):
        if kind == "python":
            expected = None
            if k + 1 < len(fences):
                nkind, nstart, nbody, nmarked, _ = fences[k + 1]
                if nkind == "text" and all(not s.strip() for s in lines[end + 1:nstart]):
                    expected, marked = nbody, marked or nmarked
            out.append(Block("python", start + 1, body, expected, marked))
        elif kind in ("console", "sh"):
            out.append(Block(kind, start + 1, body, None, marked))
    return out


def commands(block: Block) -> list[tuple[str, list]]:
    """A console block's (command, shown output) pairs; an sh block's commands."""
    if block.kind == "sh":
        return [(ln.split("  #")[0].strip(), None) for ln in block.body
                if ln.strip() and not ln.lstrip().startswith("#")]
    out = []
    for ln in block.body:
        if ln.startswith("$ "):
            out.append((ln[2:].strip(), []))
        elif out:
            out[-1][1].append(ln)
        elif ln.strip():
            raise AssertionError(f"{PAGE.name}:{block.line}: output before the first '$ ' line")
    return out


def normalise(lines: list, timings: bool) -> list:
    """Trailing spaces and blank lines off; in a block marked for timings, a line with a
    time in it is compared by its words only: each time becomes ``<time>`` and every other
    number on that line ``<n>`` (a repeat count, a forward-pass count derived from a time)."""
    out = [ln.rstrip() for ln in lines]
    if timings:
        out = [NUMBER.sub("<n>", TIME.sub("<time>", ln)) if TIME.search(ln) else ln
               for ln in out]
    while out and not out[-1]:
        out.pop()
    return out


def matches(shown: list, got: list) -> bool:
    """``shown`` equals ``got``, a ``...`` line standing for any run of lines (a glob
    match over lines, ``...`` as ``*``)."""
    si = gi = 0
    star, mark = -1, 0
    while gi < len(got):
        if si < len(shown) and shown[si] == "...":
            star, mark, si = si, gi, si + 1
        elif si < len(shown) and shown[si] == got[gi]:
            si, gi = si + 1, gi + 1
        elif star >= 0:
            mark += 1
            si, gi = star + 1, mark
        else:
            return False
    while si < len(shown) and shown[si] == "...":
        si += 1
    return si == len(shown)


def run_command(cmd: str) -> tuple[int, list]:
    """One ``symbackprop ...`` command through the CLI's main(), stdout and stderr together."""
    from symbackprop.cli import main

    argv = shlex.split(cmd)
    assert argv and argv[0] == "symbackprop", f"only symbackprop commands run here: {cmd!r}"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        rc = main(argv[1:])
    return rc, buf.getvalue().splitlines()


def run_python(code: str, namespace: dict, where: str) -> list:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(code, where, "exec"), namespace)  # noqa: S102 -- the page's own code
    return buf.getvalue().splitlines()


def diff(shown: list, got: list) -> str:
    import difflib

    return "\n".join(difflib.unified_diff(shown, got, "docs/lessons.md", "actual", lineterm=""))


# -- the checker's own rules ------------------------------------------------------------------

def test_the_rules_of_comparison():
    assert matches(["a", "...", "d"], ["a", "b", "c", "d"])
    assert matches(["a", "...", "d"], ["a", "d"])
    assert not matches(["a", "...", "d"], ["a", "b", "c"])
    assert not matches(["a", "b"], ["a", "c"])
    assert not matches(["a"], ["a", "b"])
    assert normalise(["median of 26: forward 61.3 ms, total 5.7 h  ", ""], True) == \
        ["median of <n>: forward <time>, total <time>"]
    # a line without a time is compared as it is, and nothing outside a marked block
    assert normalise(["335,115 forward passes"], True) == ["335,115 forward passes"]
    assert normalise(["forward 61.3 ms"], False) == ["forward 61.3 ms"]
    page = ("x\n```python\nprint(1)\n```\n\n```text\n1\n```\n"
            f"{TIMINGS_MARK}\n```console\n$ symbackprop a\nout\n$ symbackprop b\n```\n")
    py, con = blocks(page)
    assert (py.kind, py.body, py.expected) == ("python", ["print(1)"], ["1"])
    assert con.timings and commands(con) == [("symbackprop a", ["out"]), ("symbackprop b", [])]


# -- the page ---------------------------------------------------------------------------------

def test_the_page_has_what_the_issue_asks_for():
    text = PAGE.read_text()
    for needed in ("symbackprop derive", "symbackprop cost mlp:784-256-256-256-10", "335,114",
                   'symbackprop flow "mlp:64-64*50-10" --compare activation=sigmoid,tanh,relu',
                   "--compare model=mlp,residual_mlp,mlp+layer_norm", "--compare init=",
                   'checkpoint="sqrt"', "symbackprop report"):
        assert needed in text, needed
    kinds = [b.kind for b in blocks(text)]
    assert kinds.count("python") >= 4 and kinds.count("console") >= 4


def test_every_block_runs_and_prints_what_the_page_shows(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything a command writes lands here
    namespace: dict = {"__name__": "lessons"}
    # CPU time, not wall time: a loaded machine (the suite shares it) stretches the wall clock
    # three-fold, but not the work the page asks for
    t0 = time.process_time()
    failures = []
    for b in blocks(PAGE.read_text()):
        where = f"docs/lessons.md:{b.line}"
        if b.kind == "python":
            got = run_python("\n".join(b.body), namespace, where)
            shown = normalise(b.expected or [], b.timings)
            if not matches(shown, normalise(got, b.timings)):
                failures.append(f"{where} (python)\n{diff(shown, normalise(got, b.timings))}")
            continue
        for cmd, shown_lines in commands(b):
            rc, got = run_command(cmd)
            if rc != 0:
                failures.append(f"{where}: `{cmd}` exited {rc}:\n" + "\n".join(got[-5:]))
            elif shown_lines is not None:
                shown = normalise(shown_lines, b.timings)
                if not matches(shown, normalise(got, b.timings)):
                    failures.append(f"{where}: `{cmd}`\n{diff(shown, normalise(got, b.timings))}")
    elapsed = time.process_time() - t0
    assert not failures, "\n\n".join(failures)
    assert elapsed < BUDGET_S, f"the page took {elapsed:.1f} CPU s to run (budget {BUDGET_S:.0f} s)"


if __name__ == "__main__":  # print each block's actual output, for editing the page
    ns: dict = {"__name__": "lessons"}
    for b in blocks(PAGE.read_text()):
        t = time.perf_counter()
        if b.kind == "python":
            print(f"----- {b.line} python\n```text")
            print("\n".join(run_python("\n".join(b.body), ns, f"lessons.md:{b.line}")))
            print("```")
        else:
            print(f"----- {b.line} {b.kind}\n```{b.kind}")
            for cmd, _ in commands(b):
                rc, got = run_command(cmd)
                print(f"$ {cmd}" + (f"   [exit {rc}]" if rc else ""))
                print("\n".join(got))
            print("```")
        print(f"[{time.perf_counter() - t:.2f} s]", file=sys.stderr)
