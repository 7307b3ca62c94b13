"""Id patterns of ``train.freeze`` and ``train.param_groups``: which layers a pattern selects.

One matching rule for both: a pattern (``fnmatch``) selects a node when it matches the node's id or one
of its block-instance scopes, so ``layer1`` selects ``layer1.0.conv1``, ``layer2.*`` every node under
``layer2`` and ``stem`` the node ``stem``. A skip's projection belongs to the node its skip merges into
(``body_proj`` follows ``body``, torchvision's ``layer1.0.downsample`` follows its block), and its own id
selects it too. Plain data over the plan, without torch, so ``validate`` checks the patterns quickly.
"""
from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

from .config import where
from .errors import ConfigError, choices_hint


def scopes(path: str) -> list[str]:
    """``a.b.c``, ``a.b``, ``a``: a path and the block-instance scopes around it, innermost first."""
    return [path.rsplit(".", k)[0] for k in range(path.count(".") + 1)]


def units(plan: Any) -> dict[str, str]:
    """Every module path a pattern can select (nodes and projections) -> the node it belongs to."""
    owned = {node.id: node.id for node in plan.graph.order}
    owned.update({proj.id: proj.skip.target for proj in plan.projections.values()})
    return owned


def select(pattern: str, owned: dict[str, str]) -> set[str]:
    """The module paths ``pattern`` selects: those it matches, and projections whose node it matches."""
    hit = {path for path in owned if any(fnmatchcase(scope, pattern) for scope in scopes(path))}
    return {path for path, node in owned.items() if path in hit or node in hit}


def check_patterns(patterns: list[str], locs: list[Any], labels: list[str], owned: dict[str, str]) -> list[set[str]]:
    """What each pattern selects; one that selects nothing is a located error with a did-you-mean."""
    selected = []
    for pattern, loc, label in zip(patterns, locs, labels):
        chosen = select(pattern, owned)
        if not chosen:
            choices = {scope for path in owned for scope in scopes(path)}
            raise ConfigError(f"`{label}`: `{pattern}` matches no layer id", loc,
                              choices_hint(pattern, choices, "layer ids and block instances") +
                              " (`skiptrain validate CONFIG` lists the ids; `*` matches any part)")
        selected.append(chosen)
    return selected


def freeze_patterns(settings: Any, train: Any) -> tuple[list[str], list[Any], list[str]]:
    """train.freeze's patterns, where each was written, and their names (``train.freeze[1]``)."""
    count = len(settings.freeze)
    return settings.freeze, item_locs(train, "freeze", count), [f"train.freeze[{i}]" for i in range(count)]


def item_locs(train: Any, key: str, count: int) -> list[Any]:
    """Where each item of ``train[key]`` was written (the key's own place when the items' are unknown)."""
    items = train.get(key) if isinstance(train, dict) else None
    return [(where(items, i) if isinstance(items, list) else None) or where(train, key) for i in range(count)]


def owner(name: str, owned: dict[str, str]) -> str | None:
    """The module path (node or projection) a parameter or buffer name lives under."""
    return next((scope for scope in scopes(name) if scope in owned), None)


def check(plan: Any, settings: Any, train: Any) -> None:
    """``validate``'s and ``train``'s check of every id pattern in ``train:`` against the plan."""
    owned = units(plan)
    check_patterns(*freeze_patterns(settings, train), owned=owned)
    groups = item_locs(train, "param_groups", len(settings.param_groups))
    items = train.get("param_groups") if isinstance(train, dict) else None
    for i, group in enumerate(settings.param_groups):
        item = items[i] if isinstance(items, list) else None
        loc = where(item, "match") if isinstance(item, dict) else groups[i]
        check_patterns([group.match], [loc], [f"train.param_groups[{i}].match"], owned)
