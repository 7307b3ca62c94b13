"""Reading the image files of a folder dataset: every failure is one DataError naming the file.

A dataset folder is user input, so any file in it may be empty, random bytes, cut short,
a decompression bomb (a small file declaring billions of pixels) or a mask with values that
are not classes. Every read of an image or a mask goes through :func:`decoded`, which turns
whatever PIL raises into a DataError with the file's path relative to ``root``, the reason
and a hint; the pixel limit is PIL's ``Image.MAX_IMAGE_PIXELS``, checked from the header
before any pixel is decoded. :func:`check_header` runs the cheap part of that (open and
``verify``: the header, and for PNG the chunk checksums) on every file when the dataset is
scanned, so most broken files stop a run before it starts; a file cut short in its pixel
data (JPEG) is found when it is decoded.
"""
from __future__ import annotations

import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import DataError, Location

REMOVE_HINT = "remove the file or replace it with a readable copy, then run again"
SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I"}  # greyscale of up to 16 bits, scaled to 8 bits


@dataclass(frozen=True)
class Place:
    """Where the files are, for messages: the dataset's root and the config's `root:` key."""

    root: str
    location: Location | None = None

    def name(self, path: str | Path) -> str:
        """``path`` relative to the root when it is under it, else as given."""
        try:
            return str(Path(path).relative_to(self.root))
        except ValueError:
            return str(path)


def pixel_limit() -> int | None:
    from PIL import Image

    return Image.MAX_IMAGE_PIXELS


def _reason(exc: BaseException) -> str:
    """A one-line reason in the user's terms, from PIL's exception."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        declared = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(declared.group(1)):,} pixels, " if declared else ""
        return f"it declares {size}more than PIL's limit of {pixel_limit():,} pixels (Image.MAX_IMAGE_PIXELS)"
    if isinstance(exc, UnidentifiedImageError):
        return "it is not an image PIL can read (empty, or not an image format)"
    if isinstance(exc, OSError) and exc.errno is not None:  # the file system's, not the format's
        return f"it cannot be read ({exc.strerror})"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"it cannot be decoded ({type(exc).__name__}{': ' + text if text else ''})"


@contextmanager
def decoded(path: str | Path, place: Place, what: str = "image") -> Iterator[None]:
    """Run the read of ``path`` inside: any exception becomes a DataError naming the file.

    A decompression-bomb warning (more than ``MAX_IMAGE_PIXELS``) is refused like PIL's error
    (twice the limit); DataErrors raised inside pass through unchanged.
    """
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001  (any failure of a user's file is the file's)
        reason = _reason(exc) if _size_or_zero(path) else "the file is empty"
        raise DataError(f"the {what} {place.name(path)} cannot be used: {reason}", place.location,
                        REMOVE_HINT) from None


def _size_or_zero(path: str | Path) -> int:
    try:
        return Path(path).stat().st_size
    except OSError:
        return 0


def check_header(path: str | Path, place: Place, what: str = "image") -> None:
    """Open ``path`` and verify it without decoding pixels (about 0.06 ms per small file)."""
    from PIL import Image

    with decoded(path, place, what), Image.open(path) as image:
        image.verify()


def check_all(paths: list[str], place: Place, what: str = "image") -> None:
    for path in paths:
        check_header(path, place, what)


def read_image(path: str, size: tuple[int, int], mode: str, place: Place) -> np.ndarray:
    """A uint8 ``[H, W]`` or ``[H, W, 3]`` array: converted to ``mode`` (L or RGB), resized bilinearly.

    16-bit greyscale is scaled to 8 bits (PIL's own conversion would clip it to white).
    """
    from PIL import Image

    with decoded(path, place), Image.open(path) as image:
        image.load()
        if image.mode in SIXTEEN_BIT:
            scaled = np.asarray(image, dtype=np.float64) / 257.0
            image = Image.fromarray(scaled.clip(0, 255).round().astype(np.uint8), "L")
        image = image.convert(mode)
        if image.size != (size[1], size[0]):
            image = image.resize((size[1], size[0]), Image.BILINEAR)
        return np.asarray(image, dtype=np.uint8).copy()


def read_mask(path: str, size: tuple[int, int] | None, modes: set[str], place: Place) -> np.ndarray:
    """An int64 ``[H, W]`` class-index array (palette indices for P images, the first channel
    of others), resized nearest."""
    from PIL import Image

    with decoded(path, place, "mask"), Image.open(path) as mask:
        mask.load()
        if mask.mode not in modes:
            mask = mask.getchannel(0)
        if size is not None and mask.size != (size[1], size[0]):
            mask = mask.resize((size[1], size[0]), Image.NEAREST)
        return np.asarray(mask).astype(np.int64)


def check_classes(mask: np.ndarray, path: str, num_classes: int, ignore_index: int | None, place: Place) -> None:
    """Every mask value is a class index (0 to num_classes - 1) or ``ignore_index``."""
    if mask.size == 0 or (mask.min() >= 0 and mask.max() < num_classes):
        return
    values = np.unique(mask)
    bad = [int(v) for v in values if not (0 <= v < num_classes or v == ignore_index)]
    if not bad:
        return
    shown = ", ".join(map(str, bad[:8])) + (", ..." if len(bad) > 8 else "")
    ignored = f" or {ignore_index} (train.loss.ignore_index)" if ignore_index is not None else ""
    raise DataError(f"the mask {place.name(path)} has values {shown}, but the classes are 0 to {num_classes - 1}"
                    f"{ignored}", place.location,
                    f"if {bad[-1]} marks pixels to leave out of the loss, set `train.loss: {{name: cross_entropy, "
                    f"ignore_index: {bad[-1]}}}`; otherwise raise `data.num_classes` or fix the mask")
