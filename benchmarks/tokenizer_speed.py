"""JPEG-DCT tokenizer speed against PIL, and tokens per image.

    python benchmarks/tokenizer_speed.py [--n 48] [--seconds 1.0] [--bpe DIR] [--profile]

Same files, same run: random crops of the wheel photos, written as JPEGs at the target size and
quality (4:2:0, raster). encode (JPEG bytes -> ids) is timed against PIL's full decode of those
files to RGB; decode (ids -> JPEG bytes) against PIL's encode of the same pixels at that quality.
Ratios are tokenizer images/s over PIL images/s (target >= 1.0). Then tokens per image at 64, 128
and 256 px for qualities 10, 25 and 50 in both orders; with --bpe DIR (a saved BpeTokenizer) a
BPE column for the rows matching its base tokenizer's quality and order.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tokenizer import JpegDctConfig, JpegDctTokenizer, TokenSequence, load_tokenizer  # noqa: E402

SIZES = (64, 128, 256)
QUALITIES = (10, 25, 50)
ORDERS = ("raster", "coarse_to_fine")


def photos() -> list[np.ndarray]:
    """RGB pixels of the photos in the scikit-image and scikit-learn wheels (no downloads)."""
    import skimage
    import sklearn
    sk = Path(os.path.dirname(skimage.__file__)) / "data"
    sl = Path(os.path.dirname(sklearn.__file__)) / "datasets" / "images"
    paths = [sk / f for f in ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png",
                              "rocket.jpg", "hubble_deep_field.jpg")] + [sl / "china.jpg", sl / "flower.jpg"]
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths if p.is_file()]


def crops(images: list[np.ndarray], size: int, n: int, seed: int = 0) -> list[np.ndarray]:
    """n random size x size crops (a photo smaller than `size` is scaled up first)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        im = images[i % len(images)]
        if min(im.shape[:2]) < size:
            k = size / min(im.shape[:2])
            new_size = (round(im.shape[1] * k) + 1, round(im.shape[0] * k) + 1)
            im = np.asarray(Image.fromarray(im).resize(new_size))
        y, x = rng.integers(0, im.shape[0] - size + 1), rng.integers(0, im.shape[1] - size + 1)
        out.append(np.ascontiguousarray(im[y:y + size, x:x + size]))
    return out


def rate(fn, items: list, seconds: float) -> float:
    """Items per second of fn over all items, repeated until `seconds` have passed (at least once)."""
    for it in items[:2]:
        fn(it)   # warm caches (layouts, tables)
    done, t0 = 0, time.perf_counter()
    while True:
        for it in items:
            fn(it)
        done += len(items)
        dt = time.perf_counter() - t0
        if dt >= seconds:
            return done / dt


def pil_decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def pil_encoder(quality: int):
    def encode(px: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(px).save(buf, "JPEG", quality=quality)   # 4:2:0, like the tokenizer's files
        return buf.getvalue()
    return encode


def speed_table(images: list[np.ndarray], n: int, seconds: float, quality: int = 25) -> list[dict]:
    rows = []
    for size in SIZES:
        tok = JpegDctTokenizer(JpegDctConfig(quality=quality, size=(size, size)))
        files = [tok.to_jpeg(c) for c in crops(images, size, n)]
        seqs = [tok.encode(f) for f in files]
        pixels = [pil_decode(f) for f in files]
        enc, pil_dec = rate(tok.encode, files, seconds), rate(pil_decode, files, seconds)
        batch = len(files) * rate(tok.encode_batch, [files], seconds)
        dec, pil_enc = rate(tok.decode, seqs, seconds), rate(pil_encoder(quality), pixels, seconds)
        rows.append(dict(size=size, enc=enc, batch=batch, pil_dec=pil_dec, dec=dec, pil_enc=pil_enc,
                         tokens=np.mean([len(s) for s in seqs])))
    return rows


def bpe_lengths(bpe, seqs: list[TokenSequence]) -> float | None:
    """Hook for the BPE column: mean length after BPE, or None without a BPE tokenizer."""
    if bpe is None:
        return None
    return float(np.mean([len(bpe.from_base(s)) for s in seqs]))


def tokens_table(images: list[np.ndarray], n: int, bpe=None) -> list[dict]:
    rows = []
    base = bpe.base if bpe is not None else None
    for size in SIZES:
        cs = crops(images, size, n, seed=1)
        for quality in QUALITIES:
            for order in ORDERS:
                tok = JpegDctTokenizer(JpegDctConfig(quality=quality, size=(size, size), order=order))
                seqs = [tok.encode(c) for c in cs]
                match = base is not None and (base.config.quality, base.config.order) == (quality, order)
                rows.append(dict(size=size, quality=quality, order=order,
                                 tokens=np.mean([len(s) for s in seqs]),
                                 bpe=bpe_lengths(bpe, seqs) if match else None))
    return rows


def profile(images: list[np.ndarray], size: int = 128, n: int = 32) -> None:
    tok = JpegDctTokenizer(JpegDctConfig(quality=25, size=(size, size)))
    files = [tok.to_jpeg(c) for c in crops(images, size, n)]
    seqs = [tok.encode(f) for f in files]
    for name, fn, items in (("encode", tok.encode, files), ("decode", tok.decode, seqs)):
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(5):
            for it in items:
                fn(it)
        prof.disable()
        print(f"\n== cProfile: {name} at {size} px, top functions by own time")
        pstats.Stats(prof).sort_stats("tottime").print_stats(12)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=48, help="crops per size")
    ap.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    ap.add_argument("--bpe", default=None, help="a saved BPE tokenizer directory (adds the BPE column)")
    ap.add_argument("--profile", action="store_true", help="also print cProfile hot spots")
    a = ap.parse_args()
    images = photos()
    bpe = load_tokenizer(a.bpe) if a.bpe else None

    print(f"speed: JPEG quality 25, 4:2:0, raster; {a.n} random crops of {len(images)} wheel photos per size")
    print("(batch: tok.encode_batch over all crops of a size at once)")
    print(f"{'px':>4} {'tokens':>7} | {'encode/s':>9} {'batch/s':>8} {'PIL dec/s':>9} {'ratio':>6} "
          f"{'batch':>6} | {'decode/s':>9} {'PIL enc/s':>9} {'ratio':>6}")
    for r in speed_table(images, a.n, a.seconds):
        print(f"{r['size']:>4} {r['tokens']:>7.0f} | {r['enc']:>9.0f} {r['batch']:>8.0f} "
              f"{r['pil_dec']:>9.0f} {r['enc'] / r['pil_dec']:>6.2f} {r['batch'] / r['pil_dec']:>6.2f} | "
              f"{r['dec']:>9.0f} {r['pil_enc']:>9.0f} {r['dec'] / r['pil_enc']:>6.2f}")

    print("\ntokens per image (mean over crops)" + ("" if bpe else "; BPE column: pass --bpe DIR"))
    print(f"{'px':>4} {'quality':>7} {'order':>15} {'tokens':>8} {'bpe':>8}")
    for r in tokens_table(images, max(8, a.n // 2), bpe):
        b = "-" if r["bpe"] is None else f"{r['bpe']:.0f}"
        print(f"{r['size']:>4} {r['quality']:>7} {r['order']:>15} {r['tokens']:>8.0f} {b:>8}")
    if a.profile:
        profile(images)


if __name__ == "__main__":
    main()
