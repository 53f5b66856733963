"""Are samples photographs in every decoder? Blocks outside the 8-bit range, and two decoders' agreement.

    nice python benchmarks/sample_range.py --ckpt out/quickstart --samples 1000 --dc_only 100 --unbounded 100

Samples `--samples` images of the checkpoint at its tokenizer's size with the bounded grammar (what
`generate` does by default), `--dc_only` more with the DC bounds but no block drawn again, and
`--unbounded` more with neither (what it did before), and takes as many real photos: val crops of
the embedded corpus (photos the quickstart never trained on) brought to the same size and quality
by the tokenizer. For every JPEG it prints:

- the share of 8x8 blocks (all components) whose exact inverse DCT leaves [-64, 319]: decoders
  clamp or wrap such values differently (real photos have none);
- the worst pixel value before clamping;
- the mean |PIL - ffmpeg| over RGB pixels: libjpeg through PIL against ffmpeg's own JPEG decoder
  through PyAV (the `video` or `test` extra), and over the luma plane alone (no chroma upsampling
  or colour conversion: what is left is the two inverse DCTs and their clamping). Real photos
  differ by about a level in RGB (upsampling and rounding) and almost nothing in luma; a sample is
  a different picture in each decoder when these are much larger;
- the chroma gradient: mean |difference| between neighbouring pixels of the Cb and Cr planes (exact
  inverse DCT, clamped), before upsampling. The two decoders upsample chroma differently, so their
  RGB difference grows with it, in photos and samples alike.

It also counts what the bounded grammar costs: block draws it rejected (Rewind), blocks it made
flat after MAX_TRIES draws, and the sampled tokens it took back.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dctgpt import checkpoint  # noqa: E402
from dctgpt.generate import SamplingConfig, generate  # noqa: E402
from tokenizer import JpegDctTokenizer  # noqa: E402
from tokenizer.corpus.embedded import crops  # noqa: E402
from tokenizer.jpeg.grammar import HIGH, LOW, MAX_TRIES, block_pixels  # noqa: E402
from tokenizer.jpeg.io import read_coefficients  # noqa: E402


@dataclass
class Tally:
    images: int = 0
    blocks: int = 0
    out: int = 0            # blocks with a pixel outside [LOW, HIGH]
    images_out: int = 0     # images with at least one such block
    lowest: float = 128.0
    highest: float = 128.0
    diffs: list[tuple[float, float, float]] = None  # per image: |PIL - ffmpeg| RGB, luma; chroma gradient
    tokens: int = 0            # tokens kept in the samples (after the header)
    seconds: float = 0.0
    taken_back: int = 0        # tokens drawn again, rejected block draws, blocks made flat
    rewinds: int = 0
    flattened: int = 0

    def add(self, jpeg: bytes) -> None:
        coef = read_coefficients(jpeg)
        out, gradient = 0, []
        for c, (blocks, table) in enumerate(zip(coef.blocks, coef.qtables)):
            px = block_pixels(blocks.reshape(-1, 64), table)              # (n, 8, 8)
            if c:  # a chroma plane as decoded before upsampling: (rows * 8, cols * 8)
                r, k = blocks.shape[:2]
                plane = np.clip(px, 0, 255).reshape(r, k, 8, 8).transpose(0, 2, 1, 3).reshape(8 * r, 8 * k)
                gradient += [np.abs(np.diff(plane, axis=0)).mean(), np.abs(np.diff(plane, axis=1)).mean()]
            lo, hi = px.min((1, 2)), px.max((1, 2))
            out += int(((lo < LOW) | (hi > HIGH)).sum())
            self.blocks += len(px)
            self.lowest, self.highest = min(self.lowest, lo.min()), max(self.highest, hi.max())
        self.out += out
        self.images_out += out > 0
        self.images += 1
        self.diffs = (self.diffs or []) + [(*decoder_difference(jpeg), np.mean(gradient or [0.0]))]

    def row(self, name: str) -> str:
        d = np.array(self.diffs)
        per = f"{self.seconds / self.images:6.2f}" if self.seconds else "     -"
        return (f"{name:24s} {self.images:6d} {self.blocks:8d} {self.out:7d} ({self.out / self.blocks:7.3%}) "
                f"{self.images_out:6d}  {self.lowest:7.0f} {self.highest:6.0f}   {d[:, 0].mean():6.2f} "
                f"{np.percentile(d[:, 0], 99):6.2f} {d[:, 0].max():6.2f}   {d[:, 1].mean():6.3f} "
                f"{d[:, 1].max():6.2f}   {d[:, 2].mean():6.2f}   {per}")


def decoder_difference(jpeg: bytes) -> tuple[float, float]:
    """Mean |PIL - ffmpeg| over the RGB pixels and over the luma plane of one JPEG."""
    import av  # the video / test extra

    pil = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), np.int16)
    luma = Image.open(io.BytesIO(jpeg))
    luma.draft("L", luma.size)                       # libjpeg's own Y plane, no colour conversion
    pil_y = np.asarray(luma.convert("L"), np.int16)
    with av.open(io.BytesIO(jpeg), format="mjpeg") as container:
        frame = next(container.decode(video=0))
        ff = frame.to_ndarray(format="rgb24").astype(np.int16)
        ff_y = frame.to_ndarray(format="gray").astype(np.int16)
    return float(np.abs(pil - ff).mean()), float(np.abs(pil_y - ff_y).mean())


class DcOnly(JpegDctTokenizer):
    """The JPEG-DCT tokenizer whose bounded grammar bounds the DC values only (no block drawn again)."""

    def grammar(self, prefix=None, bounded=False):
        g = super().grammar(prefix, bounded)
        g.resample = False
        return g


def sample(ck: checkpoint.Checkpoint, n: int, batch: int, bounded: bool, seed: int, tally: Tally,
           dc_only: bool = False) -> None:
    tok = DcOnly(ck.tokenizer.config) if dc_only else ck.tokenizer
    prompt = tok.header(*tok.size)
    bar = tqdm(total=n, desc="samples", disable=not sys.stderr.isatty())
    for start in range(0, n, batch):
        cfg = SamplingConfig(seed=seed + start, bounded=bounded)
        t0 = time.perf_counter()
        stats: dict = {}
        seqs = generate(ck.model, tok, prompt, min(batch, n - start), cfg, stats=stats)
        tally.seconds += time.perf_counter() - t0
        tally.rewinds += stats["rewinds"]
        tally.taken_back += stats["taken_back"]
        tally.flattened += sum(g.flattened for g in stats["grammars"])
        for seq in seqs:
            tally.add(tok.decode(seq))
            tally.tokens += len(seq) - len(prompt)
        bar.update(len(seqs))
    bar.close()


def main() -> None:
    ap = argparse.ArgumentParser(description="blocks outside the 8-bit range and decoder agreement")
    ap.add_argument("--ckpt", required=True, help="a training run (or its ckpt/ directory)")
    ap.add_argument("--samples", type=int, default=1000, help="bounded samples (and real photos)")
    ap.add_argument("--dc_only", type=int, default=100, help="samples with DC bounds, no block drawn again")
    ap.add_argument("--unbounded", type=int, default=100, help="samples with no bounds")
    ap.add_argument("--batch", type=int, default=50, help="streams sampled together")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    ck = checkpoint.load(a.ckpt)
    tok = ck.tokenizer
    if tok.size is None or tok.to_jpeg(np.zeros((8, 8, 3), np.uint8)) is None:
        raise SystemExit("error: needs a JPEG-DCT checkpoint whose tokenizer fixes the image size")
    real = Tally()
    for crop in tqdm(crops("val", a.samples, tok.size), total=a.samples, desc="real photos",
                     disable=not sys.stderr.isatty()):
        real.add(tok.to_jpeg(crop.pixels))
    bounded, dc_only, unbounded = Tally(), Tally(), Tally()
    sample(ck, a.samples, a.batch, True, a.seed, bounded)
    if a.dc_only:
        sample(ck, a.dc_only, a.batch, True, a.seed, dc_only, dc_only=True)
    if a.unbounded:
        sample(ck, a.unbounded, a.batch, False, a.seed, unbounded)
    h, w = tok.size
    print(f"checkpoint {ck.directory} (iter {ck.meta.get('iter_num')}), {w}x{h}, "
          f"quality {tok.config.quality}, {tok.config.subsampling}; out of range: outside [{LOW}, {HIGH}]")
    print(f"{'images':24s} {'n':>6s} {'blocks':>8s} {'out of range':>18s} {'images':>6s}  "
          f"{'lowest':>7s} {'highest':>6s}   |PIL-ffmpeg| RGB mean/p99/max, luma mean/max   "
          f"chroma gradient   s/image")
    print(real.row("real photos (val crops)"))
    print(bounded.row("samples, bounded"))
    if a.dc_only:
        print(dc_only.row("samples, DC bounds only"))
    if a.unbounded:
        print(unbounded.row("samples, unbounded"))
    b = bounded
    print(f"bounded: {b.rewinds} block draws rejected ({b.rewinds / b.blocks:.2%} of the blocks kept), "
          f"{b.flattened} blocks made flat after {MAX_TRIES} draws; {b.taken_back} tokens taken back "
          f"({b.taken_back / (b.tokens + b.taken_back):.1%} of the tokens sampled)")


if __name__ == "__main__":
    main()
