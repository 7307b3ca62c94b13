"""`skiptrain init`: shipped templates are valid configs; writing never clobbers a file silently."""
from __future__ import annotations

import pytest

import skiptrain
from skiptrain.starter import describe, template_names, template_text

from .conftest import invoke

EXPECTED = {"quickstart", "resnet-cifar", "resnet-imagenet", "plain", "unet", "transformer", "mlp"}


def test_every_template_is_shipped_and_described():
    assert EXPECTED <= set(template_names())
    for name in template_names():
        assert describe(name) and not describe(name).startswith("#")


@pytest.mark.parametrize("name", template_names())
def test_template_validates(name, tmp_path):
    path = tmp_path / f"{name}.yaml"
    path.write_text(template_text(name))
    plan = skiptrain.check_model(path)
    assert plan is not None


def test_init_writes_a_file_validate_accepts(tmp_path):
    target = tmp_path / "my.yaml"
    result = invoke("init", "quickstart", "--output", target)
    assert result.exit_code == 0, result.output
    assert target.read_text() == template_text("quickstart")
    checked = invoke("validate", target)
    assert checked.exit_code == 0, checked.output
    assert "valid" in checked.output


def test_init_default_file_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert invoke("init", "mlp").exit_code == 0
    assert (tmp_path / "mlp.yaml").is_file()


@pytest.mark.parametrize("args", [["init"], ["init", "--list"]])
def test_listing(args):
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    for name in EXPECTED:
        assert name in result.output
    assert "U-Net" in result.output


def test_overwrite_refused_without_force(tmp_path):
    target = tmp_path / "taken.yaml"
    target.write_text("mine\n")
    result = invoke("init", "unet", "-o", target)
    assert result.exit_code == 1
    assert "already exists" in result.output and "--force" in result.output
    assert target.read_text() == "mine\n"
    assert invoke("init", "unet", "-o", target, "--force").exit_code == 0
    assert target.read_text() == template_text("unet")


def test_unknown_template_suggests(tmp_path):
    result = invoke("init", "resnet-cifr", "-o", tmp_path / "x.yaml")
    assert result.exit_code == 1
    assert "resnet-cifar" in result.output
