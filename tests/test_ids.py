"""Ids that torchvision's state-dict keys need: Sequential-style indices (`features.3.squeeze`) and
named projections (a skip's `id: downsample` puts its projection at `<scope>.downsample`)."""
from __future__ import annotations

import pytest

import skiptrain
from skiptrain.errors import ConfigError

BLOCK = """
model:
  name: ids
  input: [4, 8, 8]
  blocks:
    res:
      args: {c: 4, s: 1}
      layers:
        - {id: 0, type: conv2d, out_channels: "${c}", kernel_size: 3, stride: "${s}", padding: 1, bias: false}
        - {id: "1", type: batchnorm2d}
      skips:
        - {from: input, to: 1, id: downsample}
  layers:
    - {id: features, block: res, repeat: 2, args: {c: 8}, first_args: {s: 2}}
    - {id: 12, type: relu}
    - {type: global_avgpool, input: 12}
    - {id: fc, type: linear, out_features: 3}
"""


def test_index_ids_and_a_named_projection_give_torchvisions_keys(write_yaml):
    model = skiptrain.build_model(write_yaml(BLOCK))
    keys = list(model.state_dict())
    assert "features.0.0.weight" in keys and "features.1.1.running_mean" in keys
    assert [k for k in keys if "downsample" in k][:2] == ["features.0.downsample.0.weight",
                                                           "features.0.downsample.1.weight"]
    assert not any("_proj" in k for k in keys)  # the second copy needs no projection: its name goes unused
    report = skiptrain.check_model(write_yaml(BLOCK))
    assert [p.id for p in report.projections.values()] == ["features.0.downsample"]


def test_dotted_references_to_index_ids(write_yaml):
    text = BLOCK.replace("- {type: global_avgpool, input: 12}", "- {type: global_avgpool, input: features.1.1}")
    assert skiptrain.check_model(write_yaml(text)).output_shape == (3,)


def test_an_id_may_be_computed_from_block_arguments(write_yaml):
    text = BLOCK.replace('args: {c: 4, s: 1}', 'args: {c: 4, s: 1, k: 1}').replace('id: "1"', 'id: "${k}"')
    model = skiptrain.build_model(write_yaml(text))
    assert "features.1.1.weight" in model.state_dict()


@pytest.mark.parametrize("bad", ['"01"', '"1a"', "-1", "true", '"a.b"', "input", "1.5"])
def test_invalid_ids_are_located_errors(write_yaml, bad):
    path = write_yaml(BLOCK.replace("- {id: 12, type: relu}", f"- {{id: {bad}, type: relu}}"))
    with pytest.raises(ConfigError) as info:
        skiptrain.check_model(path)
    assert "invalid id" in info.value.message
    assert info.value.location.line == 14 and "indices like `0`" in info.value.hint


def test_an_index_id_used_twice_is_an_error(write_yaml):
    path = write_yaml(BLOCK.replace('id: "1"', "id: 0"))
    with pytest.raises(ConfigError, match="used twice"):
        skiptrain.check_model(path)


@pytest.mark.parametrize("name, clash", [("0", "a layer's id"), ("fc_proj", None)])
def test_a_skip_id_that_clashes_with_a_layer_is_a_located_error(write_yaml, name, clash):
    path = write_yaml(BLOCK.replace("id: downsample", f"id: {name}"))
    if clash is None:  # not taken: fine
        assert skiptrain.check_model(path).params > 0
        return
    with pytest.raises(ConfigError) as info:
        skiptrain.check_model(path)
    assert clash in info.value.message and info.value.location.line == 11
    assert "downsample" in info.value.hint


def test_two_skips_with_one_id_is_an_error(write_yaml):
    text = BLOCK.replace("        - {from: input, to: 1, id: downsample}",
                         "        - {from: input, to: 1, id: downsample}\n"
                         "        - {from: input, to: 0, id: downsample}")
    with pytest.raises(ConfigError, match="another skip's id"):
        skiptrain.check_model(write_yaml(text))


def test_a_skip_id_is_one_name(write_yaml):
    with pytest.raises(ConfigError, match="invalid id `a.b`"):
        skiptrain.check_model(write_yaml(BLOCK.replace("id: downsample", "id: a.b")))
