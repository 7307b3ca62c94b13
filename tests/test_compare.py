"""`skiptrain compare` and `skiptrain gradflow`, end to end through the CLI."""
from __future__ import annotations

import json

from .conftest import invoke

MLP = """
model:
  name: {name}
  input: [8]
  layers:
    - {{id: fc1, type: linear, out_features: {width}}}
    - {{type: relu}}
    - {{id: head, type: linear, out_features: 3}}
data: {{dataset: synthetic, num_samples: 96, num_classes: 3, batch_size: 16}}
train: {{epochs: 3, seed: 1}}
"""

DEEP = """
model:
  name: {name}
  input: [16]
  blocks:
    layer:
      layers:
        - {{type: tanh}}
        - {{id: fc, type: linear, out_features: 16}}
{skips}
  layers:
    - {{id: stem, type: linear, out_features: 16}}
    - {{id: body, block: layer, repeat: 30}}
    - {{type: tanh}}
    - {{id: head, type: linear, out_features: 4}}
data: {{dataset: synthetic, num_samples: 128, num_classes: 4, batch_size: 32}}
train: {{seed: 0}}
"""
RESIDUAL = "      skips:\n        - {from: input, to: fc}"


def test_compare_writes_report_json_and_curves(write_yaml, tmp_path):
    small = write_yaml(MLP.format(name="small", width=4), "small.yaml")
    wide = write_yaml(MLP.format(name="wide", width=32), "wide.yaml")
    out = tmp_path / "cmp"
    result = invoke("compare", small, wide, "--epochs", 2, "--set", "train.optimizer.lr=0.01",
                    "--output-dir", out, "--quiet")
    assert result.exit_code == 0, result.output
    data = json.loads((out / "compare.json").read_text())
    assert [r["name"] for r in data["runs"]] == ["small", "wide"]
    assert data["epochs"] == 2 and data["overrides"] == ["train.optimizer.lr=0.01"] and data["seed"] == 1
    for run in data["runs"]:
        assert [row["epoch"] for row in run["history"]] == [1, 2]
        assert 0 <= run["test_acc"] <= 1 and run["final_train_loss"] > 0 and run["train_seconds"] >= 0
    assert data["runs"][0]["params"] == 8 * 4 + 4 + 4 * 3 + 3
    report = (out / "report.md").read_text()
    assert "| config | params | final train loss | test accuracy | train time |" in report
    assert "small" in report and "wide" in report and "train.optimizer.lr=0.01" in report
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "small" / "metrics.jsonl").exists() and (out / "wide" / "metrics.jsonl").exists()
    assert "test accuracy" in result.output

    # issue 15: a second comparison into the same folder is refused, and nothing of the first changes
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    again = invoke("compare", small, wide, "--epochs", 2, "--output-dir", out, "--quiet")
    assert again.exit_code == 1 and "never replaced" in again.stderr and "Traceback" not in again.output
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_compare_output_dir_that_is_a_file_is_refused_before_training(write_yaml, tmp_path):
    small = write_yaml(MLP.format(name="small", width=4), "small.yaml")
    wide = write_yaml(MLP.format(name="wide", width=32), "wide.yaml")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep\n")
    result = invoke("compare", small, wide, "--epochs", 1, "--output-dir", a_file, "--quiet")
    assert result.exit_code == 1 and "is not a folder" in result.stderr and "--output-dir" in result.stderr
    assert a_file.read_text() == "keep\n" and not (tmp_path / "runs").exists()


def test_compare_refuses_different_data_or_budget(write_yaml, tmp_path):
    small = write_yaml(MLP.format(name="small", width=4), "small.yaml")
    other = write_yaml(MLP.format(name="other", width=4).replace("batch_size: 16", "batch_size: 8"), "other.yaml")
    result = invoke("compare", small, other, "--output-dir", tmp_path / "x")
    assert result.exit_code == 1 and "other data" in result.output
    longer = write_yaml(MLP.format(name="longer", width=4).replace("epochs: 3", "epochs: 5"), "longer.yaml")
    result = invoke("compare", small, longer, "--output-dir", tmp_path / "y")
    assert result.exit_code == 1 and "--epochs" in result.output
    assert invoke("compare", small).exit_code == 2


def _gradflow(write_yaml, tmp_path, name, skips, *extra):
    config = write_yaml(DEEP.format(name=name, skips=skips), f"{name}.yaml")
    png = tmp_path / f"{name}.png"
    result = invoke("gradflow", config, "--json", "--output", png, *extra)
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:4] == b"\x89PNG"
    return json.loads(result.stdout)


def test_gradflow_one_norm_per_parameterised_layer(write_yaml, tmp_path):
    data = _gradflow(write_yaml, tmp_path, "plain", "", "--run", 3)
    ids = [layer["id"] for layer in data["layers"]]
    assert ids == ["stem", *[f"body.{i}.fc" for i in range(30)], "head"]
    assert [layer["index"] for layer in data["layers"]] == sorted(layer["index"] for layer in data["layers"])
    assert all(layer["params"] > 0 and layer["init"] >= 0 and "trained" in layer for layer in data["layers"])
    assert data["steps"] == 3 and "trained" in data["loss"]


def test_residual_net_keeps_the_gradient_the_plain_net_loses(write_yaml, tmp_path):
    plain = _gradflow(write_yaml, tmp_path, "plain", "")
    residual = _gradflow(write_yaml, tmp_path, "residual", RESIDUAL)

    def ratio(data):
        return data["layers"][0]["init"] / data["layers"][-1]["init"]

    assert ratio(plain) < 1e-4  # 30 tanh layers without skips: the gradient vanishes
    assert ratio(residual) > 1e-2
    assert ratio(residual) > 1e3 * ratio(plain)


def test_gradflow_text_output(write_yaml, tmp_path):
    config = write_yaml(DEEP.format(name="plain", skips=""), "plain.yaml")
    result = invoke("gradflow", config, "-o", tmp_path / "g.png")
    assert result.exit_code == 0 and "body.29.fc" in result.output and "first/last" in result.output
