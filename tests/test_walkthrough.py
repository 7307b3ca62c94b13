"""docs/getting-started.md, run as written: init, validate, train, eval, predict, export, --nproc 2.

The page marks what runs here with an HTML comment on the line before a fenced block:

    <!-- walkthrough -->              a ```bash block: each command must exit 0
    <!-- walkthrough: fails -->       a ```bash block: each command must exit 1 (an error shown on purpose)
    <!-- walkthrough: file NAME -->   the block's text is written to NAME (a config the reader writes or edits)
    <!-- toy-data: NAME -->           the ```python script that makes the page's toy image folder

Unmarked blocks (the install, torchrun typed out, the errors of "When a step fails", which
tests/test_train.py and tests/test_data.py cover) do not run. The marked ones run in page order,
each command in its own process (no shell), with this interpreter's bin folder first on PATH, in a
temporary folder. That folder holds an image folder made here, not by the page's script, so the
guide is also checked on images it did not make: data/shapes/{train,test}/{circle,square,triangle}
with PNG and JPEG files of two sizes, in colour and in grey. Two changes to what the page says:
every `skiptrain train` gets `--epochs 1`, and CUDA is hidden, so the walk takes the same CPU path
(gloo for `--nproc 2`) on every machine.
"""
from __future__ import annotations

import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import ROOT

PAGE = ROOT / "docs" / "getting-started.md"
CLASSES = ["circle", "square", "triangle"]
MARKED = re.compile(r"<!--\s*(?P<mark>walkthrough(?::\s*(?P<arg>[^>]*?))?|toy-data:\s*(?P<toy>\S+))\s*-->\s*\n"
                    r"```(?P<lang>\w*)\n(?P<body>.*?)^```", re.DOTALL | re.MULTILINE)


@dataclass
class Block:
    kind: str  # "run", "fails", "file" or "toy-data"
    body: str
    name: str | None = None  # the file a "file" or "toy-data" block is written to

    def commands(self) -> list[list[str]]:
        """The block's commands as argument lists: `\\` continues a line, `#` starts a comment."""
        text = self.body.replace("\\\n", " ")
        return [argv for argv in (shlex.split(line, comments=True) for line in text.splitlines()) if argv]


def page_blocks(text: str) -> list[Block]:
    blocks = []
    for match in MARKED.finditer(text):
        arg = (match["arg"] or "").strip()
        if match["toy"]:
            blocks.append(Block("toy-data", match["body"], match["toy"]))
        elif arg.startswith("file"):
            blocks.append(Block("file", match["body"], arg.split(None, 1)[1]))
        elif arg in ("", "fails"):
            assert match["lang"] == "bash", f"a walkthrough command block must be ```bash: {match[0][:80]!r}"
            blocks.append(Block("fails" if arg else "run", match["body"]))
        else:
            raise AssertionError(f"unknown walkthrough mark `{arg}` in {PAGE.name}")
    return blocks


def make_image_folder(root: Path) -> None:
    """3 classes x (12 train + 4 test) shapes: 32x32 and 48x48, RGB and grey, PNG and JPEG."""
    from PIL import Image, ImageDraw

    rng = random.Random(1)
    for split, count in (("train", 12), ("test", 4)):
        for shape in CLASSES:
            folder = root / split / shape
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                size = 32 if i % 3 else 48
                image = Image.new("RGB", (size, size), tuple(rng.randrange(80) for _ in range(3)))
                r = rng.randint(size // 4, size // 3)
                x, y = rng.randint(r, size - 1 - r), rng.randint(r, size - 1 - r)
                box, colour = [x - r, y - r, x + r, y + r], tuple(rng.randrange(140, 256) for _ in range(3))
                draw = ImageDraw.Draw(image)
                if shape == "circle":
                    draw.ellipse(box, fill=colour)
                elif shape == "square":
                    draw.rectangle(box, fill=colour)
                else:
                    draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=colour)
                if i % 4 == 3:
                    image = image.convert("L")
                image.save(folder / (f"{i:03d}.jpg" if i % 5 == 4 else f"{i:03d}.png"))


def environment(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(MPLCONFIGDIR=str(tmp / "mpl"), TORCH_HOME=str(tmp / "torch"),
               TORCHINDUCTOR_CACHE_DIR=str(tmp / "inductor"), TMPDIR=str(tmp), CUDA_VISIBLE_DEVICES="")
    return env


def option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def table_column(stdout: str, header: str) -> list[str]:
    """The non-empty cells of one column of a rich table printed by the CLI."""
    lines = [line.strip() for line in stdout.splitlines()]
    head = next(line for line in lines if line.startswith("┃") and header in line)
    column = [cell.strip() for cell in head.strip("┃").split("┃")].index(header)
    rows = [line.strip("│").split("│") for line in lines if line.startswith("│")]
    return [row[column].strip() for row in rows if row[column].strip()]


def check_success(argv: list[str], out: str, work: Path) -> None:
    """What each command must have done, beyond exiting 0."""
    command = argv[1]
    if command == "init" and "--output" in argv:
        assert (work / option(argv, "--output")).is_file()
    elif command == "validate":
        assert out.rstrip().splitlines()[-1].endswith(": valid"), out
    elif command == "train":
        run = work / option(argv, "--run-dir")
        for name in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints/last.pt", "checkpoints/best.pt"):
            assert (run / name).is_file(), f"{run / name} is missing after {shlex.join(argv)}"
        summary = json.loads((run / "summary.json").read_text())
        assert summary["epochs"] == 1 and "test_acc" in summary, summary
        assert summary["world_size"] == int(option(argv, "--nproc") or 1), summary
        assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
        assert "test accuracy: " in out, out
    elif command == "eval":
        assert re.search(r"^acc: \d\.\d{4}$", out, re.MULTILINE), out
        assert set(table_column(out, "class")) == set(CLASSES), out
        assert (work / argv[2] / "confusion_test.png").is_file()
    elif command == "predict":
        predicted = table_column(out, "class")
        assert predicted and set(predicted) <= set(CLASSES), out
    elif command == "export":
        import onnx

        target = work / option(argv, "--output")
        assert target.is_file(), out
        assert "onnx.checker: ok" in out and out.count("onnxruntime vs PyTorch") == 2, out
        metadata = {p.key: p.value for p in onnx.load(str(target)).metadata_props}
        assert json.loads(metadata["class_names"]) == CLASSES, metadata
        assert metadata["source"] == "checkpoint", metadata


def test_page_marks_every_step():
    """The marks are where the test expects them: a page edit cannot silently drop a step."""
    blocks = page_blocks(PAGE.read_text(encoding="utf-8"))
    commands = [argv for block in blocks if block.kind in ("run", "fails") for argv in block.commands()]
    assert all(argv[0] == "skiptrain" for argv in commands), commands
    run = {argv[1] for block in blocks if block.kind == "run" for argv in block.commands()}
    assert {"init", "validate", "train", "eval", "predict", "export"} <= run, run
    assert any("--nproc" in argv for argv in commands), "the multi-process step is not marked"
    assert any(argv[1:3] == ["predict", "shapes.onnx"] for argv in commands), "predict on the .onnx is not marked"
    assert [b.name for b in blocks if b.kind == "toy-data"] == ["make_shapes.py"]
    assert any(b.kind == "file" and "imagefolder" in b.body for b in blocks), "the edited config is not marked"


def test_walkthrough(tmp_path):
    work = tmp_path / "work"
    make_image_folder(work / "data" / "shapes")
    env = environment(tmp_path)
    steps = 0
    for block in page_blocks(PAGE.read_text(encoding="utf-8")):
        if block.kind == "file":
            (work / block.name).write_text(block.body, encoding="utf-8")
            continue
        if block.kind == "toy-data":
            continue
        for argv in block.commands():
            if argv[:2] == ["skiptrain", "train"]:
                argv = [*argv, "--epochs", "1"]
            program = shutil.which(argv[0], path=env["PATH"])
            assert program, f"`{argv[0]}` is not on PATH"
            done = subprocess.run([program, *argv[1:]], cwd=work, env=env, capture_output=True, text=True,
                                  timeout=600)
            shown = f"$ {shlex.join(argv)}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
            if block.kind == "fails":
                assert done.returncode == 1, shown
                assert "error: " in done.stderr and "Traceback" not in done.stderr, shown
                run_dir = option(argv, "--run-dir")
                assert run_dir is None or not (work / run_dir).exists(), f"a failed run left {run_dir}\n{shown}"
            else:
                assert done.returncode == 0, shown
                check_success(argv, done.stdout, work)
            steps += 1
    assert steps >= 10


def test_toy_data_script(tmp_path):
    """The page's script for readers without images writes the layout the page describes."""
    from PIL import Image

    (script,) = [b for b in page_blocks(PAGE.read_text(encoding="utf-8")) if b.kind == "toy-data"]
    (tmp_path / script.name).write_text(script.body, encoding="utf-8")
    done = subprocess.run([sys.executable, script.name], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    root = tmp_path / "data" / "shapes"
    for split, count in (("train", 40), ("test", 10)):
        assert sorted(p.name for p in (root / split).iterdir()) == CLASSES
        for shape in CLASSES:
            files = sorted((root / split / shape).glob("*.png"))
            assert len(files) == count
            with Image.open(files[0]) as image:
                assert image.size == (32, 32) and image.mode == "RGB"


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors for a Markdown file's headings (lower case, punctuation dropped, spaces to -)."""
    anchors, fenced = set(), False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("page", ["index.md", "getting-started.md", "data-and-training.md"])
def test_links_resolve(page):
    """Every relative link of the entry pages names a file that exists, and a heading that exists."""
    source = ROOT / "docs" / page
    links = re.findall(r"\]\(([^)\s]+)\)", source.read_text(encoding="utf-8"))
    assert links
    for link in links:
        if link.startswith(("http://", "https://")):
            continue
        target, _, anchor = link.partition("#")
        path = (source.parent / target).resolve() if target else source
        assert path.exists(), f"{page}: {link} points to a missing file"
        if anchor:
            assert anchor in heading_anchors(path), f"{page}: {link} points to a missing heading"
