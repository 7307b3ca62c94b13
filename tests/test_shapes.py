from __future__ import annotations

import pytest

import skiptrain
from skiptrain.errors import ConfigError, ShapeError


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


# -- found by tests/test_fuzz.py ---------------------------------------------------------------------

def test_the_shape_cache_keeps_1_and_1_0_apart():
    """`kernel_size: 1.0` hit the cache entry of `kernel_size: 1`, so validate passed and the build failed."""
    def model(k):
        return {"input": [3, 8, 8], "layers": [{"type": "conv2d", "out_channels": 4, "kernel_size": k}]}
    skiptrain.check_model(model(1))
    with pytest.raises(ConfigError, match="takes an integer"):  # now refused by kind, before the cache
        skiptrain.check_model(model(1.0))


def test_arguments_that_cannot_be_sorted_or_hashed_reach_torch():
    def model(value):
        return {"input": [3, 8, 8], "layers": [{"type": "conv2d", "out_channels": 4, "kernel_size": value}]}
    with pytest.raises(ConfigError, match="a mapping"):
        skiptrain.check_model(model({1: 2, "a": 3}))  # sorting the keys for the cache raised TypeError
    with pytest.raises(ConfigError, match="a set"):  # a YAML !!set: unhashable, and unordered, so refused by kind
        skiptrain.check_model(model({2, 3}))


@pytest.mark.parametrize("dtype, layer", [
    ("int64", {"type": "linear", "out_features": 4}),       # meta's linear does not compare dtypes
    ("float16", {"type": "layernorm"}),
    ("int64", {"type": "gelu"}),                            # no CPU kernel for int64
    ("int32", {"type": "avgpool2d", "kernel_size": 1}),
])
def test_dtypes_the_kernels_refuse_are_shape_errors(dtype, layer):
    with pytest.raises(ShapeError, match=dtype):
        skiptrain.check_model({"input": [2, 4, 4], "input_dtype": dtype, "layers": [layer]})


def test_token_ids_still_feed_embeddings_and_shape_layers():
    plan = skiptrain.check_model({"input": [6], "input_dtype": "int64", "layers": [
        {"type": "relu"}, {"type": "embedding", "num_embeddings": 10, "embedding_dim": 4}, {"type": "gelu"}]})
    assert plan.output_shape == (6, 4) and plan.output_dtype == "float32"


def test_a_projection_cannot_take_integer_values():
    with pytest.raises(ShapeError, match="cannot take the int64 values"):
        skiptrain.check_model({"input": [6], "input_dtype": "int64", "layers": [
            {"id": "e", "type": "embedding", "num_embeddings": 10, "embedding_dim": 1},
            {"id": "f", "type": "flatten"}, {"type": "linear", "out_features": 3}],
            "skips": [{"from": "input", "to": "linear_1"}]})


def test_a_skip_of_another_dtype_promotes_the_merged_value():
    plan = skiptrain.check_model({"input": [6], "input_dtype": "int64", "layers": [
        {"id": "e", "type": "embedding", "num_embeddings": 10, "embedding_dim": 1},
        {"id": "f", "type": "flatten"}], "skips": [{"from": "input", "to": "f"}]})
    assert plan.output_dtype == "float32"


def test_an_empty_output_is_a_shape_error():
    with pytest.raises(ShapeError, match="empty output"):
        skiptrain.check_model({"input": [2, 4, 4], "layers": [{"type": "adaptive_avgpool2d", "output_size": 0}]})


def test_an_input_too_large_to_describe_is_a_shape_error():
    with pytest.raises(ShapeError):
        skiptrain.check_model({"input": [2 ** 31, 2 ** 31, 2 ** 31], "layers": [{"type": "relu"}]})


def test_a_softmax_dim_out_of_range_is_a_shape_error():
    """The meta kernel of softmax does not check `dim`; the CPU one raised IndexError in the built model."""
    with pytest.raises(ShapeError, match="softmax"):
        skiptrain.check_model({"input": [4], "layers": [{"type": "softmax", "dim": 2}]})
    assert skiptrain.check_model({"input": [4], "layers": [{"type": "softmax", "dim": 1}]}).output_shape == (4,)


@pytest.mark.parametrize("layer", [
    # conv2d `kernel_size: 0` (meta gave [4, 11, 11]; oneDNN failed) and embedding `num_embeddings: 0` are
    # refused earlier, at the argument (tests/test_arguments.py); a size no signature check knows of:
    {"type": "prelu", "num_parameters": 0},
])
def test_a_layer_with_an_empty_weight_is_a_shape_error(layer):
    with pytest.raises(ShapeError, match="empty `weight`"):
        skiptrain.check_model({"input": [1, 8, 8], "input_dtype": "int64" if "num_embeddings" in layer else "float32",
                               "layers": [layer]})


def test_arguments_only_the_cpu_kernel_checks_are_shape_errors():
    """Meta accepts `output_padding` >= `stride`; the built model failed in its first forward."""
    with pytest.raises(ShapeError, match="output padding"):
        skiptrain.check_model({"input": [1, 4, 4], "layers": [
            {"type": "conv_transpose2d", "out_channels": 1, "kernel_size": 1, "output_padding": 1}]})


def test_a_layer_that_only_fits_a_batch_of_2_is_a_shape_error():
    """Meta ran a batch of 2, which `unflatten` of the batch axis into [2, 1] happens to fit; training did not."""
    with pytest.raises(ShapeError, match="does not return one batched tensor"):
        skiptrain.check_model({"input": [3], "layers": [
            {"type": "unflatten", "dim": 0, "unflattened_size": [2, 1]}]})
    plan = skiptrain.check_model({"input": [6], "layers": [
        {"type": "unflatten", "dim": 1, "unflattened_size": [2, 3]}]})
    assert plan.output_shape == (2, 3)
