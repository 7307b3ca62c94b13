from __future__ import annotations

import pytest
import torch

from skiptrain import registry
from skiptrain.errors import ConfigError

CONTRACT_NAMES = ["conv1d", "conv2d", "conv_transpose2d", "linear", "batchnorm1d", "batchnorm2d", "layernorm",
                  "groupnorm", "relu", "gelu", "silu", "sigmoid", "tanh", "dropout", "maxpool2d", "avgpool2d",
                  "adaptive_avgpool1d", "adaptive_avgpool2d", "flatten", "upsample", "identity", "embedding",
                  "self_attention", "global_avgpool", "mean", "permute", "transpose", "add", "concat", "mul"]


@pytest.mark.parametrize("name", CONTRACT_NAMES)
def test_contract_names_are_registered(name):
    assert registry.get(name).name == name


@pytest.mark.parametrize("alias, name", [("Conv2d", "conv2d"), ("GELU", "gelu"), ("ConvTranspose2d", "conv_transpose2d"),
                                         ("batch_norm2d", "batchnorm2d"), ("AdaptiveAvgPool2d", "adaptive_avgpool2d")])
def test_class_names_and_aliases(alias, name):
    assert registry.get(alias).name == name


@pytest.mark.parametrize("name", registry.names())
def test_every_registered_type_is_documented_and_consistent(name):
    layer = registry.get(name)
    assert layer.doc, f"{name} has no docstring"
    assert layer.axis in registry.AXES
    for arg in layer.inferred:
        assert arg in registry.INFERRED


def test_unknown_type_suggests_closest():
    with pytest.raises(ConfigError) as info:
        registry.get("conv2", None)
    assert "conv2d" in info.value.hint
    with pytest.raises(ConfigError) as info:
        registry.get("batchnrom2d", None)
    assert "batchnorm2d" in info.value.hint


def test_registering_a_name_twice_raises():
    with pytest.raises(ValueError, match="already registered"):
        registry.add(registry.LayerType("relu", torch.nn.ReLU))


def test_inferred_arguments_and_checks():
    conv = registry.get("conv2d")
    args = conv.resolve_args({"out_channels": 8, "kernel_size": 3}, (3, 32, 32), "c", {}, None)
    assert args["in_channels"] == 3
    assert registry.get("linear").resolve_args({"out_features": 2}, (5, 7), "l", {}, None)["in_features"] == 7
    assert registry.get("layernorm").resolve_args({}, (5, 7), "n", {}, None)["normalized_shape"] == 7
    with pytest.raises(ConfigError, match="disagrees"):
        conv.resolve_args({"in_channels": 4, "out_channels": 8, "kernel_size": 3}, (3, 8, 8), "c", {}, None)
    with pytest.raises(ConfigError, match="needs `kernel_size`"):
        conv.resolve_args({"out_channels": 8}, (3, 8, 8), "c", {}, None)
    with pytest.raises(ConfigError) as info:
        conv.resolve_args({"out_chanels": 8, "kernel_size": 3}, (3, 8, 8), "c", {}, None)
    assert "out_channels" in info.value.hint


def test_projection_axis_follows_the_layer_kind():
    assert registry.get("conv2d").axis == "channels"
    assert registry.get("batchnorm2d").axis == "channels"
    assert registry.get("maxpool2d").axis == "channels"
    assert registry.get("linear").axis == "last"
    assert registry.get("layernorm").axis == "last"
    assert registry.get("self_attention").axis == "last"
    assert registry.get("embedding").axis == "last"
    assert registry.get("relu").axis == "inherit"
