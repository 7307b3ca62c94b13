"""One registry object for every extension point: tasks, merges, projection kinds, datasets, layers.

Like timm's ``_registry.py``: a dict and a decorator. A registry records which module
registered each name, so a clash names both parties; an unknown name is a typed error
with a did-you-mean; ``scoped()`` gives tests their own copy to add to and throws it away.
"""
from __future__ import annotations

import contextlib
import fnmatch
import inspect
from typing import Callable, Generic, Iterator, TypeVar

from .errors import ConfigError, Location, SkiptrainError, choices_hint, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind (``kind`` words the errors: "task", "merge", ...)."""

    def __init__(self, kind: str, error: type[SkiptrainError] = ConfigError, hint: str | None = None):
        self.kind = kind
        self.error = error
        self.hint = hint  # for an unknown name close to none: where the valid names are listed
        self._entries: dict[str, T] = {}
        self._origins: dict[str, str] = {}
        self._aliases: dict[str, str] = {}  # every name and alias -> its name

    def add(self, name: str, entry: T, origin: str | None = None, aliases: tuple[str, ...] = ()) -> T:
        """Register ``entry`` as ``name`` (and ``aliases``); a name taken twice raises, naming both modules."""
        origin = origin or _caller_module()
        for taken in (name, *aliases):
            if taken in self._aliases:
                raise ValueError(f"{self.kind} `{taken}` is already registered by "
                                 f"{self._origins[self._aliases[taken]]}, and {origin} registers it again")
        self._entries[name] = entry
        self._origins[name] = origin
        self._aliases.update(dict.fromkeys((name, *aliases), name))
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of ``add``: ``@MERGES.register("add")``."""
        origin = _caller_module()

        def decorate(entry: T) -> T:
            return self.add(name, entry, origin)
        return decorate

    def get(self, name: str, location: Location | None = None) -> T:
        """The entry registered as ``name`` or an alias, or this registry's error with a did-you-mean."""
        if isinstance(name, str) and name in self._aliases:
            return self._entries[self._aliases[name]]
        hint = did_you_mean(name, self._entries) or did_you_mean(name, self._aliases)
        raise self.error(f"unknown {self.kind} `{name}`", location,
                         hint or self.hint or choices_hint(str(name), self._entries, f"{self.kind}s"))

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def origin(self, name: str) -> str:
        return self._origins[name]

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching a wildcard ``pattern``, sorted."""
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    @contextlib.contextmanager
    def scoped(self) -> Iterator["Registry[T]"]:
        """Entries added inside the block are gone after it (for tests)."""
        saved = dict(self._entries), dict(self._origins), dict(self._aliases)
        try:
            yield self
        finally:
            self._entries, self._origins, self._aliases = saved

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


def _caller_module() -> str:
    """The module that called into the registry from outside this file."""
    frame = inspect.currentframe()
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        frame = frame.f_back
    return frame.f_globals.get("__name__", "?") if frame is not None else "?"
