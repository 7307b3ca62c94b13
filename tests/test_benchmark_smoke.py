"""benchmarks/model_overhead.py --quick runs and prints its table (no timing assertions)."""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys

import pytest

from .conftest import ROOT, SHARED_EXAMPLES

SCRIPT = ROOT / "benchmarks" / "model_overhead.py"
RESNET20 = SHARED_EXAMPLES / "resnet20_cifar10.yaml"
# An absolute path to the shared examples names one machine; ../shared/examples works on every checkout.
ABSOLUTE_EXAMPLES = re.compile(r"(?<![.\w])/[\w./-]*shared/examples")


def test_the_benchmark_looks_for_the_example_beside_the_checkout():
    spec = importlib.util.spec_from_file_location("model_overhead_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(SCRIPT.parent))  # it imports benchmarks/handwritten.py
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SCRIPT.parent))
    assert module.RESNET20_CONFIG == RESNET20


def test_no_source_names_an_absolute_path_to_the_shared_examples():
    sources = [p for folder in ("skiptrain", "benchmarks", "tests", "docs")
               for p in sorted((ROOT / folder).rglob("*")) if p.suffix in {".py", ".md", ".yaml"}]
    assert sources
    found = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}" for p in sources
             for n, line in enumerate(p.read_text().splitlines(), 1) if ABSOLUTE_EXAMPLES.search(line)]
    assert not found, "use ../shared/examples relative to the repository root:\n" + "\n".join(found)


@pytest.mark.slow  # 30 s; the default suite runs model_overhead --quick inside test_run_quick_writes_every_section
@pytest.mark.skipif(not RESNET20.is_file(), reason="../shared/examples/resnet20_cifar10.yaml is not beside this checkout")
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
