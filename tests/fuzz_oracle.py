"""The fuzzing oracle of tests/test_fuzz.py: hypothesis profiles, time limits, and `check`.

``check(source)`` validates a config; a refusal must be a ``SkiptrainError`` with a message and a
location, and an accepted plan must build into a module whose forward pass on a batch of 2 gives
the reported shape and dtype, and the values of ``reference_forward`` (the plan interpreted node by
node). ``STATS`` counts the outcomes; tests/test_fuzz.py writes it to ``SKIPTRAIN_FUZZ_STATS``.
"""
from __future__ import annotations

import math
import os
import signal
import threading
import warnings
from collections import Counter
from contextlib import contextmanager

import torch
from hypothesis import HealthCheck, settings

import skiptrain
from skiptrain import registry
from skiptrain.errors import SkiptrainError

_COMMON = dict(deadline=None, database=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                      HealthCheck.filter_too_much, HealthCheck.large_base_example])
settings.register_profile("ci", max_examples=300, derandomize=True, **_COMMON)
settings.register_profile("long", max_examples=30_000, **_COMMON)
PROFILE_NAME = os.environ.get("SKIPTRAIN_FUZZ_PROFILE", "ci")
PROFILE = settings.get_profile(PROFILE_NAME)
PER_TEST = int(os.environ.get("SKIPTRAIN_FUZZ_EXAMPLES") or PROFILE.max_examples)

MAX_PARAMS = 5_000_000  # larger accepted models are checked, not built
MAX_ACTIVATION = 1 << 20  # elements of one sample at any node
HANG_SECONDS = 60
STATS: Counter = Counter()


def fuzz_settings(share: float) -> settings:
    """The profile, with this test's share of the examples."""
    return settings(PROFILE, max_examples=max(1, round(PER_TEST * share)))


# -- the property --------------------------------------------------------------------------------

class Hang(BaseException):
    """Not an Exception: skiptrain's `except Exception` around torch calls must not turn it into a ShapeError."""


@contextmanager
def one_thread():
    """Batch-2 forwards of small models: one thread is faster, and immune to a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextmanager
def time_limit(seconds: int):
    """Fail a config that does not finish (SIGALRM; only possible on the main thread)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        yield
        return

    def expire(signum, frame):
        raise Hang(f"no answer after {seconds} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _example_input(plan) -> torch.Tensor:
    """A batch of 2: seeded normal values, or token ids below every embedding's size."""
    graph = plan.graph
    dtype = getattr(torch, graph.input_dtype)
    shape = (2, *graph.input_shape)
    if dtype.is_floating_point:  # not zeros: the reference comparison needs values that differ
        return torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    embeddings = [n for n in graph.order if "num_embeddings" in n.meta.get("args", {})]
    if embeddings and all(n.inputs == ["input"] for n in embeddings):
        vocab = min([10] + [int(n.meta["args"]["num_embeddings"]) for n in embeddings])
        return torch.randint(0, max(vocab, 1), shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    return torch.zeros(shape, dtype=dtype)  # ids that went through arithmetic: 0 is always valid


_TENSOR_FORWARD = {  # torchvision's own code for each learnable tensor (ViT, ConvNeXt), not skiptrain's
    "ClassToken": lambda t, x: torch.cat([t.expand(x.shape[0], -1, -1), x], dim=1),
    "PositionEmbedding": lambda t, x: x + t,
    "LayerScale": lambda t, x: t * x,
}


def reference_forward(model: torch.nn.Module, plan, x: torch.Tensor) -> torch.Tensor:
    """The plan, interpreted node by node with the model's own modules, every input cloned."""
    from skiptrain.projection import feature_axis

    modules = dict(model.named_modules())
    values = {"input": x}
    for node in plan.graph.order:
        value = values[node.inputs[0]]
        if node.id in modules:
            value = modules[node.id](value.clone())
        elif registry.get(node.type).tensor:  # a learnable tensor at the node's id, applied as torchvision does
            tensor = model.get_parameter(node.id)
            value = _TENSOR_FORWARD[registry.get(node.type).factory.__name__](tensor, value.clone())
        for skip in plan.graph.skips_into(node.id):
            source = values[skip.source]
            proj = plan.projection_for(skip)
            if proj is not None:
                source = modules[proj.id](source.clone())
            if skip.merge == "concat":
                rank = len(node.meta["layer_shape"])
                axis = skip.axis if skip.axis is not None else feature_axis(node.meta["axis"], rank)
                pair = [source, value] if skip.order == "from_first" else [value, source]
                value = torch.cat(pair, dim=axis % rank + 1)
            else:
                value = value + source if skip.merge == "add" else value * source
        values[node.id] = value
    return values[plan.graph.output]


def check(source) -> str:
    """Validate ``source``; if it is accepted, build it and run a forward pass. Returns the outcome."""
    STATS["tried"] += 1
    with warnings.catch_warnings(), time_limit(HANG_SECONDS), one_thread():
        warnings.simplefilter("ignore")
        try:
            plan = skiptrain.check_config(source)  # what `skiptrain validate` checks
        except SkiptrainError as exc:
            STATS["rejected"] += 1
            assert str(exc) and exc.format(), "an error without a message"
            assert exc.location is not None, f"an error without a location: {exc}"
            return "rejected"
        STATS["accepted"] += 1
        assert isinstance(plan.output_shape, tuple) and all(type(d) is int and d >= 1 for d in plan.output_shape)
        largest = max([math.prod(plan.graph.input_shape)] +
                      [math.prod(n.meta["shape"]) for n in plan.graph.order])
        if plan.params > MAX_PARAMS or largest > MAX_ACTIVATION:
            STATS["too_large_to_build"] += 1
            return "accepted"
        model = skiptrain.build_model(source).eval()
        x = _example_input(plan)
        with torch.no_grad():
            out = model(x)
        assert isinstance(out, torch.Tensor), type(out)
        assert tuple(out.shape) == (2, *plan.output_shape), \
            f"validate reported {list(plan.output_shape)}, the forward pass gave {list(out.shape[1:])}"
        assert str(out.dtype).removeprefix("torch.") == plan.output_dtype, \
            f"validate reported {plan.output_dtype}, the forward pass gave {out.dtype}"
        with torch.no_grad():
            expected = reference_forward(model, plan, x)
        assert torch.allclose(out, expected, rtol=1e-4, atol=1e-5, equal_nan=True), \
            "the generated forward computes other values than the graph describes"
        STATS["built"] += 1
        _count_features(plan)
        return "built"


NEW_TYPES = {"select", "slice", "chunk", "split", "roll", "window_partition", "window_reverse", "class_token",
             "position_embedding", "layer_scale", "stochastic_depth", "squeeze_excitation", "conv2d_norm_activation",
             "mlp", "window_attention", "channelshuffle", "drop_block2d", "frozen_batch_norm2d"}


def _count_features(plan) -> None:
    """How many built models exercised the newer parts of the language (the stats line shows them)."""
    skips = plan.graph.skips
    types = {registry.get(n.type).name for n in plan.graph.order}
    STATS["built_with_broadcast"] += any(s.meta.get("broadcast") for s in skips)
    STATS["built_with_from_first"] += any(s.order == "from_first" for s in skips)
    STATS["built_with_named_projection"] += any(s.name and plan.projection_for(s) is not None for s in skips)
    STATS["built_with_new_layer_types"] += bool(types & NEW_TYPES)
    STATS["built_with_learnable_tensor"] += any(registry.get(t).tensor for t in types)
