"""Layer arguments of the wrong kind are refused before the layer is built, at the argument itself
(issue 15: `kernel_size: "three"` reached torch and was reported at the start of the layer)."""
from __future__ import annotations

import pytest
from torch import nn

from skiptrain import registry
from skiptrain.errors import ConfigError

from .conftest import invoke

CONFIG = """
model:
  name: t
  input: [3, 8, 8]
  layers:
    - {{id: stem, type: {type}, {args}}}
    - {{type: global_avgpool}}
    - {{id: head, type: linear, out_features: 4}}
"""
CONV = "out_channels: 8, kernel_size: 3"


def validate(write_yaml, type_: str, args: str):
    """`skiptrain validate` of a one-layer config: the result and the layer's line."""
    path = write_yaml(CONFIG.format(type=type_, args=args))
    return invoke("validate", path), path, path.read_text().splitlines()[4]


def assert_refused_at(result, path, line: str, value: str, *words: str) -> None:
    """One config error, exit 1, located at `value`'s own column, naming each of `words`."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    column = line.index(value) + 1
    assert f"{path}:5:{column}: config error:" in result.output, result.output
    for word in words:
        assert word in result.output, (word, result.output)


@pytest.mark.parametrize("type_, args, value, words", [
    # the case: text where torch takes an integer or a pair of them
    ("conv2d", 'out_channels: 8, kernel_size: "three"', '"three"',
     ["`stem`", "`kernel_size`", "'three'", "an integer or a list of 2 integers"]),
    ("conv2d", "out_channels: 2.5, kernel_size: 3", "2.5", ["`out_channels`", "2.5", "an integer"]),
    ("conv2d", "out_channels: true, kernel_size: 3", "true", ["`out_channels`", "true", "an integer"]),
    ("conv2d", "out_channels: [1, 2], kernel_size: 3", "[1, 2]", ["`out_channels`", "a list", "an integer"]),
    ("conv2d", "out_channels: null, kernel_size: 3", "null", ["`out_channels`", "null", "an integer"]),
    ("conv2d", "out_channels: 0, kernel_size: 3", "0,", ["`out_channels`", "at least 1"]),
    ("conv2d", "out_channels: 8, kernel_size: -1", "-1", ["`kernel_size`", "at least 1"]),
    ("conv2d", "out_channels: 8, kernel_size: [3, 0]", "[3, 0]", ["`kernel_size`", "at least 1"]),
    ("conv2d", "out_channels: 4, kernel_size: 0, padding: 1", "0,", ["`kernel_size`", "at least 1"]),  # meta took it
    ("embedding", "num_embeddings: 0, embedding_dim: 2", "0,", ["`num_embeddings`", "at least 1"]),
    ("conv2d", "out_channels: 8, kernel_size: [3, 3, 3]", "[3, 3, 3]", ["`kernel_size`", "a list of 3",
                                                                         "a list of 2 integers"]),
    ("conv2d", "out_channels: 8, kernel_size: [3, x]", "[3, x]", ["`kernel_size`", "'x'"]),
    ("conv2d", f"{CONV}, bias: 0", "0}", ["`bias`", "true or false"]),
    ("conv2d", f"{CONV}, padding_mode: zero", "zero", ["`padding_mode`", "did you mean `zeros`?"]),
    ("conv2d", f"{CONV}, stride: 1.0", "1.0", ["`stride`", "1.0", "`//`"]),  # what `${c / 2}` gives
    ("batchnorm2d", "eps: 1e-5", "1e-5", ["`eps`", "a number", "1.0e-5"]),  # YAML 1.1 reads `1e-5` as text
    ("dropout", "p: low", "low", ["`dropout`", "`p`", "a number"]),
    ("maxpool2d", "kernel_size: {a: 1}", "{a: 1}", ["`kernel_size`", "a mapping"]),
    # skiptrain's own layers and torchvision's, from their annotations
    ("select", "index: 1.5", "1.5", ["`select`", "`index`", "an integer"]),
    ("self_attention", "num_heads: two", "two", ["`num_heads`", "an integer"]),
    ("conv2d_norm_activation", "out_channels: 8, kernel_size: three", "three", ["`kernel_size`", "an integer"]),
    ("conv2d_norm_activation", "out_channels: 8, groups: 0", "0", ["`groups`", "at least 1"]),
])
def test_a_wrong_kind_is_refused_at_the_argument(write_yaml, type_, args, value, words):
    result, path, line = validate(write_yaml, type_, args)
    assert_refused_at(result, path, line, value, *words)


@pytest.mark.parametrize("type_, args", [
    ("conv2d", CONV),
    ("conv2d", "out_channels: 8, kernel_size: [3, 1], padding: same, stride: 1, bias: false"),
    ("conv2d", "out_channels: 8, kernel_size: \"${1 + 2}\", padding: \"${3 // 2}\""),
    ("conv2d", "out_channels: \"${in_channels * 2}\", kernel_size: 3"),  # read from the shape, resolved first
    ("dropout", "p: 0"),  # an integer where torch takes a float
    ("maxpool2d", "kernel_size: 2, stride: null"),  # None where the default is None
    ("batchnorm2d", "eps: 1.0e-5, momentum: null"),
    ("adaptive_avgpool2d", "output_size: [2, null]"),
    ("upsample", "scale_factor: 2, mode: nearest"),
    ("layernorm", "normalized_shape: 8"),
    ("flatten", "start_dim: 1, end_dim: -1"),  # a negative axis is fine
    ("zeropad2d", "padding: [-1, 0, 1, 1]"),  # negative padding crops
    ("transformer_encoder_layer", "nhead: 1, dim_feedforward: 16, activation: gelu"),
])
def test_valid_arguments_are_accepted(write_yaml, type_, args):
    text = CONFIG.format(type=type_, args=args)
    if type_ in ("layernorm", "transformer_encoder_layer", "flatten"):
        text = text.replace("[3, 8, 8]", "[4, 8]").replace("global_avgpool", "flatten")
    result = invoke("validate", write_yaml(text))
    assert result.exit_code == 0, result.output


def test_block_style_points_at_the_arguments_own_line(write_yaml):
    path = write_yaml("""
        model:
          name: t
          input: [3, 8, 8]
          layers:
            - id: stem
              type: conv2d
              out_channels: 8
              kernel_size: three
            - {type: global_avgpool}
        """)
    result = invoke("validate", path)
    assert result.exit_code == 1 and f"{path}:8:20: config error:" in result.output, result.output


def test_torchs_own_refusal_stays_located_at_the_layer(write_yaml):
    """A value of the right kind that the constructor refuses: torch's first line, at the layer."""
    result, path, line = validate(write_yaml, "conv2d", "out_channels: 3, kernel_size: 3, groups: 2")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{path}:5:{line.index('{') + 1}:" in result.output, result.output
    assert "`stem`" in result.output and "must be divisible by groups" in result.output


def test_unknown_arguments_still_get_a_did_you_mean(write_yaml):
    result, path, line = validate(write_yaml, "conv2d", "out_chanels: 8, kernel_size: 3")
    assert result.exit_code == 1 and "did you mean `out_channels`?" in result.output, result.output


@pytest.fixture
def plugin_layers():
    """Two plugin-style layer types, one annotated and one not, registered for one test."""
    registry.names()
    with registry.LAYERS.scoped():
        class Gain(nn.Module):
            def __init__(self, gain: float = 1.0, repeats: int = 1, mode: str = "mul"):
                super().__init__()

            def forward(self, x):
                return x

        class Loose(nn.Module):
            def __init__(self, factor=1, enabled=True, label="x", anything=None):  # no annotations
                super().__init__()

            def forward(self, x):
                return x

        registry.add(registry.LayerType("test_gain", Gain))
        registry.add(registry.LayerType("test_loose", Loose))
        yield


@pytest.mark.parametrize("type_, args, value, words", [
    ("test_gain", "gain: big", "big", ["`test_gain`", "`gain`", "a number"]),
    ("test_gain", "repeats: 2.5", "2.5", ["`repeats`", "an integer"]),
    ("test_gain", "mode: 3", "3", ["`mode`", "text"]),
    ("test_loose", "enabled: 1", "1", ["`enabled`", "true or false"]),  # from the default's kind
    ("test_loose", "factor: big", "big", ["`factor`", "a number"]),
])
def test_plugin_layers_are_checked_from_their_signature(plugin_layers, write_yaml, type_, args, value, words):
    result, path, line = validate(write_yaml, type_, args)
    assert_refused_at(result, path, line, value, *words)


def test_unannotated_plugin_arguments_follow_their_defaults_loosely(plugin_layers, write_yaml):
    """No annotation: an int default takes any number (as the JSON schema says), None takes anything."""
    result, _, _ = validate(write_yaml, "test_loose", "factor: 0.5, anything: [1, {a: b}], label: y")
    assert result.exit_code == 0, result.output


def test_the_python_api_raises_a_config_error(write_yaml):
    import skiptrain

    with pytest.raises(ConfigError, match="kernel_size"):
        skiptrain.check_model({"input": [3, 8, 8], "layers": [
            {"type": "conv2d", "out_channels": 4, "kernel_size": "three"}]})


def test_a_set_value_is_located_at_its_set_option(write_yaml):
    path = write_yaml(CONFIG.format(type="conv2d", args=CONV))
    result = invoke("validate", path, "--set", "model.layers.0.kernel_size=three")
    assert result.exit_code == 1, result.output
    assert "--set model.layers.0.kernel_size=three: config error:" in result.output
    assert "`kernel_size` takes an integer or a list of 2 integers, not text 'three'" in result.output
