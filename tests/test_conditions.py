"""`when:` on layers, skips and instances; arguments that read shapes; copy and block counters."""
from __future__ import annotations

import pytest
import torch

import skiptrain
from skiptrain.config import load_config
from skiptrain.errors import ConfigError
from skiptrain.spec import expand

INVERTED_RESIDUAL = """
model:
  input: [16, 8, 8]
  blocks:
    inverted_residual:            # torchvision's MobileNetV2 block, written once
      args: {out: null, stride: 1, expand_ratio: 6}
      layers:
        - {id: expand, type: conv2d, out_channels: "${in_channels * expand_ratio}", kernel_size: 1, bias: false,
           when: "${expand_ratio != 1}"}
        - {id: expand_bn, type: batchnorm2d, when: "${expand_ratio != 1}"}
        - {id: expand_act, type: relu6, when: "${expand_ratio != 1}"}
        - {id: dw, type: conv2d, out_channels: "${in_channels}", groups: "${in_channels}", kernel_size: 3,
           stride: "${stride}", padding: 1, bias: false}
        - {id: dw_bn, type: batchnorm2d}
        - {id: dw_act, type: relu6}
        - {id: project, type: conv2d, out_channels: "${out}", kernel_size: 1, bias: false}
        - {id: project_bn, type: batchnorm2d}
      skips:
        - {from: input, to: project_bn, projection: none,
           when: "${stride == 1 and shape(input) == shape(project_bn)}"}
  layers:
    - {id: b, block: inverted_residual, args: ARGS}
"""


def model_of(write_yaml, text):
    return skiptrain.build_model(write_yaml(text)).eval()


@pytest.mark.parametrize("args, inp, oup, stride, ratio", [
    ("{out: 16, expand_ratio: 1}", 16, 16, 1, 1),
    ("{out: 16}", 16, 16, 1, 6),
    ("{out: 24}", 16, 24, 1, 6),
    ("{out: 16, stride: 2}", 16, 16, 2, 6),
    ("{out: 24, stride: 2, expand_ratio: 1}", 16, 24, 2, 1),
])
def test_the_inverted_residual_is_torchvisions_both_ways(write_yaml, args, inp, oup, stride, ratio):
    """The expansion conv only when the ratio is not 1, the skip only when stride is 1 and widths match."""
    from torchvision.models.mobilenetv2 import InvertedResidual

    model = model_of(write_yaml, INVERTED_RESIDUAL.replace("ARGS", args))
    reference = InvertedResidual(inp, oup, stride, ratio).eval()
    names = {name.split(".")[1] for name in model.state_dict()}
    assert ("expand" in names) == (ratio != 1) and ("expand_bn" in names) == (ratio != 1)
    plan = skiptrain.check_model(write_yaml(INVERTED_RESIDUAL.replace("ARGS", args)))
    assert len(plan.graph.skips) == int(reference.use_res_connect) and plan.projection_params == 0
    ours, theirs = model.state_dict(), reference.state_dict()
    assert [tuple(t.shape) for t in ours.values()] == [tuple(t.shape) for t in theirs.values()]
    generator = torch.Generator().manual_seed(0)
    for key, value in theirs.items():  # every tensor random (BN statistics too): a wrong pairing shows
        value.copy_(torch.rand(value.shape, generator=generator) + 0.5 if value.is_floating_point() else value)
    model.load_state_dict(dict(zip(ours, theirs.values())))
    x = torch.randn(2, 16, 8, 8, generator=generator)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


REMOVED = """
model:
  input: [4]
  blocks:
    fc:
      args: {extra: false}
      layers:
        - {id: a, type: linear, out_features: 6}
        - {id: b, type: relu, when: "${extra}"}
        - {id: c, type: linear, out_features: 5, input: b}
  layers:
    - {id: x, block: fc, args: {extra: false}}
    - {id: y, block: fc, args: {extra: true}, when: "${1 > 2}"}
    - {id: z, type: linear, out_features: 3, input: y}
"""


def test_a_left_out_layer_or_instance_passes_its_input_through(write_yaml):
    graph = expand(load_config(write_yaml(REMOVED)).model)
    assert list(graph.nodes) == ["x.a", "x.c", "z"]
    assert graph.nodes["x.c"].inputs == ["x.a"]  # `input: b` reads what b would have read
    assert graph.nodes["z"].inputs == ["x.c"]  # y is left out: it stands for its input, x


@pytest.mark.parametrize("when, kept", [("true", True), ("false", False), ('"${2 > 1}"', True),
                                        ('"${not (2 > 1)}"', False)])
def test_when_takes_yaml_booleans_and_conditions(write_yaml, when, kept):
    graph = expand(load_config(write_yaml(f"""
    model:
      input: [4]
      layers:
        - {{id: a, type: linear, out_features: 4}}
        - {{id: r, type: relu, when: {when}}}
        - {{id: b, type: linear, out_features: 4}}
      skips:
        - {{from: a, to: b, when: {when}}}
    """)).model)
    assert ("r" in graph.nodes) is kept
    assert len(graph.skips) == int(kept)
    assert graph.nodes["b"].inputs == ["r" if kept else "a"]  # the next layer reads the previous existing one


def test_a_left_out_auto_named_layer_takes_no_id(write_yaml):
    graph = expand(load_config(write_yaml("""
    model:
      input: [4]
      layers:
        - {type: relu, when: false}
        - {type: relu}
    """)).model)
    assert list(graph.nodes) == ["relu_1"]


@pytest.mark.parametrize("text, message, hint", [
    ("layers: [{type: relu, when: 3}]", "`when:` of a layer must be true or false, not 3", "stride == 1"),
    ("layers: [{type: relu, when: \"${1 + 1}\"}]", "must be true or false, not 2", "when:"),
    ("layers: [{type: relu, when: \"${in_channels > 2}\"}]", "reads a shape", "layer argument"),
    ("layers: [{id: a, type: relu}, {id: b, type: relu, when: false}]\n  skips: [{from: a, to: b}]",
     "names a layer that its `when:` leaves out", "same `when:`"),
    ("layers: [{id: a, type: relu}, {type: relu}]\n  skips: [{from: input, to: a, when: 1}]",
     "`when:` of a skip must be true or false, not 1", "shape(input)"),
    ("layers: [{id: a, type: relu}, {type: relu}]\n  skips: [{from: input, to: a, when: \"${in_shape == 1}\"}]",
     "a skip has no single incoming shape", "shape(input)"),
    ("blocks: {b: {layers: [{id: r, type: relu}]}}\n  layers: [{id: i, block: b, when: false}, {type: relu, input: i.r}]",
     "`i` is left out by its `when:`", "stands for its input"),
    ("blocks: {b: {layers: [{type: relu}]}}\n  layers: [{block: b, when: \"${x}\"}]", "uses `x`", "no `args:`"),
])
def test_condition_mistakes_are_located(write_yaml, text, message, hint):
    path = write_yaml(f"model:\n  input: [4]\n  {text}\n")
    with pytest.raises(ConfigError) as info:
        skiptrain.check_model(path)
    assert message in info.value.message and hint in info.value.hint
    assert info.value.location is not None and info.value.location.line >= 3


def test_a_skip_condition_on_shapes_is_decided_by_the_shape_pass(write_yaml):
    text = """
    model:
      input: [8]
      layers:
        - {id: a, type: linear, out_features: WIDTH}
        - {id: b, type: linear, out_features: 8}
      skips:
        - {from: input, to: a, when: "${shape(input) == shape(a)}"}
    """
    assert len(skiptrain.check_model(write_yaml(text.replace("WIDTH", "8"))).graph.skips) == 1
    plan = skiptrain.check_model(write_yaml(text.replace("WIDTH", "4")))
    assert plan.graph.skips == [] and plan.projections == {}
    model = skiptrain.build_model(write_yaml(text.replace("WIDTH", "4")))
    assert model(torch.randn(2, 8)).shape == (2, 8)
    assert "a_proj" not in dict(model.named_modules())


DENSE = """
model:
  input: [8, 8, 8]
  width_multiplier: WIDTH
  blocks:
    dense_layer:
      args: {growth: 4}
      layers:
        - {type: batchnorm2d}
        - {type: relu}
        - {id: conv, type: conv2d, out_channels: "${growth}", kernel_size: 3, padding: 1, bias: false}
        - {id: cat, type: concat, input: [input, conv]}
    transition:
      layers:
        - {type: batchnorm2d}
        - {type: relu}
        - {id: conv, type: conv2d, out_channels: "${in_channels // 2}", kernel_size: 1, bias: false}
        - {type: avgpool2d, kernel_size: 2}
    squeeze:
      args: {squeeze: null}
      layers:
        - {id: fc1, type: conv2d, out_channels: "${squeeze}", kernel_size: 1}
        - {id: fc2, type: conv2d, out_channels: "${channels(input)}", kernel_size: 1}
  layers:
    - {id: dense, block: dense_layer, repeat: 3}
    - {id: trans, block: transition}
    - {id: se, block: squeeze, args: {squeeze: "${make_divisible(in_channels // 4, 8)}"}}
    - {id: last, type: conv2d, out_channels: "${in_shape[0] + in_shape[-1]}", kernel_size: 1}
"""


def test_arguments_that_read_the_incoming_shape(write_yaml):
    plan = skiptrain.check_model(write_yaml(DENSE.replace("WIDTH", "1.0")))
    nodes = plan.graph.nodes
    assert nodes["dense.2.cat"].meta["shape"] == (8 + 3 * 4, 8, 8)
    assert nodes["trans.conv"].meta["args"]["out_channels"] == 10  # DenseNet's transition: half its input
    assert nodes["se.fc1"].meta["args"]["out_channels"] == 8  # make_divisible(10 // 4, 8), the instance's input
    assert nodes["se.fc2"].meta["args"]["out_channels"] == 10  # the block's input channels
    assert nodes["last"].meta["shape"] == (10 + 4, 4, 4)
    assert "${in_channels // 2}" in str(plan.graph)  # the spec keeps the expression; meta has its value


def test_a_width_read_from_a_shape_is_not_scaled_again(write_yaml):
    plan = skiptrain.check_model(write_yaml(DENSE.replace("WIDTH", "2.0")))
    # the growth (a literal) doubles; the transition halves its (already doubled) input, no second scaling
    assert plan.graph.nodes["dense.2.cat"].meta["shape"][0] == 8 + 3 * 8
    assert plan.graph.nodes["trans.conv"].meta["args"]["out_channels"] == (8 + 3 * 8) // 2


@pytest.mark.parametrize("text, message", [
    ('{type: linear, out_features: "${in_features // 0}"}', "divides by zero"),
    ('{type: linear, out_features: "${shape(nope)[0]}"}', "unknown id `nope`"),
    ('{type: linear, out_features: "${in_shape[3]}"}', "indexes the shape [4]"),
    ('{type: linear, out_features: "x${in_features}"}', "reads a shape"),
    ('{id: "${in_features}", type: relu}', "reads a shape"),
    ('{type: "${in_features}"}', "reads a shape"),
    ('{type: linear, out_features: "${shape(input.x)}"}', "takes one id"),
])
def test_shape_expression_mistakes_are_located(write_yaml, text, message):
    path = write_yaml(f"model:\n  input: [4]\n  layers:\n    - {text}\n")
    with pytest.raises(ConfigError) as info:
        skiptrain.check_model(path)
    assert message in info.value.message
    assert info.value.location is not None and info.value.location.line == 4


def test_repeat_cannot_read_a_shape(write_yaml):
    path = write_yaml("""
    model:
      input: [4]
      blocks: {b: {args: {n: 1}, layers: [{type: relu}]}}
      layers:
        - {block: b, repeat: "${in_features}"}
    """)
    with pytest.raises(ConfigError, match="reads a shape"):
        skiptrain.check_model(path)


COUNTERS = """
model:
  input: [4]
  blocks:
    res:
      args: {rate: 0.4}
      layers:
        - {id: fc, type: linear, out_features: 4}
        - {id: drop, type: dropout, p: "${rate * block_index / (block_count - 1)}"}
        - {id: tag, type: linear, out_features: "${10 * repeat_index + repeat_count}"}
    tagged:
      args: {k: 1}
      layers:
        - {id: fc, type: linear, out_features: "${k}"}
  layers:
    - {id: s1, block: res, repeat: 2}
    - {id: mid, type: linear, out_features: 4}
    - {id: s2, block: res, repeat: 3, args: {rate: "${0.4 + 0.0 * repeat_index}"}}
    - {id: s3, block: tagged, repeat: 2, args: {k: "${10 * block_index + block_count}"}}
"""


def test_copy_and_block_counters(write_yaml):
    graph = expand(load_config(write_yaml(COUNTERS)).model)
    rates = [node.args["p"] for node in graph.order if node.id.endswith("drop")]
    assert rates == pytest.approx([0.4 * k / 4 for k in range(5)])  # rising over all 5 blocks, as timm does
    tags = [node.args["out_features"] for node in graph.order if node.id.endswith("tag")]
    assert tags == [2, 12, 3, 13, 23]
    # an instance's args see the counters of the copy they are for, block_count included
    assert [graph.nodes[f"s3.{k}.fc"].args["out_features"] for k in (0, 1)] == [2, 12]


def test_block_count_follows_depth_multiplier_and_when(write_yaml):
    text = COUNTERS.replace("  input: [4]", "  input: [4]\n  depth_multiplier: 2.0").replace(
        "    - {id: s2,", "    - {id: gone, block: res, repeat: 4, when: false}\n    - {id: s2,")
    graph = expand(load_config(write_yaml(text)).model)
    rates = [node.args["p"] for node in graph.order if node.id.endswith("drop")]
    assert rates == pytest.approx([0.4 * k / 9 for k in range(10)])


def test_block_count_cannot_decide_how_many_copies(write_yaml):
    path = write_yaml("""
    model:
      input: [4]
      blocks:
        b:
          layers: [{type: relu}]
        c:
          layers:
            - {block: b, when: "${block_count < 5}"}
      layers:
        - {block: c, repeat: 2}
        - {block: b}
    """)
    with pytest.raises(ConfigError, match="depends on `block_count`"):
        skiptrain.check_model(path)


RISING = """
model:
  name: rising
  input: [1, 8, 8]
  blocks:
    res:
      args: {rate: 0.6}
      layers:
        - {id: conv, type: conv2d, out_channels: 8, kernel_size: 3, padding: 1}
        - {type: relu}
        - {id: drop, type: DROP, p: "${rate * block_index / (block_count - 1)}"EXTRA}
      skips:
        - {from: input, to: drop}
  layers:
    - {id: stem, type: conv2d, out_channels: 8, kernel_size: 3, padding: 1}
    - {id: s1, block: res, repeat: 2}
    - {id: s2, block: res, repeat: 2}
    - {type: global_avgpool}
    - {id: head, type: linear, out_features: 4}
data: {dataset: synthetic, num_samples: 96, num_classes: 4, batch_size: 32}
train: {epochs: 2, optimizer: {name: sgd, lr: 0.05}, device: cpu, deterministic: true}
"""


@pytest.mark.parametrize("layer, extra", [("dropout", ""), ("stochastic_depth", ", mode: row")])
def test_exact_resume_with_a_drop_rate_rising_over_the_blocks(write_yaml, tmp_path, layer, extra):
    from skiptrain import registry
    from .conftest import straight_and_resumed

    if layer not in registry.names():
        pytest.skip(f"`{layer}` is not a registered layer type here")
    config = write_yaml(RISING.replace("DROP", layer).replace("EXTRA", extra))
    plan = skiptrain.check_model(config)
    rates = [node.meta["args"]["p"] for node in plan.graph.order if node.id.endswith("drop")]
    assert rates == pytest.approx([0.0, 0.2, 0.4, 0.6])
    a, b, _ = straight_and_resumed(config, tmp_path)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_a_left_out_instance_still_has_its_keys_checked(write_yaml):
    path = write_yaml("""
    model:
      input: [4]
      blocks: {b: {layers: [{type: relu}]}}
      layers:
        - {block: b, when: false, repaet: 2}
        - {type: relu}
    """)
    with pytest.raises(ConfigError, match="unknown key `repaet`") as info:
        skiptrain.check_model(path)
    assert "repeat" in info.value.hint


def test_block_count_in_a_top_level_instances_args_is_counted(write_yaml):
    graph = expand(load_config(write_yaml("""
    model:
      input: [4]
      blocks:
        tagged:
          args: {k: 1}
          layers: [{id: fc, type: linear, out_features: "${k}"}]
      layers:
        - {id: s, block: tagged, repeat: 3, args: {k: "${10 * block_index + block_count}"}}
    """)).model)
    assert [graph.nodes[f"s.{k}.fc"].args["out_features"] for k in range(3)] == [3, 13, 23]
