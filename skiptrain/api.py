"""The Python API that every command goes through: a source in, a plan, a model, a run or a report out.

A *source* is a config path, a dict (a full config or a bare model section) or a
``Config``; ``--set`` overrides apply to any of them, and a given ``Config`` is never
changed. A *checkpoint source* is a run directory or a ``.pt`` file.

    plan = skiptrain.check_model("configs/quickstart.yaml")
    summary = skiptrain.train("configs/quickstart.yaml", ["train.epochs=2"])
    model, config = skiptrain.load_checkpoint(summary["run_dir"])
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Union

from .config import Config, LocatedDict, apply_override, load_config, where
from .spec import expand

Source = Union[str, Path, dict, Config]


def load(source: Source, overrides: Iterable[str] = (), origin: str = "<dict>") -> Config:
    """The config a source describes, overrides applied: always a fresh ``Config`` of the caller's own."""
    if isinstance(source, Config):
        config = copy.deepcopy(source)
        overrides = list(overrides)
        if overrides:
            root = LocatedDict({"model": config.model, "data": config.data, "train": config.train})
            for override in overrides:
                apply_override(root, override)
            config = Config(root["model"], root["data"], root["train"], config.path)
        return config
    if isinstance(source, dict) and not isinstance(source, LocatedDict) and "model" not in source:
        source = {"model": source}  # a bare model section
    return load_config(source, overrides, origin)


def check_model(source: Source, overrides: Iterable[str] = (), strict: bool = False):
    """Expand, infer every shape on meta tensors and plan the projections: no weights allocated."""
    from .shapes import infer

    config = source if isinstance(source, Config) and not overrides else load(source, overrides)
    return infer(expand(config.model, strict=strict))


def check_config(source: Source, overrides: Iterable[str] = (), strict: bool = False):
    """``check_model``, and the ``data:`` and ``train:`` sections' keys and values too (no data is
    read): a typo there is found by ``skiptrain validate``, not minutes later by ``train``."""
    from .data import parse_options
    from .data.prepare import check_input
    from .data.registry import get_dataset
    from .settings import parse_settings

    config = load(source, overrides)
    plan = check_model(config, strict=strict)
    if config.data:
        options = parse_options(config.data)
        get_dataset(options.dataset, where(config.data, "dataset"))
        check_input(options, plan.graph.input_shape, plan.graph.input_dtype)  # normalize: imagenet on 1 channel
    from .id_patterns import check as check_ids  # train.freeze and param_groups name the plan's ids

    check_ids(plan, parse_settings(config.train or {}), config.train or {})
    return plan


def build_model(source: Source, overrides: Iterable[str] = (), strict: bool = False, device=None):
    """The ``torch.nn.Module`` (a ``SkipNet``; ``print(model.code)`` shows its forward) that a config describes."""
    from .module import build_module

    return build_module(check_model(source, overrides, strict), device=device)


@dataclass
class Restored:
    """A checkpoint made whole: its state, its config, the plan and the model with its weights (eval mode)."""

    state: Any  # checkpoint.TrainingState
    config: Config
    plan: Any  # shapes.ModelPlan
    model: Any  # module.SkipNet

    @property
    def data(self) -> dict[str, Any]:
        """What training knew of the data: task, class names, mean and std ({} if nothing)."""
        return dict(self.state.data or {})


def _warn(text: str) -> None:
    from .errors import warn

    warn(text)


def restore(source: str | Path, which: str = "last", device=None,
            on_fallback: Callable[[str], None] | None = _warn) -> Restored:
    """The one way to get a model from a run directory or checkpoint (eval, export, predict all use it).

    A broken last checkpoint of a run falls back to the previous one with a ``SkiptrainWarning``
    (``on_fallback``); ``on_fallback=None`` refuses instead (``export``: never ship older weights quietly).
    Structure and weights are checked against the checkpoint's own config before anything is loaded."""
    from . import checkpoint
    from .module import build_module
    from .training.setup import check_weights

    state = checkpoint.read(source, which, on_fallback=on_fallback)
    config = load(state.config, origin=f"the config in {state.path}")
    plan = check_model(config)
    check_weights(plan, "building the checkpoint's model", device)  # before allocating, with the figure
    model = build_module(plan, device=device)
    state.restore(model)
    model.meta["skiptrain"]["data"] = dict(state.data or {})
    return Restored(state, config, plan, model.eval())


def load_checkpoint(source: str | Path, which: str = "last", device=None):
    """``(model, config)`` from a checkpoint or run directory: the model in eval mode (a fallback to the
    previous checkpoint is a ``SkiptrainWarning``)."""
    restored = restore(source, which, device)
    return restored.model, restored.config


def train(source: Source | None = None, overrides: Iterable[str] = (), *, resume: str | Path | None = None,
          run_dir: str | Path | None = None, epochs: int | None = None, device: str | None = None,
          quiet: bool = False, force: bool = False, limit_batches: int | None = None,
          on_warning: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train a config end to end (or continue ``resume``: a run directory or checkpoint, whose own
    config is used when ``source`` is None). Returns the summary also written to summary.json."""
    from . import checkpoint
    from .errors import ConfigError
    from .training.loop import run_training

    if source is None and resume is None:
        raise ConfigError("nothing to train: give a config, or resume a run directory", None,
                          "skiptrain train CONFIG, or skiptrain train --resume RUN_DIR")
    state = checkpoint.read(resume, on_fallback=on_warning or _warn) if resume is not None else None
    config = load(state.config if source is None else source, overrides,
                  origin=f"the config in {state.path}" if state is not None else "<dict>")
    if epochs is not None:
        config.train["epochs"] = epochs
    if state is not None:  # the same model on the same data, or nothing is written
        from .checkpoint_checks import refuse_changes

        refuse_changes(state.path, state.config, config.to_dict())
    if run_dir is not None and os.environ.get("RANK", "0") == "0":  # refuse a folder skiptrain may not
        from .training.rundir import target  # write into before building anything (rank 0 writes it)

        target(".", "run", run_dir, force, None if state is None else state.path)
    return run_training(config, state=state, run_dir=None if run_dir is None else str(run_dir), device=device,
                        quiet=quiet, force=force, limit_batches=limit_batches)


def evaluate(source: str | Path, split: str = "test", which: str = "last", device: str = "auto",
             confusion_png: bool = False) -> dict[str, Any]:
    """Rebuild a checkpoint's model and data (same config, same seed) and measure one split; with
    ``confusion_png``, also plot the confusion matrix to RUN_DIR/confusion_SPLIT.png (`confusion_png`) when
    the checkpoint is a run's; nothing is written beside a checkpoint that is not in a run directory."""
    from .errors import DataError
    from .evaluate import evaluate as measure
    from .training.setup import select_device

    dev = select_device(device)
    restored = restore(source, which, device=dev)
    task, data = restored_data(restored, dev)
    batches = getattr(data, split)
    if batches is None:
        raise DataError(f"`{data.name}` has no {split} split", None,
                        "use --split val, or set data.val_fraction above 0" if split == "val" else "use --split val")
    result = measure(restored.model, batches.epoch(0), task, data.num_classes)
    if "acc" in result:
        result["accuracy"] = result["acc"]  # the documented name; `acc` matches metrics.jsonl's val_acc
    result.update(split=split, checkpoint=restored.state.path, epoch=restored.state.epoch, task=task,
                  class_names=data.class_names)
    run_dir = Path(restored.state.path).parent.parent
    if confusion_png and result.get("confusion") and _is_run(run_dir):  # never beside a loose checkpoint
        from .evaluate import plot_confusion

        image = run_dir / f"confusion_{split}.png"
        names = data.class_names or [str(i) for i in range(len(result["confusion"]))]
        if plot_confusion(result["confusion"], names, image):  # a read-only run: a warning (evaluate.py)
            result["confusion_png"] = str(image)
    return result


def restored_data(restored: Restored, device) -> tuple[str, Any]:
    """``(task name, data)`` of a restored checkpoint: its config's data, rebuilt with the same seed and
    checked to be the data it trained on (``eval`` and ``report`` measure on it)."""
    from . import tasks
    from .data import check_same_data, load_data
    from .settings import parse_settings

    meta = restored.model.meta["skiptrain"]
    task = restored.data.get("task") or tasks.guess(meta["input_shape"], meta["output_shape"]).name
    data = load_data(restored.config.data, input_shape=tuple(meta["input_shape"]), input_dtype=meta["input_dtype"],
                     task=task, device=device, seed=int(restored.config.train.get("seed", 0)),
                     ignore_index=parse_settings(restored.config.train or {}).loss.get("ignore_index"))
    check_same_data(restored.data, data, restored.state.path)
    return task, data


def report(source: str | Path, output: str | Path | None = None, *, overwrite: bool = False, device: str = "auto",
           which: str | None = None, samples: int = 24) -> dict[str, Any]:
    """Write a run directory's self-contained HTML report (RUN_DIR/report.html unless ``output``): curves,
    diagram, the checkpoint measured on the validation split (best.pt when there is one, else last.pt),
    its worst samples, transfer, config and versions. Returns ``output``, ``bytes`` and ``seconds``."""
    from .html_report import write_report

    return write_report(source, output, overwrite=overwrite, device=device, which=which, samples=samples)


def export(source: str | Path, output: str | Path, opset: int | None = None, batch: str | int = "dynamic",
           verify: bool = True) -> dict[str, Any]:
    """Export a run directory, checkpoint or config (random weights) to ONNX; verified unless told not to."""
    from .export import export_onnx

    return export_onnx(source, output, opset=opset, batch=batch, verify=verify)


def eject(source: str | Path, output: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Write the model of a config, run directory or checkpoint as one standalone PyTorch file (no skiptrain)."""
    from .eject import eject as write_file

    return write_file(source, output, overwrite=overwrite)


def import_model(target: str, input_shape: str | list[int], output: str | Path, kwargs: str | dict | None = None,
                 weights: str | Path | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Write the PyTorch model that ``target`` (``module:callable``, called with ``kwargs``) returns as skiptrain
    YAML, checked by rebuilding it (same keys and parameters, bitwise-equal outputs); ``weights`` also writes
    its state dict as safetensors for ``train.init``."""
    from .importer import import_model as write_config

    return write_config(target, input_shape, output, kwargs=kwargs, weights=weights, overwrite=overwrite)


def predict(source: str | Path, inputs: Iterable[str | Path], top: int = 5,
            output_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Predictions of a run directory, checkpoint or .onnx file on images, arrays or folders of them."""
    from .predict import predict as run_predict

    return run_predict(source, inputs, top=top, output_dir=output_dir)


def sample(source: str | Path, prompt: str = "", tokens: int = 300, temperature: float = 0.8, top_k: int | None = 40,
           seed: int = 1, device: str = "cpu", which: str = "last", cache: bool = True,
           on_text: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Text from a language-model run (nanoGPT's sampling, seeded, with a key/value cache): ``text`` is the
    prompt and what followed, each piece also handed to ``on_text`` as it is decoded (see generation.py)."""
    from .generation import sample as generate_text

    return generate_text(source, prompt, tokens, temperature, top_k, seed, device, which, cache, on_text)


def gradflow(source: Source, overrides: Iterable[str] = (), *, steps: int = 0, device: str = "cpu",
             plot: str | Path | None = None) -> dict[str, Any]:
    """Per-layer gradient norms at initialisation (and after ``steps`` training steps); with ``plot``,
    also that figure as a PNG (its path in the result's ``png``)."""
    from .gradflow import gradflow as measure, plot_gradflow

    result = measure(load(source, overrides), steps=steps, device=device)
    if plot is not None:
        result["png"] = str(plot_gradflow([(result["name"], result)], plot))
    return result


def compare(sources: Iterable[Source], overrides: Iterable[str] = (), **options: Any) -> dict[str, Any]:
    """Train several configs on the same data, seed and budget; the report compare.json holds."""
    from .compare import compare as run_compare

    return run_compare(list(sources), overrides, **options)


def _is_run(path: Path) -> bool:
    from .training.rundir import run_id

    return run_id(path) is not None
