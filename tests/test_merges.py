"""Every registered merge: its shape rule, the code it generates and its projection, on real models."""
from __future__ import annotations

import pytest
import torch

import skiptrain
from skiptrain import registry
from skiptrain.errors import ConfigError
from skiptrain.merges import MERGES
from skiptrain.schema import config_schema

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
