"""Marked sections of a docs page (``<!-- gpt:start -->`` ... ``<!-- gpt:end -->``): the one writer of a
script's own section (``put``), and what a script that writes a page whole carries over (``carried``)."""
from __future__ import annotations

import os
import re
from pathlib import Path

MARKED = re.compile(r"<!-- ([\w-]+):start -->.*?<!-- \1:end -->", re.S)


def carried(old: str, new: str) -> str:
    """``new`` with every marked section of ``old`` that ``new`` lacks appended, from the ``## `` heading
    above its start marker (the section's title and prose) to its end marker."""
    out = new.rstrip("\n") + "\n"
    for match in MARKED.finditer(old):
        if f"<!-- {match.group(1)}:start -->" in new:
            continue
        heading = old.rfind("\n## ", 0, match.start())
        begin = heading + 1 if heading != -1 else match.start()
        out += "\n" + old[begin:match.end()] + "\n"
    return out


def put(page: Path, start: str, end: str, block: str, heading: str = "", new_page: str = "") -> None:
    """Replace ``page``'s text from ``start`` to ``end`` with ``block`` (which holds both markers); a page
    without them gets ``block`` at its end, under ``heading``. Nothing else on the page changes; the page is
    replaced atomically."""
    text = page.read_text(encoding="utf-8") if page.exists() else new_page
    if start in text and end in text and text.index(start) < text.index(end):
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + (f"{heading}\n\n" if heading else "") + block + "\n"
    page.parent.mkdir(parents=True, exist_ok=True)
    tmp = page.with_name(page.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, page)
