"""Multiply-adds next to parameters: closed forms for conv, linear, attention and a projection,
the JSON keys, the totals and the projections' share, and the memo per distinct layer."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from skiptrain import compute
from skiptrain.api import check_model
from skiptrain.report import plan_json

from .conftest import TINY_RESIDUAL_MODEL, invoke

# tiny: stem conv 1->8 3x3 on 8x8; body conv 8->16 3x3 /2 -> 4x4; head 16->4; the skip's
# projection a 1x1 conv 8->16 /2 (+ BN) on the 4x4 grid
STEM, BODY, HEAD, PROJ = 8 * 1 * 9 * 8 * 8, 16 * 8 * 9 * 4 * 4, 16 * 4, 16 * 8 * 4 * 4


def _plan(write_yaml, text: str):
    return check_model(write_yaml(text))


def _macs(plan) -> dict[str, int]:
    return {n["id"]: n["macs"] for n in plan_json(plan)["nodes"]}


@pytest.mark.parametrize("args, in_shape, out_hw, groups", [
    ("out_channels: 16, kernel_size: 3, padding: 1", (3, 32, 32), (32, 32), 1),
    ("out_channels: 16, kernel_size: 3, stride: 2, padding: 1", (3, 32, 32), (16, 16), 1),
    ("out_channels: 32, kernel_size: 5, stride: 2", (8, 21, 17), (9, 7), 1),
    ("out_channels: 24, kernel_size: 3, padding: 1, groups: 24, bias: false", (24, 14, 14), (14, 14), 24),
])
def test_conv_macs_are_the_closed_form(write_yaml, args, in_shape, out_hw, groups):
    plan = _plan(write_yaml, f"""
        model:
          name: c
          input: {list(in_shape)}
          layers:
            - {{id: conv, type: conv2d, {args}}}
        """)
    node = plan.graph.nodes["conv"]
    cout, cin, k = node.meta["shape"][0], in_shape[0], node.meta["args"]["kernel_size"]
    k = k[0] if isinstance(k, tuple) else k
    assert tuple(node.meta["shape"][1:]) == out_hw
    assert _macs(plan)["conv"] == cout * (cin // groups) * k * k * out_hw[0] * out_hw[1]


def test_linear_and_attention_macs(write_yaml):
    plan = _plan(write_yaml, """
        model:
          name: seq
          input: [10, 64]
          layers:
            - {id: fc, type: linear, out_features: 48}
            - {id: act, type: gelu}
            - {id: att, type: self_attention, num_heads: 4}
        """)
    macs = _macs(plan)
    assert macs["fc"] == 10 * 64 * 48  # a [10, 64] sample: one [64, 48] product per token
    assert macs["act"] == 0  # elementwise work is not counted, as in torch's counter
    # q, k, v and out projections (4 d^2 per token), then QK^T and AV (2 L^2 d)
    assert macs["att"] == 4 * 48 * 48 * 10 + 2 * 10 * 10 * 48


def test_projection_macs_totals_and_share(write_yaml):
    plan = _plan(write_yaml, TINY_RESIDUAL_MODEL)
    data = plan_json(plan)
    assert _macs(plan)["stem"] == STEM and _macs(plan)["body"] == BODY and _macs(plan)["head"] == HEAD
    (proj,) = data["projections"]
    assert proj["macs"] == PROJ
    assert data["projection_macs"] == PROJ
    assert data["macs"] == STEM + BODY + HEAD + PROJ
    assert data["projection_macs_share"] == pytest.approx(PROJ / (STEM + BODY + HEAD + PROJ))
    summary = compute.count(plan)
    assert (summary.layer_macs, summary.projection_macs) == (STEM + BODY + HEAD, PROJ)


def test_no_projection_means_no_share(write_yaml):
    plan = _plan(write_yaml, """
        model:
          name: m
          input: [16]
          layers:
            - {id: a, type: linear, out_features: 16}
            - {id: b, type: linear, out_features: 16}
          skips:
            - {from: a, to: b}
        """)
    data = plan_json(plan)
    assert (data["macs"], data["projection_macs"], data["projection_macs_share"]) == (512, 0, 0.0)
    assert data["projections"] == []


def test_validate_json_and_table_report_macs(tiny_residual):
    result = invoke("validate", "--json", tiny_residual)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert {"macs", "projection_macs", "projection_macs_share"} <= set(data)
    assert all("macs" in n for n in data["nodes"]) and all("macs" in p for p in data["projections"])
    total = STEM + BODY + HEAD + PROJ
    assert data["macs"] == total
    result = invoke("validate", tiny_residual)
    assert result.exit_code == 0, result.output
    assert "MACs" in result.output and f"{BODY:,}" in result.output
    share = f"{100 * PROJ / total:.2f}%"
    assert f"multiply-adds per sample: {total:,}" in result.output and share in result.output


def test_counted_once_per_distinct_layer(write_yaml, monkeypatch):
    """A block repeated 20 times costs one counted forward per distinct (type, args, shape)."""
    calls = []
    counted = compute.count_module
    monkeypatch.setattr(compute, "count_module", lambda *a, **k: calls.append(a[1]) or counted(*a, **k))
    monkeypatch.setattr(compute, "_CACHE", {})
    plan = _plan(write_yaml, """
        model:
          name: deep
          input: [37]
          blocks:
            fc:
              layers:
                - {type: linear, out_features: 37}
                - {type: relu}
          layers:
            - {id: body, block: fc, repeat: 20}
        """)
    data = plan_json(plan)
    assert data["macs"] == 20 * 37 * 37
    assert len(calls) == 2  # the linear and the relu, each once


def test_counting_allocates_no_weights(monkeypatch):
    """A 1.6-billion-parameter layer is counted on meta tensors in no time and no memory."""
    import torch

    module = torch.nn.Linear(40_000, 40_000, device="meta")
    assert compute.count_module(module, (3, 40_000)) == 3 * 40_000 * 40_000
    assert all(p.is_meta for p in module.parameters())


def test_macs_text():
    assert [compute.macs_text(n) for n in (12, 950_000, 1_820_000, 4_089_184_256)] == \
        ["12", "950.00 K", "1.82 M", "4.09 G"]


def _torchvision_macs(name: str, size: int = 224) -> int:
    import torch
    import torchvision

    try:
        with torch.device("meta"):
            model = torchvision.models.get_model(name, weights=None)
    except NotImplementedError:  # RegNet's constructor copies a tensor, which meta cannot
        model = torchvision.models.get_model(name, weights=None).to("meta")
    return compute.count_module(model, (3, size, size))


ZOO = sorted(path.stem for path in (Path(__file__).resolve().parents[1] / "configs" / "zoo").glob("*.yaml"))


@pytest.mark.parametrize("path", ["imagenet/resnet18.yaml", "imagenet/resnet50.yaml",
                                  *[f"zoo/{name}.yaml" for name in ZOO]])
def test_a_network_has_the_macs_of_torchvisions(path):
    """The whole count, projections included, is what torch's counter gives torchvision's own module
    (torchvision's documented GFLOPS: ResNet-50 4.09, ViT-B/16 17.56, Swin-T 4.49)."""
    plan = check_model(Path(__file__).resolve().parents[1] / "configs" / path)
    summary = compute.count(plan)
    size = plan.graph.input_shape[-1]
    assert summary.macs == _torchvision_macs(Path(path).stem, size)
    if path == "imagenet/resnet50.yaml":  # the four downsample projections: 1x1 conv + BN
        assert summary.macs == 4_089_184_256 and summary.projection_macs == 359_661_568


def test_a_layer_that_refuses_one_sample_is_counted_on_two(write_yaml):
    """The shape pass runs batches of 2 and 3; a layer that needs more than one sample still gets a count."""
    import torch

    from skiptrain import registry

    class PairLinear(torch.nn.Linear):
        def forward(self, x):
            if x.shape[0] < 2:
                raise ValueError("needs two samples")
            return super().forward(x)

    with registry.LAYERS.scoped():
        registry.register("pair_linear", axis="last")(PairLinear)
        plan = _plan(write_yaml, """
            model:
              name: p
              input: [5, 8]
              layers:
                - {id: fc, type: pair_linear, out_features: 3}
            """)
        assert plan_json(plan)["macs"] == 5 * 8 * 3
