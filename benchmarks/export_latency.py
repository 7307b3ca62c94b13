"""onnxruntime against PyTorch eager: inference latency of exported reference configs.

Each config is built with random weights (seed 0), exported with ``skiptrain.export.export_onnx``
(dynamic batch; ``verify=False`` because only timing is wanted here -- the export tests verify),
and timed: after 3 untimed calls, the median over at least 5 and up to 200 calls within 0.3 s,
for an onnxruntime CPU session and for the model in eval mode under ``torch.inference_mode()``.
Both use ``threads`` intra-op threads, 1 by default: on a shared machine whose load exceeds its
cores, multi-threaded timings swing by orders of magnitude (a 0.4 ms forward measured 430 ms
with 2 threads at load 4.5), since a descheduled OpenMP thread stalls every call. The onnxruntime session is made with thread spinning off
(``session.intra_op.allow_spinning = 0``): with it on (the default, and what
``skiptrain.export.latency`` uses), onnxruntime's idle threads keep spinning after each run and
steal the cores from the PyTorch calls timed next -- on a 2-core machine that made PyTorch look
several times slower than it is.

    python benchmarks/export_latency.py            # quickstart, resnet20, transformer at batch 1 and 64
    python benchmarks/export_latency.py --quick    # quickstart at batch 1 and 8
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("configs/quickstart.yaml", "configs/cifar/resnet20.yaml", "configs/transformer.yaml")


def latency(model: torch.nn.Module, path: Path, batch: int, threads: int) -> dict[str, float]:
    """Median ms per forward at ``batch``: onnxruntime (no spinning) and PyTorch eager."""
    import onnxruntime as ort
    from skiptrain.export import _time, random_input

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = random_input(model, batch)
    feed = {sess.get_inputs()[0].name: x.numpy()}

    def torch_run():
        with torch.inference_mode():
            model(x)

    return {"onnxruntime": _time(lambda: sess.run(None, feed), 0.3), "pytorch": _time(torch_run, 0.3)}


def main(quick: bool, *, threads: int = 1, log=None) -> list[dict]:
    """One dict per (config, batch): ``onnxruntime_ms``, ``pytorch_ms``, ``speedup`` (pytorch / onnxruntime)."""
    from skiptrain.export import export_onnx, load_source

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    configs, batches = (CONFIGS[:1], (1, 8)) if quick else (CONFIGS, (1, 64))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="skiptrain-onnx-") as tmp:
            for config in configs:
                source = load_source(ROOT / config)
                path = Path(tmp) / (Path(config).stem + ".onnx")
                log(f"exporting {config} ...")
                report = export_onnx(source, path, verify=False)
                model = source.model.eval()
                for batch in batches:
                    ms = latency(model, path, batch, torch.get_num_threads())
                    rows.append({"config": config, "batch": batch, "exporter": report["exporter"],
                                 "onnxruntime_ms": ms["onnxruntime"], "pytorch_ms": ms["pytorch"],
                                 "speedup": ms["pytorch"] / ms["onnxruntime"], "threads": torch.get_num_threads()})
                    log(f"  batch {batch}: onnxruntime {ms['onnxruntime']:.3f} ms, pytorch {ms['pytorch']:.3f} ms")
    finally:
        torch.set_num_threads(previous)
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| config | batch | onnxruntime ms | PyTorch eager ms | PyTorch / onnxruntime |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['config']} | {r['batch']} | {r['onnxruntime_ms']:.3f} | {r['pytorch_ms']:.3f} | {r['speedup']:.2f} |"
              for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    print(format_table(main("--quick" in sys.argv)))
