"""Language modelling: the next token at every position; loss in nats per token, perplexity, bits.

Outputs are ``[B, T, V]`` logits, targets ``[B, T]`` token ids (the inputs shifted by one). The
headline is perplexity ``exp(loss)``, lower is better: the best checkpoint is the one of lowest
validation loss, as in nanoGPT. ``bpc`` (bits per character) and ``bpb`` (bits per UTF-8 byte)
divide the summed loss by the characters and bytes the targets stand for, which the ``text``
dataset's evaluation batches carry (``text_units``): exact for char, byte and BPE tokenizers
alike (for char-level data ``bpc`` is ``loss / ln 2``). Ids without text (``synthetic``) count
one character and one byte per token.
"""
from __future__ import annotations

import math
from typing import Any

from ..errors import ConfigError, DataError
from ..config import where
from .base import Metrics, Task, exact_sum, register


class LanguageModelMetrics(Metrics):
    counts, parts = ("tokens", "chars", "bytes"), ("losses",)

    def __init__(self):
        self.losses: list = []  # nats, summed over every target token of each batch
        self.tokens = 0
        self.chars = self.bytes = 0

    def update(self, output, target) -> None:
        from torch.nn import functional as F

        self.losses.append(F.cross_entropy(output.float().flatten(0, -2), target.flatten(), reduction="sum"))
        self.tokens += target.numel()
        units = getattr(target, "text_units", None)  # None: ids without text (synthetic): a unit per token
        self.chars += target.numel() if units is None else units[0]
        self.bytes += target.numel() if units is None else units[1]

    def summary(self) -> dict[str, Any]:
        nats = exact_sum(self.losses)
        loss = nats / max(1, self.tokens)
        result = {"loss": loss, "ppl": math.exp(min(loss, 700.0))}
        result["bpc"] = nats / math.log(2) / max(1, self.chars)
        result["bpb"] = nats / math.log(2) / max(1, self.bytes)
        return result


def token_loss(inner):
    """``inner`` (a cross-entropy, class dimension first) over ``[B, T, V]`` outputs and ``[B, T]``
    targets: every position counts once, as nanoGPT's ``F.cross_entropy(logits.view(-1, V), targets.view(-1))``.
    Built here, not at import: reading a config must not load torch."""
    from torch import nn

    class TokenLoss(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = inner

        def forward(self, output, target):
            return self.inner(output.flatten(0, -2), target.flatten())

    return TokenLoss()


@register
class LanguageModel(Task):
    name = "language_model"
    # The headline is perplexity, exp(loss): the same order as the loss, so the best checkpoint is the one of
    # lowest validation loss; a key of its own tells a language model's summary from a regression's.
    headline, label, higher_is_better = "ppl", "perplexity", False
    shown = ("loss", "ppl", "bpc", "bpb")
    answer_key = "next_tokens"

    def loss(self, settings: dict[str, Any]):
        from torch import nn

        inner = super().loss(settings)
        if not isinstance(inner, nn.CrossEntropyLoss):
            raise ConfigError("a language model trains with cross-entropy over its vocabulary",
                              where(settings, "name"), "set `train.loss: {name: auto}`")
        return token_loss(inner)

    def metrics(self, num_classes):
        return LanguageModelMetrics()

    def output_shape(self, input_shape, width):
        return (input_shape[0], width)

    def check_fit(self, config, plan, data) -> None:
        """Shapes as every task, then each embedding that reads the token ids must have a row for every id
        (else the first batch with a larger id fails inside torch)."""
        super().check_fit(config, plan, data)
        from ..graph import INPUT

        vocab = data.num_classes or 0
        for node in plan.graph.nodes.values():
            rows = getattr(node, "args", {}).get("num_embeddings")
            if INPUT in getattr(node, "inputs", ()) and isinstance(rows, int) and rows < vocab:
                raise DataError(f"`{node.id}` embeds {rows} token ids, but `{data.name}` has {vocab}",
                                node.arg_locs.get("num_embeddings", node.loc),
                                f"set `num_embeddings: {vocab}` (or more: a padded vocabulary is fine)")

    def check_output(self, model_out, data, location) -> None:
        """``[T, V]`` with V at least the tokenizer's ids (a larger, padded V is fine, as nanoGPT's 50304)."""
        block, vocab = data.input_shape[0], data.num_classes
        if len(model_out) != 2 or model_out[0] != block:
            raise DataError(f"the model outputs {list(model_out)}, but a language model outputs "
                            f"[{block}, vocabulary] (logits for every position)", location,
                            f"end with a linear layer of `out_features: {vocab}` applied at each of the {block} "
                            "positions")
        if vocab and model_out[1] < vocab:
            raise DataError(f"the model's vocabulary is {model_out[1]}, but `{data.name}` has {vocab} token ids",
                            location, f"make the last layer output at least {vocab} values "
                                      f"(`out_features: {vocab}`, and `num_embeddings: {vocab}` for the embedding)")

    def synthetic_targets(self, count, input_shape, width, generator, location=None):
        import torch

        return torch.randint(0, width, (count, *input_shape[:1]), generator=generator)

    def predict(self, outputs, labels, *, class_names=None, top=5, output_dir=None) -> list[dict[str, Any]]:
        """Each sample's most likely next token after its last position, with probabilities."""
        import numpy as np

        answers = []
        for label, logits in zip(labels, outputs.astype(np.float64)):
            last = logits[-1] - logits[-1].max()
            probs = np.exp(last) / np.exp(last).sum()
            order = np.argsort(-probs, kind="stable")[:max(1, top)]
            answers.append({"input": label, "next_tokens": [{"token": int(i), "probability": float(probs[i])}
                                                            for i in order]})
        return answers

    def table(self, answers):
        return ["input", "next token", "probability"], [
            [[row["input"] if rank == 0 else "", f"{entry['text']!r} ({entry['token']})" if "text" in entry
              else str(entry["token"]), f"{entry['probability']:.4f}"]
             for rank, entry in enumerate(row["next_tokens"])] for row in answers]

    def looks_like(self, input_shape, output_shape) -> bool:
        return len(input_shape) == 1 and len(output_shape) == 2 and output_shape[0] == input_shape[0]

    def sample_losses(self, output, target):
        return None  # the report shows no text samples (yet): `skiptrain sample` writes them
