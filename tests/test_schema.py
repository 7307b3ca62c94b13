"""`skiptrain schema`: every shipped config validates; typos a schema can see are refused."""
from __future__ import annotations

import json

import pytest
import yaml

from skiptrain.schema import config_schema

from .conftest import CONFIGS, EXAMPLES, invoke

jsonschema = pytest.importorskip("jsonschema")
TEMPLATES = sorted(__import__("pathlib").Path(__file__).resolve().parents[1].glob("skiptrain/templates/*.yaml"))
ZOO = sorted(__import__("pathlib").Path(__file__).resolve().parents[1].glob("skiptrain/zoo/*.yaml"))  # configs/zoo links here


@pytest.fixture(scope="module")
def validator():
    schema = config_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def errors(validator, document) -> list[str]:
    return [error.message for error in validator.iter_errors(document)]


@pytest.mark.parametrize("path", CONFIGS + ZOO + EXAMPLES + TEMPLATES, ids=lambda p: f"{p.parent.name}/{p.name}")
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


# -- a config's own schema (`skiptrain schema CONFIG`): its blocks' arguments and `${...}` names ------------
OWN = {"model": {"input": [3, 8, 8], "blocks": {
    "basic": {"args": {"channels": 16, "stride": 1, "act": "relu"}, "layers": [
        {"type": "conv2d", "out_channels": "${channels}", "kernel_size": 3, "stride": "${stride}"},
        {"type": "${act}"},
        {"type": "conv2d", "out_channels": "${make_divisible(channels * 0.25, 8)}", "kernel_size": 1,
         "when": "${stride == 1 and act != 'gelu'}"},
        {"type": "dropout", "p": "${1.0e-6 * block_index / (block_count - 1) + 0.5 * (repeat_index % 2)}"},
        {"type": "conv2d", "out_channels": "${in_channels // 4 + channels(input) * 0}", "kernel_size": 1}],
        "skips": [{"from": "input", "to": "conv2d_2", "when": "${stride == 1}"}]},
    "stage": {"args": {"width": None, "n": 2}, "layers": [
        {"block": "basic", "args": {"channels": "${width}"}, "first_args": {"stride": 2}, "repeat": "${n}"}]}},
    "layers": [{"block": "stage", "args": {"width": 16}, "copy_id": "s${repeat_index}", "repeat": 2},
               {"block": "basic", "args": {"channels": 32, "act": "gelu"}}]}}


@pytest.fixture(scope="module")
def own_validator(tmp_path_factory):
    path = tmp_path_factory.mktemp("own") / "own.yaml"
    path.write_text(yaml.safe_dump(OWN))
    return jsonschema.Draft202012Validator(config_schema(path))


def test_a_configs_own_schema_accepts_its_blocks(own_validator):
    assert errors(own_validator, OWN) == []


@pytest.mark.parametrize("path,value", [
    ("model/layers/1/args", {"chanels": 32}),                          # (a) not an argument of `basic`
    ("model/blocks/stage/layers/0/first_args", {"strid": 2}),          # ... nor in first_args
    ("model/layers/1/block", "basci"),                                  # not a block
    ("model/blocks/basic/layers/0/out_channels", "${chanels}"),         # (b) not a name in `basic`
    ("model/blocks/basic/layers/2/when", "${stride == 1 and width}"),   # `width` is `stage`'s, not `basic`'s
    ("model/blocks/stage/layers/0/repeat", "${n + chanels}"),
    ("model/blocks/basic/skips/0/when", "${strides == 1}"),
])
def test_a_configs_own_schema_refuses_what_its_blocks_do_not_take(own_validator, path, value):
    document = json.loads(json.dumps(OWN))
    *parents, last = path.split("/")
    node = document
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[last] = value
    assert errors(own_validator, document)


def test_the_generic_schema_cannot_know_block_arguments(validator):
    document = json.loads(json.dumps(OWN))
    document["model"]["layers"][1]["args"] = {"chanels": 32}
    assert errors(validator, document) == []


@pytest.mark.parametrize("path", [p for p in CONFIGS + ZOO + EXAMPLES if "blocks:" in p.read_text()],
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_configs_validate_against_their_own_schema(path):
    assert errors(jsonschema.Draft202012Validator(config_schema(path)), yaml.safe_load(path.read_text())) == []


def test_one_edit_patterns():
    import re

    from skiptrain.schema_types import one_edit

    pattern = re.compile(one_edit("conv2d"))
    for near in ("conv2dd", "cnv2d", "conv3d", "ocnv2d", "conv2", "xconv2d", "Conv2d"):
        assert pattern.search(near), near
    for far in ("cov1d", "linear", "conv2d_x", ""):
        assert not pattern.search(far), far


def test_cli_writes_a_configs_own_schema_and_never_over_the_config(tmp_path):
    config = tmp_path / "own.yaml"
    config.write_text(yaml.safe_dump(OWN))
    result = invoke("schema", config, "-o", tmp_path / "own.schema.json")
    assert result.exit_code == 0, result.output
    schema = json.loads((tmp_path / "own.schema.json").read_text())
    assert set(schema["$defs"]["block_name"]["anyOf"][0]["enum"]) == {"basic", "stage"}
    before = config.read_text()
    refused = invoke("schema", config, "-o", config)
    assert refused.exit_code == 1 and "Traceback" not in refused.output and config.read_text() == before
    missing = invoke("schema", tmp_path / "nope.yaml")
    assert missing.exit_code == 1 and "nope.yaml" in missing.output


def test_the_schema_file_stays_light():
    """What the editor loads: every type's description and did-you-mean patterns, well under a megabyte."""
    from skiptrain.schema import schema_text

    assert len(schema_text()) < 800_000


def test_a_configs_own_schema_follows_its_model_file(tmp_path):
    """`model: net.yaml` is read as the loader reads it; a config with no blocks gets the generic schema."""
    (tmp_path / "net.yaml").write_text(yaml.safe_dump(OWN["model"]))
    (tmp_path / "run.yaml").write_text("model: net.yaml\ndata: {dataset: digits}\n")
    own = config_schema(tmp_path / "run.yaml")
    assert set(own["$defs"]["block_name"]["anyOf"][0]["enum"]) == {"basic", "stage"}
    (tmp_path / "plain.yaml").write_text("model: {input: [4], layers: [{type: relu}]}\n")
    assert config_schema(tmp_path / "plain.yaml") == config_schema()
