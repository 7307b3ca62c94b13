"""The language_model task (issue 17) end to end through the CLI on text the test writes: next-token
cross-entropy at every position, eval's loss / perplexity / bits per character, the tokenizer in the
checkpoint and the run directory, and exact resume."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch.nn import functional as F

from skiptrain.data.text import tokenizer_from
from skiptrain.tasks import TASKS

from .conftest import invoke, straight_and_resumed
from .test_data_text import SAMPLE, lm_config


@pytest.fixture
def lm_yaml(tmp_path, write_yaml):
    (tmp_path / "corpus.txt").write_text(SAMPLE)
    return write_yaml(lm_config(tmp_path / "corpus.txt", extra=", test_fraction: 0.1"), "lm.yaml")


def test_the_loss_is_cross_entropy_over_every_position():
    task = TASKS.get("language_model")
    output, target = torch.randn(3, 5, 11), torch.randint(0, 11, (3, 5))
    expected = F.cross_entropy(output.reshape(-1, 11), target.reshape(-1))
    assert torch.allclose(task.loss({"name": "auto"})(output, target), expected)
    metrics = task.metrics(11)
    metrics.update(output, target)
    summary = metrics.summary()
    assert summary["loss"] == pytest.approx(expected.item(), rel=1e-5)
    assert summary["ppl"] == pytest.approx(math.exp(expected.item()), rel=1e-5)
    assert (task.headline, task.higher_is_better) == ("ppl", False)  # the best run has the lowest val loss


def test_train_eval_and_the_stored_tokenizer(lm_yaml, tmp_path):
    run = tmp_path / "run"
    result = invoke("train", lm_yaml, "--run-dir", run, "-q")
    assert result.exit_code == 0, result.output
    assert "test perplexity:" in result.output
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"val_loss", "val_ppl"} <= set(rows[0]) and rows[-1]["val_loss"] < rows[0]["val_loss"]
    state = torch.load(run / "checkpoints/last.pt", weights_only=True)  # plain types only
    assert state["data"]["task"] == "language_model" and state["data"]["tokenizer"]["kind"] == "char"
    assert state["data"]["text"]["tokens"]["test"] > 0
    tokenizer = tokenizer_from(state["data"])
    assert tokenizer.decode(tokenizer.encode("Speak, speak.")) == "Speak, speak."
    assert tokenizer_from(run / "tokenizer.json").to_dict() == tokenizer.to_dict()
    from skiptrain.api import restore

    restored = restore(run)  # what `sample` starts from: the Restored, or its model's meta
    assert tokenizer_from(restored).to_dict() == tokenizer_from(restored.model.meta["skiptrain"]).to_dict() \
        == tokenizer.to_dict()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best"]["metric"] == "val_ppl"

    shown = invoke("eval", run, "--split", "val")
    assert shown.exit_code == 0, shown.output
    for key in ("loss:", "ppl:", "bpc:", "bpb:"):
        assert key in shown.output
    numbers = json.loads(invoke("eval", run, "--split", "val", "--json").output)
    assert numbers["bpc"] == pytest.approx(numbers["loss"] / math.log(2))  # one token per character
    assert numbers["ppl"] == pytest.approx(math.exp(numbers["loss"]))
    assert numbers["loss"] == pytest.approx(rows[-1]["val_loss"], rel=1e-5)
    test = json.loads(invoke("eval", run, "--json").output)
    assert test["split"] == "test" and test["loss"] > 0


def test_bpe_bits_per_character_count_the_characters(tmp_path, write_yaml):
    (tmp_path / "corpus.txt").write_text(SAMPLE)
    config = write_yaml(lm_config(tmp_path / "corpus.txt", vocab=300, extra=", tokenizer: bpe, vocab_size: 300",
                                  epochs=1))
    run = tmp_path / "run"
    assert invoke("train", config, "--run-dir", run, "-q").exit_code == 0
    numbers = json.loads(invoke("eval", run, "--split", "val", "--json").output)
    assert numbers["bpc"] < numbers["loss"] / math.log(2)  # a BPE token spans several characters
    assert json.loads((run / "tokenizer.json").read_text())["kind"] == "bpe"


def test_a_resumed_run_ends_with_the_same_weights(lm_yaml, tmp_path):
    straight, resumed, _ = straight_and_resumed(lm_yaml, tmp_path)
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_a_run_refuses_text_that_changed_since_its_checkpoint(lm_yaml, tmp_path):
    run = tmp_path / "run"
    assert invoke("train", lm_yaml, "--run-dir", run, "--epochs", "1", "-q").exit_code == 0
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(corpus.read_text() + "Zounds!\n")  # a new character: every id after it moves
    for args in (("train", "--resume", run, "--epochs", "2", "-q"), ("eval", run, "--split", "val")):
        result = invoke(*args)
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert "was trained on" in result.output and "`tokenizer`" in result.output, result.output


@pytest.mark.slow
def test_two_processes_see_the_windows_of_one(lm_yaml, tmp_path):
    """torchrun with 2 gloo processes: each takes half of every batch of windows (about 20 s)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    for name, extra in (("one", []), ("two", ["--nproc", "2"])):
        done = subprocess.run([sys.executable, "-m", "skiptrain", "train", str(lm_yaml), "--run-dir", name, "-q",
                               *extra], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr + done.stdout
    one, two = (torch.load(tmp_path / name / "checkpoints/last.pt", weights_only=True)["model"]
                for name in ("one", "two"))
    assert all(torch.allclose(one[k], two[k], atol=1e-5) for k in one)  # float sums in another order
