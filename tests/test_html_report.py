"""The run's HTML report (issue 19): written by `train`, rebuilt by `skiptrain report`, and `compare`'s page;
one self-contained file, checked as text here and in headless Chromium (tests/browser.py) where there is one."""
from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from skiptrain import api
from skiptrain.errors import SkiptrainError
from skiptrain.svg_charts import Series, heatmap, line_chart, sparkline, ticks

from .conftest import ROOT, invoke

VOID = {"meta", "br", "img", "input", "hr", "link", "area", "base", "col", "source", "wbr", "embed", "track"}
SVG_EMPTY = {"rect", "line", "circle", "path", "polyline", "polygon", "image", "ellipse", "stop", "use"}

SEGMENTATION = """
model:
  name: tiny_unet
  input: [1, 16, 16]
  layers:
    - {id: enc, type: conv2d, out_channels: 8, kernel_size: 3, padding: 1}
    - {type: relu}
    - {type: maxpool2d, kernel_size: 2}
    - {id: mid, type: conv2d, out_channels: 8, kernel_size: 3, padding: 1}
    - {type: relu}
    - {id: up, type: conv_transpose2d, out_channels: 8, kernel_size: 2, stride: 2}
    - {id: head, type: conv2d, out_channels: 3, kernel_size: 1}
  skips:
    - {from: enc, to: up, merge: concat}
data: {dataset: shapes, num_samples: 96, batch_size: 16}
train: {task: segmentation, epochs: 1, device: cpu, seed: 1}
"""


class Checked(HTMLParser):
    """Parses the page and checks that every element is closed in order (HTML's void elements and
    SVG's empty ones aside); collects ids."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.ids: set[str] = set()
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.ids.update(value for key, value in attrs if key == "id")
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.ids.update(value for key, value in attrs if key == "id")

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
            return
        self.stack.pop()


def checked(text: str) -> Checked:
    parser = Checked()
    parser.feed(text)
    parser.close()
    assert not parser.errors, parser.errors[:5]
    assert parser.stack == [], parser.stack
    return parser


def self_contained(text: str) -> None:
    lowered = text.lower()
    for needle in ("src='http", 'src="http', "href='http", 'href="http', "<link", "@import", "url(http",
                   "<script src"):
        assert needle not in lowered, needle


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """One real quickstart run (digits, one epoch of 6 batches), shared by the tests."""
    folder = tmp_path_factory.mktemp("report") / "run"
    result = invoke("train", ROOT / "configs" / "quickstart.yaml", "--set", "train.epochs=1", "--limit-batches", 6,
                    "--run-dir", folder, "--quiet")
    assert result.exit_code == 0, result.output
    return folder


def test_train_writes_one_self_contained_report(run):
    page = (run / "report.html").read_text(encoding="utf-8")
    self_contained(page)
    ids = checked(page).ids
    assert {"diagram", "curves", "chart-loss", "chart-val_acc", "chart-lr", "confusion-matrix", "per-class",
            "samples", "details"} <= ids
    assert "data:image/png;base64," in page and "<svg" in page and "quickstart" in page
    assert "precision</th><th class='n'>recall" in page.replace('"', "'")
    assert len(page.encode()) < 2 * 1024 * 1024
    assert "report.html" in json.dumps(sorted(p.name for p in run.iterdir()))


def test_report_command_writes_a_new_file_atomically_and_never_over_run_files(run, tmp_path):
    target = tmp_path / "x.html"
    result = invoke("report", run, "-o", target, "--samples", 4)
    assert result.exit_code == 0, result.output
    assert "wrote" in result.stderr and target.read_text().startswith("<!DOCTYPE html>")
    assert target.read_text().count("class='sample'") == 4
    again = invoke("report", run, "-o", target)
    assert again.exit_code == 1 and "already exists" in again.stderr and "Traceback" not in again.output
    assert invoke("report", run, "-o", target, "--force").exit_code == 0
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    for own in ("config.yaml", "report.html", "metrics.jsonl"):
        before = (run / own).read_bytes()
        refused = invoke("report", run, "-o", run / own, "--force")
        assert refused.exit_code == 1 and "never writes over a run's own files" in refused.stderr
        assert (run / own).read_bytes() == before
    bogus = invoke("report", run, "-o", tmp_path / "y.html", "--checkpoint", "../x")
    assert bogus.exit_code == 1 and "best or last" in bogus.stderr and not (tmp_path / "y.html").exists()
    assert invoke("report", run, "-o", tmp_path / "z.html", "--samples", 65).exit_code == 2  # a few dozen at most
    with pytest.raises(SkiptrainError, match="0 to 64 samples"):
        api.report(run, tmp_path / "z.html", samples=1000)
    refreshed = invoke("report", run)  # the run's own report.html is the default, rewritten in place
    assert refreshed.exit_code == 0 and str(run / "report.html") in refreshed.stderr


def test_report_of_a_folder_that_is_not_a_run_is_one_message(tmp_path):
    result = invoke("report", tmp_path)
    assert result.exit_code == 1 and "is not a run directory" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "report.html").exists()


def test_user_strings_are_escaped(run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    summary = json.loads((copy / "summary.json").read_text())
    summary["name"] = "<script>alert(1)</script>"
    (copy / "summary.json").write_text(json.dumps(summary))
    with (copy / "config.yaml").open("a") as handle:
        handle.write("# </pre><img src=x onerror=alert(2)>\n")
    result = invoke("report", copy)
    assert result.exit_code == 0, result.output
    page = (copy / "report.html").read_text()
    assert "<script>alert" not in page and "<img src=x" not in page and "&lt;script&gt;alert(1)" in page
    checked(page)


def test_charts_escape_labels_and_draw_gaps():
    svg = line_chart([Series("a<b>&", [1, 2, 3], [1.0, None, 2.0]), Series("v", [1, 2, 3], [3, 2, 1], dashed=True)],
                     title="t<", chart_id="c")
    assert "a&lt;b&gt;&amp;" in svg and "t&lt;" in svg and "<b>" not in svg
    assert svg.count("<polyline") == 1  # the first series has a gap: no two-point run; the second is one line
    checked(svg)
    cells = heatmap([[3, 1], [0, 4]], ["<cat>", "dog"])
    assert "&lt;cat&gt;" in cells and cells.count("<rect") == 4 + 1
    big = heatmap([[1] * 50 for _ in range(50)], [str(i) for i in range(50)])
    assert "data:image/png;base64," in big and big.count("<rect") == 1
    assert ticks(0.0, 1.0) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert sparkline([0.0, float("nan"), 1.0]).count(",") == 2  # the missing value is left out


def test_inputs_show_as_images_curves_or_token_ids():
    import torch

    from skiptrain.html_report import _input_html

    assert "data:image/png;base64," in _input_html(torch.rand(3, 8, 8), [0.5] * 3, [0.2] * 3)
    assert "data:image/png;base64," in _input_html(torch.randint(0, 255, (1, 8, 8), dtype=torch.uint8), None, None)
    assert "<polyline" in _input_html(torch.randn(1, 40), None, None)
    assert _input_html(torch.arange(30), None, None).startswith("<code>0 1 2") and "…" in _input_html(
        torch.arange(30), None, None)


def test_segmentation_report_has_per_class_iou(write_yaml, tmp_path):
    config = write_yaml(SEGMENTATION, "seg.yaml")
    result = invoke("train", config, "--run-dir", tmp_path / "seg", "--quiet")
    assert result.exit_code == 0, result.output
    page = (tmp_path / "seg" / "report.html").read_text()
    ids = checked(page).ids
    assert {"confusion-matrix", "per-class", "samples", "chart-val_miou"} <= ids
    assert "<th class='n'>IoU</th>" in page
    assert page.count("alt='prediction'") == page.count("alt='truth'") >= 1  # masks as images
    assert page.count("input · prediction · truth") == page.count("alt='truth'")
    (tmp_path / "seg" / "report.html").unlink()
    resumed = invoke("train", "--resume", tmp_path / "seg", "--quiet")  # nothing left to train: finish runs again
    assert resumed.exit_code == 0, resumed.output
    assert "IoU" in (tmp_path / "seg" / "report.html").read_text()


def test_regression_and_language_model_runs_get_the_parts_that_apply(tmp_path):
    from .test_data_text import SAMPLE
    from .test_sample import gpt_config

    regression = {"model": {"name": "reg", "input": [6], "layers": [
        {"id": "fc", "type": "linear", "out_features": 8}, {"type": "relu"}, {"id": "head", "type": "linear",
                                                                             "out_features": 2}]},
        "data": {"dataset": "synthetic", "num_samples": 96, "num_classes": 2, "batch_size": 32},
        "train": {"task": "regression", "epochs": 1, "device": "cpu"}}
    api.train(regression, run_dir=tmp_path / "reg", quiet=True)
    page = (tmp_path / "reg" / "report.html").read_text()
    ids = checked(page).ids
    assert {"diagram", "chart-loss", "samples"} <= ids and "confusion-matrix" not in ids
    assert "prediction: " in page and "<polyline" in page  # values, and the 1-D input as a curve

    (tmp_path / "corpus.txt").write_text(SAMPLE)
    api.train(gpt_config(tmp_path / "corpus.txt"), run_dir=tmp_path / "lm", quiet=True)
    page = (tmp_path / "lm" / "report.html").read_text()
    ids = checked(page).ids
    assert {"diagram", "chart-loss", "chart-val_ppl"} <= ids and not {"samples", "confusion-matrix"} & ids
    assert ">ppl</span>" in page  # the checkpoint measured: loss, perplexity, bits per character


def test_a_fine_tuned_run_shows_its_transfer_report(write_yaml, tmp_path):
    import torch

    import skiptrain

    from .conftest import TINY_RESIDUAL, TINY_RESIDUAL_MODEL

    source = skiptrain.build_model(write_yaml(TINY_RESIDUAL_MODEL, "source.yaml"), ["model.layers.7.out_features=10"])
    torch.save(source.state_dict(), tmp_path / "pretrained.pth")
    result = invoke("train", write_yaml(TINY_RESIDUAL, "tiny.yaml"), "--set", f"train.init={tmp_path / 'pretrained.pth'}",
                    "--run-dir", tmp_path / "run", "--epochs", 1, "--limit-batches", 1, "--quiet")
    assert result.exit_code == 0, result.output
    page = (tmp_path / "run" / "report.html").read_text()
    assert "transfer" in checked(page).ids
    assert "<td>head.weight</td><td>shape differs</td><td>[10, 16] vs [4, 16]</td>" in page
    assert "15 of 17 (88.2%)" in page  # tensors loaded


def test_a_report_that_fails_at_the_end_of_train_is_a_warning(write_yaml, tmp_path, monkeypatch):
    from skiptrain import html_report
    from skiptrain.errors import DataError

    from .conftest import TINY_RESIDUAL

    def moved(*args, **kwargs):
        raise DataError("the data folder is gone")

    monkeypatch.setattr(html_report, "measure", moved)
    result = invoke("train", write_yaml(TINY_RESIDUAL, "tiny.yaml"), "--run-dir", tmp_path / "run", "--epochs", 1,
                    "--limit-batches", 1, "--quiet")
    assert result.exit_code == 0, result.output
    assert "report.html was not written (the data folder is gone)" in result.stderr
    assert f"skiptrain report {tmp_path / 'run'}" in result.stderr and "Traceback" not in result.output
    assert (tmp_path / "run" / "summary.json").is_file() and not (tmp_path / "run" / "report.html").exists()


@pytest.mark.slow
def test_a_resnet56_report_with_a_full_schedule_stays_small(tmp_path):
    run = tmp_path / "r56"
    result = invoke("train", ROOT / "configs" / "cifar" / "resnet56.yaml", "--set", "data.dataset=synthetic",
                    "--set", "data.num_samples=1024", "--set", "data.num_classes=10", "--set", "data.augment=[]",
                    "--set", "data.batch_size=16", "--set", "train.device=cpu", "--epochs", 1, "--limit-batches", 1,
                    "--run-dir", run, "--quiet")
    assert result.exit_code == 0, result.output
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    (run / "metrics.jsonl").write_text("".join(json.dumps({**row, "epoch": e, "lr": 0.1 * 0.1 ** (e // 80)}) + "\n"
                                               for e in range(1, 161)))  # CIFAR's 160-epoch schedule
    assert invoke("report", run, "--samples", 64).exit_code == 0
    page = (run / "report.html").read_text()
    assert page.count("class='sample'") == 64 and "stage3" in page
    assert len(page.encode()) < 512 * 1024  # well under the 2 MB


@pytest.fixture(scope="module")
def comparison(tmp_path_factory) -> Path:
    """A real comparison of two tiny MLPs (2 epochs each): its folder."""
    from .test_compare import MLP

    folder = tmp_path_factory.mktemp("compare")
    (folder / "small.yaml").write_text(MLP.format(name="small", width=4))
    (folder / "wide.yaml").write_text(MLP.format(name="wide", width=8))
    out = folder / "cmp"
    result = invoke("compare", folder / "small.yaml", folder / "wide.yaml", "--epochs", 2, "--output-dir", out,
                    "--quiet")
    assert result.exit_code == 0, result.output
    return out


def test_compare_writes_an_html_page_linking_each_run(comparison):
    out = comparison
    page = (out / "report.html").read_text()
    self_contained(page)
    ids = checked(page).ids
    assert {"runs", "curves", "chart-train_loss", "chart-val_acc"} <= ids
    assert "href='small/report.html'" in page and "href='wide/report.html'" in page
    assert (out / "small" / "report.html").is_file() and (out / "wide" / "report.html").is_file()
    assert json.loads((out / "compare.json").read_text())["html"] == str(out / "report.html")


# Measures, once the page has loaded, the rendered size of what the report must show (a test-only script in a
# copy of the page: the report itself needs none).
MEASURE = """<script>window.addEventListener('load', () => {
  const out = {};
  for (const sel of SELECTORS) {
    const all = document.querySelectorAll(sel);
    out[sel] = Array.from(all, el => { const r = el.getBoundingClientRect(); return [r.width, r.height]; });
  }
  const pre = document.createElement('pre'); pre.id = 'measured'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});</script>"""


def rendered(browser, page: Path, selectors: list[str]) -> dict[str, list[list[float]]]:
    """The width and height of every element each selector matches, laid out by Chromium (JavaScript on);
    fails on any console error."""
    import re

    copy = page.with_name(f"measured-{page.name}")
    script = MEASURE.replace("SELECTORS", json.dumps(selectors))
    copy.write_text(page.read_text(encoding="utf-8").replace("</body>", script + "</body>"), encoding="utf-8")
    dom, errors = browser.load(copy)
    copy.unlink()
    assert errors == [], errors
    found = re.search(r"<pre id=\"measured\">(.*?)</pre>", dom, re.S)
    assert found, dom[-2000:]
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def test_pages_render_in_headless_chromium(run, comparison, tmp_path):
    from . import browser

    browser.need_chromium()
    report = run / "report.html"
    sizes = rendered(browser, report, ["#diagram svg", "#curves svg", "#confusion-matrix", "#confusion-matrix rect",
                                       "#per-class tr", "#samples img"])
    (diagram,), (confusion,) = sizes["#diagram svg"], sizes["#confusion-matrix"]
    assert diagram[0] > 150 and diagram[1] > 300, diagram  # a dozen nodes, one above the other
    assert len(sizes["#curves svg"]) == 4 and all(w > 250 and 150 < h < w for w, h in sizes["#curves svg"])
    assert confusion[0] > 250 and confusion[1] > 250, confusion
    assert len(sizes["#confusion-matrix rect"]) == 10 * 10 + 1 and len(sizes["#per-class tr"]) == 10 + 1
    assert sizes["#samples img"] and all(size == [74, 74] for size in sizes["#samples img"])  # 72 and a border
    browser.screenshot(report, tmp_path / "report.png", (1300, 2400))

    page = comparison / "report.html"
    sizes = rendered(browser, page, ["#curves svg", "#runs tr", "#curves polyline"])
    assert len(sizes["#runs tr"]) == 3 and all(w > 250 and h > 150 for w, h in sizes["#curves svg"])
    assert len(sizes["#curves polyline"]) >= 2 * len(sizes["#curves svg"])  # a line per run in every chart
    browser.screenshot(page, tmp_path / "compare.png", (1300, 1400))


# --- the validation pass recorded at training time (issue 19, item 6: the report without a second pass) ---

def _measured_section(page: str) -> str:
    import re

    return re.search(r"<section id='measured-on.*?</section>", page, re.S).group(0)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    """A tiny run whose every validation pass is recorded: 100 validation samples in 4 batches, 2 epochs."""
    from .conftest import TINY_RESIDUAL

    folder = tmp_path_factory.mktemp("recorded")
    config = folder / "tiny.yaml"
    config.write_text(TINY_RESIDUAL.replace("num_samples: 160", "num_samples: 420, val_fraction: 0.25"))
    result = invoke("train", config, "--run-dir", folder / "run", "--quiet")
    assert result.exit_code == 0, result.output
    return folder / "run"


def test_the_report_at_the_end_of_train_reads_the_recorded_validation_pass(recorded, monkeypatch, tmp_path):
    import torch

    from skiptrain import html_report
    from skiptrain.validation_record import read_record

    checkpoints = recorded / "checkpoints"
    record = read_record(checkpoints / "best.pt")
    best = torch.load(checkpoints / "best.pt", weights_only=True)
    assert (record["checkpoint"], record["epoch"], record["step"]) == ("best.pt", best["epoch"], best["step"])
    assert record["evaluated"] == record["total"] == 105 and len(record["samples"]) == 24
    assert [s["loss"] for s in record["samples"]] == sorted((s["loss"] for s in record["samples"]), reverse=True)
    assert read_record(checkpoints / "last.pt")["checkpoint"] == "last.pt"
    with_record = _measured_section((recorded / "report.html").read_text())

    def no_data(*args, **kwargs):
        raise AssertionError("the report ran the model again")

    monkeypatch.setattr("skiptrain.api.restored_data", no_data)  # with a record: no data, no forward pass
    assert _measured_section(html_report.run_page(recorded, device="cpu")) == with_record
    monkeypatch.undo()
    copy = tmp_path / "run"
    shutil.copytree(recorded, copy)
    for item in (copy / "checkpoints").glob("*.pt.validation*"):
        item.unlink()
    assert _measured_section(html_report.run_page(copy, device="cpu")) == with_record  # today's re-measure
    assert "samples of highest loss" in with_record and "id='per-class'" in with_record


def test_a_record_of_other_weights_or_a_damaged_one_is_measured_again(recorded, tmp_path):
    from skiptrain import html_report
    from skiptrain.checkpoint import atomic_save
    from skiptrain.validation_record import read_record

    copy = tmp_path / "run"
    shutil.copytree(recorded, copy)
    expected = _measured_section((recorded / "report.html").read_text())
    record = copy / "checkpoints" / "best.pt.validation"
    stale = read_record(copy / "checkpoints" / "best.pt")
    atomic_save({**stale, "step": stale["step"] + 1, "samples": stale["samples"][::-1]}, record)
    assert _measured_section(html_report.run_page(copy, device="cpu")) == expected  # not these weights' record
    record.write_bytes(record.read_bytes()[:200])  # cut short: a note, the page still whole
    result = invoke("report", copy)
    assert result.exit_code == 0 and "Traceback" not in result.output
    note = ("<p class='note'>Measured again: the validation record is damaged "
            "(best.pt.validation does not match its checksum).</p>")
    assert _measured_section((copy / "report.html").read_text()).replace(note, "", 1) == expected


def test_samples_too_large_to_record_are_measured_again(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import torch

    from skiptrain import validation_record
    from skiptrain.evaluate import Worst

    worst = Worst("classification", 4)
    worst.update(torch.randn(10, 3, 8, 8), torch.randn(10, 5), torch.randint(0, 5, (10,)))
    state = SimpleNamespace(path=str(tmp_path / "best.pt"), epoch=3, step=30)
    write = validation_record.write_record
    write(tmp_path / "best.pt", {"loss": 1.0, "worst": worst}, epoch=3, step=30, task="classification", split="val",
          total=10)
    assert len(validation_record.usable(state, 4, 10_000)["samples"]) == 4
    assert validation_record.usable(state, 5, 10_000) is None  # more samples asked than recorded
    monkeypatch.setattr(validation_record, "SAMPLES_BUDGET", 4 * 3 * 8 * 8 * 4 - 1)  # the inputs alone exceed it
    write(tmp_path / "best.pt", {"loss": 1.0, "worst": worst}, epoch=3, step=30, task="classification", split="val",
          total=10)
    record = validation_record.read_record(tmp_path / "best.pt")
    assert (record["kept"], record["samples"], record["evaluated"]) == (0, [], 10)
    assert validation_record.usable(state, 0, 10_000)["result"] == {"loss": 1.0}  # the figures still serve
    assert validation_record.usable(state, 1, 10_000) is None


def test_worst_samples_of_sharded_passes_merge_to_those_of_one_pass():
    import torch

    from skiptrain.evaluate import Worst

    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(n, 3, 4, 4, generator=gen), torch.randn(n, 5, generator=gen),
                torch.randint(0, 5, (n,), generator=gen)) for n in (8, 8, 8, 8, 3)]
    one = Worst("classification", 6)
    for x, out, y in batches:
        one.update(x, out, y)
    shards = [Worst("classification", 6) for _ in range(3)]
    for shard, part in zip(shards, (batches[:1], batches[1:3], batches[3:])):  # contiguous, in rank order
        for x, out, y in part:
            shard.update(x, out, y)
    states = [s.state() for s in shards]
    for rank in shards:
        rank.merge(states)
        assert rank.seen == 35
        got, want = rank.samples(), one.samples()
        assert [(r["loss"], r["index"]) for r in got] == [(r["loss"], r["index"]) for r in want]
        assert all(torch.equal(a["input"], b["input"]) for a, b in zip(got, want))
    flat = torch.cat([x for x, _, _ in batches])
    assert all(torch.equal(flat[r["index"]], r["input"]) for r in one.samples())


@pytest.mark.slow
def test_a_two_process_run_records_what_one_process_measures_of_its_checkpoint(tmp_path):
    """Each rank keeps the worst of its shard; merged, with rank 0's norm statistics on every rank (without
    them rank 1 measured its own, and the record's confusion matrix was not the checkpoint's)."""
    import os
    import subprocess
    import sys

    import torch

    from skiptrain import html_report

    from .conftest import TINY_RESIDUAL

    (tmp_path / "c.yaml").write_text(TINY_RESIDUAL.replace("num_samples: 160", "num_samples: 420, val_fraction: 0.25"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    done = subprocess.run([sys.executable, "-m", "skiptrain", "train", "c.yaml", "--run-dir", "double", "--nproc", "2",
                           "-q"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    recorded = _measured_section((tmp_path / "double" / "report.html").read_text())
    for item in (tmp_path / "double" / "checkpoints").glob("*.pt.validation*"):
        item.unlink()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers: the same sums, bit for bit
    try:
        assert _measured_section(html_report.run_page(tmp_path / "double", device="cpu")) == recorded
    finally:
        torch.set_num_threads(threads)
