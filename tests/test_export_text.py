"""A language model's ONNX export (issue 17): batch and sequence are dynamic up to the context, onnxruntime
agrees with PyTorch at several lengths, the metadata carries the tokenizer, and `predict` reads a `.txt`
prompt from the `.onnx` file alone as from the run. On a tiny tied GPT trained on text the test writes."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

os.environ["XDG_CACHE_HOME"] = str(Path(tempfile.gettempdir()) / "skiptrain-test-cache")  # onnxruntime's cache

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from skiptrain import export as export_module  # noqa: E402

from .conftest import invoke  # noqa: E402
from .test_layers_causal import CONTEXT, tiny_gpt  # noqa: E402

ort = pytest.importorskip("onnxruntime")
TEXT = "".join(f"{name}: the {i % 7} cats sat on the mat.\n" for i, name in enumerate(["ROMEO", "JULIET"] * 60))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A run of a tiny tied GPT (1 block, context 12, char tokenizer) and its export: (run, .onnx, report)."""
    root = tmp_path_factory.mktemp("gpt")
    (root / "corpus.txt").write_text(TEXT)
    model = tiny_gpt(layers=1)
    model["layers"][0]["num_embeddings"] = model["layers"][-1]["out_features"] = len(set(TEXT))
    config = root / "gpt.yaml"
    config.write_text(yaml.safe_dump({
        "model": model,
        "data": {"dataset": "text", "root": str(root / "corpus.txt"), "tokenizer": "char", "block_size": CONTEXT,
                 "batch_size": 8, "batches_per_epoch": 4, "eval_batches": 1},
        "train": {"task": "language_model", "epochs": 1, "device": "cpu", "optimizer": {"name": "adamw", "lr": 3e-3}},
    }, sort_keys=False))
    assert invoke("train", config, "--run-dir", root / "run", "-q").exit_code == 0
    result = invoke("export", root / "run", "-o", root / "gpt.onnx")
    assert result.exit_code == 0, result.output
    return root / "run", root / "gpt.onnx", result.stdout


def test_batch_and_sequence_are_dynamic_and_verified_at_several_lengths(exported):
    run, onnx_path, stdout = exported
    assert f"sequence 1..{CONTEXT}" in stdout
    for batch in (1, 3):  # export's own verification, as the CLI reports it
        for length in (1, CONTEXT // 2, CONTEXT):
            assert f"batch {batch}, {length} tokens, `output`" in stdout, stdout
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", "sequence"]
    model = export_module.load_source(run).model.eval()
    vocab = model.meta["skiptrain"]["output_shape"][-1]
    generator = torch.Generator().manual_seed(3)
    for batch in (1, 3):
        for length in (1, CONTEXT // 2, CONTEXT):
            ids = torch.randint(0, vocab, (batch, length), generator=generator)
            with torch.inference_mode():
                expected = model(ids).numpy()
            got = session.run(None, {"input": ids.numpy()})[0]
            assert got.shape == (batch, length, vocab)
            np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-3)


def test_the_metadata_holds_the_tokenizer_and_the_context(exported):
    run, onnx_path, _ = exported
    meta = export_module.read_metadata(onnx_path)
    assert meta["tokenizer"] == json.loads((run / "tokenizer.json").read_text())
    assert meta["context"] == CONTEXT and meta["input_shape"] == [CONTEXT] and meta["task"] == "language_model"


def _predict(source, *args):
    result = invoke("predict", source, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["predictions"]


def test_predict_reads_a_prompt_from_the_onnx_file_as_from_the_run(exported, tmp_path):
    run, onnx_path, _ = exported
    short, long = tmp_path / "short.txt", tmp_path / "long.txt"
    short.write_text("ROMEO: the ")
    long.write_text("JULIET: the 3 cats sat on the mat.\nROMEO: the ")  # longer than the context: its last 12 count
    from_onnx = _predict(onnx_path, short, long, "-k", "3")
    from_run = _predict(run, short, long, "-k", "3")
    assert [p["input"] for p in from_onnx] == [str(short), str(long)]
    for a, b in zip(from_onnx, from_run):
        assert [t["token"] for t in a["next_tokens"]] == [t["token"] for t in b["next_tokens"]]
        np.testing.assert_allclose([t["probability"] for t in a["next_tokens"]],
                                   [t["probability"] for t in b["next_tokens"]], atol=1e-5)
        assert all(len(t["text"]) == 1 and t["text"] in TEXT for t in a["next_tokens"])  # decoded characters
    # the last 12 tokens of the long prompt are what the model saw
    cropped = tmp_path / "cropped.txt"
    cropped.write_text(long.read_text()[-CONTEXT:])
    assert _predict(onnx_path, cropped, "-k", "3")[0]["next_tokens"] == from_onnx[1]["next_tokens"]
    table = invoke("predict", onnx_path, short, "-k", "2")
    assert table.exit_code == 0 and "next token" in table.stdout and "'" in table.stdout, table.output


def test_a_prompt_the_tokenizer_cannot_read_is_one_located_message(exported, tmp_path):
    _, onnx_path, _ = exported
    unknown, empty = tmp_path / "unknown.txt", tmp_path / "empty.txt"
    unknown.write_text("ROMEO: Zounds!")  # Z is not in the training text's alphabet
    empty.write_text("")
    for prompt, words in ((unknown, "'Z'"), (empty, "is empty")):
        result = invoke("predict", onnx_path, prompt)
        assert result.exit_code == 1 and words in result.output and str(prompt) in result.output, result.output
        assert "Traceback" not in result.output


def test_a_model_without_a_sequence_to_vary_keeps_its_fixed_shape(tmp_path):
    """A float model's export is unchanged: no `context`, no tokenizer, a fixed sample shape."""
    from skiptrain import build_model
    from skiptrain.export_tokens import sequence_context

    mlp = build_model({"name": "mlp", "input": [6], "layers": [{"type": "linear", "out_features": 3}]})
    assert sequence_context(mlp) is None
    tokens = tiny_gpt(layers=1)  # token ids in, but one answer per sequence: no sequence axis to vary
    tokens["layers"][-1:] = [{"type": "flatten"}, {"type": "linear", "out_features": 2}]
    assert sequence_context(build_model(tokens)) is None
    assert sequence_context(build_model(tiny_gpt(layers=1))) == CONTEXT


def test_a_prompt_for_a_model_without_a_tokenizer_says_what_it_needs(tmp_path):
    from skiptrain.errors import DataError
    from skiptrain.predict import collect

    prompt = tmp_path / "prompt.txt"
    prompt.write_text("ROMEO:")
    with pytest.raises(DataError) as error:
        collect([prompt])  # what predict does for a model that stores no tokenizer
    assert "stores its tokenizer" in error.value.hint
    assert collect([prompt], (".txt",)) == [prompt]
