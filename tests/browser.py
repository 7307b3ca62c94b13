"""Headless Chromium for the tests of HTML pages (diagrams, run reports): screenshots and the DOM
after the page's scripts ran. Tests call ``need_chromium()`` first: it skips them, with the reason,
where no Chromium can be found (Debian's `chromium` package; ``.ci/run`` installs it)."""
from __future__ import annotations

import html
import json
import os
import re
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


def _run(html_path: Path, *flags: str, wait_ms: int = 0) -> subprocess.CompletedProcess:
    """One headless run on a file, with its own profile folder (parallel runs never share one);
    ``wait_ms``: virtual time for timers and animations before the result (costs real seconds too)."""
    with tempfile.TemporaryDirectory(prefix="skiptrain-chromium-") as profile:
        command = [need_chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                   "--disable-extensions", "--disable-background-networking", f"--user-data-dir={profile}",
                   *([f"--virtual-time-budget={wait_ms}"] if wait_ms else []), "--enable-logging=stderr", "--v=0", *flags,
                   Path(html_path).resolve().as_uri()]
        return subprocess.run(command, check=False, capture_output=True, text=True, timeout=TIMEOUT,
                              env={**os.environ, "HOME": profile})


def screenshot(html_path: Path, png_path: Path, size: tuple[int, int] = (1400, 1000), wait_ms: int = 0) -> Path:
    """A PNG of the page at ``size`` (width, height) pixels; fails the test when none was written."""
    result = _run(html_path, f"--screenshot={Path(png_path).resolve()}", f"--window-size={size[0]},{size[1]}",
                  wait_ms=wait_ms)
    assert Path(png_path).is_file() and Path(png_path).stat().st_size > 0, result.stderr[-2000:]
    return Path(png_path)


def dump_dom(html_path: Path, wait_ms: int = 0) -> str:
    """The page's DOM as HTML after its scripts ran (JavaScript on)."""
    return load(html_path, wait_ms)[0]


# Prepended to the page that `load` opens: console.error calls and uncaught errors, noted on <html>
# (Chromium's stderr shows console.error at INFO level, indistinguishable from console.log).
_PROBE = ('<script>(function(){var seen=[];function note(m){seen.push(String(m));document.documentElement'
          '.setAttribute("data-console-errors",JSON.stringify(seen));}var error=console.error;console.error='
          'function(){note(Array.prototype.join.call(arguments," "));return error.apply(console,arguments);};'
          'window.addEventListener("error",function(e){note(e.message);});})();</script>')


def load(html_path: Path, wait_ms: int = 0) -> tuple[str, list[str]]:
    """The page's DOM after its scripts ran, and its console errors and uncaught exceptions: one
    browser run of a copy of the page (beside it, for its relative links) with a probe script first."""
    html_path = Path(html_path)
    text = html_path.read_text(encoding="utf-8")
    at = text.find("<head>")
    probed = text[:at + 6] + _PROBE + text[at + 6:] if at >= 0 else _PROBE + text
    copy = html_path.with_name(f".probe-{html_path.name}")
    copy.write_text(probed, encoding="utf-8")
    try:
        result = _run(copy, "--dump-dom", wait_ms=wait_ms)
    finally:
        copy.unlink()
    assert result.returncode == 0, result.stderr[-2000:]
    found = re.search(r'<html[^>]*data-console-errors="([^"]*)"', result.stdout)
    errors = json.loads(html.unescape(found.group(1))) if found else []
    errors += [line for line in result.stderr.splitlines() if "Uncaught" in line and not any(e in line for e in errors)]
    return result.stdout, errors
