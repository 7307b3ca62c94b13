"""Swin's shifted-window attention written in the graph (roll -> window_partition -> window_attention ->
window_reverse -> roll) is torchvision's ShiftedWindowAttention key for key and bit for bit."""
from __future__ import annotations

import pytest
import torch
from torchvision.models.swin_transformer import ShiftedWindowAttention

from skiptrain import build_model
from skiptrain.api import check_model
from skiptrain.errors import ConfigError


def swin_attention(shift: int, size: int = 8, window: int = 4) -> dict:
    return {"input": [size, size, 16], "blocks": {"attention": {"layers": [
        {"id": "shift", "type": "roll", "shifts": [-shift, -shift], "dims": [0, 1]},
        {"id": "part", "type": "window_partition", "window_size": window},
        {"id": "attn", "type": "window_attention", "window_size": window, "num_heads": 2, "shift_size": shift,
         "size": [size, size]},
        {"id": "rev", "type": "window_reverse", "window_size": window, "size": [size, size]},
        {"id": "unshift", "type": "roll", "shifts": [shift, shift], "dims": [0, 1]}]}},
        "layers": [{"id": "block", "block": "attention"}]}


@pytest.mark.parametrize("shift", [0, 2])
def test_graph_level_swin_attention_is_torchvisions(shift):
    model = build_model(swin_attention(shift)).eval()
    reference = ShiftedWindowAttention(16, [4, 4], [shift, shift], 2).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in reference.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
    model.load_state_dict({f"block.attn.{k}": v for k, v in reference.state_dict().items()}, strict=True)
    assert model.state_dict()["block.attn.relative_position_bias_table"].shape == (49, 2)
    x = torch.randn(2, 8, 8, 16)
    assert torch.equal(model(x), reference(x))


def test_the_mask_matters_for_shifted_windows():
    shifted = build_model(swin_attention(2)).eval()
    plain = build_model(swin_attention(0)).eval()
    plain.load_state_dict(shifted.state_dict())
    x = torch.randn(2, 8, 8, 16)
    unmasked = plain.block.attn(shifted.block.part(shifted.block.shift(x)))
    assert not torch.allclose(shifted.block.attn(shifted.block.part(shifted.block.shift(x))), unmasked)


def test_a_window_as_large_as_the_map_is_not_shifted_silently():
    # torchvision zeroes the shift there (the last Swin stage); the graph's rolls would still shift
    with pytest.raises(ConfigError, match="write `shift_size: 0` here, and roll by 0"):
        check_model(swin_attention(2, size=4, window=4))
    assert build_model(swin_attention(0, size=4, window=4)).block.attn.shift_size == [0, 0]


@pytest.mark.parametrize("attn, message", [
    ({"window_size": 4, "num_heads": 2, "shift_size": 2}, "shifted windows need `size: [H, W]`"),
    ({"window_size": 4, "num_heads": 3, "size": [8, 8]}, "16 channels do not split into `num_heads: 3`"),
    ({"window_size": 4, "num_heads": 2, "size": [8, 6]}, "is not a multiple of the window"),
    ({"window_size": 4, "num_heads": 2, "size": [16, 16]}, "a [16, 16] map has 16 windows"),
    ({"window_size": 2, "num_heads": 2}, "takes [windows, 4, dim] samples"),
    ({"window_size": 4, "num_heads": 2, "shift_size": -1, "size": [8, 8]}, "must be 0 or more"),
])
def test_misuse_is_a_located_error(attn, message):
    with pytest.raises(ConfigError) as info:
        check_model({"input": [8, 8, 16], "layers": [{"type": "window_partition", "window_size": 4},
                                                     {"type": "window_attention", **attn}]})
    assert message in str(info.value), str(info.value)
    assert info.value.location is not None and info.value.hint


@pytest.mark.parametrize("shift", [0, 2])
def test_swin_transformer_block_key_for_key_and_bit_for_bit(shift):
    from torchvision.models.swin_transformer import SwinTransformerBlock

    attention = swin_attention(shift)["blocks"]["attention"]["layers"]
    model = build_model({"input": [8, 8, 16], "blocks": {
        "swin_block": {"layers": [
            {"id": "norm1", "type": "layernorm", "eps": 1.0e-5},
            *attention,  # shift, part, attn (torchvision's `attn` keys), rev, unshift
            {"id": "stochastic_depth", "type": "stochastic_depth", "p": 0.1},
            {"id": "norm2", "type": "layernorm", "eps": 1.0e-5},
            {"id": "mlp", "type": "mlp", "hidden_channels": [64, 16], "activation_layer": "gelu"},
            {"id": "stochastic_depth_2", "type": "stochastic_depth", "p": 0.1}],
            "skips": [{"from": "input", "to": "stochastic_depth"},
                      {"from": "stochastic_depth", "to": "stochastic_depth_2"}]}},
        "layers": [{"id": "block", "block": "swin_block"}]}).eval()
    reference = SwinTransformerBlock(16, 2, [4, 4], [shift, shift], stochastic_depth_prob=0.1).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in reference.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
    model.load_state_dict({f"block.{k}": v for k, v in reference.state_dict().items()}, strict=True)
    x = torch.randn(2, 8, 8, 16)
    assert torch.equal(model(x), reference(x))


@pytest.mark.slow  # two ONNX exports and their verification: several seconds
def test_the_new_layers_export_to_onnx_and_verify(write_yaml, tmp_path):
    import os
    import tempfile
    from pathlib import Path

    from skiptrain import api

    os.environ.setdefault("XDG_CACHE_HOME", str(Path(tempfile.gettempdir()) / "skiptrain-test-cache"))
    path = write_yaml("""
        model:
          input: [8, 8, 16]
          layers:
            - {type: roll, shifts: [-2, -2], dims: [0, 1]}
            - {type: window_partition, window_size: 4}
            - {id: attn, type: window_attention, window_size: 4, num_heads: 2, shift_size: 2, size: [8, 8]}
            - {type: window_reverse, window_size: 4, size: [8, 8]}
            - {type: roll, shifts: [2, 2], dims: [0, 1]}
            - {id: tv, type: shifted_window_attention, window_size: [4, 4], shift_size: [2, 2], num_heads: 2}
            - {id: pm, type: patch_merging}
            - {type: permute, dims: [2, 0, 1]}
            - {type: conv2d_norm_activation, out_channels: 8, kernel_size: 1}
            - {type: squeeze_excitation, squeeze_channels: 2}
            - {id: ls, type: layer_scale}
            - {type: stochastic_depth, p: 0.1}
            - {type: flatten, start_dim: 2}
            - {type: transpose, dims: [0, 1]}
            - {id: class_token, type: class_token}
            - {id: pos_embedding, type: position_embedding}
            - {type: chunk, chunks: 2, index: 1, dim: -1}
            - {type: select, index: 0}
        """)
    result = api.export(path, tmp_path / "model.onnx")  # verified against the PyTorch forward
    assert result["checks"] and all(check["max_abs"] < 1e-4 for check in result["checks"])
