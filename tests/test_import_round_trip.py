"""`skiptrain import` of what `skiptrain eject` writes: eject's classes of one block are one definition again
(their `skiptrain_block` marker), and a DenseNet's dense blocks import as `repeat:` and round trip."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from .conftest import invoke
from .test_import import import_text


class EjectedPlain(nn.Module):
    """Two classes of one ejected block (what `skiptrain eject` writes for a block's structures): named
    unlike each other, tied by their `skiptrain_block` marker."""

    skiptrain_block = "unit"

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class WithResidual(EjectedPlain):
    skiptrain_block = "unit"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)


class EjectedVariants(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = EjectedPlain(), WithResidual(), WithResidual()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(self.b(self.a(x)))


def test_ejected_classes_of_one_block_are_one_definition(tmp_path):
    model = import_text("tests.test_import_round_trip:EjectedVariants", "4,8,8", tmp_path / "v.yaml")["model"]
    assert set(model["blocks"]) == {"unit"}, "one definition, named by the marker"
    assert [e.get("block") for e in model["layers"]] == ["unit"] * 3


def tiny_dense() -> nn.Module:
    """torchvision's DenseNet parts, small: a stem, a dense block of three layers, a transition."""
    from collections import OrderedDict

    from torchvision.models.densenet import _DenseBlock, _Transition

    return nn.Sequential(OrderedDict(conv0=nn.Conv2d(3, 4, 3, padding=1), denseblock1=_DenseBlock(3, 4, 2, 2, 0.0),
                                     transition1=_Transition(10, 5)))


def test_dense_block_is_a_repeat_and_round_trips(tmp_path, monkeypatch):
    pytest.importorskip("torchvision")
    first = import_text("tests.test_import_round_trip:tiny_dense", "3,8,8", tmp_path / "first.yaml")
    model = first["model"]
    assert set(model["blocks"]) == {"_dense_layer", "_transition"}, "no definition per dense block"
    assert {"id": "denseblock1", "block": "_dense_layer", "repeat": 3,
            "copy_id": "denselayer${repeat_index + 1}"} in model["layers"]
    assert model["blocks"]["_dense_layer"]["skips"] == [
        {"from": "input", "to": "conv2", "merge": "concat", "order": "from_first", "axis": 0}]
    result = invoke("eject", tmp_path / "first.yaml", "--output", tmp_path / "ejected_dense.py")
    assert result.exit_code == 0, result.output
    monkeypatch.syspath_prepend(str(tmp_path))  # the transition reads the dense block's concat: its shape
    assert import_text("ejected_dense:TinyDense", "3,8,8", tmp_path / "second.yaml") == first
