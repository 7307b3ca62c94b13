"""evaluate(): each task's metrics on hand-made outputs whose accuracy, top-5 and IoU are known."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from skiptrain.evaluate import evaluate


def _logits(predicted: list[int], k: int, lowest: list[int] | None = None) -> torch.Tensor:
    """One row per sample: ``predicted`` scores highest; ``lowest`` (if given) scores lowest."""
    out = torch.zeros(len(predicted), k)
    for i, p in enumerate(predicted):
        out[i, p] = 3.0
        if lowest is not None:
            out[i, lowest[i]] = -3.0
    return out


def test_classification_accuracy_top5_per_class_and_confusion_over_two_batches():
    # 6 classes (top-5 is reported above 5); sample 2 is wrong and its class scores lowest: outside the top 5
    target = torch.tensor([0, 1, 2, 3])
    output = _logits([0, 1, 0, 3], 6, lowest=[5, 5, 2, 5])
    batches = [(output[:2], target[:2]), (output[2:], target[2:])]
    result = evaluate(nn.Identity(), batches, "classification", 6)
    assert list(result) == ["loss", "acc", "top5", "per_class_acc", "confusion"]
    assert result["acc"] == pytest.approx(0.75) and result["top5"] == pytest.approx(0.75)
    assert result["loss"] == pytest.approx(F.cross_entropy(output, target).item(), rel=1e-6)
    assert result["per_class_acc"] == pytest.approx([1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    confusion = torch.zeros(6, 6, dtype=torch.long)
    for true, predicted in ((0, 0), (1, 1), (2, 0), (3, 3)):
        confusion[true, predicted] = 1
    assert result["confusion"] == confusion.tolist()


def test_classification_with_five_classes_or_fewer_has_no_top5():
    result = evaluate(nn.Identity(), [(_logits([0, 1, 1], 3), torch.tensor([0, 1, 2]))], "classification", 3)
    assert "top5" not in result and result["acc"] == pytest.approx(2 / 3)


def test_segmentation_iou_pixel_accuracy_and_absent_classes():
    # one 2x2 image: true [[0, 1], [2, 2]], predicted [[0, 1], [2, 1]]; class 3 is nowhere
    target = torch.tensor([[[0, 1], [2, 2]]])
    predicted = torch.tensor([[[0, 1], [2, 1]]])
    output = F.one_hot(predicted, 4).permute(0, 3, 1, 2).float() * 5
    result = evaluate(nn.Identity(), [(output, target)], "segmentation", 4)
    assert list(result) == ["loss", "miou", "pixel_acc", "per_class_iou", "confusion"]
    # IoU: class 0 1/1, class 1 1/2 (one extra pixel predicted), class 2 1/2 (one pixel missed)
    assert result["per_class_iou"] == pytest.approx([1.0, 0.5, 0.5, 0.0])
    assert result["miou"] == pytest.approx(2 / 3)  # class 3: in neither targets nor predictions, not counted
    assert result["pixel_acc"] == pytest.approx(0.75)
    assert result["loss"] == pytest.approx(F.cross_entropy(output, target).item(), rel=1e-6)


def test_regression_reports_the_mean_squared_error_only():
    output = torch.tensor([[1.0, 2.0], [0.0, 0.0], [3.0, -1.0]])
    target = torch.tensor([[1.0, 0.0], [1.0, 1.0], [3.0, 1.0]])
    result = evaluate(nn.Identity(), [(output[:1], target[:1]), (output[1:], target[1:])], "regression", None)
    assert result == pytest.approx({"loss": F.mse_loss(output, target).item()})


def test_evaluate_prepares_inputs_under_autocast_and_restores_training_mode():
    model = nn.Linear(3, 2)
    model.train()
    calls = []

    def prepare(x):
        calls.append("prepare")
        return x

    def autocast():
        calls.append("autocast")
        return torch.autocast("cpu", enabled=False)

    evaluate(model, [(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))], "classification", 2, autocast, prepare)
    assert calls == ["prepare", "autocast"] and model.training


def test_an_unknown_task_is_a_config_error_with_a_suggestion():
    from skiptrain.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown task `clasification`") as info:
        evaluate(nn.Identity(), [], "clasification", 3)
    assert "classification" in info.value.hint
