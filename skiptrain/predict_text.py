"""Text prompts for ``predict``: a ``.txt`` file is a prompt for a language model that carries its tokenizer.

A run of ``dataset: text`` stores its tokenizer in the checkpoint, and ``skiptrain export`` copies it into
the ``.onnx`` file's metadata with the ``context``, so both sources read a prompt the same way: the
file's UTF-8 text exactly as written (a final newline included, as nanoGPT's ``--start=FILE:``) is
encoded, only its last ``context`` tokens are kept (as nanoGPT's ``generate`` crops), and the model runs
on each prompt at its own length. The answer is the next token after the prompt: the top ``--top`` ids
with their probabilities and, for every model with a tokenizer, the text each id stands for.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError, Location, warn

TEXT_SUFFIXES = (".txt",)
PROMPT_LIMIT = 16 << 20  # bytes of one prompt file


def attach(extra: dict[str, Any], stored: Any, context: int | None, origin: str) -> dict[str, Any]:
    """``extra`` with the tokenizer stored as ``stored`` (plain types) and the longest sequence the model takes
    (None: its input length is fixed). A tokenizer that does not load is left out with a warning: the
    model still predicts on arrays of token ids."""
    from .data.tokenizers import from_dict

    if stored is not None:
        try:
            extra["tokenizer"] = from_dict(stored, origin)
        except DataError as exc:
            warn(f"{exc.message}; predict takes token ids (.npy) only")
    if context is not None:
        extra["context"] = context
    return extra


def prompt_ids(path: Path, model: Any) -> np.ndarray:
    """``[1, L]`` token ids of the prompt in ``path``, its last ``context`` tokens."""
    from .files import read_bytes

    where = Location(str(path))
    raw = read_bytes(path, "prompt", PROMPT_LIMIT, DataError, "give a UTF-8 text file as the prompt")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (byte {exc.start})", where, "save the prompt as UTF-8") from None
    if not text:
        raise DataError(f"{path} is empty: a prompt needs at least one character", where,
                        "write the start of the text to continue into the file")
    try:
        ids = model.extra["tokenizer"].encode_array(text)
    except DataError as exc:
        raise DataError(f"{path}: {exc.message}", where, exc.hint) from None
    context = model.extra.get("context")
    length = model.input_shape[0] if model.input_shape else None
    ids = ids[-(context or length or len(ids)):]
    if context is None and length not in (None, len(ids)):
        raise DataError(f"{path} is {len(ids)} tokens, but the model takes exactly {length}", where,
                        f"give a prompt of at least {length} tokens (the last {length} are used), or export the "
                        "run again with `skiptrain export` (a sequence axis of any length up to the context)")
    return ids[None].astype(model.input_dtype)


def add_text(answers: list[dict[str, Any]], tokenizer: Any, key: str) -> list[dict[str, Any]]:
    """Each predicted token's text beside its id (``answers[i][key]`` lists ``{"token": id, ...}``)."""
    for answer in answers:
        for entry in answer.get(key) or ():
            if isinstance(entry, dict) and isinstance(entry.get("token"), int) and \
                    0 <= entry["token"] < tokenizer.vocab_size:  # a padded vocabulary's extra ids stand for nothing
                entry["text"] = tokenizer.decode([entry["token"]])
    return answers
