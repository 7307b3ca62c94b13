"""Fuzzing the model language (issue 6, item 7): random and mutated configs, thousands of them.

Three sources of configs:

* the example configs (``../shared/examples``, ``configs/``), mutated a few times each: a key deleted
  at any depth, a value replaced by one of another type (None, bool, huge and negative ints,
  floats, unicode text, lists, mappings), a random input shape or dtype, random skips between
  existing ids or random strings, new merges, projections, axes, concat orders and projection
  ids, layers duplicated or dropped, repeats and multipliers changed, ``when:`` on layers,
  instances and skips, ``copy_id:`` on instances, and ``${...}`` expressions (comparisons,
  and/or/not, ``a if c else b``, floats, functions, shape names, counters), nasty ones included;
* small graphs generated from scratch from a curated list of layer types (indexing, learnable
  tensors and torchvision's blocks included), with random arguments, left-out layers,
  squeeze-excite gates merged by broadcasting, Swin's windowed attention sized by reading
  shapes, a random block with ``${...}`` arguments (counters, shapes, conditions, ``copy_id``),
  and random skips (``order``, ``id``, ``when``);
* YAML text: an example file edited as text (lines dropped or doubled, YAML oddities such as
  tags, anchors, huge numbers and deep nesting spliced in), loaded from disk and run through
  ``skiptrain validate`` as well.

The property: checking a config either raises skiptrain's own error (a ``SkiptrainError``) or
returns a plan, and every plan builds into a module whose forward pass on a batch of 2 returns
exactly the shape (and dtype) the plan reported, and the values that a plain node-by-node
interpretation of the plan computes with the same modules and torchvision's own arithmetic for
learnable tensors (so the generated forward's in-place adds, broadcasts and early frees are checked too). Any other exception, or a config that takes longer than
``HANG_SECONDS``, fails the test.

Profiles, chosen by the environment variable ``SKIPTRAIN_FUZZ_PROFILE``:

* ``ci`` (the default): about 300 examples in all, derandomized, well under a minute;
* ``long``: thousands of random examples; ``python benchmarks/fuzz.py`` runs it and records the
  figures in ``docs/reliability.md``.

``SKIPTRAIN_FUZZ_EXAMPLES`` overrides the number of examples per test, and
``SKIPTRAIN_FUZZ_STATS`` names a JSON file that receives the counts when the module finishes (with
``built_with_*``: how many built models had a broadcast, a from-first concat, a named projection, a
new layer type, a learnable tensor).

The test functions are here; the profiles and the oracle are in ``fuzz_oracle.py``, the mutations
of the examples in ``fuzz_mutations.py``, the graphs from scratch and YAML text in ``fuzz_scratch.py``.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given  # noqa: E402

from .conftest import invoke  # noqa: E402
from .fuzz_mutations import BASES, known_ids, layer_lists, mutated_configs, slots  # noqa: E402
from .fuzz_oracle import HANG_SECONDS, PROFILE_NAME, STATS, check, fuzz_settings, time_limit  # noqa: E402
from .fuzz_scratch import TEXT_SOURCES, scratch_configs, yaml_texts  # noqa: E402

_TMP = Path(tempfile.mkdtemp(prefix="skiptrain-fuzz-"))


@pytest.fixture(scope="module", autouse=True)
def _record_stats():
    yield
    shutil.rmtree(_TMP, ignore_errors=True)
    target = os.environ.get("SKIPTRAIN_FUZZ_STATS")
    if target:
        Path(target).write_text(json.dumps({"profile": PROFILE_NAME, **STATS}, indent=2, sort_keys=True))


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
