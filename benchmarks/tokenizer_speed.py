"""JPEG-DCT tokenizer speed against PIL (compiled and reference paths), BPE grammar speed, and tokens
per image.

    python benchmarks/tokenizer_speed.py [--n 48] [--seconds 1.0] [--bpe DIR] [--profile]

Same files, same run: random crops of the wheel photos, written as JPEGs at the target size and
quality (4:2:0, raster). encode (JPEG bytes -> ids) is timed against PIL's full decode of those
files to RGB; decode (ids -> JPEG bytes) against PIL's encode of the same pixels at that quality.
Ratios are tokenizer images/s over PIL images/s (target >= 1.0), for the compiled path (the default,
tokenizer.jpeg.compiled) and the reference path (libjpeg through jpeglib + the numpy codec). Then the BPE
grammar's milliseconds per step (target <= 1 ms) along the BPE streams of crops, with the BPE of
--bpe DIR or one of 4,096 pieces trained here on 64 px quality-25 crops of the embedded corpus's train
photos; then tokens per image at 64, 128 and 256 px for qualities 10, 25 and 50 in both orders, with
a BPE column (--bpe only) for the rows matching the BPE's base tokenizer.
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
from tokenizer.bpe.tokenizer import BpeTokenizer  # noqa: E402
from tokenizer.corpus import embedded  # noqa: E402
from tokenizer.jpeg import compiled  # noqa: E402

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
    built = compiled.enabled
    rows = []
    for size in SIZES:
        tok = JpegDctTokenizer(JpegDctConfig(quality=quality, size=(size, size)))
        files = [tok.to_jpeg(c) for c in crops(images, size, n)]
        seqs = [tok.encode(f) for f in files]
        pixels = [pil_decode(f) for f in files]
        row = dict(size=size, tokens=np.mean([len(s) for s in seqs]),
                   pil_dec=rate(pil_decode, files, seconds),
                   pil_enc=rate(pil_encoder(quality), pixels, seconds))
        for path in ("compiled", "reference"):
            compiled.enabled = built and path == "compiled"
            row[path] = (rate(tok.encode, files, seconds), rate(tok.decode, seqs, seconds)) \
                if compiled.enabled or path == "reference" else (float("nan"), float("nan"))
        compiled.enabled = built
        rows.append(row)
    return rows


def train_bpe(n: int = 1000, vocab_size: int = 4096) -> BpeTokenizer:
    """A BPE over the raster streams of n 64 px quality-25 crops of the embedded corpus's train photos."""
    base = JpegDctTokenizer(JpegDctConfig(quality=25, size=(64, 64)))
    streams = (base.encode(c.pixels).ids for c in embedded.crops("train", n, (64, 64), seed=2))
    return BpeTokenizer.train(base, streams, vocab_size)


def grammar_speed(bpe: BpeTokenizer, images: list[np.ndarray], n: int = 4, walk_steps: int = 12) -> dict:
    """Milliseconds per step of BpeGrammar.allowed along the BPE streams of n crops: in the body (the
    compiled check) and in the header (the trie walk); and of the trie walk on every 10th body step
    (walk_steps per stream at most)."""
    size = bpe.base.size or (64, 64)
    body, header, walk = [], [], []
    for px in crops(images, size[0], n, seed=3):
        seq = bpe.encode(px)
        g = bpe.grammar()
        for t in seq.ids:
            in_body = g.base.layout is not None
            t0 = time.perf_counter()
            g.allowed()
            (body if in_body else header).append(time.perf_counter() - t0)
            if in_body and len(walk) < walk_steps * n and len(body) % 10 == 0:   # spread over the streams
                t0 = time.perf_counter()
                g.walk()
                walk.append(time.perf_counter() - t0)
            g.push(int(t))
    ms = {k: 1e3 * float(np.mean(x)) for k, x in (("all", body + header), ("body", body), ("header", header),
                                                  ("walk", walk))}
    return dict(pieces=bpe.vocab_size, steps=len(body) + len(header), walk_steps=len(walk), **ms)


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
    ap.add_argument("--bpe", default=None, help="a saved BPE tokenizer (BPE column; grammar timing, "
                    "else with one trained here)")
    ap.add_argument("--profile", action="store_true", help="also print cProfile hot spots")
    a = ap.parse_args()
    images = photos()
    bpe = load_tokenizer(a.bpe) if a.bpe else None

    print(f"speed: JPEG quality 25, 4:2:0, raster; {a.n} random crops of {len(images)} wheel photos per size")
    print("images/s; ratio = tokenizer / PIL; compiled = the default path, reference = libjpeg + numpy codec")
    print(f"{'px':>4} {'tokens':>7} | {'PIL dec':>8} {'encode':>8} {'ratio':>6} {'ref':>7} {'ratio':>6} | "
          f"{'PIL enc':>8} {'decode':>8} {'ratio':>6} {'ref':>7} {'ratio':>6}")
    for r in speed_table(images, a.n, a.seconds):
        (enc, dec), (renc, rdec) = r["compiled"], r["reference"]
        pd, pe = r["pil_dec"], r["pil_enc"]
        print(f"{r['size']:>4} {r['tokens']:>7.0f} | {pd:>8.0f} {enc:>8.0f} {enc / pd:>6.2f} {renc:>7.0f} "
              f"{renc / pd:>6.2f} | {pe:>8.0f} {dec:>8.0f} {dec / pe:>6.2f} {rdec:>7.0f} {rdec / pe:>6.2f}")

    gs = grammar_speed(bpe or train_bpe(), images)
    print(f"\nBPE grammar ({gs['pieces']} pieces{'' if bpe else ', trained here'}), ms per step over "
          f"{gs['steps']} steps: {gs['all']:.3f} (body, compiled check: {gs['body']:.3f}; header, trie walk: "
          f"{gs['header']:.2f}); the trie walk on {gs['walk_steps']} body steps: {gs['walk']:.1f} "
          f"({gs['walk'] / gs['body']:.0f}x the compiled check)")

    print("\ntokens per image (mean over crops)")
    print(f"{'px':>4} {'quality':>7} {'order':>15} {'tokens':>8} {'bpe':>8}")
    for r in tokens_table(images, max(8, a.n // 2), bpe):
        b = "-" if r["bpe"] is None else f"{r['bpe']:.0f}"
        print(f"{r['size']:>4} {r['quality']:>7} {r['order']:>15} {r['tokens']:>8.0f} {b:>8}")
    if a.profile:
        profile(images)


if __name__ == "__main__":
    main()
