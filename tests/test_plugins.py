"""Plugins: layer types from the `skiptrain.layers` entry-point group, loaded once; a broken one only warns."""
from __future__ import annotations

import sys
import warnings
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import torch

from skiptrain import build_model, check_model, registry
from skiptrain.errors import SkiptrainWarning

from .conftest import invoke

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "skiptrain-plugin-example"

CONFIG = """
model:
  name: plugged
  input: [3, 8, 8]
  layers:
    - {id: stem, type: conv2d, out_channels: 8, kernel_size: 3, padding: 1}
    - {id: se, type: squeeze_excite, reduction: 2}
    - {type: scaled_tanh, gain: 2.0}
    - {id: wide, type: conv2d, out_channels: 16, kernel_size: 3, padding: 1}
    - {id: se2, type: squeeze_excite}
    - {type: global_avgpool}
    - {type: linear, out_features: 4}
  skips:
    - {from: stem, to: se2}
"""


@pytest.fixture
def plugins(monkeypatch):
    """Install fake entry points (no pip): the registry is restored and the plugin forgotten afterwards."""
    registry.names()  # the built-ins (and any installed plugins) first, so the scope holds them
    monkeypatch.syspath_prepend(str(EXAMPLE))
    sys.modules.pop("skiptrain_plugin_example", None)

    def install(*entry_points: EntryPoint) -> None:
        monkeypatch.setattr(registry, "_plugin_entry_points", lambda: list(entry_points))
        monkeypatch.setattr(registry, "_plugins_loaded", False)

    with registry.LAYERS.scoped():
        yield install
    sys.modules.pop("skiptrain_plugin_example", None)


def example(name: str = "example", value: str = "skiptrain_plugin_example") -> EntryPoint:
    return EntryPoint(name, value, registry.PLUGIN_GROUP)


def test_a_plugin_layer_validates_and_builds(plugins, write_yaml):
    plugins(example())
    assert {"squeeze_excite", "scaled_tanh"} <= set(registry.names())
    layer = registry.get("squeeze_excite")
    assert layer.axis == "channels" and not layer.fresh_output and layer.doc
    config = write_yaml(CONFIG)
    plan = check_model(config)
    assert plan.params > 0 and plan.projections  # stem (8) -> se2 (16): projected on the channels axis
    model = build_model(config)
    out = model(torch.zeros(2, 3, 8, 8))
    assert out.shape == (2, 4)


def test_plugins_load_once(plugins):
    calls = []

    def entry_points():
        calls.append(1)
        return [example()]

    plugins()
    registry._plugin_entry_points = entry_points  # restored by monkeypatch with the rest
    registry.names(), registry.get("scaled_tanh"), registry.names()
    assert calls == [1]


def test_a_broken_plugin_warns_and_skiptrain_goes_on(plugins, capsys):
    plugins(example("broken", "skiptrain_no_such_plugin_module"), example())
    with pytest.warns(SkiptrainWarning) as warned:
        assert "squeeze_excite" in registry.names()  # the good plugin still loads
    message = str(warned[0].message)
    assert "plugin `broken`" in message and "skiptrain_no_such_plugin_module" in message
    assert "ModuleNotFoundError" in message
    assert capsys.readouterr() == ("", "")  # the library warns, it never prints
    assert registry.get("conv2d").name == "conv2d"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        registry.names()  # warned once, not on every lookup


def test_the_cli_shows_a_broken_plugin_as_one_warning_line(plugins, write_yaml):
    plugins(example("broken", "skiptrain_no_such_plugin_module"), example())
    result = invoke("validate", write_yaml(CONFIG))
    assert result.exit_code == 0, result.output
    assert "warning: skiptrain plugin `broken`" in result.stderr and "Traceback" not in result.output


def test_a_callable_entry_point_is_called(plugins, tmp_path, monkeypatch):
    (tmp_path / "callable_plugin.py").write_text(
        "from torch import nn\n"
        "from skiptrain.registry import LayerType, add\n"
        "def setup():\n"
        "    add(LayerType('plugin_identity', nn.Identity, doc='identity'))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins(example("fn", "callable_plugin:setup"))
    assert registry.get("plugin_identity").factory is torch.nn.Identity
    sys.modules.pop("callable_plugin", None)
