"""Every row of the contract's projection table, planned, built and run."""
from __future__ import annotations

import pytest
import torch

import skiptrain
from skiptrain.errors import ShapeError


def two_branch(source_layers: str, target_layers: str, merge: str = "add", policy: str = "auto",
               input_shape: str = "[8, 16, 16]") -> dict:
    """A model where `src` and `dst` are computed from the input and `dst` receives a skip from `src`."""
    import yaml
    text = f"""
input: {input_shape}
layers:
  {source_layers}
  {target_layers}
skips:
  - {{from: src, to: dst, merge: {merge}, projection: {policy}}}
"""
    return yaml.safe_load(text)


def run(model: dict):
    plan = skiptrain.check_model(model)
    net = skiptrain.build_model(model).eval()
    out = net(torch.randn(2, *plan.graph.input_shape))
    assert tuple(out.shape[1:]) == plan.output_shape
    return plan, net, out


CONV = "- {{id: {id}, type: conv2d, out_channels: {c}, kernel_size: 3, stride: {s}, padding: 1{extra}}}"


def conv(id, c, s=1, extra=""):
    return CONV.format(id=id, c=c, s=s, extra=extra)


@pytest.mark.parametrize("policy, kind, params", [
    ("auto", "conv_bn", 8 * 16 + 2 * 16), ("conv", "conv", 8 * 16 + 16), ("pad", "pad", 0),
])
def test_channels_differ(policy, kind, params):
    plan, net, _ = run(two_branch(conv("src", 8), conv("dst", 16, extra=", input: input"), policy=policy))
    (proj,) = plan.projections.values()
    assert (proj.kind, proj.params, proj.id) == (kind, params, "dst_proj")
    assert plan.output_shape == (16, 16, 16)
    assert sum(p.numel() for p in net.dst_proj.parameters()) == params


@pytest.mark.parametrize("policy, kind", [("auto", "conv_bn"), ("pool_conv", "pool_conv_bn"), ("pad", "pad")])
def test_spatial_smaller_by_integer_factor(policy, kind):
    plan, _, _ = run(two_branch(conv("src", 8), conv("dst", 16, s=2, extra=", input: input"), policy=policy))
    (proj,) = plan.projections.values()
    assert (proj.kind, proj.stride) == (kind, (2, 2))
    assert proj.out_shape == (16, 8, 8)


def test_odd_sizes_use_the_stride_that_strided_convs_use():
    plan, _, _ = run(two_branch(conv("src", 8), conv("dst", 16, s=2, extra=", input: input"), input_shape="[8, 7, 7]"))
    (proj,) = plan.projections.values()
    assert proj.stride == (2, 2) and proj.out_shape == (16, 4, 4)


def test_spatial_larger_upsamples():
    model = two_branch("- {id: src, type: conv2d, out_channels: 8, kernel_size: 3, stride: 2, padding: 1}",
                       "- {id: dst, type: conv2d, out_channels: 4, kernel_size: 3, padding: 1, input: input}")
    plan, _, _ = run(model)
    (proj,) = plan.projections.values()
    assert proj.kind == "upsample_conv_bn" and proj.stride == (2, 2) and proj.out_shape == (4, 16, 16)


def test_concat_needs_no_projection_when_only_channels_differ():
    plan, _, out = run(two_branch(conv("src", 8), conv("dst", 16, extra=", input: input"), merge="concat"))
    assert not plan.projections and plan.output_shape == (24, 16, 16)


def test_concat_with_spatial_mismatch_keeps_source_channels():
    plan, _, _ = run(two_branch(conv("src", 8), conv("dst", 16, s=2, extra=", input: input"), merge="concat"))
    (proj,) = plan.projections.values()
    assert proj.out_shape == (8, 8, 8) and plan.output_shape == (24, 8, 8)


def test_features_get_a_linear_projection():
    model = two_branch("- {id: src, type: linear, out_features: 6}",
                       "- {id: dst, type: linear, out_features: 10, input: input}", input_shape="[5, 4]")
    plan, _, _ = run(model)
    (proj,) = plan.projections.values()
    assert (proj.kind, proj.params) == ("linear", 60)


@pytest.mark.parametrize("source, target, shape, message", [
    (conv("src", 8), conv("dst", 16, extra=", input: input"), "[8, 16, 16]", "policy is `none`"),
    ("- {id: src, type: flatten}", conv("dst", 8, extra=", input: input"), "[8, 4, 4]", "different ranks"),
    ("- {id: src, type: linear, out_features: 6}", "- {id: dst, type: linear, out_features: 6, input: input}\n  - {type: transpose, dims: [0, 1]}",
     "[5, 4]", None),
    ("- {id: src, type: conv2d, out_channels: 8, kernel_size: 2}", conv("dst", 8, extra=", input: input"),
     "[8, 10, 10]", None),
])
def test_unfixable_mismatches_are_errors(source, target, shape, message):
    policy = "none" if message and "none" in message else "auto"
    model = two_branch(source, target, policy=policy, input_shape=shape)
    try:
        skiptrain.check_model(model)
    except ShapeError as exc:
        assert "src" in exc.message and "dst" in exc.message
        assert exc.hint
        if message:
            assert message in exc.message
    else:
        if message:
            pytest.fail("expected a shape error")


def test_non_integer_ratio_is_an_error():
    model = two_branch("- {id: src, type: maxpool2d, kernel_size: 3}",  # 16 -> 5
                       "- {id: dst, type: maxpool2d, kernel_size: 2, input: input}")  # 16 -> 8 (bigger than 5)
    with pytest.raises(ShapeError, match="integer factor"):
        skiptrain.check_model(model)


def test_sequence_length_mismatch_is_an_error():
    model = two_branch("- {id: src, type: linear, out_features: 6}",
                       "- {id: dst, type: self_attention, num_heads: 1, input: input}", input_shape="[5, 4]")
    model["layers"].insert(1, {"type": "transpose", "dims": [0, 1], "id": "t"})
    model["layers"][2]["input"] = "t"
    model["input"] = [5, 5]
    with pytest.raises(ShapeError, match="sequence length"):
        skiptrain.check_model(model)


def test_strict_turns_every_mismatch_into_an_error():
    model = two_branch(conv("src", 8), conv("dst", 16, extra=", input: input"))
    with pytest.raises(ShapeError):
        skiptrain.check_model(model, strict=True)


def test_policy_precedence_skip_over_block_over_model():
    model = {
        "input": [4, 8, 8], "projection": "none",
        "blocks": {"b": {"projection": "conv", "layers": [{"id": "c", "type": "conv2d", "out_channels": 8,
                                                            "kernel_size": 1}],
                         "skips": [{"from": "input", "to": "c"}]}},
        "layers": [{"id": "one", "block": "b"}, {"id": "two", "block": "b", "projection": "pad"},
                   {"id": "three", "type": "conv2d", "out_channels": 16, "kernel_size": 1}],
        "skips": [{"from": "two", "to": "three", "projection": "auto"}],
    }
    plan = skiptrain.check_model(model)
    kinds = {p.id: p.kind for p in plan.projections.values()}
    assert kinds == {"one.c_proj": "conv", "three_proj": "conv_bn"}  # `two` has no mismatch: 8 -> 8


# -- found by tests/test_fuzz.py ---------------------------------------------------------------------

def test_a_mismatch_off_the_channel_or_last_axis_is_a_shape_error():
    """With `axis: 1` the conv projection worked on axis 0 anyway, and the built model failed."""
    model = {"input": [4, 8, 8], "layers": [{"id": "a", "type": "conv2d", "out_channels": 8, "kernel_size": 1}],
             "skips": [{"from": "input", "to": "a", "merge": "concat", "axis": 1}]}
    with pytest.raises(ShapeError, match="not on axis 1"):
        skiptrain.check_model(model)


def test_a_channel_projection_on_four_spatial_axes_is_a_shape_error():
    """There is no Conv4d: planning raised KeyError."""
    model = {"input": [2, 3, 4, 4, 4], "layers": [{"id": "p", "type": "permute", "dims": [1, 0, 2, 3, 4]}],
             "skips": [{"from": "input", "to": "p"}]}
    with pytest.raises(ShapeError, match="1 to 3 spatial axes"):
        skiptrain.check_model(model)
    model["projection"] = "pad"  # zero-padding works on any rank
    run(model)
