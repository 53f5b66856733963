"""The training log: one CSV row per step and a loss-curve PNG drawn with PIL (no matplotlib)."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

from PIL import Image, ImageDraw

COLUMNS = ("iter", "train_loss", "val_loss", "val_bits_per_image", "lr", "tokens", "elapsed_s")


class Logbook:
    """`log.csv` in `out_dir`. On resume, rows from iteration `start_iter` on are dropped first."""

    def __init__(self, out_dir: str | os.PathLike, start_iter: int = 0):
        self.path = Path(out_dir) / "log.csv"
        self.rows: list[dict] = []
        if start_iter > 0 and self.path.is_file():
            with self.path.open() as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["iter"]) < start_iter]
        self._rewrite()

    def _rewrite(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, COLUMNS)
            w.writeheader()
            w.writerows(self.rows)
        os.replace(tmp, self.path)

    def append(self, **row) -> None:
        row = {k: ("" if row.get(k) is None else row[k]) for k in COLUMNS}
        self.rows.append(row)
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, COLUMNS).writerow(row)

    def plot(self, path: str | os.PathLike | None = None) -> Path:
        """Train loss (thin) and val loss (dots) against iteration, in nats/token."""
        path = Path(path) if path else self.path.with_name("loss.png")
        series = {k: [(int(r["iter"]), float(r[k])) for r in self.rows if r[k] not in ("", None)
                      and math.isfinite(float(r[k]))] for k in ("train_loss", "val_loss")}
        draw_curves(series, path, title="loss (nats/token)")
        return path


def draw_curves(series: dict[str, list[tuple[int, float]]], path: Path, title: str,
                size: tuple[int, int] = (640, 400)) -> None:
    W, H = size
    left, right, top, bottom = 60, 20, 30, 40
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    pts = [p for s in series.values() for p in s]
    d.text((left, 8), title, fill="black")
    if pts:
        x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
        later = [p[1] for p in pts if p[0] >= x0 + 0.1 * (x1 - x0)] or [p[1] for p in pts]
        y0 = min(p[1] for p in pts)
        y1 = min(max(p[1] for p in pts), y0 + 1.5 * (max(later) - y0))  # clip the first steps' spike
        series = {k: [(x, min(y, y1)) for x, y in s] for k, s in series.items()}
        x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1e-6)

        def xy(p):
            return (left + (p[0] - x0) / (x1 - x0) * (W - left - right),
                    H - bottom - (p[1] - y0) / (y1 - y0) * (H - top - bottom))

        d.rectangle([left, top, W - right, H - bottom], outline="gray")
        for frac in (0, 0.5, 1):
            y = y0 + frac * (y1 - y0)
            d.text((4, xy((x0, y))[1] - 6), f"{y:.3f}", fill="black")
            x = x0 + frac * (x1 - x0)
            d.text((xy((x, y0))[0] - 10, H - bottom + 6), f"{x:.0f}", fill="black")
        colors = {"train_loss": (120, 160, 230), "val_loss": (200, 40, 40)}
        for i, (name, s) in enumerate(series.items()):
            c = colors.get(name, (0, 0, 0))
            if len(s) > 1 and name == "train_loss":
                d.line([xy(p) for p in s], fill=c, width=1)
            for p in s if name != "train_loss" else []:
                x, y = xy(p)
                d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=c)
            d.text((W - right - 120, top + 6 + 14 * i), name, fill=c)
        d.text((W // 2 - 10, H - 16), "iter", fill="black")
    tmp = path.with_name(path.name + ".tmp.png")
    img.save(tmp)
    os.replace(tmp, path)
