from __future__ import annotations

import pytest

import skiptrain
from skiptrain.errors import ShapeError


def test_inferred_arguments_are_filled_from_incoming_shapes():
    plan = skiptrain.check_model({"input": [3, 8, 8], "layers": [
        {"id": "c", "type": "conv2d", "out_channels": 5, "kernel_size": 3},
        {"id": "n", "type": "groupnorm", "num_groups": 5},
        {"type": "flatten"},
        {"id": "fc", "type": "linear", "out_features": 2},
    ]})
    nodes = plan.graph.nodes
    assert nodes["c"].meta["args"]["in_channels"] == 3
    assert nodes["n"].meta["args"]["num_channels"] == 5
    assert nodes["fc"].meta["args"]["in_features"] == 5 * 6 * 6
    assert plan.params == (3 * 9 * 5 + 5) + 10 + (180 * 2 + 2)


def test_a_layer_that_cannot_take_its_input_names_it_and_its_line(write_yaml):
    path = write_yaml("""
        model:
          input: [3, 4, 4]
          layers:
            - {type: conv2d, out_channels: 8, kernel_size: 3}
            - {id: big, type: conv2d, out_channels: 8, kernel_size: 5}
    """)
    with pytest.raises(ShapeError) as info:
        skiptrain.check_model(path)
    assert "big" in info.value.message and "[8, 2, 2]" in info.value.message
    assert info.value.location.line == 5


def test_constructor_errors_are_config_errors():
    with pytest.raises(ShapeError, match="divisible"):
        skiptrain.check_model({"input": [5, 6], "layers": [{"type": "self_attention", "num_heads": 4}]})


def test_token_inputs_flow_through_embedding():
    plan = skiptrain.check_model({"input": [12], "input_dtype": "int64", "layers": [
        {"type": "embedding", "num_embeddings": 100, "embedding_dim": 16},
        {"type": "self_attention", "num_heads": 4}, {"type": "mean", "dim": 0},
        {"type": "linear", "out_features": 3}]})
    assert plan.output_shape == (3,)


def test_billions_of_parameters_are_checked_without_allocating():
    plan = skiptrain.check_model({"input": [65536], "layers": [
        {"type": "linear", "out_features": 65536}, {"type": "linear", "out_features": 65536}]})
    assert plan.params > 8_000_000_000


def test_deep_networks_reuse_shape_results():
    model = {"input": [16], "blocks": {"b": {"layers": [{"type": "linear", "out_features": 16}, {"type": "relu"}],
                                             "skips": [{"from": "input", "to": "linear_1"}]}},
             "layers": [{"id": "s", "block": "b", "repeat": 500}]}
    plan = skiptrain.check_model(model)
    assert len(plan.graph.nodes) == 1000 and plan.output_shape == (16,)


def test_unused_branches_are_warned():
    plan = skiptrain.check_model({"input": [4], "layers": [
        {"id": "a", "type": "linear", "out_features": 4}, {"id": "b", "type": "linear", "out_features": 4,
                                                            "input": "input"}]})
    assert plan.warnings == ["`a`'s output is never used"]


def test_yaml_lists_reach_torch_as_tuples():
    plan = skiptrain.check_model({"input": [2, 4, 4], "layers": [{"type": "upsample", "scale_factor": [2, 1]}]})
    assert plan.output_shape == (2, 8, 4)
