"""``train.freeze`` and ``train.unfreeze_at_epoch``: which parts of the model train, chosen by node id
(the patterns: ``id_patterns.py``, shared with ``train.param_groups``).

Frozen parameters get ``requires_grad=False`` and stay out of the optimizer. Norm layers with running
statistics (BatchNorm) inside frozen parts compute in eval mode whatever ``model.train()`` said, through
a forward pre-hook, so their statistics stay as loaded, as people expect when they freeze a backbone.
Releasing them (the start of epoch ``unfreeze_at_epoch``) removes the hooks and adds the parameters to
the optimizer as new groups, in a fixed order, so a resumed run rebuilds the same groups.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from ..config import where
from ..errors import ConfigError
from ..id_patterns import check_patterns, freeze_patterns, owner, units


def _stay_eval(module: nn.Module, args: Any) -> None:
    module.training = False  # frozen running statistics: normalise with them and never update them


@dataclass
class Frozen:
    """The frozen part of one model: its parameter names and the hooks that keep its norms in eval mode."""

    names: list[str] = field(default_factory=list)
    hooks: list[Any] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return bool(self.names or self.hooks)

    def describe(self, until: int | None) -> str:
        """The report line at the start of a run."""
        span = f"until epoch {until}" if until else "for the whole run"
        return (f"frozen {span}: {len(self.names)} tensors (out of the optimizer), "
                f"{len(self.hooks)} BatchNorm layers in eval mode")

    def release(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        """Unfreeze: gradients back, norms back to following train(); the released parameters, in model order."""
        for hook in self.hooks:
            hook.remove()
        names = set(self.names)
        released = [(n, p) for n, p in model.named_parameters() if n in names]
        for _, parameter in released:
            parameter.requires_grad_(True)
        self.names, self.hooks = [], []
        return released


def due(settings: Any, epoch: int) -> bool:
    """Whether epoch ``epoch`` (1-based) trains the frozen part: from ``unfreeze_at_epoch`` on."""
    return settings.unfreeze_at_epoch is not None and epoch >= settings.unfreeze_at_epoch


def apply(model: nn.Module, plan: Any, settings: Any, train: Any) -> Frozen:
    """Freeze what ``train.freeze`` selects (checked first: nothing is frozen by a bad pattern)."""
    owned = units(plan)
    selected = set().union(set(), *check_patterns(*freeze_patterns(settings, train), owned=owned))
    frozen = Frozen()
    if not selected:
        return frozen
    canonical = {id(p): n for n, p in model.named_parameters()}  # a tied tensor's first name
    for name, parameter in model.named_parameters(remove_duplicate=False):  # every name of a tied tensor
        if owner(name, owned) in selected and canonical[id(parameter)] not in frozen.names:
            parameter.requires_grad_(False)
            frozen.names.append(canonical[id(parameter)])
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("`train.freeze` freezes every parameter: nothing would train", where(train, "freeze"),
                          "freeze the backbone and leave the head out, e.g. `freeze: [\"layer*\"]`")
    for name, module in model.named_modules():
        if isinstance(module, _NormBase) and module.track_running_stats and owner(name, owned) in selected:
            frozen.hooks.append(module.register_forward_pre_hook(_stay_eval))
    return frozen
