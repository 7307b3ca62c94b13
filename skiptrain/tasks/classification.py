"""Classification: one class per sample; cross-entropy, accuracy, top-5 and per-class accuracy."""
from __future__ import annotations

from typing import Any

from ..errors import DataError
from .base import ConfusionMetrics, Table, Task, class_name, register


class ClassificationMetrics(ConfusionMetrics):
    counts = (*ConfusionMetrics.counts, "top5_correct")

    def __init__(self, num_classes: int | None):
        super().__init__(num_classes)
        self.top5_correct: Any = 0

    def update(self, output, target) -> None:
        super().update(output, target)
        if (self.num_classes or output.shape[1]) > 5:
            top5 = output.topk(5, dim=1).indices
            self.top5_correct += (top5 == target[:, None]).any(dim=1).sum()

    def scores(self, confusion) -> dict[str, Any]:
        correct = confusion.diag()
        result = {"acc": (correct.sum() / confusion.sum().clamp(min=1)).item()}
        if self.num_classes and self.num_classes > 5:
            result["top5"] = int(self.top5_correct) / max(1, self.samples)
        result["per_class_acc"] = (correct / confusion.sum(dim=1).clamp(min=1)).tolist()
        return result


@register
class Classification(Task):
    name = "classification"
    headline, label, higher_is_better = "acc", "accuracy", True
    shown = ("loss", "acc", "top5")
    answer_key = "top"
    per_class = ("per_class_acc", "accuracy")

    def metrics(self, num_classes):
        return ClassificationMetrics(num_classes)

    def check_output(self, model_out, data, location) -> None:
        if data.num_classes and model_out != self.output_shape(data.input_shape, data.num_classes):
            raise DataError(f"the model outputs {list(model_out)}, but `{data.name}` has {data.num_classes} classes",
                            location, f"make the last layer output {data.num_classes} values "
                                      f"(e.g. `out_features: {data.num_classes}`)")

    def synthetic_targets(self, count, input_shape, width, generator, location=None):
        import torch

        return torch.randint(0, width, (count,), generator=generator)

    def predict(self, outputs, labels, *, class_names=None, top=5, output_dir=None) -> list[dict[str, Any]]:
        """The ``top`` classes of each sample with their softmax probabilities, best first."""
        import numpy as np

        answers = []
        for label, logits in zip(labels, outputs.astype(np.float64)):
            probs = np.exp(logits - logits.max())
            probs /= probs.sum()
            order = np.argsort(-probs, kind="stable")[:max(1, top)]
            ranked = [{"class": int(i), "name": class_name(class_names, int(i)), "probability": float(probs[i])}
                      for i in order]
            answers.append({"input": label, **ranked[0], "top": ranked})
        return answers

    def table(self, answers) -> Table:
        return ["input", "rank", "class", "probability"], [
            [[row["input"] if rank == 1 else "", str(rank), entry["name"], f"{entry['probability']:.4f}"]
             for rank, entry in enumerate(row["top"], 1)] for row in answers]

    def looks_like(self, input_shape, output_shape) -> bool:
        return len(output_shape) == 1

    def show_sample(self, output, target, class_names):
        """The predicted class with its probability, and the true class, by name."""
        top = self.predict(output[None], [""], class_names=class_names, top=1)[0]
        return f"{top['name']} ({top['probability']:.0%})", class_name(class_names, int(target))
