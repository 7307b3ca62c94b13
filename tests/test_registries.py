"""The one registry object behind tasks, merges, projection kinds and the rest."""
from __future__ import annotations

import pytest

from skiptrain.errors import ConfigError, DataError
from skiptrain.registries import Registry


def test_register_get_and_list_with_wildcards():
    things: Registry[int] = Registry("thing")
    things.add("alpha", 1)

    @things.register("beta_two")
    def beta():
        return 2

    assert things.get("alpha") == 1 and things.get("beta_two") is beta
    assert things.names() == ["alpha", "beta_two"] and things.names("beta*") == ["beta_two"]
    assert "alpha" in things and len(things) == 2 and list(things) == ["alpha", "beta_two"]


def test_a_clash_names_both_modules():
    things: Registry[int] = Registry("thing")
    things.add("alpha", 1, origin="first.module")
    with pytest.raises(ValueError, match=r"`alpha` is already registered by first\.module, and " + __name__):
        things.add("alpha", 2)
    things.add("beta", 3, aliases=("Beta",))
    with pytest.raises(ValueError, match="`Beta` is already registered"):
        things.add("gamma", 4, aliases=("Beta",))


def test_unknown_name_is_the_registry_error_with_a_did_you_mean():
    things: Registry[int] = Registry("dataset", error=DataError)
    things.add("cifar10", 1)
    with pytest.raises(DataError) as info:
        things.get("cifar01")
    assert info.value.message == "unknown dataset `cifar01`" and "cifar10" in info.value.hint
    with pytest.raises(ConfigError):
        Registry("thing").get("x")


def test_aliases_find_their_entry_and_suggest_like_names():
    things: Registry[int] = Registry("layer type", hint="see the docs")
    things.add("conv2d", 1, aliases=("Conv2d",))
    assert things.get("Conv2d") == 1 and "Conv2d" in things and things.names() == ["conv2d"]
    with pytest.raises(ConfigError) as info:
        things.get("Conv2D")
    assert "conv2d" in info.value.hint
    with pytest.raises(ConfigError) as info:
        things.get("zzz")
    assert info.value.hint == "see the docs"


def test_scoped_entries_vanish_after_the_block():
    things: Registry[int] = Registry("thing")
    things.add("kept", 1)
    with things.scoped():
        things.add("temporary", 2)
        assert things.names() == ["kept", "temporary"]
    assert things.names() == ["kept"]
