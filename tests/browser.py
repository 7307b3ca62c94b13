"""Headless Chromium for the tests of HTML pages (diagrams, run reports): screenshots and the DOM
after the page's scripts ran. Tests call ``need_chromium()`` first: it skips them, with the reason,
where no Chromium can be found (Debian's `chromium` package; ``.ci/run`` installs it)."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
TIMEOUT = 90  # seconds per browser run: a cold start on the busy 2-core machine takes several


def chromium() -> str | None:
    """The Chromium executable (``$CHROMIUM`` first), or None."""
    given = os.environ.get("CHROMIUM")
    if given:
        return shutil.which(given) or (given if Path(given).is_file() else None)
    return next((path for path in map(shutil.which, _NAMES) if path), None)


def need_chromium() -> str:
    """The Chromium executable, or skip the calling test with the reason."""
    path = chromium()
    if path is None:
        pytest.skip("headless Chromium not found (install Debian's `chromium` package, or set $CHROMIUM)")
    return path


def _run(html_path: Path, *flags: str) -> subprocess.CompletedProcess:
    """One headless run on a file, with its own profile folder (parallel runs never share one)."""
    with tempfile.TemporaryDirectory(prefix="skiptrain-chromium-") as profile:
        command = [need_chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                   "--disable-extensions", "--disable-background-networking", f"--user-data-dir={profile}",
                   "--virtual-time-budget=5000", "--enable-logging=stderr", "--v=0", *flags,
                   Path(html_path).resolve().as_uri()]
        return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT,
                              env={**os.environ, "HOME": profile})


def screenshot(html_path: Path, png_path: Path, size: tuple[int, int] = (1400, 1000)) -> Path:
    """A PNG of the page at ``size`` (width, height) pixels; fails the test when none was written."""
    result = _run(html_path, f"--screenshot={Path(png_path).resolve()}", f"--window-size={size[0]},{size[1]}")
    assert Path(png_path).is_file() and Path(png_path).stat().st_size > 0, result.stderr[-2000:]
    return Path(png_path)


def dump_dom(html_path: Path) -> str:
    """The page's DOM as HTML after its scripts ran (JavaScript on)."""
    result = _run(html_path, "--dump-dom")
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def console_errors(html_path: Path) -> list[str]:
    """The console errors and uncaught exceptions of the page, as Chromium logs them on stderr."""
    result = _run(html_path, "--dump-dom")
    return [line for line in result.stderr.splitlines()
            if "CONSOLE" in line and ("ERROR" in line or "Uncaught" in line) or "Uncaught" in line]
