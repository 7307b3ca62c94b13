"""Shared fixtures: where the contract's examples live, and a YAML writer."""
from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_EXAMPLES = ROOT.parent / "shared" / "examples"
EXAMPLES = sorted(SHARED_EXAMPLES.glob("*.yaml")) if SHARED_EXAMPLES.is_dir() else []
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))

os.environ.setdefault("MPLCONFIGDIR", str(Path(os.environ.get("TMPDIR", "/tmp")) / "skiptrain-mpl"))


@pytest.fixture
def write_yaml(tmp_path):
    """Write dedented YAML text to a file and return its path."""
    def write(text: str, name: str = "config.yaml") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        return path
    return write


def needs_examples():
    return pytest.mark.skipif(not EXAMPLES, reason="../shared/examples is not beside this checkout")
