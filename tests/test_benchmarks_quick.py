"""benchmarks/run.py --quick runs every benchmark and writes a page with every section (no timing assertions)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "run.py"
SECTIONS = ("## Machine", "## Model overhead", "## Trainer overhead", "## Validate scaling", "## Startup",
            "## Export latency", "## Targets")


@pytest.mark.slow  # about a minute on a loaded 2-core machine
def test_run_quick_writes_every_section(tmp_path):
    page = tmp_path / "b.md"
    docs_before = (ROOT / "docs" / "benchmarks.md").stat().st_mtime_ns if (ROOT / "docs" / "benchmarks.md").exists() else None
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--output", str(page)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    text = page.read_text()
    for section in SECTIONS:
        assert section in text, f"{section!r} missing from the page:\n{text}"
    assert "load average" in text and "torch" in text
    docs_after = (ROOT / "docs" / "benchmarks.md").stat().st_mtime_ns if (ROOT / "docs" / "benchmarks.md").exists() else None
    assert docs_after == docs_before, "--quick must not rewrite docs/benchmarks.md"
