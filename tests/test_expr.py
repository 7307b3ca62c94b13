from __future__ import annotations

import pytest

import skiptrain
from skiptrain.errors import ConfigError
from skiptrain.expr import evaluate, substitute

ENV = {"width": 16, "depth": 3, "name": "relu"}


@pytest.mark.parametrize("text, value", [
    ("width", 16), ("width * 4", 64), ("(width + 2) // 3", 6), ("-depth + 10", 7), ("width - depth * 2", 10),
])
def test_integer_arithmetic(text, value):
    assert evaluate(text, ENV, None) == value


@pytest.mark.parametrize("text, value", [
    ("width / 2", 8.0), ("2.5 * width", 40.0), ("width % 5", 1), ("0.1 * 3 / (depth - 1)", 0.1 * 3 / 2),
    ("depth == 3", True), ("depth != 3", False), ("depth < 4", True), ("depth <= 2", False), ("width > 16", False),
    ("width >= 16", True), ("1 < depth <= 3", True), ("1 < depth < 3", False), ("name == 'relu'", True),
    ("name != 'gelu'", True), ("'a' < 'b'", True),
    ("depth == 3 and width == 16", True), ("depth == 3 and width == 1", False), ("depth == 1 or width == 16", True),
    ("depth == 1 or width == 1", False), ("not depth == 3", False), ("not (depth == 1 and width == 16)", True),
    ("true", True), ("false", False), ("True", True), ("not false", True), ("flag and not off", True),
    ("width if depth == 3 else 0", 16), ("width if depth == 2 else 0", 0), ("1 if flag else 1 // 0", 1),
    ("min(width, depth)", 3), ("max(width, depth, 20)", 20), ("abs(-depth)", 3), ("round(2.6)", 3),
    ("round(2.5)", 2), ("floor(2.5)", 2), ("ceil(2.1)", 3), ("int(2.9)", 2), ("int(-2.9)", -2),
    ("make_divisible(width * 0.75)", 16), ("make_divisible(36 * 0.5)", 24), ("make_divisible(10, 8)", 16),
    ("make_divisible(3, 8, 1)", 9), ("make_divisible(240 // 4, 8)", 64), ("make_divisible(17, 4)", 16),
])
def test_floats_comparisons_conditions_and_functions(text, value):
    env = {**ENV, "flag": True, "off": False}
    result = evaluate(text, env, None)
    assert result == value and type(result) is type(value)


def test_make_divisible_is_torchvisions():
    torchvision = pytest.importorskip("torchvision.models._utils")
    from skiptrain.expr import make_divisible
    for v in [1, 3, 7.5, 8, 12, 16 * 0.75, 36 * 0.35, 72, 96 * 1.1, 240 // 4, 1000]:
        for divisor in (1, 4, 8):
            for min_value in (None, 1, 16):
                assert make_divisible(v, divisor, min_value) == torchvision._make_divisible(v, divisor, min_value)


@pytest.mark.parametrize("text, message", [
    ("__import__('os').system('true')", "calls something"), ("__import__('os')", "calls `__import__`"), ("width ** 2", "`**`"),
    ("width.real", "attribute access"), ("[width]", "a list"), ("(width, 1)", "a tuple"), ("{1: 2}", "a mapping"),
    ("[x for x in (1, 2)]", "a comprehension"), ("lambda: 1", "a lambda"), ("f'{width}'", "f-string"),
    ("(x := 1)", "`:=`"), ("width if depth else 1", "takes true or false"), ("width and depth", "takes true or false"),
    ("not width", "takes true or false"), ("name * 2", "not a number"), ("true + 1", "not a number"),
    ("width < name", "not two numbers or two texts"), ("width in (1, 2)", "`in` and `is`"),
    ("width is 1", "`in` and `is`"), ("None", "not a number, text or true/false"), ("width[0]", "indexed"),
    ("min(width, key=abs)", "with keywords"), ("max()", "gives `max` 0 arguments"), ("abs(1, 2)", "2 arguments"),
    ("open('/etc/passwd')", "calls `open`"), ("width.__class__", "attribute access"), ("getattr(width, 'x')", "calls"),
    ("width // 0.0", "divides by zero"), ("width / 0", "divides by zero"), ("width % 0", "divides by zero"),
    ("1e308 * 10", "not a finite number"), ("int(1e300)", "too large"), ("width & 1", "bit operations"),
    ("in_channels // 2", "reads a shape"), ("shape(input)[0]", "reads a shape"),
])
def test_everything_else_is_refused(text, message):
    with pytest.raises(ConfigError) as info:
        evaluate(text, ENV, None)
    assert message in info.value.message


def test_text_formats_booleans_as_yaml_does():
    assert substitute("x${depth == 3}", ENV, None) == "xtrue"
    assert substitute("${depth == 3}", ENV, None) is True


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


@pytest.mark.parametrize("text, hint", [("make_divisible(8, 0)", "positive integer"),
                                        ("make_divisible(8, 2.5)", "positive integer"),
                                        ("max(1)", "two or more numbers"), ("min(2.5)", "two or more numbers")])
def test_a_function_given_what_it_cannot_take_is_a_config_error(text, hint):
    """Found by the fuzzer: these were a ZeroDivisionError and a TypeError."""
    with pytest.raises(ConfigError) as info:
        skiptrain.check_model({"input": [4], "layers": [{"type": "linear", "out_features": "${" + text + "}"}]})
    assert hint in info.value.hint


def test_max_of_a_rank_1_shape_is_its_one_size():
    plan = skiptrain.check_model({"input": [4], "layers": [{"type": "linear", "out_features": "${max(in_shape)}"}]})
    assert plan.output_shape == (4,)
