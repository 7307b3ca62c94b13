"""The generated reference pages match the code: regenerate in memory and compare."""
from __future__ import annotations

import importlib.util

import pytest

from .conftest import ROOT, invoke

spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
gen_docs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gen_docs)


@pytest.mark.parametrize("relative", sorted(gen_docs.PAGES))
def test_generated_page_is_current(relative):
    committed = (ROOT / relative).read_text(encoding="utf-8")
    if relative == "docs/layers.md":
        import torch

        if f"Generated with torch {torch.__version__.split('+')[0]}." not in committed:
            pytest.skip("docs/layers.md lists another torch version's layers: regenerate it with this torch")
    if relative == "docs/cli.md" and f"Generated with {gen_docs.cli_versions()}." not in committed:
        pytest.skip("docs/cli.md was laid out by another Typer version: regenerate it with this one")
    assert committed == gen_docs.PAGES[relative](), (
        f"{relative} is stale: run `python scripts/gen_docs.py` and commit the result")


def test_every_layer_type_and_command_is_documented():
    from typer.main import get_command

    from skiptrain.cli import app
    from skiptrain.registry import names

    layers = (ROOT / "docs/layers.md").read_text()
    assert all(f"### `{name}`" in layers for name in names())
    cli = (ROOT / "docs/cli.md").read_text()
    group = get_command(app)
    for name in group.list_commands(group.context_class(group, info_name="skiptrain")):
        assert f"## `skiptrain {name}`" in cli
    assert "--install-completion" in cli and "--version" in cli


def test_shell_completion_is_enabled():
    # the documented way to name a shell (`--show-completion` detects the shell from the process
    # tree, which a CI job or a background process may not have)
    result = invoke(prog_name="skiptrain", env={"_SKIPTRAIN_COMPLETE": "source_bash"})
    assert result.exit_code == 0, result.output
    assert "complete -o default -F _skiptrain_completion skiptrain" in result.output


def test_config_language_names_the_class_build_model_returns():
    import re

    from skiptrain.api import build_model

    text = (ROOT / "docs/config-language.md").read_text()
    documented = re.search(r"`build_model` returns a `(\w+)`", text)
    assert documented, "docs/config-language.md no longer says what build_model returns"
    model = build_model({"input": [4], "layers": [{"type": "linear", "out_features": 2}]})
    assert type(model).__name__ == documented[1]
