"""Every registered merge: its shape rule, the code it generates and its projection, on real models."""
from __future__ import annotations

import json
import random

import pytest
import torch

import skiptrain
from skiptrain import registry
from skiptrain.errors import ConfigError, ShapeError
from skiptrain.merges import MERGES, broadcast_shape
from skiptrain.report import plan_json, skip_text
from skiptrain.schema import config_schema

from .conftest import invoke

# What each merge computes, written independently of its generated code (a new merge adds its line).
REFERENCE = {
    "add": lambda value, source, dim: value + source,
    "mul": lambda value, source, dim: value * source,
    "concat": lambda value, source, dim: torch.cat([value, source], dim=dim),
}


def test_every_merge_has_a_reference_here():
    assert sorted(REFERENCE) == MERGES.names(), "add the new merge's expected result to REFERENCE"


def two_convs(merge: str, target_stride: int = 1, as_layer: bool = False) -> dict:
    """`src` and `dst` both read the input; `src`'s value is merged into `dst`'s."""
    layers = [{"id": "src", "type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1},
              {"id": "dst", "type": "conv2d", "out_channels": 6, "kernel_size": 3, "padding": 1,
               "stride": target_stride, "input": "input"}]
    if as_layer:
        return {"input": [3, 8, 8], "layers": [*layers, {"id": "m", "type": merge, "input": ["dst", "src"]}]}
    return {"input": [3, 8, 8], "layers": layers, "skips": [{"from": "src", "to": "dst", "merge": merge}]}


def check_against_reference(model_cfg: dict, merge_name: str) -> None:
    """The model's output is REFERENCE's merge of `dst` and the (projected) `src`, in the shapes the merge says."""
    plan = skiptrain.check_model(model_cfg)
    model = skiptrain.build_model(model_cfg).eval()
    (skip,) = plan.graph.skips
    merge = MERGES.get(merge_name)
    proj = plan.projection_for(skip)
    target_shape = plan.graph.nodes["dst"].meta["layer_shape"]
    source_shape = plan.graph.nodes[skip.source].meta["shape"]
    axis = skip.meta["axis"]
    needed = merge.source_shape(source_shape, target_shape, axis)
    assert (proj.out_shape if proj else source_shape) == needed
    assert plan.output_shape == merge.merged_shape(needed, target_shape, axis)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        value, source = model.dst(x), model.src(x)
        if proj is not None:
            source = model.get_submodule(proj.id)(source)
        expected = REFERENCE[merge_name](value, source, axis + 1)
        torch.testing.assert_close(model(x), expected)
    assert tuple(expected.shape[1:]) == plan.output_shape


@pytest.mark.parametrize("name", MERGES.names())
def test_a_merge_of_fitting_shapes_needs_no_projection(name):
    model = two_convs(name)
    model["layers"][0]["out_channels"] = 6
    check_against_reference(model, name)
    assert not skiptrain.check_model(model).projections


@pytest.mark.parametrize("name", MERGES.names())
def test_a_merge_across_a_mismatch_gets_its_projection(name):
    """4 channels at 8x8 into 6 channels at 4x4: the projection gives what the merge needs."""
    model = two_convs(name, target_stride=2)
    plan = skiptrain.check_model(model)
    (proj,) = plan.projections.values()
    assert proj.stride == (2, 2) and proj.id == "dst_proj"
    check_against_reference(model, name)


@pytest.mark.parametrize("name", MERGES.names())
def test_a_merge_layer_is_the_same_as_a_skip(name):
    as_skip = skiptrain.build_model(two_convs(name, target_stride=2))
    as_layer = skiptrain.build_model(two_convs(name, target_stride=2, as_layer=True))
    assert set(as_layer.state_dict()) == {k.replace("dst_proj", "m_proj") for k in as_skip.state_dict()}
    as_layer.load_state_dict({k.replace("dst_proj", "m_proj"): v for k, v in as_skip.state_dict().items()})
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(as_layer.eval()(x), as_skip.eval()(x))


@pytest.mark.parametrize("name", MERGES.names())
def test_in_place_only_where_the_merge_allows_it_and_with_the_same_values(name):
    """After a BatchNorm (a fresh value read once) a merge that may run in place does."""
    cfg = {"input": [4, 6, 6], "layers": [
        {"id": "c", "type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1},
        {"id": "bn", "type": "batchnorm2d"}, {"id": "r", "type": "relu"}],
        "skips": [{"from": "input", "to": "bn", "merge": name}]}
    torch.manual_seed(0)
    model = skiptrain.build_model(cfg)
    merge = MERGES.get(name)
    assert (f"bn {merge.in_place} x" in model.code) == bool(merge.in_place)
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    expected = torch.relu(REFERENCE[name](model.bn(model.c(x)), x, 1))
    torch.testing.assert_close(model(x), expected)
    (grad,) = torch.autograd.grad(model(x).sum(), x)
    (grad_ref,) = torch.autograd.grad(torch.relu(REFERENCE[name](model.bn(model.c(x)), x, 1)).sum(), x)
    torch.testing.assert_close(grad, grad_ref)


@pytest.mark.parametrize("name", MERGES.names())
def test_every_merge_is_a_layer_type_and_in_the_schema(name):
    layer = registry.get(name)
    assert layer.passthrough and name in layer.doc
    skip = config_schema()["$defs"]["skip"]["properties"]["merge"]["anyOf"][0]["enum"]
    assert skip == list(MERGES)
    assert MERGES.get(name).doc and set(MERGES.get(name).schema()) == set(MERGES.get(name).keys)


def test_an_unknown_merge_is_located_with_a_suggestion():
    with pytest.raises(ConfigError) as info:
        skiptrain.check_model({"input": [4], "layers": [{"id": "a", "type": "relu"}],
                               "skips": [{"from": "input", "to": "a", "merge": "concta"}]})
    assert info.value.message == "unknown merge `concta`" and "concat" in info.value.hint


def test_a_scoped_merge_reaches_the_generated_code():
    """A merge registered by a test (or a plugin) is used with no edit outside its entry."""
    from skiptrain.merges import Merge

    class Maximum(Merge):
        name, doc = "maximum", "the elementwise maximum"

        def expression(self, value: str, source: str, dim: int) -> str:
            return f"torch.maximum({value}, {source})"

    with MERGES.scoped():
        MERGES.add("maximum", Maximum())
        model = skiptrain.build_model({"input": [4], "layers": [{"id": "a", "type": "linear", "out_features": 4}],
                                       "skips": [{"from": "input", "to": "a", "merge": "maximum"}]}).eval()
        x = torch.randn(3, 4)
        with torch.no_grad():
            torch.testing.assert_close(model(x), torch.maximum(model.a(x), x))
    with pytest.raises(ConfigError, match="unknown merge"):
        skiptrain.check_model({"input": [4], "layers": [{"id": "a", "type": "relu"}],
                               "skips": [{"from": "input", "to": "a", "merge": "maximum"}]})


# -- broadcasting merges (issue 14): a side of size 1 is stretched, as torch does, with no projection ----------

def squeeze_excite(order: list[str], gate_channels: int = 16, policy: str = "auto") -> dict:
    """torchvision's SqueezeExcitation written as a graph: `se` multiplies `x` [16, 8, 8] by `gate` [C, 1, 1]."""
    return {"input": [16, 8, 8], "projection": policy, "layers": [
        {"id": "x", "type": "conv2d", "out_channels": 16, "kernel_size": 3, "padding": 1},
        {"id": "pool", "type": "adaptiveavgpool2d", "output_size": 1},
        {"id": "fc1", "type": "conv2d", "out_channels": 4, "kernel_size": 1},
        {"id": "act", "type": "relu"},
        {"id": "fc2", "type": "conv2d", "out_channels": gate_channels, "kernel_size": 1},
        {"id": "gate", "type": "sigmoid"},
        {"id": "se", "type": "mul", "input": order},
        {"id": "out", "type": "relu"}]}


@pytest.mark.parametrize("order, side", [(["x", "gate"], "from"), (["gate", "x"], "to")])
def test_squeeze_excite_broadcasts_in_either_order_with_no_projection(order, side):
    plan = skiptrain.check_model(squeeze_excite(order))
    assert not plan.projections and plan.projection_params == 0 and not plan.warnings
    assert plan.output_shape == (16, 8, 8) and plan.graph.nodes["se"].meta["shape"] == (16, 8, 8)
    (skip,) = plan.graph.skips
    assert skip.meta["broadcast"] == side and skip.meta["shape"] == (16, 8, 8)
    assert skip_text(plan, skip).endswith("broadcast gate to [16, 8, 8]")
    (entry,) = plan_json(plan)["skips"]
    assert entry["broadcast"] == side and entry["shape"] == [16, 8, 8] and entry["operands"] == order
    torch.manual_seed(0)
    model = skiptrain.build_model(squeeze_excite(order)).eval()
    assert sum(p.numel() for p in model.parameters()) == plan.params == plan.layer_params
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        features = model.x(x)
        gate = model.gate(model.fc2(model.act(model.fc1(model.pool(features)))))
        assert torch.equal(model(x), torch.relu(features * gate))


def test_squeeze_excite_is_torchvisions_with_its_weights():
    """Same parameters as torchvision.ops.SqueezeExcitation, loaded by name, and the same output bitwise."""
    from torchvision.ops import SqueezeExcitation

    reference = SqueezeExcitation(16, 4).eval()
    cfg = squeeze_excite(["input", "gate"])
    cfg["layers"] = cfg["layers"][1:-1]
    cfg["layers"][0]["input"] = "input"
    model = skiptrain.build_model(cfg).eval()
    model.load_state_dict({k: v for k, v in reference.state_dict().items()}, strict=True)
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


def test_validate_says_broadcast_and_which_side(write_yaml):
    import yaml
    path = write_yaml(yaml.safe_dump({"model": squeeze_excite(["gate", "x"])}))
    table = invoke("validate", path, "--strict")  # a broadcast is no mismatch: --strict accepts it
    assert table.exit_code == 0, table.output
    assert "broadcast gate to [16, 8, 8]" in table.output and "projections: 0   broadcasts: 1" in table.output
    result = invoke("validate", path, "--json")
    (entry,) = json.loads(result.output)["skips"]
    assert (entry["from"], entry["to"], entry["broadcast"]) == ("x", "se", "to")
    assert '-. "mul, broadcast to" .->' in invoke("graph", path).output


def test_the_merged_shape_is_torchs_broadcast_shape():
    rng = random.Random(0)
    for _ in range(500):
        rank = rng.randint(1, 4)
        a = tuple(rng.choice([1, 2, 3]) for _ in range(rank))
        b = tuple(rng.choice([1, 2, 3]) for _ in range(rank))
        try:
            expected = tuple(torch.broadcast_shapes(a, b))
        except RuntimeError:
            expected = None
        assert broadcast_shape(a, b) == expected == broadcast_shape(b, a), (a, b)
    assert broadcast_shape((4,), (4, 4)) is None  # different ranks stay an error, not torch's silent prepend


def shaped(id: str, shape: tuple[int, int, int], **extra) -> list[dict]:
    """Layers that make a [C, H, W] value from the [6, 4, 4] input: pool, 1x1 conv, BatchNorm (a fresh value)."""
    return [{"id": f"{id}_pool", "type": "adaptiveavgpool2d", "output_size": list(shape[1:]), "input": "input"},
            {"id": f"{id}_conv", "type": "conv2d", "out_channels": shape[0], "kernel_size": 1},
            {"id": id, "type": "batchnorm2d", **extra}]


BROADCASTING = [n for n in MERGES.names() if MERGES.get(n).broadcasts]


@pytest.mark.parametrize("name", BROADCASTING)
@pytest.mark.parametrize("source, target", [((1, 4, 4), (6, 4, 4)), ((6, 4, 4), (6, 1, 1)), ((6, 1, 4), (1, 4, 1)),
                                            ((6, 1, 1), (6, 4, 4)), ((1, 1, 1), (3, 2, 4))])
def test_a_skip_broadcasts_either_side_and_downstream_sees_the_broadcast_shape(name, source, target):
    """A skip into a node whose value grows: every later node, and skips from it, get the broadcast shape."""
    cfg = {"input": [6, 4, 4], "layers": [*shaped("src", source), *shaped("dst", target),
                                          {"id": "after", "type": "relu"}, {"id": "last", "type": "tanh"}],
           "skips": [{"from": "src", "to": "dst", "merge": name}, {"from": "dst", "to": "last", "merge": name}]}
    plan = skiptrain.check_model(cfg)
    merged = tuple(torch.broadcast_shapes(source, target))
    assert not plan.projections
    assert [plan.graph.nodes[n].meta["shape"] for n in ("dst", "after", "last")] == [merged] * 3
    first, second = plan.graph.skips
    side = {(False, False): None, (True, False): "from", (False, True): "to", (True, True): "both"}
    assert first.meta["broadcast"] == side[source != merged, target != merged] and second.meta["broadcast"] is None
    model = skiptrain.build_model(cfg).eval()
    x = torch.randn(2, 6, 4, 4)
    with torch.no_grad():
        src = model.src(model.src_conv(model.src_pool(x)))
        dst = REFERENCE[name](model.dst(model.dst_conv(model.dst_pool(x))), src, 1)
        torch.testing.assert_close(model(x), REFERENCE[name](torch.tanh(torch.relu(dst)), dst, 1))
    # in place only into a value that keeps its shape (`dst += src` fails when `dst` would grow)
    assert ("dst += src" in model.code) == (MERGES.get(name).in_place is not None and target == merged)


def test_a_sequence_broadcasts_a_single_token():
    """[1, 8] (one token) added to [5, 8]: a position-embedding-like broadcast on the sequence axis."""
    cfg = {"input": [5, 8], "layers": [
        {"id": "mean", "type": "mean", "dim": 0, "keepdim": True},
        {"id": "tok", "type": "linear", "out_features": 8},
        {"id": "seq", "type": "linear", "out_features": 8, "input": "input"}],
        "skips": [{"from": "tok", "to": "seq"}]}
    plan = skiptrain.check_model(cfg)
    assert plan.graph.nodes["tok"].meta["shape"] == (1, 8) and not plan.projections and plan.output_shape == (5, 8)
    model = skiptrain.build_model(cfg).eval()
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.seq(x) + model.tok(x.mean(1, keepdim=True)))


def test_a_mismatch_that_does_not_broadcast_still_gets_its_projection_and_a_warning():
    plan = skiptrain.check_model(squeeze_excite(["x", "gate"], gate_channels=8))  # [8, 1, 1] into [16, 8, 8]
    (proj,) = plan.projections.values()
    assert proj.kind == "upsample_conv_bn" and proj.out_shape == (16, 8, 8) and proj.params
    (warning,) = plan.warnings
    assert "gets a projection" in warning and "axis 0 (8 vs 16)" in warning
    plain = two_convs("mul")  # 4 channels into 6 at one size: nothing broadcasts, a projection and no warning
    plan = skiptrain.check_model(plain)
    assert [p.kind for p in plan.projections.values()] == ["conv_bn"] and not plan.warnings
    assert plan.graph.skips[0].meta["broadcast"] is None


def test_under_none_a_broadcast_passes_and_a_near_broadcast_is_not_told_to_project():
    assert not skiptrain.check_model(squeeze_excite(["x", "gate"], policy="none")).projections
    with pytest.raises(ShapeError) as info:
        skiptrain.check_model(squeeze_excite(["x", "gate"], gate_channels=8, policy="none"))
    error = info.value
    assert "broadcasts a side of size 1" in error.message and "axis 0: 8 vs 16" in error.message
    assert "auto" not in error.hint and "`gate`" in error.hint and "axis 0" in error.hint and error.location
    plain = two_convs("mul")
    plain["skips"][0]["projection"] = "none"
    with pytest.raises(ShapeError) as info:  # nothing here would broadcast: a projection is a fix worth naming
        skiptrain.check_model(plain)
    assert "policy is `none`" in info.value.message and "projection: auto" in info.value.hint


def test_concat_never_broadcasts():
    cfg = squeeze_excite(["x", "gate"])
    cfg["layers"][-2]["type"] = "concat"
    plan = skiptrain.check_model(cfg)  # [16, 1, 1] joined to [16, 8, 8]: the gate is upsampled (spatial sizes differ)
    (proj,) = plan.projections.values()
    assert proj.kind == "upsample_conv_bn" and plan.output_shape == (32, 8, 8)
    assert plan.graph.skips[0].meta["broadcast"] is None
