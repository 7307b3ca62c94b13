"""What the expander adds to ``${...}``: `when:` conditions, copy variables and shape bindings.

- ``when: "${...}"`` on a layer, a block instance or a skip keeps the item only when true.
- Inside a block copy (and in its instance's `args:`), ``repeat_index``/``repeat_count`` number
  the copies of that instance, and ``block_index``/``block_count`` number every copy of that
  block in the whole model, in order: stochastic depth's rate rising over a network's blocks
  (``${0.1 * block_index / (block_count - 1)}``) is written once.
- ``ScopeShapes`` lets an argument read shapes: it binds ``in_*`` and ``shape(id)`` to node ids.
- ``BlockCopies`` (a part of ``spec._Expander``): what one copy of a block sees, its arguments
  evaluated for that copy over the counters, and how many copies an instance has.
"""
from __future__ import annotations

import math
from typing import Any, Callable

from .config import LocatedDict, where
from .errors import ConfigError, Location, choices_hint
from .expr import Deferred, substitute

COPY_VARIABLES = ("repeat_index", "repeat_count", "block_index", "block_count")
UNCOUNTED = 1_000_000  # block_count while the first pass counts the copies


def present(entry: dict, env: dict, what: str) -> bool:
    """Whether an entry with an optional ``when:`` exists; the condition must be true or false."""
    if "when" not in entry:
        return True
    loc = where(entry, "when")
    value = substitute(entry["when"], env, loc)
    if type(value) is not bool:
        raise ConfigError(f"`when:` of {what} must be true or false, not {value!r}", loc,
                          "write a condition such as `when: \"${stride == 1 and expand_ratio != 1}\"`")
    return value


def skip_condition(skip: dict, env: dict, shapes: Any) -> bool | Deferred:
    """A skip's ``when:``: true, false, or a condition on shapes that the shape pass decides."""
    if "when" not in skip:
        return True
    loc = where(skip, "when")
    value = substitute(skip["when"], env, loc, shapes)
    if type(value) is not bool and not isinstance(value, Deferred):
        raise ConfigError(f"`when:` of a skip must be true or false, not {value!r}", loc,
                          "write a condition such as `when: \"${shape(input) == shape(bn3)}\"`")
    return value


def decide(condition: Deferred, shape_of: Callable[[str], tuple[int, ...]]) -> bool:
    """A skip's deferred ``when:`` once shapes are known."""
    value = condition.resolve(shape_of)
    if type(value) is not bool:
        raise ConfigError(f"`when:` of a skip must be true or false, not {value!r}", condition.loc,
                          "compare shapes: `${shape(input) == shape(bn3)}`")
    return value


def mentions(value: Any, word: str) -> bool:
    """Whether any text in a YAML value contains ``word`` (does any expression use `block_count`?)."""
    if isinstance(value, str):
        return word in value
    if isinstance(value, dict):
        return any(mentions(v, word) for v in value.values())
    if isinstance(value, list):
        return any(mentions(v, word) for v in value)
    return False


class ScopeShapes:
    """``expr.Shapes`` for one scope: ``in_*`` read ``own``; ``shape(ref)`` resolves ``ref`` here."""

    def __init__(self, resolve: Callable[[Any, dict, Location | None], str], local: dict, own: str | None):
        self._resolve, self.local, self.own = resolve, local, own

    def resolve(self, ref: Any, loc: Location | None) -> str:
        return self._resolve(ref, self.local, loc)


class BlockCopies:
    """The expander's block copies: arguments and counters per copy, and `repeat:`.
    Needs ``self.copies``, ``self.totals``, ``self.depth`` and ``self.resolve`` (``spec._Expander``)."""

    copies: dict[str, int]
    totals: dict[str, int]
    depth: float
    resolve: Callable[..., str]

    def copy_env(self, name: str, block: dict, entry: dict, env: dict, local: dict, source: str,
                 copy: int, count: int) -> dict:
        """What one copy sees: its arguments, evaluated for this copy (`first_args` on the first: the
        strided first block of a ResNet stage), over the copy variables (`repeat_index`, `block_index`...)."""
        index = self.copies.get(name, 0)
        self.copies[name] = index + 1
        variables = dict(zip(COPY_VARIABLES, (copy, count, index, self.totals.get(name, UNCOUNTED))))
        shapes = ScopeShapes(self.resolve, local, source)  # `args: {squeeze: "${in_channels // 4}"}`
        if copy == 0 and entry.get("first_args"):
            args = self.block_env(name, block, {**(entry.get("args") or {}), **entry["first_args"]}, entry,
                                  {**env, **variables}, "first_args", shapes)
        else:
            args = self.block_env(name, block, entry.get("args"), entry, {**env, **variables}, shapes=shapes)
        return {**variables, **args}

    def block_env(self, name: str, block: dict, given: dict | None, entry: dict, env: dict,
                  key: str = "args", shapes: ScopeShapes | None = None) -> dict:
        declared = block.get("args") or {}
        given = given or {}
        if not isinstance(declared, dict) or not isinstance(given, dict) or not isinstance(entry.get(key) or {}, dict):
            raise ConfigError(f"`{key}:` must be a mapping of names to values",
                              where(entry, key) if key in entry else where(block, "args"))
        if isinstance(entry.get(key), LocatedDict):  # locate errors in the mapping the user wrote
            given = LocatedDict(given, loc=entry[key].loc)
            for source in (entry.get("args"), entry.get(key)):
                if isinstance(source, LocatedDict):
                    given.key_locs.update(source.key_locs)
                    given.value_locs.update(source.value_locs)
        for key in given:
            if key not in declared:
                raise ConfigError(f"block `{name}` has no argument `{key}`",
                                  given.where(key, of_key=True) if isinstance(given, LocatedDict) else where(entry),
                                  choices_hint(key, declared, "arguments") if declared else
                                  f"declare it in `blocks.{name}.args`")
        result = {}
        for key, default in declared.items():
            value = substitute(given[key], env, where(given, key), shapes) if key in given else default
            if value is None:
                raise ConfigError(f"block `{name}` needs argument `{key}`", where(entry, "block"),
                                  f"add `args: {{{key}: ...}}` to this instance")
            result[key] = value
        return result

    def repeat(self, entry: dict, env: dict) -> int | None:
        if "repeat" not in entry:
            return None
        value = substitute(entry["repeat"], env, where(entry, "repeat"))
        if type(value) is not int or not 1 <= value <= 100_000:
            raise ConfigError(f"`repeat:` must be an integer from 1 to 100000, not {value!r}", where(entry, "repeat"))
        return max(1, math.ceil(value * self.depth)) if self.depth != 1.0 else value
