"""`train.init`: a new run starts from someone else's weights, matched by name, with a transfer report.

- torchvision-format state dicts (`torch.save(model.state_dict())` and safetensors) load into the zoo
  configs with nothing skipped, and the models then compute torchvision's outputs bitwise;
- with the head resized, everything but the head loads, the head keeps its fresh initialisation, and
  `transfer.json` lists exactly the head's tensors with both shapes (end to end through the CLI);
- `--resume` restores its run and never re-reads `train.init`;
- a hostile pickle is refused with nothing executed; every broken source is one `init error` located at
  `train.init`, exit 1, no traceback, and no run directory.
"""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

import skiptrain
from skiptrain.settings import parse_settings
from skiptrain.transfer import InitError, load_into, read

from .conftest import TINY_RESIDUAL, TINY_RESIDUAL_MODEL, invoke

torchvision = pytest.importorskip("torchvision")
from .test_zoo import config as zoo_config, randomized_state  # noqa: E402  (after torchvision's skip)

ONE = ("--epochs", "1", "--limit-batches", "1", "-q")
HEAD = ("--set", "model.layers.7.out_features=3", "--set", "data.num_classes=3")  # the tiny net's head: 4 -> 3


def init_of(value) -> object:
    return parse_settings({"init": value}).init


def save(state: dict, path: Path) -> Path:
    """``state`` as a torchvision-style ``.pth`` or as ``.safetensors``, by the suffix."""
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


# -- torchvision's weights into the zoo configs ----------------------------------------------------
def loads_bitwise(name: str, folder: Path) -> None:
    """torchvision's ``name`` with every tensor randomized (BN statistics too: a wrong pairing would show),
    saved as ``.pth`` and as ``.safetensors``; each loads whole into the zoo config, and computes the same."""
    torch.manual_seed(0)
    tv = getattr(torchvision.models, name)(weights=None)
    tv.load_state_dict(randomized_state(tv))
    tv.eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = tv(x)
    assert expected.std() > 0
    for suffix in (".pth", ".safetensors"):
        path = save(tv.state_dict(), folder / f"{name}{suffix}")
        sk = skiptrain.build_model(zoo_config(name), ["model.input=[3,64,64]"])
        transfer = load_into(sk, read(path), init_of(str(path)))
        assert transfer.not_loaded == [] and transfer.loaded == transfer.total == len(tv.state_dict()), suffix
        assert transfer.params_loaded == transfer.params_total == sum(p.numel() for p in tv.parameters())
        with torch.no_grad():
            got = sk.eval()(x)
        assert torch.equal(got, expected), (suffix, (got - expected).abs().max().item())


def test_torchvision_resnet18_weights_load_whole_and_compute_torchvisions_outputs(tmp_path):
    loads_bitwise("resnet18", tmp_path)


@pytest.mark.slow  # about 17 s on 2 busy cores for the three
@pytest.mark.parametrize("name", ["resnet50", "efficientnet_b0", "convnext_tiny"])
def test_torchvision_weights_load_whole_into_the_zoo_and_compute_torchvisions_outputs(name, tmp_path):
    loads_bitwise(name, tmp_path)


# -- end to end through the CLI --------------------------------------------------------------------
@pytest.fixture
def pretrained(write_yaml, tmp_path) -> Path:
    """A "pretrained" state dict of the tiny net with a 10-way head, as torchvision publishes weights."""
    model = skiptrain.build_model(write_yaml(TINY_RESIDUAL_MODEL, "source.yaml"), ["model.layers.7.out_features=10"])
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.normal_(generator=torch.Generator().manual_seed(5))
                tensor.abs_()  # running variances stay positive
    return save(model.state_dict(), tmp_path / "pretrained.pth")


@pytest.fixture
def frozen_lr(write_yaml) -> Path:
    """The tiny net with lr 0: after training, the weights are still the ones the run started from."""
    return write_yaml(TINY_RESIDUAL.replace("{name: sgd, lr: 0.05, momentum: 0.9, weight_decay: 1.0e-4}",
                                            "{name: sgd, lr: 0}"), "frozen.yaml")


def last_model(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]


def test_a_resized_head_keeps_its_fresh_init_everything_else_loads_and_transfer_json_says_so(
        frozen_lr, pretrained, tmp_path):
    run, fresh = tmp_path / "run", tmp_path / "fresh"
    result = invoke("train", frozen_lr, "--set", f"train.init={pretrained}", *HEAD, "--run-dir", run,
                    "--epochs", "1", "--limit-batches", "1")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith("init: ")]
    assert lines[0] == f"init: loaded 15/17 tensors (1,424 of 1,475 parameters, 96.5%) from {pretrained}"
    assert lines[1].startswith("init: not loaded: head.weight [10, 16] vs [3, 16], head.bias [10] vs [3] "
                               "(shape differs: file vs model)")
    report = json.loads((run / "transfer.json").read_text())
    assert report["not_loaded"] == [
        {"key": "head.weight", "reason": "shape differs", "file_shape": [10, 16], "model_shape": [3, 16]},
        {"key": "head.bias", "reason": "shape differs", "file_shape": [10], "model_shape": [3]}]
    assert report["tensors"] == {"loaded": 15, "total": 17, "share": round(15 / 17, 6)}
    assert report["parameters"]["loaded"] == 1424 and report["parameters"]["total"] == 1475
    assert report["form"] == "state dict" and report["strict"] is False and report["file_tensors"] == 17
    # lr 0: the loaded weights are the file's, bit for bit; the head is what a run without init starts from
    assert invoke("train", frozen_lr, *HEAD, "--run-dir", fresh, *ONE).exit_code == 0
    source, trained, untouched = torch.load(pretrained, weights_only=True), last_model(run), last_model(fresh)
    for key in ("stem.weight", "body.weight", "body_proj.0.weight", "body_proj.1.bias"):
        assert torch.equal(trained[key], source[key]), key
    assert torch.equal(trained["head.weight"], untouched["head.weight"])
    assert not (fresh / "transfer.json").exists()


def test_resume_restores_its_run_and_never_reads_init_again(tiny_residual, pretrained, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    init = ("--set", f"train.init={pretrained}", *HEAD)
    two = ("--limit-batches", "2")
    assert invoke("train", tiny_residual, *init, "--run-dir", straight, *two, "-q").exit_code == 0
    assert invoke("train", tiny_residual, *init, "--run-dir", split, "--epochs", "1", *two, "-q").exit_code == 0
    written = (split / "transfer.json").read_bytes()
    pretrained.write_bytes(b"not weights any more")  # a resume that read it would fail
    result = invoke("train", "--resume", split, "--epochs", "2", *two)
    assert result.exit_code == 0, result.output
    assert "init:" not in result.stdout and (split / "transfer.json").read_bytes() == written
    a, b = last_model(straight), last_model(split)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_rename_rules_and_a_wrapper_entry_map_another_layout(frozen_lr, pretrained, tmp_path):
    state = torch.load(pretrained, weights_only=True)
    wrapped = {"epoch": 90, "state_dict": {f"module.backbone.{k}": v for k, v in state.items()}}
    source = save(wrapped, tmp_path / "ddp.pth")
    rules = '{strip_prefix: "module."}, {regex: "^backbone\\\\.", replace: ""}'
    run = tmp_path / "run"
    result = invoke("train", frozen_lr, "--set", f"train.init={{path: {source}, rename: [{rules}]}}", *HEAD,
                    "--run-dir", run, *ONE)
    assert result.exit_code == 0, result.output
    report = json.loads((run / "transfer.json").read_text())
    assert report["form"] == "its `state_dict` entry" and report["tensors"]["loaded"] == 15
    assert report["rename"] == [{"strip_prefix": "module."}, {"regex": "^backbone\\.", "replace": ""}]
    assert [e["file_key"] for e in report["not_loaded"]] == ["module.backbone.head.weight", "module.backbone.head.bias"]
    assert torch.equal(last_model(run)["stem.weight"], state["stem.weight"])


def test_a_run_directory_seeds_a_new_run_and_half_precision_weights_are_cast(frozen_lr, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    assert invoke("train", frozen_lr, "--run-dir", first, *ONE).exit_code == 0
    result = invoke("train", frozen_lr, "--set", f"train.init={first}", "--run-dir", second, *ONE[:-1])
    assert result.exit_code == 0, result.output
    assert "init: loaded 17/17 tensors (1,492 of 1,492 parameters, 100.0%)" in result.stdout
    assert json.loads((second / "transfer.json").read_text())["form"] == "skiptrain checkpoint"
    assert read(first / "checkpoints" / "last.pt").form == "skiptrain checkpoint"  # a checkpoint file, too
    half = {k: v.half() if v.is_floating_point() else v for k, v in last_model(first).items()}
    model = skiptrain.build_model(frozen_lr)
    transfer = load_into(model, read(save(half, tmp_path / "half.safetensors")), init_of("half.safetensors"))
    assert transfer.cast == {"float16 -> float32": 15} and transfer.not_loaded == []
    assert torch.equal(model.state_dict()["stem.weight"], half["stem.weight"].float())


# -- refusals: one located message, exit 1, no traceback, nothing written --------------------------
class Hostile:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def refused(result, run: Path, *words: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "init error" in result.stderr, result.stderr
    assert "train.init" in result.stderr
    for word in words:
        assert word in result.stderr, result.stderr
    assert not run.exists(), "the run directory was written before train.init was checked"


@pytest.mark.parametrize("raw", [False, True], ids=["torch.save", "pickle.dump"])
def test_a_hostile_pickle_is_refused_and_nothing_runs(raw, tiny_residual, tmp_path):
    marker, evil = tmp_path / "pwned", tmp_path / "evil.pth"
    payload = {"stem.weight": Hostile(marker)}
    if raw:
        evil.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, evil)
    result = invoke("train", tiny_residual, "--set", f"train.init={evil}", "--run-dir", tmp_path / "run", *ONE)
    refused(result, tmp_path / "run", "evil.pth")
    assert not marker.exists(), "the pickle ran"


def broken_sources(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Each broken ``train.init`` and a word its message must hold."""
    good = tmp_path / "good.safetensors"
    save({"stem.weight": torch.ones(8, 1, 3, 3)}, good)
    cases = {"missing": (tmp_path / "nope.pth", "no such file"),
             "folder without checkpoints": (tmp_path / "empty", "no checkpoints/last.pt"),
             "a list": (tmp_path / "list.pth", "holds a list"),
             "a tensor": (tmp_path / "tensor.pth", "holds a tensor"),
             "a dict of numbers": (tmp_path / "dict.pth", "not a state dict"),
             "corrupt safetensors": (tmp_path / "cut.safetensors", "not a readable .safetensors file"),
             "truncated pth": (tmp_path / "cut.pth", "not a readable PyTorch file"),
             "text": (tmp_path / "notes.pth", "not a"),
             "a /dev/zero link": (tmp_path / "zero.pth", "not a regular file"),
             "a FIFO": (tmp_path / "fifo.pth", "not a regular file"),
             "NaN": (tmp_path / "nan.pth", "NaN or inf in `stem.weight`"),
             "nothing matches": (tmp_path / "other.pth", "no tensor of")}
    (tmp_path / "empty").mkdir()
    torch.save([torch.ones(2)], tmp_path / "list.pth")
    torch.save(torch.ones(2), tmp_path / "tensor.pth")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "dict.pth")
    (tmp_path / "cut.safetensors").write_bytes(good.read_bytes()[:-7])
    torch.save({"stem.weight": torch.ones(8, 1, 3, 3)}, tmp_path / "full.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "full.pth").read_bytes()[:300])
    (tmp_path / "notes.pth").write_text("these are not weights\n")
    os.symlink("/dev/zero", tmp_path / "zero.pth")
    os.mkfifo(tmp_path / "fifo.pth")
    torch.save({"stem.weight": torch.full((8, 1, 3, 3), float("nan"))}, tmp_path / "nan.pth")
    torch.save({"encoder.conv.weight": torch.ones(8, 1, 3, 3)}, tmp_path / "other.pth")
    return cases


def test_every_broken_source_is_one_located_message(tiny_residual, tmp_path):
    for case, (path, words) in broken_sources(tmp_path).items():
        run = tmp_path / f"run-{case.replace(' ', '-').replace('/', '')}"
        result = invoke("train", tiny_residual, "--set", f"train.init={path}", "--run-dir", run, *ONE)
        refused(result, run, words)


def test_nothing_matching_shows_keys_of_both_sides(tiny_residual, tmp_path):
    broken_sources(tmp_path)
    result = invoke("train", tiny_residual, "--set", f"train.init={tmp_path / 'other.pth'}",
                    "--run-dir", tmp_path / "run", *ONE)
    refused(result, tmp_path / "run", "encoder.conv.weight", "stem.weight", "rename")


def test_strict_refuses_a_resized_head_before_anything_is_written(write_yaml, pretrained, tmp_path):
    config = write_yaml(TINY_RESIDUAL + f"  init: {{path: {pretrained}, strict: true}}\n", "strict.yaml")
    result = invoke("train", config, *HEAD, "--run-dir", tmp_path / "run", *ONE)
    refused(result, tmp_path / "run", "strict.yaml:", "head.weight [10, 16] vs [3, 16]", "strict: false")
    matching = write_yaml(TINY_RESIDUAL + f"  init: {{path: {pretrained}, strict: true}}\n", "ok.yaml")
    assert invoke("train", matching, "--set", "model.layers.7.out_features=10", "--set", "data.num_classes=10",
                  "--run-dir", tmp_path / "ok", *ONE).exit_code == 0


def test_two_keys_renamed_onto_one_name_are_refused():
    model = skiptrain.build_model({"input": [4], "layers": [{"id": "fc", "type": "linear", "out_features": 2}]})
    weights = read_state({"a.fc.weight": torch.ones(2, 4), "b.fc.weight": torch.ones(2, 4)})
    with pytest.raises(InitError, match="onto `fc.weight`"):
        load_into(model, weights, init_of({"path": "x", "rename": [{"regex": "^[ab]\\.", "replace": ""}]}))


def read_state(state: dict) -> object:
    from skiptrain.transfer import Weights

    return Weights(state, "memory", "state dict")


@pytest.mark.parametrize("value, expected", [
    ('{path: w.pth, rename: [{regex: "("}]}', "is not a regular expression"),
    ("{path: w.pth, rename: [{strip_prefix: a, regex: b}]}", "one rule per list item"),
    ("{path: w.pth, strict: 1}", "`train.init.strict` must be true or false"),
    ("{path: w.pth, renames: []}", "unknown key `train.init.renames`"),
    ("3", "`train.init` must be a non-empty string, a mapping or null"),
])
def test_validate_checks_the_form_of_init(value, expected, write_yaml):
    config = write_yaml(TINY_RESIDUAL + f"  init: {value}\n")
    result = invoke("validate", config)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "config.yaml:" in result.stderr and expected in result.stderr, result.stderr


def test_the_schema_shows_init():
    from skiptrain.schema import config_schema

    init = config_schema()["$defs"]["train"]["properties"]["init"]
    mapping = next(branch for branch in init["anyOf"] if branch.get("type") == "object")
    assert {"path", "strict", "rename"} <= set(mapping["properties"]) and mapping["required"] == ["path"]
    assert {"strip_prefix", "regex", "replace"} <= set(mapping["properties"]["rename"]["items"]["properties"])
