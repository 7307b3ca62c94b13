"""ONNX export with verification: the model in eval mode, checked against PyTorch.

``export_onnx(source, output)`` rebuilds the model from a run directory, a checkpoint or a
config (randomly initialised), exports it with ``torch.onnx.export(dynamo=True)`` (the
TorchScript-based exporter only when that fails), writes skiptrain's metadata into
``metadata_props`` and, unless told not to, runs ``onnx.checker`` and then onnxruntime and
PyTorch on the same random inputs. Outputs must agree elementwise within
``|ort - torch| <= ATOL + RTOL * |torch|`` (numpy's ``allclose``), or it is an error.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from . import __version__
from .errors import CheckpointError, SkiptrainError
from .export_tokens import dynamic_axes, dynamic_shapes, lengths, sequence_context, token_metadata
from .outputs import atomic_output, check_output

ATOL, RTOL = 1e-4, 1e-3  # fp32 tolerance of the verification
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
INPUT_NAME, OUTPUT_NAME = "input", "output"
EXTERNAL_DATA_BYTES = 1_800_000_000  # above this the weights go to `<output>.data` (protobuf's 2 GB limit)


class ExportError(SkiptrainError):
    """A model cannot be exported, or the exported file disagrees with PyTorch."""

    kind = "export error"


@dataclass
class Source:
    """A model ready to export, with what is known about its data."""

    model: torch.nn.Module  # built by skiptrain: `model.meta["skiptrain"]`
    plan: Any  # the ModelPlan: node ids and their YAML locations
    data: dict[str, Any] = field(default_factory=dict)  # the checkpoint's `data`: {} for a config
    path: str = ""
    kind: str = "config"  # config | checkpoint


def load_source(source: str | Path) -> Source:
    """A run directory or a checkpoint (trained weights), or a config (random weights, seed 0)."""
    from .api import check_model, restore
    from .module import build_module
    from .training.setup import check_weights

    path = Path(source)
    if not path.exists():
        raise CheckpointError(f"no such run directory, checkpoint or config: {path}", None,
                              "give a run directory written by `skiptrain train`, a .pt checkpoint or a config YAML")
    if path.is_file() and path.suffix.lower() in CONFIG_SUFFIXES:
        plan = check_model(path)
        check_weights(plan, "building the model to export")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = build_module(plan)
        return Source(model.eval(), plan, {}, str(path), "config")
    restored = restore(path, on_fallback=None)  # a broken last.pt is refused: never export older weights quietly
    return Source(restored.model, restored.plan, restored.data, restored.state.path, "checkpoint")


def _check_export_fits(plan, batch: int) -> None:
    """Export holds the weights twice (the model and the file being written) and runs forwards at
    ``batch``: refuse before the first allocation when that cannot fit, with the figures, located
    at the layer where the activations peak."""
    from .training.setup import activation_peak, check_fits, human_bytes

    per_sample, node = activation_peak(plan)
    weights, activations = plan.params * 4, per_sample * batch
    at = f" (at `{node.id}`, {node.type}: {list(node.meta['in_shape'])} -> {list(node.meta['shape'])})" if node else ""
    check_fits("exporting the model", 2 * weights + activations,
               f"{human_bytes(weights)} of weights, held twice, and at least {human_bytes(activations)} of "
               f"activations for a forward at batch {batch}{at}", torch.device("cpu"),
               "use a smaller model or input shape; --batch 1 --no-verify needs the fewest activations",
               node.loc if node is not None and activations > weights else plan.graph.loc)


def random_input(model: torch.nn.Module, batch: int, seed: int = 0, length: int | None = None) -> torch.Tensor:
    """Seeded random inputs of the model's sample shape (``length`` tokens: a shorter sequence): normal
    floats, or valid token ids."""
    meta = model.meta["skiptrain"]
    shape = (batch, *([length] if length else []), *meta["input_shape"][1 if length else 0:])
    generator = torch.Generator().manual_seed(seed)
    if meta["input_dtype"] == "float32":
        return torch.randn(shape, generator=generator)
    vocab = min((m.num_embeddings for m in model.modules() if isinstance(m, torch.nn.Embedding)), default=2)
    return torch.randint(0, vocab, shape, generator=generator, dtype=getattr(torch, meta["input_dtype"]))


def metadata(source: Source, batch: str | int, context: int | None = None) -> dict[str, str]:
    """skiptrain's ``metadata_props``: every value a string, lists as JSON (a token model's: export_tokens)."""
    meta = source.model.meta["skiptrain"]
    data = source.data
    props = {
        "skiptrain_version": __version__,
        "model_name": meta["name"],
        "input_shape": json.dumps(meta["input_shape"]),
        "input_dtype": meta["input_dtype"],
        "output_shape": json.dumps(meta["output_shape"]),
        "batch": str(batch),
        "source": source.kind,
    }
    for key in ("task", "dataset", "num_classes", "class_names", "mean", "std"):
        value = data.get(key)
        if value is not None:
            props[key] = value if isinstance(value, str) else json.dumps(value)
    return props | token_metadata(data, context)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of an exported file, JSON values decoded (``input_shape`` is a list again)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: _decode(p.value) for p in model.metadata_props}


def _decode(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def export_onnx(source: str | Path | Source, output: str | Path, opset: int | None = None,
                batch: str | int = "dynamic", verify: bool = True) -> dict[str, Any]:
    """Export ``source`` to ``output``; verify it unless ``verify=False``. Returns a report dict.

    ``output`` is checked before any work (``outputs.check_output``: not a folder, its folder
    exists and is writable, not the source itself); the file is written beside it under a
    temporary name and renamed over ``output`` only once export and verification succeed.
    """
    output = check_output(output, [] if isinstance(source, Source) else [source])
    src = source if isinstance(source, Source) else load_source(source)
    if src.path:
        check_output(output, [src.path])
    model = src.model.eval()
    dynamic = batch == "dynamic"
    if not dynamic and (not str(batch).isdigit() or int(batch) < 1):
        raise ExportError(f"--batch must be `dynamic` or a positive integer, not {batch!r}")
    batch = "dynamic" if dynamic else int(batch)
    _check_export_fits(src.plan, max(2, 3 if verify else 0) if dynamic else batch)
    example = random_input(model, 2 if dynamic else batch)
    context = sequence_context(model)  # token ids in: the sequence axis is dynamic too, up to the context
    props = metadata(src, batch, context)
    started = time.perf_counter()
    with atomic_output(output) as temp:
        try:
            exporter, fallback = _export(model, example, temp, opset, (dynamic, context), props, src.plan)
            report: dict[str, Any] = {
                "output": str(output), "source": src.path, "name": model.meta["skiptrain"]["name"],
                "exporter": exporter, "fallback_reason": fallback, "seconds": time.perf_counter() - started,
                "opset": _opset(temp), "batch": batch, "metadata": props, "size_bytes": _size(temp),
                "atol": ATOL, "rtol": RTOL, "checks": None, "latency_ms": None, "latency_batch": None,
                "context": context,
            }
            if verify:
                sizes = (1, 3) if dynamic else (batch,)
                report["checks"] = verify_onnx(model, temp, sizes, lengths=lengths(context))
                report["latency_batch"] = 1 if dynamic else batch
                report["latency_ms"] = latency(model, temp, report["latency_batch"])
        except SkiptrainError as exc:  # name the file the user asked for, not the temporary one
            exc.message = exc.message.replace(str(temp), str(output))
            exc.args = (exc.message,)
            raise
    return report


def _export(model, example, output: Path, opset, axes: tuple[bool, int | None], props: dict[str, str],
            plan) -> tuple[str, str | None]:
    """Write the file with the dynamo exporter, or the TorchScript one when it fails; ``axes``: whether the
    batch is dynamic, and the context of a dynamic sequence (None: fixed)."""
    import onnx

    big = sum(p.numel() * p.element_size() for p in model.state_dict().values()) > EXTERNAL_DATA_BYTES
    try:
        with _quiet():
            program = torch.onnx.export(model, (example,), dynamo=True, opset_version=opset,
                                        dynamic_shapes=dynamic_shapes(*axes),
                                        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], verbose=False)
            program.model.metadata_props.update(props)
            program.save(str(output), external_data=big)
        return "dynamo", None
    except Exception as exc:  # any failure of the new exporter: try the old one before giving up
        reason = _summary(exc)
    try:
        with _quiet():
            torch.onnx.export(model, (example,), str(output), dynamo=False, opset_version=opset,
                              dynamic_axes=dynamic_axes((INPUT_NAME, OUTPUT_NAME), *axes),
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              verbose=False)
            proto = onnx.load(str(output))
            onnx.helper.set_model_props(proto, props)
            onnx.save(proto, str(output), save_as_external_data=big)
    except Exception as exc:
        raise _failure(model, example, opset, plan, reason, _summary(exc)) from None
    return "torchscript", reason


def _failure(model: torch.nn.Module, example, opset, plan, dynamo_reason: str, script_reason: str) -> ExportError:
    """An error naming the layer (node id, YAML location) that neither exporter can handle.

    Each layer and projection module is exported alone, on the input it gets in a forward
    pass, in execution order: the first that fails is the culprit.
    """
    paths = {name for name, _ in model.named_modules()}
    ids = [n.id for n in plan.graph.order if n.id in paths] + [p.id for p in plan.projections.values()]
    calls: list[tuple[str, tuple]] = []
    hooks = []
    for target in ids:
        def record(module, args, target=target):
            calls.append((target, tuple(a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args)))
        hooks.append(model.get_submodule(target).register_forward_pre_hook(record))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    for target, args in calls:
        try:
            with _quiet():
                torch.onnx.export(model.get_submodule(target), args, io.BytesIO(), dynamo=False,
                                  opset_version=opset, verbose=False)
        except Exception as exc:
            what, loc = _describe(target, plan)
            return ExportError(f"{what} cannot be exported to ONNX: {_summary(exc)}", loc,
                               f"the dynamo exporter said: {dynamo_reason}; replace the layer, "
                               "or try another --opset")
    for node_id in sorted(plan.graph.nodes, key=len, reverse=True):  # a traced name in the messages
        if node_id.replace(".", "_") in f"{dynamo_reason} {script_reason}":
            what, loc = _describe(node_id, plan)
            return ExportError(f"{what} cannot be exported to ONNX: {dynamo_reason}", loc,
                               f"the TorchScript-based exporter said: {script_reason}")
    return ExportError(f"neither ONNX exporter could export the model: {dynamo_reason}", None,
                       f"the TorchScript-based exporter said: {script_reason}")


def _describe(target: str, plan) -> tuple[str, Any]:
    node = plan.graph.nodes.get(target) if plan is not None else None
    if node is not None:
        return f"layer `{target}` ({node.type})", node.loc
    for proj in (plan.projections.values() if plan is not None else ()):
        if proj.id == target:
            return (f"projection `{target}` on the skip from `{proj.skip.source}` to `{proj.skip.target}`",
                    proj.skip.loc)
    return f"`{target}`", None


def _summary(exc: BaseException) -> str:
    """The innermost cause's first line, without the exporter's colour codes."""
    inner = exc
    while inner.__cause__ is not None:
        inner = inner.__cause__
    lines = [line.strip() for line in str(inner).splitlines() if line.strip()]
    text = lines[0] if lines else type(inner).__name__
    return text.replace("\x1b[96m", "").replace("\x1b[0m", "")[:300]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters: their warnings, Python prints and C++ prints (file descriptors 1, 2)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = []
    with tempfile.TemporaryFile() as sink, warnings.catch_warnings(), \
            contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            for fd in (1, 2):
                try:
                    saved.append((fd, os.dup(fd)))
                    os.dup2(sink.fileno(), fd)
                except OSError:
                    pass
            yield
        finally:
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)


def _opset(path: Path) -> int | None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _size(path: Path) -> int:
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def session(path: str | Path):
    """An onnxruntime CPU session, or an ExportError when the file cannot be loaded."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportError(f"onnxruntime cannot load {path}: {_summary(exc)}") from None


def verify_onnx(model: torch.nn.Module, path: str | Path, batch_sizes=(1, 3), atol: float = ATOL,
                rtol: float = RTOL, lengths: tuple[int | None, ...] = (None,)) -> list[dict[str, Any]]:
    """``onnx.checker``, then onnxruntime against PyTorch on the same seeded random inputs: every batch size
    at every sequence length (None: the model's own)."""
    import onnx

    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:
        raise ExportError(f"onnx.checker rejects {path}: {_summary(exc)}") from None
    sess = session(path)
    names = [o.name for o in sess.get_outputs()]
    checks = []
    for batch, length in ((b, n) for b in batch_sizes for n in lengths):
        x = random_input(model, batch, seed=batch, length=length)
        at = f"batch {batch}" + (f", {x.shape[1]} tokens" if length else "")
        with torch.inference_mode():
            expected = model(x)
        expected = [expected] if isinstance(expected, torch.Tensor) else list(expected)
        try:
            got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
        except Exception as exc:
            raise ExportError(f"onnxruntime fails on {path} at {at}: {_summary(exc)}") from None
        for name, ref, out in zip(names, expected, got):
            ref = ref.float().numpy()
            out = np.asarray(out, dtype=np.float32)
            if out.shape != ref.shape:
                raise ExportError(f"output `{name}` has shape {list(out.shape)} in onnxruntime but "
                                  f"{list(ref.shape)} in PyTorch at {at}", None,
                                  "the exported graph fixed a shape it should not; try --batch N")
            diff = np.abs(out.astype(np.float64) - ref)
            max_abs = float(diff.max(initial=0.0))
            max_rel = max_abs / max(float(np.abs(ref).max(initial=0.0)), 1e-12)
            check = {"batch": batch, "length": x.shape[1] if length else None, "output": name, "max_abs": max_abs,
                     "max_rel": max_rel}
            checks.append(check)
            if not np.allclose(out, ref, atol=atol, rtol=rtol, equal_nan=True):
                raise ExportError(
                    f"output `{name}` of {path} differs from PyTorch at {at}: max abs diff "
                    f"{max_abs:.3g}, max rel diff {max_rel:.3g} (tolerance atol {atol:g} + rtol {rtol:g} x |value|)",
                    None, "an operator converted wrongly; try another --opset, or report the layer types involved")
    return checks


def latency(model: torch.nn.Module, path: str | Path, batch: int = 1, budget_s: float = 0.3) -> dict[str, float]:
    """Median milliseconds per forward at ``batch``: onnxruntime and PyTorch (eval, inference mode)."""
    sess = session(path)
    x = random_input(model, batch)
    feed = {sess.get_inputs()[0].name: x.numpy()}

    def ort_run():
        sess.run(None, feed)

    def torch_run():
        with torch.inference_mode():
            model(x)

    return {"onnxruntime": _time(ort_run, budget_s), "pytorch": _time(torch_run, budget_s)}


def _time(fn, budget_s: float) -> float:
    for _ in range(3):
        fn()
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < 5 or (time.perf_counter() < deadline and len(times) < 200):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000
