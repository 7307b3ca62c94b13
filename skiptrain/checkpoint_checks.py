"""What a checkpoint's values must be, checked before anything uses them (issue 15).

A file can pass its checksum and still hold another config's weights, a mangled RNG state,
``epoch: "two"`` or a path where its config belongs. ``TrainingState`` (checkpoint.py) takes
each key's check from here; ``TrainingState.restore`` compares the weights with the model
before ``load_state_dict`` (so resume, eval, export and predict all say what differs); and a
resume compares the config it was given with the checkpoint's own (``refuse_changes``).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from .errors import CheckpointError

SECTIONS = ("model", "data", "train")
SHAPING_DATA = ("dataset", "num_classes")  # data: keys that decide what the weights mean
SHOWN = 3  # examples named per kind of difference


def is_int(value: Any, minimum: int = 0) -> bool:
    return type(value) is int and value >= minimum


def is_number(value: Any) -> bool:
    """An int or a float (not a bool); a NaN validation score is still a number a run may have written."""
    return type(value) in (int, float)


def _ints(values: Any, length: int, low: int, high: int) -> bool:
    return isinstance(values, (list, tuple)) and len(values) == length and all(
        type(v) is int and low <= v <= high for v in values)


def _optional_of(kind: type, value: Any) -> bool:
    return value is None or isinstance(value, kind)


def is_config(value: Any) -> bool:
    """The resolved config: the three sections, each a mapping. Never a path: a checkpoint names no file to read
    (``model: some/file.yaml`` in a config file is resolved before it is saved)."""
    return (isinstance(value, dict) and "model" in value and set(value) <= set(SECTIONS)
            and all(isinstance(section, dict) for section in value.values()))


def is_state_dict(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in value.items())


def is_optimizer(value: Any) -> bool:
    """torch's optimizer state dict: parameter indices in groups, and per-index state mappings."""
    if not (isinstance(value, dict) and isinstance(value.get("state"), dict)
            and isinstance(value.get("param_groups"), list) and value["param_groups"]):
        return False
    groups_ok = all(isinstance(g, dict) and isinstance(g.get("params"), list)
                    and all(type(i) is int for i in g["params"]) for g in value["param_groups"])
    return groups_ok and all(type(k) is int and isinstance(v, dict) for k, v in value["state"].items())


def _byte_tensor(value: Any, numel: int | None = None) -> bool:
    return (isinstance(value, torch.Tensor) and value.dtype == torch.uint8 and value.dim() == 1
            and (numel is None or value.numel() == numel))


def is_rng(value: Any) -> bool:
    """Every stream in the form its ``set_state`` takes, so a restore cannot fail half way."""
    if not isinstance(value, dict) or not {"torch", "python", "numpy"} <= set(value):
        return False
    python, numpy = value["python"], value["numpy"]
    python_ok = (isinstance(python, (list, tuple)) and len(python) == 3 and type(python[0]) is int
                 and _ints(python[1], 625, 0, 2**32 - 1) and (python[2] is None or type(python[2]) is float))
    numpy_ok = (isinstance(numpy, dict) and numpy.get("kind") == "MT19937"
                and isinstance(numpy.get("keys"), torch.Tensor)
                and numpy["keys"].dtype == torch.int64 and tuple(numpy["keys"].shape) == (624,)
                and bool(((numpy["keys"] >= 0) & (numpy["keys"] < 2**32)).all())
                and is_int(numpy.get("pos")) and numpy["pos"] <= 624 and numpy.get("has_gauss") in (0, 1)
                and type(numpy.get("has_gauss")) is int and type(numpy.get("gauss")) is float)
    cuda = value.get("cuda", [])
    return (_byte_tensor(value["torch"], torch.get_rng_state().numel()) and python_ok and numpy_ok
            and isinstance(cuda, list) and all(_byte_tensor(t) for t in cuda))


def is_partial(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 2 and is_number(value[0]) and is_int(value[1])


def is_best(value: Any) -> bool:
    return value is None or (isinstance(value, dict) and isinstance(value.get("metric"), str)
                             and is_number(value.get("value")) and is_int(value.get("epoch", 0)))


def is_data(value: Any) -> bool:
    """What eval, export and predict read of the data, each in its own kind (absent or null allowed)."""
    if not isinstance(value, dict):
        return False
    strings = all(_optional_of(str, value.get(k)) for k in ("dataset", "task"))
    names = value.get("class_names")
    names_ok = names is None or (isinstance(names, list) and all(isinstance(n, str) for n in names))
    numbers = all(value.get(k) is None or (isinstance(value[k], list) and all(is_number(v) for v in value[k]))
                  for k in ("mean", "std", "input_shape"))
    classes = value.get("num_classes")
    return strings and names_ok and numbers and (classes is None or is_int(classes, 1))


def _shape(tensor: torch.Tensor) -> str:
    return str(list(tensor.shape))


def _named(keys: list[str]) -> str:
    shown = ", ".join(k[:80] for k in keys[:SHOWN])
    return shown + (", ..." if len(keys) > SHOWN else "")


def weights_mismatch(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor]) -> str | None:
    """What differs between a model's state dict and a checkpoint's, in words; None when they fit."""
    shapes = [k for k in expected if k in found and found[k].shape != expected[k].shape]
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    parts = []
    if shapes:
        examples = ", ".join(f"{k[:80]} {_shape(found[k])} in the file vs {_shape(expected[k])} in the model"
                             for k in shapes[:SHOWN])
        parts.append(f"{len(shapes)} tensor{'s' * (len(shapes) != 1)} differ in shape ({examples}"
                     f"{', ...' if len(shapes) > SHOWN else ''})")
    if missing:
        parts.append(f"{len(missing)} missing ({_named(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({_named(unexpected)})")
    return ", ".join(parts) or None


def optimizer_mismatch(optimizer: torch.optim.Optimizer, saved: dict) -> str | None:
    """Per-parameter optimizer state (momentum, Adam's moments) of another shape than its parameter:
    torch loads it without a word and fails at the first step."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    indices = [i for group in saved["param_groups"] for i in group["params"]]
    if len(params) != len(indices):
        return f"it holds state for {len(indices)} parameters, the model has {len(params)}"
    for index, param in zip(indices, params):
        for name, value in saved["state"].get(index, {}).items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != param.shape:
                return f"`{name}` of parameter {index} is {_shape(value)}, the parameter {_shape(param)}"
    return None


def _diff(old: Any, new: Any, where: str, out: list[str]) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            _diff(old.get(key, "(absent)"), new.get(key, "(absent)"), f"{where}.{key}", out)
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new)):
            _diff(a, b, f"{where}.{i}", out)
    elif old != new or type(old) is not type(new):
        out.append(f"{where}: {_short(old)} -> {_short(new)}")


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def config_changes(saved: dict, config: dict) -> list[str]:
    """The differences that change what the weights are: the model section, and the data keys that
    decide the classes. ``train:`` may change on a resume (more epochs, another learning rate)."""
    changes: list[str] = []
    _diff(saved.get("model"), config.get("model"), "model", changes)
    old_data, new_data = saved.get("data") or {}, config.get("data") or {}
    for key in SHAPING_DATA:
        _diff(old_data.get(key), new_data.get(key), f"data.{key}", changes)
    return changes


def refuse_changes(path: str, saved: dict, config: dict) -> None:
    """A resume continues the checkpoint's model on its data; anything else is refused before a file is written."""
    changes = config_changes(saved, config)
    if changes:
        shown = "; ".join(changes[:5]) + (f"; and {len(changes) - 5} more" if len(changes) > 5 else "")
        raise CheckpointError(
            f"the config to resume with differs from the checkpoint's ({path}) in what shapes its weights: {shown}",
            None, "a resumed run keeps its model and data: change only train: settings (such as --epochs or "
                  "--set train.epochs=N), or start a new run with this config")
