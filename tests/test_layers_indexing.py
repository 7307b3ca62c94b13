"""Indexing, slicing, splitting, roll and Swin's window partition: torch's numbers, each piece its own
node, ShuffleNet's unit and a GLU gate written with them, and located misuse."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from skiptrain import build_model
from skiptrain.api import check_model
from skiptrain.errors import ConfigError

X = torch.randn(2, 8, 6, 4)  # samples [8, 6, 4]


def run(layer: dict, x: torch.Tensor = X) -> torch.Tensor:
    model = build_model({"input": list(x.shape[1:]), "layers": [layer]})
    out = model.eval()(x)
    assert list(out.shape[1:]) == model.meta["skiptrain"]["output_shape"]  # validate's shape is the real one
    return out


@pytest.mark.parametrize("layer, expected", [
    ({"type": "select", "index": 0}, lambda x: x[:, 0]),
    ({"type": "select", "index": -1, "dim": 2}, lambda x: x[:, :, :, -1]),
    ({"type": "slice", "start": 1, "end": 7, "step": 2}, lambda x: x[:, 1:7:2]),
    ({"type": "slice", "start": -2, "dim": -1}, lambda x: x[..., -2:]),
    ({"type": "chunk", "chunks": 2, "index": 1}, lambda x: x.chunk(2, dim=1)[1]),
    ({"type": "chunk", "chunks": 3, "index": 2, "dim": 1}, lambda x: x.chunk(3, dim=2)[2]),
    ({"type": "split", "sizes": 3, "index": 2}, lambda x: x.split(3, dim=1)[2]),
    ({"type": "split", "sizes": [1, 3], "index": 1, "dim": -1}, lambda x: x.split([1, 3], dim=3)[1]),
    ({"type": "roll", "shifts": [-3, 2], "dims": [1, 2]}, lambda x: torch.roll(x, (-3, 2), (2, 3))),
    ({"type": "roll", "shifts": 1, "dims": 0}, lambda x: torch.roll(x, 1, 1)),
])
def test_each_is_torchs_indexing_on_the_sample_axes(layer, expected):
    assert torch.equal(run(layer), expected(X))


def test_window_partition_is_swins_and_reverse_undoes_it():
    x = torch.randn(2, 8, 4, 3)  # [H, W, C]
    windows = run({"type": "window_partition", "window_size": [4, 2]}, x)
    b, h, w, c = x.shape  # torchvision's shifted_window_attention, windows merged into the batch there
    theirs = x.view(b, h // 4, 4, w // 2, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(b * (h // 4) * (w // 2), 8, c)
    assert windows.shape == (2, 4, 8, 3) and torch.equal(windows.reshape(-1, 8, 3), theirs)
    back = run({"type": "window_reverse", "window_size": [4, 2], "size": [8, 4]}, windows)
    assert torch.equal(back, x)


def test_attention_runs_within_each_window():
    model = build_model({"input": [8, 8, 16], "layers": [
        {"id": "shift", "type": "roll", "shifts": [-2, -2], "dims": [0, 1]},
        {"id": "part", "type": "window_partition", "window_size": 4},
        {"id": "attn", "type": "self_attention", "num_heads": 2},
        {"id": "rev", "type": "window_reverse", "window_size": 4, "size": [8, 8]},
        {"id": "unshift", "type": "roll", "shifts": [2, 2], "dims": [0, 1]}]}).eval()
    x = torch.randn(2, 8, 8, 16)
    windows = torch.roll(x, (-2, -2), (1, 2)).view(2, 2, 4, 2, 4, 16).permute(0, 1, 3, 2, 4, 5).reshape(8, 16, 16)
    attended = torch.nn.MultiheadAttention.forward(model.attn, windows, windows, windows, need_weights=False)[0]
    reversed_ = attended.view(2, 2, 2, 4, 4, 16).permute(0, 1, 3, 2, 4, 5).reshape(2, 8, 8, 16)
    expected = torch.roll(reversed_, (2, 2), (1, 2))
    torch.testing.assert_close(model(x), expected)


def test_shufflenets_channel_split_unit_bit_for_bit():
    from torchvision.models.shufflenetv2 import InvertedResidual

    config = {"input": [16, 8, 8],
              "blocks": {"branch": {"layers": [
                  {"id": 0, "type": "conv2d", "out_channels": 8, "kernel_size": 1, "bias": False},
                  {"id": 1, "type": "batchnorm2d"}, {"id": 2, "type": "relu"},
                  {"id": 3, "type": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1, "groups": 8,
                   "bias": False},
                  {"id": 4, "type": "batchnorm2d"},
                  {"id": 5, "type": "conv2d", "out_channels": 8, "kernel_size": 1, "bias": False},
                  {"id": 6, "type": "batchnorm2d"}, {"id": 7, "type": "relu"}]}},
              "layers": [
                  {"id": "x1", "type": "chunk", "chunks": 2, "index": 0},
                  {"id": "x2", "type": "chunk", "chunks": 2, "index": 1, "input": "input"},
                  {"id": "branch2", "block": "branch"},
                  {"id": "out", "type": "concat", "input": ["x1", "branch2"]},
                  {"id": "shuffle", "type": "channel_shuffle", "groups": 2}]}
    model = build_model(config).eval()
    reference = InvertedResidual(16, 16, 1).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in reference.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
    model.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 16, 8, 8)
    assert torch.equal(model(x), reference(x))


def test_a_glu_gate_from_two_chunks():
    model = build_model({"input": [5, 8], "layers": [
        {"id": "a", "type": "chunk", "chunks": 2, "index": 0, "dim": -1},
        {"id": "b", "type": "chunk", "chunks": 2, "index": 1, "dim": -1, "input": "input"},
        {"id": "gate", "type": "sigmoid"},
        {"id": "glu", "type": "mul", "input": ["a", "gate"]}]}).eval()
    x = torch.randn(3, 5, 8)
    assert torch.equal(model(x), F.glu(x, dim=-1))


@pytest.mark.parametrize("layer, message", [
    ({"type": "select", "index": 8}, "`index: 8` is outside axis 0 of size 8"),
    ({"type": "select", "index": 0, "dim": 3}, "`dim: 3` is not an axis of a sample of shape [8, 6, 4]"),
    ({"type": "chunk", "chunks": 2, "index": 2}, "`index: 2` is not one of the 2 pieces"),
    ({"type": "chunk", "chunks": 0, "index": 0}, "`chunks` must be at least 1, not 0"),
    ({"type": "split", "sizes": [3, 3], "index": 0}, "`sizes: [3, 3]` add up to 6, but axis 0 has 8"),
    ({"type": "slice", "step": -1}, "`step: -1` must be a positive integer"),
    ({"type": "slice", "start": 5, "end": 2}, "empty output"),
    ({"type": "roll", "shifts": [1, 2], "dims": 0}, "2 shifts for 1 dims"),
    ({"type": "roll", "shifts": 1.5, "dims": 0}, "`shifts` takes an integer or a list of integers, not the number 1.5"),
    ({"type": "select", "index": "first"}, "`index` takes an integer, not text 'first'"),
    ({"type": "slice", "end": 2.0}, "`end` takes an integer or null, not the number 2.0"),
    ({"type": "split", "sizes": [4, 0, 4], "index": 0}, "must be positive"),
    ({"type": "window_partition", "window_size": 4}, "multiples of the window [4, 4]"),
    ({"type": "window_partition", "window_size": [2, 2, 2]}, "must be a positive integer or two of them"),
    ({"type": "window_reverse", "window_size": 2, "size": [4, 4]}, "takes [4, 4, C] samples"),
])
def test_misuse_is_a_located_error(layer, message):
    with pytest.raises(ConfigError) as info:
        check_model({"input": [8, 6, 4], "layers": [layer]})
    assert message in str(info.value), str(info.value)
    assert info.value.location is not None and info.value.hint


def test_select_that_would_leave_no_axis_says_what_to_do():
    with pytest.raises(ConfigError, match="would leave no sample axis") as info:
        check_model({"input": [8], "layers": [{"type": "select", "index": 0}]})
    assert "slice" in str(info.value)
