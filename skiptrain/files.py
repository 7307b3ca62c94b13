"""Read a file a user named (a config, a run's metrics or marker) without trusting what it is.

A path can be a link to ``/dev/zero``, a FIFO that never delivers a byte, a folder, or a file of
gigabytes: ``Path.read_text`` would hang or fill memory on each. ``read_text`` opens without
blocking, looks at what it opened (``fstat``, so a link is judged by its target), refuses
anything that is not a regular file, and reads at most ``limit`` bytes. Every refusal is one
``SkiptrainError`` naming the file, with a hint. ``open_regular`` is the same check for readers
of binary files (checkpoints, checksum sidecars, arrays) that read in their own way.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from .errors import ConfigError, Location, SkiptrainError

MiB = 1 << 20
CONFIG_LIMIT = 16 * MiB  # a config is a few kilobytes; 16 MiB leaves room for generated ones


def _kind(mode: int) -> str:
    """What a non-regular file is, for the message."""
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "something else"


def open_regular(path: str | Path, what: str = "config", error: type[SkiptrainError] = ConfigError,
                 hint: str | None = None) -> BinaryIO:
    """``path`` opened for binary reading when it is a regular file (a link counts as its target);
    anything else is ``error`` before a byte is read. O_NONBLOCK keeps a FIFO's open from waiting
    for a writer (it changes nothing for a regular file)."""
    path = Path(path)
    loc = Location(str(path))
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise error(f"no such file: {path}", loc, hint or "check the path") from None
    except OSError as exc:
        raise error(f"cannot open the {what} {path}: {exc.strerror or exc}", loc, hint) from None
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        os.close(fd)
        raise error(f"cannot read the {what} {path}: {exc.strerror or exc}", loc, hint) from None
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise error(f"the {what} {path} is {_kind(mode)}, not a regular file", loc,
                    hint or f"give the path of a {what} file")
    return os.fdopen(fd, "rb")


def read_bytes(path: str | Path, what: str = "config", limit: int = CONFIG_LIMIT,
               error: type[SkiptrainError] = ConfigError, hint: str | None = None) -> bytes:
    """At most ``limit`` bytes of the regular file ``path``; ``error`` (located at the file) otherwise.
    The size is counted while reading, since ``st_size`` can lie (``/proc``, a growing file)."""
    with open_regular(path, what, error, hint) as handle:
        try:
            data = handle.read(limit + 1)
        except OSError as exc:
            raise error(f"cannot read the {what} {path}: {exc.strerror or exc}", Location(str(path)), hint) from None
    if len(data) > limit:
        raise error(f"the {what} {path} is larger than {limit // MiB} MiB; a {what} is a small text file",
                    Location(str(path)), hint or f"give the path of the {what} itself, not of a data or log file")
    return data


def read_text(path: str | Path, what: str = "config", limit: int = CONFIG_LIMIT,
              error: type[SkiptrainError] = ConfigError, hint: str | None = None) -> str:
    """``read_bytes`` decoded as UTF-8; a byte that is not UTF-8 is located at its line and column."""
    data = read_bytes(path, what, limit, error, hint)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise error(f"the {what} is not UTF-8 text (byte 0x{data[exc.start]:02x})",
                    Location(str(path), line, column),
                    "save the file as UTF-8 text") from None
