"""torchvision's building blocks as layer types: torchvision's own modules and keys, layer classes
named by type, inferred widths, stochastic depth's numbers, and located misuse."""
from __future__ import annotations

import pytest
import torch
import torchvision.ops
from torch import nn
from torchvision.models import swin_transformer

from skiptrain import build_model, registry
from skiptrain.api import check_model
from skiptrain.errors import ConfigError


def _same_module(layer: dict, shape: list[int], reference: nn.Module) -> nn.Module:
    """Build ``layer`` alone; check it is ``reference``'s class, keys and shapes, and computes what it does."""
    model = build_model({"input": shape, "layers": [{"id": "m", **layer}]}).eval()
    assert type(model.m) is type(reference)
    assert {k: v.shape for k, v in model.m.state_dict().items()} == \
        {k: v.shape for k, v in reference.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in reference.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
    model.m.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, *shape)
    assert torch.equal(model(x), reference.eval()(x))
    return model


def test_squeeze_excitation_is_mobilenet_v3s_with_the_width_inferred():
    _same_module({"type": "squeeze_excitation", "squeeze_channels": 8, "scale_activation": "hardsigmoid"}, [24, 5, 5],
                 torchvision.ops.SqueezeExcitation(24, 8, scale_activation=nn.Hardsigmoid))


def test_conv_norm_activation_takes_layer_types_and_partials():
    model = _same_module({"type": "conv2d_norm_activation", "out_channels": 16, "kernel_size": 3, "stride": 2,
                          "activation_layer": "silu", "norm_layer": {"type": "batchnorm2d", "eps": 0.001}},
                         [8, 9, 9], torchvision.ops.Conv2dNormActivation(
                             8, 16, 3, 2, norm_layer=lambda c: nn.BatchNorm2d(c, eps=0.001), activation_layer=nn.SiLU))
    assert model.m[1].eps == 0.001 and isinstance(model.m[2], nn.SiLU)
    bare = build_model({"input": [8, 9, 9], "layers": [
        {"id": "m", "type": "conv2d_norm_activation", "out_channels": 4, "norm_layer": None,
         "activation_layer": None}]})
    assert len(bare.m) == 1 and bare.m[0].bias is not None  # torchvision: a bias where no norm follows


def test_mlp_works_on_the_last_axis():
    _same_module({"type": "mlp", "hidden_channels": [32, 8], "activation_layer": "gelu"}, [5, 8],
                 torchvision.ops.MLP(8, [32, 8], activation_layer=nn.GELU))


def test_swin_attention_and_patch_merging_are_torchvisions():
    model = _same_module({"type": "shifted_window_attention", "window_size": [4, 4], "shift_size": [2, 2],
                          "num_heads": 2}, [8, 8, 16],
                         swin_transformer.ShiftedWindowAttention(16, [4, 4], [2, 2], 2))
    assert model.state_dict()["m.relative_position_bias_table"].shape == (49, 2)
    assert "m.relative_position_index" in model.state_dict()  # torchvision's buffer, loaded with strict=True
    _same_module({"type": "patch_merging"}, [8, 8, 16], swin_transformer.PatchMerging(16))


def test_stochastic_depth_is_torchvisions_row_mode_under_the_seed():
    model = build_model({"input": [4, 3, 3], "layers": [{"id": "sd", "type": "stochastic_depth", "p": 0.5}]})
    assert model.sd.mode == "row"  # torchvision's models use row mode; skiptrain's default
    assert registry.get("drop_path") is registry.get("stochastic_depth")  # timm's name
    x = torch.randn(64, 4, 3, 3)
    torch.manual_seed(7)
    ours = model.train()(x)
    torch.manual_seed(7)
    theirs = torchvision.ops.stochastic_depth(x, 0.5, "row", training=True)
    assert torch.equal(ours, theirs)
    kept = (ours.flatten(1) != 0).any(1)
    assert 0 < int(kept.sum()) < 64  # whole rows dropped, the others scaled by 1 / (1 - p)
    torch.testing.assert_close(ours[kept], x[kept] * 2)
    assert torch.equal(model.eval()(x), x)


def test_torchvision_permute_is_not_registered_over_skiptrains():
    # torchvision's Permute counts the batch axis; skiptrain's `permute` counts the axes of one sample
    assert registry.get("permute").factory.__module__ == "skiptrain.layers.own"
    assert "Permute" not in registry.LAYERS


@pytest.mark.parametrize("layer, message", [
    ({"type": "conv2d_norm_activation", "out_channels": 4, "activation_layer": "relux"}, "did you mean `relu`"),
    ({"type": "conv2d_norm_activation", "out_channels": 4, "activation_layer": "add"},
     "must name a layer type that is a module class"),
    ({"type": "conv2d_norm_activation", "out_channels": 4, "norm_layer": {"eps": 0.1}}, "needs a `type:`"),
    ({"type": "conv2d_norm_activation", "out_channels": 4, "norm_layer": 3},
     "`norm_layer` takes text, a mapping or null, not the integer 3"),
    ({"type": "squeeze_excitation"}, "needs `squeeze_channels`"),
    ({"type": "squeeze_excitation", "squeeze_channels": 2, "input_channels": 5}, "disagrees with the input shape"),
    ({"type": "stochastic_depth", "p": 0.5, "mode": "rows"}, "mode has to be either 'batch' or 'row'"),
])
def test_misuse_is_a_located_error(layer, message):
    with pytest.raises(ConfigError) as info:
        check_model({"input": [8, 6, 6], "layers": [layer]})
    assert message in str(info.value), str(info.value)
    assert info.value.location is not None and info.value.hint


def test_swin_dim_is_inferred_under_skiptrains_name():
    with pytest.raises(ConfigError) as info:
        check_model({"input": [8, 8, 16], "layers": [
            {"type": "patch_merging", "dim": 16}]})
    assert "no argument `dim`" in str(info.value) and "embed_dim" in str(info.value.hint)


def test_vits_encoder_block_key_for_key_and_bit_for_bit():
    import functools

    from torchvision.models.vision_transformer import EncoderBlock

    model = build_model({"input": [5, 16], "blocks": {"encoder_block": {"layers": [
        {"id": "ln_1", "type": "layernorm", "eps": 1.0e-6},
        {"id": "self_attention", "type": "self_attention", "num_heads": 2},
        {"id": "dropout", "type": "dropout", "p": 0.0},
        {"id": "ln_2", "type": "layernorm", "eps": 1.0e-6},
        {"id": "mlp", "type": "mlp", "hidden_channels": [32, 16], "activation_layer": "gelu"}],
        "skips": [{"from": "input", "to": "dropout"}, {"from": "dropout", "to": "mlp"}]}},
        "layers": [{"id": "encoder_layer_0", "block": "encoder_block"}]}).eval()
    reference = EncoderBlock(2, 16, 32, 0.0, 0.0, functools.partial(nn.LayerNorm, eps=1e-6)).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in reference.state_dict().values():
            tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
    model.load_state_dict({f"encoder_layer_0.{k}": v for k, v in reference.state_dict().items()}, strict=True)
    x = torch.randn(2, 5, 16)
    assert torch.equal(model(x), reference(x))


def test_self_attention_loads_the_older_wrappers_keys():
    model = build_model({"input": [5, 8], "layers": [{"id": "attn", "type": "self_attention", "num_heads": 2}]})
    assert "attn.in_proj_weight" in model.state_dict()  # torch's MultiheadAttention keys, as torchvision's ViT
    old = {k.replace("attn.", "attn.attention."): torch.rand_like(v) for k, v in model.state_dict().items()}
    model.load_state_dict(old, strict=True)
    assert torch.equal(model.attn.in_proj_weight, old["attn.attention.in_proj_weight"])


def test_from_yaml_a_norm_partial_and_stochastic_depth_rising_over_the_blocks(write_yaml):
    path = write_yaml("""
        model:
          input: [8, 4, 4]
          blocks:
            res:
              args: {rate: 0.1}
              layers:
                - {id: conv, type: conv2d_norm_activation, out_channels: 8, kernel_size: 3,
                   norm_layer: {type: batchnorm2d, eps: 0.001, momentum: 0.01}, activation_layer: silu}
                - {id: stochastic_depth, type: stochastic_depth, p: "${rate * block_index / (block_count - 1)}"}
              skips:
                - {from: input, to: stochastic_depth}
          layers:
            - {id: stage1, block: res, repeat: 2}
            - {id: stage2, block: res, repeat: 3}
        """)
    model = build_model(path)
    rates = [m.p for m in model.modules() if isinstance(m, torchvision.ops.StochasticDepth)]
    assert rates == [0.1 * i / (5 - 1.0) for i in range(5)]  # torchvision's ConvNeXt/EfficientNet rule
    norm = model.get_submodule("stage2.1.conv.1")
    assert (norm.eps, norm.momentum) == (0.001, 0.01)


def test_validating_a_config_without_them_does_not_import_torchvision():
    import subprocess
    import sys

    code = ("import sys\n"
            "from skiptrain.api import check_model\n"
            "check_model({'input': [3, 8, 8], 'layers': [{'type': 'conv2d', 'out_channels': 4, 'kernel_size': 3},"
            " {'type': 'layer_scale'}, {'type': 'select', 'index': 0}]})\n"
            "assert 'torchvision' not in sys.modules, 'torchvision imported'\n"
            "check_model({'input': [3, 8, 8], 'layers': [{'type': 'stochastic_depth', 'p': 0.1}]})\n"
            "assert 'torchvision' in sys.modules\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
