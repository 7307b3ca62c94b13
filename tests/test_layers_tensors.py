"""Learnable tensors (class token, position embedding, layer scale): torchvision's shapes and
state-dict keys at the node's id, their `init:`, torchvision's numbers, and located misuse."""
from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from skiptrain import build_model
from skiptrain.api import check_model
from skiptrain.errors import ConfigError

from .conftest import TINY_RESIDUAL, invoke, straight_and_resumed

VIT_BITS = {
    "input": [3, 32, 32],
    "blocks": {"encoder": {"layers": [
        {"id": "pos_embedding", "type": "position_embedding"},
        {"id": "ln", "type": "layernorm"},
    ]}},
    "layers": [
        {"id": "conv_proj", "type": "conv2d", "out_channels": 16, "kernel_size": 16, "stride": 16},
        {"type": "flatten", "start_dim": 2},
        {"type": "transpose", "dims": [0, 1]},
        {"id": "class_token", "type": "class_token"},
        {"id": "encoder", "block": "encoder"},
        {"id": "read_out", "type": "select", "index": 0},
    ],
}


def _randomize(model: nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)


def test_vit_tensors_have_torchvisions_keys_shapes_and_numbers():
    model = build_model(VIT_BITS).eval()
    state = model.state_dict()
    assert state["class_token"].shape == (1, 1, 16)  # torchvision's VisionTransformer.class_token
    assert state["encoder.pos_embedding"].shape == (1, 5, 16)  # its encoder.pos_embedding: [1, seq, dim]
    assert set(dict(model.named_parameters())) == set(state)  # the parameter's name is the key: no `.weight`
    assert not state["class_token"].any()  # zeros, as torchvision's
    _randomize(model)
    x = torch.randn(2, 3, 32, 32)
    tokens = model.conv_proj(x).flatten(2).transpose(1, 2)
    expected = torch.cat([model.class_token.expand(2, -1, -1), tokens], dim=1) + model.encoder.pos_embedding
    expected = model.encoder.ln(expected)[:, 0]
    assert torch.equal(model(x), expected)


def test_the_generated_forward_reads_the_tensor_where_the_state_dict_has_it():
    model = build_model(VIT_BITS).eval()
    assert "_parameters['class_token']" in model.code and "_parameters['pos_embedding']" in model.code
    x = torch.randn(2, 3, 32, 32)
    before = model(x)
    with torch.no_grad():
        model.class_token.fill_(3.0)  # a change to the registered parameter changes the output
    assert not torch.equal(model(x), before)
    other = build_model(VIT_BITS)
    other.load_state_dict(model.state_dict(), strict=True)  # and loading the state dict reaches the forward
    assert torch.equal(other.eval()(x), model(x))


def test_gradflow_finds_a_tensors_gradient_at_its_id():
    from skiptrain.gradflow import _grad_norm, _parameters_at

    model = build_model(VIT_BITS)
    model(torch.randn(2, 3, 32, 32)).pow(2).sum().backward()
    assert _parameters_at(model, "encoder.pos_embedding") == [model.encoder.pos_embedding]
    assert _grad_norm(_parameters_at(model, "class_token")) > 0
    assert len(_parameters_at(model, "conv_proj")) == 2


def test_layer_scale_is_convnexts_cnblock_key_for_key_and_bit_for_bit():
    from torchvision.models.convnext import CNBlock

    config = {"input": [8, 6, 6],
              "blocks": {"block": {"layers": [
                  {"id": 0, "type": "conv2d", "out_channels": 8, "kernel_size": 7, "padding": 3, "groups": 8},
                  {"id": 1, "type": "permute", "dims": [1, 2, 0]},
                  {"id": 2, "type": "layernorm", "eps": 1.0e-6},
                  {"id": 3, "type": "linear", "out_features": 32},
                  {"id": 4, "type": "gelu"},
                  {"id": 5, "type": "linear", "out_features": 8},
                  {"id": 6, "type": "permute", "dims": [2, 0, 1]}]},
                  "cnblock": {"layers": [
                      {"id": "block", "block": "block"},
                      {"id": "layer_scale", "type": "layer_scale"},
                      {"id": "stochastic_depth", "type": "stochastic_depth", "p": 0.1}],
                      "skips": [{"from": "input", "to": "stochastic_depth"}]}},
              "layers": [{"id": "b", "block": "cnblock"}]}
    model = build_model(config).eval()
    reference = CNBlock(8, 1e-6, 0.1, norm_layer=functools.partial(nn.LayerNorm, eps=1e-6)).eval()
    theirs = {f"b.{k}": v for k, v in reference.state_dict().items()}
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in theirs.items()}
    assert torch.equal(model.state_dict()["b.layer_scale"], theirs["b.layer_scale"])  # 1e-6 everywhere: the init
    _randomize(reference)
    model.load_state_dict({f"b.{k}": v for k, v in reference.state_dict().items()}, strict=True)
    x = torch.randn(2, 8, 6, 6)
    assert torch.equal(model(x), reference(x))


@pytest.mark.parametrize("init, check", [
    ("zeros", lambda t: not t.any()),
    ("ones", lambda t: bool((t == 1).all())),
    (1.0e-6, lambda t: bool((t == 1e-6).all())),
    ("1e-6", lambda t: bool((t == 1e-6).all())),  # YAML 1.1 reads 1e-6 as a string
    ("normal", lambda t: 0.05 < float(t.std()) < 0.15),
    ("trunc_normal", lambda t: 0.05 < float(t.std()) < 0.15),
])
def test_init(init, check):
    model = build_model({"input": [4096, 2], "layers": [
        {"id": "ls", "type": "layer_scale", "init": init, "std": 0.1}]})
    assert model.ls.shape == (4096, 1) and check(model.ls.detach())


def test_trunc_normal_is_torchs_under_the_seed():
    torch.manual_seed(5)
    model = build_model({"input": [4096, 2], "layers": [
        {"id": "ls", "type": "layer_scale", "init": "trunc_normal", "std": 1.5}]})
    torch.manual_seed(5)
    expected = nn.init.trunc_normal_(torch.empty(4096, 1), std=1.5)
    assert torch.equal(model.ls.detach(), expected) and float(expected.abs().max()) <= 2.0


def test_layer_scale_on_the_last_axis_is_cait_gamma():
    model = build_model({"input": [5, 8], "layers": [{"id": "gamma", "type": "layer_scale", "dim": -1}]})
    assert model.gamma.shape == (8,)


def test_initial_values_follow_the_seed():
    torch.manual_seed(3)
    a = build_model(VIT_BITS).state_dict()
    torch.manual_seed(3)
    b = build_model(VIT_BITS).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("layer, message", [
    ({"type": "layer_scale", "init": "uniform"}, "unknown `init: uniform`"),
    ({"type": "layer_scale", "init": "normal", "std": 0}, "`std: 0` must be a positive number"),
    ({"type": "layer_scale", "dim": 3}, "`dim: 3` is not an axis"),
    ({"type": "layer_scale", "dim": "channels"}, "`dim` takes an integer, not text 'channels'"),
    ({"type": "class_token"}, "class_token takes [seq, dim] samples"),
    ({"type": "position_embedding", "input_shape": [3, 4]}, "disagrees with the input shape"),
    ({"type": "class_token", "std": "wide"}, "`std` takes a number, not text 'wide'"),
])
def test_misuse_is_a_located_error_with_a_hint(layer, message):
    with pytest.raises(ConfigError) as info:
        check_model({"input": [4, 6, 6], "layers": [{"type": "conv2d", "out_channels": 4, "kernel_size": 1}, layer]})
    assert message in str(info.value) and info.value.hint
    assert info.value.location is not None


def test_misuse_in_yaml_names_the_line(write_yaml):
    path = write_yaml("""
        model:
          input: [4, 6]
          layers:
            - {type: linear, out_features: 4}
            - {id: cls, type: class_token, init: gaussian}
        """)
    result = invoke("validate", path)
    assert result.exit_code == 1
    assert "config.yaml:5" in result.output + result.stderr and "unknown `init: gaussian`" in result.stderr


def test_exact_resume_with_stochastic_depth_and_a_layer_scale(write_yaml, tmp_path):
    config = write_yaml(TINY_RESIDUAL.replace("- {type: dropout, p: 0.1}", "- {type: stochastic_depth, p: 0.5}\n"
                                              "    - {id: ls, type: layer_scale, init: 0.5}"))
    assert "stochastic_depth" in config.read_text() and "dropout" not in config.read_text()
    a, b, _ = straight_and_resumed(config, tmp_path)
    assert "ls" in a and not torch.equal(a["ls"], torch.full_like(a["ls"], 0.5))  # trained, under its own key
    for key in a:
        assert torch.equal(a[key], b[key]), key


MINI_VIT = """
model:
  name: mini_vit
  input: [3, 32, 32]
  blocks:
    heads:
      layers: [{id: head, type: linear, out_features: 4}]
    encoder_block:                      # torchvision's EncoderBlock
      layers:
        - {id: ln_1, type: layernorm, eps: 1.0e-6}
        - {id: self_attention, type: self_attention, num_heads: 2}
        - {id: dropout, type: dropout, p: 0.0}
        - {id: ln_2, type: layernorm, eps: 1.0e-6}
        - {id: mlp, type: mlp, hidden_channels: [32, 16], activation_layer: gelu}
      skips:
        - {from: input, to: dropout}
        - {from: dropout, to: mlp}
    encoder:                            # torchvision's Encoder
      layers:
        - {id: pos_embedding, type: position_embedding}
        - {id: dropout, type: dropout, p: 0.0}
        - {id: layers, block: encoder_block, repeat: 2, copy_id: "encoder_layer_${repeat_index}"}
        - {id: ln, type: layernorm, eps: 1.0e-6}
  layers:
    - {id: conv_proj, type: conv2d, out_channels: 16, kernel_size: 16, stride: 16}
    - {type: flatten, start_dim: 2}
    - {type: transpose, dims: [0, 1]}
    - {id: class_token, type: class_token}
    - {id: encoder, block: encoder}
    - {type: select, index: 0}          # x[:, 0]
    - {id: heads, block: heads}
"""


def test_a_small_vision_transformer_is_torchvisions_key_for_key_and_bit_for_bit(write_yaml):
    from torchvision.models import VisionTransformer

    model = build_model(write_yaml(MINI_VIT)).eval()
    reference = VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=16,
                                  mlp_dim=32, num_classes=4).eval()
    assert sorted(model.state_dict()) == sorted(reference.state_dict())
    _randomize(reference)
    model.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), reference(x))
