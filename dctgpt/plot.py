"""Small charts drawn with PIL (no matplotlib): a line/scatter plot and a labelled image grid.

    line_plot([Series("jpeg", [0.5, 1.0], [30.0, float("inf")])], "RD", "bpp", "PSNR (dB)").save("rd.png")

A y value of +inf (a lossless PSNR) is drawn on a marked band above the axes' top edge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

INF_BAND = 24              # pixels above the axes where y = +inf points sit
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
          "#7f7f7f", "#bcbd22"]


@dataclass(frozen=True)
class Series:
    label: str
    x: list[float]
    y: list[float]
    line: bool = True          # join the points (sorted by x) or draw markers only


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:          # Pillow < 10.1: one fixed size
        return ImageFont.load_default()


def nice_ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    """About n round tick values covering lo..hi."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    return [start + i * step for i in range(int(math.ceil((hi - start) / step)) + 1)]


def line_plot(series: list[Series], title: str, xlabel: str, ylabel: str,
              size: tuple[int, int] = (760, 520)) -> Image.Image:
    """Series on shared axes with ticks, grid and a legend to the right."""
    W, H = size
    left, right, top, bottom = 64, 200, 36, 52
    im = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(im)
    f, fs = _font(13), _font(11)
    xs = [v for s in series for v in s.x if np.isfinite(v)]
    ys = [v for s in series for v in s.y if np.isfinite(v)]
    top_band = any(b == math.inf and np.isfinite(a) for s in series for a, b in zip(s.x, s.y))
    if not xs or not (ys or top_band):
        d.text((left, top), "no data", fill="black", font=f)
        return im
    xt, yt = nice_ticks(min(xs), max(xs)), nice_ticks(min(ys or [0.0]), max(ys or [1.0]))
    x0, x1, y0, y1 = xt[0], xt[-1], yt[0], yt[-1]
    inf_y, axes_top = top + INF_BAND // 2, top + (INF_BAND if top_band else 0)

    def px(x: float, y: float) -> tuple[float, float]:
        if y == math.inf:              # the lossless band above the axes
            return left + (x - x0) / (x1 - x0) * (W - left - right), inf_y
        return (left + (x - x0) / (x1 - x0) * (W - left - right),
                H - bottom - (y - y0) / (y1 - y0) * (H - axes_top - bottom))

    for x in xt:
        a = px(x, y0)
        d.line([a, px(x, y1)], fill="#e6e6e6")
        d.text((a[0], a[1] + 4), f"{x:g}", fill="black", font=fs, anchor="ma")
    for y in yt:
        a = px(x0, y)
        d.line([a, px(x1, y)], fill="#e6e6e6")
        d.text((a[0] - 4, a[1]), f"{y:g}", fill="black", font=fs, anchor="rm")
    d.rectangle([px(x0, y1), px(x1, y0)], outline="black")
    if top_band:
        for x in range(left, W - right, 8):        # a dashed line marks the band of inf values
            d.line([(x, inf_y), (min(x + 4, W - right), inf_y)], fill="#999999")
        d.text((left - 4, inf_y), "inf", fill="black", font=fs, anchor="rm")
    d.text((W / 2 - right / 2 + left / 2, 10), title, fill="black", font=f, anchor="ma")
    d.text(((left + W - right) / 2, H - 18), xlabel, fill="black", font=f, anchor="ma")
    label = Image.new("RGBA", (300, 20), (255, 255, 255, 0))
    ImageDraw.Draw(label).text((150, 10), ylabel, fill="black", font=f, anchor="mm")
    label = label.rotate(90, expand=True)
    im.paste(label, (4, int((top + H - bottom) / 2 - 150)), label)
    for i, s in enumerate(series):
        c = COLORS[i % len(COLORS)]
        pts = sorted((a, b) for a, b in zip(s.x, s.y) if np.isfinite(a) and (np.isfinite(b) or b == math.inf))
        xy = [px(a, b) for a, b in pts]
        if s.line and len(xy) > 1:
            d.line(xy, fill=c, width=2)
        for a, b in xy:
            d.ellipse([a - 4, b - 4, a + 4, b + 4], fill=c if s.line else "white", outline=c, width=2)
        ly = top + 8 + 18 * i
        d.line([(W - right + 12, ly), (W - right + 34, ly)], fill=c, width=2)
        d.ellipse([W - right + 19, ly - 4, W - right + 27, ly + 4], fill=c if s.line else "white", outline=c)
        d.text((W - right + 40, ly), s.label, fill="black", font=fs, anchor="lm")
    return im


def image_grid(rows: list[list[np.ndarray]], labels: list[str], scale: int = 2, pad: int = 4) -> Image.Image:
    """rows[i][j] (H, W, 3) uint8 images, column j titled labels[j]; each image scaled up by `scale`."""
    h = max(a.shape[0] for r in rows for a in r) * scale
    w = max(a.shape[1] for r in rows for a in r) * scale
    head = 18
    n = len(labels)
    grid = Image.new("RGB", (n * (w + pad) + pad, head + len(rows) * (h + pad) + pad), "white")
    d = ImageDraw.Draw(grid)
    f = _font(11)
    for j, text in enumerate(labels):
        d.text((pad + j * (w + pad) + w / 2, head / 2 + 1), text, fill="black", font=f, anchor="mm")
    for i, r in enumerate(rows):
        for j, a in enumerate(r):
            tile = Image.fromarray(a).resize((a.shape[1] * scale, a.shape[0] * scale),
                                             Image.Resampling.NEAREST)
            grid.paste(tile, (pad + j * (w + pad), head + pad + i * (h + pad)))
    return grid
