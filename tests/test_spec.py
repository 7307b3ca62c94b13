from __future__ import annotations

import pytest

import skiptrain
from skiptrain.config import load_config
from skiptrain.errors import ConfigError
from skiptrain.spec import expand

BLOCKS = """
model:
  input: [3, 16, 16]
  width_multiplier: WIDTH
  depth_multiplier: DEPTH
  blocks:
    inner:
      args: {c: 8}
      layers:
        - {id: conv, type: conv2d, out_channels: "${c}", kernel_size: 3, padding: 1}
        - {type: relu}
    outer:
      args: {c: 8}
      layers:
        - {id: a, block: inner, args: {c: "${c * 2}"}}
        - {id: b, block: inner, repeat: 2}
      skips:
        - {from: input, to: b.1.conv}
  layers:
    - {id: stem, type: conv2d, out_channels: 8, kernel_size: 1}
    - {id: stage, block: outer, repeat: 2, args: {c: 4}}
    - {type: global_avgpool}
    - {id: head, type: linear, out_features: 10, scale: false}
  skips:
    - {from: stem, to: stage.1.a.conv}
"""


def graph_of(write_yaml, text):
    return expand(load_config(write_yaml(text)).model)


def test_hierarchical_and_automatic_ids(write_yaml):
    graph = graph_of(write_yaml, BLOCKS.replace("WIDTH", "1.0").replace("DEPTH", "1.0"))
    ids = list(graph.nodes)
    assert ids[:6] == ["stem", "stage.0.a.conv", "stage.0.a.relu_1", "stage.0.b.0.conv",
                       "stage.0.b.0.relu_1", "stage.0.b.1.conv"]
    assert ids[-2:] == ["global_avgpool_1", "head"]
    assert graph.nodes["stage.0.a.conv"].args["out_channels"] == 8  # ${c * 2} with c=4
    assert graph.nodes["stage.1.b.0.conv"].args["out_channels"] == 8  # inner default
    # the block skip: `input` of stage.1 is the output of stage.0 (its last relu)
    inner = [(s.source, s.target) for s in graph.skips if s.target == "stage.1.b.1.conv"]
    assert inner == [("stage.0.b.1.relu_1", "stage.1.b.1.conv")]
    assert ("stem", "stage.1.a.conv") in [(s.source, s.target) for s in graph.skips]
    assert graph.output == "head"


def test_width_and_depth_multipliers(write_yaml):
    graph = graph_of(write_yaml, BLOCKS.replace("WIDTH", "2.0").replace("DEPTH", "1.5"))
    assert graph.nodes["stem"].args["out_channels"] == 16
    assert graph.nodes["stage.0.a.conv"].args["out_channels"] == 16
    assert graph.nodes["head"].args["out_features"] == 10  # scale: false
    assert "stage.2.a.conv" in graph.nodes  # repeat 2 * 1.5 = 3
    assert "stage.0.b.2.conv" in graph.nodes


def test_merge_layers_become_skips(write_yaml):
    graph = graph_of(write_yaml, """
        model:
          input: [8]
          layers:
            - {id: a, type: linear, out_features: 8}
            - {id: b, type: linear, out_features: 8, input: input}
            - {id: sum, type: add, input: [a, b]}
    """)
    assert graph.nodes["sum"].inputs == ["a"]
    assert [(s.source, s.merge, s.implicit) for s in graph.skips_into("sum")] == [("b", "add", True)]


@pytest.mark.parametrize("text, message, hint", [
    ("layers: [{type: relu}, {type: relu, input: relu_3}]", "unknown id `relu_3`", "relu_1"),
    ("layers: [{id: a, type: relu}]\n  skips: [{from: a, to: a}]", "to itself", None),
    ("layers: [{id: a, type: relu}, {id: b, type: relu}]\n  skips: [{from: b, to: a}]", "points backwards", "swap"),
    ("layers: [{id: a, type: relu, input: b}, {id: b, type: relu}]", "comes later", None),
    ("layers: [{id: a, type: relu}, {id: a, type: relu}]", "used twice", None),
    ("layers: [{id: a.b, type: relu}]", "invalid id", None),
    ("layers: [{block: nope}]", "unknown block", None),
    ("layers: [{type: relu}]\n  skips: [{from: input, to: relu_l}]", "unknown id", "relu_1"),
    ("layers: [{type: relu}]\n  skips: [{from: input, to: relu_1, merge: sum}]", "unknown merge", "valid merges"),
    ("layers: [{type: relu}]\n  skips: [{from: input, to: relu_1, projection: zero}]", "projection policy", None),
    ("layers: [{type: relu}]\n  skips: [{frm: input, to: relu_1}]", "needs `from:`", None),
    ("layers: [{type: relu, input: [input, input]}]", "takes one input", "add"),
    ("layers: [{type: add, input: input}]", "merges several", None),
    ("layers: []", "non-empty", None),
    ("layrs: []", "unknown key `layrs`", "layers"),
])
def test_graph_errors_are_located(write_yaml, text, message, hint):
    path = write_yaml(f"model:\n  input: [4]\n  {text}\n")
    with pytest.raises(ConfigError) as info:
        expand(load_config(path).model)
    assert message in info.value.message
    assert info.value.location is not None and info.value.location.file == str(path)
    if hint:
        assert hint in info.value.hint


def test_recursive_blocks_are_an_error(write_yaml):
    path = write_yaml("""
        model:
          input: [4]
          blocks:
            a: {layers: [{block: b}]}
            b: {layers: [{type: relu}, {block: a}]}
          layers: [{block: a}]
    """)
    with pytest.raises(ConfigError, match=r"a -> b -> a"):
        expand(load_config(path).model)


def test_block_argument_errors(write_yaml):
    base = """
        model:
          input: [4]
          blocks:
            fc: {args: {width: 8}, layers: [{type: linear, out_features: "${width}"}]}
          layers: [LAYER]
    """
    with pytest.raises(ConfigError) as info:
        expand(load_config(write_yaml(base.replace("LAYER", "{block: fc, args: {widht: 4}}"))).model)
    assert "width" in info.value.hint
    with pytest.raises(ConfigError, match="repeat"):
        expand(load_config(write_yaml(base.replace("LAYER", "{block: fc, repeat: 0}"))).model)


def test_bad_input_shape(write_yaml):
    with pytest.raises(ConfigError, match="positive integers"):
        expand(load_config(write_yaml("model: {input: [3, -1], layers: [{type: relu}]}")).model)


def test_auto_ids_use_the_substituted_type(write_yaml):
    graph = graph_of(write_yaml, """
        model:
          input: [4]
          blocks: {b: {args: {act: relu}, layers: [{type: "${act}"}]}}
          layers: [{id: x, block: b}]
    """)
    assert list(graph.nodes) == ["x.relu_1"]


def test_unknown_id_inside_a_block_suggests_only_visible_ids(write_yaml):
    path = write_yaml("""
        model:
          input: [4]
          blocks: {b: {layers: [{id: fc, type: linear, out_features: 4}, {type: relu, input: stem}]}}
          layers:
            - {id: stem, type: linear, out_features: 4}
            - {block: b}
    """)
    with pytest.raises(ConfigError) as info:
        expand(load_config(path).model)
    assert "`stem`" not in (info.value.hint or "")


def test_merge_layers_reject_other_keys_with_a_location(write_yaml):
    path = write_yaml("""
        model:
          input: [4]
          layers:
            - {id: a, type: relu}
            - {id: s, type: add, input: [a, input], projection: none}
    """)
    with pytest.raises(ConfigError) as info:
        expand(load_config(path).model)
    assert info.value.location.line == 5 and "projection" in info.value.message


def test_first_args_change_only_the_first_copy(write_yaml):
    graph = graph_of(write_yaml, """
        model:
          input: [4, 8, 8]
          blocks:
            b: {args: {c: 4, s: 1}, layers: [{id: conv, type: conv2d, out_channels: "${c}", kernel_size: 1, stride: "${s}"}]}
          layers:
            - {id: layer2, block: b, repeat: 3, args: {c: 8}, first_args: {s: 2}}
    """)
    strides = [graph.nodes[f"layer2.{k}.conv"].args["stride"] for k in range(3)]
    widths = [graph.nodes[f"layer2.{k}.conv"].args["out_channels"] for k in range(3)]
    assert strides == [2, 1, 1] and widths == [8, 8, 8]
    with pytest.raises(ConfigError) as info:
        graph_of(write_yaml, """
            model:
              input: [4, 8, 8]
              blocks: {b: {args: {s: 1}, layers: [{type: relu}]}}
              layers: [{block: b, repeat: 2, first_args: {stride: 2}}]
        """)
    assert "has no argument `stride`" in info.value.message and info.value.location.line == 4


# -- found by tests/test_fuzz.py ---------------------------------------------------------------------

def test_a_merge_layer_axis_must_be_an_integer():
    with pytest.raises(ConfigError, match="`axis:` must be an integer"):
        skiptrain.check_model({"input": [4], "layers": [
            {"id": "a", "type": "relu"}, {"type": "concat", "input": ["a", "input"], "axis": "x"}]})


@pytest.mark.parametrize("args, first_args", [({}, "zz"), ({"c": 2}, [1])])
def test_first_args_must_be_a_mapping(args, first_args):
    with pytest.raises(ConfigError, match="`first_args:` must be a mapping"):
        skiptrain.check_model({"input": [4], "blocks": {"b": {"args": {"c": 1}, "layers": [{"type": "relu"}]}},
                               "layers": [{"block": "b", "args": args, "first_args": first_args}]})


def test_width_multiplier_leaves_invalid_sizes_to_be_refused():
    """A negative width stayed negative only without a multiplier (it became 1); a huge one overflowed."""
    def model(width):
        return {"input": [4], "width_multiplier": 0.5, "layers": [{"type": "linear", "out_features": width}]}
    with pytest.raises(ConfigError):
        skiptrain.check_model(model(-6))
    with pytest.raises(ConfigError, match="too large to scale"):
        skiptrain.check_model(model(10 ** 400))
    assert skiptrain.check_model(model(1)).output_shape == (1,)  # small widths still round up to 1


def test_nested_repeats_that_explode_are_refused(monkeypatch):
    monkeypatch.setattr("skiptrain.spec.MAX_NODES", 1000)
    model = {"input": [4], "blocks": {"inner": {"layers": [{"type": "relu"}]},
                                      "outer": {"layers": [{"block": "inner", "repeat": 100}]}},
             "layers": [{"block": "outer", "repeat": 100}]}
    with pytest.raises(ConfigError, match="more than 1,000 layers"):
        expand(load_config(model).model)


@pytest.mark.parametrize("name", ["a\x00b", "two\nlines", ["x"]])
def test_a_model_name_is_one_line_of_text(name):
    """A NUL in `name` reached `compile()` as the forward's file name: ValueError."""
    with pytest.raises(ConfigError, match="`name:` must be one line"):
        skiptrain.check_model({"name": name, "input": [4], "layers": [{"type": "relu"}]})
    assert skiptrain.check_model({"name": "ñandú 2", "input": [4], "layers": [{"type": "relu"}]})
