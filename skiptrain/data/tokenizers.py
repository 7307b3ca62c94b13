"""Tokenizers of the ``text`` dataset: characters, UTF-8 bytes, or BPE trained offline.

Each one turns text into ids and back (``encode``, ``decode``, ``vocab_size``) and is stored
as plain types (``to_dict``/``from_dict``: str, int, list), so a checkpoint that holds it still
loads with ``torch.load(weights_only=True)``. ``units()`` gives each id's characters and UTF-8
bytes, which makes bits per character exact for any tokenizer.

    tok = fit("bpe", text, train_text, vocab_size=512)
    tok.decode(tok.encode("ROMEO:")) == "ROMEO:"
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable

import numpy as np

from ..errors import DataError


class Tokenizer:
    """What every tokenizer offers; ``kind`` is its name in ``TOKENIZERS``."""

    kind = ""
    vocab_size = 0
    learns = False  # True: its vocabulary is learned from the training text, `vocab_size` ids of it

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def encode_array(self, text: str) -> np.ndarray:
        """``encode`` as an int64 array, fast on megabytes."""
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def token_bytes(self, index: int) -> bytes:
        """The UTF-8 bytes token ``index`` stands for."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def units(self) -> tuple[np.ndarray, np.ndarray]:
        """Per id: how many characters start in it (UTF-8 lead bytes) and how many bytes it has."""
        chars = np.zeros(self.vocab_size, np.int64)
        sizes = np.zeros(self.vocab_size, np.int64)
        for index in range(self.vocab_size):
            data = self.token_bytes(index)
            sizes[index] = len(data)
            chars[index] = sum(1 for b in data if b & 0xC0 != 0x80)
        return chars, sizes


class CharTokenizer(Tokenizer):
    """One id per character of a fixed alphabet (sorted), as nanoGPT's shakespeare_char."""

    kind = "char"

    def __init__(self, chars: list[str]):
        self.chars = list(chars)
        self.vocab_size = len(self.chars)
        self._codes = np.array([ord(c) for c in self.chars], np.int64)
        self._index = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def fit(cls, text: str, train: str, vocab_size: int | None) -> "CharTokenizer":
        """Every character of the whole text (not only the training split): no id for unknowns needed."""
        return cls(sorted(set(text)))

    def encode_array(self, text: str) -> np.ndarray:
        codes = np.frombuffer(text.encode("utf-32-le"), np.uint32).astype(np.int64)
        ids = np.searchsorted(self._codes, codes)
        ids = np.minimum(ids, max(0, self.vocab_size - 1))
        bad = np.nonzero(self._codes[ids] != codes)[0] if len(codes) else []
        if len(bad):
            char = text[int(bad[0])]
            raise DataError(f"the character {char!r} (U+{ord(char):04X}) at position {int(bad[0])} is not in the "
                            f"vocabulary of {self.vocab_size} characters", None,
                            "use characters of the training text, or `tokenizer: byte` or `bpe`, which take any text")
        return ids

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def token_bytes(self, index: int) -> bytes:
        return self.chars[index].encode("utf-8", "surrogatepass")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "chars": list(self.chars)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CharTokenizer":
        chars = data.get("chars")
        if not isinstance(chars, list) or not chars or not all(isinstance(c, str) and len(c) == 1 for c in chars) \
                or sorted(set(chars)) != chars:
            raise ValueError("`chars` must be a sorted list of distinct single characters")
        return cls(chars)


class ByteTokenizer(Tokenizer):
    """One id per UTF-8 byte: 256 ids, any text, nothing to learn."""

    kind = "byte"
    vocab_size = 256

    @classmethod
    def fit(cls, text: str, train: str, vocab_size: int | None) -> "ByteTokenizer":
        return cls()

    def encode_array(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8", "surrogatepass"), np.uint8).astype(np.int64)

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", "replace")

    def token_bytes(self, index: int) -> bytes:
        return bytes([index])

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ByteTokenizer":
        return cls()


@lru_cache(maxsize=1)
def _byte_symbols() -> dict[str, int]:
    """GPT-2's byte-level alphabet (the ``tokenizers`` ByteLevel one): printable symbol -> byte."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    symbols, extra = {}, 0
    for b in range(256):
        if b in keep:
            symbols[chr(b)] = b
        else:
            symbols[chr(256 + extra)] = b
            extra += 1
    return symbols


class BpeTokenizer(Tokenizer):
    """Byte-level BPE (GPT-2's scheme) trained with the ``tokenizers`` library on the training split
    only, offline. Any text encodes (the 256 bytes are in the vocabulary); decoding is exact."""

    kind = "bpe"
    learns = True

    def __init__(self, model: Any):
        self.model = model
        self.vocab_size = model.get_vocab_size()
        self._symbols = _byte_symbols()

    @staticmethod
    def _empty() -> Any:
        from tokenizers import Tokenizer as HfTokenizer, decoders, models, pre_tokenizers

        model = HfTokenizer(models.BPE())
        model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        model.decoder = decoders.ByteLevel()
        return model

    @classmethod
    def fit(cls, text: str, train: str, vocab_size: int | None) -> "BpeTokenizer":
        """Deterministic: the same training text and size give the same merges."""
        from tokenizers import pre_tokenizers, trainers

        model = cls._empty()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size or 1024, min_frequency=2, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
        model.train_from_iterator(_pieces(train), trainer=trainer, length=None)
        return cls(model)

    def encode_array(self, text: str) -> np.ndarray:
        """The same ids as ``model.encode``, twice as fast on a book: each distinct word is merged once."""
        model, known = self.model.model, {}
        ids: list[int] = []
        for word, _ in self.model.pre_tokenizer.pre_tokenize_str(text):
            got = known.get(word)
            if got is None:
                got = known[word] = [token.id for token in model.tokenize(word)]
            ids.extend(got)
        return np.asarray(ids, np.int64)

    def decode(self, ids: list[int]) -> str:
        return self.model.decode(list(ids), skip_special_tokens=False)

    def token_bytes(self, index: int) -> bytes:
        token = self.model.id_to_token(index) or ""
        return bytes(self._symbols[c] for c in token if c in self._symbols)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "json": self.model.to_str()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BpeTokenizer":
        from tokenizers import Tokenizer as HfTokenizer

        text = data.get("json")
        if not isinstance(text, str):
            raise ValueError("`json` must be the tokenizer's JSON text")
        try:
            model = HfTokenizer.from_str(text)
        except Exception as exc:  # the library's own parse errors: a broken stored tokenizer
            raise ValueError(f"its JSON does not load ({str(exc)[:120]})") from None
        return cls(model)


def _pieces(text: str, size: int = 1 << 16):
    """``text`` in pieces of about ``size`` characters, each cut after a newline between two
    non-blank characters: GPT-2's split makes that newline a word of its own either way, so
    the pieces' words are exactly the whole text's (a cut in a run of blanks would not be)."""
    start = 0
    while start < len(text):
        end = start + size
        while 0 <= end < len(text) - 1:
            end = text.find("\n", end)
            if end < 0 or (not text[end - 1].isspace() and not text[end + 1].isspace()):
                break
            end += 1
        end = len(text) if end < 0 or end >= len(text) - 1 else end + 1
        yield text[start:end]
        start = end


TOKENIZERS: dict[str, type[Tokenizer]] = {"char": CharTokenizer, "byte": ByteTokenizer, "bpe": BpeTokenizer}


def fit(kind: str, text: str, train: str, vocab_size: int | None = None) -> Tokenizer:
    """The tokenizer ``kind`` made for ``text`` (BPE learns from ``train``, the training split, only)."""
    fitter: Callable[..., Tokenizer] = TOKENIZERS[kind].fit  # type: ignore[attr-defined]
    return fitter(text, train, vocab_size)


def from_dict(data: Any, origin: str = "the checkpoint") -> Tokenizer:
    """A stored tokenizer back, checked: anything malformed is a DataError naming ``origin``."""
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind not in TOKENIZERS:
        raise DataError(f"{origin} holds no usable tokenizer (kind {str(kind)[:40]!r})", None,
                        f"tokenizers are one of: {', '.join(TOKENIZERS)}; retrain the run")
    try:
        return TOKENIZERS[kind].from_dict(data)  # type: ignore[attr-defined]
    except ValueError as exc:
        raise DataError(f"{origin}: the stored {kind} tokenizer is broken: {exc}", None, "retrain the run") from None
