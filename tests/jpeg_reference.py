"""Test helpers: the wheel photos, and a JPEG's coefficients read straight through jpeglib.

The reference reader does not go through the tokenizer (no marker parsing, no zigzag table of its
own), so round-trip tests compare the tokenizer against libjpeg, not against itself.
"""

from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import jpeglib
import numpy as np
import skimage
import sklearn
from PIL import Image

SKIMAGE_DATA = Path(os.path.dirname(skimage.__file__)) / "data"
SKLEARN_IMAGES = Path(os.path.dirname(sklearn.__file__)) / "datasets" / "images"
PHOTOS = {
    "astronaut": SKIMAGE_DATA / "astronaut.png",    # 512x512 RGB
    "chelsea": SKIMAGE_DATA / "chelsea.png",        # 451x300 RGB
    "coffee": SKIMAGE_DATA / "coffee.png",          # 600x400 RGB
    "camera": SKIMAGE_DATA / "camera.png",          # 512x512 gray
    "horse": SKIMAGE_DATA / "horse.png",            # 400x328 RGBA
    "rocket": SKIMAGE_DATA / "rocket.jpg",          # 640x427 JPEG 4:4:4
    "china": SKLEARN_IMAGES / "china.jpg",          # 640x427 JPEG
    "flower": SKLEARN_IMAGES / "flower.jpg",        # 640x427 JPEG
}
JPEG_PHOTOS = ("rocket", "china", "flower")


@cache
def photo_pixels(name: str) -> np.ndarray:
    """RGB uint8 pixels of a wheel photo (read-only, cached)."""
    px = np.asarray(Image.open(PHOTOS[name]).convert("RGB"))
    px.flags.writeable = False
    return px


def zigzag() -> np.ndarray:
    """ZIGZAG[k] = natural index (row * 8 + col) of the k-th coefficient, built from the JPEG rule:
    walk the anti-diagonals, upwards on even ones and downwards on odd ones."""
    cells = [(r, c) for r in range(8) for c in range(8)]
    cells.sort(key=lambda rc: (rc[0] + rc[1], rc[1] if (rc[0] + rc[1]) % 2 == 0 else rc[0]))
    return np.array([r * 8 + c for r, c in cells])


@dataclass
class Reference:
    """A JPEG as libjpeg reads it: per component (rows, cols, 64) natural-order blocks, its (64,)
    natural-order table, its (h, v) sampling factors, and the image size."""

    size: tuple[int, int]                 # (height, width)
    blocks: list[np.ndarray]
    tables: list[np.ndarray]
    factors: list[tuple[int, int]]

    def assert_equal(self, other: Reference, what: str = "") -> None:
        assert self.size == other.size, f"{what}: size {self.size} != {other.size}"
        assert len(self.blocks) == len(other.blocks), f"{what}: component counts differ"
        for c, (a, b) in enumerate(zip(self.blocks, other.blocks)):
            assert a.shape == b.shape, f"{what}: component {c} blocks {a.shape} != {b.shape}"
            assert np.array_equal(a, b), f"{what}: component {c}: {np.sum(a != b)} coefficients differ"
        for c, (a, b) in enumerate(zip(self.tables, other.tables)):
            assert np.array_equal(a, b), f"{what}: component {c} quantization tables differ"
        if len(self.blocks) > 1:   # one component: its sampling factors change nothing (always 1 block/MCU)
            assert self.factors == other.factors, f"{what}: sampling {self.factors} != {other.factors}"


def strip_app_segments(data: bytes) -> bytes:
    """The file without its APPn/COM segments before the first scan (they hold no coefficients;
    jpeglib's marker reader gives up on files with more than 50 of them)."""
    out, i = bytearray(data[:2]), 2
    while i + 4 <= len(data) and data[i] == 0xFF and data[i + 1] != 0xDA:
        end = i + 2 + int.from_bytes(data[i + 2:i + 4], "big")
        if not (0xE0 <= data[i + 1] <= 0xEF or data[i + 1] == 0xFE):
            out += data[i:end]
        i = end
    return bytes(out + data[i:])


def reference(data: bytes | os.PathLike | str) -> Reference:
    """Read a JPEG's coefficients and tables with jpeglib alone."""
    if isinstance(data, (str, os.PathLike)):
        data = Path(data).read_bytes()
    try:
        return _reference(data)
    except OSError:
        return _reference(strip_app_segments(data))


def _reference(data: bytes) -> Reference:
    with tempfile.NamedTemporaryFile(suffix=".jpg") as f:
        f.write(data)
        f.flush()
        jpeg = jpeglib.read_dct(f.name)
        jpeg.load()
        planes = [jpeg.Y] if jpeg.Cb is None else [jpeg.Y, jpeg.Cb, jpeg.Cr]
        blocks = [np.asarray(p, np.int16).reshape(p.shape[0], p.shape[1], 64).copy() for p in planes]
        tables = [np.asarray(jpeg.qt[jpeg.quant_tbl_no[c]], np.int64).reshape(64).copy()
                  for c in range(len(planes))]
        factors = [tuple(int(x) for x in jpeg.samp_factor[c])[::-1] for c in range(len(planes))]
        return Reference((jpeg.height, jpeg.width), blocks, tables, factors)


def pil_tables(quality: int, gray: bool) -> list[np.ndarray]:
    """Natural-order tables PIL (libjpeg's jpeg_set_quality, baseline) writes at `quality`."""
    buf = io.BytesIO()
    Image.new("L" if gray else "RGB", (16, 16)).save(buf, "JPEG", quality=quality)
    return reference(buf.getvalue()).tables


def to_natural(zz_blocks: np.ndarray) -> np.ndarray:
    """(rows, cols, 64) zigzag-order blocks -> natural order."""
    out = np.empty_like(zz_blocks)
    out[..., zigzag()] = zz_blocks
    return out


def pil_pixels(data: bytes) -> np.ndarray:
    im = Image.open(io.BytesIO(data))
    im.load()
    return np.asarray(im)
