"""Hand-written SVG charts for the HTML report: line charts of a run's curves, a confusion heatmap.

Vector graphics inline in the page, so a report is one file that reads well at any zoom and needs
no plotting library, script or font. Every text that reaches the SVG (run names, class names,
metric keys) is escaped here; numbers are formatted here. Hovering a point or a cell shows its
value (an SVG ``<title>``): no script needed.
"""
from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass
from html import escape
from typing import Sequence

# Colour-blind-safe line colours (Okabe-Ito), in the order series get them.
COLOURS = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#d55e00", "#56b4e9", "#f0e442", "#000000")
FONT = "font-family='system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif'"
RECT_CELLS = 40  # a confusion matrix up to this many classes is drawn cell by cell; larger ones as an image


@dataclass
class Series:
    """One line: its legend label and its points (a None or non-finite y leaves a gap)."""

    label: str
    xs: Sequence[float]
    ys: Sequence[float | None]
    dashed: bool = False


def number(value: float) -> str:
    """A short, readable number: 0.9723, 1.2e-05, 12,345."""
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or abs(value) < 1e-3:
        return f"{value:.3g}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round values (1, 2, 5 times a power of ten) covering ``[low, high]``."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return []
    if high <= low:
        return [low]
    raw = (high - low) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(low / step - 1e-9) * step
    values, k = [], 0
    while first + k * step <= high + step * 1e-9 and k < 50:
        values.append(round(first + k * step, 12))
        k += 1
    return values


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def line_chart(series: Sequence[Series], *, title: str, xlabel: str = "epoch", ylabel: str = "",
               width: int = 460, height: int = 270, log_y: bool = False, chart_id: str = "") -> str:
    """A line chart as a standalone ``<svg>`` (scales to its container; hover a point for its value).
    ``log_y`` draws y on a log scale when every value is positive and they span a decade (learning rates)."""
    points = [(x, y) for s in series for x, y in zip(s.xs, s.ys) if _finite(x) and _finite(y)]
    left, right, top, bottom = 58, 12, 28, 42
    inner_w, inner_h = width - left - right, height - top - bottom
    legend_h = 16 * ((len(series) + 2) // 3) if len(series) > 1 else 0
    height += legend_h
    ident = f" id='{escape(chart_id, quote=True)}'" if chart_id else ""
    out = [f"<svg{ident} class='chart' xmlns='http://www.w3.org/2000/svg' viewBox='0 0 {width} {height}' "
           f"role='img' aria-label='{escape(title, quote=True)}' {FONT} font-size='11'>",
           f"<text x='{width / 2}' y='16' text-anchor='middle' font-size='13' font-weight='600'>{escape(title)}</text>"]
    if not points:
        out.append(f"<text x='{width / 2}' y='{height / 2}' text-anchor='middle' fill='#888'>no values</text></svg>")
        return "".join(out)
    log_y = log_y and all(y > 0 for _, y in points) and max(y for _, y in points) >= 10 * min(y for _, y in points)
    fy = math.log10 if log_y else (lambda v: v)
    x0, x1 = min(x for x, _ in points), max(x for x, _ in points)
    y0, y1 = min(fy(y) for _, y in points), max(fy(y) for _, y in points)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        pad = abs(y0) * 0.1 or 1.0
        y0, y1 = y0 - pad, y1 + pad
    else:
        pad = (y1 - y0) * 0.06
        y0, y1 = y0 - pad, y1 + pad

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * inner_w

    def py(y: float) -> float:
        return top + (1 - (fy(y) - y0) / (y1 - y0)) * inner_h

    out.append(f"<rect x='{left}' y='{top}' width='{inner_w}' height='{inner_h}' fill='#fff' stroke='#ccc'/>")
    for value in _y_ticks(y0, y1, log_y):
        y = py(value)
        out.append(f"<line x1='{left}' x2='{left + inner_w}' y1='{y:.1f}' y2='{y:.1f}' stroke='#eee'/>"
                   f"<text x='{left - 5}' y='{y + 4:.1f}' text-anchor='end' fill='#444'>{number(value)}</text>")
    whole = all(float(x) == int(x) for x, _ in points)  # epochs: no tick between two
    for value in ticks(x0, x1, 6):
        if value == int(value) or not whole:
            x = px(value)
            out.append(f"<line x1='{x:.1f}' x2='{x:.1f}' y1='{top}' y2='{top + inner_h}' stroke='#f3f3f3'/>"
                       f"<text x='{x:.1f}' y='{top + inner_h + 15}' text-anchor='middle' fill='#444'>"
                       f"{number(value)}</text>")
    out.append(f"<text x='{left + inner_w / 2}' y='{top + inner_h + 32}' text-anchor='middle'>{escape(xlabel)}</text>"
               f"<text transform='translate(13 {top + inner_h / 2}) rotate(-90)' text-anchor='middle'>"
               f"{escape(ylabel)}{' (log)' if log_y else ''}</text>")
    for k, s in enumerate(series):
        colour = COLOURS[k % len(COLOURS)]
        width_k = 2.0 if len(series) == 1 else max(1.2, 3.4 - 0.7 * k)  # later lines thinner: equal ones both show
        out.append(_line(s, colour, px, py, len(s.xs) <= 60, width_k))
    if len(series) > 1:
        for k, s in enumerate(series):
            colour = COLOURS[k % len(COLOURS)]
            lx, ly = left + (k % 3) * (inner_w / 3), top + inner_h + 48 + 16 * (k // 3)
            dash = " stroke-dasharray='5 3'" if s.dashed else ""
            out.append(f"<line x1='{lx:.1f}' x2='{lx + 18:.1f}' y1='{ly - 4}' y2='{ly - 4}' stroke='{colour}' "
                       f"stroke-width='2'{dash}/><text x='{lx + 22:.1f}' y='{ly}'>{escape(_short(s.label))}</text>")
    out.append("</svg>")
    return "".join(out)


def _y_ticks(y0: float, y1: float, log_y: bool) -> list[float]:
    if not log_y:
        return ticks(y0, y1, 5)
    decades = [10.0 ** e for e in range(math.floor(y0), math.ceil(y1) + 1) if y0 <= e <= y1]
    return decades if len(decades) >= 2 else [10 ** v for v in ticks(y0, y1, 4)]


def _short(text: str, limit: int = 28) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _line(s: Series, colour: str, px, py, markers: bool, width: float = 2.0) -> str:
    """A series as polylines (a gap at each missing value) and, for short series, hoverable points."""
    parts, run = [], []
    dash = " stroke-dasharray='5 3'" if s.dashed else ""
    for x, y in list(zip(s.xs, s.ys)) + [(None, None)]:
        if _finite(x) and _finite(y):
            run.append(f"{px(x):.1f},{py(y):.1f}")
            continue
        if len(run) > 1:
            parts.append(f"<polyline fill='none' stroke='{colour}' stroke-width='{width:g}'{dash} "
                         f"points='{' '.join(run)}'/>")
        run = []
    if markers or sum(1 for y in s.ys if _finite(y)) == 1:
        label = escape(s.label)
        parts += [f"<circle cx='{px(x):.1f}' cy='{py(y):.1f}' r='3' fill='{colour}'><title>{label}: "
                  f"{number(y)} at {number(x)}</title></circle>" for x, y in zip(s.xs, s.ys)
                  if _finite(x) and _finite(y)]
    return "<g>" + "".join(parts) + "</g>"


def sparkline(values: Sequence[float], size: int = 72) -> str:
    """A 1-D signal (one sample's input) as a small square curve, no axes."""
    values = [float(v) for v in values]
    finite = [v for v in values if math.isfinite(v)] or [0.0]
    low, span = min(finite), (max(finite) - min(finite)) or 1.0
    step = (size - 2) / max(1, len(values) - 1)
    points = " ".join(f"{k * step + 1:.1f},{size - 1 - (v - low) / span * (size - 2):.1f}"
                      for k, v in enumerate(values) if math.isfinite(v))
    return (f"<svg width='{size}' height='{size}' viewBox='0 0 {size} {size}' role='img' aria-label='input'>"
            f"<rect width='{size}' height='{size}' fill='#fff' stroke='#eee'/><polyline fill='none' stroke='{COLOURS[0]}' "
            f"stroke-width='1.5' points='{points}'/></svg>")


def _shade(share: float) -> str:
    """White to dark blue for a share in [0, 1]."""
    share = min(1.0, max(0.0, share))
    r, g, b = (int(255 + (c - 255) * share) for c in (8, 48, 107))
    return f"#{r:02x}{g:02x}{b:02x}"


def heatmap(matrix: Sequence[Sequence[float]], labels: Sequence[str], *, title: str = "confusion matrix",
            xlabel: str = "predicted", ylabel: str = "true", chart_id: str = "") -> str:
    """A confusion matrix (rows: true class, columns: predicted) as an ``<svg>``; each row is shaded by
    its share of the row's total, so rare classes read as well as common ones. Up to ``RECT_CELLS``
    classes every cell is a rectangle with its count (hover: the pair and the count); larger matrices are
    one embedded PNG, a pixel per cell, to keep the page small."""
    k = len(matrix)
    cell = max(6, min(40, 480 // max(1, k)))
    label_w = 8 + 7 * min(18, max((len(str(n)) for n in labels), default=1)) if k <= RECT_CELLS else 30
    left, top = label_w + 22, 36 + (label_w if k <= RECT_CELLS else 0)
    size = cell * k
    width, height = left + size + 10, top + size + 10
    ident = f" id='{escape(chart_id, quote=True)}'" if chart_id else ""
    out = [f"<svg{ident} class='heatmap' xmlns='http://www.w3.org/2000/svg' viewBox='0 0 {width} {height}' "
           f"role='img' aria-label='{escape(title, quote=True)}' {FONT} font-size='11' "
           f"style='max-width:{max(width, 320)}px'>",
           f"<text x='{left + size / 2}' y='16' text-anchor='middle' font-size='13' font-weight='600'>"
           f"{escape(title)}</text>",
           f"<text x='{left + size / 2}' y='30' text-anchor='middle' fill='#444'>{escape(xlabel)} →</text>",
           f"<text transform='translate(12 {top + size / 2}) rotate(-90)' text-anchor='middle' fill='#444'>"
           f"{escape(ylabel)} →</text>"]
    totals = [sum(row) or 1 for row in matrix]
    if k > RECT_CELLS:
        out.append(f"<image x='{left}' y='{top}' width='{size}' height='{size}' style='image-rendering:pixelated' "
                   f"href='data:image/png;base64,{_png(matrix, totals)}'/>")
    else:
        for j, name in enumerate(labels):
            x = left + j * cell + cell / 2 + 4
            out.append(f"<text transform='translate({x:.1f} {top - 4}) rotate(-90)'>{escape(_short(str(name), 18))}"
                       "</text>")
        for i, (row, total) in enumerate(zip(matrix, totals)):
            y = top + i * cell
            out.append(f"<text x='{left - 4}' y='{y + cell / 2 + 4:.1f}' text-anchor='end'>"
                       f"{escape(_short(str(labels[i]), 18))}</text>")
            for j, value in enumerate(row):
                share = value / total
                tip = f"true {escape(str(labels[i]))}, predicted {escape(str(labels[j]))}: {value:,} ({share:.1%})"
                out.append(f"<rect x='{left + j * cell}' y='{y}' width='{cell}' height='{cell}' fill='{_shade(share)}' "
                           f"stroke='#fff' stroke-width='0.5'><title>{tip}</title></rect>")
                if value and cell >= 18:
                    colour = "#fff" if share > 0.5 else "#222"
                    out.append(f"<text x='{left + j * cell + cell / 2}' y='{y + cell / 2 + 4:.1f}' text-anchor='middle' "
                               f"font-size='{9 if cell < 28 else 11}' fill='{colour}' pointer-events='none'>"
                               f"{_count(value)}</text>")
    out.append(f"<rect x='{left}' y='{top}' width='{size}' height='{size}' fill='none' stroke='#888'/></svg>")
    return "".join(out)


def _count(value: float) -> str:
    value = int(value)
    return f"{value / 1e6:.1f}M" if value >= 10 ** 6 else f"{value / 1e3:.0f}k" if value >= 10 ** 4 else str(value)


def _png(matrix: Sequence[Sequence[float]], totals: Sequence[float]) -> str:
    """The shaded matrix as a PNG (one pixel per cell), base64 for a data: URI."""
    from PIL import Image

    k = len(matrix)
    image = Image.new("RGB", (k, k))
    image.putdata([tuple(int(_shade(v / t)[n:n + 2], 16) for n in (1, 3, 5)) for row, t in zip(matrix, totals)
                   for v in row])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
