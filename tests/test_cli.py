"""End to end through the `skiptrain` command: output, exit codes, no tracebacks."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import EXAMPLES, TINY_RESIDUAL_MODEL, invoke, needs_examples

GOOD = TINY_RESIDUAL_MODEL  # model-only: validate and graph need no data: or train:


def test_validate_prints_nodes_projections_and_totals(write_yaml):
    result = invoke("validate", write_yaml(GOOD))
    assert result.exit_code == 0
    for text in ("stem", "body_proj", "1x1 conv + BN", "[16, 4, 4]", "parameters:", "valid"):
        assert text in result.output


def test_validate_json_is_one_object(write_yaml):
    result = invoke("validate", write_yaml(GOOD), "--json")
    data = json.loads(result.stdout)
    assert data["output_shape"] == [4]
    assert data["params"] == sum(n["params"] for n in data["nodes"]) + sum(p["params"] for p in data["projections"])
    assert data["projections"] == [{"id": "body_proj", "from": "stem", "to": "body", "kind": "conv_bn",
                                    "in_shape": [8, 8, 8], "out_shape": [16, 4, 4], "params": 8 * 16 + 32,
                                    "macs": 16 * 8 * 4 * 4}]
    assert {"id", "type", "output_shape", "params"} <= set(data["nodes"][0])


def test_set_override_changes_the_model(write_yaml):
    result = invoke("validate", write_yaml(GOOD), "--json", "--set", "model.layers.7.out_features=7")
    assert json.loads(result.stdout)["output_shape"] == [7]


def test_strict_makes_mismatch_an_error(write_yaml):
    result = invoke("validate", write_yaml(GOOD), "--strict")
    assert result.exit_code == 1
    assert "config.yaml:14:7: shape error" in result.stderr
    assert "hint:" in result.stderr and "Traceback" not in result.output


@pytest.mark.parametrize("text, expected", [
    (GOOD.replace("conv2d, out_channels: 16", "conv2d, out_chanels: 16"), "did you mean `out_channels`?"),
    (GOOD.replace("type: linear", "type: lineer"), "did you mean `linear`?"),
    (GOOD.replace("from: stem", "from: stm"), "did you mean `stem`?"),
    (GOOD.replace("name: tiny", "name: !!python/object/apply:os.getcwd []"), "YAML tag refused"),
    ("model: [1, 2", "invalid YAML"),
])
def test_config_errors_exit_1_with_location_and_hint(write_yaml, text, expected):
    result = invoke("validate", write_yaml(text))
    assert result.exit_code == 1
    assert expected in result.stderr
    assert "config.yaml:" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("sections, expected, line", [
    ("data: {dataset: digts}\n", "did you mean `digits`?", 15),
    ("data: {dataset: digits, batch_sise: 8}\n", "did you mean `batch_size`?", 15),
    ("train:\n  optimiser: sgd\n", "did you mean `optimizer`?", 16),
    ("train:\n  compile: fast\n", "modes: default, reduce-overhead", 16),
])
def test_validate_checks_data_and_train_without_reading_data(write_yaml, sections, expected, line):
    result = invoke("validate", write_yaml(GOOD + sections))
    assert result.exit_code == 1, result.output
    assert expected in result.stderr and f"config.yaml:{line}:" in result.stderr
    assert "Traceback" not in result.output
    fixed = sections.replace("digts", "digits").replace("batch_sise", "batch_size").replace("optimiser", "optimizer") \
        .replace("fast", "reduce-overhead")
    assert invoke("validate", write_yaml(GOOD + fixed)).exit_code == 0


def test_missing_file_is_a_clear_error(tmp_path):
    result = invoke("validate", tmp_path / "nope.yaml")
    assert result.exit_code == 1 and "no such file" in result.stderr


def test_usage_errors_exit_2(write_yaml):
    assert invoke("validate").exit_code == 2
    assert invoke("validate", write_yaml(GOOD), "--bogus").exit_code == 2
    assert invoke("graph", write_yaml(GOOD), "--format", "png").exit_code == 2


def test_graph_mermaid_and_dot(write_yaml, tmp_path):
    path = write_yaml(GOOD)
    mermaid = invoke("graph", path).stdout
    assert mermaid.startswith("flowchart TD") and "n_stem -. \"add: 1x1 conv + BN, /2" in mermaid
    dot = invoke("graph", path, "--format", "dot").stdout
    assert dot.startswith('digraph "tiny"') and "n_stem -> n_body [style=dashed, color=red" in dot
    target = tmp_path / "g.dot"
    assert invoke("graph", path, "-f", "dot", "-o", target).exit_code == 0
    assert target.read_text() == dot


def test_version_and_module_entry_point():
    assert invoke("--version").stdout.startswith("skiptrain ")
    done = subprocess.run([sys.executable, "-m", "skiptrain", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "validate" in done.stdout


def test_help_does_not_import_torch():
    code = "import sys; from skiptrain.cli import app; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@needs_examples()
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_every_shared_example_validates_unchanged(example):
    result = invoke("validate", example, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["params"] > 0
