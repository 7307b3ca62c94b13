"""``train.init``: start a new run from someone else's weights, matched by name, with a transfer report.

Most training starts from published weights (torchvision's ``.pth``, a ``.safetensors`` file, a
skiptrain run). ``read`` loads them without running code: ``torch.load(weights_only=True)`` or
safetensors, from a regular file only (a FIFO or a ``/dev/zero`` link is refused before a byte is
read). ``load_into`` renames the file's keys by the config's rules, matches them to the model's by
name and shape, loads what matches and returns a ``Transfer``: what loaded and every tensor that did
not, with its reason. That report is printed when training starts and saved as ``transfer.json``.

Refused, each one ``InitError`` located at ``train.init``: a file that is not weights, a pickle that
needs Python objects, two file keys renamed onto one name, NaN or inf in a tensor that would load,
a transfer that loads nothing (almost surely a rename mistake: the hint shows keys of both sides), and
with ``strict: true`` any tensor left out. All of it happens before the run directory is written.
"""
from __future__ import annotations

import math
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import tying
from .errors import Location, SkiptrainError, warn

SHOWN = 4  # tensors named per reason in the printed line; transfer.json lists them all
WRAPPERS = ("state_dict", "model", "model_state_dict")  # where training scripts keep the weights in a dict
BOTH = ("shape differs", "dtype differs")  # reasons that show the file's and the model's tensor side by side
FORMS = "a state dict (.pth/.pt), a .safetensors file, or a skiptrain checkpoint or run directory"


class InitError(SkiptrainError):
    """``train.init`` names weights that cannot be used."""

    kind = "init error"


@dataclass
class Weights:
    """What a weights file held: its tensors by key, and in which form they were found."""

    tensors: dict[str, torch.Tensor]
    source: str
    form: str  # "state dict", "safetensors", "skiptrain checkpoint", or the wrapper's entry


# -- reading, without running code ------------------------------------------------------------------
def read(path: str | Path, loc: Location | None = None) -> Weights:
    """The tensors of ``path`` (a file or a skiptrain run directory), loaded without unpickling objects."""
    from . import checkpoint
    from .files import open_regular

    path = Path(path).expanduser()
    loc = loc or Location("train.init")
    if path.is_dir():
        return Weights(_checkpoint(lambda: checkpoint.read(path, on_fallback=warn), path, loc), str(path),
                       "skiptrain checkpoint")
    try:
        handle = open_regular(path, "weights file", checkpoint.CheckpointError)
    except checkpoint.CheckpointError as exc:
        missing = not path.exists() and not path.is_symlink()
        raise InitError(f"`train.init`: {'no such file: ' + str(path) if missing else exc.message}", loc,
                        f"give {FORMS}") from None
    with handle:
        head = handle.read(9)
        handle.seek(0)
        if path.suffix == ".safetensors" or _looks_like_safetensors(head):
            return Weights(_safetensors(handle.read(), path, loc), str(path), "safetensors")
        content = _torch_load(handle, path, loc)
    if isinstance(content, dict) and content.get("format") == checkpoint.FORMAT:
        def checked() -> Any:  # what checkpoint.read checks: the sha256 beside it, then every key
            checkpoint.verify(path)
            return checkpoint.TrainingState.from_dict(content, path)
        return Weights(_checkpoint(checked, path, loc), str(path), "skiptrain checkpoint")
    tensors, form = _state_dict(content, path, loc)
    return Weights(tensors, str(path), form)


def _looks_like_safetensors(head: bytes) -> bool:
    """A safetensors file starts with its JSON header's length (8 bytes, little-endian), then ``{``."""
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < (100 << 20)


def _safetensors(data: bytes, path: Path, loc: Location) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    try:
        return load(data)
    except Exception as exc:  # SafetensorError: a corrupt header or a buffer shorter than it promises
        raise InitError(f"`train.init`: {path} is not a readable .safetensors file ({str(exc)[:200]})", loc,
                        "the file may be truncated or corrupted: download it again") from None


def _torch_load(handle, path: Path, loc: Location) -> Any:
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols it reads anyway
            warnings.simplefilter("ignore")
            return torch.load(handle, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        blocked = re.search(r"unsupported GLOBAL (\S+)", str(exc), re.I)
        if blocked:
            raise InitError(f"`train.init`: {path} was refused: it needs Python objects to load "
                            f"({blocked.group(1).rstrip('.')}), and skiptrain never unpickles objects", loc,
                            "load only tensors: save `model.state_dict()`, or convert the file to .safetensors; "
                            "never load a file you do not trust") from None
        reason = "not a PyTorch weights file that torch reads safely"
    except Exception as exc:
        first = str(exc).splitlines()[0][:160] if str(exc) else ""
        reason = f"not a readable PyTorch file ({type(exc).__name__}: {first})"
    raise InitError(f"`train.init`: {path} is {reason}", loc,
                    f"give {FORMS}; the file may be truncated or of another kind")


def _checkpoint(load, path: Path, loc: Location) -> dict[str, torch.Tensor]:
    """A skiptrain checkpoint's model weights; its own errors (broken, refused, no checkpoint) located here."""
    from .checkpoint import CheckpointError

    try:
        return dict(load().model)
    except CheckpointError as exc:
        raise InitError(f"`train.init`: {exc.message}", loc, exc.hint) from None


def _is_tensors(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and \
        all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def _state_dict(content: Any, path: Path, loc: Location) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict in what ``torch.load`` returned: itself, or a training script's wrapper entry."""
    if _is_tensors(content):
        return dict(content), "state dict"
    if isinstance(content, dict):
        for key in WRAPPERS:
            if _is_tensors(content.get(key)):
                return dict(content[key]), f"its `{key}` entry"
        keys = ", ".join(repr(k) for k in list(content)[:6]) + (", ..." if len(content) > 6 else "")
        what = f"a dict ({keys}) that is not a state dict" if content else "an empty dict"
    else:
        what = f"a {'tensor' if isinstance(content, torch.Tensor) else type(content).__name__}"
    raise InitError(f"`train.init`: {path} holds {what}", loc,
                    "give a state dict (names to tensors, as `torch.save(model.state_dict(), f)` writes), or a "
                    f"dict whose {', '.join(f'`{k}`' for k in WRAPPERS)} entry is one")


# -- renaming and matching by name -----------------------------------------------------------------
def rename(keys: list[str], rules: list[Any], loc: Location) -> dict[str, str]:
    """``{new name: file key}``, the rules applied in order to each key; two keys onto one name is an error."""
    out: dict[str, str] = {}
    for key in keys:
        new = key
        for rule in rules:
            if rule.strip_prefix is not None:
                new = new[len(rule.strip_prefix):] if new.startswith(rule.strip_prefix) else new
            else:
                new = re.sub(rule.regex, rule.replace or "", new)
        if new in out:
            raise InitError(f"`train.init.rename` maps two keys of the file onto `{new}`: `{out[new]}` and `{key}`",
                            loc, "make the rules more specific (anchor a regex with ^)")
        out[new] = key
    return out


def _shape(tensor: torch.Tensor) -> list[int]:
    return list(tensor.shape)


def _fits(got: torch.Tensor, want: torch.Tensor) -> str | None:
    """Why a file tensor cannot take a model tensor's place (None when it can: floats of any width cast)."""
    if got.shape != want.shape:
        return "shape differs"
    if got.dtype != want.dtype and not (got.is_floating_point() and want.is_floating_point()):
        return "dtype differs"
    return None


@dataclass
class Transfer:
    """What ``train.init`` loaded: counts and shares, and every tensor not loaded with its reason."""

    source: str
    form: str
    strict: bool
    rename: list[dict]
    loaded: int
    total: int
    params_loaded: int
    params_total: int
    file_tensors: int
    not_loaded: list[dict] = field(default_factory=list)
    cast: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        share = lambda a, b: round(a / b, 6) if b else 0.0  # noqa: E731
        return {"source": self.source, "form": self.form, "strict": self.strict, "rename": self.rename,
                "tensors": {"loaded": self.loaded, "total": self.total, "share": share(self.loaded, self.total)},
                "parameters": {"loaded": self.params_loaded, "total": self.params_total,
                               "share": share(self.params_loaded, self.params_total)},
                "file_tensors": self.file_tensors, "cast": self.cast, "not_loaded": self.not_loaded}

    def lines(self) -> list[str]:
        """One line of counts; a second naming what was not loaded (a few per reason; all in transfer.json)."""
        # rounded down: a resized head shows 99.9%, never a 100.0% that hides it
        share = math.floor(1000 * self.params_loaded / self.params_total) / 10 if self.params_total else 0.0
        form = "" if self.form in ("state dict", "safetensors") else f" ({self.form})"
        cast = "".join(f"; {n} cast {pair}" for pair, n in self.cast.items())
        lines = [f"init: loaded {self.loaded}/{self.total} tensors ({self.params_loaded:,} of {self.params_total:,} "
                 f"parameters, {share:.1f}%) from {self.source}{form}{cast}"]
        if not self.not_loaded:
            return lines
        groups: dict[str, list[str]] = {}
        for entry in self.not_loaded:
            groups.setdefault(entry["reason"], []).append(_entry_text(entry))
        parts = [", ".join(names[:SHOWN]) + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")
                 + f" ({reason}{': file vs model' if reason in BOTH else ''})" for reason, names in groups.items()]
        more = " (all in transfer.json)" if any(len(names) > SHOWN for names in groups.values()) else ""
        lines.append(f"init: not loaded: {'; '.join(parts)}; the model's keep their fresh initialisation{more}")
        return lines


def _entry_text(entry: dict) -> str:
    if entry["reason"] == "shape differs":
        return f"{entry['key']} {entry['file_shape']} vs {entry['model_shape']}"
    if entry["reason"] == "dtype differs":
        return f"{entry['key']} {entry['file_dtype']} vs {entry['model_dtype']}"
    return f"{entry['key']} {entry.get('model_shape', entry.get('file_shape'))}"


def _dtype(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def _entry(key: str, reason: str, file_key: str | None, got: torch.Tensor | None,
           want: torch.Tensor | None) -> dict[str, Any]:
    """One tensor not loaded, as transfer.json lists it: the shapes (and dtypes) of whichever sides exist."""
    entry: dict[str, Any] = {"key": key}
    if file_key is not None and file_key != key:
        entry["file_key"] = file_key
    entry["reason"] = reason
    if got is not None:
        entry["file_shape"] = _shape(got)
    if want is not None:
        entry["model_shape"] = _shape(want)
    if reason == "dtype differs":
        entry.update(file_dtype=_dtype(got), model_dtype=_dtype(want))
    return entry


def match(model: nn.Module, weights: Weights, init: Any, loc: Location) -> tuple[Transfer, dict[str, torch.Tensor]]:
    """The report, and the file's tensors to load under the model's names."""
    aliases = tying.aliases(model)  # a tied tensor's second name: it loads, counts and is reported once
    own = {key: value for key, value in model.state_dict().items() if key not in aliases}
    params = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    names = tying.through_first_name(rename(list(weights.tensors), init.rename, loc), aliases)
    chosen: dict[str, torch.Tensor] = {}
    skipped: list[dict] = []
    cast: dict[str, int] = {}
    for key, want in own.items():
        got = weights.tensors[names[key]] if key in names else None
        reason = "missing from the file" if got is None else _fits(got, want)
        if reason is not None:
            skipped.append(_entry(key, reason, names.get(key), got, want))
            continue
        if got.dtype != want.dtype:
            pair = f"{_dtype(got)} -> {_dtype(want)}"
            cast[pair] = cast.get(pair, 0) + 1
        chosen[key] = got
    skipped += [_entry(new, "missing from the model", old, weights.tensors[old], None)
                for new, old in names.items() if new not in own and new not in aliases]
    counted = [key for key in own if key in params]
    transfer = Transfer(weights.source, weights.form, init.strict,
                        [rule.model_dump(exclude_none=True) for rule in init.rename], len(chosen), len(own),
                        sum(own[key].numel() for key in counted if key in chosen),
                        sum(own[key].numel() for key in counted), len(weights.tensors), skipped, cast)
    return transfer, chosen


def load_into(model: nn.Module, weights: Weights, init: Any, loc: Location | None = None) -> Transfer:
    """Load what matches into ``model`` (the rest keeps its fresh initialisation); refused before a single
    tensor is copied when nothing matches, when ``strict`` and anything does not, or on NaN/inf values."""
    loc = loc or Location("train.init")
    transfer, chosen = match(model, weights, init, loc)
    if not chosen:
        file_keys = ", ".join(list(rename(list(weights.tensors), init.rename, loc))[:3])
        model_keys = ", ".join(list(model.state_dict())[:3])
        raise InitError(f"`train.init`: no tensor of {weights.source} matches the model by name and shape "
                        f"({transfer.file_tensors} in the file, {transfer.total} in the model)", loc,
                        f"the file's keys (after rename) begin {file_keys}; the model's begin {model_keys}: add a "
                        "`rename` rule such as {strip_prefix: module.}")
    if init.strict and transfer.not_loaded:
        raise InitError(f"`train.init` is strict, but {len(transfer.not_loaded)} tensors would not load: "
                        + "; ".join(f"{_entry_text(e)} ({e['reason']})" for e in transfer.not_loaded[:SHOWN])
                        + ("; ..." if len(transfer.not_loaded) > SHOWN else ""), loc,
                        "set `strict: false` to keep those tensors fresh, or add `rename` rules")
    bad = next((k for k, t in chosen.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())), None)
    if bad is not None:
        raise InitError(f"`train.init`: {weights.source} holds NaN or inf in `{bad}`", loc,
                        "the weights are broken: use another file")
    with torch.no_grad():
        model.load_state_dict(chosen, strict=False)
    return transfer
