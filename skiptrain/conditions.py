"""What the expander adds to ``${...}``: `when:` conditions, copy variables and shape bindings.

- ``when: "${...}"`` on a layer, a block instance or a skip keeps the item only when true.
- Inside a block copy (and in its instance's `args:`), ``repeat_index``/``repeat_count`` number
  the copies of that instance, and ``block_index``/``block_count`` number every copy of that
  block in the whole model, in order: stochastic depth's rate rising over a network's blocks
  (``${0.1 * block_index / (block_count - 1)}``) is written once.
- ``ScopeShapes`` lets an argument read shapes: it binds ``in_*`` and ``shape(id)`` to node ids.
"""
from __future__ import annotations

from typing import Any, Callable

from .config import where
from .errors import ConfigError, Location
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
