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


# A sample for every registered type: (one sample's shape, the layer's arguments, input dtype).
# The shape follows the type's suffix (`1d`, `2d`, `3d`), else [4, 8, 8]; the arguments come from
# SAMPLE_ARGS by exact name, else by prefix, else none. A new type that cannot be built or run on
# that fails below, naming itself: give it an entry here.
SAMPLE_SHAPES = {"1d": [4, 16], "2d": [4, 8, 8], "3d": [4, 6, 6, 6]}
SAMPLE_ARGS = {
    "adaptive_": {"output_size": 2},
    "fractional_maxpool": {"kernel_size": 2, "output_ratio": 0.5},
    "lppool": {"norm_type": 2, "kernel_size": 2},
    "avgpool": {"kernel_size": 2},
    "maxpool": {"kernel_size": 2},
    "conv": {"out_channels": 6, "kernel_size": 3},
    "constantpad": {"padding": 1, "value": 0.5},
    "circularpad": {"padding": 1},
    "reflectionpad": {"padding": 1},
    "replicationpad": {"padding": 1},
    "zeropad": {"padding": 1},
    "upsampl": {"scale_factor": 2},
    "channelshuffle": {"groups": 2},
    "groupnorm": {"num_groups": 2},
    "localresponsenorm": {"size": 2},
    "linear": {"out_features": 3},
    "logsoftmax": {"dim": 1}, "softmax": {"dim": 1}, "softmin": {"dim": 1},  # torch's dims count the batch
    "softmax2d": {},
    "threshold": {"threshold": 0.1, "value": 0.0},
    "pixelshuffle": {"upscale_factor": 2},
    "pixelunshuffle": {"downscale_factor": 2},
    "unflatten": {"dim": 1, "unflattened_size": [2, 2]},
    "unfold": {"kernel_size": 2},
    "mean": {"dim": 0},  # skiptrain's own layers count the axes of one sample
    "permute": {"dims": [1, 2, 0]},
    "transpose": {"dims": [0, 1]},
    "reshape": {"shape": [-1, 8]},
    "scale": {"factor": 0.5},
    "select": {"index": 1}, "slice": {"start": 1, "end": 3}, "chunk": {"chunks": 2, "index": 1},
    "split": {"sizes": [1, 3], "index": 1}, "roll": {"shifts": [1, -2], "dims": [1, 2]},
    "layer_scale": {"init": "normal"},  # not the tiny default, so a wrong broadcast shows
    "stochastic_depth": {"p": 0.5},
    "drop_block": {"p": 0.5, "block_size": 3},
    "squeeze_excitation": {"squeeze_channels": 2, "scale_activation": "hardsigmoid"},
    "mlp": {"hidden_channels": [16, 8], "norm_layer": "layernorm", "activation_layer": "gelu"},
}
SAMPLES = {  # types whose sample is not the default one
    "embedding": ([6], {"num_embeddings": 10, "embedding_dim": 4}, "int64"),
    "embeddingbag": ([6], {"num_embeddings": 10, "embedding_dim": 4}, "int64"),
    "fold": ([8, 9], {"output_size": [4, 4], "kernel_size": 2}, "float32"),  # 2 channels x 2x2 blocks, 3x3 places
    "self_attention": ([5, 8], {"num_heads": 2}, "float32"),
    "causal_self_attention": ([5, 8], {"num_heads": 2, "dropout": 0.1}, "float32"),
    "token_positions": ([5, 8], {}, "float32"),
    "transformer_encoder_layer": ([5, 8], {"nhead": 2, "dim_feedforward": 16}, "float32"),
    "conv3d_norm_activation": ([4, 6, 6, 6], {"out_channels": 6, "kernel_size": 3}, "float32"),
    "drop_block3d": ([4, 6, 6, 6], {"p": 0.5, "block_size": 3}, "float32"),
    "class_token": ([5, 8], {}, "float32"),
    "position_embedding": ([5, 8], {}, "float32"),
    "window_partition": ([8, 4, 3], {"window_size": [4, 2]}, "float32"),  # [H, W, C] samples
    "window_reverse": ([4, 8, 3], {"window_size": [4, 2], "size": [8, 4]}, "float32"),
    "shifted_window_attention": ([8, 8, 8], {"window_size": [4, 4], "shift_size": [2, 2], "num_heads": 2}, "float32"),
    "shifted_window_attention_v2": ([8, 8, 8], {"window_size": [4, 4], "shift_size": [2, 2], "num_heads": 2},
                                    "float32"),
    "patch_merging": ([8, 8, 4], {}, "float32"), "patch_merging_v2": ([8, 8, 4], {}, "float32"),
    "window_attention": ([4, 16, 8], {"window_size": 4, "num_heads": 2, "shift_size": 2, "size": [8, 8]}, "float32"),
}


def sample_for(name: str) -> tuple[list[int], dict, str]:
    if name in SAMPLES:
        return SAMPLES[name]
    shape = SAMPLE_SHAPES.get(name[-2:], [4, 8, 8])
    args = SAMPLE_ARGS[name] if name in SAMPLE_ARGS else \
        next((a for prefix, a in SAMPLE_ARGS.items() if name.startswith(prefix)), {})
    return shape, args, "float32"


def sample_input(shape: list[int], dtype: str, batch: int = 3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    if dtype == "int64":
        return torch.randint(0, 10, (batch, *shape), generator=gen)
    return torch.randn(batch, *shape, generator=gen)


MERGES = [name for name in registry.names() if registry.get(name).passthrough]


@pytest.mark.parametrize("name", [name for name in registry.names() if name not in MERGES])
def test_every_registered_type_builds_and_runs_forward_and_backward(name):
    from skiptrain import build_model

    shape, args, dtype = sample_for(name)
    model = build_model({"input": shape, "input_dtype": dtype, "layers": [{"type": name, **args}]})
    x = sample_input(shape, dtype)
    if x.is_floating_point():
        x.requires_grad_()
    out = model.train()(x)
    expected = model.meta["skiptrain"]["output_shape"]
    assert list(out.shape) == [3, *expected], f"{name}: ran to {list(out.shape)}, validate says [batch, *{expected}]"
    assert out.is_floating_point() and torch.isfinite(out).all(), name
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad), f"{name}: a weight got no gradient"
    assert x.grad is not None or not x.is_floating_point(), f"{name}: no gradient reached the input"
    x = x.detach()
    with torch.inference_mode():
        assert list(model.eval()(x).shape) == [3, *expected], name


@pytest.mark.parametrize("name", MERGES)
def test_every_merge_type_joins_its_inputs_in_a_model(name):
    from skiptrain import build_model

    model = build_model({"input": [4, 8, 8], "layers": [
        {"id": "a", "type": "conv2d", "out_channels": 4, "kernel_size": 1},
        {"id": "b", "type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1, "input": "input"},
        {"id": "m", "type": name, "input": ["a", "b"]},
    ]}).eval()
    x = sample_input([4, 8, 8], "float32")
    a, b = model.a(x), model.b(x)
    expected = {"add": lambda: a + b, "mul": lambda: a * b, "concat": lambda: torch.cat([a, b], dim=1)}
    assert name in expected, f"a new merge type `{name}`: say here what it computes"
    torch.testing.assert_close(model(x), expected[name]())
