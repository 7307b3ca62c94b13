"""`skiptrain graph --format svg|html`: the diagram parses, draws one element per node (or closed
block instance) and per skip, labels every projection with its kind, stays small on a 3,500-node
network, escapes user text, and renders in a real browser with its script on."""
from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET

import pytest

from skiptrain.api import check_model
from skiptrain.diagram import build, render_html, render_svg
from skiptrain.layout import Box, between, edge_path, geometry, lanes, shown

from .browser import load, need_chromium, screenshot
from .conftest import CONFIGS, EXAMPLES, ROOT, invoke

SVG = "{http://www.w3.org/2000/svg}"
RESNET20 = ROOT / "configs" / "cifar" / "resnet20.yaml"
ZOO = ROOT / "configs" / "zoo"


def classes(root: ET.Element, cls: str, tag: str = "g") -> list[ET.Element]:
    return [e for e in root.iter(SVG + tag) if cls in (e.get("class") or "").split()]


def script_error(dom: str) -> str | None:
    """What the page's window.onerror wrote on <html>, if anything."""
    found = re.search(r'<html[^>]*data-error="([^"]*)"', dom)
    return found.group(1) if found else None


def _params(paths):  # configs/zoo (a link, which rglob does not follow): big torchvision nets, seconds each: slow
    return [pytest.param(p, id=str(p.relative_to(p.parents[1])),
                         marks=[pytest.mark.slow] if p.parent == ZOO else []) for p in paths]


@pytest.mark.parametrize("config", _params(CONFIGS + sorted(ZOO.glob("*.yaml")) + EXAMPLES))
def test_every_config_draws_every_node_skip_and_projection(config):
    plan = check_model(config)
    full = ET.fromstring(render_svg(plan, collapse=False))
    assert len(classes(full, "node")) == len(plan.graph.nodes) + 1  # and the input
    assert len(classes(full, "skip", "path")) == len(plan.graph.skips)
    labels = classes(full, "proj")
    assert len(labels) == len(plan.projections)
    for label, proj in zip(labels, plan.projections.values()):
        assert "".join(label.itertext()).startswith(f"{proj.kind}: ")
    closed = ET.fromstring(render_svg(plan))
    assert len(classes(closed, "skip", "path")) == len(plan.graph.skips)
    assert len(classes(closed, "proj")) == len(plan.projections)
    assert len(classes(closed, "node")) + len(classes(closed, "block")) <= len(classes(full, "node"))


def test_repeated_blocks_are_boxes_with_their_parameters():
    plan = check_model(RESNET20)
    svg = ET.fromstring(render_svg(plan))
    blocks = classes(svg, "block")
    assert len(blocks) == 9 and len(classes(svg, "node")) == 6  # input, stem, bn, relu, pool, head
    first = "".join(blocks[0].itertext())
    assert first.startswith("stage1.0: basic") and "4,672 params" in first
    proj = [("".join(e.itertext())) for e in classes(svg, "proj")]
    assert len(proj) == 2 and all(t.startswith("pad: ") and "0 params" in t for t in proj)
    node_titles = [e.find(SVG + "title").text for e in classes(ET.fromstring(render_svg(plan, False)), "node")]
    conv = next(t for t in node_titles if t.startswith("stage1.0.conv1\n"))
    assert "type: conv2d" in conv and "out_channels=16" in conv and "output: [16, 32, 32]" in conv
    assert "resnet20.yaml:11:" in conv  # the YAML line the node came from


def test_main_chain_is_one_straight_column_and_branches_go_aside():
    plan = check_model(RESNET20)
    d = build(plan)
    opened = {k for k, u in d.units.items() if not u.leaf}
    boxes = geometry(d.root, opened)
    xs = {boxes[k].x for k, u in d.units.items() if u.leaf}
    assert len(xs) == 1  # a chain: every node in column 0
    ys = [boxes[k].y for k in sorted(k for k, u in d.units.items() if u.leaf)]
    assert ys == sorted(ys) and len(set(ys)) == len(ys)


def test_branches_take_side_columns(write_yaml):
    config = write_yaml("""
        model:
          input: [4]
          layers:
            - {id: a, type: linear, out_features: 4}
            - {id: side, type: linear, out_features: 4, input: a}
            - {id: b, type: linear, out_features: 4, input: a}
            - {id: c, type: linear, out_features: 4}
            - {id: out, type: add, input: [c, side]}
    """)
    plan = check_model(config)
    d = build(plan)
    boxes = geometry(d.root, set())
    x = {n.id: boxes[i + 1].x for i, n in enumerate(plan.graph.order)}
    assert x["a"] == x["b"] == x["c"] == x["out"] and x["side"] < x["a"]


def test_an_edge_over_boxes_in_its_column_goes_round_them():
    a, mid, b = Box(20, 0, 290, 38), Box(20, 54, 290, 38), Box(20, 108, 290, 38)
    tops = {20: [0, 54, 108]}
    assert not between(tops, a, mid) and between(tops, a, b)
    assert edge_path(a, mid) == "M165,38V54"  # straight down to the next box
    assert edge_path(a, b, True).startswith("M20,")  # from the left side, round the box between


def test_lanes_nest_and_never_overlap():
    spans = [(1, 20), (3, 17), (5, 14), (20, 30), (30, 40)]  # a U-Net's nest, then two residuals in a row
    got = lanes(spans)
    assert got[2] < got[1] < got[0]  # the shortest inside
    assert got[3] == got[4] == 0  # touching spans share a lane
    for i, (a, b) in enumerate(spans):
        for j, (c, e) in enumerate(spans[:i]):
            if a < e and c < b:
                assert got[i] != got[j]


def test_a_3500_node_network_gives_a_bounded_picture_quickly():
    plan = check_model(ROOT / "configs" / "cifar" / "resnet110.yaml", ["model.depth_multiplier=11.2"])
    assert len(plan.graph.nodes) > 3000
    start = time.perf_counter()
    text = render_svg(plan)
    took = time.perf_counter() - start
    svg = ET.fromstring(text)
    assert took < 10 and len(text) < 400_000
    assert float(svg.get("height")) < 1500 and float(svg.get("width")) < 1000
    folds = classes(svg, "fold")
    assert len(folds) == 3 and "200 × basic" in "".join(folds[0].itertext())


def test_user_text_is_escaped(write_yaml):
    config = write_yaml("""
        model:
          name: "<script>alert(1)<!--&amp;"
          input: [8]
          blocks:
            "b<&>'\\"":
              layers: [{id: fc1, type: linear, out_features: 8}]
          layers:
            - {id: x, block: "b<&>'\\"", repeat: 2}
    """)
    plan = check_model(config)
    for svg in (render_svg(plan), render_svg(plan, collapse=False)):
        titles = [e.text for e in ET.fromstring(svg).iter(SVG + "title")]
        assert any("block b<&>'\"" in t for t in titles)  # parsed back: the text itself, escaped in the file
    page = render_html(plan)
    assert "<script>alert" not in page and "b<&>" not in page and "&lt;script&gt;alert(1)&lt;!--&amp;amp;" in page


def test_cli_writes_svg_and_html_and_never_the_input(tmp_path, tiny_residual):
    svg, html = tmp_path / "x.svg", tmp_path / "x.html"
    result = invoke("graph", tiny_residual, "--format", "svg", "-o", svg)
    assert result.exit_code == 0, result.output
    ET.fromstring(svg.read_text())
    assert invoke("graph", tiny_residual, "--format", "html", "-o", html).exit_code == 0
    assert html.read_text().startswith("<!DOCTYPE html>") and 'id="skd-model"' in html.read_text()
    printed = invoke("graph", tiny_residual, "-f", "svg")
    assert printed.exit_code == 0 and printed.stdout.startswith("<svg ")
    before = tiny_residual.read_text()
    refused = invoke("graph", tiny_residual, "-f", "html", "-o", tiny_residual)
    assert refused.exit_code == 1 and "would destroy the input" in refused.output
    assert tiny_residual.read_text() == before


def test_page_has_no_external_references():
    page = render_html(check_model(RESNET20))
    for needle in ("http://", "https://", "src=", "@import", "url(http", "<link"):
        assert needle not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")


PARITY = """
model:
  name: parity
  input: [8]
  blocks:
    mlp:
      args: {width: 8}
      layers:
        - {id: fc1, type: linear, out_features: "${width}"}
        - {type: relu}
        - {id: fc2, type: linear, out_features: "${width}"}
      skips:
        - {from: input, to: fc2}
  layers:
    - {id: stem, type: linear, out_features: 8}
    - {id: body, block: mlp, repeat: 7}
    - {id: wide, block: mlp, args: {width: 16}}
    - {id: side, type: linear, out_features: 16, input: stem}
    - {id: out, type: add, input: [wide.fc2, side]}
    - {id: head, type: linear, out_features: 4}
"""  # boxes, a fold, a projection, a side branch into a merge


def placed(svg: str) -> dict[str, tuple[float, ...]]:
    """Each shown unit's position and each skip's path, as numbers, from an SVG's text."""
    found = {m[1]: (float(m[2]), float(m[3])) for m in re.finditer(
        r'<g class="[^"]*" id="(?:skd-)?([nbf]\d+)" transform="translate\(([^,]+),([^)]+)\)"( style="[^"]*")?', svg)
        if "none" not in (m[4] or "")}
    for m in re.finditer(r'<path class="skip[^"]*" id="(?:skd-)?(s\d+)" d="([^"]+)"', svg):
        found[m[1]] = tuple(float(v) for v in re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", m[2]))
    return found


def test_page_renders_in_chromium_opens_blocks_and_agrees_with_python(tmp_path, write_yaml):
    need_chromium()
    plan = check_model(write_yaml(PARITY))
    d = build(plan)
    first = next(u.key for u in d.root.children if not u.leaf)  # body.0's box
    page, clicked = tmp_path / "graph.html", tmp_path / "clicked.html"
    page.write_text(render_html(plan))
    # the same page, which notes how many boxes it drew, opens the first block, closes it, zooms out, opens all
    clicked.write_text(page.read_text().replace("</body>", (
        '<script>var s=document.getElementById("skd-svg");s.setAttribute("data-before",s.getAttribute("data-drawn"));'
        f'document.getElementById("skd-b{first}").dispatchEvent(new MouseEvent("click",{{bubbles:true}}));'
        's.setAttribute("data-opened",s.getAttribute("data-drawn"));'
        f'document.querySelector("#skd-h{first} text").dispatchEvent(new MouseEvent("click",{{bubbles:true}}));'
        's.setAttribute("data-closed",s.getAttribute("data-drawn"));'
        'document.getElementById("skd-out").click();document.getElementById("skd-open").click();'
        "</script></body>")))
    dom, errors = load(clicked)
    assert errors == [] and not script_error(dom)
    everything = {k for k, u in d.units.items() if not u.leaf}
    # every shown box has a non-zero size in the browser, before and after opening and closing
    assert f'data-before="{len(shown(d.root, d.opened))}"' in dom
    assert f'data-opened="{len(shown(d.root, d.opened | {first}))}"' in dom  # the box became a frame and 3 nodes
    assert f'data-closed="{len(shown(d.root, d.opened))}"' in dom
    assert f'data-drawn="{len(shown(d.root, everything))}"' in dom
    width = re.search(r'<svg [^>]*width="([\d.]+)"', dom).group(1)
    # zoomed out: 1/1.25 of the fully open diagram's width (wider than the closed one's)
    assert float(width) == pytest.approx(float(ET.fromstring(render_svg(plan, False)).get("width")) / 1.25)
    # the script placed every unit and drew every skip where Python does
    python, browser = placed(render_svg(plan, collapse=False)), placed(dom)
    assert python.keys() == browser.keys() and len(python) > 30
    for key, numbers in python.items():
        assert browser[key] == pytest.approx(numbers, abs=0.01), key
    png = screenshot(page, tmp_path / "graph.png", (1400, 1000))
    assert png.stat().st_size > 10_000
