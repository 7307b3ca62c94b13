"""`skiptrain schema`: every shipped config validates; typos a schema can see are refused."""
from __future__ import annotations

import json

import pytest
import yaml

from skiptrain.schema import config_schema

from .conftest import CONFIGS, EXAMPLES, invoke

jsonschema = pytest.importorskip("jsonschema")
TEMPLATES = sorted(__import__("pathlib").Path(__file__).resolve().parents[1].glob("skiptrain/templates/*.yaml"))


@pytest.fixture(scope="module")
def validator():
    schema = config_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def errors(validator, document) -> list[str]:
    return [error.message for error in validator.iter_errors(document)]


@pytest.mark.parametrize("path", CONFIGS + EXAMPLES + TEMPLATES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_configs_validate(validator, path):
    assert errors(validator, yaml.safe_load(path.read_text())) == []


GOOD = {"model": {"input": [3, 8, 8], "layers": [
    {"id": "stem", "type": "conv2d", "out_channels": "${2 * 4}", "kernel_size": [3, 3], "padding": "same"},
    {"type": "Conv2d", "out_channels": 8, "kernel_size": 3},
    {"id": "sum", "type": "add", "input": ["stem", "conv2d_1"], "axis": 0},
    {"type": "global_avgpool"}, {"type": "linear", "out_features": 4, "scale": False}]},
    "data": {"dataset": "digits", "augment": [{"random_crop": {"padding": 2}}, "horizontal_flip"]},
    "train": {"optimizer": "sgd", "scheduler": {"name": "cosine", "warmup_epochs": 1}, "grad_clip": None}}


def test_good_config_and_model_only_file(validator):
    assert errors(validator, GOOD) == []
    assert errors(validator, GOOD["model"]) == []


def mutate(path: str, value, delete: str | None = None) -> dict:
    document = json.loads(json.dumps(GOOD))
    *parents, last = path.split("/")
    node = document
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if delete:
        del node[delete]
    node[last] = value
    return document


@pytest.mark.parametrize("path,value,delete", [
    ("modle", {}, None),                                        # unknown top-level key
    ("model/layers/0/type", "conv2dd", None),                   # unknown layer type
    ("model/layers/1/out_chanels", 8, "out_channels"),          # misspelled argument
    ("model/layers/1/kernel_size", "three", None),              # wrong kind of value
    ("model/layers/2/p", 0.5, None),                            # a merge takes only input and axis
    ("model/width", 2, None),                                   # unknown model key
    ("model/layers/3/block_args", {}, "type"),                  # a layer with neither type nor block
    ("model/skips", [{"from": "stem", "too": "sum"}], None),    # misspelled skip key
    ("model/projection", "padd", None),
    ("data/dataset", "cifar11", None),
    ("data/batchsize", 3, None),
    ("train/optimizer", {"name": "sgd", "lr_": 0.1}, None),
    ("train/epoch", 3, None),
])
def test_mistakes_fail(validator, path, value, delete):
    assert errors(validator, mutate(path, value, delete))


def test_a_substituted_type_takes_any_arguments(validator):
    block = {"model": {"input": [4], "blocks": {"b": {"args": {"act": "relu"}, "layers": [
        {"type": "${act}", "anything": 1}]}}, "layers": [{"block": "b", "args": {"act": "gelu"}}]}}
    assert errors(validator, block) == []


def test_cli_writes_the_schema(tmp_path):
    target = tmp_path / "skiptrain.schema.json"
    result = invoke("schema", "--output", target)
    assert result.exit_code == 0, result.output
    schema = json.loads(target.read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    printed = invoke("schema")
    assert json.loads(printed.stdout) == schema
