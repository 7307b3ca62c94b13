"""benchmarks/model_overhead.py --quick runs and prints its table (no timing assertions)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "model_overhead.py"
RESNET20 = [ROOT.parent / "shared" / "examples" / "resnet20_cifar10.yaml",
            Path("/work/shared/examples/resnet20_cifar10.yaml"),
            ROOT / "shared" / "examples" / "resnet20_cifar10.yaml"]


@pytest.mark.skipif(not any(p.is_file() for p in RESNET20), reason="resnet20_cifar10.yaml example not found")
def test_model_overhead_quick_prints_a_resnet20_row():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"

    rows = [line for line in proc.stdout.splitlines() if line.startswith("|") and "resnet20" in line]
    assert rows, f"no resnet20 row in the table:\n{proc.stdout}"
    for row in rows:
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        assert len(cells) == 7, row  # model | measurement | hand ms | skiptrain ms | ratio | 2 x rounds min-max
        hand_ms, sk_ms, ratio = (float(c) for c in cells[2:5])
        for spread in cells[5:]:
            fastest, slowest = (float(v) for v in spread.split("-"))
            assert 0 < fastest <= slowest, row
        assert hand_ms > 0 and sk_ms > 0 and ratio > 0, row
    assert re.search(r"^Machine: .*torch .*threads", proc.stdout, re.M), proc.stdout
