"""`skiptrain import`, a last step on the written section: DenseNet's dense blocks as `repeat:`.

torchvision's `_DenseBlock` keeps a list of every feature map and hands all of them to each layer, which
concatenates them first; the import writes that as it runs: the copies of `_dense_layer`, each followed by
a concat of the block's input and every copy so far. Concatenation only copies values, so
cat([input, d1, ..., dk]) is cat([cat([input, d1, ..., dk-1]), dk]): each copy can end in a concat of its
own input and its output (a skip `{from: input, to: conv2, merge: concat, order: from_first}`, the form the
import gives cat([x, out]) in a forward, so import -> eject -> import is stable), and the block is `{block: _dense_layer, repeat: N, copy_id: "denselayer${...}"}`,
as the zoo's densenet121.yaml. ``importer`` checks the folded section by rebuilding, as the first, and
keeps the first where the check fails.
"""
from __future__ import annotations

import copy
from typing import Any

from .import_blocks import _copy_id
from .merges import Concat

_DENSE_KEYS = {"id", "block"}


def _is_concat(entry: dict[str, Any]) -> bool:
    return entry.get("type") == Concat.name and set(entry) <= {"type", "axis", "input"}


def _dense(definition: dict[str, Any]) -> tuple[str, int, str | None, Any] | None:
    """(the repeated block, its count, its `copy_id:`, the concat axis) where ``definition`` is copies of one
    block, each followed by a concat of the input and every copy so far, and nothing else; else None."""
    layers = definition.get("layers", [])
    if definition.get("args") or definition.get("skips") or len(layers) < 4 or len(layers) % 2:
        return None
    copies, concats = layers[0::2], layers[1::2]
    if any(set(e) != _DENSE_KEYS for e in copies) or len({e["block"] for e in copies}) != 1:
        return None
    ids = [str(e["id"]) for e in copies]
    for k, concat in enumerate(concats):
        if not _is_concat(concat) or concat.get("axis") != concats[0].get("axis") or \
                [str(i) for i in concat["input"]] != ["input", *ids[:k + 1]]:
            return None
    copy_id = _copy_id(ids)
    if copy_id is False:
        return None
    return copies[0]["block"], len(copies), copy_id, concats[0].get("axis")


def _uses(section: dict[str, Any]) -> list[tuple[str | None, dict[str, Any]]]:
    """Every layer entry of the section, with the block definition it is in (None: the model's layers)."""
    found = [(None, e) for e in section.get("layers", [])]
    for name, definition in section.get("blocks", {}).items():
        found += [(name, e) for e in definition.get("layers", [])]
    return found


def fold_dense(section: dict[str, Any]) -> dict[str, Any] | None:
    """The section with each dense block written as a `repeat:` of its layer block (its output concatenated
    after its input); None where there is none to fold."""
    blocks = section.get("blocks", {})
    dense = {name: found for name, definition in blocks.items() if (found := _dense(definition)) is not None}
    layer_blocks = {found[0] for found in dense.values()}
    for inner in list(layer_blocks):
        definition = blocks.get(inner, {})
        last = (definition.get("layers") or [{}])[-1]
        axes = {found[3] for found in dense.values() if found[0] == inner}
        used_elsewhere = any(e.get("block") == inner and where not in dense for where, e in _uses(section))
        if used_elsewhere or "id" not in last or "repeat" in last or definition.get("skips") or len(axes) != 1:
            layer_blocks.discard(inner)  # its copies outside a dense block would grow a concat too
    dense = {name: found for name, found in dense.items() if found[0] in layer_blocks}
    if not dense or any(e.get("block") in dense and set(e) - {"id", "block"} for _, e in _uses(section)):
        return None
    out = copy.deepcopy(section)
    for inner in layer_blocks:
        axis = next(found[3] for found in dense.values() if found[0] == inner)
        last = out["blocks"][inner]["layers"][-1]["id"]
        # cat([input, last]) as the import writes it for a traced one (an ejected file's forward): a round trip
        skip = {"from": "input", "to": last, "merge": Concat.name, "order": "from_first",
                **({"axis": axis} if axis is not None else {})}
        out["blocks"][inner]["skips"] = [skip]
    for _, entry in _uses(out):
        if entry.get("block") in dense:
            inner, count, copy_id, _ = dense[entry["block"]]
            entry.update({"block": inner, "repeat": count, **({"copy_id": copy_id} if copy_id else {})})
    for name in dense:
        del out["blocks"][name]
    return out
