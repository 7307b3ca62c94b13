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


# -- the projection-kind registry (issue 13) ---------------------------------------------------------

from skiptrain.projection_kinds import CHANGES, KINDS, NONE, Mismatch, policies  # noqa: E402
from skiptrain.spec import POLICIES  # noqa: E402

# One model per kind of mismatch: (source layers, target layers, input shape).
MISMATCHES = {
    "features": ("- {id: src, type: linear, out_features: 6}",
                 "- {id: dst, type: linear, out_features: 10, input: input}", "[5, 4]"),
    "channels": (conv("src", 8), conv("dst", 16, extra=", input: input"), "[8, 16, 16]"),
    "down": (conv("src", 8), conv("dst", 16, s=2, extra=", input: input"), "[8, 16, 16]"),
    "up": (conv("src", 8, s=2), conv("dst", 4, extra=", input: input"), "[8, 16, 16]"),
}
DESCRIPTIONS = {"conv_bn": "1x1 conv + BN, /2", "conv": "1x1 conv, /2", "pad": "zero-pad (no params), /2",
                "pool_conv_bn": "avg-pool + 1x1 conv + BN, /2", "upsample_conv_bn": "upsample + 1x1 conv + BN, x2",
                "upsample_conv": "upsample + 1x1 conv, x2", "linear": "linear"}


def test_every_change_has_a_model_here():
    assert set(MISMATCHES) == set(CHANGES)


@pytest.mark.parametrize("name", KINDS.names())
def test_every_kind_builds_runs_and_counts_its_parameters(name):
    kind = KINDS.get(name)
    assert kind.title and kind.picks and set(kind.picks) <= set(CHANGES)
    for change, chosen_by in kind.picks.items():
        for policy in chosen_by:
            plan, net, _ = run(two_branch(*MISMATCHES[change][:2], policy=policy, input_shape=MISMATCHES[change][2]))
            (proj,) = plan.projections.values()
            assert proj.kind == name and proj.rule is kind
            module = net.get_submodule(proj.id)
            assert proj.params == sum(p.numel() for p in module.parameters())
            assert tuple(module(torch.randn(3, *proj.in_shape)).shape[1:]) == proj.out_shape
            assert proj.description and proj.description.startswith(kind.title)
            assert isinstance(proj.args, object) and not isinstance(proj.args, dict)  # typed, not a loose dict


@pytest.mark.parametrize("name", KINDS.names())
def test_descriptions_stay_as_validate_shows_them(name):
    kind = KINDS.get(name)
    change = next(c for c in ("up", "down", "features") if c in kind.picks)  # a spatial factor where there is one
    policy = kind.picks[change][0]
    plan = skiptrain.check_model(two_branch(*MISMATCHES[change][:2], policy=policy, input_shape=MISMATCHES[change][2]))
    (proj,) = plan.projections.values()
    assert proj.description == DESCRIPTIONS[name]


@pytest.mark.parametrize("change", sorted(CHANGES))
@pytest.mark.parametrize("policy", POLICIES)
def test_a_policy_picks_at_most_one_kind_for_each_change(policy, change):
    mismatch = Mismatch(change, (4, 8, 8), (8, 8, 8), 0)
    assert len([n for n in KINDS if KINDS.get(n).applies(policy, mismatch)]) <= (0 if policy == NONE else 1)


def test_the_policies_are_the_ones_the_kinds_answer_to():
    assert POLICIES == policies() and POLICIES[0] == "auto" and POLICIES[-1] == NONE
    assert set(POLICIES) == {"auto", "conv", "pad", "pool_conv", "linear", "none"}  # what users write


@pytest.mark.parametrize("policy, change, message", [
    ("linear", "channels", "the `linear` policy has no projection for channels"),
    ("pad", "up", "the `pad` policy has no projection for a larger feature map"),
])
def test_a_policy_with_no_kind_for_the_mismatch_names_the_ones_that_have(policy, change, message):
    with pytest.raises(ShapeError) as info:
        skiptrain.check_model(two_branch(*MISMATCHES[change][:2], policy=policy, input_shape=MISMATCHES[change][2]))
    assert message in info.value.message and "`auto`" in info.value.hint and f"`{policy}`" not in info.value.hint


@pytest.mark.parametrize("change, hint", [("features", "a linear layer"), ("channels", "(1x1 conv + BN)"),
                                          ("down", "strided 1x1 conv + BN")])
def test_pad_cannot_shrink(change, hint):
    source, target, shape = MISMATCHES[change]
    with pytest.raises(ShapeError) as info:  # swapped widths: the source is wider than the target
        skiptrain.check_model(two_branch(source.replace("6", "12").replace(" 8,", " 32,"), target,
                                         policy="pad", input_shape=shape))
    assert "`pad` cannot" in info.value.message and hint in info.value.hint


def test_state_dict_keys_of_each_kind_stay():
    keys = {}
    for policy, change in (("auto", "down"), ("conv", "down"), ("pool_conv", "down"), ("auto", "up"),
                           ("auto", "features")):
        _, net, _ = run(two_branch(*MISMATCHES[change][:2], policy=policy, input_shape=MISMATCHES[change][2]))
        keys[policy, change] = sorted(k for k in net.state_dict() if k.startswith("dst_proj"))
    assert keys["auto", "down"] == ["dst_proj.0.weight", "dst_proj.1.bias", "dst_proj.1.num_batches_tracked",
                                    "dst_proj.1.running_mean", "dst_proj.1.running_var", "dst_proj.1.weight"]
    assert keys["conv", "down"] == ["dst_proj.0.bias", "dst_proj.0.weight"]
    for pooled_or_upsampled in (keys["pool_conv", "down"], keys["auto", "up"]):  # index 0 holds no parameters
        assert pooled_or_upsampled[0] == "dst_proj.1.weight" and "dst_proj.2.running_mean" in pooled_or_upsampled
    assert keys["auto", "features"] == ["dst_proj.weight"]


# -- broadcasting merges (issue 14) -----------------------------------------------------------------------------

def se_gate(gate_channels: int, policy: str, merge: str = "mul") -> dict:
    """A [gate_channels, 1, 1] gate (pooled, 1x1 conv) merged into the [8, 16, 16] input by a skip."""
    return two_branch("- {id: pool, type: adaptiveavgpool2d, output_size: 1}\n"
                      f"  - {{id: src, type: conv2d, out_channels: {gate_channels}, kernel_size: 1}}",
                      "- {id: dst, type: identity, input: input}", merge=merge, policy=policy)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("merge", ["add", "mul"])
def test_a_broadcast_needs_no_projection_under_any_policy(policy, merge):
    plan, net, _ = run(se_gate(8, policy, merge))
    assert not plan.projections and plan.output_shape == (8, 16, 16)
    assert not any("_proj" in key for key in net.state_dict())


@pytest.mark.parametrize("policy", [p for p in POLICIES if p != "auto"])
def test_a_near_broadcast_that_no_projection_fits_is_told_how_to_broadcast(policy):
    """A [4, 1, 1] gate into [8, 16, 16]: the policy's projection (if any) would upsample; the hint is the width."""
    model = se_gate(4, policy)
    if policy in ("conv", "pool_conv"):  # these have a kind for a larger map: built, with a warning
        plan, _, _ = run(model)
        assert plan.projections and any("broadcasts on some axes" in w for w in plan.warnings)
        return
    with pytest.raises(ShapeError) as info:
        skiptrain.check_model(model)
    assert "broadcasts a side of size 1" in info.value.message and "axis 0: 4 vs 8" in info.value.message
    assert "projection:" not in info.value.hint and "`src`" in info.value.hint


@pytest.mark.parametrize("source, target, reshaped", [
    ("- {id: pool, type: adaptiveavgpool2d, output_size: 1}\n  - {id: src, type: flatten}", "[8, 16, 16]", "[8, 1, 1]"),
    ("- {id: src, type: mean, dim: 0}", "[5, 8]", "[1, 8]"),
])
def test_a_rank_mismatch_of_a_broadcasting_merge_names_the_reshape_that_broadcasts(source, target, reshaped):
    """A [C] gate into [C, H, W]: torch would line C up with W; the hint gives the [C, 1, 1] that broadcasts."""
    model = two_branch(source, "- {id: dst, type: identity, input: input}", merge="mul", input_shape=target)
    with pytest.raises(ShapeError) as info:
        skiptrain.check_model(model)
    assert "different ranks" in info.value.message
    assert f"reshape `src` to {reshaped}" in info.value.hint and f"shape: {reshaped}" in info.value.hint
