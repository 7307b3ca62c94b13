from __future__ import annotations

import pytest

from skiptrain.config import load_config, parse_yaml, plain
from skiptrain.errors import ConfigError


def test_values_remember_line_and_column(write_yaml):
    path = write_yaml("""
        model:
          input: [3, 8, 8]
          layers:
            - {type: conv2d, out_channels: 4, kernel_size: 3}
    """)
    config = load_config(path)
    layer = config.model["layers"][0]
    loc = layer.where("out_channels")
    assert (loc.file, loc.line, loc.column) == (str(path), 4, 36)
    assert config.model["layers"].where(0).line == 4


def test_python_tags_are_refused_and_never_run(write_yaml, tmp_path):
    marker = tmp_path / "pwned"
    path = write_yaml(f"""
        model:
          name: !!python/object/apply:os.system ["touch {marker}"]
          input: [4]
          layers: [{{type: relu}}]
    """)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert not marker.exists()
    assert info.value.location.line == 2
    assert "tag" in info.value.message


def test_syntax_error_has_location(write_yaml):
    path = write_yaml("model:\n  input: [3, 8\n  layers: []\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.location.file == str(path)
    assert info.value.location.line is not None


def test_duplicate_keys_are_an_error(write_yaml):
    path = write_yaml("""
        model:
          input: [4]
          input: [5]
          layers: [{type: relu}]
    """)
    with pytest.raises(ConfigError, match="written twice"):
        load_config(path)


def test_unknown_section_suggests(write_yaml):
    path = write_yaml("model: {input: [4], layers: [{type: relu}]}\ntrian: {epochs: 1}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "train" in info.value.hint


def test_set_overrides_parse_yaml_values(write_yaml):
    path = write_yaml("""
        model:
          input: [3, 8, 8]
          layers:
            - {type: conv2d, out_channels: 4, kernel_size: 3}
        train: {optimizer: {name: sgd, lr: 0.1}}
    """)
    config = load_config(path, ["train.optimizer.lr=0.05", "model.layers.0.out_channels=8",
                                "train.scheduler.milestones=[80, 120]", "data.dataset=digits"])
    assert config.train["optimizer"]["lr"] == 0.05
    assert config.model["layers"][0]["out_channels"] == 8
    assert plain(config.train["scheduler"]) == {"milestones": [80, 120]}
    assert config.data["dataset"] == "digits"
    assert str(config.model["layers"][0].where("out_channels")).startswith("--set")


@pytest.mark.parametrize("override, message", [
    ("train.lr", "dotted.key=value"),
    ("model.layers.7.out_channels=3", "out of range"),
    ("model.input.0.x=1", "single value"),
])
def test_bad_overrides(write_yaml, override, message):
    path = write_yaml("model: {input: [4], layers: [{type: relu}]}\n")
    with pytest.raises(ConfigError, match=message):
        load_config(path, [override])


def test_model_may_be_a_path_and_a_model_only_file_works(write_yaml):
    model = write_yaml("input: [4]\nlayers: [{type: linear, out_features: 2}]\n", "models/tiny.yaml")
    config = write_yaml("model: models/tiny.yaml\ndata: {dataset: synthetic}\n")
    loaded = load_config(config, ["model.layers.0.out_features=3"])
    assert loaded.model["layers"][0]["out_features"] == 3
    assert loaded.data["dataset"] == "synthetic"
    assert load_config(model).model["input"] == [4]


def test_missing_model_file(write_yaml):
    path = write_yaml("model: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="not found") as info:
        load_config(path)
    assert info.value.location.line == 1


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.yaml")


def test_parse_yaml_plain_types_only():
    assert plain(parse_yaml("a: [1, 2.5, x, null, true]", "t")) == {"a": [1, 2.5, "x", None, True]}


def test_set_into_an_unknown_section_is_an_error(write_yaml):
    path = write_yaml("model: {input: [4], layers: [{type: relu}]}\n")
    with pytest.raises(ConfigError, match="unknown section `trian`"):
        load_config(path, ["trian.epochs=3"])


# -- found by tests/test_fuzz.py: odd YAML is a located ConfigError, never a crash or a hang --------

@pytest.mark.parametrize("text, message", [
    ("a: " + "9" * 5000, "cannot read the value"),          # int() refuses more than 4300 digits
    ("a: !!int 2001-13-45", "cannot read the value"),       # (dates are text: tests/test_paths_and_reads.py)
    ("a: !!float abc", "cannot read the value"),
    ("a: " + "[" * 3000 + "]" * 3000, "nested too deeply"),  # the composer recurses
    ("a: 1\nb: x\x1fy", r"U\+001F is not allowed"),          # the reader refuses it before parsing
])
def test_odd_yaml_values_are_config_errors(text, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse_yaml(text, "t.yaml")
    assert info.value.location.file == "t.yaml"


def test_a_control_character_is_located():
    with pytest.raises(ConfigError) as info:
        parse_yaml("a: 1\nb: x\x1fy", "t.yaml")
    assert (info.value.location.line, info.value.location.column) == (2, 5)


def test_aliases_that_expand_to_a_billion_values_are_refused(write_yaml):
    levels = ["&l0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"] + [
        f"&l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    path = write_yaml("model:\n  input: [3, 8, 8]\n  layers:\n"
                      f"    - {{type: conv2d, out_channels: 4, kernel_size: [{', '.join(levels)}]}}\n")
    with pytest.raises(ConfigError, match="aliases are expanded"):
        load_config(path)


def test_a_few_aliases_still_work():
    data = plain(parse_yaml("a: &conv {type: conv2d, kernel_size: 3}\nb: [*conv, *conv]", "t"))
    assert data["b"] == [{"type": "conv2d", "kernel_size": 3}] * 2
