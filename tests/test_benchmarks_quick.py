"""benchmarks/run.py --quick runs every benchmark and writes a page with every section (no timing assertions)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import SHARED_EXAMPLES

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "run.py"
SECTIONS = ("## Machine", "## Model overhead", "## Trainer overhead", "## Validate scaling", "## Startup",
            "## Export latency", "## On a GPU", "## Targets")


@pytest.mark.skipif(not (SHARED_EXAMPLES / "resnet20_cifar10.yaml").is_file(),
                    reason="the model overhead section needs ../shared/examples/resnet20_cifar10.yaml")
def test_run_quick_writes_every_section(tmp_path):  # about 25 s on 2 cores: CI runs the smoke
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


def _run_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return module


def test_gpu_section_renders_the_recorded_gpu_results():
    run = _run_module()
    if not run.GPU_RESULTS.is_file():
        pytest.skip("no GPU results recorded")
    import json

    recorded = json.loads(run.GPU_RESULTS.read_text())
    text = "\n".join(run.gpu_section(run.GPU_RESULTS))
    assert recorded["machine"]["gpu"] in text
    for row in recorded["throughput"]:
        if "images_per_s" in row:
            assert f"| {row['variant']} | {row['images_per_s']:,.0f} |" in text
    ratio = recorded["trainer"][-1]["skiptrain_over_bare"]
    assert f"Trainer vs bare loop {ratio:.3f}" in text


def test_gpu_section_says_when_nothing_was_recorded(tmp_path):
    run = _run_module()
    text = "\n".join(run.gpu_section(tmp_path / "none.json"))
    assert "No GPU results recorded" in text and "benchmarks/gpu.py" in text


def test_readme_headline_replaces_only_its_marked_region(tmp_path, monkeypatch):
    run = _run_module()
    start, end = run.HEADLINE
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n- [Benchmarks]: {start}old figures{end}\n- next line\n")
    monkeypatch.setattr(run, "README", readme)
    run.update_readme("new figures")
    assert readme.read_text() == f"intro\n- [Benchmarks]: {start}new figures{end}\n- next line\n"
    assert start in (ROOT / "README.md").read_text(), "README.md lost its benchmark headline markers"


def test_experiments_quick_renders_the_page():  # four nets, 5 batches each: about 8 s
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "experiments.py"), "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for heading in ("## Result", "## Gradient flow of the deep pair", "## Reproduce", "plain56", "resnet20"):
        assert heading in proc.stdout, heading
