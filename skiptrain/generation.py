"""Text generation from a language-model run: nanoGPT's ``generate``, with a key/value cache, streamed.

Each step feeds the model the context (the last ``block_size`` tokens, as nanoGPT crops it), takes
the last position's logits and picks the next token: ``softmax(logits / temperature)`` restricted to
the ``top_k`` most likely, drawn with a ``torch.Generator`` seeded by ``seed`` (so one seed gives one
text), or the argmax when ``temperature`` is 0.

The key/value cache: a GPT's layers are per position (embedding, layernorm, linear, gelu, dropout,
add) except its attention and its learned positions, which declare a ``kv_cache`` attribute (see
``layers/causal.py``). While a ``KVCache`` is attached, each attention keeps the keys and values of the
tokens it has seen and attends only the new token to all of them, and ``token_positions`` adds the
positions after the cache's length: one step costs a forward of one token, not of the whole context.
Positions are learned and absolute, so once the text outgrows the context the window slides, every
token's position changes, and the cache is recomputed on the window (the naive loop's forward): the
tokens are exactly the naive loop's on both sides of the boundary. A model with a layer that mixes
positions without a cache (a convolution over time, non-causal attention, a learnable tensor) runs
the naive loop, which ``sample`` says once.
"""
from __future__ import annotations

import codecs
import math
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import CheckpointError, ConfigError, DataError, Location, SkiptrainError, warn

# Modules that act on each position alone (the last axis of a [T, ...] sample); dropout is off in eval.
PER_POSITION = (nn.Linear, nn.Embedding, nn.Identity, nn.modules.dropout._DropoutNd, nn.ReLU, nn.ReLU6,
                nn.GELU, nn.SiLU, nn.Mish, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU,
                nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Softsign, nn.LogSigmoid, nn.Tanhshrink)
LAST_AXIS_NORMS = (nn.LayerNorm, nn.RMSNorm)


class KVCache:
    """The keys and values each cache-aware layer has seen, and how many tokens that is (``length``)."""

    def __init__(self, model: nn.Module):
        self.layers = [m for m in model.modules() if hasattr(type(m), "kv_cache")]
        self.length = 0
        self._kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def reset(self) -> None:
        self.length = 0
        self._kv.clear()

    @contextmanager
    def attached(self) -> Iterator["KVCache"]:
        """The model's cache-aware layers use this cache inside the block, and their plain forward after."""
        for layer in self.layers:
            layer.kv_cache = self
        try:
            yield self
        finally:
            for layer in self.layers:
                del layer.kv_cache  # back to the class's None

    def attend(self, layer: Any, x: torch.Tensor) -> torch.Tensor:
        """``layer``'s causal attention for the new tokens ``x`` over every token seen so far."""
        q, k, v = layer.split_heads(x)
        past = self._kv.get(id(layer))
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        self._kv[id(layer)] = (k, v)
        new, seen = q.shape[2], k.shape[2]
        if new == 1:  # one query sees every key: no mask
            y = F.scaled_dot_product_attention(q, k, v)
        elif new == seen:  # a fresh window: the plain causal forward
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # new token i (at seen - new + i) sees the keys up to itself
            mask = torch.ones(new, seen, dtype=torch.bool, device=q.device).tril(seen - new)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return layer.merge_heads(y)


def _position_wise(module: nn.Module) -> bool:
    if hasattr(type(module), "kv_cache"):
        return True
    if isinstance(module, LAST_AXIS_NORMS):
        return len(module.normalized_shape) == 1
    if isinstance(module, nn.Sequential):
        return all(_position_wise(m) for m in module)
    return isinstance(module, PER_POSITION)


def cache_blocker(plan: Any, model: nn.Module) -> str | None:
    """Why ``model`` cannot generate with a key/value cache (the first node that mixes positions
    without one), or None: every node, merge and projection of the plan is checked."""
    from . import registry
    from .merges import MERGES

    graph = plan.graph
    length = graph.input_shape[0]
    for node in graph.order:
        if tuple(node.meta.get("shape", ()))[:1] != (length,):
            return f"`{node.id}` gives {list(node.meta.get('shape', ()))}, not one row per token"
        layer = registry.get(node.type, node.loc)
        if layer.passthrough:
            continue  # a merge layer: its skips are checked below
        if layer.tensor or not _position_wise(model.get_submodule(node.id)):
            return f"`{node.id}` ({node.type}) mixes positions and keeps no key/value cache"
    for skip in graph.skips:
        rank = len(graph.nodes[skip.target].meta["shape"])
        if not MERGES.get(skip.merge).operator and skip.meta.get("axis", 0) % rank == 0:
            return f"the skip {skip.source} -> {skip.target} joins along the sequence"
        projection = plan.projection_for(skip)
        if projection is not None and not _position_wise(model.get_submodule(projection.id)):
            return f"the projection `{projection.id}` mixes positions"
    return None


def chooser(temperature: float, top_k: int | None, vocab: int,
            generator: torch.Generator) -> Callable[[torch.Tensor], int]:
    """nanoGPT's choice of the next token from the last position's logits (on the CPU, in float64, so a
    seed gives the same draw on any device); ids past the tokenizer's (a padded vocabulary) never."""
    def choose(logits: torch.Tensor) -> int:
        logits = logits[:vocab].detach().to("cpu", torch.float64)
        if not torch.isfinite(logits).all():
            raise DataError("the model's logits are not finite numbers", None,
                            "the weights or the prompt push the model out of range; try another checkpoint")
        if temperature == 0:
            return int(torch.argmax(logits))
        logits = (logits - logits.max()) / temperature  # the largest is 0: no overflow at a tiny temperature
        if top_k is not None and top_k < vocab:
            kth = torch.topk(logits, top_k).values[-1]
            logits = logits.masked_fill(logits < kth, -math.inf)
        return int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))
    return choose


def generate(model: nn.Module, ids: list[int], steps: int, context: int, choose: Callable[[torch.Tensor], int],
             cached: bool = True, on_token: Callable[[int], None] | None = None) -> list[int]:
    """``steps`` new tokens after ``ids`` (the model in eval mode). Each is chosen from the logits of the
    last ``context`` tokens; with ``cached``, by feeding only the new token while the text fits the context."""
    device = next(model.parameters()).device
    ids, new = list(ids), []
    cache = KVCache(model) if cached else None
    with torch.inference_mode(), (cache.attached() if cache is not None else nullcontext()):
        for _ in range(steps):
            if cache is None:
                window = ids[-context:]
            elif cache.length in (0, context):  # the first step, or past the context: the window afresh
                cache.reset()
                window = ids[-context:]
            else:  # the cache holds every token but the last one, at their positions
                window = ids[-1:]
            logits = model(torch.tensor([window], dtype=torch.long, device=device))[0, -1]
            if cache is not None:
                cache.length += len(window)
            token = choose(logits)
            ids.append(token)
            new.append(token)
            if on_token is not None:
                on_token(token)
    return new


class TextStream:
    """Tokens to text as they come: UTF-8 bytes are held until their character is complete."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def add(self, token: int) -> str:
        return self._decoder.decode(self.tokenizer.token_bytes(token))

    def end(self) -> str:
        return self._decoder.decode(b"", final=True)


def check_options(tokens: int, temperature: float, top_k: int | None, seed: int) -> None:
    """The API's own checks of what the CLI's option ranges check: each located at its option."""
    for ok, option, value, hint in [
        (isinstance(tokens, int) and tokens >= 1, "--tokens", tokens, "a number of tokens, at least 1"),
        (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0,
         "--temperature", temperature, "0 (greedy) or a positive number, 0.8 as nanoGPT"),
        (top_k is None or (isinstance(top_k, int) and top_k >= 1), "--top-k", top_k, "at least 1, or none"),
        (isinstance(seed, int) and 0 <= seed < 2 ** 64, "--seed", seed, "an integer from 0 to 2**64 - 1"),
    ]:
        if not ok or isinstance(value, bool):
            raise ConfigError(f"{option} cannot be {value!r}", Location(option), hint)


def _prompt_ids(tokenizer: Any, prompt: str) -> tuple[str, list[int]]:
    """The prompt's ids; an empty prompt starts from a newline, as nanoGPT's ``start = "\\n"``."""
    text = prompt or "\n"
    try:
        ids = tokenizer.encode(text)
    except DataError as exc:
        if prompt:
            raise DataError(exc.message, Location("--prompt"), exc.hint) from None
        ids = [0]  # no newline in the vocabulary: its first token
        text = tokenizer.decode(ids)
    return text, ids


def sample(source: Any, prompt: str = "", tokens: int = 300, temperature: float = 0.8, top_k: int | None = 40,
           seed: int = 1, device: str = "cpu", which: str = "last", cache: bool = True,
           on_text: Callable[[str], None] | None = None) -> dict[str, Any]:
    """``tokens`` tokens of text after ``prompt`` from a language-model run, each piece handed to
    ``on_text`` as it is decoded (the prompt first); ``text`` is the prompt and every piece."""
    from . import tasks
    from .api import restore
    from .data.text import tokenizer_from
    from .tasks.language_model import LanguageModel
    from .training.setup import select_device

    check_options(tokens, temperature, top_k, seed)
    if Path(source).suffix.lower() == ".onnx" and Path(source).is_file():
        model, tokenizer, context, vocab, origin, blocker = _onnx_model(Path(source))
        return _sample_with(model, tokenizer, context, vocab, origin, blocker, prompt, tokens, temperature, top_k,
                            seed, on_text)
    restored = restore(source, which, device=select_device(device))
    where = Location(str(restored.state.path))
    meta = restored.model.meta["skiptrain"]
    task = tasks.TASKS.get(restored.data.get("task") or tasks.guess(meta["input_shape"], meta["output_shape"]).name)
    if not isinstance(task, LanguageModel) or len(meta["input_shape"]) != 1:
        raise CheckpointError(f"sample needs a language model run, and this is a {task.name} run", where,
                              "train a config with `data: {dataset: text}` and `train.task: language_model` "
                              "(configs/gpt_shakespeare.yaml)")
    try:
        tokenizer = tokenizer_from(restored)
    except SkiptrainError as exc:
        raise DataError(exc.message, where, exc.hint) from None
    blocker = cache_blocker(restored.plan, restored.model) if cache else "the cache is off (--no-cache)"
    if cache and blocker:
        warn(f"{blocker}: sampling without a key/value cache (each token is a forward of the whole context)")
    return _sample_with(restored.model, tokenizer, meta["input_shape"][0],
                        min(tokenizer.vocab_size, meta["output_shape"][-1]), restored.state.path, blocker, prompt,
                        tokens, temperature, top_k, seed, on_text)


class _OnnxForward(nn.Module):
    """An exported language model behind ``generate``'s module interface: onnxruntime, no cache (the
    exported graph has none), on the CPU."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], dtype: str):
        super().__init__()
        self.run, self.dtype = run, dtype
        self.anchor = nn.Parameter(torch.zeros(()), requires_grad=False)  # generate() reads the device from it

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.run(ids.cpu().numpy().astype(self.dtype))))


def _onnx_model(path: Path) -> tuple[nn.Module, Any, int, int, str, str]:
    """A file written by ``skiptrain export`` from a text run: its tokenizer and context travel in its metadata."""
    from .predict import open_model

    model = open_model(path)
    tokenizer, context = model.extra.get("tokenizer"), model.extra.get("context")
    if tokenizer is None or context is None or len(model.input_shape) != 1:
        raise CheckpointError(f"sample needs a language model, and {path} carries no tokenizer and context",
                              Location(str(path)), "export a run of `data: {dataset: text}` with `skiptrain export`")
    vocab = min(tokenizer.vocab_size, model.output_shape[-1])
    return _OnnxForward(model.run, model.input_dtype), tokenizer, context, vocab, str(path), "an .onnx file"


def _sample_with(model: nn.Module, tokenizer: Any, context: int, vocab: int, origin: Any, blocker: str | None,
                 prompt: str, tokens: int, temperature: float, top_k: int | None, seed: int,
                 on_text: Callable[[str], None] | None) -> dict[str, Any]:
    """The sampling loop shared by a run and an .onnx file, streaming decoded text to ``on_text``."""
    where = Location(str(origin))
    text, ids = _prompt_ids(tokenizer, prompt)
    pieces, emit = [text], on_text or (lambda piece: None)
    stream = TextStream(tokenizer)

    def on_token(token: int) -> None:
        piece = stream.add(token)
        if piece:
            pieces.append(piece)
            emit(piece)

    emit(text)
    choose = chooser(temperature, top_k, vocab, torch.Generator().manual_seed(seed))
    start = time.perf_counter()
    try:
        new = generate(model, ids, tokens, context, choose, cached=blocker is None, on_token=on_token)
    except (RuntimeError, ValueError) as exc:
        if blocker is None or len(ids) >= context:
            raise
        raise DataError(f"the model does not run on a prompt shorter than its {context}-token context: "
                        f"{str(exc).splitlines()[0][:200]}", where,
                        "sample needs a decoder that takes fewer tokens than its context, as a GPT") from None
    seconds = time.perf_counter() - start
    tail = stream.end()
    if tail:
        pieces.append(tail)
        emit(tail)
    return {"text": "".join(pieces), "prompt": text, "tokens": new, "checkpoint": origin,
            "cached": blocker is None, "seconds": seconds, "tokens_per_second": len(new) / max(seconds, 1e-9)}
