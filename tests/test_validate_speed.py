"""What makes `validate` fast must leave the process as it found it: torch's thread count after the
one-thread CPU checks, the cycle collector after the command."""
from __future__ import annotations

import gc

import pytest
import torch

import skiptrain
from skiptrain.cli import no_cycle_collection
from skiptrain.errors import ShapeError


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield 2
    torch.set_num_threads(before)


def test_cpu_checks_restore_the_thread_count(two_threads):
    plan = skiptrain.check_model({"input": [3, 8, 8], "layers": [{"type": "batchnorm2d"}, {"type": "relu"}]})
    assert plan.output_shape == (3, 8, 8)
    assert torch.get_num_threads() == two_threads


def test_a_failing_cpu_check_restores_the_thread_count_too(two_threads):
    with pytest.raises(ShapeError, match="softmax"):  # found by the CPU kernel only
        skiptrain.check_model({"input": [4], "layers": [{"type": "softmax", "dim": 2}]})
    assert torch.get_num_threads() == two_threads


@pytest.mark.parametrize("enabled", [True, False])
def test_no_cycle_collection_restores_the_collector(enabled):
    was = gc.isenabled()
    (gc.enable if enabled else gc.disable)()
    try:
        with pytest.raises(RuntimeError), no_cycle_collection():
            assert not gc.isenabled()
            raise RuntimeError("a command that fails")
        assert gc.isenabled() == enabled
    finally:
        (gc.enable if was else gc.disable)()
