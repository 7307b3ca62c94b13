"""The order of a concat: `order: to_first` (the default, cat([to, from])) or `from_first` (DenseNet's),
merge layers in input order, and both a broadcast and a from_first concat through ONNX export."""
from __future__ import annotations

import json

import pytest
import torch

import skiptrain
from skiptrain.errors import ConfigError
from skiptrain.report import skip_text

from .conftest import invoke
from .test_merges import squeeze_excite, two_convs


@pytest.mark.parametrize("order", [None, "to_first", "from_first"])
def test_a_concat_skip_joins_in_the_order_it_says(order, write_yaml):
    import yaml
    cfg = two_convs("concat")
    if order:
        cfg["skips"][0]["order"] = order
    plan = skiptrain.check_model(cfg)
    model = skiptrain.build_model(cfg).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        dst, src = model.dst(x), model.src(x)
        expected = torch.cat([src, dst] if order == "from_first" else [dst, src], dim=1)
        assert torch.equal(model(x), expected)
    operands = ["src", "dst"] if order == "from_first" else ["dst", "src"]
    (skip,) = plan.graph.skips
    assert skip_text(plan, skip) == f"concat [{', '.join(operands)}]"
    path = write_yaml(yaml.safe_dump({"model": cfg}))
    (entry,) = json.loads(invoke("validate", path, "--json").output)["skips"]
    assert entry["order"] == (order or "to_first") and entry["operands"] == operands
    assert f"concat [{', '.join(operands)}]" in invoke("validate", path).output
    assert ("concat, from first" in invoke("graph", path).output) == (order == "from_first")


def test_dense_connections_in_torchvisions_order():
    """DenseNet: each layer's input is cat([x0, x1, ...]), earliest first; `order: from_first` on each skip."""
    block = {"args": {"growth": 4}, "layers": [
        {"id": "norm", "type": "batchnorm2d"}, {"id": "relu", "type": "relu"},
        {"id": "conv", "type": "conv2d", "out_channels": "${growth}", "kernel_size": 3, "padding": 1, "bias": False}],
        "skips": [{"from": "input", "to": "conv", "merge": "concat", "order": "from_first"}]}
    cfg = {"input": [8, 6, 6], "blocks": {"dense": block}, "layers": [{"id": "layers", "block": "dense", "repeat": 3}]}
    plan = skiptrain.check_model(cfg)
    assert plan.output_shape == (20, 6, 6) and not plan.projections
    model = skiptrain.build_model(cfg).eval()
    x = torch.randn(2, 8, 6, 6)
    features = [x]
    with torch.no_grad():
        for i in range(3):
            layer = model.layers.get_submodule(str(i))
            features.append(layer.conv(layer.relu(layer.norm(torch.cat(features, 1)))))
        assert torch.equal(model(x), torch.cat(features, 1))


def test_a_merge_layer_concatenates_in_input_order():
    cfg = two_convs("concat", as_layer=True)
    cfg["layers"][-1]["input"] = ["src", "dst", "input"]
    cfg["layers"][0]["out_channels"] = 4
    cfg["layers"][1]["stride"] = 1
    model = skiptrain.build_model(cfg).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), torch.cat([model.src(x), model.dst(x), x], 1))
    plan = skiptrain.check_model(cfg)
    assert [skip_text(plan, s) for s in plan.graph.skips] == ["concat [src, dst]", "concat [m, input]"]


@pytest.mark.parametrize("skip, message, hint", [
    ({"merge": "concat", "order": "reversed"}, "`order:` must be `to_first` or `from_first`", "DenseNet"),
    ({"merge": "add", "order": "from_first"}, "`order:` does not change what `add` merges", "drop `order:`"),
])
def test_a_wrong_order_is_located_with_a_hint(skip, message, hint, write_yaml):
    import yaml
    cfg = two_convs("concat")
    cfg["skips"][0].update(skip)
    path = write_yaml(yaml.safe_dump({"model": cfg}, sort_keys=False))
    with pytest.raises(ConfigError) as info:
        skiptrain.check_model(path)
    assert message in info.value.message and hint in info.value.hint
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if text.lstrip().startswith("order:"))
    assert info.value.location.line == line
    result = invoke("validate", path)
    assert result.exit_code == 1 and message.split("`")[1] in result.output


def test_order_on_a_merge_layer_is_refused():
    cfg = two_convs("concat", as_layer=True)
    cfg["layers"][-1]["order"] = "from_first"
    with pytest.raises(ConfigError, match="takes only"):
        skiptrain.check_model(cfg)


def test_a_broadcast_and_a_from_first_concat_export_to_onnx_and_verify(write_yaml, tmp_path):
    import yaml

    from skiptrain.export import export_onnx

    cfg = squeeze_excite(["gate", "x"])  # the node's own value grows: [16, 1, 1] -> [16, 8, 8]
    cfg["skips"] = [{"from": "x", "to": "out", "merge": "concat", "order": "from_first"}]
    plan = skiptrain.check_model(cfg)
    assert plan.output_shape == (32, 8, 8) and not plan.projections
    report = export_onnx(write_yaml(yaml.safe_dump({"model": cfg})), tmp_path / "se.onnx")
    assert report["checks"] and all(check["max_abs"] < 1e-4 for check in report["checks"])
