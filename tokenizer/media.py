"""Any image input -> 8-bit pixels: the one loader every pixel-based tokenizer shares.

    px = load_pixels(media, read_bytes(media, name_of(media)), name_of(media), gray=False, limit=1 << 26)

An input is a path, JPEG/PNG bytes, a PIL image or an HxW / HxWx3 uint8 array. EXIF orientation is
applied, alpha composited on white, 16-bit scaled to 8 bits; anything unreadable raises a
TokenizerError that names the input and the reason.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from tokenizer.base import TokenizerError

# The file suffixes taken as images wherever a folder is read (corpora, evaluation, comparison, probes).
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jfif"}


def name_of(media: Any) -> str:
    if isinstance(media, (str, os.PathLike)):
        return str(media)
    return f"<{type(media).__name__}>"


def read_bytes(media: Any, name: str) -> bytes | None:
    if isinstance(media, (str, os.PathLike)):
        path = Path(media)
        if not path.is_file():
            raise FileNotFoundError(f"{name}: no such file")
        return path.read_bytes()
    if isinstance(media, (bytes, bytearray, memoryview)):
        return bytes(media)
    if isinstance(media, (Image.Image, np.ndarray)):
        return None
    raise TokenizerError(f"{name}: expected a path, bytes, a PIL image or a uint8 array")


def load_pixels(media: Any, data: bytes | None, name: str, gray: bool, limit: int) -> np.ndarray:
    """(H, W, 3) or (H, W) uint8 pixels of any image input."""
    if isinstance(media, np.ndarray):
        arr = media
        if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 3, 4))):
            raise TokenizerError(f"{name}: expected an HxW or HxWx3 uint8 array, got {arr.dtype} {arr.shape}")
        im = Image.fromarray(arr[:, :, 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr)
    elif isinstance(media, Image.Image):
        im = media
    else:
        try:
            im = Image.open(io.BytesIO(data))
        except Exception as e:   # PIL raises many types for unreadable bytes
            raise TokenizerError(f"{name}: not a readable image ({type(e).__name__}: {e})") from None
    if im.width * im.height > limit:
        raise TokenizerError(f"{name}: {im.width}x{im.height} is over max_pixels={limit}")
    if im.width == 0 or im.height == 0:
        raise TokenizerError(f"{name}: image has zero size")
    try:
        im.load()
        im = ImageOps.exif_transpose(im)
        im = to_8bit(im)
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            im = Image.alpha_composite(white, rgba)
        return np.asarray(im.convert("L" if gray else "RGB"))
    except (OSError, ValueError, SyntaxError) as e:
        raise TokenizerError(f"{name}: could not decode the image ({e})") from None


def to_8bit(im: Image.Image) -> Image.Image:
    """16-bit and 32-bit integer / float gray images scaled to 8 bits (PIL would clip them)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im).astype(np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or (im.mode == "I" and a.max() > 255) else 255.0
        if im.mode == "F":
            top = 1.0 if a.max() <= 1.0 else 255.0
        return Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    return im
