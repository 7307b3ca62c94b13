from __future__ import annotations

import pytest

from skiptrain.errors import ConfigError
from skiptrain.expr import evaluate, substitute

ENV = {"width": 16, "depth": 3, "name": "relu"}


@pytest.mark.parametrize("text, value", [
    ("width", 16), ("width * 4", 64), ("(width + 2) // 3", 6), ("-depth + 10", 7), ("width - depth * 2", 10),
])
def test_integer_arithmetic(text, value):
    assert evaluate(text, ENV, None) == value


@pytest.mark.parametrize("text", [
    "__import__('os').system('true')", "width ** 2", "width / 2", "width.real", "[width]",
    "2.5 * width", "width if depth else 1", "lambda: 1", "name * 2",
])
def test_everything_else_is_refused(text):
    with pytest.raises(ConfigError):
        evaluate(text, ENV, None)


def test_unknown_name_suggests_the_argument():
    with pytest.raises(ConfigError) as info:
        evaluate("widht * 2", ENV, None)
    assert "width" in info.value.hint


def test_division_by_zero_and_huge_numbers():
    with pytest.raises(ConfigError, match="zero"):
        evaluate("width // (depth - 3)", ENV, None)
    with pytest.raises(ConfigError, match="too large"):
        evaluate("width" + " * width" * 40, ENV, None)


def test_substitute_keeps_types_and_formats_text():
    assert substitute("${width * 2}", ENV, None) == 64 // 2
    assert substitute(["${depth}", 1], ENV, None) == [3, 1]
    assert substitute("${name}", ENV, None) == "relu"
    assert substitute("conv${depth}", ENV, None) == "conv3"
    assert substitute({"k": "${depth}"}, ENV, None) == {"k": 3}


@pytest.mark.parametrize("text", [
    "1\x00", "-" * 100_000 + "1", " + ".join(["1"] * 3000), "(" * 300 + "1" + ")" * 300, "9" * 5000,
])
def test_hostile_expressions_are_config_errors(text):
    """Found by tests/test_fuzz.py: ast.parse raises ValueError, MemoryError or RecursionError on these."""
    with pytest.raises(ConfigError):
        evaluate(text, ENV, None)


def test_a_result_too_large_from_a_huge_argument_is_a_config_error():
    with pytest.raises(ConfigError, match="too large"):
        evaluate("width * 2", {"width": 10 ** 400}, None)
