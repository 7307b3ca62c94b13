"""Typed errors: every problem a user can cause carries a location and a hint.

The library raises these and never prints; the CLI turns them into one message and
an exit code (see ``cli.py``). Warnings are ``SkiptrainWarning``s, which the CLI prints.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class Location:
    """Where a value came from: a file position, or a label such as ``--set a.b=1``."""

    file: str
    line: int | None = None  # 1-based
    column: int | None = None  # 1-based

    def __str__(self) -> str:
        if self.line is None:
            return self.file
        return f"{self.file}:{self.line}:{self.column}"

    def source_line(self) -> str | None:
        """The line of the file this location points at, for a caret display."""
        if self.line is None:
            return None
        from .files import read_bytes  # bounded, regular files only: a location never hangs the error

        try:
            lines = read_bytes(self.file).decode("utf-8").splitlines()
        except (SkiptrainError, UnicodeDecodeError):
            return None
        return lines[self.line - 1] if 0 < self.line <= len(lines) else None


class SkiptrainError(Exception):
    """Base of every error a user can cause. ``exit_code`` is what the CLI returns."""

    exit_code = 1
    kind = "error"

    def __init__(self, message: str, location: Location | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.location = location
        self.hint = hint

    def __str__(self) -> str:
        where = f"{self.location}: " if self.location else ""
        text = f"{where}{self.message}"
        return f"{text}\n  hint: {self.hint}" if self.hint else text

    def format(self, show_source: bool = True) -> str:
        """The message as the CLI prints it, with the offending line and a caret."""
        where = f"{self.location}: " if self.location else ""
        lines = [f"{where}{self.kind}: {self.message}"]
        source = self.location.source_line() if (show_source and self.location) else None
        if source is not None:
            lines.append(f"  {source}")
            lines.append("  " + " " * ((self.location.column or 1) - 1) + "^")
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        return "\n".join(lines)


class ConfigError(SkiptrainError):
    """The YAML is wrong: syntax, unknown keys, bad values, references, blocks."""

    kind = "config error"


class ShapeError(ConfigError):
    """Shapes do not line up: a layer cannot take its input, or a skip cannot merge."""

    kind = "shape error"


class DataError(SkiptrainError):
    """A dataset is missing, malformed, or does not fit the model."""

    kind = "data error"


class CheckpointError(SkiptrainError):
    """A checkpoint or run directory is missing, broken, or unsafe to load."""

    kind = "checkpoint error"


class SkiptrainWarning(UserWarning):
    """Something the user should know that does not stop the command (the CLI prints it as `warning: ...`);
    Python API users can silence or capture it with the ``warnings`` module."""


def warn(message: str) -> None:
    import warnings

    warnings.warn(message, SkiptrainWarning, stacklevel=3)


def did_you_mean(name: str, choices: Iterable[str]) -> str | None:
    """A hint naming the closest valid choice, or None when nothing is close."""
    matches = difflib.get_close_matches(str(name), sorted(set(map(str, choices))), n=1, cutoff=0.6)
    return f"did you mean `{matches[0]}`?" if matches else None


def choices_hint(name: str, choices: Iterable[str], what: str) -> str:
    """A did-you-mean when one is close, else the list of valid choices."""
    choices = sorted(set(map(str, choices)))
    suggestion = did_you_mean(name, choices)
    if suggestion:
        return suggestion
    shown = ", ".join(choices[:12]) + (", ..." if len(choices) > 12 else "")
    return f"valid {what}: {shown}"
