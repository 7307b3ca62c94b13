"""configs/gpt_shakespeare.yaml trained by skiptrain beside the same GPT written by hand, in one run.

    python benchmarks/gpt.py            # 2,000 iterations each on the shakespeare package's texts (minutes);
                                        # writes the GPT sections of docs/benchmarks.md and docs/results.md
    python benchmarks/gpt.py --quick    # 10 iterations on a small text it writes: a smoke run, prints only

Both sides get the same everything but the training machinery: the same token stream, splits and
windows (skiptrain's ``text`` dataset, seed 0: the hand-written loop iterates the very batches the run
sees), the same initial weights (the hand-written model's nanoGPT-style N(0, 0.02) init, handed to
skiptrain as ``train.init``), AdamW with decay on matrices only, the same warmup-then-cosine learning
rate per iteration, gradient clipping at 1.0 and no dropout. Reported: validation loss of each on the
same fixed windows (goal: within 0.02), training iterations per second (training steps only; evaluation
and checkpoints excluded; goal: skiptrain / hand-written >= 0.97), sampling tokens per second (a naive
loop of full forwards; the key/value cache of ``skiptrain.generation`` when it is installed) and a sample.
torch runs on ``--threads`` threads (1 by default, as the other CPU benchmarks: on a shared machine two
threads spin waiting for each other, measured up to 30x slower per step).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import yaml  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import skiptrain  # noqa: E402
from handwritten_gpt import GPT, GPTConfig  # noqa: E402
from sections import put  # noqa: E402

CONFIG = ROOT / "configs" / "gpt_shakespeare.yaml"
PROMPT, SAMPLE_TOKENS, TEMPERATURE, TOP_K = "ROMEO:", 300, 0.8, 40
QUALITY_GOAL, SPEED_GOAL = 0.02, 0.97
DOCS = {"benchmarks": ROOT / "docs" / "benchmarks.md", "results": ROOT / "docs" / "results.md"}
START, END = "<!-- gpt:start -->", "<!-- gpt:end -->"
QUICK_TEXT = "".join(f"{w}: the {i % 9} cats sat on the mat.\n" for i, w in enumerate(["ROMEO", "JULIET"] * 300))


def config(quick: bool, folder: Path) -> dict[str, Any]:
    """The config as a dict; quick: a text written here, 2 epochs of 5 batches of 2."""
    cfg = yaml.safe_load(CONFIG.read_text())
    if quick:
        (folder / "quick.txt").write_text(QUICK_TEXT)
        cfg["data"].update(root=str(folder / "quick.txt"), batch_size=2, batches_per_epoch=5, eval_batches=1)
        cfg["train"]["epochs"] = 2
    return cfg


def data(cfg: dict[str, Any]):
    """skiptrain's batches for the config, and its vocabulary written into the model (wte and the head)."""
    from skiptrain.data import load_data

    bundle = load_data(cfg["data"], input_shape=tuple(cfg["model"]["input"]), input_dtype="int64",
                       task="language_model", seed=int(cfg["train"].get("seed", 0)))
    for layer in cfg["model"]["layers"]:
        for key in ("num_embeddings", "out_features"):
            if layer.get("id") in ("wte", "lm_head") and key in layer:
                layer[key] = bundle.num_classes
    return bundle


def lr_at(step: int, total: int, warmup: int, lr: float, min_lr: float) -> float:
    """Linear warmup, then cosine down to min_lr: skiptrain's `cosine` with `warmup_epochs` (and nanoGPT's shape)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def warm_up(model: GPT, bundle) -> None:
    """Two training steps of a throwaway copy: the first steps of a process (allocator, kernels) are slow,
    and neither side should pay for them in its timing."""
    import copy

    twin = copy.deepcopy(model).train()
    x, y = next(iter(bundle.train.epoch(1)))
    for _ in range(2):
        F.cross_entropy(twin(x).flatten(0, 1), y.flatten()).backward()


def train_hand(model: GPT, bundle, cfg: dict[str, Any]) -> dict[str, float]:
    """nanoGPT's loop on skiptrain's batches: the seconds of the training steps alone."""
    train, opt_cfg, sched = cfg["train"], cfg["train"]["optimizer"], cfg["train"]["scheduler"]
    epochs, per_epoch = int(train["epochs"]), len(bundle.train)
    total, warmup = epochs * per_epoch, round(float(sched.get("warmup_epochs", 0)) * per_epoch)
    optimizer = model.optimizer(opt_cfg["lr"], tuple(opt_cfg["betas"]), opt_cfg["weight_decay"])
    model.train()
    step, seconds = 0, 0.0
    for epoch in range(1, epochs + 1):  # skiptrain counts epochs from 1: the windows of (seed, epoch, batch)
        started = time.perf_counter()
        loss_sum, seen = torch.zeros(()), 0
        for x, y in bundle.train.epoch(epoch):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total, warmup, opt_cfg["lr"], sched["min_lr"])
            logits = model(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), train["grad_clip"])
            optimizer.step()
            step += 1
            loss_sum.add_(loss.detach(), alpha=x.shape[0])
            seen += x.shape[0]
        seconds += time.perf_counter() - started
    return {"steps": step, "seconds": seconds, "final_train_loss": loss_sum.item() / seen}  # the last epoch's mean


def val_loss(model: torch.nn.Module, bundle) -> float:
    """Mean next-token cross-entropy (nats) over the validation windows the run reports on."""
    model.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for x, y in bundle.val.epoch(0):
            logits = model(x).float()
            total += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
            count += y.numel()
    return total / count


def naive_generate(model: torch.nn.Module, idx: torch.Tensor, tokens: int, block: int, seed: int) -> torch.Tensor:
    """A full forward of the last `block` tokens for every new token (temperature, top-k)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        for _ in range(tokens):
            logits = model(idx[:, -block:])[:, -1, :].float() / TEMPERATURE
            kth = torch.topk(logits, min(TOP_K, logits.shape[-1])).values[:, [-1]]
            probs = F.softmax(logits.masked_fill(logits < kth, float("-inf")), dim=-1)
            idx = torch.cat([idx, torch.multinomial(probs, 1, generator=generator)], dim=1)
    return idx


def sampling(run_dir: Path, model: torch.nn.Module, tokenizer, block: int, tokens: int) -> dict[str, Any]:
    """Tokens per second at batch 1 with the key/value cache and without (`skiptrain sample` and its
    `--no-cache`), when skiptrain.generation exists; else the naive loop alone, written here."""
    try:
        from skiptrain.generation import sample

        options = dict(prompt=PROMPT, tokens=tokens, temperature=TEMPERATURE, top_k=TOP_K, seed=1)
        sample(run_dir, **dict(options, tokens=5))  # a warm-up: the first forwards of a process are slower
        cached, naive = sample(run_dir, cache=True, **options), sample(run_dir, cache=False, **options)
        return {"tokens": tokens, "naive_tokens_per_s": naive["tokens_per_second"], "text": cached["text"],
                "cached_tokens_per_s": cached["tokens_per_second"] if cached["cached"] else None,
                "same_text": cached["text"] == naive["text"]}
    except Exception as exc:  # no skiptrain.generation (or another interface): the naive loop written here
        print(f"skiptrain.generation not used: {type(exc).__name__}: {exc}", file=sys.stderr)
    model.eval()
    idx = torch.tensor([tokenizer.encode(PROMPT)])
    started = time.perf_counter()
    out = naive_generate(model, idx, tokens, block, seed=1)
    return {"tokens": tokens, "naive_tokens_per_s": tokens / (time.perf_counter() - started),
            "text": tokenizer.decode(out[0].tolist()), "cached_tokens_per_s": None, "same_text": None}


def machine() -> str:
    from model_overhead import machine_info

    info = machine_info()
    return (f"{info['cpu']}, {info['cores']} cores, torch {info['torch']} ({info['threads']} thread{'s' if info['threads'] != 1 else ''}), "
            f"Python {info['python']}, skiptrain {skiptrain.__version__}, load average {info['load_average']:.2f} "
            f"at the start")


def run(quick: bool) -> dict[str, Any]:
    load, where = os.getloadavg()[0], machine()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cfg = config(quick, folder)
        bundle = data(cfg)
        block, vocab = int(cfg["model"]["input"][0]), bundle.num_classes
        seed = int(cfg["train"].get("seed", 0))
        torch.manual_seed(seed)
        hand = GPT(GPTConfig(vocab_size=vocab, block_size=block))
        torch.save(hand.state_dict(), folder / "init.pt")  # skiptrain starts from the same weights
        cfg["train"]["init"] = str(folder / "init.pt")
        warm_up(hand, bundle)
        print(f"hand-written: {hand_iters(cfg, bundle)} iterations ...", file=sys.stderr, flush=True)
        hand_result = train_hand(hand, bundle, cfg)
        hand_result["val_loss"] = val_loss(hand, bundle)
        print("skiptrain: configs/gpt_shakespeare.yaml ...", file=sys.stderr, flush=True)
        summary = skiptrain.train(cfg, run_dir=str(folder / "run"), quiet=True, force=True)
        model, _ = skiptrain.load_checkpoint(folder / "run")
        steps = hand_result["steps"]
        ours = {"steps": steps, "seconds": summary["train_seconds"], "final_train_loss": summary["final_train_loss"],
                "val_loss": val_loss(model, bundle)}
        sample = sampling(folder / "run", model, tokenizer_of(bundle), block, 10 if quick else SAMPLE_TOKENS)
    for side in (hand_result, ours):
        side["iters_per_s"] = side["steps"] / side["seconds"]
    return {"quick": quick, "hand": hand_result, "skiptrain": ours, "sample": sample, "load": load,
            "machine": where, "date": f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
            "params": summary["params"], "vocab": vocab, "text": bundle.meta.get("text", {}),
            "batch": int(cfg["data"]["batch_size"]), "block": block, "eval_batches": int(cfg["data"]["eval_batches"])}


def hand_iters(cfg: dict[str, Any], bundle) -> int:
    return int(cfg["train"]["epochs"]) * len(bundle.train)


def tokenizer_of(bundle):
    from skiptrain.data.text import tokenizer_from

    return tokenizer_from(bundle.meta)


def section(r: dict[str, Any]) -> list[str]:
    """The figures as Markdown, the same block in both pages."""
    hand, ours, sample = r["hand"], r["skiptrain"], r["sample"]
    diff = ours["val_loss"] - hand["val_loss"]
    ratio = ours["iters_per_s"] / hand["iters_per_s"]
    cached = sample["cached_tokens_per_s"]
    tokens = r["text"].get("tokens", {})
    lines = [
        START,
        f"Measured by `python benchmarks/gpt.py`{' --quick (a smoke run, not a measurement)' if r['quick'] else ''} "
        f"on {r['date']}: {r['machine']}. {hand['steps']:,} iterations of batch {r['batch']} at context {r['block']} each, "
        f"{r['params']:,} parameters, {r['vocab']} characters; the token stream of the `shakespeare` 0.6 texts "
        f"({tokens.get('train', 0):,} training and {tokens.get('val', 0):,} validation tokens), validation loss on "
        f"the run's {r['eval_batches']} fixed batches of validation windows.",
        "",
        "| | validation loss (nats/token) | last epoch's training loss | training iterations/s | training seconds |",
        "|---|---:|---:|---:|---:|",
        f"| hand-written (`benchmarks/handwritten_gpt.py`) | {hand['val_loss']:.4f} | {hand['final_train_loss']:.4f} | "
        f"{hand['iters_per_s']:.2f} | {hand['seconds']:.1f} |",
        f"| skiptrain (`configs/gpt_shakespeare.yaml`) | {ours['val_loss']:.4f} | {ours['final_train_loss']:.4f} | "
        f"{ours['iters_per_s']:.2f} | {ours['seconds']:.1f} |",
        "",
        f"- Quality: skiptrain - hand-written = {diff:+.4f} nats, goal within {QUALITY_GOAL}: "
        f"{'**met**' if abs(diff) <= QUALITY_GOAL else '**missed**'}.",
        f"- Speed: skiptrain / hand-written iterations per second = {ratio:.3f}, goal >= {SPEED_GOAL}: "
        f"{'**met**' if ratio >= SPEED_GOAL else '**missed**'}"
        + (f" (load average {r['load']:.1f} at the start: other work shared the 2 cores)." if r["load"] > 1 else "."),
        f"- Sampling {sample['tokens']} tokens at batch 1 (`skiptrain sample`): without a cache (`--no-cache`: a full "
        f"forward of the last 64 tokens per token) {sample['naive_tokens_per_s']:.0f} tokens/s"
        + (f"; with its key/value cache {cached:.0f} tokens/s ({cached / sample['naive_tokens_per_s']:.1f}x)"
           f"{', the same text' if sample['same_text'] else ', **a different text**'}."
           if cached else "; `skiptrain.generation` (the cached sampler) was not installed when this ran."),
        "",
        f"A sample of skiptrain's model (prompt `{PROMPT}`, temperature {TEMPERATURE}, top-k {TOP_K}, seed 1):",
        "",
        "```text",
        *sample["text"].replace("```", "'''").splitlines(),
        "```",
        END,
    ]
    return lines


def write_section(page: Path, lines: list[str], heading: str) -> None:
    """Replace the text between the gpt markers, or add a section with them at the end of the page."""
    put(page, START, END, "\n".join(lines), heading)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 iterations of batch 2 on a small written text; prints only")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: on a shared 2-core machine "
                        "2 threads wait for each other, up to 30x slower and as noisy)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = run(args.quick)
    print(json.dumps(result), file=sys.stderr)  # the raw figures, should a page not be writable
    lines = section(result)
    print("\n".join(lines))
    if not args.quick:
        write_section(DOCS["benchmarks"], lines, "## A small GPT against a hand-written one")
        write_section(DOCS["results"], lines, "## A small GPT in YAML against nanoGPT's model written by hand")
        print(f"wrote {DOCS['benchmarks']} and {DOCS['results']}", file=sys.stderr)


if __name__ == "__main__":
    main()
