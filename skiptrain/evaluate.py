"""Metrics for a model on a split: loss, accuracy, top-5 and a confusion matrix, or IoU."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class Metrics:
    """Running sums over batches, kept on the model's device so that no batch waits for the
    GPU; ``summary()`` reads them back once and turns them into the reported numbers."""

    task: str
    num_classes: int | None
    loss_sum: torch.Tensor | float = 0.0
    samples: int = 0
    top5_correct: torch.Tensor | int = 0
    confusion: torch.Tensor | None = None

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        output = output.float()
        n = target.shape[0]
        if self.task == "regression":
            self.loss_sum += F.mse_loss(output, target.float(), reduction="sum") / max(1, output[0].numel())
            self.samples += n
            return
        self.loss_sum += F.cross_entropy(output, target, reduction="sum") / max(1, target[0].numel())
        self.samples += n
        k = self.num_classes or output.shape[1]
        predicted = output.argmax(dim=1)
        pairs = target.reshape(-1) * k + predicted.reshape(-1)
        counts = torch.bincount(pairs, minlength=k * k).reshape(k, k)
        self.confusion = counts if self.confusion is None else self.confusion + counts
        if self.task == "classification" and k > 5:
            top5 = output.topk(5, dim=1).indices
            self.top5_correct += (top5 == target[:, None]).any(dim=1).sum()

    def summary(self) -> dict[str, Any]:
        result: dict[str, Any] = {"loss": float(self.loss_sum) / max(1, self.samples)}
        if self.confusion is None:
            return result
        self.confusion = self.confusion.cpu()
        confusion = self.confusion.double()
        correct = confusion.diag()
        if self.task == "classification":
            result["acc"] = (correct.sum() / confusion.sum().clamp(min=1)).item()
            if self.num_classes and self.num_classes > 5:
                result["top5"] = int(self.top5_correct) / max(1, self.samples)
            result["per_class_acc"] = (correct / confusion.sum(dim=1).clamp(min=1)).tolist()
        else:
            union = confusion.sum(dim=0) + confusion.sum(dim=1) - correct
            iou = correct / union.clamp(min=1)
            present = union > 0
            result["miou"] = iou[present].mean().item() if present.any() else 0.0
            result["pixel_acc"] = (correct.sum() / confusion.sum().clamp(min=1)).item()
            result["per_class_iou"] = iou.tolist()
        return result


def evaluate(model: nn.Module, batches: Iterable, task: str, num_classes: int | None,
             autocast=None, prepare=None) -> dict[str, Any]:
    """Run ``model`` in eval mode over every batch of a split; returns the metric summary."""
    metrics = Metrics(task, num_classes)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for x, y in batches:
            if prepare is not None:
                x = prepare(x)
            if autocast is not None:
                with autocast():
                    out = model(x)
            else:
                out = model(x)
            metrics.update(out, y)
    model.train(was_training)
    summary = metrics.summary()
    if metrics.confusion is not None:
        summary["confusion"] = metrics.confusion.tolist()
    return summary


def evaluate_checkpoint(source: str, split: str = "test", which: str = "last", device: str = "auto") -> dict[str, Any]:
    """Rebuild a checkpoint's model and data (same config, same seed) and measure one split."""
    from . import checkpoint
    from .config import load_config
    from .data import load_data
    from .errors import DataError
    from .training.setup import select_device

    state = checkpoint.read(source, which)
    config = load_config(state["config"])
    model, _ = checkpoint.load_checkpoint(state["path"])
    dev = select_device(device)
    model.to(dev)
    meta = state.get("data") or {}
    task = meta.get("task", "classification")
    data = load_data(config.data, input_shape=tuple(model.meta["skiptrain"]["input_shape"]),
                     input_dtype=model.meta["skiptrain"]["input_dtype"], task=task, device=dev,
                     seed=int(config.train.get("seed", 0)))
    batches = getattr(data, split)
    if batches is None:
        raise DataError(f"`{data.name}` has no {split} split", None,
                        "use --split val, or set data.val_fraction above 0" if split == "val" else "use --split val")
    result = evaluate(model, batches.epoch(0), task, data.num_classes)
    if "acc" in result:
        result["accuracy"] = result["acc"]  # the documented name; `acc` matches metrics.jsonl's val_acc
    result.update(split=split, checkpoint=state["path"], epoch=state["epoch"], task=task,
                  class_names=data.class_names)
    return result


def plot_confusion(confusion: list[list[int]], class_names: list[str] | None, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(confusion)
    names = class_names or [str(i) for i in range(k)]
    fig, ax = plt.subplots(figsize=(min(12, 2 + 0.5 * k), min(12, 2 + 0.5 * k)))
    ax.imshow(confusion, cmap="Blues")
    if k <= 30:
        ax.set_xticks(range(k), names, rotation=90)
        ax.set_yticks(range(k), names)
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(confusion[i][j]), ha="center", va="center", fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
