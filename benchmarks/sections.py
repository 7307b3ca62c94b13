"""Marked sections of a docs page that another benchmark script writes (``<!-- gpt:start -->`` ...
``<!-- gpt:end -->``): a script that writes a page whole carries them over, heading and prose with them."""
from __future__ import annotations

import re

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
