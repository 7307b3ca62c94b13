"""A report's sample pictures as inline HTML: an image as a small PNG ``data:`` URI, a 1-D signal as a
sparkline, token ids as text (``html_report``'s sample cards)."""
from __future__ import annotations

import base64
import io
from html import escape

from .svg_charts import sparkline

THUMB = 72  # shown size of a sample image, CSS pixels; images are stored at most this large


def image_html(image, label: str) -> str:
    """A PIL image as an inline PNG, at most THUMB pixels on its longer side."""
    from PIL import Image

    if max(image.size) > THUMB:
        image = image.copy()
        image.thumbnail((THUMB, THUMB), Image.NEAREST if image.mode == "P" else Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"<img alt='{escape(label)}' title='{escape(label)}' src='data:image/png;base64,{data}'>"


def input_html(x, mean, std) -> str:
    """A sample's input: an image (channels-first, 1 or 3 channels), a curve (a 1-D signal) or token ids."""
    import numpy as np
    from PIL import Image

    image_like = x.dim() == 3 and x.shape[0] in (1, 3)
    if not x.is_floating_point() and not image_like:
        ids = x.reshape(-1).tolist()
        return f"<code>{escape(' '.join(map(str, ids[:24])))}{' …' if len(ids) > 24 else ''}</code>"
    values = x.float().numpy()
    if image_like:
        if mean is not None and std is not None and x.is_floating_point():
            values = values * np.asarray(std, dtype=np.float32).reshape(-1, 1, 1) + \
                np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1)
        else:
            values = (values - values.min()) / max(float(values.max() - values.min()), 1e-12)
        pixels = (np.clip(values, 0, 1) * 255).astype(np.uint8)
        image = Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0))
        return image_html(image, "input")
    return sparkline(values.reshape(values.shape[0], -1)[0] if values.ndim > 1 else values, THUMB)
