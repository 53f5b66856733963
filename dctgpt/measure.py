"""One tokenizer measured on a folder of images: tokens, bits, distortion and speed (a `Row`).

    row, recons = measure("jpeg q25 raster", tok, paths, [load_rgb(p) for p in paths], model=None)

Distortion is PSNR / SSIM (skimage.metrics) of each decoded image against the original fitted to
its geometry; PSNR is the mean over the images decoded with loss, and `lossless` counts the exact
ones (inf PSNR); a row whose every image is exact has PSNR inf. Used by dctgpt.compare (tokenizers
side by side) and dctgpt.compare_train (a model trained per tokenizer).
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from tokenizer.jpeg.io import scan_bytes


@dataclass
class Row:
    tokenizer: str
    family: str              # curve of the RD plot this row belongs to
    vocab: int
    images: int
    tokens_mean: float
    tokens_p95: float
    raw_bits: float          # per image
    entropy_bits: float      # per image, order-0
    model_bits: float        # per image, nan without a checkpoint for this tokenizer
    scan_bits: float         # per image, JPEG's Huffman scan; nan for non-JPEG tokenizers
    bpp_raw: float
    bpp_entropy: float
    psnr: float              # mean over the images not decoded exactly; inf if all are exact
    lossless: int            # images decoded exactly (PSNR inf)
    ssim: float
    encode_ips: float
    decode_ips: float


def label(tok: Any) -> str:
    """A short name: "jpeg q25 raster", "bpe2048 q25 c2f", or the tokenizer's registered name."""
    if tok.name not in ("jpeg_dct", "jpeg_dct_bpe"):
        return tok.name
    c = tok.config
    kind = "jpeg" if tok.name == "jpeg_dct" else f"bpe{tok.vocab_size}"
    return f"{kind} q{c.quality} {'c2f' if c.order == 'coarse_to_fine' else c.order}"


def load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def to_rgb(decoded: Any) -> np.ndarray:
    """A tokenizer's decode output (image bytes, PIL image or array) as (H, W, 3) uint8."""
    if isinstance(decoded, (bytes, bytearray)):
        decoded = Image.open(io.BytesIO(decoded))
    if isinstance(decoded, Image.Image):
        decoded = np.asarray(decoded.convert("RGB"))
    a = np.asarray(decoded, np.uint8)
    return np.repeat(a[:, :, None], 3, 2) if a.ndim == 2 else a


def fit_like(original: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The original at a decoded image's geometry (scale to cover, crop the middle, as tokenizers do)."""
    if original.shape[:2] == shape[:2]:
        return original
    return np.asarray(ImageOps.fit(Image.fromarray(original), (shape[1], shape[0]), Image.Resampling.LANCZOS))


def finite_mean(psnr: list[float]) -> tuple[float, int]:
    """(mean PSNR over the lossy images, count of exact ones): inf if every image is exact."""
    finite = [p for p in psnr if math.isfinite(p)]
    return (float(np.mean(finite)) if finite else float("inf")), len(psnr) - len(finite)


def measure(name: str, tok: Any, paths: list[Path], originals: list[np.ndarray], model: Any = None
            ) -> tuple[Row, list[np.ndarray]]:
    """One Row for `tok` over the images, and the reconstructions."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    t0 = time.perf_counter()
    seqs = [tok.encode(p) for p in paths]
    t1 = time.perf_counter()
    recons = [to_rgb(tok.decode(s)) for s in seqs]
    t2 = time.perf_counter()
    refs = [fit_like(o, r.shape) for o, r in zip(originals, recons)]
    with np.errstate(divide="ignore"):                # an exact decode is inf dB, counted as lossless
        psnr = [peak_signal_noise_ratio(a, b, data_range=255) for a, b in zip(refs, recons)]
    win = min(7, *(min(r.shape[:2]) // 2 * 2 - 1 for r in recons))
    ssim = [structural_similarity(a, b, channel_axis=2, data_range=255, win_size=win)
            for a, b in zip(refs, recons)]
    lengths = np.array([len(s) for s in seqs])
    ids = np.concatenate([s.ids for s in seqs])
    p = np.bincount(ids, minlength=tok.vocab_size) / len(ids)
    h = float(-(p[p > 0] * np.log2(p[p > 0])).sum())
    pixels = float(np.mean([r.shape[0] * r.shape[1] for r in recons]))
    scan = _scan_bits(tok, paths)
    model_bits = float("nan")
    if model is not None:
        from dctgpt.evaluate import stream_bits
        model_bits = float(np.mean([stream_bits(model, tok, s) for s in seqs]))
    raw = float(lengths.mean() * math.log2(tok.vocab_size))
    row = Row(name, _family(name, tok), tok.vocab_size, len(paths), float(lengths.mean()),
              float(np.percentile(lengths, 95)), raw, float(lengths.mean() * h), model_bits, scan,
              raw / pixels, lengths.mean() * h / pixels, *finite_mean(psnr), float(np.mean(ssim)),
              len(paths) / (t1 - t0), len(paths) / (t2 - t1))
    return row, recons


def _scan_bits(tok: Any, paths: list[Path]) -> float:
    jpegs = [tok.to_jpeg(p) for p in paths]
    if any(j is None for j in jpegs):   # learned tokens: no JPEG scan to compare with
        return float("nan")
    return float(np.mean([8 * scan_bytes(j) for j in jpegs]))


def _family(name: str, tok: Any) -> str:
    if name.startswith("ckpt "):
        return "checkpoint"
    if tok.name in ("jpeg_dct", "jpeg_dct_bpe"):
        return name.split(" q")[0] + " " + name.split(" ")[-1]
    return tok.name
