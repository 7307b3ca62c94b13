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


COPIES = """
model:
  name: copies
  input: [4, 8, 8]
  blocks:
    layer:
      layers:
        - {id: conv, type: conv2d, out_channels: 4, kernel_size: 1}
  layers:
    - {id: block, block: layer, repeat: 3, copy_id: "denselayer${repeat_index + 1}"}
    - {id: stage, block: layer, repeat: 2, copy_id: "block1-${repeat_index}"}
    - {type: relu, input: block.denselayer2}
"""


def test_copy_id_names_each_copy_as_torchvision_does(write_yaml):
    model = skiptrain.build_model(write_yaml(COPIES))
    assert [k for k in model.state_dict() if k.endswith("weight")] == [
        "block.denselayer1.conv.weight", "block.denselayer2.conv.weight", "block.denselayer3.conv.weight",
        "stage.block1-0.conv.weight", "stage.block1-1.conv.weight"]
    assert model.code.count("relu") >= 1


@pytest.mark.parametrize("copy_id, message", [('"layer"', "two copies the id `layer`"),
                                               ('"a.${repeat_index}"', "invalid id `a.0`")])
def test_a_copy_id_must_name_each_copy_apart(write_yaml, copy_id, message):
    path = write_yaml(COPIES.replace('"denselayer${repeat_index + 1}"', copy_id))
    with pytest.raises(ConfigError) as info:
        skiptrain.check_model(path)
    assert message in info.value.message and info.value.location.line == 9


def test_copy_id_needs_repeat(write_yaml):
    path = write_yaml(COPIES.replace("repeat: 2, ", ""))
    with pytest.raises(ConfigError, match="names the copies of a repeated block") as info:
        skiptrain.check_model(path)
    assert "repeat" in info.value.hint


RENUMBERED = """
model:
  name: renumbered
  input: [4, 8, 8]
  blocks:
    branch:
      args: {expand: true}
      layers:
        - {id: 0, type: conv2d, out_channels: 8, kernel_size: 1, when: "${expand}"}
        - {id: "${1 if expand else 0}", type: conv2d, out_channels: 4, kernel_size: 3, padding: 1}
        - {id: "${2 if expand else 1}", type: batchnorm2d}
  layers:
    - {id: a, block: branch}
    - {id: b, block: branch, args: {expand: false}}
"""


def test_a_left_out_layer_may_share_its_id_with_a_kept_one(write_yaml):
    # torchvision renumbers a Sequential when a layer is absent: MobileNetV2's `conv.0` is the
    # expansion conv, or the depthwise conv where there is no expansion
    keys = [k for k in skiptrain.build_model(write_yaml(RENUMBERED)).state_dict() if k.endswith("weight")]
    assert keys == ["a.0.weight", "a.1.weight", "a.2.weight", "b.0.weight", "b.1.weight"]


def test_two_kept_layers_with_one_id_is_still_an_error(write_yaml):
    path = write_yaml(RENUMBERED.replace('"${1 if expand else 0}"', "0"))
    with pytest.raises(ConfigError, match="used twice") as info:
        skiptrain.check_model(path)
    assert "left out by `when:` may share" in info.value.hint


def test_after_a_left_out_layer_with_its_own_input_the_chain_reads_the_previous_kept_layer(write_yaml):
    # ShuffleNet's unit: two concats with one id, one per stride; the left-out one (after the kept one)
    # must not reroute the next layer to its own `input:`
    path = write_yaml("""
        model:
          name: alternatives
          input: [4, 8, 8]
          blocks:
            unit:
              args: {stride: 1}
              layers:
                - {id: a, type: conv2d, out_channels: 2, kernel_size: 1}
                - {id: b, type: conv2d, out_channels: 2, kernel_size: 1, input: input}
                - {id: out, type: concat, input: [a, b], when: "${stride == 1}"}
                - {id: out, type: concat, input: [b, a], when: "${stride > 1}"}
                - {id: act, type: relu}
          layers:
            - {id: u, block: unit}
        """)
    graph = skiptrain.check_model(path).graph
    assert graph.nodes["u.act"].inputs == ["u.out"]
    assert graph.unused() == []


@pytest.mark.parametrize("layer_id, skip_id", [("training", None), ("forward", None), ("stage.eval", None),
                                               ("code", None), ("conv", "parameters")])
def test_an_id_that_would_hide_a_module_attribute_is_a_located_error(write_yaml, layer_id, skip_id):
    """Ids become submodule names: `training` or `forward` used to crash the build with a KeyError."""
    *scope, leaf = layer_id.split(".")
    layers = f"- {{id: {leaf}, type: conv2d, out_channels: 8, kernel_size: 1}}"
    skip = f"\n      skips: [{{from: input, to: {leaf}, id: {skip_id}}}]" if skip_id else ""
    body = (f"  blocks:\n    b:\n      layers:\n        {layers}{skip}\n  layers:\n    - {{id: {scope[0]}, block: b}}"
            if scope else f"  layers:\n    {layers}" + (f"\n  skips: [{{from: input, to: {leaf}, id: {skip_id}}}]"
                                                        if skip_id else ""))
    path = write_yaml(f"model:\n  input: [4, 8, 8]\n{body}\n")
    with pytest.raises(ConfigError, match="torch.nn.Module attribute") as info:
        skiptrain.check_model(path)
    assert info.value.location is not None and info.value.location.line is not None
    assert "rename it" in info.value.hint
