"""Stopping on purpose: SIGINT/SIGTERM stop a run at the next safe point, never inside a checkpoint write.

The first signal asks the loop to stop: it finishes the step (or the validation, or the save),
writes a checkpoint and exits 130 / 143. A second signal exits at once, except while a
checkpoint is being written: a write cut in half would lose the checkpoint the user stopped
for, so the second signal waits for the write, and the loop, which looks for a signal right
after every save, stops then.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from pathlib import Path
from typing import Iterator

from ..errors import SkiptrainError

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingStopped(SkiptrainError):
    """A signal stopped the run after a checkpoint was written: exit 128 + signal number."""

    kind = "stopped"

    def __init__(self, signum: int, message: str, hint: str):
        super().__init__(message, None, hint)
        self.exit_code = 128 + signum


class Stopper:
    """What the signal handler and the loop share: the signal asked for, and whether a save is under way."""

    def __init__(self) -> None:
        self.signum: int | None = None  # a signal asked us to stop
        self._saving = 0

    def request(self, signum: int, frame) -> None:
        """The handler. It never raises inside a save, so a checkpoint write always completes."""
        if self.signum is None or self._saving:
            self.signum = self.signum or signum
        else:
            _now(signum, frame)

    @contextlib.contextmanager
    def saving(self) -> Iterator[None]:
        """Signals that arrive inside this block only ask to stop: the caller looks right after it."""
        self._saving += 1
        try:
            yield
        finally:
            self._saving -= 1

    @contextlib.contextmanager
    def installed(self, enabled: bool) -> Iterator[None]:
        """The handler for SIGINT and SIGTERM while the block runs (the main thread of a lone process:
        under torchrun the agent owns signals and stops every rank together)."""
        if not enabled or threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.request) for sig in SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _now(signum: int, frame) -> None:
    """A second signal outside a save: Ctrl-C raises KeyboardInterrupt, SIGTERM ends the process."""
    if signum == signal.SIGINT:
        signal.default_int_handler(signum, frame)
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def clear_orphans(checkpoints: Path) -> list[Path]:
    """Remove what a write killed by SIGKILL left (``.last.pt.XXXX.tmp``, ``.last.pt.sha256.tmp``).

    Only skiptrain's own temporary names in a run's checkpoints folder, which only this run writes."""
    removed = []
    for tmp in Path(checkpoints).glob(".*.tmp"):
        if tmp.is_file() and (".pt." in tmp.name) and not tmp.is_symlink():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed
