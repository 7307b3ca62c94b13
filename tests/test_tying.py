"""Weight tying declared in YAML (`tie:`): one Parameter under two layers, counted once by `validate`, seen
once by the optimizer, trained by both uses, kept by the state dict, torch.save and a resumed run; a wrong
tie is one located message."""
from __future__ import annotations

import copy
import io
import json
import pickle

import pytest
import torch
import yaml

from skiptrain import build_model
from skiptrain.api import check_model

from .conftest import invoke, straight_and_resumed

VOCAB, WIDTH = 100, 16  # the synthetic dataset's token ids are in [0, 100)


def tied_model(**head) -> dict:
    """Tokens -> embedding -> mean over the sequence -> a linear head whose weight is the embedding's."""
    return {"name": "tied", "input": [6], "input_dtype": "int64", "layers": [
        {"id": "wte", "type": "embedding", "num_embeddings": VOCAB, "embedding_dim": WIDTH},
        {"id": "mix", "type": "linear", "out_features": WIDTH},
        {"type": "mean", "dim": 0},
        {"id": "lm_head", "type": "linear", "out_features": VOCAB, "bias": False, "tie": "wte", **head},
    ]}


def _write(path, data):
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_one_parameter_under_both_names():
    model = build_model(tied_model())
    assert model.lm_head.weight is model.wte.weight
    names = [name for name, _ in model.named_parameters()]
    assert "wte.weight" in names and "lm_head.weight" not in names  # yielded once, under the first owner
    assert {"wte.weight", "lm_head.weight"} <= set(model.state_dict())  # torch keeps both keys
    plan = check_model({"model": tied_model()})
    assert plan.params == sum(p.numel() for p in model.parameters()) == VOCAB * WIDTH + WIDTH * WIDTH + WIDTH
    assert plan.graph.nodes["lm_head"].meta["tied"] == {"weight": "wte.weight"}


def test_the_shared_tensor_starts_as_the_head_initializes_it():
    """nanoGPT keeps the head's tensor; an embedding's N(0, 1) as a head would start with huge logits."""
    torch.manual_seed(0)
    weight = build_model(tied_model()).wte.weight
    bound = 1 / WIDTH ** 0.5  # nn.Linear's uniform bound; nn.Embedding draws N(0, 1)
    assert weight.abs().max() <= bound and weight.std() < 0.5


@pytest.mark.parametrize("tie", [{"weight": "wte.weight"}, "wte.weight"], ids=["long", "parameter"])
def test_the_parameters_may_be_named(tie):
    model = build_model(tied_model(tie=tie))
    assert model.lm_head.weight is model.wte.weight


def test_both_uses_train_the_one_tensor():
    torch.manual_seed(0)
    tied = build_model(tied_model())
    untied = build_model({**tied_model(), "layers": [*tied_model()["layers"][:3], {
        "id": "lm_head", "type": "linear", "out_features": VOCAB, "bias": False}]})
    untied.load_state_dict(tied.state_dict())
    idx = torch.randint(0, VOCAB, (4, 6))
    tied(idx).logsumexp(-1).sum().backward()
    untied(idx).logsumexp(-1).sum().backward()
    assert untied.wte.weight.grad.abs().sum() > 0 and untied.lm_head.weight.grad.abs().sum() > 0
    torch.testing.assert_close(tied.wte.weight.grad, untied.wte.weight.grad + untied.lm_head.weight.grad)
    optimizer = torch.optim.SGD(tied.parameters(), lr=0.1)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == 3  # wte (shared), mix weight and bias: no head


def test_state_dict_torch_save_pickle_and_deepcopy_keep_the_tie():
    torch.manual_seed(0)
    model = build_model(tied_model()).eval()
    idx = torch.randint(0, VOCAB, (3, 6))
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = build_model(tied_model()).eval()
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert fresh.lm_head.weight is fresh.wte.weight and torch.equal(fresh(idx), model(idx))
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    for copied in (torch.load(buffer, weights_only=False), pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert copied.lm_head.weight is copied.wte.weight and torch.equal(copied(idx), model(idx))


def test_validate_shows_the_tie_and_counts_it_once(tmp_path):
    config = _write(tmp_path / "tied.yaml", {"model": tied_model()})
    result = invoke("validate", config)
    assert result.exit_code == 0, result.output
    assert "weight tied to wte.weight" in result.output
    assert f"parameters: {VOCAB * WIDTH + WIDTH * WIDTH + WIDTH:,}" in result.output
    assert "tied: `lm_head.weight` is `wte.weight`" in result.output
    report = json.loads(invoke("validate", config, "--json").stdout)
    head = next(n for n in report["nodes"] if n["id"] == "lm_head")
    assert head["params"] == 0 and head["tied"] == {"weight": "wte.weight"}
    assert "tied" not in next(n for n in report["nodes"] if n["id"] == "wte")


@pytest.mark.parametrize("tie, words", [
    ("wtf", "`tie:` names `wtf`, and `wtf` is not a layer"),
    ("wte.wieght", "`wte` (`embedding`) has no parameter `wieght`"),
    ("mix", "`lm_head.weight` has shape [100, 16] and `mix.weight` has [16, 16]"),
    ("lm_head", "`lm_head` is tied to itself"),
    ({"bias": "wte.weight"}, "has no parameter `bias` to tie"),
    ({"weight": "wte.bias"}, "`wte` (`embedding`) has no parameter `bias`"),
    (["wte"], "names no layer"),
    ("", "names no layer"),
], ids=["unknown", "typo", "shape", "self", "own-parameter", "their-parameter", "list", "empty"])
def test_a_wrong_tie_is_one_located_message(tmp_path, tie, words):
    config = _write(tmp_path / "tied.yaml", {"model": tied_model(tie=tie)})
    result = invoke("validate", config)
    assert result.exit_code == 1, result.output
    assert words in result.output, result.output
    assert "Traceback" not in result.output and "tied.yaml:" in result.output


def test_a_tie_to_a_tied_parameter_or_a_tensor_is_refused(tmp_path):
    model = tied_model()
    model["layers"].append({"id": "again", "type": "linear", "out_features": VOCAB, "bias": False,
                            "tie": {"weight": "lm_head.weight"}, "input": "mix"})
    result = invoke("validate", _write(tmp_path / "chain.yaml", {"model": model}))
    assert result.exit_code == 1 and "is itself tied to `wte.weight`" in result.output, result.output
    assert "tie `again` to `wte.weight` directly" in result.output
    model = tied_model()
    model["layers"].insert(1, {"id": "pos", "type": "position_embedding"})
    model["layers"][-1]["tie"] = {"weight": "pos.weight"}
    result = invoke("validate", _write(tmp_path / "tensor.yaml", {"model": model}))
    assert result.exit_code == 1 and "learnable tensor" in result.output, result.output


def test_a_tied_model_trains_resumes_exactly_and_saves_both_keys(tmp_path):
    config = _write(tmp_path / "tied.yaml", {
        "model": tied_model(),
        "data": {"dataset": "synthetic", "num_samples": 96, "num_classes": VOCAB, "batch_size": 16},
        "train": {"epochs": 2, "optimizer": {"name": "adamw", "lr": 0.01}, "device": "cpu", "deterministic": True},
    })
    straight, resumed, run = straight_and_resumed(config, tmp_path)
    assert straight.keys() == resumed.keys() and {"wte.weight", "lm_head.weight"} <= straight.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    assert torch.equal(resumed["wte.weight"], resumed["lm_head.weight"])
    checkpoint = torch.load(run / "checkpoints/last.pt", weights_only=True)
    assert len(checkpoint["optimizer"]["state"]) == 3  # wte (shared), mix weight and bias: the head is not twice
    result = invoke("eval", run)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("kept", ["wte.weight", "lm_head.weight"])
def test_train_init_loads_a_tied_tensor_under_either_name(tmp_path, kept):
    """A file of a tied model may hold the shared tensor once (safetensors keeps one name): it loads, strictly."""
    torch.manual_seed(1)
    source = build_model(tied_model()).state_dict()
    dropped = ({"wte.weight", "lm_head.weight"} - {kept}).pop()
    torch.save({k: v for k, v in source.items() if k != dropped}, tmp_path / "weights.pt")
    config = _write(tmp_path / "init.yaml", {
        "model": tied_model(),
        "data": {"dataset": "synthetic", "num_samples": 48, "num_classes": VOCAB, "batch_size": 16},
        "train": {"epochs": 1, "device": "cpu", "optimizer": {"name": "sgd", "lr": 0.0},
                  "init": {"path": str(tmp_path / "weights.pt"), "strict": True}},
    })
    result = invoke("train", config, "--run-dir", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "loaded 3/3 tensors" in result.output and "not loaded" not in result.output
    state = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)["model"]
    assert torch.equal(state["wte.weight"], source[kept]) and torch.equal(state["lm_head.weight"], source[kept])


def test_freeze_and_param_groups_see_a_tied_tensor_under_either_name(tmp_path):
    """Found in review: `freeze: [lm_head]` froze nothing of a tied head, since named_parameters() lists the
    shared tensor only as wte.weight."""
    from skiptrain.training.freeze import apply
    from skiptrain.training.optim import grouping as make_grouping
    from skiptrain.settings import parse_settings

    from skiptrain.module import build_module

    plan = check_model(tied_model())
    model = build_module(plan)
    train = {"freeze": ["lm_head"]}
    frozen = apply(model, plan, parse_settings(train), train)
    assert frozen.names == ["wte.weight"] and not model.get_parameter("lm_head.weight").requires_grad
    assert model.get_parameter("mix.weight").requires_grad

    model = build_module(plan)
    train = {"param_groups": [{"match": "lm_head", "lr": 0.5}]}
    groups = make_grouping(model, plan, parse_settings(train), train)
    assert groups.of("wte.weight")[0] == 1 and groups.of("mix.weight")[0] == 0
