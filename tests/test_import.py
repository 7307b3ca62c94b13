"""`skiptrain import`: a traced PyTorch model as skiptrain YAML with blocks, its keys, parameters and outputs.

Every import is checked by rebuilding inside ``import_model`` (keys, parameter count, bitwise outputs); the
tests check that again from the written file, and what the YAML reads like (blocks, repeat, skips).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from skiptrain import api
from skiptrain.errors import SkiptrainError

from .conftest import invoke


class Unit(nn.Module):
    """conv, batch norm, ReLU: three leaves in one block."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Gate(nn.Module):
    """A sigmoid gate: x * sigmoid(fc(x))."""

    def __init__(self, channels: int):
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc(x))


class HandWritten(nn.Module):
    """A concat of two units, a gate, and a long skip from the stem past all of them (through a 1x1 conv)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = Unit(8, 8)
        self.b = Unit(8, 8)
        self.c = Unit(16, 16, stride=2)
        self.gate = Gate(16)
        self.proj = nn.Conv2d(8, 16, 1, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        s = self.stem(x)
        a = self.a(s)
        b = self.b(a)
        x = torch.cat([b, a], dim=1)
        x = self.gate(self.c(x))
        x = x + self.proj(s)  # the long skip: from the stem, past two units, a concat and the gate
        return self.head(torch.flatten(self.pool(x), 1))


class Looped(nn.Module):
    """Blocks held in an nn.ModuleList and called in a loop, and a Sequential's first layer called by index:
    neither container is called itself."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.blocks = nn.ModuleList([Unit(4, 4) for _ in range(3)])

    def forward(self, x):
        x = self.stem[1](self.stem[0](x))
        for block in self.blocks:
            x = block(x) + x
        return x


class Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.inner = Branch()

    def forward(self, x):
        return self.inner(x)


class Branch(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:  # the line the error names
            return self.fc(x)
        return x


class Cumulative(nn.Module):
    """An op no skiptrain layer computes."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return torch.cumsum(self.fc(x), dim=1)


class Shared(nn.Module):
    """One Linear called twice: shared weights."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.fc(x)))


class Recurrent(nn.Module):
    """A torch.nn layer that no registered type builds."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.RNN(4, 4, batch_first=True)

    def forward(self, x):
        return self.rnn(x)[0]


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x, y):
        return self.fc(x) + y


class Pair(nn.Module):
    """A submodule that returns two tensors."""

    def __init__(self):
        super().__init__()
        self.split = Halves()
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        a, b = self.split(x)
        return self.fc(a) + b


class Halves(nn.Module):
    def forward(self, x):
        return x[:, :2] * 1.0, x[:, 2:] * 1.0


def rebuilt(path: Path, model: nn.Module, shape: list[int]) -> None:
    """The written file's model has the original's keys (in order), parameter count and exact outputs."""
    built = api.build_model(str(path)).eval()
    assert list(built.state_dict()) == list(model.state_dict())
    assert sum(p.numel() for p in built.parameters()) == sum(p.numel() for p in model.parameters())
    built.load_state_dict(model.state_dict())
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(built(x), model.eval()(x))


def test_hand_written_concat_gate_and_long_skip(tmp_path):
    out = tmp_path / "hand.yaml"
    result = api.import_model("tests.test_import:HandWritten", "3,16,16", out, kwargs='{"num_classes": 5}')
    torch.manual_seed(0)
    rebuilt(out, HandWritten(num_classes=5), [3, 16, 16])
    model = yaml.safe_load(out.read_text())["model"]
    assert result["parameters"] == sum(p.numel() for p in HandWritten(5).parameters()) and result["unified"]
    assert {"unit", "gate"} <= set(model["blocks"])  # a, b and c share one definition
    assert [e.get("block") for e in model["layers"] if "block" in e] == ["unit", "unit", "unit", "gate"]
    c = next(e for e in model["layers"] if e.get("id") == "c")
    assert c["args"] == {"stride": 2, "out_channels": 16} or c["args"] == {"out_channels": 16, "stride": 2}
    assert {"type": "concat", "axis": 0, "input": ["b", "a"]} in model["layers"]  # cat([b, a]): b is a block
    assert model["skips"] == [{"from": "gate", "to": "proj"}]  # the long skip's add, into the layer before it
    assert next(e for e in model["layers"] if e.get("id") == "proj")["input"] == "stem"
    assert model["blocks"]["gate"]["skips"] == [{"from": "input", "to": "sigmoid", "merge": "mul"}]


def test_containers_called_through_their_children(tmp_path):
    out = tmp_path / "looped.yaml"
    api.import_model("tests.test_import:Looped", "3,8,8", out)
    torch.manual_seed(0)
    rebuilt(out, Looped(), [3, 8, 8])
    model = yaml.safe_load(out.read_text())["model"]
    assert [e["id"] for e in model["layers"]] == ["stem", "blocks"]  # ids stay one name each: stem.0, blocks.2
    assert set(model["blocks"]) == {"stem", "blocks", "unit"}
    assert {"id": 1, "block": "unit"} in model["blocks"]["blocks"]["layers"]  # blocks.1, its loop's add after it


def test_resnet18_blocks_keys_and_outputs(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    out, weights = tmp_path / "resnet18.yaml", tmp_path / "resnet18.safetensors"
    result = invoke("import", "torchvision.models:resnet18", "--input", "3,32,32", "--output", out,
                    "--weights", weights)
    assert result.exit_code == 0, result.output
    assert "11,689,512 parameters" in result.output
    torch.manual_seed(0)
    original = torchvision.models.resnet18()
    # the import built its own seeded model: load its weights file into ours, then compare everything
    from safetensors.torch import load_file

    original.load_state_dict(load_file(weights))
    rebuilt(out, original, [3, 32, 32])
    validated = invoke("validate", out)
    assert validated.exit_code == 0 and "valid" in validated.output, validated.output
    from skiptrain import (
        transfer,  # --weights is what `train.init` reads: every tensor loads, strictly
    )
    from skiptrain.settings import parse_settings

    loaded = transfer.load_into(api.build_model(str(out)), transfer.read(weights),
                                parse_settings({"init": {"path": str(weights), "strict": True}}).init)
    assert loaded.form == "safetensors" and loaded.loaded == loaded.total == 122 and not loaded.not_loaded
    model = yaml.safe_load(out.read_text())["model"]
    # one BasicBlock definition: its `downsample` (only in the first block of layers 2-4) under a flag
    assert set(model["blocks"]) == {"basic_block", "downsample"}
    layers = {e["id"]: e for e in model["layers"] if "id" in e}
    assert layers["layer1"] == {"id": "layer1", "block": "basic_block", "repeat": 2}
    assert layers["layer3"] == {"id": "layer3", "block": "basic_block", "repeat": 2, "args": {"out_channels": 256},
                                "first_args": {"stride": 2, "downsample": True}}
    block = model["blocks"]["basic_block"]
    assert block["args"] == {"out_channels": 64, "stride": 1, "downsample": False}
    assert block["skips"] == [{"from": "input", "to": "bn2", "when": "${not downsample}"}]
    assert next(e for e in block["layers"] if e.get("id") == "downsample")["when"] == "${downsample}"
    assert {"type": "add", "input": ["bn2", "downsample"], "when": "${downsample}"} in block["layers"]


def import_text(target: str, shape: str, path: Path) -> dict:
    """The model section `skiptrain import` writes for ``target`` (the header comment names the target)."""
    api.import_model(target, shape, path, overwrite=True)
    return yaml.safe_load(path.read_text())


def test_round_trip_import_eject_import_is_stable(tmp_path, monkeypatch):
    first = import_text("tests.test_import:HandWritten", "3,16,16", tmp_path / "first.yaml")
    result = invoke("eject", tmp_path / "first.yaml", "--output", tmp_path / "ejected_hand.py")
    assert result.exit_code == 0, result.output
    monkeypatch.syspath_prepend(str(tmp_path))
    assert import_text("ejected_hand:HandWritten", "3,16,16", tmp_path / "second.yaml") == first


SLOW_MODELS = [("resnet50", "3,64,64"), ("mobilenet_v2", "3,64,64"), ("mobilenet_v3_small", "3,64,64"),
               ("efficientnet_b0", "3,64,64"), ("regnet_y_400mf", "3,64,64"), ("densenet121", "3,64,64"),
               ("convnext_tiny", "3,64,64"), ("vit_b_16", "3,224,224")]


@pytest.mark.slow
@pytest.mark.parametrize("name, shape", SLOW_MODELS)
def test_torchvision_models_import_exactly(tmp_path, name, shape):
    torchvision = pytest.importorskip("torchvision")
    out, weights = tmp_path / f"{name}.yaml", tmp_path / f"{name}.safetensors"
    result = api.import_model(f"torchvision.models:{name}", shape, out, weights=weights)
    from safetensors.torch import load_file

    original = getattr(torchvision.models, name)()
    original.load_state_dict(load_file(weights))
    rebuilt(out, original, [int(d) for d in shape.split(",")])
    assert result["parameters"] == sum(p.numel() for p in original.parameters())
    assert result["unified"], "the first YAML rebuilt: no fallback to one definition per structure"
    model = yaml.safe_load(out.read_text())["model"]
    assert model["blocks"], "repeated submodules become blocks"
    if name == "resnet50":  # the zoo's shape: one bottleneck, layer1..4 repeat it
        assert set(model["blocks"]) == {"bottleneck", "downsample"}
        layers = {e.get("id"): e for e in model["layers"]}
        assert layers["layer3"] == {"id": "layer3", "block": "bottleneck", "repeat": 6,
                                    "args": {"out_channels": 256, "out_channels_conv3": 1024},
                                    "first_args": {"stride": 2, "downsample": True}}
    if name in ("mobilenet_v2", "efficientnet_b0"):  # with and without the expansion conv: one definition
        assert {"inverted_residual", "mbconv"} & set(model["blocks"])
        assert not {"inverted_residual2", "mbconv2"} & set(model["blocks"])
    if name == "densenet121":  # the zoo's shape: one dense layer, each dense block repeats it
        assert set(model["blocks"]) == {"_dense_layer", "_transition", "features"}
        assert {"id": "denseblock3", "block": "_dense_layer", "repeat": 24,
                "copy_id": "denselayer${repeat_index + 1}"} in model["blocks"]["features"]["layers"]
    if name == "convnext_tiny":  # stochastic depth's rate rises over the 18 blocks: written once, stages repeat
        assert {"id": "stochastic_depth", "type": "stochastic_depth",
                "p": "${0.1 * block_index / (block_count - 1)}"} in model["blocks"]["cnblock"]["layers"]
        assert {"id": 5, "block": "cnblock", "repeat": 9, "args": {"out_channels": 384, "out_features": 1536}} \
            in model["blocks"]["features"]["layers"]
    if name == "vit_b_16":
        encoder = model["blocks"]["encoder"]["layers"]
        assert {"id": "layers", "block": "encoder_block", "repeat": 12,
                "copy_id": "encoder_layer_${repeat_index}"} in encoder
        assert {"id": "pos_embedding", "type": "position_embedding"} in encoder
        assert {"id": "class_token", "type": "class_token"} in model["layers"]


@pytest.mark.slow
@pytest.mark.parametrize("name, shape", [("resnet18", "3,32,32"), ("resnet50", "3,64,64"),
                                         ("mobilenet_v2", "3,64,64"), ("mobilenet_v3_small", "3,64,64"),
                                         ("efficientnet_b0", "3,64,64"), ("densenet121", "3,64,64")])
def test_torchvision_round_trip_is_stable(tmp_path, monkeypatch, name, shape):
    pytest.importorskip("torchvision")
    first = import_text(f"torchvision.models:{name}", shape, tmp_path / "first.yaml")
    assert invoke("eject", tmp_path / "first.yaml", "--output", tmp_path / f"ejected_{name}.py").exit_code == 0
    ejected = (tmp_path / f"ejected_{name}.py").read_text()
    class_name = [line.split()[1].split("(")[0] for line in ejected.splitlines() if line.startswith("class ")][-1]
    monkeypatch.syspath_prepend(str(tmp_path))
    assert import_text(f"ejected_{name}:{class_name}", shape, tmp_path / "second.yaml") == first


def test_untraceable_model_names_module_and_line(tmp_path):
    with pytest.raises(SkiptrainError) as error:
        api.import_model("tests.test_import:Branchy", "4", tmp_path / "m.yaml")
    assert "module `inner` (Branch)" in error.value.message and "cannot trace" in error.value.message
    assert error.value.location.file == __file__
    line = Path(__file__).read_text().splitlines()[error.value.location.line - 1]
    assert "the line the error names" in line
    assert not (tmp_path / "m.yaml").exists()


def test_unsupported_op_is_located(tmp_path):
    result = invoke("import", "tests.test_import:Cumulative", "--input", "4", "--output", tmp_path / "m.yaml")
    assert result.exit_code == 1
    assert "cumsum" in result.output and "test_import.py:" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "m.yaml").exists()


@pytest.mark.parametrize("target, expected", [
    ("Shared", "module `fc` is called twice: its weights are shared"),
    ("TwoInputs", "takes 2 inputs; skiptrain models take one tensor"),
    ("Pair", "module `split` (Halves) returns tuple, not one tensor"),
    ("Recurrent", "module `rnn` (RNN) has no skiptrain layer type: no registered layer type builds"),
])
def test_inexpressible_models_are_one_message(tmp_path, target, expected):
    shape = "3,4" if target == "Recurrent" else "4"
    result = invoke("import", f"tests.test_import:{target}", "--input", shape, "--output", tmp_path / "m.yaml")
    assert result.exit_code == 1 and expected in result.output and "import error" in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "m.yaml").exists()


@pytest.mark.parametrize("target, expected", [
    ("torchvision.models.resnet18", "is not MODULE:CALLABLE"),
    ("no_such_package_xyz:build", "cannot import `no_such_package_xyz`"),
    ("torchvision.models:no_such_model", "has no `no_such_model`"),
    ("tests.test_import:ROOT_NOT_CALLABLE", "is not callable"),
])
def test_bad_target_is_one_message(tmp_path, target, expected):
    result = invoke("import", target, "--input", "3,8,8", "--output", tmp_path / "m.yaml")
    assert result.exit_code == 1 and expected in result.output, result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("kwargs, expected", [("{num_classes: 3}", "--kwargs is not JSON"),
                                              ("[1, 2]", "must be a JSON object"),
                                              ('{"no_such_argument": 1}', "failed: TypeError")])
def test_bad_kwargs_is_one_message(tmp_path, kwargs, expected):
    result = invoke("import", "tests.test_import:HandWritten", "--input", "3,8,8", "--output",
                    tmp_path / "m.yaml", "--kwargs", kwargs)
    assert result.exit_code == 1 and expected in result.output, result.output
    assert "Traceback" not in result.output


def test_existing_output_needs_force(tmp_path):
    out = tmp_path / "m.yaml"
    out.write_text("keep\n")
    result = invoke("import", "tests.test_import:HandWritten", "--input", "3,8,8", "--output", out)
    assert result.exit_code == 1 and "--force" in result.output
    assert out.read_text() == "keep\n"


ROOT_NOT_CALLABLE = 3
