"""Data: the ``data:`` section -> batches on the device, deterministic per (seed, epoch).

``load_data`` looks the dataset up in the registry (``registry.py``), which gives its
splits as in-memory tensors or as file datasets; the validation split, normalisation,
augmentation and batching are then the same for every dataset.

    bundle = load_data(cfg.data, input_shape=(1, 8, 8), device="cuda", seed=0)
    for x, y in bundle.train.epoch(epoch):   # x, y already on the device
        ...
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from ..errors import DataError, choices_hint
from ..tasks import DEFAULT, TASKS
from . import builtin, folders, text, vision  # noqa: F401  (register the datasets)
from .augment import AUGMENTATIONS, augmentation, check_applicable
from .batches import SUBSET, Batches, LoaderBatches, Pipeline, Plan, TensorBatches, cpu_generator, located
from .decode_cache import CachedBatches
from .options import DataOptions, parse_options
from .prepare import carve, check_fits, normalization, take
from .registry import DATASETS, Request, Source, dataset, get_dataset

__all__ = ["DataBundle", "Batches", "load_data", "check_same_data", "dataset_names", "dataset", "DATASETS",
           "augmentation", "AUGMENTATIONS", "DataOptions", "Request", "Source"]

INPUT_DTYPES = ("float32", "int64")
STATS_SAMPLES = 1000  # file datasets: normalize: auto measures this many training images


@dataclass
class DataBundle:
    name: str  # dataset name
    task: str  # a name in skiptrain.tasks.TASKS
    train: Batches
    val: Batches | None
    test: Batches | None
    input_shape: tuple[int, ...]  # shape of one sample as the model receives it
    num_classes: int | None
    class_names: list[str] | None
    mean: list[float] | None  # per-channel normalisation applied to inputs (None if none)
    std: list[float] | None
    meta: dict = field(default_factory=dict)  # the dataset's own facts for the checkpoint (text: its tokenizer)
    run_files: dict = field(default_factory=dict)  # name -> text, written into the run directory


def check_same_data(stored: dict | None, bundle: DataBundle, checkpoint: str) -> None:
    """A resumed or evaluated run must read the data its checkpoint was trained on, where the dataset
    records it (``meta``: text's tokenizer and digest): token ids are positions in that vocabulary."""
    for key, value in bundle.meta.items():
        if stored and key in stored and stored[key] != value:
            raise DataError(f"`{bundle.name}` is not the data {checkpoint} was trained on: its `{key}` changed",
                            None, "put the files under data.root back as they were, or train a new run on "
                                  "the new data (train CONFIG --run-dir NEW)")


def dataset_names() -> list[str]:
    return sorted(DATASETS)


def load_data(data: dict, *, input_shape: tuple[int, ...], input_dtype: str = "float32",
              task: str | None = DEFAULT, device="cpu", seed: int = 0,
              rank: int = 0, world_size: int = 1, ignore_index: int | None = None) -> DataBundle:
    """Build the batches of the ``data:`` section for a model taking ``input_shape`` samples.

    ``task`` must match the dataset's (a DataError otherwise); None accepts the dataset's
    own task (shapes: segmentation, synthetic: classification), reported as ``bundle.task``.

    ``ignore_index`` (``train.loss.ignore_index``) is the one target value besides the classes
    that a segmentation mask may hold.

    With ``world_size > 1`` the training batches are this rank's contiguous share of each
    global batch of ``batch_size``; validation and test batches are whole on every rank.
    """
    options = parse_options(data, seed)
    input_shape = tuple(int(d) for d in input_shape)
    if task is not None and task not in TASKS:
        raise DataError(f"unknown task `{task}`", None, choices_hint(task, TASKS.names(), "tasks"))
    if input_dtype not in INPUT_DTYPES:
        raise DataError(f"unsupported input dtype `{input_dtype}`", None, choices_hint(input_dtype, INPUT_DTYPES, "dtypes"))
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of {world_size}")
    if options.batch_size % world_size:
        raise DataError(f"batch_size {options.batch_size} does not split evenly over {world_size} processes",
                        options.where("batch_size"),
                        f"use a multiple of {world_size}: batch_size is the global batch, each process "
                        f"gets batch_size / {world_size}")
    source = get_dataset(options.dataset, options.where("dataset"))(Request(options, input_shape, input_dtype, task,
                                                                                 ignore_index))
    if source.batches is not None:  # it batches itself (text: windows of a token stream)
        train, val, test = source.batches(torch.device(device), rank, world_size)
        return _bundle(options, source, input_shape, train, val, test, None, None)
    build = _in_memory if source.in_memory else _from_files
    return build(options, source, input_shape, input_dtype == "float32", torch.device(device), rank, world_size)


def _bundle(options: DataOptions, source: Source, input_shape, train, val, test, mean, std) -> DataBundle:
    return DataBundle(name=options.dataset, task=source.task, train=train, val=val, test=test,
                      input_shape=input_shape, num_classes=source.num_classes,
                      class_names=source.class_names, mean=mean, std=std, meta=dict(source.meta),
                      run_files=dict(source.run_files))


def _pipelines(options: DataOptions, source: Source, input_shape, float_input: bool, mean, std):
    as_tensor = (lambda v: None if v is None else torch.tensor(v, dtype=torch.float32))
    train = Pipeline(input_shape, source.scale, as_tensor(mean), as_tensor(std), list(options.augment),
                     spatial_targets=TASKS.get(source.task).spatial_targets, float_input=float_input)
    return train, replace(train, steps=[])


def _check_train_size(options: DataOptions, count: int, world_size: int) -> None:
    if count < world_size:
        raise DataError(f"`{options.dataset}` has {count} training samples, fewer than the "
                        f"{world_size} processes", options.where("dataset"))


def _in_memory(options, source, input_shape, float_input, device, rank, world_size) -> DataBundle:
    """Tensors on the device, batched there with index tensors."""
    train, val = source.train, source.val
    sample = tuple(train[0].shape[1:])
    check_fits(options.dataset, sample, input_shape, options.where("dataset"))
    if val is None and options.val_fraction > 0:
        keep, held = carve(len(train[0]), options.val_fraction, options.seed)
        train, val = take(train, keep), (take(train, held) if len(held) else None)
    _check_train_size(options, len(train[0]), world_size)
    check_applicable(options.augment, sample, float_input)
    channels = sample[0] if len(sample) >= 2 else 1
    mean = std = None  # token ids are never normalised
    if float_input:
        mean, std = normalization(options, channels,
                                  lambda: (part.float() * source.scale for part in train[0].split(8192)))
    train_pipe, eval_pipe = _pipelines(options, source, input_shape, float_input, mean, std)

    def evaluation(split):
        if split is None or not len(split[0]):
            return None
        return TensorBatches(*split, Plan(len(split[0]), options.batch_size, train=False), eval_pipe, device)

    train_batches = TensorBatches(*train, Plan(len(train[0]), options.batch_size, True, options.seed, rank,
                                               world_size), train_pipe, device, augment=bool(options.augment))
    return _bundle(options, source, input_shape, train_batches, evaluation(val), evaluation(source.test),
                   mean, std)


def _from_files(options, source, input_shape, float_input, device, rank, world_size) -> DataBundle:
    """File datasets through DataLoaders; the batch pipeline then runs on the device."""
    train, val = source.train, source.val
    if val is None and options.val_fraction > 0:
        keep, held = carve(len(train), options.val_fraction, options.seed)
        val = torch.utils.data.Subset(train, held.tolist()) if len(held) else None
        train = torch.utils.data.Subset(train, keep.tolist())
    _check_train_size(options, len(train), world_size)
    check_applicable(options.augment, input_shape, float_input)
    mean, std = normalization(options, input_shape[0], lambda: _stat_batches(options, source, train))
    train_pipe, eval_pipe = _pipelines(options, source, input_shape, float_input, mean, std)

    def evaluation(split):
        if split is None or not len(split):
            return None
        return files(split, Plan(len(split), options.batch_size, train=False), eval_pipe, device,
                     options.num_workers)

    files = CachedBatches if options.cache else LoaderBatches  # decoded once, or every epoch
    train_batches = files(train, Plan(len(train), options.batch_size, True, options.seed, rank, world_size),
                          train_pipe, device, options.num_workers, augment=bool(options.augment))
    return _bundle(options, source, input_shape, train_batches, evaluation(val), evaluation(source.test),
                   mean, std)


def _stat_batches(options: DataOptions, source: Source, train):
    """Input batches (in input units) of a seeded subset of up to STATS_SAMPLES training images."""
    chosen = torch.randperm(len(train), generator=cpu_generator(options.seed, SUBSET))[:STATS_SAMPLES]
    subset = torch.utils.data.Subset(train, sorted(chosen.tolist()))
    loader = torch.utils.data.DataLoader(subset, batch_size=64, num_workers=min(options.num_workers, 4))
    for x, _ in located(loader, lambda batch: range(batch * 64, min(len(subset), batch * 64 + 64))):
        yield x.float() * source.scale
