"""Regression tests for the newcomer walk-through of README.md, examples/ and the first docs pages.

Findings (symptom before -> fix):

1. README.md's python blocks were run by no test (``tests/test_docs_code.py`` covers only
   ``docs/*.md``), so the first code a newcomer copies could go stale unnoticed; its first block
   ended in a bare expression that prints nothing when run as a script -> the block prints
   ``log_evidence`` and the shapes, and ``test_readme_code_runs`` runs both README blocks.
2. ``examples/quickstart.py`` simulated its data from a split of ``key(0)`` while
   docs/quickstart.md, which says the script "does exactly this", simulates from ``key(0)``:
   the script printed ``log p(y) = -333.8`` against the page's ``-387.5`` -> the script uses
   the page's data key and seed key (``test_quickstart_script_uses_the_pages_keys``).
3. Four example docstrings told the reader to run ``python examples/...`` (no ``python`` on
   many systems where only ``python3`` exists, and inconsistent with README.md) ->
   ``python3`` everywhere (``test_example_run_lines_use_python3``).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from test_docs_code import code_blocks, run_blocks

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


@pytest.mark.slow
def test_readme_code_runs(tmp_path: Path):
    readme = ROOT / "README.md"
    blocks = code_blocks(readme)
    assert len(blocks) >= 2  # the filter and the static model
    proc = run_blocks(readme, blocks, tmp_path, timeout=600)
    assert proc.returncode == 0, f"README.md's code failed:\n{proc.stderr[-6000:]}"
    # the first block prints the log-evidence, then the shapes of the per-step outputs
    assert "(300,) (300,)" in proc.stdout


def test_quickstart_script_uses_the_pages_keys():
    """The script and docs/quickstart.md simulate the same data and filter with the same
    seeds, so the log p(y) the script prints is the one the page's code prints."""
    page = (ROOT / "docs" / "quickstart.md").read_text(encoding="utf-8")
    script = (ROOT / "examples" / "quickstart.py").read_text(encoding="utf-8")
    assert "sv.simulate(jax.random.key(0), 300)" in page
    assert "jax.random.split(jax.random.key(2), 20)" in page
    assert "sv.simulate(jax.random.key(0), T)" in script
    assert "jax.random.split(jax.random.key(2), NUM_SEEDS)" in script
    assert re.search(r"^T, NUM_PARTICLES, NUM_SEEDS = 300, 1000, 20$", script, re.M)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_run_lines_use_python3(path: Path):
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    assert doc and "Run: ``python3 examples/" + path.name in doc
    assert "``python examples/" not in doc
    # every example is described in examples/README.md
    assert f"`{path.name}`" in (ROOT / "examples" / "README.md").read_text(encoding="utf-8")
