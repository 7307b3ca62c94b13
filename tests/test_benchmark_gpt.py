"""benchmarks/gpt.py --quick trains both GPTs on a text it writes and prints its section (no timing assertions):
same batches and initial weights, so the two validation losses agree; nothing in docs/ is rewritten."""
from __future__ import annotations

import re
import subprocess
import sys

from .conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "gpt.py"


def test_gpt_benchmark_quick_prints_both_rows():
    docs = {name: (ROOT / "docs" / name).read_bytes() for name in ("benchmarks.md", "results.md")}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick"], cwd=ROOT, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    rows = {m.group(1): [float(v) for v in m.group(2).split("|")]
            for m in re.finditer(r"^\| (hand-written|skiptrain) \(`[^`]+`\) \|(.*)\|$", proc.stdout, re.M)}
    assert set(rows) == {"hand-written", "skiptrain"}, proc.stdout
    hand, ours = rows["hand-written"], rows["skiptrain"]
    assert abs(hand[0] - ours[0]) < 1e-3, proc.stdout  # same data, weights and steps: the same loss
    assert hand[2] > 0 and ours[2] > 0
    assert "<!-- gpt:start -->" in proc.stdout and "Quality:" in proc.stdout and "ROMEO:" in proc.stdout
    assert {name: (ROOT / "docs" / name).read_bytes() for name in docs} == docs  # --quick writes no docs
