"""The contract's examples and the reference configs build and run a forward pass."""
from __future__ import annotations

import pytest
import torch

import skiptrain

from .conftest import CONFIGS, EXAMPLES, needs_examples


def forward(path):
    plan = skiptrain.check_model(path)
    model = skiptrain.build_model(path).eval()
    dtype = getattr(torch, plan.graph.input_dtype)
    x = torch.zeros((2, *plan.graph.input_shape), dtype=dtype)
    with torch.no_grad():
        out = model(x)
    assert tuple(out.shape) == (2, *plan.output_shape)
    assert sum(p.numel() for p in model.parameters()) == plan.params


@needs_examples()
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_shared_examples_build_and_run(example):
    forward(example)


@pytest.mark.parametrize("config", [c for c in CONFIGS if "imagenet" not in c.parts],
                         ids=lambda p: str(p.relative_to(p.parents[1])))
def test_reference_configs_build_and_run(config):
    forward(config)
