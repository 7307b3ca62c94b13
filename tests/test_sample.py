"""`skiptrain sample` (issue 17): text from a tiny tied GPT trained on text the test writes; one seed gives
one text, the key/value cache gives exactly the naive loop's tokens (greedy and seeded, across the context
boundary), the text streams as it is printed, a model that mixes positions falls back to the naive loop,
and each misuse is one message."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from skiptrain import api, build_model
from skiptrain.data.tokenizers import ByteTokenizer
from skiptrain.generation import TextStream, cache_blocker, chooser, generate

from .conftest import ROOT, TINY_RESIDUAL, invoke
from .test_data_text import SAMPLE
from .test_layers_causal import tiny_gpt

VOCAB, CONTEXT = 34, 16  # SAMPLE's characters; a context short enough to cross in a test


def gpt_config(root: Path) -> dict:
    model = tiny_gpt(layers=2)
    model["input"] = [CONTEXT]
    model["layers"][0]["num_embeddings"] = VOCAB
    model["layers"][-1]["out_features"] = VOCAB
    return {"model": model,
            "data": {"dataset": "text", "root": str(root), "batch_size": 8, "batches_per_epoch": 8},
            "train": {"task": "language_model", "epochs": 1, "optimizer": {"name": "adamw", "lr": 0.01},
                      "device": "cpu", "deterministic": True}}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny tied GPT (2 blocks, context 16) after one short epoch on SAMPLE."""
    folder = tmp_path_factory.mktemp("sample")
    (folder / "corpus.txt").write_text(SAMPLE)
    config = folder / "gpt.yaml"
    config.write_text(yaml.safe_dump(gpt_config(folder / "corpus.txt"), sort_keys=False))
    result = invoke("train", config, "--run-dir", folder / "run", "-q")
    assert result.exit_code == 0, result.output
    return folder / "run"


@pytest.fixture(scope="module")
def model(run):
    return api.restore(run).model


def naive_loop(model, ids: list[int], steps: int, choose) -> list[int]:
    """nanoGPT's generate, written here: a full forward of the cropped context per token."""
    ids = list(ids)
    with torch.no_grad():
        for _ in range(steps):
            ids.append(choose(model(torch.tensor([ids[-CONTEXT:]]))[0, -1]))
    return ids[-steps:]


def test_one_seed_one_text_and_another_seed_another(run):
    first = invoke("sample", run, "--prompt", "Speak", "--tokens", "40", "--seed", "7", "-q")
    assert first.exit_code == 0, first.output
    assert first.stdout.startswith("Speak") and len(first.stdout) == len("Speak") + 40 + 1  # a char per token
    assert invoke("sample", run, "--prompt", "Speak", "--tokens", "40", "--seed", "7", "-q").stdout == first.stdout
    assert invoke("sample", run, "--prompt", "Speak", "--tokens", "40", "--seed", "8", "-q").stdout != first.stdout


def test_greedy_is_the_naive_loop_with_and_without_the_cache(run):
    restored = api.restore(run)
    greedy = lambda logits: int(torch.argmax(logits))  # noqa: E731
    prompt = restored.state.data["tokenizer"]["chars"]
    ids = [prompt.index(c) for c in "All:"]
    expected = naive_loop(restored.model, ids, 30, greedy)
    for cached in (True, False):
        result = api.sample(run, "All:", tokens=30, temperature=0, cache=cached)
        assert result["tokens"] == expected and result["cached"] is cached


@pytest.mark.parametrize("prompt_length", [3, CONTEXT - 1, CONTEXT + 5])
def test_the_cache_gives_the_naive_loops_tokens_across_the_context(model, prompt_length):
    """Seeded sampling at temperature 1 with every token allowed, 2.5 contexts long: the same tokens, and
    logits equal up to float rounding, before and after the window starts to slide."""
    ids = [int(i) for i in torch.randint(0, VOCAB, (prompt_length,), generator=torch.Generator().manual_seed(3))]
    logged: dict[bool, list[torch.Tensor]] = {True: [], False: []}
    for cached in (True, False):
        choose = chooser(1.0, None, VOCAB, torch.Generator().manual_seed(5))
        logged[cached] = []
        log = lambda logits, c=cached, f=choose: (logged[c].append(logits.clone()), f(logits))[1]  # noqa: E731
        tokens = generate(model, ids, 40, CONTEXT, log, cached=cached)
        if cached:
            cached_tokens = tokens
    assert cached_tokens == tokens
    assert cached_tokens == naive_loop(model, ids, 40, chooser(1.0, None, VOCAB, torch.Generator().manual_seed(5)))
    for with_cache, without in zip(logged[True], logged[False]):
        torch.testing.assert_close(with_cache, without, atol=1e-5, rtol=1e-5)
    assert len(set(cached_tokens)) > 3  # sampled, not stuck on one token


def test_the_cache_feeds_one_token_per_step_inside_the_context(model):
    lengths = []
    hook = model.wte.register_forward_hook(lambda module, args, out: lengths.append(args[0].shape[1]))
    try:
        generate(model, [1, 2, 3], 20, CONTEXT, chooser(0, None, VOCAB, torch.Generator()), cached=True)
    finally:
        hook.remove()
    assert lengths[:CONTEXT - 2] == [3] + [1] * (CONTEXT - 3)  # the prompt once, then a token a step
    assert lengths[CONTEXT - 2:] == [CONTEXT] * (20 - CONTEXT + 2)  # past the context: the sliding window
    assert model.get_submodule("h.0.attn").kv_cache is None  # detached after


def test_the_printed_text_is_the_returned_text(run):
    pieces: list[str] = []
    result = api.sample(run, "Speak", tokens=25, seed=2, on_text=pieces.append)
    assert "".join(pieces) == result["text"] and result["text"].startswith("Speak") and len(pieces) == 26
    shown = invoke("sample", run, "--prompt", "Speak", "--tokens", "25", "--seed", "2")
    assert shown.exit_code == 0, shown.output
    assert shown.stdout == result["text"] + "\n"
    assert "25 tokens in" in shown.stderr and "key/value cache" in shown.stderr


def test_an_empty_prompt_starts_from_a_newline(run):
    result = api.sample(run, "", tokens=5, seed=1)
    assert result["prompt"] == "\n" and result["text"].startswith("\n") and len(result["tokens"]) == 5


def test_bytes_are_held_until_their_character_is_complete():
    stream, text = TextStream(ByteTokenizer()), "aé✓🙂b"
    pieces = [stream.add(b) for b in text.encode()]
    assert "".join(pieces) + stream.end() == text
    assert pieces[:3] == ["a", "", "é"] and pieces[-1] == "b"  # é is two bytes: nothing after the first
    cut = TextStream(ByteTokenizer())
    assert cut.add(0xF0) == "" and cut.end() == "\ufffd"  # a cut character ends as a replacement


def test_a_layer_that_mixes_positions_falls_back_to_the_naive_loop():
    plain = tiny_gpt(layers=1)
    assert cache_blocker(*_built(plain)) is None
    mixed = tiny_gpt(layers=1)
    mixed["layers"].insert(3, {"id": "mix", "type": "self_attention", "num_heads": 2})  # sees later tokens
    plan, model = _built(mixed)
    assert "`mix` (self_attention) mixes positions" in cache_blocker(plan, model)
    concat = tiny_gpt(layers=1)
    concat["layers"].insert(2, {"id": "twice", "type": "linear", "out_features": 16})
    concat["skips"] = [{"from": "wpe", "to": "twice", "merge": "concat", "axis": 0}]
    assert cache_blocker(*_built(concat)) is not None  # the sequence grows: a row is no longer a token


def test_the_fallback_is_said_once_and_gives_the_same_text(run, monkeypatch):
    from skiptrain import generation

    expected = invoke("sample", run, "--tokens", "30", "--seed", "3").stdout
    monkeypatch.setattr(generation, "cache_blocker", lambda plan, model: "`conv` (conv1d) mixes positions")
    result = invoke("sample", run, "--tokens", "30", "--seed", "3")
    assert result.exit_code == 0 and result.stdout == expected
    assert result.stderr.count("warning: `conv` (conv1d) mixes positions") == 1 and "no cache" in result.stderr


def _built(model_section: dict):
    from skiptrain.api import check_model
    from skiptrain.module import build_module

    plan = check_model({"model": model_section})
    return plan, build_module(plan).eval()


def test_a_classifier_run_is_refused(tmp_path, write_yaml):
    config = write_yaml(TINY_RESIDUAL.replace("epochs: 2", "epochs: 1"))
    assert invoke("train", config, "--run-dir", tmp_path / "cls", "-q").exit_code == 0
    result = invoke("sample", tmp_path / "cls")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "sample needs a language model run" in result.stderr and "last.pt" in result.stderr


@pytest.mark.parametrize("args, words", [
    (["--tokens", "0"], "--tokens"), (["--tokens", "-3"], "--tokens"), (["--temperature", "-0.5"], "--temperature"),
    (["--temperature", "nan"], "--temperature"), (["--temperature", "inf"], "finite"), (["--top-k", "0"], "--top-k"),
    (["--seed", "-1"], "--seed"),
])
def test_option_ranges_are_usage_errors(run, args, words):
    result = invoke("sample", run, *args)
    assert result.exit_code == 2 and words in result.output


def test_misuse_is_one_located_message(run, tmp_path):
    unknown = invoke("sample", run, "--prompt", "Zebra")
    assert unknown.exit_code == 1 and "Traceback" not in unknown.output
    assert "--prompt: data error: the character 'Z'" in unknown.stderr and "hint:" in unknown.stderr
    missing = invoke("sample", tmp_path / "nowhere")
    assert missing.exit_code == 1 and "checkpoint error" in missing.stderr
    with pytest.raises(Exception, match="--top-k"):
        api.sample(run, top_k=0)


def test_a_reader_that_leaves_early_gets_no_traceback(run):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-m", "skiptrain", "sample", str(run), "--tokens", "100000"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    assert len(child.stdout.read(20)) == 20  # streamed: the text comes before the generation ends
    child.stdout.close()  # `| head -c 20`
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == 0 and b"Traceback" not in stderr and b"Error" not in stderr, stderr.decode()


def test_decoding_matches_the_tokenizer(run):
    """Streamed pieces are what the tokenizer's own decode gives for the same ids."""
    from skiptrain.data.text import tokenizer_from

    tokenizer = tokenizer_from(api.restore(run))
    result = api.sample(run, "All", tokens=20, seed=4)
    assert result["text"] == "All" + tokenizer.decode(result["tokens"])


def test_several_new_tokens_attend_through_the_cache_as_in_one_forward(model):
    """Feeding 5 tokens, then 3 more to the cache gives the last 3 rows of one forward of all 8."""
    from skiptrain.generation import KVCache

    idx = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(1))
    cache = KVCache(model)
    with torch.no_grad(), cache.attached():
        model(idx[:, :5])
        cache.length = 5
        rest = model(idx[:, 5:])
    with torch.no_grad():
        torch.testing.assert_close(rest, model(idx)[:, 5:], atol=1e-5, rtol=1e-5)


# -- docs/gpt.md: the page about this command and its config stays true --------------------------------
PAGE = ROOT / "docs" / "gpt.md"


def test_the_gpt_page_quotes_the_config_and_validate_as_they_are():
    """Every line of the page's YAML snippets is a line of configs/gpt_shakespeare.yaml, and the
    validate lines it shows are validate's."""
    import re

    config = ROOT / "configs" / "gpt_shakespeare.yaml"
    lines = set(config.read_text().splitlines())
    blocks = re.findall(r"```(\w*)\n(.*?)```", PAGE.read_text(), re.S)
    quoted = [line for kind, body in blocks if kind == "yaml" for line in body.splitlines() if line.strip()]
    assert len(quoted) > 30 and [line for line in quoted if line not in lines] == []
    shown = next(body for kind, body in blocks if kind == "text" and "tied:" in body).splitlines()
    validated = invoke("validate", config)
    assert validated.exit_code == 0 and all(line in validated.stdout.splitlines() for line in shown)


def test_the_gpt_page_links_resolve():
    import re

    from .test_walkthrough import heading_anchors

    links = re.findall(r"\]\(([^)\s]+)\)", PAGE.read_text(encoding="utf-8"))
    assert links
    for link in links:
        target, _, anchor = link.partition("#")
        path = (PAGE.parent / target).resolve() if target else PAGE
        assert path.exists(), f"{link} points to a missing file"
        assert not anchor or anchor in heading_anchors(path), f"{link} points to a missing heading"


def test_sample_runs_from_the_exported_onnx_file_with_the_runs_tokens(run, tmp_path):
    """Issue 17, item 5: the .onnx carries its tokenizer and context; sampling from it (onnxruntime, no cache)
    gives the run's tokens, greedy and seeded, across the context boundary."""
    onnx = tmp_path / "gpt.onnx"
    assert invoke("export", run, "-o", onnx).exit_code == 0
    for options in (("--temperature", "0"), ("--seed", "3")):
        from_run = invoke("sample", run, "--prompt", "Speak", "--tokens", "24", *options, "-q")
        from_onnx = invoke("sample", onnx, "--prompt", "Speak", "--tokens", "24", *options, "-q")
        assert from_onnx.exit_code == 0, from_onnx.output
        assert from_onnx.stdout == from_run.stdout and len(from_run.stdout) > len("Speak")


def test_an_onnx_file_that_is_no_language_model_is_refused(tmp_path):
    from .conftest import TINY_RESIDUAL_MODEL

    config = tmp_path / "cnn.yaml"
    config.write_text(TINY_RESIDUAL_MODEL)
    assert invoke("export", config, "-o", tmp_path / "cnn.onnx", "--no-verify").exit_code == 0
    result = invoke("sample", tmp_path / "cnn.onnx", "--tokens", "3")
    assert result.exit_code == 1 and "sample needs a language model" in result.stderr
