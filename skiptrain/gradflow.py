"""Gradient flow: the gradient norm of every parameterised layer, in graph order.

``gradflow`` measures it at initialisation on one training batch (the task loss, the
model in training mode as in a training step) and, with ``steps``, again on the same
batch after that many optimizer steps. Vanishing gradients show as norms that fall
by orders of magnitude from the last layer back to the first.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Sequence

from .config import Config
from .outputs import atomic_output


def gradflow(config: Config, *, steps: int = 0, device: str = "cpu") -> dict[str, Any]:
    """Per-layer gradient norms at initialisation and, when ``steps`` > 0, after ``steps`` training steps.

    Steps use the config's optimizer at its base learning rate (no schedule, no clipping).
    ``skiptrain.gradflow`` (the API) takes any source with overrides and calls this.
    """
    from .settings import parse_settings
    from .training.assemble import assemble
    from .training.optim import build_optimizer
    from .training.setup import select_device

    settings = parse_settings(config.train)
    built = assemble(config, settings, select_device(device), deterministic=False)
    plan, data, model, loss_fn = built.plan, built.data, built.model, built.loss_fn
    model.train()
    layers = [(index, node) for index, node in enumerate(plan.graph.order) if node.meta.get("params")]
    x, y = next(iter(data.train.epoch(1)))

    def norms() -> tuple[float, list[float]]:
        model.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        return loss.item(), [_grad_norm(_parameters_at(model, node.id)) for _, node in layers]

    init_loss, init = norms()
    result: dict[str, Any] = {
        "name": plan.graph.name, "steps": steps, "loss": {"init": init_loss}, "batch_size": int(x.shape[0]),
        "layers": [{"index": index, "id": node.id, "type": node.type, "params": node.meta["params"], "init": norm}
                   for (index, node), norm in zip(layers, init)]}
    if steps > 0:
        optimizer = build_optimizer(model, settings.optimizer)
        batches = itertools.chain.from_iterable(data.train.epoch(e) for e in itertools.count(1))
        for bx, by in itertools.islice(batches, steps):
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(bx), by).backward()
            optimizer.step()
        result["loss"]["trained"], trained = norms()
        for layer, norm in zip(result["layers"], trained):
            layer["trained"] = norm
    return result


def _parameters_at(model, node_id: str) -> list:
    """A layer's parameters; a learnable tensor's node (`class_token`) is a parameter at its id, not a module."""
    try:
        return list(model.get_submodule(node_id).parameters())
    except AttributeError:
        return [model.get_parameter(node_id)]


def _grad_norm(params) -> float:
    """The L2 norm of all of a layer's parameter gradients together (0 for none)."""
    total = 0.0
    for param in params:
        if param.grad is not None:
            total += float(param.grad.detach().float().pow(2).sum())
    return total ** 0.5


def first_to_last(result: dict[str, Any], key: str = "init") -> float:
    """The first layer's gradient norm over the last layer's: ~1 flows, << 1 vanishes."""
    layers = result["layers"]
    return layers[0][key] / max(layers[-1][key], 1e-30)


def plot_gradflow(results: Sequence[tuple[str, dict[str, Any]]], target: str | Path) -> Path:
    """Norm (log scale) against node index, one line per result and measurement."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, result in results:
        xs = [layer["index"] for layer in result["layers"]]
        line, = ax.plot(xs, [max(layer["init"], 1e-30) for layer in result["layers"]], marker=".",
                        label=f"{label}, at initialisation")
        if result["steps"]:
            ax.plot(xs, [max(layer["trained"], 1e-30) for layer in result["layers"]], marker="x", linestyle="--",
                    color=line.get_color(), label=f"{label}, after {result['steps']} steps")
    ax.set_yscale("log")
    ax.set(xlabel="depth (node index in graph order)", ylabel="gradient norm", title="gradient flow")
    ax.legend(fontsize="small")
    fig.tight_layout()
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(target) as temp:  # a failed or killed save leaves the previous plot
        fig.savefig(temp, dpi=100, format="png")
    plt.close(fig)
    return target
