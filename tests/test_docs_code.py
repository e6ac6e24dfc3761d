"""The code blocks of every documentation page run, in order, as a test.

For each page ``docs/*.md`` (the API pages under ``docs/api/`` hold no examples) the fenced
```` ```python ```` blocks are executed top to bottom in one fresh namespace, in a subprocess on
the CPU with a temporary working directory, so a page may use the names defined by its earlier
blocks, exactly as a reader does. A block that cannot run on one CPU machine (a multi-host
launch, an API sketch with placeholder names) is preceded by the HTML comment
``<!-- no-test -->``, which the rendered page does not show.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = sorted(DOCS.glob("*.md"))
NO_TEST = "<!-- no-test -->"
# pages whose examples run longer than they compile: their tests are marked ``optimized``
# (compiled with XLA's optimisations; the other pages, like the suite, without most of
# them: tests/conftest.py). At level 0 the statespace page took 94 s against 53 s,
# static-models 62 s against 44 s.
OPTIMIZED_PAGES = {"statespace", "static-models"}
PAGE_PARAMS = [
    pytest.param(p, id=p.stem, marks=[pytest.mark.optimized] if p.stem in OPTIMIZED_PAGES else [])
    for p in PAGES
]

_OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")

# runs in the subprocess: exec each block in one namespace; compiling with the page's path and
# the block's line offset makes a traceback point at the line of the Markdown file
_RUNNER = """
import json, sys
page, blocks = json.load(open(sys.argv[1]))
ns = {"__name__": "__main__"}
for line, src in blocks:
    exec(compile("\\n" * line + src, page, "exec"), ns)
"""


def code_blocks(path: Path) -> list[tuple[int, str]]:
    """The ``python`` blocks of a Markdown page, as ``(first line index, dedented source)``.

    Blocks fenced with another language, and ``python`` blocks whose fence is preceded (after
    blank lines) by ``<!-- no-test -->``, are left out.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks = []
    previous = ""  # the last non-blank line before the current one
    i = 0
    while i < len(lines):
        m = _OPEN.match(lines[i])
        if not m:
            if lines[i].strip():
                previous = lines[i].strip()
            i += 1
            continue
        indent, fence = m["indent"], m["fence"]
        language = m["info"].strip().split(maxsplit=1)[0] if m["info"].strip() else ""
        body, j = [], i + 1
        while j < len(lines) and not (
            lines[j].strip().startswith(fence) and lines[j].strip().strip(fence[0]) == ""
        ):
            line = lines[j]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            j += 1
        if language == "python" and previous != NO_TEST:
            blocks.append((i + 1, "\n".join(body) + "\n"))
        previous = lines[j].strip() if j < len(lines) else ""
        i = j + 1
    return blocks


def run_blocks(page: Path, blocks, tmp_path: Path, timeout: int) -> subprocess.CompletedProcess:
    """Run ``blocks`` (``code_blocks(page)``) in order in one namespace, in a subprocess on the
    CPU with ``tmp_path`` as working directory; the finished process, output captured."""
    spec = tmp_path / "blocks.json"
    spec.write_text(json.dumps([str(page), blocks]), encoding="utf-8")
    # XLA_FLAGS and JAX_DISABLE_MOST_OPTIMIZATIONS (the quicker-compile settings) come from
    # conftest.py
    env = dict(os.environ, JAX_PLATFORMS="cpu", MPLBACKEND="Agg", PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, "-c", _RUNNER, str(spec)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_pages_have_code():
    """The parser finds the pages and their examples (guards against a silent empty run)."""
    assert len(PAGES) >= 10
    assert sum(len(code_blocks(p)) for p in PAGES) >= 30


def test_code_blocks_convention(tmp_path: Path):
    page = tmp_path / "page.md"
    page.write_text(
        "text\n\n```python\na = 1\n```\n\n<!-- no-test -->\n```python\nundefined_name\n```\n\n"
        "```text\nnot python\n```\n\n!!! note\n    ```python\n    b = a + 1\n    ```\n",
        encoding="utf-8",
    )
    assert code_blocks(page) == [(3, "a = 1\n"), (17, "b = a + 1\n")]


def test_math_hook_renders_mathml():
    pytest.importorskip("latex2mathml")
    spec = importlib.util.spec_from_file_location("docs_mathml_hook", DOCS / "hooks" / "mathml.py")
    mathml = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mathml)
    html = mathml.render_math(
        '<p><span class="arithmatex">\\(\\hat Z &lt; 1\\)</span></p>'
        '<div class="arithmatex">\\[\\texttt{log\\_evidence}\\]</div>'
    )
    assert "arithmatex" not in html and html.count("<math") == 2
    assert "log_evidence" in html and "\\" not in html
    # what latex2mathml cannot render is shown as code, with a warning
    assert "<code" in mathml.render_math('<span class="arithmatex">\\(\\big\\| x\\)</span>')


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGE_PARAMS)
def test_page_code_runs(page: Path, tmp_path: Path):
    blocks = code_blocks(page)
    if not blocks:
        pytest.skip(f"{page.name} has no runnable python blocks")
    proc = run_blocks(page, blocks, tmp_path, timeout=900)
    assert proc.returncode == 0, (
        f"the code blocks of {page.name} failed when run in order:\n{proc.stderr[-6000:]}"
    )
