"""What a checkpoint's validation pass measured, kept beside it: ``checkpoints/best.pt.validation`` and
``checkpoints/last.pt.validation`` (not ``*.pt``: a record is no checkpoint, and nothing should take it for one).

The trainer already measures the validation split at the end of every epoch; recording that pass (the
task's metric summary and the few samples of highest loss) lets the HTML report at the end of ``train``
show the confusion matrix, per-class table and worst samples without running the model again: a
ResNet-56 run with 5,000 validation images writes its report in about a second instead of a minute on
two cores. A record names the checkpoint, epoch and step it belongs to; ``html_report`` uses it only
for that checkpoint and measures again otherwise. It is written atomically and read with
``weights_only=True`` (tensors, numbers, strings, lists and dicts only), at most ``LIMIT`` bytes.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from .errors import CheckpointError

FORMAT = 1
KEEP = 24  # the worst samples recorded: the report's default --samples
LIMIT = 256 * 1024 * 1024  # a record holds a few dozen samples; anything larger is not one of ours
SAMPLES_BUDGET = 64 * 1024 * 1024  # worst samples larger than this in all (big masks) are left to a new measure
SUFFIX = ".validation"


def record_path(checkpoint: str | Path) -> Path:
    """``checkpoints/best.pt`` -> ``checkpoints/best.pt.validation``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name + SUFFIX)


def write_record(checkpoint: Path, result: dict[str, Any], *, epoch: int, step: int, task: str, split: str,
                 total: int) -> None:
    """Save the validation ``result`` of ``evaluate(..., keep_worst=KEEP)`` beside ``checkpoint`` (just written
    from the same weights), atomically."""
    from .checkpoint import atomic_save

    worst = result.get("worst")
    samples, seen, kept = (worst.samples(), worst.seen, worst.k) if worst is not None else ([], 0, 0)
    if sum(t.numel() * t.element_size() for row in samples for t in row.values() if hasattr(t, "numel")) \
            > SAMPLES_BUDGET:
        samples, kept = [], 0  # the report measures these samples again rather than store them
    record = {"format": FORMAT, "checkpoint": Path(checkpoint).name, "epoch": int(epoch), "step": int(step),
              "task": task, "split": split, "total": int(total), "evaluated": int(seen), "kept": int(kept),
              "result": {k: v for k, v in result.items() if k != "worst"},
              "samples": samples}
    atomic_save(record, record_path(checkpoint))


def read_record(checkpoint: str | Path) -> dict[str, Any] | None:
    """The record beside ``checkpoint``; None when there is none. A damaged one (cut short, wrong checksum,
    not a record) is a ``CheckpointError`` whose message the report shows as a note."""
    import torch

    from .checkpoint import checksum_path
    from .files import read_bytes

    path = record_path(checkpoint)
    if not path.is_file():
        return None
    data = read_bytes(path, "validation record", LIMIT, CheckpointError)
    sums = checksum_path(path)
    if sums.is_file():
        import hashlib

        expected = read_bytes(sums, "checksum", 4096, CheckpointError).decode("ascii", "replace").split()[:1]
        if expected != [hashlib.sha256(data).hexdigest()]:
            raise CheckpointError(f"{path.name} does not match its checksum")
    try:
        record = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever a damaged file makes the unpickler raise
        raise CheckpointError(f"{path.name} cannot be read ({type(exc).__name__})") from None
    if not (isinstance(record, dict) and record.get("format") == FORMAT and isinstance(record.get("result"), dict)
            and all(isinstance(record.get(key), str) for key in ("checkpoint", "task", "split"))
            and all(isinstance(record.get(key), int) for key in ("epoch", "step", "total", "evaluated", "kept"))
            and isinstance(record.get("samples"), list)
            and all(isinstance(s, dict) and {"loss", "input", "output", "target"} <= set(s) for s in record["samples"])):
        raise CheckpointError(f"{path.name} is not a validation record of this skiptrain")
    return record


def belongs(record: dict[str, Any], state) -> bool:
    """Whether ``record`` was measured on the weights of the checkpoint ``state`` (a TrainingState)."""
    return (record.get("checkpoint") == Path(state.path).name and record.get("epoch") == state.epoch
            and record.get("step") == state.step)


def usable(state, samples: int, max_samples: int) -> dict[str, Any] | None:
    """The record of the checkpoint ``state`` (a TrainingState) when it stands for a new measure of it: the
    same weights (checkpoint, epoch, step), at least ``samples`` worst samples kept, and the whole split or
    its first ``max_samples`` measured (a run trained with --limit-batches validated less: None)."""
    record = read_record(state.path)
    if record is None or not belongs(record, state) or samples > record["kept"] \
            or record["evaluated"] < min(record["total"], max_samples):
        return None
    return record
