"""Datasets read from image files by a DataLoader: ``imagefolder`` and ``segfolder``.

``imagefolder``: a folder per class under ``root`` (torchvision's ImageFolder layout).
``segfolder``: ``root/images/<stem>.png|jpg`` with class-index masks ``root/masks/<stem>.png``.
Either may instead hold ``root/train``, ``root/val``, ``root/test`` in that layout; the
splits present are used (val is carved from train when there is no ``val``).
Workers decode and resize each sample to the model input's H, W; the rest of the
pipeline (augment, normalise) runs on the batch on the device. Every file is opened
through ``imagefiles.py``: its header is checked when the folder is scanned, and a file
that cannot be used stops the run with a DataError naming it (a run never trains on
silently fewer images); files that are not images are skipped with a counted warning.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import DataError, warn
from .imagefiles import Place, check_all, check_classes, read_image, read_mask
from .registry import Request, Source, check_task, dataset

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
SPLITS = ("train", "val", "test")
MASK_MODES = {"1", "L", "P", "I", "I;16", "I;16B", "I;16L"}


def load_image(path: str, size: tuple[int, int], mode: str, place: Place | None = None) -> torch.Tensor:
    """A uint8 ``[C, H, W]`` tensor: converted to ``mode`` (L or RGB), resized bilinearly."""
    tensor = torch.from_numpy(read_image(path, size, mode, place or Place(str(Path(path).parent))))
    return tensor.unsqueeze(0) if tensor.dim() == 2 else tensor.permute(2, 0, 1).contiguous()


def load_mask(path: str, size: tuple[int, int] | None = None, place: Place | None = None) -> torch.Tensor:
    """An int64 ``[H, W]`` class-index mask (palette indices for P images), resized nearest."""
    return torch.from_numpy(read_mask(path, size, MASK_MODES, place or Place(str(Path(path).parent))))


class ImageFiles(torch.utils.data.Dataset):
    """``(image, class index)`` items from a list of files."""

    def __init__(self, samples: list[tuple[str, int]], size: tuple[int, int], mode: str, place: Place):
        self.samples, self.size, self.mode, self.place = samples, size, mode, place

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        return load_image(path, self.size, self.mode, self.place), target

    def decode_settings(self) -> dict:
        """What decoding depends on besides the files (the decode cache's key, ``decode_cache.py``)."""
        return {"kind": "image", "size": list(self.size), "mode": self.mode}

    def sample_files(self, index: int) -> tuple[list[str], int]:
        """The files sample ``index`` is read from, and its target."""
        path, target = self.samples[index]
        return [path], target


class SegmentationFiles(torch.utils.data.Dataset):
    """``(image, mask)`` items from a list of file pairs; every mask value must be a class or
    ``ignore_index`` (checked as each mask is read: a value the loss cannot take names its file)."""

    def __init__(self, samples: list[tuple[str, str]], size: tuple[int, int], mode: str, place: Place,
                 num_classes: int, ignore_index: int | None = None):
        self.samples, self.size, self.mode, self.place = samples, size, mode, place
        self.num_classes, self.ignore_index = num_classes, ignore_index

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        image, mask_path = self.samples[index]
        mask = read_mask(mask_path, self.size, MASK_MODES, self.place)
        check_classes(mask, mask_path, self.num_classes, self.ignore_index, self.place)
        return load_image(image, self.size, self.mode, self.place), torch.from_numpy(mask)

    def decode_settings(self) -> dict:
        """What decoding depends on besides the files: size, mode and the mask checks."""
        return {"kind": "segmentation", "size": list(self.size), "mode": self.mode, "masks": sorted(MASK_MODES),
                "num_classes": self.num_classes, "ignore_index": self.ignore_index}

    def sample_files(self, index: int) -> tuple[list[str], str]:
        return list(self.samples[index]), ""


def _image_geometry(name: str, request: Request) -> tuple[tuple[int, int], str]:
    shape = request.input_shape
    if len(shape) != 3 or shape[0] not in (1, 3) or request.input_dtype != "float32":
        raise DataError(f"`{name}` gives images; the model's input must be [1, H, W] (grey) or [3, H, W] "
                        f"(RGB) float32, not {list(shape)} {request.input_dtype}", request.options.where("dataset"))
    return (shape[1], shape[2]), ("L" if shape[0] == 1 else "RGB")


def _split_roots(name: str, request: Request) -> dict[str, Path]:
    root = request.options.root
    if not root.is_dir():
        raise DataError(f"`{name}`: the folder {root.resolve()} does not exist", request.options.where("root"),
                        "point `root:` at the dataset folder")
    if (root / "train").is_dir():
        return {split: root / split for split in SPLITS if (root / split).is_dir()}
    return {"train": root}


def _images_in(folder: Path, skipped: list[Path]) -> list[Path]:
    """The image files under ``folder`` (any depth), sorted; other entries that are not folders
    (``.DS_Store``, ``Thumbs.db``, notes, broken links) go to ``skipped``."""
    images = []
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            images.append(path)
        elif not path.is_dir():
            skipped.append(path)
    return images


def _say_skipped(name: str, skipped: list[Path], place: Place) -> None:
    """One warning for every file that is not an image, with a count and the first few names."""
    if skipped:
        shown = ", ".join(place.name(p) for p in skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        warn(f"`{name}`: skipped {len(skipped)} file(s) that are not images ({', '.join(sorted(IMAGE_SUFFIXES))}) "
             f"under {place.root}: {shown}")


def _place(request: Request) -> Place:
    return Place(str(request.options.root), request.options.where("root"))


@dataset("imagefolder")
def imagefolder(request: Request) -> Source:
    """A folder per class (``root/<class>/*.png``), or the same under train/val/test."""
    check_task("imagefolder", "classification", request.task)
    size, mode = _image_geometry("imagefolder", request)
    roots, loc, place = _split_roots("imagefolder", request), request.options.where("root"), _place(request)
    classes = sorted(d.name for d in roots["train"].iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"`imagefolder`: no class folders in {roots['train'].resolve()}", loc,
                        "put each class's images in a folder named after it: root/<class>/<image>.png")
    index = {c: i for i, c in enumerate(classes)}
    splits, skipped = {}, []
    for split, folder in roots.items():
        samples = []
        for sub in sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")):
            if sub.name not in index:
                raise DataError(f"`imagefolder`: {sub.resolve()} is a class that the training split lacks", loc,
                                f"the classes are those under {roots['train'].resolve()}: {', '.join(classes)}")
            images = _images_in(sub, skipped)
            if not images and split == "train":
                raise DataError(f"`imagefolder`: the class folder {place.name(sub)} has no images "
                                f"({', '.join(sorted(IMAGE_SUFFIXES))})", loc,
                                "add its images, or remove the folder if it is not a class")
            samples += [(str(p), index[sub.name]) for p in images]
        if not samples:
            raise DataError(f"`imagefolder`: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under "
                            f"{folder.resolve()}", loc)
        check_all([path for path, _ in samples], place)
        splits[split] = ImageFiles(samples, size, mode, place)
    _say_skipped("imagefolder", skipped, place)
    return Source("classification", splits["train"], splits.get("test"), splits.get("val"),
                  num_classes=len(classes), class_names=classes, scale=1 / 255)


def _pairs(folder: Path, loc, place: Place) -> list[tuple[str, str]]:
    images_dir, masks_dir = folder / "images", folder / "masks"
    for sub in (images_dir, masks_dir):
        if not sub.is_dir():
            raise DataError(f"`segfolder`: the folder {sub.resolve()} does not exist", loc,
                            "segfolder reads root/images/<name>.png|jpg and root/masks/<name>.png")
    images = {p.stem: p for p in sorted(images_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()}
    masks = {p.stem: p for p in sorted(masks_dir.iterdir()) if p.suffix.lower() == ".png" and p.is_file()}
    kept = set(images.values()) | set(masks.values())
    _say_skipped("segfolder", [p for d in (images_dir, masks_dir) for p in sorted(d.iterdir()) if p not in kept], place)
    if not images:
        raise DataError(f"`segfolder`: no images in {images_dir.resolve()}", loc)
    for stem, mask in masks.items():
        if stem not in images:
            raise DataError(f"`segfolder`: the mask {mask.resolve()} has no image {stem}.* in "
                            f"{images_dir.resolve()}", loc, "remove the mask or add its image")
    for stem, image in images.items():
        if stem not in masks:
            raise DataError(f"`segfolder`: the image {image.resolve()} has no mask {stem}.png in "
                            f"{masks_dir.resolve()}", loc, "add its mask (a PNG of class indices) or remove it")
    pairs = [(str(images[s]), str(masks[s])) for s in sorted(images)]
    check_all([image for image, _ in pairs], place)
    check_all([mask for _, mask in pairs], place, "mask")
    return pairs


def _count_classes(pairs: list[tuple[str, str]], place: Place, ignore_index: int | None) -> int:
    """Classes seen in (a seeded subset of up to 1000 of) the training masks, ``ignore_index`` aside."""
    from PIL import Image

    with Image.open(pairs[0][1]) as first:
        if first.mode not in MASK_MODES:
            raise DataError(f"`segfolder`: the mask {place.name(pairs[0][1])} is a {first.mode} image, not class "
                            "indices", place.location,
                            "save masks as single-channel (L or P) PNGs whose pixel values are class indices")
    chosen = np.random.default_rng(0).permutation(len(pairs))[:1000]
    most = -1
    for i in chosen:
        mask = load_mask(pairs[i][1], None, place)
        kept = mask[mask != ignore_index] if ignore_index is not None else mask
        most = max(most, int(kept.max()) if kept.numel() else -1)
    return most + 1


@dataset("segfolder")
def segfolder(request: Request) -> Source:
    """Images and class-index masks with matching names (``images/``, ``masks/``)."""
    check_task("segfolder", "segmentation", request.task)
    size, mode = _image_geometry("segfolder", request)
    roots, loc, place = _split_roots("segfolder", request), request.options.where("root"), _place(request)
    pairs = {split: _pairs(folder, loc, place) for split, folder in roots.items()}
    num_classes = request.options.num_classes or max(2, _count_classes(pairs["train"], place, request.ignore_index))
    splits = {split: SegmentationFiles(p, size, mode, place, num_classes, request.ignore_index)
              for split, p in pairs.items()}
    return Source("segmentation", splits["train"], splits.get("test"), splits.get("val"),
                  num_classes=num_classes, class_names=None, scale=1 / 255)
