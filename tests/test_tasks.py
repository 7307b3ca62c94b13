"""The task registry: every registered task is tested here, and a new task is one class.

The parametrized tests run over ``TASKS``: each task's loss, its metrics' keys, its headline
and direction, its fit check and its answers. The last test registers a toy multi-label task
in ``TASKS.scoped()`` and trains it end to end: adding a task touches no other file.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from skiptrain.errors import ConfigError, DataError
from skiptrain.evaluate import evaluate
from skiptrain.tasks import TASKS, Task, answers_table, get_task, guess, register, reported

INPUT = (1, 6, 6)
WIDTH = 7  # classes (or output values): above 5, so classification reports top-5

# What `skiptrain eval` and summary.json report for the built-in tasks: the keys users rely on.
KEYS = {"classification": ["loss", "acc", "top5", "per_class_acc", "confusion"],
        "segmentation": ["loss", "miou", "pixel_acc", "per_class_iou", "confusion"],
        "regression": ["loss"]}
HEADLINES = {"classification": ("acc", True, "test accuracy"), "segmentation": ("miou", True, "test mean IoU"),
             "regression": ("loss", False, "test loss")}


def sample(task: Task, count: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random outputs of the shape the task needs, and its synthetic targets."""
    generator = torch.Generator().manual_seed(seed)
    target = task.synthetic_targets(count, INPUT, WIDTH, generator)
    output = torch.randn((count, *task.output_shape(INPUT, WIDTH)), generator=generator)
    return output, target


@pytest.fixture(params=TASKS.names())
def task(request) -> Task:
    return TASKS.get(request.param)


def test_the_builtin_tasks_are_registered_by_their_own_modules():
    assert {"classification", "segmentation", "regression"} <= set(TASKS)
    for name in TASKS:
        assert TASKS.get(name).name == name and TASKS.origin(name).startswith("skiptrain.tasks.")


def test_loss_is_a_module_that_trains_on_the_tasks_targets(task):
    output, target = sample(task)
    output.requires_grad_(True)
    loss = task.loss({"name": "auto"})(output, target)
    assert isinstance(task.loss({}), nn.Module) and loss.dim() == 0 and math.isfinite(loss.item())
    loss.backward()
    assert output.grad is not None and output.grad.abs().sum() > 0


def test_metrics_report_the_tasks_keys_and_headline(task):
    output, target = sample(task)
    metrics = task.metrics(WIDTH if task.has_classes else None)
    metrics.update(output[:5], target[:5])
    metrics.update(output[5:], target[5:])
    summary = metrics.summary()
    if task.name in KEYS:
        assert list(summary) == KEYS[task.name]
    assert task.headline in summary and "loss" in summary and set(task.shown) <= set(summary) | {"top5"}
    if task.per_class:
        assert len(summary[task.per_class[0]]) == WIDTH
    whole = evaluate(nn.Identity(), [(output, target)], task.name, WIDTH if task.has_classes else None)
    assert list(whole) == list(summary) and whole[task.headline] == pytest.approx(summary[task.headline])


def test_headline_direction_and_the_result_line(task):
    from skiptrain.training.loop import result_line

    assert isinstance(task.higher_is_better, bool) and task.label
    if task.name in HEADLINES:
        headline, higher, line = HEADLINES[task.name]
        assert (task.headline, task.higher_is_better) == (headline, higher)
        summary = {"test_loss": 0.5, f"test_{task.headline}": 0.25}
        assert result_line(summary) == f"{line}: {summary[f'test_{headline}']:.4f}"
    assert reported({"test_loss": 1.0, f"test_{task.headline}": 0.5}) is task


def test_the_best_checkpoint_follows_the_headline(task):
    assert task.best_metric({"train_loss": 1.0, "val_loss": 1.0, f"val_{task.headline}": 0.5}) == \
        f"val_{task.headline}"
    assert task.best_metric({"train_loss": 1.0}) == ("train_loss" if task.headline == "loss" else None)


def _fit(task: Task, model_in, model_out, data_in=INPUT, classes=WIDTH):
    node = SimpleNamespace(loc=None)
    plan = SimpleNamespace(graph=SimpleNamespace(input_shape=list(model_in), output="head", nodes={"head": node}),
                           output_shape=list(model_out))
    data = SimpleNamespace(name="toy", input_shape=data_in, num_classes=classes if task.has_classes else None)
    task.check_fit(SimpleNamespace(model={}), plan, data)


def test_fit_check_accepts_the_tasks_output_and_refuses_a_wrong_one(task):
    right = task.output_shape(INPUT, WIDTH)
    _fit(task, INPUT, right)
    with pytest.raises(DataError, match=r"the model takes samples of shape \[1, 5, 5\], but `toy` gives \[1, 6, 6\]"):
        _fit(task, (1, 5, 5), right)
    if task.has_classes:
        with pytest.raises(DataError, match=r"the model outputs \[3\]") as info:
            _fit(task, INPUT, (3,))
        assert str(WIDTH) in info.value.hint


def test_fit_check_messages_stay_as_they_were():
    with pytest.raises(DataError) as info:
        _fit(TASKS.get("classification"), INPUT, (3,))
    assert info.value.message == "the model outputs [3], but `toy` has 7 classes"
    with pytest.raises(DataError, match=r"segmentation of `toy` needs \[7, 6, 6\]") as info:
        _fit(TASKS.get("segmentation"), INPUT, (7, 3, 3))
    assert "out_channels: 7" in info.value.hint


def test_answers_and_their_table(task, tmp_path):
    output, _ = sample(task, count=2)
    answers = task.predict(output.numpy(), ["a.png", "b.png"], class_names=None, top=3, output_dir=tmp_path)
    assert [a["input"] for a in answers] == ["a.png", "b.png"] and all(task.answer_key in a for a in answers)
    columns, groups = answers_table(answers)
    assert columns == task.table(answers)[0] and columns[0] == "input"
    assert all(len(row) == len(columns) for group in groups for row in group)


def test_classification_answers_rank_the_top_classes():
    logits = np.log(np.array([[0.1, 0.6, 0.3]]))
    (answer,) = TASKS.get("classification").predict(logits, ["x"], class_names=["a", "b", "c"], top=2)
    assert (answer["class"], answer["name"]) == (1, "b") and [e["name"] for e in answer["top"]] == ["b", "c"]
    assert answer["probability"] == pytest.approx(0.6)


def test_segmentation_answers_are_mask_pngs(tmp_path):
    from PIL import Image

    logits = np.zeros((1, 3, 2, 2), np.float32)
    logits[0, 2, 0, :] = 1  # top row class 2, bottom row class 0
    (answer,) = TASKS.get("segmentation").predict(logits, ["dir/img.png"], class_names=["bg", "a", "b"],
                                                  output_dir=tmp_path)
    assert answer["mask"] == str(tmp_path / "img_mask.png") and answer["pixels"] == {"bg": 0.5, "b": 0.5}
    assert np.asarray(Image.open(answer["mask"])).tolist() == [[2, 2], [0, 0]]


def test_a_model_without_its_task_is_guessed_from_its_shapes():
    assert guess([1, 8, 8], [10]).name == "classification"
    assert guess([1, 8, 8], [3, 8, 8]).name == "segmentation"
    assert guess([12], [4, 5]).name == "regression"


def test_synthetic_segmentation_needs_spatial_axes():
    with pytest.raises(DataError, match=r"synthetic segmentation needs a channels-first input .* not \[12\]"):
        TASKS.get("segmentation").synthetic_targets(4, (12,), 3, torch.Generator())


def test_losses_by_name_and_unknown_ones():
    assert isinstance(get_task("regression").loss({"name": "auto"}), nn.MSELoss)
    smoothed = get_task("classification").loss({"name": "cross_entropy", "label_smoothing": 0.1, "ignore_index": 3})
    assert (smoothed.label_smoothing, smoothed.ignore_index) == (0.1, 3)
    assert isinstance(get_task("classification").loss({"name": "mse"}), nn.MSELoss)
    with pytest.raises(ConfigError, match="unknown loss `hinge`"):
        get_task("classification").loss({"name": "hinge"})


def test_an_unknown_task_suggests_the_close_name():
    with pytest.raises(ConfigError, match="unknown task `segmentaton`") as info:
        get_task("segmentaton")
    assert "segmentation" in info.value.hint


# A new task in one class: multi-label classification (a multi-hot target, independent sigmoids).
class LabelMetrics:
    def __init__(self):
        self.loss_sum, self.right, self.labels, self.samples = 0.0, 0, 0, 0

    def update(self, output, target):
        self.loss_sum += nn.functional.binary_cross_entropy_with_logits(output.float(), target, reduction="sum")
        self.right += ((output > 0) == (target > 0.5)).sum()
        self.labels += target.numel()
        self.samples += target.shape[0]

    def summary(self):
        return {"loss": float(self.loss_sum) / max(1, self.labels), "label_acc": int(self.right) / max(1, self.labels)}


class MultiLabel(Task):
    name = "multilabel"
    headline, label, higher_is_better = "label_acc", "label accuracy", True
    shown = ("loss", "label_acc")
    answer_key = "labels"

    def loss(self, settings):
        return nn.BCEWithLogitsLoss()

    def metrics(self, num_classes):
        return LabelMetrics()

    def check_output(self, model_out, data, location):
        if data.num_classes and model_out != (data.num_classes,):
            raise DataError(f"the model outputs {list(model_out)}, not one score per label", location)

    def synthetic_targets(self, count, input_shape, width, generator, location=None):
        return (torch.rand((count, width), generator=generator) < 0.3).float()

    def predict(self, outputs, labels, *, class_names=None, top=5, output_dir=None):
        return [{"input": label, "labels": [i for i, score in enumerate(out) if score > 0]}
                for label, out in zip(labels, outputs)]

    def table(self, answers):
        return ["input", "labels"], [[[a["input"], ", ".join(map(str, a["labels"]))] for a in answers]]


def test_a_new_task_trains_evaluates_and_predicts_end_to_end(tmp_path):
    from skiptrain import api
    from skiptrain.training.loop import result_line

    config = {"model": {"name": "toy", "input": [8], "layers": [{"type": "linear", "out_features": 16},
                                                              {"type": "relu"},
                                                              {"type": "linear", "out_features": 4}]},
              "data": {"dataset": "synthetic", "num_samples": 80, "num_classes": 4, "batch_size": 16},
              "train": {"epochs": 1, "task": "multilabel", "device": "cpu"}}
    with TASKS.scoped():
        register(MultiLabel)
        summary = api.train(config, run_dir=tmp_path / "run", quiet=True)
        assert 0.0 <= summary["test_label_acc"] <= 1.0 and "test_loss" in summary
        assert summary["best"]["metric"] == "val_label_acc"
        assert result_line(summary) == f"test label accuracy: {summary['test_label_acc']:.4f}"
        result = api.evaluate(tmp_path / "run", device="cpu")
        assert result["task"] == "multilabel" and result["label_acc"] == pytest.approx(summary["test_label_acc"])
        np.save(tmp_path / "x.npy", np.zeros((2, 8), np.float32))
        answers = api.predict(tmp_path / "run", [tmp_path / "x.npy"])
        assert [a["input"] for a in answers] == [f"{tmp_path / 'x.npy'}[{i}]" for i in range(2)]
        assert answers_table(answers)[0] == ["input", "labels"]
    assert "multilabel" not in TASKS
