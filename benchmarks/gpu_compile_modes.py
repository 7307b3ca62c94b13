"""Where a GPU training step of ResNet-20 spends its time, and which ``torch.compile`` mode helps.

Prints, one line each: the in-memory data pipeline alone (with and without the CIFAR
augmentation), then one training step (bf16 autocast, channels_last, SGD) of the YAML-built
ResNet-20 at batch 128 and 512, eager and under each ``torch.compile`` mode, with the time the
first three steps took (the compilation). ``benchmarks/run.py`` quotes the recorded output,
``benchmarks/results/gpu_compile_modes.txt``, in docs/benchmarks.md.

    python benchmarks/gpu_compile_modes.py [cuda|cpu] [STEPS] | tee benchmarks/results/gpu_compile_modes.txt
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import model_overhead  # noqa: E402
import trainer_overhead  # noqa: E402

MODES = ("eager", "default", "max-autotune-no-cudagraphs", "reduce-overhead")


def time_ms(step, sync, iters: int, warm: int = 5) -> float:
    """Milliseconds per call of ``step`` after ``warm`` untimed calls (model_overhead's timing loop)."""
    for _ in range(warm):
        step()
    return model_overhead.time_chunk(step, iters, sync) * 1e3


def main(device: torch.device, steps: int) -> None:
    import skiptrain
    from skiptrain.data import load_data

    sync = model_overhead.device_sync(device)
    if device.type == "cuda":
        print(f"# {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    for augment in (trainer_overhead.AUGMENT, None):
        data = {"dataset": "synthetic", "num_samples": 20000, "num_classes": 10, "batch_size": 128,
                "val_fraction": 0.0, **({"augment": augment} if augment else {})}
        batches = iter(load_data(data, input_shape=(3, 32, 32), device=device).train.epoch(1))
        print(f"data pipeline {'with' if augment else 'no'} augment: "
              f"{time_ms(lambda: next(batches), sync, min(steps, 100)):.3f} ms/batch", flush=True)
    for batch in (128, 512):
        x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (batch,), device=device)
        for mode in MODES if device.type == "cuda" else ("eager",):
            torch.manual_seed(0)
            model = skiptrain.build_model({"model": trainer_overhead.model_section()}).to(device)
            model = model.to(memory_format=torch.channels_last)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
            forward = model if mode == "eager" else torch.compile(model, mode=mode)

            def step() -> None:
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    loss = F.cross_entropy(forward(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

            started = time.perf_counter()
            for _ in range(3):
                step()
            sync()
            first = time.perf_counter() - started
            ms = time_ms(step, sync, steps)
            print(f"batch {batch} {mode}: {ms:.3f} ms/step = {batch / ms * 1e3:,.0f} img/s "
                  f"(first 3 steps {first:.1f} s)", flush=True)


if __name__ == "__main__":
    main(torch.device(sys.argv[1] if len(sys.argv) > 1 else "cuda"), int(sys.argv[2]) if len(sys.argv) > 2 else 50)
