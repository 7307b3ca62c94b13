"""Segmentation: one class per pixel; cross-entropy, mean IoU, pixel accuracy, masks as PNG."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import DataError
from .base import ConfusionMetrics, Table, Task, class_name, register

# Mask colours for the first classes (background black); the index stays the pixel value.
PALETTE = [0, 0, 0, 230, 25, 75, 60, 180, 75, 255, 225, 25, 0, 130, 200, 245, 130, 48, 145, 30, 180,
           70, 240, 240, 240, 50, 230, 210, 245, 60, 250, 190, 212, 0, 128, 128, 220, 190, 255, 170, 110, 40]


class SegmentationMetrics(ConfusionMetrics):
    def scores(self, confusion) -> dict[str, Any]:
        correct = confusion.diag()
        union = confusion.sum(dim=0) + confusion.sum(dim=1) - correct
        iou = correct / union.clamp(min=1)
        present = union > 0  # a class neither in the targets nor predicted does not count
        return {"miou": iou[present].mean().item() if present.any() else 0.0,
                "pixel_acc": (correct.sum() / confusion.sum().clamp(min=1)).item(),
                "per_class_iou": iou.tolist()}


@register
class Segmentation(Task):
    name = "segmentation"
    headline, label, higher_is_better = "miou", "mean IoU", True
    shown = ("loss", "miou", "pixel_acc")
    answer_key = "mask"
    per_class = ("per_class_iou", "IoU")
    spatial_targets = True

    def metrics(self, num_classes):
        return SegmentationMetrics(num_classes)

    def output_shape(self, input_shape, width):
        return (width, *input_shape[1:])

    def check_output(self, model_out, data, location) -> None:
        needed = self.output_shape(data.input_shape, data.num_classes)
        if data.num_classes and model_out != needed:
            raise DataError(f"the model outputs {list(model_out)}, but segmentation of `{data.name}` needs "
                            f"{list(needed)}", location,
                            f"end with a conv of `out_channels: {data.num_classes}` at the input resolution")

    def synthetic_targets(self, count, input_shape, width, generator, location=None):
        import torch

        if len(input_shape) < 2:
            raise DataError(f"synthetic segmentation needs a channels-first input with spatial axes, "
                            f"not {list(input_shape)}", location)
        return torch.randint(0, width, (count, *input_shape[1:]), generator=generator)

    def predict(self, outputs, labels, *, class_names=None, top=5, output_dir=None) -> list[dict[str, Any]]:
        """A palette PNG per sample in ``output_dir`` (predictions/), pixel value = class index,
        and each class's share of the pixels."""
        import numpy as np

        from ..outputs import atomic_output

        output_dir = Path(output_dir) if output_dir else Path("predictions")
        output_dir.mkdir(parents=True, exist_ok=True)
        answers, used = [], set()
        for label, logits in zip(labels, outputs):
            mask = logits.argmax(axis=0).astype(np.uint8)
            stem = Path(label.split("[")[0]).stem + (f"_{label.rsplit('[', 1)[1][:-1]}" if label.endswith("]") else "")
            name, n = f"{stem}_mask.png", 1
            while name in used:
                n += 1
                name = f"{stem}_mask{n}.png"
            used.add(name)
            image = mask_image(mask)
            with atomic_output(output_dir / name, option="--output-dir") as temp:  # never half a mask
                image.save(temp, format="PNG")
            counts = np.bincount(mask.reshape(-1), minlength=logits.shape[0])
            shares = {class_name(class_names, i): float(c) / mask.size for i, c in enumerate(counts) if c}
            answers.append({"input": label, "mask": str(output_dir / name), "pixels": shares})
        return answers

    def table(self, answers) -> Table:
        return ["input", "mask", "classes (share of pixels)"], [[
            [row["input"], row["mask"], ", ".join(f"{name} {share:.0%}" for name, share in
                                                  sorted(row["pixels"].items(), key=lambda item: -item[1]))]
            for row in answers]]

    def looks_like(self, input_shape, output_shape) -> bool:
        return len(output_shape) == len(input_shape) >= 2 and list(output_shape[1:]) == list(input_shape[1:])

    def show_sample(self, output, target, class_names):
        """The predicted and the true mask, in the palette of ``predict``'s masks."""
        return mask_image(output.argmax(axis=0)), mask_image(target)


def mask_image(mask):
    """Class indices as a palette image (pixel value = class index; a 1-D mask is one row, more axes
    stack their rows): ``predict``'s mask files and the report's masks."""
    import numpy as np
    from PIL import Image

    plane = np.ascontiguousarray(np.clip(mask, 0, 255).astype(np.uint8).reshape(-1, mask.shape[-1]))
    image = Image.frombytes("P", (plane.shape[1], plane.shape[0]), plane.tobytes())
    image.putpalette(PALETTE + [128] * (768 - len(PALETTE)))
    return image
