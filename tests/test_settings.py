"""skiptrain.settings (``train:``) and data.options (``data:``): one pydantic declaration per key
gives the check, the located error with its hint, the defaults and the schema."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from skiptrain.config import load_config
from skiptrain.data.options import DataOptions, parse_options
from skiptrain.errors import ConfigError, DataError
from skiptrain.schema import data_schema, train_schema
from skiptrain.settings import TrainSettings, parse_settings

from .conftest import ROOT, TINY_RESIDUAL_MODEL, invoke


def located(text: str, key: str) -> tuple[int, int]:
    """1-based line and column of ``key``'s value in ``text`` as write_yaml writes it."""
    lines = text.lstrip("\n").splitlines()
    line = next(i for i, row in enumerate(lines) if re.match(rf"\s*{key}:", row))
    return line + 1, lines[line].index(":") + 3


# -- defect 1 of issue 13: every train key checked, of its own kind ---------------------------------------
@pytest.mark.parametrize("key, value, expected, hint", [
    ("deterministic", '"false"', "`train.deterministic` must be true or false, not 'false'", "without quotes"),
    ("deterministic", "1", "`train.deterministic` must be true or false, not 1", "deterministic algorithms"),
    ("sync_bn", '"true"', "`train.sync_bn` must be true or false, not 'true'", "without quotes"),
    ("sync_bn", "on please", "`train.sync_bn` must be true or false", "batch-norm statistics"),
    ("channels_last", '"false"', "`train.channels_last` must be auto, true or false, not 'false'", "without quotes"),
    ("channels_last", "always", "`train.channels_last` must be auto, true or false, not 'always'", "channels-last"),
    ("channels_last", "1", "`train.channels_last` must be auto, true or false, not 1", "channels-last"),
    ("device", "gpu", "`train.device` must be auto, cpu, cuda, cuda:1 or mps, not 'gpu'", "CUDA, then MPS"),
    ("device", "cuda:x", "`train.device` must be auto, cpu, cuda, cuda:1 or mps, not 'cuda:x'", "cuda:1"),
    ("device", "3", "`train.device` must be auto, cpu, cuda, cuda:1 or mps, not 3", "--device"),
    ("out_dir", '""', "`train.out_dir` must be a non-empty string, not ''", "--run-dir"),
    ("out_dir", "[runs]", "`train.out_dir` must be a non-empty string, not ['runs']", "--run-dir"),
])
def test_a_wrong_train_value_is_a_located_error_with_a_hint(write_yaml, key, value, expected, hint):
    text = TINY_RESIDUAL_MODEL + f"train:\n  epochs: 1\n  {key}: {value}\n"
    result = invoke("validate", write_yaml(text))
    assert result.exit_code == 1, result.output
    line, column = located(text, key)
    assert f"config.yaml:{line}:{column}: config error: {expected}" in result.stderr
    assert "hint: " in result.stderr and (hint is None or hint in result.stderr.split("hint: ")[1])
    assert "Traceback" not in result.output


@pytest.mark.parametrize("key, value", [
    ("deterministic", "false"), ("deterministic", "true"), ("sync_bn", "true"), ("channels_last", "auto"),
    ("channels_last", "true"), ("channels_last", "false"), ("device", "cuda:1"), ("device", "mps"),
    ("device", "auto"), ("out_dir", "experiments/runs"),
])
def test_the_documented_train_values_validate(write_yaml, key, value):
    result = invoke("validate", write_yaml(TINY_RESIDUAL_MODEL + f"train:\n  {key}: {value}\n"))
    assert result.exit_code == 0, result.output


def test_a_set_override_is_checked_and_named():
    with pytest.raises(ConfigError) as info:
        parse_settings(load_config({"model": {"input": [1], "layers": [{"type": "relu"}]}},
                                   ["train.deterministic='false'"]).train)
    assert str(info.value.location) == "--set train.deterministic='false'"
    assert "without quotes" in info.value.hint


def test_check_config_reads_train_without_the_training_package(write_yaml):
    path = write_yaml(TINY_RESIDUAL_MODEL + "data: {dataset: digits}\ntrain: {epochs: 1}\n")
    code = ("import sys; from skiptrain.api import check_config; check_config(sys.argv[1]); "
            "assert not [m for m in sys.modules if m.startswith('skiptrain.training')], 'imported skiptrain.training'")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr


# -- defaults: the documented ones, written once -----------------------------------------------------------
def documented_defaults(section: str) -> dict:
    """The `key | default` column of the section's table in docs/data-and-training.md: a `value` read
    as YAML; words (**required**, the dataset's) as None."""
    text = (ROOT / "docs" / "data-and-training.md").read_text().split(f"## `{section}:`")[1]
    table = text.split("| key | default | meaning |")[1].strip().split("\n\n")[0]
    rows = re.findall(r"^\| `(\w+)` \| ([^|]+) \|", table, re.M)
    return {key: yaml.safe_load(cell.strip()[1:-1]) if re.fullmatch(r"`[^`]*`", cell.strip()) else None
            for key, cell in rows}


def test_train_defaults_are_the_documented_ones():
    documented = documented_defaults("train")
    assert list(documented) == list(TrainSettings.model_fields)
    assert parse_settings({}).model_dump() == documented


def test_data_defaults_are_the_documented_ones():
    documented = documented_defaults("data")
    assert list(documented) == list(DataOptions.model_fields)
    assert documented.pop("seed") == "train.seed" and DataOptions.model_fields["seed"].default is None
    assert DataOptions.model_fields["dataset"].is_required() and documented.pop("dataset") is None
    assert {key: DataOptions.model_fields[key].default for key in documented} == documented
    options = parse_options({"dataset": "digits"}, seed=7)
    assert options.seed == 7 and options.root == Path("data") and options.augment == []


def test_settings_are_plain_data_for_a_weights_only_checkpoint(tmp_path):
    torch = pytest.importorskip("torch")
    settings = parse_settings({"optimizer": {"name": "sgd", "lr": 0.1, "betas": [0.9, 0.99]}, "compile": "default",
                               "channels_last": True, "scheduler": "cosine", "grad_clip": 1})
    torch.save({"settings": settings.model_dump()}, tmp_path / "s.pt")
    loaded = torch.load(tmp_path / "s.pt", weights_only=True)["settings"]
    assert loaded == settings.model_dump()
    assert loaded["optimizer"] == {"name": "sgd", "lr": 0.1, "betas": [0.9, 0.99]}
    assert settings.optimizer["name"] == "sgd" and settings.scheduler == {"name": "cosine"}


def test_sections_take_a_name_or_a_mapping_merged_over_the_defaults():
    assert parse_settings({"optimizer": {"lr": 0.1}}).optimizer == {"name": "adamw", "lr": 0.1, "weight_decay": 0.01}
    assert parse_settings({"optimizer": "adam"}).optimizer == {"name": "adam", "lr": 0.001}
    assert parse_settings({"loss": {"name": "cross_entropy", "label_smoothing": 0.1}}).loss["label_smoothing"] == 0.1
    with pytest.raises(ConfigError, match=r"unknown key `train.scheduler.warmup`") as info:
        parse_settings({"scheduler": {"name": "cosine", "warmup": 1}})
    assert info.value.hint == "did you mean `warmup_epochs`?"


def test_train_task_is_checked_against_the_task_registry():
    from skiptrain.tasks import TASKS

    with pytest.raises(ConfigError, match="`train.task` must be") as info:
        parse_settings({"task": "clasification"})
    assert info.value.hint == "did you mean `classification`?"
    with TASKS.scoped():
        TASKS.add("multilabel", TASKS.get("classification"))
        assert parse_settings({"task": "multilabel"}).task == "multilabel"
        assert "multilabel" in train_schema()["properties"]["task"]["enum"]
    with pytest.raises(ConfigError):
        parse_settings({"task": "multilabel"})


def test_data_mistakes_keep_their_located_messages(write_yaml):
    path = write_yaml("""
        model: {input: [1, 8, 8], layers: [{type: flatten}, {type: linear, out_features: 10}]}
        data:
          dataset: digits
          batchsize: 8
    """)
    with pytest.raises(DataError) as info:
        parse_options(load_config(path).data)
    assert info.value.message == "unknown key `batchsize` in `data:`"
    assert (info.value.location.line, info.value.location.column) == (4, 3)
    assert info.value.hint == "did you mean `batch_size`?"
    with pytest.raises(DataError, match="`data:` has no `dataset:`"):
        parse_options({"batch_size": 8})
    with pytest.raises(DataError, match=r"`normalize` has 2 means but 1 stds"):
        parse_options({"dataset": "digits", "normalize": {"mean": [0.5, 0.5], "std": [0.2]}})
    with pytest.raises(DataError, match=r"`download` must be true or false, not 'true'"):
        parse_options({"dataset": "digits", "download": "true"})


# -- the schema's sections are the declarations ------------------------------------------------------------
def test_schema_sections_list_exactly_the_declared_keys():
    data, train = data_schema(), train_schema()
    assert list(data["properties"]) == list(DataOptions.model_fields) and data["required"] == ["dataset"]
    assert list(train["properties"]) == list(TrainSettings.model_fields) and "required" not in train
    assert data["additionalProperties"] is False and train["additionalProperties"] is False
    assert all(prop.get("description") for prop in [*data["properties"].values(), *train["properties"].values()])
    assert train["properties"]["channels_last"]["anyOf"] == [{"const": "auto", "type": "string"}, {"type": "boolean"}]
    assert train["properties"]["optimizer"]["default"] == parse_settings({}).optimizer
    assert "$ref" not in str(data) + str(train) and "'title'" not in str(data) + str(train)


# -- issue 15: no value that validate accepts crashes train --------------------------------------------------
FINITE_CASES = [  # (section, the key's lines, the key, what the message says)
    ("train", "optimizer:\n    name: adamw\n    lr: .nan", "lr", "`train.optimizer.lr` must be a number >= 0"),
    ("train", "optimizer:\n    name: adamw\n    lr: .inf", "lr", "`train.optimizer.lr` must be a number >= 0"),
    ("train", "optimizer:\n    name: adam\n    betas: 0.9", "betas", "`train.optimizer.betas` must be"),
    # an lr or a scheduled lr that overflows float32 in the first update (found by the loop's tests)
    ("train", "optimizer:\n    name: sgd\n    lr: 1.0e+300", "lr", "`train.optimizer.lr` must be a number >= 0 and <= 1e+06"),
    ("train", "scheduler:\n    milestones: [0]\n    name: multistep\n    gamma: 1.0e+200", "milestones",  # the mapping
     "`train.scheduler.gamma` 1e+200 raises the lr 1 times, to 1e+197 by epoch 1"),
    ("train", "optimizer:\n    name: adam\n    betas: [0.9, 1.0]", "betas",
     "`train.optimizer.betas[1]` must be a number >= 0 and < 1"),
    ("train", "optimizer:\n    name: adam\n    eps: -1", "eps", "`train.optimizer.eps` must be a number > 0"),
    ("train", "scheduler:\n    name: cosine\n    warmup_epochs: .inf", "warmup_epochs",
     "`train.scheduler.warmup_epochs` must be a number >= 0"),
    ("train", "seed: 1e20", "seed", "`train.seed` must be an integer"),
    ("train", "seed: 18446744073709551616", "seed", "`train.seed` must be an integer >= 0 and <= "),
    ("train", "grad_clip: .inf", "grad_clip", "`train.grad_clip` must be a number > 0"),
    ("train", "loss:\n    name: cross_entropy\n    label_smoothing: 1.5", "label_smoothing",
     "`train.loss.label_smoothing` must be a number >= 0 and <= 1"),
    ("train", "loss:\n    name: cross_entropy\n    ignore_index: 100000000000000000000", "ignore_index",
     "`train.loss.ignore_index` must be an integer >= "),
    ("data", "normalize:\n    mean: 0.5\n    std: .nan", "std", "`normalize.std` must be"),
    ("data", "normalize:\n    mean: .inf\n    std: 0.5", "mean", "`normalize.mean` must be"),
    ("data", "seed: 18446744073709551616", "seed", "`seed` must be an integer >= 0 and <= "),
    ("data", "num_classes: 100000000000000000000", "num_classes", "`num_classes` must be an integer >= 1 and <= "),
]


def finite_case_config(section: str, lines: str) -> str:
    data = "data:\n  dataset: synthetic\n  num_samples: 16\n" + "".join(
        f"  {key}\n" for key in ("num_classes: 4", "batch_size: 8") if not lines.startswith(key.split(":")[0]))
    train = "train:\n  epochs: 1\n  device: cpu\n"
    if section == "data":
        data += f"  {lines}\n"
    else:
        train += f"  {lines}\n"
    return TINY_RESIDUAL_MODEL + data + train


@pytest.mark.parametrize("section, lines, key, expected", FINITE_CASES, ids=[c[1].split("\n")[-1].strip() + f" ({c[0]})"
                                                                               for c in FINITE_CASES])
def test_validate_refuses_what_train_would_crash_on(write_yaml, section, lines, key, expected):
    text = finite_case_config(section, lines)
    result = invoke("validate", write_yaml(text))
    assert result.exit_code == 1, result.output
    line, column = located(text, key)
    kind = "config error" if section == "train" else "data error"
    assert f"config.yaml:{line}:" in result.stderr and f": {kind}: {expected}" in result.stderr, result.stderr
    if "[" not in lines.split(f"{key}:")[-1]:  # a list's item is located at the item
        assert f"config.yaml:{line}:{column}: {kind}" in result.stderr
    assert "hint: " in result.stderr and "Traceback" not in result.output


@pytest.mark.parametrize("section, lines, key, expected", [FINITE_CASES[0], FINITE_CASES[5], FINITE_CASES[11]])
def test_train_refuses_the_same_values_before_training(write_yaml, tmp_path, section, lines, key, expected):
    run_dir = tmp_path / "run"
    result = invoke("train", write_yaml(finite_case_config(section, lines)), "--run-dir", run_dir)
    assert result.exit_code == 1, result.output
    assert expected in result.stderr and "Traceback" not in result.output
    assert not run_dir.exists(), "train created its run directory before checking the settings"


def float_fields(model) -> list[tuple[str, bool]]:
    """The fields of ``model`` that take a number with a fraction, and whether they take a list of them."""
    return [(name, "list[" in str(field.annotation)) for name, field in model.model_fields.items()
            if "float" in str(field.annotation)]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_no_declared_number_takes_nan_or_inf(bad):
    from skiptrain.data.options import Normalization
    from skiptrain.settings import Loss, Optimizer, Scheduler

    checked = 0
    for model, section in [(Optimizer, "optimizer"), (Scheduler, "scheduler"), (Loss, "loss"), (TrainSettings, None)]:
        for name, many in float_fields(model):
            value = [bad, bad] if many else bad
            with pytest.raises(ConfigError):
                parse_settings({section: {name: value}} if section else {name: value})
            checked += 1
    for name, many in float_fields(DataOptions):
        with pytest.raises(DataError):
            parse_options({"dataset": "digits", name: bad})
        checked += 1
    for name, _ in float_fields(Normalization):
        with pytest.raises(DataError):
            parse_options({"dataset": "digits", "normalize": {"mean": 0.5, "std": 0.5, name: bad}})
        checked += 1
    assert checked >= 15  # every optimizer, scheduler and loss number, grad_clip, val_fraction, mean and std


def test_the_largest_seeds_are_taken_and_a_null_ignore_index_is_the_default():
    top = 2**64 - 1
    assert parse_settings({"seed": top}).seed == top and parse_options({"dataset": "digits", "seed": top}).seed == top
    assert parse_settings({"loss": {"name": "cross_entropy", "ignore_index": None}}).loss == {"name": "cross_entropy"}
    assert parse_settings({"optimizer": {"name": "adam", "betas": [0, 0.999]}}).optimizer["betas"] == [0, 0.999]
