"""train.freeze, unfreeze_at_epoch, param_groups and layer_decay (issue 16, items 3-4), end to end
through the CLI on the tiny residual config: frozen weights and BatchNorm statistics stay bitwise as
initialised, the unfreeze releases them at its epoch, groups get the learning rates asked, a pattern
that selects nothing is one located message, and resuming across the unfreeze ends bitwise equal."""
from __future__ import annotations

import os
import signal

import pytest
import torch

from tests.conftest import ROOT, TINY_RESIDUAL, invoke

FROZEN = ["stem.weight", "stem.bias", "batchnorm2d_1.weight", "batchnorm2d_1.bias"]
FROZEN_STATS = ["batchnorm2d_1.running_mean", "batchnorm2d_1.running_var", "batchnorm2d_1.num_batches_tracked"]
FINE_TUNE = """\
  freeze: [stem, "batchnorm*"]
  unfreeze_at_epoch: 2
  param_groups: [{match: head, lr: 0.01, weight_decay: 0}]
  layer_decay: 0.5
"""


def config_text(extra: str, epochs: int = 3) -> str:
    return TINY_RESIDUAL.replace("epochs: 2", f"epochs: {epochs}") + extra


def initial_weights(path) -> dict[str, torch.Tensor]:
    """The weights a run of ``path`` starts from (train.seed 0 seeds torch right before the weights are built)."""
    import skiptrain

    torch.manual_seed(0)
    return skiptrain.build_model(path).state_dict()


def last(run) -> dict:
    return torch.load(run / "checkpoints/last.pt", weights_only=True)


def assert_same(a: dict, b: dict, keys) -> None:
    for key in keys:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The fine-tuning config trained 3 epochs without interruption: (config path, final checkpoint)."""
    folder = tmp_path_factory.mktemp("straight")
    path = folder / "tune.yaml"
    path.write_text(config_text(FINE_TUNE))
    result = invoke("train", path, "--run-dir", folder / "run", "-q")
    assert result.exit_code == 0, result.output
    return path, last(folder / "run")


def test_frozen_weights_and_batchnorm_statistics_stay_bitwise(write_yaml, tmp_path):
    path = write_yaml(config_text('  freeze: [stem, "batchnorm*"]\n', epochs=2))
    result = invoke("train", path, "--run-dir", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "frozen for the whole run: 4 tensors" in result.output
    start, end = initial_weights(path), last(tmp_path / "run")
    assert_same(start, end["model"], FROZEN + FROZEN_STATS)  # two epochs, validation (model.train() after it) between
    for key in ("body.weight", "head.weight", "body_proj.1.running_mean"):  # the rest trained
        assert not torch.equal(start[key], end["model"][key]), key
    in_optimizer = sum(len(group["params"]) for group in end["optimizer"]["param_groups"])
    assert in_optimizer == len([key for key in start if key.endswith(("weight", "bias"))]) - len(FROZEN)


def test_unfreeze_at_epoch_2_then_resume_is_bitwise_equal(straight, tmp_path):
    path, final = straight
    split = tmp_path / "split"
    assert invoke("train", path, "--run-dir", split, "--epochs", "1", "-q").exit_code == 0
    after_one = last(split)
    start = initial_weights(path)
    assert_same(start, after_one["model"], FROZEN + FROZEN_STATS)  # epoch 1: frozen
    assert sum(len(g["params"]) for g in after_one["optimizer"]["param_groups"]) == 11 - len(FROZEN)
    result = invoke("train", "--resume", split, "--epochs", "3")
    assert result.exit_code == 0, result.output
    assert "unfrozen: 4 tensors train from epoch 2 on" in result.output
    assert "1 parameter group; layer_decay 0.5 over 4 layers: the first at lr x 0.125" in result.output
    resumed = last(split)
    # released from epoch 2: trained, statistics tracked (stem.bias, right before a BatchNorm, gets no gradient)
    for key in ["stem.weight", "batchnorm2d_1.weight", "batchnorm2d_1.bias", *FROZEN_STATS]:
        assert not torch.equal(start[key], resumed["model"][key]), key
    assert_same(final["model"], resumed["model"], final["model"])
    assert len(resumed["optimizer"]["param_groups"]) == len(final["optimizer"]["param_groups"])


def test_resume_mid_epoch_after_the_unfreeze_is_bitwise_equal(straight, tmp_path, monkeypatch):
    """Stopped by SIGINT inside epoch 2 (after the unfreeze): the resumed run rebuilds the released
    groups before loading the optimizer's state, and ends as the straight run."""
    from skiptrain.training import loop

    path, final = straight
    factor = loop.lr_factor

    def interrupting(step, *args):
        if step == 5:  # epoch 2, its second batch (4 batches an epoch)
            os.kill(os.getpid(), signal.SIGINT)
        return factor(step, *args)

    monkeypatch.setattr(loop, "lr_factor", interrupting)
    run = tmp_path / "run"
    stopped = invoke("train", path, "--run-dir", run, "-q")
    assert stopped.exit_code == 130, stopped.output
    assert (last(run)["epoch"], last(run)["batch"]) == (1, 2)
    monkeypatch.setattr(loop, "lr_factor", factor)
    result = invoke("train", "--resume", run, "-q")
    assert result.exit_code == 0, result.output
    assert_same(final["model"], last(run)["model"], final["model"])


def test_param_groups_and_layer_decay_set_each_groups_lr(straight):
    """head: its own lr (0.01, no decay); body, batchnorm2d_1, stem: 0.05 x 0.5, 0.25, 0.125 (layer_decay 0.5
    over the top-level layers stem, batchnorm2d_1, body with its projection, head); every group follows
    the schedule in proportion."""
    _, final = straight
    groups = final["optimizer"]["param_groups"]
    rates = sorted({(g["match"], g["base_lr"], g["weight_decay"]) for g in groups}, key=str)
    assert rates == sorted({("head", 0.01, 0.0), (None, 0.025, 1e-4), (None, 0.025, 0.0), (None, 0.0125, 0.0),
                            (None, 0.00625, 1e-4), (None, 0.00625, 0.0)}, key=str)
    factors = {round(g["lr"] / g["base_lr"], 12) for g in groups}
    assert len(factors) == 1  # one schedule, scaled from each group's own base lr


@pytest.mark.parametrize("extra, at, message, hint", [
    ('  freeze: [stem, bachnorm2d_1]\n', "bachnorm2d_1", "`train.freeze[1]`: `bachnorm2d_1` matches no layer id",
     "did you mean `batchnorm2d_1`?"),
    ('  param_groups:\n    - {match: haed, lr: 0.01}\n', "haed", "`train.param_groups[0].match`: `haed`",
     "did you mean `head`?"),
    ('  unfreeze_at_epoch: 2\n', "unfreeze_at_epoch", "`train.unfreeze_at_epoch` releases", None),
])
def test_a_pattern_that_matches_nothing_is_located_at_validate_and_train(write_yaml, tmp_path, extra, at,
                                                                         message, hint):
    path = write_yaml(config_text(extra))
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if at in text)
    for command in (("validate", path), ("train", path, "--run-dir", tmp_path / "run")):
        result = invoke(*command)
        assert result.exit_code == 1, result.output
        assert message in result.output and "Traceback" not in result.output
        assert f"{path}:{line}:" in result.output
        assert hint is None or hint in result.output
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_freezing_every_parameter_is_refused(write_yaml, tmp_path):
    path = write_yaml(config_text('  freeze: ["*"]\n'))
    result = invoke("train", path, "--run-dir", tmp_path / "run")
    assert result.exit_code == 1 and "freezes every parameter" in result.output, result.output
    assert not (tmp_path / "run").exists()


def test_ids_select_block_instances_and_projections_follow_their_node():
    """`layer1` selects the nodes of its instances, `layer2.*` too; a projection goes with the node its skip
    merges into and can be named itself; `[...]` and `?` work as in fnmatch."""
    import skiptrain
    from skiptrain.id_patterns import select, units

    owned = units(skiptrain.check_model(ROOT / "configs/imagenet/resnet18.yaml"))
    layer1 = select("layer1", owned)
    assert "layer1.0.conv1" in layer1 and "layer1.1.bn2" in layer1 and not any(p.startswith("layer2") for p in layer1)
    assert "layer2.0.downsample" in select("layer2.*", owned) and "layer2.0.downsample" in select("layer2", owned)
    assert "layer2.0.downsample" in select("layer2.0.bn2", owned)  # its skip's node
    assert select("layer2.0.downsample", owned) == {"layer2.0.downsample"}
    assert {p.split(".")[0] for p in select("layer[34]", owned)} == {"layer3", "layer4"}
    assert select("fc", owned) == {"fc"}


def test_layer_decay_counts_top_level_nodes_and_block_instances():
    """ResNet-18: conv1, bn1, eight blocks (a block's downsample with it), fc: eleven layers."""
    import skiptrain
    from skiptrain.training.optim import _layer_distances

    distance = _layer_distances(skiptrain.check_model(ROOT / "configs/imagenet/resnet18.yaml"))
    assert (distance["fc"], distance["layer4.1.conv1"], distance["layer4.1.bn2"]) == (0, 1, 1)
    assert distance["layer4.0.bn2"] == distance["layer4.0.conv1"] == 2  # where layer4.0.downsample merges
    assert (distance["bn1"], distance["conv1"]) == (9, 10)
