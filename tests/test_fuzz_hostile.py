"""Hostile and careless input, fuzzed (issue 15): ``--set`` values, checkpoints with a valid checksum
and wrong contents, damaged run directories, output paths, ``predict`` inputs and image folders.

Each example copies a shared workspace (a config, a trained run, a .npy, an image folder), damages
one thing and runs one command through the CLI. The property (``fuzz_hostile.run_case``): exit 0, 1
or 2, a refusal is one message and never a traceback, no hang, nothing ran code, and not one file
outside what the command may write changed. Profiles as in tests/test_fuzz.py
(``SKIPTRAIN_FUZZ_PROFILE``: ``ci`` by default, 150 examples, under a minute; ``long`` from
``python benchmarks/fuzz.py --suite hostile``, 1,500; ``SKIPTRAIN_HOSTILE_EXAMPLES`` overrides).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from . import fuzz_hostile as hostile  # noqa: E402
from .fuzz_oracle import PROFILE_NAME  # noqa: E402

_ROOT = Path(tempfile.mkdtemp(prefix="skiptrain-hostile-"))


def _invoke(*args):
    """The CLI in-process; unlike conftest.invoke, the property decides what an exception means."""
    from typer.testing import CliRunner

    from skiptrain.cli import app
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def workspace():
    from .conftest import invoke
    (_ROOT / "workspace").mkdir()
    root = hostile.make_workspace(_ROOT / "workspace", invoke)
    yield root
    shutil.rmtree(_ROOT, ignore_errors=True)
    target = os.environ.get("SKIPTRAIN_FUZZ_STATS")
    if target:
        Path(target).write_text(json.dumps({"profile": PROFILE_NAME, **hostile.STATS}, indent=2, sort_keys=True))


@hostile.hostile_settings(0.2)
@given(hostile.set_values())
def test_set_values(workspace, value):
    damage, command, allowed = hostile.set_case(value)
    hostile.run_case(workspace, damage, command, allowed, _invoke)


@hostile.hostile_settings(0.2)
@given(hostile.checkpoint_damage(), st.sampled_from(hostile.COMMANDS_ON_RUN))
def test_checkpoints_with_a_valid_checksum_and_wrong_contents(workspace, change, command):
    def damage(case):
        hostile.rewrite_checkpoint(case / "run" / "checkpoints" / "last.pt", change)
    hostile.run_case(workspace, damage, *command, _invoke)


@hostile.hostile_settings(0.2)
@given(hostile.run_dir_damage(), st.sampled_from(hostile.COMMANDS_ON_RUN))
def test_damaged_run_directories(workspace, damage, command):
    hostile.run_case(workspace, damage, *command, _invoke)


@hostile.hostile_settings(0.15)
@given(st.sampled_from(sorted(hostile.OUTPUT_COMMANDS)), st.sampled_from(hostile.OUTPUT_PATHS))
def test_output_paths(workspace, name, target):
    hostile.run_case(workspace, *hostile.output_case(name, target), _invoke)


@hostile.hostile_settings(0.15)
@given(hostile.predict_inputs(), st.sampled_from(["run", "run/checkpoints/last.pt"]), st.booleans())
def test_predict_inputs(workspace, what, source, json_flag):
    hostile.run_case(workspace, *hostile.predict_case(what, source, json_flag), _invoke)


@hostile.hostile_settings(0.1)
@given(hostile.image_damage(), st.sampled_from([0, 2]))
def test_image_folders(workspace, damage, workers):
    command = ["train", "images.yaml", "--run-dir", "new", "--set", f"data.num_workers={workers}", *hostile.CHEAP]
    hostile.run_case(workspace, damage, command, ["new"], _invoke)


def test_the_fuzz_benchmark_writes_each_suites_section_and_nothing_else(tmp_path, monkeypatch):
    """benchmarks/fuzz.py --suite hostile replaces only its own section of docs/reliability.md."""
    import importlib.util

    from .conftest import ROOT
    spec = importlib.util.spec_from_file_location("fuzz_benchmark_under_test", ROOT / "benchmarks" / "fuzz.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    page = tmp_path / "reliability.md"
    page.write_text("# R\n\nmine\n\n<!-- fuzz:start -->\nold config figures\n<!-- fuzz:end -->\n\ntail\n")
    monkeypatch.setattr(module, "DOC", page)
    stats = {"tried": 12, "refused": 10, "accepted": 2, "command_train": 5, "command_predict": 7}
    module.write(module.hostile_section(stats, 0, 75.0, "", 7, None), "hostile")
    module.write(module.hostile_section(stats, 1, 75.0, "1 failed", 8, None), "hostile")  # replaced, not added
    text = page.read_text()
    assert text.count("<!-- hostile:start -->") == 1 and "old config figures" in text and "tail" in text
    assert "| tried | 12 |" in text and "`predict` 7" in text and "FAILED (1 failed)" in text
