"""benchmarks/run.py and results.py write their pages whole; another script's marked section (gpt.py's)
survives, with its heading and prose (found in review: a rerun of run.py dropped the GPT figures)."""
from __future__ import annotations

import importlib.util

from .conftest import ROOT


def _sections():
    spec = importlib.util.spec_from_file_location("sections_under_test", ROOT / "benchmarks" / "sections.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_page_written_whole_keeps_other_scripts_sections():
    carried = _sections().carried
    old = ("# Benchmarks\n\nold table\n\n## A small GPT\n\nHow it is measured.\n\n<!-- gpt:start -->\n| 1.89 |\n"
           "<!-- gpt:end -->\n")
    new = carried(old, "# Benchmarks\n\nnew table\n")
    assert new.startswith("# Benchmarks\n\nnew table\n") and "old table" not in new
    assert "## A small GPT\n\nHow it is measured.\n\n<!-- gpt:start -->\n| 1.89 |\n<!-- gpt:end -->" in new
    assert carried(new, new) == new.rstrip("\n") + "\n"  # a section the new page has is not doubled


def test_run_and_results_carry_the_sections():
    for script in ("run.py", "results.py"):
        assert "carried(" in (ROOT / "benchmarks" / script).read_text()
