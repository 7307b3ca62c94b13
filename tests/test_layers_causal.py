"""A decoder in YAML: `causal_self_attention` is nanoGPT's attention (same weights, same numbers), it never
looks ahead, `token_positions` fits a shorter prompt, misuse is located, and a tiny GPT exports to ONNX."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml
from torch import nn
from torch.nn import functional as F

from skiptrain import build_model

from .conftest import ROOT, invoke, straight_and_resumed

VOCAB, CONTEXT, WIDTH, HEADS = 11, 12, 16, 4


def tiny_gpt(layers: int = 2, bias: bool = True, tie: bool = True) -> dict:
    """A pre-norm GPT model section: wte, wpe, `layers` blocks x + attn(ln(x)), x + mlp(ln(x)), ln_f, head."""
    head = {"id": "lm_head", "type": "linear", "out_features": VOCAB, "bias": False}
    return {
        "name": "tiny-gpt", "input": [CONTEXT], "input_dtype": "int64",
        "blocks": {
            "mlp": {"layers": [
                {"id": "c_fc", "type": "linear", "out_features": 4 * WIDTH, "bias": bias},
                {"id": "gelu", "type": "gelu"},
                {"id": "c_proj", "type": "linear", "out_features": WIDTH, "bias": bias},
            ]},
            "decoder": {"layers": [
                {"id": "ln_1", "type": "layernorm", "bias": bias},
                {"id": "attn", "type": "causal_self_attention", "num_heads": HEADS, "bias": bias},
                {"id": "ln_2", "type": "layernorm", "bias": bias},
                {"id": "mlp", "block": "mlp"},
            ], "skips": [{"from": "input", "to": "attn"}, {"from": "attn", "to": "mlp"}]},
        },
        "layers": [
            {"id": "wte", "type": "embedding", "num_embeddings": VOCAB, "embedding_dim": WIDTH},
            {"id": "wpe", "type": "token_positions"},
            {"id": "h", "block": "decoder", "repeat": layers},
            {"id": "ln_f", "type": "layernorm", "bias": bias},
            {**head, "tie": "wte"} if tie else head,
        ],
    }


# -- nanoGPT's model.py, the parts that matter, with its explicit-mask attention (its slow path) ----
class CausalSelfAttention(nn.Module):
    def __init__(self, c: int, heads: int, bias: bool):
        super().__init__()
        self.c_attn, self.c_proj, self.n_head = nn.Linear(c, 3 * c, bias=bias), nn.Linear(c, c, bias=bias), heads

    def forward(self, x):
        b, t, c = x.size()
        q, k, v = self.c_attn(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(torch.tril(torch.ones(t, t, dtype=torch.bool)).logical_not(), float("-inf"))
        y = F.softmax(att, dim=-1) @ v
        return self.c_proj(y.transpose(1, 2).contiguous().view(b, t, c))


class MLP(nn.Module):
    def __init__(self, c: int, bias: bool):
        super().__init__()
        self.c_fc, self.gelu, self.c_proj = nn.Linear(c, 4 * c, bias=bias), nn.GELU(), nn.Linear(4 * c, c, bias=bias)

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, c: int, heads: int, bias: bool):
        super().__init__()
        self.ln_1, self.attn = nn.LayerNorm(c, bias=bias), CausalSelfAttention(c, heads, bias)
        self.ln_2, self.mlp = nn.LayerNorm(c, bias=bias), MLP(c, bias)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, layers: int, bias: bool):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(VOCAB, WIDTH), wpe=nn.Embedding(CONTEXT, WIDTH),
            h=nn.ModuleList(Block(WIDTH, HEADS, bias) for _ in range(layers)), ln_f=nn.LayerNorm(WIDTH, bias=bias)))
        self.lm_head = nn.Linear(WIDTH, VOCAB, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # nanoGPT's weight tying

    def forward(self, idx):
        x = self.transformer.wte(idx) + self.transformer.wpe(torch.arange(idx.size(1)))
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))


def _nanogpt_key(key: str) -> str:
    """nanoGPT's name for one of ours: the same path under its `transformer` dict, the head outside it."""
    return key if key.startswith("lm_head.") else "transformer." + key


@pytest.mark.parametrize("bias", [True, False])
def test_same_numbers_as_nanogpt_with_the_same_weights(bias):
    torch.manual_seed(0)
    model = build_model(tiny_gpt(bias=bias)).eval()
    ref = GPT(2, bias).eval()
    state = model.state_dict()
    mapped = {_nanogpt_key(k): v for k, v in state.items()}
    assert set(mapped) == set(ref.state_dict())  # nanoGPT's keys: h.0.attn.c_attn, h.0.mlp.c_fc, wpe, ...
    with torch.no_grad():
        for value in state.values():
            value.copy_(torch.randn(value.shape))  # the shared wte/lm_head tensor is drawn once, last draw wins
    ref.load_state_dict({_nanogpt_key(k): v for k, v in model.state_dict().items()})
    idx = torch.randint(0, VOCAB, (3, CONTEXT))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), ref(idx), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(idx[:, :5]), ref(idx[:, :5]), atol=1e-5, rtol=1e-5)


def test_a_position_never_sees_later_tokens():
    torch.manual_seed(0)
    model = build_model(tiny_gpt()).eval()
    idx = torch.randint(0, VOCAB, (2, CONTEXT))
    with torch.no_grad():
        out = model(idx)
        for t in (0, 5, CONTEXT - 2):
            changed = idx.clone()
            changed[:, t + 1:] = (changed[:, t + 1:] + 1) % VOCAB
            after = model(changed)
            assert torch.equal(after[:, : t + 1], out[:, : t + 1]), t  # up to t: bit for bit the same
            assert not torch.allclose(after[:, t + 1:], out[:, t + 1:])  # the changed positions do change


def test_a_shorter_prompt_gives_the_first_rows_of_the_full_forward():
    torch.manual_seed(0)
    model = build_model(tiny_gpt()).eval()
    idx = torch.randint(0, VOCAB, (2, CONTEXT))
    with torch.no_grad():
        full = model(idx)
        for t in (1, 3, CONTEXT - 1):
            torch.testing.assert_close(model(idx[:, :t]), full[:, :t], atol=1e-6, rtol=1e-5)
    assert model.wpe.weight.shape == (CONTEXT, WIDTH)  # nanoGPT's wpe: [block_size, n_embd] at `<id>.weight`
    with pytest.raises(ValueError, match="longer than its 12 positions"):
        model(torch.zeros(1, CONTEXT + 1, dtype=torch.long))


def test_attention_dropout_acts_in_training_only():
    from skiptrain.layers.causal import CausalSelfAttention

    layer = CausalSelfAttention(8, num_heads=2, dropout=0.5, proj_dropout=0.5)
    x = torch.randn(2, 5, 8)
    layer.train()
    torch.manual_seed(0)
    a = layer(x)
    torch.manual_seed(1)
    assert not torch.allclose(a, layer(x))
    layer.eval()
    assert torch.equal(layer(x), layer(x))
    assert {n for n, _ in layer.named_parameters()} == {"c_attn.weight", "c_attn.bias", "c_proj.weight", "c_proj.bias"}


def _validate_model(tmp_path, model: dict):
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump({"model": model}, sort_keys=False))
    return invoke("validate", path)


@pytest.mark.parametrize("change, words", [
    (lambda m: m["blocks"]["decoder"]["layers"][1].update(num_heads=3), "do not split into `num_heads: 3`"),
    (lambda m: m["blocks"]["decoder"]["layers"][1].update(dropout=1.5), "dropout probability"),
    (lambda m: m["layers"][1].update(num_positions=4), "`num_positions: 4` must be an integer of at least"),
    (lambda m: m["layers"].insert(1, {"type": "flatten"}), "token_positions takes [seq, dim] samples"),
], ids=["heads", "dropout", "positions", "rank"])
def test_misuse_is_one_located_message(tmp_path, change, words):
    model = tiny_gpt()
    change(model)
    result = _validate_model(tmp_path, model)
    assert result.exit_code == 1, result.output
    assert words in result.output and "Traceback" not in result.output
    assert "model.yaml:" in result.output  # located at the layer's line


def test_the_gpt_configs_validate_whole():
    """The shipped configs: model, `text` data and `language_model` training checked, the head tied once."""
    for name, (context, params) in {"gpt_shakespeare.yaml": (64, 806_528),
                                    "gpt_shakespeare_gpu.yaml": (256, 10_752_384)}.items():
        result = invoke("validate", ROOT / "configs" / name, "--json")
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["input_shape"] == [context] and report["output_shape"] == [context, 84]
        assert report["params"] == params  # nanoGPT's 0.80 M and 10.65 M, plus wpe, which it leaves out of its count
        assert [n["tied"] for n in report["nodes"] if "tied" in n] == [{"weight": "wte.weight"}]


def _write(path, data):
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_a_tiny_gpt_exports_to_onnx_with_a_dynamic_batch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    config = _write(tmp_path / "gpt.yaml", {"model": tiny_gpt()})
    result = invoke("export", config, "-o", tmp_path / "gpt.onnx")
    assert result.exit_code == 0, result.output
    assert "batch 3" in result.stdout and "max abs diff" in result.stdout
    from skiptrain import export

    model = export.load_source(config).model.eval()
    session = ort.InferenceSession(str(tmp_path / "gpt.onnx"), providers=["CPUExecutionProvider"])
    idx = torch.randint(0, VOCAB, (5, CONTEXT))
    with torch.no_grad():
        expected = model(idx).numpy()
    np.testing.assert_allclose(session.run(None, {"input": idx.numpy()})[0], expected, atol=1e-4, rtol=1e-3)


@pytest.mark.slow
def test_the_layers_export_with_a_dynamic_sequence_too(tmp_path):
    """What `skiptrain export` needs for generation from ONNX: the sequence axis as a Dim up to the context."""
    ort = pytest.importorskip("onnxruntime")
    model = build_model(tiny_gpt()).eval()
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq", min=1, max=CONTEXT)}
    program = torch.onnx.export(model, (torch.zeros(2, CONTEXT, dtype=torch.long),), dynamo=True,
                                dynamic_shapes=(dims,), input_names=["input"], output_names=["output"], verbose=False)
    program.save(str(tmp_path / "seq.onnx"))
    session = ort.InferenceSession(str(tmp_path / "seq.onnx"), providers=["CPUExecutionProvider"])
    for batch, length in ((1, 1), (3, 5), (2, CONTEXT)):
        idx = torch.randint(0, VOCAB, (batch, length))
        with torch.no_grad():
            expected = model(idx).numpy()
        np.testing.assert_allclose(session.run(None, {"input": idx.numpy()})[0], expected, atol=1e-4, rtol=1e-3)


def test_a_tiny_gpt_learns_text_and_resumes_bit_for_bit(tmp_path):
    """The pieces together through `train`: a tied GPT on text the test writes, straight and resumed."""
    text = "".join(f"{word} the {i % 7} cats sat on the mat.\n" for i, word in enumerate(["ab", "cd", "ef"] * 40))
    (tmp_path / "corpus.txt").write_text(text)
    vocab = len(set(text))
    model = tiny_gpt(layers=1)
    model["layers"][0]["num_embeddings"] = model["layers"][-1]["out_features"] = vocab
    config = _write(tmp_path / "gpt.yaml", {
        "model": model,
        "data": {"dataset": "text", "root": str(tmp_path / "corpus.txt"), "tokenizer": "char",
                 "block_size": CONTEXT, "batch_size": 8, "batches_per_epoch": 6, "eval_batches": 2},
        "train": {"task": "language_model", "epochs": 2, "device": "cpu", "deterministic": True,
                  "optimizer": {"name": "adamw", "lr": 3.0e-3}, "grad_clip": 1.0},
    })
    straight, resumed, run = straight_and_resumed(config, tmp_path)
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    assert torch.equal(resumed["wte.weight"], resumed["lm_head.weight"])  # still one tensor after training
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train_loss"] < math.log(vocab)  # it learned something: below a uniform guess
