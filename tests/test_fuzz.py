"""Fuzzing the model language (issue 6, item 7): random and mutated configs, thousands of them.

Three sources of configs:

* the example configs (``../shared/examples``, ``configs/``), mutated a few times each: a key deleted
  at any depth, a value replaced by one of another type (None, bool, huge and negative ints,
  floats, unicode text, lists, mappings), a random input shape or dtype, random skips between
  existing ids or random strings, new merges, projections and axes, layers duplicated or
  dropped, repeats and multipliers changed, and ``${...}`` expressions, nasty ones included;
* small graphs generated from scratch from a curated list of layer types, with random
  arguments, a random block with ``${...}`` arguments, and random skips;
* YAML text: an example file edited as text (lines dropped or doubled, YAML oddities such as
  tags, anchors, huge numbers and deep nesting spliced in), loaded from disk and run through
  ``skiptrain validate`` as well.

The property: checking a config either raises skiptrain's own error (a ``SkiptrainError``) or
returns a plan, and every plan builds into a module whose forward pass on a batch of 2 returns
exactly the shape (and dtype) the plan reported, and the values that a plain node-by-node
interpretation of the plan computes with the same modules (so the generated forward's in-place
adds and early frees are checked too). Any other exception, or a config that takes longer than
``HANG_SECONDS``, fails the test.

Profiles, chosen by the environment variable ``SKIPTRAIN_FUZZ_PROFILE``:

* ``ci`` (the default): about 300 examples in all, derandomized, well under a minute;
* ``long``: thousands of random examples; ``python benchmarks/fuzz.py`` runs it and records the
  figures in ``docs/reliability.md``.

``SKIPTRAIN_FUZZ_EXAMPLES`` overrides the number of examples per test, and
``SKIPTRAIN_FUZZ_STATS`` names a JSON file that receives the counts when the module finishes.
"""
from __future__ import annotations

import copy
import json
import math
import os
import shutil
import signal
import tempfile
import threading
import warnings
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, note, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import torch  # noqa: E402

import skiptrain  # noqa: E402
from skiptrain.config import load_config, plain  # noqa: E402
from skiptrain.errors import SkiptrainError  # noqa: E402

from .conftest import CONFIGS, EXAMPLES, invoke  # noqa: E402

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


@pytest.fixture(scope="module", autouse=True)
def _record_stats():
    yield
    shutil.rmtree(_TMP, ignore_errors=True)
    target = os.environ.get("SKIPTRAIN_FUZZ_STATS")
    if target:
        Path(target).write_text(json.dumps({"profile": PROFILE_NAME, **STATS}, indent=2, sort_keys=True))


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


def reference_forward(model: torch.nn.Module, plan, x: torch.Tensor) -> torch.Tensor:
    """The plan, interpreted node by node with the model's own modules, every input cloned."""
    from skiptrain.projection import feature_axis

    modules = dict(model.named_modules())
    values = {"input": x}
    for node in plan.graph.order:
        value = values[node.inputs[0]]
        if node.id in modules:
            value = modules[node.id](value.clone())
        for skip in plan.graph.skips_into(node.id):
            source = values[skip.source]
            proj = plan.projection_for(skip)
            if proj is not None:
                source = modules[proj.id](source.clone())
            if skip.merge == "concat":
                rank = len(node.meta["layer_shape"])
                axis = skip.axis if skip.axis is not None else feature_axis(node.meta["axis"], rank)
                value = torch.cat([value, source], dim=axis % rank + 1)
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
        return "built"


# -- the configs to mutate -----------------------------------------------------------------------

def _load_bases() -> list[dict]:
    bases = []
    for path in [*EXAMPLES, *CONFIGS]:
        try:
            bases.append(plain(load_config(path).model))
        except SkiptrainError:
            continue
    return bases


BASES = _load_bases()
MERGES = ["add", "concat", "mul"]
POLICIES = ["auto", "conv", "pad", "pool_conv", "linear", "none"]
DTYPES = ["float32", "float64", "float16", "bfloat16", "int64", "int32"]
LAYER_TYPES = ["conv1d", "conv2d", "Conv2d", "linear", "relu", "gelu", "batchnorm1d", "batchnorm2d", "layernorm",
               "groupnorm", "maxpool2d", "avgpool2d", "adaptive_avgpool2d", "global_avgpool", "flatten",
               "self_attention", "dropout", "add", "concat", "mul", "mean", "permute", "transpose", "reshape",
               "identity", "upsample", "embedding", "conv_transpose2d", "softmax", "transformer_encoder_layer"]
ARG_NAMES = ["out_channels", "out_features", "kernel_size", "stride", "padding", "dilation", "groups", "bias",
             "p", "num_heads", "dim", "dims", "shape", "start_dim", "end_dim", "axis", "input", "id", "scale",
             "output_size", "scale_factor", "eps", "momentum", "affine", "num_groups", "in_channels",
             "in_features", "normalized_shape", "padding_mode", "ceil_mode", "keepdim", "inplace", "type",
             "block", "repeat", "args", "first_args", "projection", "merge", "from", "to", "🦜", ""]
HUGE = [0, -1, -(2 ** 31), 2 ** 31, 2 ** 62, 2 ** 63, 2 ** 64, 10 ** 30, -(10 ** 30), 10 ** 400]
NAMES = ["", " ", "input", "input.x", "a.b", ".", "..", "stem", "stage1.0", "stage1.9.bn2", "head", "bn",
         "relu_1", "conv2d_1", "🔥", "ñandú", "日本", "\x00", "a" * 300, "${channels}", "None", "null"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 70), st.sampled_from(HUGE),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=10),
    st.sampled_from(NAMES + LAYER_TYPES + MERGES + POLICIES + DTYPES),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(ARG_NAMES) | st.text(max_size=6),
                                                                inner, max_size=4),
    max_leaves=8)
sizes = st.integers(1, 64)
shapes = st.one_of(
    st.lists(sizes, min_size=1, max_size=4),
    sizes,
    st.lists(st.sampled_from([0, -1, 2 ** 31, 2 ** 40, 1.5, "8", None, True]), min_size=1, max_size=6),
)
_ATOMS = ["0", "1", "2", "3", "16", "-1", "channels", "stride", "c", "planes", "dim", "heads", "hidden", "x",
          "9" * 25, "2 ** 8", "1 / 2", "1.5", "'a'", "None", "True", "channels.real", "c[0]", "f(1)"]
_OPS = [" + ", " - ", " * ", " // ", " / ", " ** ", " % ", " ", ""]
NASTY = [
    "${}", "${", "}", "$${c}", "${${c}}", "${c", "${c}}", "x${c}y${stride}z", "${c}${c}", "${ channels }",
    "${__import__('os').system('true')}", "${().__class__.__mro__}", "${open('/etc/passwd')}", "${lambda: 1}",
    "${c if c else 1}", "${[1, 2]}", "${'a' * 10}", "${1\x00}", "${\n1\n}", "${𝔠}", "${ĉhannels}", "${1_000}",
    "${0x10}", "${True}", "${None}", "${-channels}", "${+-+-1}", "${channels // 0}", "${2 * 2 * 4611686018427387904}",
    "${" + "(" * 150 + "1" + ")" * 150 + "}", "${" + "(" * 300 + "1" + ")" * 300 + "}",
    "${" + "-" * 3000 + "1}", "${" + " + ".join(["1"] * 3000) + "}", "${" + "9" * 5000 + "}",
    "${" + "-" * 100_000 + "1}",
]


@st.composite
def expressions(draw):
    if draw(st.integers(0, 3)) == 0:
        return draw(st.sampled_from(NASTY))
    tokens = [draw(st.sampled_from(_ATOMS))]
    for _ in range(draw(st.integers(0, 3))):
        tokens += [draw(st.sampled_from(_OPS)), draw(st.sampled_from(_ATOMS))]
    text = "".join(tokens)
    if draw(st.booleans()):
        text = f"({text})"
    return "${" + text + "}" + draw(st.sampled_from(["", "", "", "px", "${c}"]))


def slots(value, out=None) -> list:
    """(container, key) for every mapping entry and list item, at any depth."""
    out = [] if out is None else out
    if isinstance(value, dict):
        for key in list(value):
            out.append((value, key))
            slots(value[key], out)
    elif isinstance(value, list):
        for i in range(len(value)):
            out.append((value, i))
            slots(value[i], out)
    return out


def layer_lists(model: dict) -> list[list]:
    lists = [model["layers"]] if isinstance(model.get("layers"), list) else []
    blocks = model.get("blocks")
    if isinstance(blocks, dict):
        lists += [b["layers"] for b in blocks.values() if isinstance(b, dict) and isinstance(b.get("layers"), list)]
    return [lst for lst in lists if lst]


def layer_entries(model: dict) -> list[dict]:
    return [entry for lst in layer_lists(model) for entry in lst if isinstance(entry, dict)]


def known_ids(model: dict) -> list[str]:
    """Ids written in the config, with block paths a skip could name (`stage1.0.bn2`)."""
    ids = ["input"]
    for entry in layer_entries(model):
        if isinstance(entry.get("id"), str):
            ids.append(entry["id"])
    for entry in model["layers"] if isinstance(model.get("layers"), list) else []:
        if isinstance(entry, dict) and isinstance(entry.get("id"), str) and "block" in entry:
            ids += [f"{entry['id']}.0", f"{entry['id']}.0.bn2", f"{entry['id']}.1.conv1", f"{entry['id']}.bn"]
    return ids


def skip_lists(model: dict) -> list[list]:
    lists = [model["skips"]] if isinstance(model.get("skips"), list) else []
    blocks = model.get("blocks")
    if isinstance(blocks, dict):
        lists += [b["skips"] for b in blocks.values() if isinstance(b, dict) and isinstance(b.get("skips"), list)]
    return lists


def _pick(draw, items):
    return items[draw(st.integers(0, len(items) - 1))]


def m_delete(draw, model):
    found = slots(model)
    if found:
        container, key = _pick(draw, found)
        del container[key]


def m_replace(draw, model):
    found = slots(model)
    if found:
        container, key = _pick(draw, found)
        container[key] = draw(values)


def m_expression(draw, model):
    found = [(c, k) for c, k in slots(model) if not isinstance(c[k], (dict, list))]
    if found:
        container, key = _pick(draw, found)
        container[key] = draw(expressions())


def m_input(draw, model):
    model["input"] = draw(shapes)


def m_dtype(draw, model):
    model["input_dtype"] = draw(st.sampled_from(DTYPES) | scalars)


def m_add_skip(draw, model):
    ids = known_ids(model)
    name = st.sampled_from(ids) | st.sampled_from(NAMES) | st.text(max_size=8)
    skip = {"from": draw(name), "to": draw(name)}
    for key, strategy in (("merge", st.sampled_from(MERGES) | scalars), ("projection", st.sampled_from(POLICIES)),
                          ("axis", st.integers(-4, 4) | scalars)):
        if draw(st.integers(0, 2)) == 0:
            skip[key] = draw(strategy)
    lists = skip_lists(model)
    if lists and draw(st.booleans()):
        _pick(draw, lists).append(skip)
    else:
        if not isinstance(model.get("skips"), list):
            model["skips"] = []
        model["skips"].append(skip)


def m_skip_field(draw, model):
    targets = [s for lst in skip_lists(model) for s in lst if isinstance(s, dict)]
    targets += [e for e in layer_entries(model) if e.get("type") in MERGES or "block" in e]
    targets.append(model)
    target = _pick(draw, targets)
    key = draw(st.sampled_from(["merge", "projection", "axis", "from", "to"]))
    target[key] = draw(st.sampled_from(MERGES + POLICIES) | st.integers(-4, 4) | st.sampled_from(known_ids(model))
                       | scalars)


def m_duplicate_layer(draw, model):
    lists = layer_lists(model)
    if lists:
        lst = _pick(draw, lists)
        entry = copy.deepcopy(_pick(draw, lst))
        if isinstance(entry, dict) and draw(st.booleans()):
            entry.pop("id", None)
        lst.insert(draw(st.integers(0, len(lst))), entry)


def m_drop_layer(draw, model):
    lists = layer_lists(model)
    if lists:
        lst = _pick(draw, lists)
        lst.pop(draw(st.integers(0, len(lst) - 1)))


def m_layer_type(draw, model):
    entries = layer_entries(model)
    if entries:
        _pick(draw, entries)["type"] = draw(st.sampled_from(LAYER_TYPES) | st.sampled_from(NAMES) | scalars)


def m_layer_arg(draw, model):
    entries = layer_entries(model)
    if entries:
        key = draw(st.sampled_from(ARG_NAMES))
        _pick(draw, entries)[key] = draw(st.integers(-2, 8) | st.lists(st.integers(-1, 4), max_size=4)
                                         | st.sampled_from(known_ids(model)) | values)


def m_input_ref(draw, model):
    entries = layer_entries(model)
    if entries:
        ids = st.sampled_from(known_ids(model))
        _pick(draw, entries)["input"] = draw(ids | st.lists(ids, max_size=3))


def m_repeat(draw, model):
    entries = [e for e in layer_entries(model) if "block" in e] or layer_entries(model)
    if entries:
        _pick(draw, entries)["repeat"] = draw(st.integers(-1, 6) | st.sampled_from(
            [0, 100_001, 10 ** 30, "3", 2.0, True, None, "${2 * 2}", "${c}", [2]]))


def m_multiplier(draw, model):
    key = draw(st.sampled_from(["width_multiplier", "depth_multiplier"]))
    model[key] = draw(st.floats(0.05, 3.0) | st.sampled_from([0, -1, 1000, 1001, float("nan"), float("inf"),
                                                              "2", True, None]))


def m_output(draw, model):
    model["output"] = draw(st.sampled_from(known_ids(model)) | st.sampled_from(NAMES) | scalars)


def m_block(draw, model):
    """Change a block definition's arguments, projection or output."""
    blocks = model.get("blocks")
    if isinstance(blocks, dict) and blocks:
        block = blocks[_pick(draw, list(blocks))]
        if isinstance(block, dict):
            key = draw(st.sampled_from(["args", "projection", "output", "skips", "layers"]))
            block[key] = draw(st.sampled_from(POLICIES) | st.sampled_from(known_ids(model)) | values)


MUTATIONS = [m_delete, m_replace, m_expression, m_input, m_dtype, m_add_skip, m_skip_field, m_duplicate_layer,
             m_drop_layer, m_layer_type, m_layer_arg, m_input_ref, m_repeat, m_multiplier, m_output, m_block]


@st.composite
def mutated_configs(draw):
    model = draw(scratch_configs()) if draw(st.integers(0, 4)) == 4 else copy.deepcopy(_pick(draw, BASES))
    for _ in range(draw(st.integers(1, 4))):
        mutation = draw(st.sampled_from(MUTATIONS))
        note(mutation.__name__)
        mutation(draw, model)
    return model


# -- graphs from scratch ---------------------------------------------------------------------------

small = st.integers(1, 12)
kernel = st.integers(1, 4)


def _layer(kind: str, required: dict, optional: dict):
    return st.fixed_dictionaries({"type": st.just(kind), **required}, optional=optional)


def _conv(n: int):
    sizes = kernel | st.lists(kernel, min_size=n, max_size=n)
    return _layer(f"conv{n}d", {"out_channels": small, "kernel_size": sizes},
                  {"stride": st.integers(1, 3), "padding": st.integers(0, 2) | st.sampled_from(["same", "valid"]),
                   "dilation": st.integers(1, 2), "groups": st.integers(1, 2), "bias": st.booleans(),
                   "padding_mode": st.sampled_from(["zeros", "reflect", "circular", "replicate"])})


LAYERS = {
    "conv1d": _conv(1),
    "conv2d": _conv(2),
    "linear": _layer("linear", {"out_features": st.integers(1, 24)}, {"bias": st.booleans()}),
    "relu": _layer("relu", {}, {"inplace": st.booleans()}),
    "gelu": _layer("gelu", {}, {"approximate": st.sampled_from(["none", "tanh"])}),
    "batchnorm1d": _layer("batchnorm1d", {}, {"affine": st.booleans(), "track_running_stats": st.booleans()}),
    "batchnorm2d": _layer("batchnorm2d", {}, {"momentum": st.floats(0, 1), "eps": st.floats(1e-6, 1e-2)}),
    "layernorm": _layer("layernorm", {}, {"elementwise_affine": st.booleans(), "bias": st.booleans()}),
    "maxpool2d": _layer("maxpool2d", {"kernel_size": kernel},
                        {"stride": st.integers(1, 3), "padding": st.integers(0, 1), "ceil_mode": st.booleans()}),
    "avgpool2d": _layer("avgpool2d", {"kernel_size": kernel}, {"stride": st.integers(1, 2)}),
    "adaptive_avgpool2d": _layer("adaptive_avgpool2d", {"output_size": st.integers(1, 4)}, {}),
    "global_avgpool": _layer("global_avgpool", {}, {}),
    "flatten": _layer("flatten", {}, {"start_dim": st.integers(-2, 3), "end_dim": st.integers(-2, 3)}),
    "self_attention": _layer("self_attention", {}, {"num_heads": st.integers(1, 4), "bias": st.booleans()}),
    "dropout": _layer("dropout", {}, {"p": st.floats(0, 1)}),
    "identity": _layer("identity", {}, {}),
    "mean": _layer("mean", {"dim": st.integers(-3, 3) | st.lists(st.integers(-2, 2), min_size=1, max_size=2)},
                   {"keepdim": st.booleans()}),
    "transpose": _layer("transpose", {"dims": st.lists(st.integers(-3, 3), min_size=2, max_size=2)}, {}),
    "permute": _layer("permute", {"dims": st.permutations([0, 1, 2])}, {}),
    "reshape": _layer("reshape", {"shape": st.lists(st.integers(-1, 16), min_size=1, max_size=3)}, {}),
    "upsample": _layer("upsample", {"scale_factor": st.integers(1, 2)},
                       {"mode": st.sampled_from(["nearest", "linear"])}),
    "embedding": _layer("embedding", {"num_embeddings": st.integers(1, 12), "embedding_dim": st.integers(1, 12)}, {}),
    "conv3d": _conv(3),
    "conv_transpose2d": _layer("conv_transpose2d", {"out_channels": small, "kernel_size": kernel},
                               {"stride": st.integers(1, 2), "output_padding": st.integers(0, 1)}),
    "groupnorm": _layer("groupnorm", {"num_groups": st.integers(1, 3)}, {"affine": st.booleans()}),
    "instancenorm1d": _layer("instancenorm1d", {}, {"affine": st.booleans()}),
    "batchnorm3d": _layer("batchnorm3d", {}, {}),
    "maxpool1d": _layer("maxpool1d", {"kernel_size": kernel}, {"stride": st.integers(1, 2)}),
    "avgpool1d": _layer("avgpool1d", {"kernel_size": kernel}, {"ceil_mode": st.booleans()}),
    "adaptive_maxpool1d": _layer("adaptive_maxpool1d", {"output_size": st.integers(1, 4)}, {}),
    "softmax": _layer("softmax", {}, {"dim": st.integers(-2, 2)}),
    "leakyrelu": _layer("leakyrelu", {}, {"negative_slope": st.floats(0, 1), "inplace": st.booleans()}),
    "hardtanh": _layer("hardtanh", {}, {"inplace": st.booleans()}),
    "prelu": _layer("prelu", {}, {}),
    "silu": _layer("silu", {}, {"inplace": st.booleans()}),
    "transformer_encoder_layer": _layer("transformer_encoder_layer", {"nhead": st.integers(1, 2)},
                                        {"dim_feedforward": st.integers(1, 16), "dropout": st.just(0.0),
                                         "norm_first": st.booleans()}),
    "pixel_shuffle": _layer("pixelshuffle", {"upscale_factor": st.integers(1, 2)}, {}),
    "unflatten": _layer("unflatten", {"dim": st.integers(-1, 2), "unflattened_size": st.lists(
        st.integers(-1, 4), min_size=1, max_size=3)}, {}),
}
# what usually fits a sample of each rank (the rest is drawn now and then, to be refused)
BY_RANK = {
    1: ["linear", "relu", "gelu", "dropout", "layernorm", "batchnorm1d", "identity", "reshape", "softmax", "prelu",
        "leakyrelu", "silu"],
    2: ["conv1d", "linear", "relu", "batchnorm1d", "layernorm", "self_attention", "transpose", "mean", "flatten",
        "global_avgpool", "dropout", "instancenorm1d", "maxpool1d", "avgpool1d", "adaptive_maxpool1d",
        "transformer_encoder_layer", "hardtanh", "groupnorm"],
    3: ["conv2d", "batchnorm2d", "relu", "maxpool2d", "avgpool2d", "adaptive_avgpool2d", "global_avgpool", "flatten",
        "upsample", "permute", "gelu", "conv_transpose2d", "groupnorm", "pixel_shuffle", "leakyrelu"],
    4: ["flatten", "relu", "mean", "reshape", "identity", "conv3d", "batchnorm3d", "global_avgpool"],
}
RANK_AFTER = {"flatten": 1, "global_avgpool": 1, "mean": None, "reshape": None, "unflatten": None,
              "embedding": "+1"}


@st.composite
def scratch_configs(draw):
    rank = draw(st.integers(1, 4))
    dtype = draw(st.sampled_from(["float32"] * 8 + ["int64", "int32", "float64", "float16"]))
    model = {"input": draw(st.lists(st.integers(1, 12), min_size=rank, max_size=rank))}
    if dtype != "float32" or draw(st.integers(0, 9)) == 0:
        model["input_dtype"] = dtype
    layers, ids = [], ["input"]
    if dtype.startswith("int") and draw(st.integers(0, 3)) < 3:
        layers.append(draw(LAYERS["embedding"]) | {"id": "emb"})
        ids.append("emb")
        rank += 1
    for i in range(draw(st.integers(1, 7))):
        if len(ids) > 2 and draw(st.integers(0, 6)) == 0:  # a merge layer
            kind = draw(st.sampled_from(MERGES))
            layer = {"type": kind, "input": draw(st.lists(st.sampled_from(ids), min_size=2, max_size=3))}
            if draw(st.integers(0, 3)) == 3:
                layer["axis"] = draw(st.integers(-3, 3))
        else:
            fitting = BY_RANK.get(rank, BY_RANK[4])
            kind = draw(st.sampled_from(sorted(LAYERS) if draw(st.integers(0, 4)) == 4 else fitting))
            layer = dict(draw(LAYERS[kind]))
            if draw(st.integers(0, 9)) == 9:
                layer["input"] = draw(st.sampled_from(ids))
            after = RANK_AFTER.get(kind, rank)
            rank = rank + 1 if after == "+1" else (after or draw(st.integers(1, 3)))
        if draw(st.integers(0, 3)) < 3:
            layer["id"] = f"n{i}"
            ids.append(layer["id"])
        layers.append(layer)
    if draw(st.integers(0, 3)) == 0:  # a block with ${...} arguments, repeated, with a skip
        channels = draw(st.integers(1, 8))
        first = draw(st.sampled_from(["linear", "conv1d", "conv2d"]))
        block = {
            "args": {"c": channels, "k": 1},
            "layers": [{"id": "a", "type": first, **({"out_features": "${c}"} if first == "linear" else
                                                    {"out_channels": "${c * 2}", "kernel_size": "${k}"})},
                       {"id": "b", "type": draw(st.sampled_from(["relu", "batchnorm1d", "batchnorm2d", "layernorm"]))}],
            "skips": [{"from": "input", "to": draw(st.sampled_from(["a", "b"])),
                       "merge": draw(st.sampled_from(MERGES))}],
        }
        if draw(st.integers(0, 3)) == 3:
            block["output"] = "a"
        if draw(st.integers(0, 3)) == 3:
            block["projection"] = draw(st.sampled_from(POLICIES))
        model["blocks"] = {"blk": block}
        name = "blk"
        if draw(st.integers(0, 3)) == 3:  # a block that repeats the first one, with a skip into its copies
            model["blocks"]["outer"] = {
                "args": {"c": 2}, "layers": [{"id": "inner", "block": "blk", "args": {"c": "${c * 2}"},
                                              "repeat": draw(st.integers(1, 2))}, {"type": "relu"}],
                "skips": [{"from": "input", "to": draw(st.sampled_from(["inner.0.b", "inner.0", "inner"]))}]}
            name = "outer"
        instance = {"block": name, "args": {"c": draw(st.integers(1, 8) | st.just("${2 + 2}"))}}
        if draw(st.booleans()):
            instance["repeat"] = draw(st.integers(1, 3))
            if draw(st.integers(0, 3)) == 3:
                instance["first_args"] = {"c": draw(st.integers(1, 8))}
        if draw(st.booleans()):
            instance["id"] = "blk0"
            ids.append("blk0")
            if name == "blk":
                ids.append(draw(st.sampled_from(["blk0.a", "blk0.0.b", "blk0.0"])))
        layers.insert(draw(st.integers(0, len(layers))), instance)
    model["layers"] = layers
    skips = []
    for _ in range(draw(st.integers(0, 3)) if len(ids) > 1 else 0):
        if draw(st.integers(0, 5)) < 5:  # mostly forward, as a user would write them
            later = draw(st.integers(1, len(ids) - 1))
            skip = {"from": ids[draw(st.integers(0, later - 1))], "to": ids[later]}
        else:
            skip = {"from": draw(st.sampled_from(ids)), "to": draw(st.sampled_from(ids))}
        if draw(st.booleans()):
            skip["merge"] = draw(st.sampled_from(MERGES))
        if draw(st.integers(0, 2)) == 0:
            skip["projection"] = draw(st.sampled_from(POLICIES))
        if draw(st.integers(0, 4)) == 4:
            skip["axis"] = draw(st.integers(-3, 3))
        skips.append(skip)
    if skips:
        model["skips"] = skips
    if draw(st.integers(0, 4)) == 0:
        model["projection"] = draw(st.sampled_from(POLICIES))
    if draw(st.integers(0, 9)) == 9:
        model["output"] = draw(st.sampled_from(ids[1:] or ids))
    if draw(st.integers(0, 9)) == 9:
        model["width_multiplier"] = draw(st.sampled_from([0.25, 0.5, 1.5, 2.0]))
    return model


# -- YAML text -----------------------------------------------------------------------------------

TEXT_SOURCES = [(p.name, p.read_text(encoding="utf-8")) for p in [*EXAMPLES, *CONFIGS[:4]] if p.is_file()]
_LAUGHS = ("[&a [1, 1, 1, 1, 1, 1, 1, 1, 1], &b [*a, *a, *a, *a, *a, *a, *a, *a, *a], "
           "&c [*b, *b, *b, *b, *b, *b, *b, *b, *b], &d [*c, *c, *c, *c, *c, *c, *c, *c, *c], "
           "&e [*d, *d, *d, *d, *d, *d, *d, *d, *d], &f [*e, *e, *e, *e, *e, *e, *e, *e, *e], "
           "&g [*f, *f, *f, *f, *f, *f, *f, *f, *f], &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]]")
SNIPPETS = [
    "!!python/object/apply:os.system ['true']", "!!python/name:os.system", "&anchor", "*anchor", "*missing",
    "<<: *anchor", "!!set {a, b}", "!!binary aGk=", "2001-12-14", "!!float nan", ".inf", "~", "? [1, 2]",
    "{", "}", "[", "]", ":", ": :", "- ", "\t", "'", '"', "\\", "#", "%YAML 1.1", "---", "...", "|", ">",
    "9" * 5000, "-" + "9" * 400, "1e999", "0x7fffffffffffffff", "0o777", "1_000", "[" * 3000 + "]" * 3000,
    "{a: " * 500 + "1" + "}" * 500, "🔥", "ñ", "\u202e", "\ufeff", "\x00", "\x85", "${channels * 2}", "${",
    "null", "true", "-1", "[3, 0, 0]", _LAUGHS, "{type: relu}", "{block: basic, repeat: 3}", "input",
]


@st.composite
def yaml_texts(draw):
    name, text = _pick(draw, TEXT_SOURCES)
    lines = text.splitlines()
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["drop", "double", "splice", "replace_value", "truncate", "swap"]))
        note(action)
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        if action == "drop":
            lines.pop(i)
        elif action == "double":
            lines.insert(i, lines[i])
        elif action == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif action == "truncate":
            lines[i] = lines[i][:draw(st.integers(0, len(lines[i])))]
        elif action == "splice":
            at = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:at] + draw(st.sampled_from(SNIPPETS) | st.text(max_size=5)) + lines[i][at:]
        else:  # a value after `key: ` becomes a snippet
            head, sep, _ = lines[i].partition(": ")
            if sep:
                lines[i] = head + sep + draw(st.sampled_from(SNIPPETS))
    return name, "\n".join(lines) + "\n"


_TMP = Path(tempfile.mkdtemp(prefix="skiptrain-fuzz-"))


# -- the tests -----------------------------------------------------------------------------------

@pytest.mark.skipif(not BASES, reason="no example configs found")
@fuzz_settings(0.45)
@given(mutated_configs())
def test_mutated_examples_are_refused_cleanly_or_build_with_the_reported_shape(model):
    STATS["mutated"] += 1
    check(model)


@fuzz_settings(0.4)
@given(scratch_configs())
def test_random_graphs_are_refused_cleanly_or_build_with_the_reported_shape(model):
    STATS["scratch"] += 1
    check(model)


@pytest.mark.skipif(not TEXT_SOURCES, reason="no example configs found")
@fuzz_settings(0.15)
@given(yaml_texts())
def test_mutated_yaml_files_are_refused_cleanly_by_the_loader_and_validate(source):
    STATS["yaml_text"] += 1
    name, text = source
    path = _TMP / name
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    outcome = check(path)
    with warnings.catch_warnings(), time_limit(HANG_SECONDS):
        warnings.simplefilter("ignore")
        result = invoke("validate", path)  # fails on any exception but the command's exit
    assert result.exit_code == (1 if outcome == "rejected" else 0), result.output
    assert "Traceback" not in result.output


def test_the_fuzzer_mutations_reach_what_they_aim_at():
    """The strategies are not vacuous: the examples pass unmutated, and the helpers find ids and slots."""
    for model in BASES[:3]:
        assert check(copy.deepcopy(model)) in ("built", "accepted")
        assert "input" in known_ids(model) and len(slots(model)) > 10 and layer_lists(model)
