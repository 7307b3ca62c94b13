"""docs/fine-tuning.md's recipe, run as written: weights file, init, config, head, train, eval, export, predict.

The page is marked like docs/getting-started.md (`tests/test_walkthrough.py` reads the marks): ```bash
blocks under `<!-- walkthrough -->` run in page order, each command in its own process (no shell), in an
empty folder, with this interpreter's bin folder first on PATH; `<!-- walkthrough: fails -->` blocks must
exit 1 with one message; `<!-- walkthrough: file NAME -->` blocks are written to NAME.

Three changes to what the page says, because machines here have no internet and tests must be fast:
- the weights script (`save_weights.py`) builds its ResNet-18 with `weights=None` after
  `torch.manual_seed(0)` instead of downloading `weights="DEFAULT"`;
- the image folder is made here (data/images: 3 shape classes, PNG and JPEG, colour and grey);
- every `skiptrain train` gets `--set model.input=[3,32,32] --epochs 3` (ResNet-18 pools globally, so a
  small input works; the third epoch is the first one unfrozen).
"""
from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import ROOT
from .test_walkthrough import (CLASSES, environment, heading_anchors, make_image_folder, option, page_blocks,
                               table_column)

PAGE = ROOT / "docs" / "fine-tuning.md"
DOWNLOAD = 'torchvision.models.resnet18(weights="DEFAULT")'
OFFLINE = "torchvision.models.resnet18(weights=None)"
TRAIN_EXTRA = ["--set", "model.input=[3,32,32]", "--set", "data.num_workers=0", "--epochs", "3"]
HEAD = ["fc.bias", "fc.weight"]
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def recipe() -> str:
    """The recipe's section of the page (the page may hold other sections, run by other tests)."""
    text = PAGE.read_text(encoding="utf-8")
    start = text.index("## Recipe: fine-tune a torchvision model on your own image folder")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def offline(script: str) -> str:
    """The page's weights script with a seeded random ResNet-18 in place of the download."""
    assert script.count(DOWNLOAD) == 1, "the weights script no longer builds torchvision's resnet18 as expected"
    return "import torch\ntorch.manual_seed(0)\n" + script.replace(DOWNLOAD, OFFLINE)


def test_page_marks_every_step():
    blocks = page_blocks(recipe())
    commands = [argv for block in blocks if block.kind in ("run", "fails") for argv in block.commands()]
    steps = [argv[1] for argv in commands if argv[0] == "skiptrain"]
    assert list(dict.fromkeys(steps)) == ["init", "train", "validate", "eval", "export", "predict"], steps
    assert any(argv[:2] == ["python", "save_weights.py"] for argv in commands)
    assert any(argv[1] == "predict" and argv[2].endswith(".onnx") for argv in commands if argv[0] == "skiptrain")
    files = {b.name: b.body for b in blocks if b.kind == "file"}
    assert DOWNLOAD in files["save_weights.py"] and "safetensors" in files["save_weights.py"]
    config = files["finetune.yaml"]
    for needed in ("normalize: imagenet", "init: resnet18.pth", "freeze:", "unfreeze_at_epoch: 3"):
        assert needed in config, needed
    assert any("out_features=3" in " ".join(argv) for argv in commands)


def test_links_resolve():
    """Every relative link of the page names a file and a heading that exist."""
    links = re.findall(r"\]\(([^)\s]+)\)", PAGE.read_text(encoding="utf-8"))
    assert links
    for link in links:
        target, _, anchor = link.partition("#")
        path = (PAGE.parent / target).resolve() if target else PAGE
        assert path.exists(), f"{link} points to a missing file"
        assert not anchor or anchor in heading_anchors(path), f"{link} points to a missing heading"


def run(argv: list[str], work: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    program = shutil.which(argv[0], path=env["PATH"])
    assert program, f"`{argv[0]}` is not on PATH"
    return subprocess.run([program, *argv[1:]], cwd=work, env=env, capture_output=True, text=True, timeout=600)


def check_success(argv: list[str], out: str, work: Path) -> None:
    """What each command must have done, beyond exiting 0."""
    if argv[0] == "python":
        import torch
        from safetensors.torch import load_file

        pth = torch.load(work / "resnet18.pth", weights_only=True)
        assert len(pth) == 122 and torch.equal(load_file(work / "resnet18.safetensors")["fc.weight"], pth["fc.weight"])
        return
    command = argv[1]
    if command == "validate":
        assert out.rstrip().splitlines()[-1].endswith(": valid") and "`fc` [3]" in out, out
    elif command == "train":
        run_dir = work / option(argv, "--run-dir")
        transfer = json.loads((run_dir / "transfer.json").read_text())
        assert sorted(t["key"] for t in transfer["not_loaded"]) == HEAD, transfer
        assert {t["key"]: t["file_shape"] for t in transfer["not_loaded"]} == {"fc.weight": [1000, 512],
                                                                              "fc.bias": [1000]}
        assert transfer["tensors"] == {"loaded": 120, "total": 122, "share": pytest.approx(120 / 122, abs=1e-5)}
        assert "init: loaded 120/122 tensors" in out and "fc.weight [1000, 512] vs [3, 512]" in out, out
        assert re.search(r"^frozen until epoch 3", out, re.MULTILINE) and "unfrozen" in out, out
        assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 3
        assert "test accuracy: " in out, out
    elif command == "eval":
        assert re.search(r"^acc: \d\.\d{4}$", out, re.MULTILINE), out
        assert set(table_column(out, "class")) == set(CLASSES), out
    elif command == "export":
        import onnx

        target = work / option(argv, "--output")
        assert "onnx.checker: ok" in out, out
        metadata = {p.key: json.loads(p.value) if p.value[:1] in "[{" else p.value
                    for p in onnx.load(str(target)).metadata_props}
        assert metadata["class_names"] == CLASSES and metadata["mean"] == IMAGENET["mean"], metadata
        assert metadata["std"] == IMAGENET["std"], metadata
    elif command == "predict":
        predicted = table_column(out, "class")
        assert predicted and set(predicted) <= set(CLASSES), out


def test_recipe(tmp_path):
    """Every marked command of the recipe, in order, on real image files: the run starts from the weights
    file (everything but the head loaded), trains the head, then everything, and keeps ImageNet's
    normalisation and the class names through eval, export and predict."""
    work = tmp_path / "work"
    make_image_folder(work / "data" / "images")
    env = environment(tmp_path)
    steps = 0
    for block in page_blocks(recipe()):
        if block.kind == "file":
            body = offline(block.body) if block.name == "save_weights.py" else block.body
            (work / block.name).write_text(body, encoding="utf-8")
            continue
        for argv in block.commands():
            if argv[:2] == ["skiptrain", "train"]:
                argv = [*argv, *TRAIN_EXTRA]
            done = run(argv, work, env)
            shown = f"$ {shlex.join(argv)}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
            if block.kind == "fails":
                assert done.returncode == 1, shown
                assert "error: " in done.stderr and "Traceback" not in done.stderr, shown
                assert "3 classes" in done.stderr and "out_features: 3" in done.stderr, shown
                assert not (work / option(argv, "--run-dir")).exists(), f"a failed run left its folder\n{shown}"
            else:
                assert done.returncode == 0, shown
                check_success(argv, done.stdout, work)
            steps += 1
    assert steps >= 8
