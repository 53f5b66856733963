"""Compare tokenizers on one image folder: length, bits, distortion and speed, side by side.

    python -m tokenizer.corpus.embedded --export data/embedded_val --split val --crops 64 --size 64
    python -m dctgpt.compare --images data/embedded_val --out out/compare \\
        --tokenizers jpeg-grid bpe-grid data/vq4_512 data/vq8_1024 [--checkpoint out/quickstart]

Tokenizer specs: "jpeg:q=25,order=raster" (JPEG-DCT, the images' own size), "bpe:q=25,order=raster,
vocab=2048" (BPE over it, trained on embedded train crops at the images' size), a saved tokenizer
directory (VQ-VAE, JPEG-DCT, BPE, ...), or the shorthands "jpeg-grid" / "bpe-grid" (qualities
--qualities x both block orders). Per tokenizer, over all images:

- vocab; tokens per image (mean, p95; BOS/header/EOS included)
- raw bits = tokens x log2(vocab); order-0 entropy bits = tokens x H(id histogram of these images)
- model bits (only for the --checkpoint's own tokenizer): the model's NLL, dctgpt.evaluate
- JPEG scan bits: the Huffman-coded scan of the same JPEG (JPEG-DCT based rows)
- PSNR / SSIM (skimage.metrics) of the decoded image against the original fitted to its geometry;
  PSNR is the mean over images decoded with loss, `lossless` counts the exact ones (inf PSNR), and a
  row with every image exact has PSNR inf, drawn on the RD plot's marked top edge
- encode and decode images per second (one process, this machine)

`--train` runs the comparison that trains a model per tokenizer instead (dctgpt.compare_train).

Writes results.md, results.csv, rd.png (bits per pixel of the order-0 entropy vs PSNR, plus the
JPEG scan and model bits where present) and recon.png (originals and reconstructions side by side).
With --videos, also results_video.md/.csv: the video tokenizer's tokens per frame, intra, delta and
motion (per-frame whole-block motion vectors).
"""

from __future__ import annotations

import csv
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dctgpt.measure import Row, finite_mean, fit_like, label, load_rgb, measure, to_rgb
from dctgpt.plot import Series, image_grid, line_plot
from tokenizer.base import load_tokenizer
from tokenizer.cli import run
from tokenizer.media import IMAGE_EXTS

log = logging.getLogger("dctgpt.compare")


def parse_spec(spec: str, size: tuple[int, int] | None, bpe_crops: int) -> tuple[str, Any]:
    """(name, tokenizer) of one spec (see the module docstring)."""
    from tokenizer.jpeg.tokenizer import JpegDctConfig, JpegDctTokenizer

    if Path(spec).is_dir():
        return Path(spec).name, load_tokenizer(spec)
    kind, _, args = spec.partition(":")
    if kind not in ("jpeg", "bpe"):
        raise ValueError(f"tokenizer spec {spec!r}: expected jpeg:..., bpe:..., a shorthand or a directory")
    kv = dict(a.split("=", 1) for a in args.split(",") if a)
    unknown = set(kv) - {"q", "order", "vocab", "subsampling"}
    if unknown:
        raise ValueError(f"tokenizer spec {spec!r}: unknown keys {sorted(unknown)}")
    q, order = int(kv.get("q", 25)), kv.get("order", "raster")
    base = JpegDctTokenizer(JpegDctConfig(quality=q, size=None, order=order,
                                          subsampling=kv.get("subsampling", "4:2:0")))
    if kind == "jpeg":
        return label(base), base
    from tokenizer.bpe.tokenizer import BpeTokenizer
    from tokenizer.corpus.embedded import crops

    vocab = int(kv.get("vocab", 2048))
    streams = (base.encode(c.pixels).ids for c in crops("train", bpe_crops, size or (64, 64), seed=7))
    tok = BpeTokenizer.train(base, streams, vocab)
    return label(tok), tok


def expand(specs: list[str], qualities: list[int], bpe_vocab: int) -> list[str]:
    out = []
    for s in specs:
        if s in ("jpeg-grid", "bpe-grid"):
            kind = s.split("-")[0]
            extra = f",vocab={bpe_vocab}" if kind == "bpe" else ""
            out += [f"{kind}:q={q},order={o}{extra}" for q in qualities for o in ("raster", "coarse_to_fine")]
        else:
            out.append(s)
    return out


def write_table(rows: list[Row], out: Path) -> str:
    cols = [f.name for f in fields(Row) if f.name not in ("family", "images")]
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[f.name for f in fields(Row)])
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in asdict(r).items()})
    head = ["tokenizer", "vocab", "tokens mean", "tokens p95", "raw bits", "H0 bits", "model bits",
            "JPEG scan bits", "bpp raw", "bpp H0", "PSNR dB", "lossless", "SSIM", "enc img/s", "dec img/s"]
    assert len(head) == len(cols)
    fmt = {"tokens_mean": ".1f", "tokens_p95": ".0f", "raw_bits": ".0f", "entropy_bits": ".0f",
           "model_bits": ".0f", "scan_bits": ".0f", "bpp_raw": ".3f", "bpp_entropy": ".3f", "psnr": ".2f",
           "ssim": ".3f", "encode_ips": ".0f", "decode_ips": ".0f"}
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = []
        for c in cols:
            v = getattr(r, c)
            cells.append("-" if isinstance(v, float) and math.isnan(v) else format(v, fmt.get(c, "")))
        lines.append("| " + " | ".join(cells) + " |")
    n = rows[0].images if rows else 0
    md = (f"{n} images; bits are per image; H0 = order-0 entropy of the ids over these images; "
          "bpp = bits per pixel of the decoded image; PSNR = mean over the images not decoded exactly, "
          "lossless = images decoded exactly (inf PSNR).\n\n" + "\n".join(lines) + "\n")
    (out / "results.md").write_text(md)
    return md


def rd_plot(rows: list[Row]) -> Image.Image:
    fams: dict[str, list[Row]] = {}
    for r in rows:
        fams.setdefault(r.family, []).append(r)
    series = [Series(f"{fam} (H0)", [r.bpp_entropy for r in rs], [r.psnr for r in rs], len(rs) > 1)
              for fam, rs in fams.items() if fam != "checkpoint"]
    jpeg = {round(r.psnr, 6): r for r in rows if not math.isnan(r.scan_bits)}
    if jpeg:
        pix = {r.tokenizer: r.raw_bits / r.bpp_raw for r in rows}
        series.append(Series("JPEG Huffman scan", [r.scan_bits / pix[r.tokenizer] for r in jpeg.values()],
                             [r.psnr for r in jpeg.values()]))
    model = [r for r in rows if not math.isnan(r.model_bits)]
    if model:
        series.append(Series("model bits (ckpt)", [r.model_bits * r.bpp_raw / r.raw_bits for r in model],
                             [r.psnr for r in model], line=False))
    return line_plot(series, "rate-distortion", "bits per pixel", "PSNR (dB)")


@dataclass
class VideoRow:
    video: str
    mode: str
    quality: int
    frames: int
    vocab: int
    tokens_per_frame: float       # mean over all frames
    first_frame: int              # tokens of frame 0 (with the clip header)
    later_mean: float             # mean tokens of frames 1..
    raw_bits_per_frame: float
    entropy_bits_per_frame: float
    psnr: float                   # decoded frames vs the source frames fitted to the size
    encode_fps: float
    decode_fps: float


def video_rows(videos: list[str], qualities: tuple[int, ...], size: tuple[int, int],
               max_frames: int) -> list[VideoRow]:
    """Tokens per frame of the video tokenizer in every mode, per clip and quality."""
    from skimage.metrics import peak_signal_noise_ratio

    from tokenizer.video.io import read_video
    from tokenizer.video.tokenizer import MODES, VideoConfig, VideoTokenizer

    rows = []
    for v in videos:
        src = [to_rgb(f) for f in read_video(v, max_frames, 1, v)]
        for q in qualities:
            for mode in MODES:
                tok = VideoTokenizer(VideoConfig(mode=mode, quality=q, size=size, max_frames=max_frames))
                t0 = time.perf_counter()
                seq = tok.encode(v)
                t1 = time.perf_counter()
                frames = [to_rgb(j) for j in tok.decode(seq)]
                t2 = time.perf_counter()
                per = np.bincount(seq.positions[:, 0])
                p = np.bincount(seq.ids, minlength=tok.vocab_size) / len(seq)
                h = float(-(p[p > 0] * np.log2(p[p > 0])).sum())
                psnr, _ = finite_mean([peak_signal_noise_ratio(fit_like(s, f.shape), f, data_range=255)
                                       for s, f in zip(src, frames)])
                n = len(frames)
                rows.append(VideoRow(Path(v).name, mode, q, n, tok.vocab_size, len(seq) / n, int(per[0]),
                                     float(per[1:].mean()) if n > 1 else float("nan"),
                                     len(seq) * math.log2(tok.vocab_size) / n, len(seq) * h / n,
                                     float(psnr), n / (t1 - t0), n / (t2 - t1)))
    return rows


def write_video_table(rows: list[VideoRow], out: Path) -> str:
    names = [f.name for f in fields(VideoRow)]
    with open(out / "results_video.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=names)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in asdict(r).items()})
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    for r in rows:
        lines.append("| " + " | ".join(f"{v:.1f}" if isinstance(v, float) else str(v)
                                       for v in asdict(r).values()) + " |")
    md = "Video tokenizer, tokens and bits per frame (header and markers included).\n\n" + "\n".join(lines)
    (out / "results_video.md").write_text(md + "\n")
    return md


def main(images: str, out: str, tokenizers: list[str], checkpoint: str | None = None,
         qualities: tuple[int, ...] = (10, 25, 50), bpe_vocab: int = 2048, bpe_crops: int = 300,
         grid_images: int = 4, videos: tuple[str, ...] = (), video_size: tuple[int, int] = (64, 64),
         max_frames: int = 16, threads: int = 1) -> list[Row]:
    """Run the comparison (see the module docstring); returns the rows."""
    import torch

    torch.set_num_threads(threads)                    # speeds are per process and thread
    folder, out_dir = Path(images), Path(out)
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
    if not paths:
        raise FileNotFoundError(f"{folder}: no image files ({', '.join(sorted(IMAGE_EXTS))})")
    out_dir.mkdir(parents=True, exist_ok=True)
    originals = [load_rgb(p) for p in paths]
    size = originals[0].shape[:2]
    toks = [parse_spec(s, size, bpe_crops) for s in expand(tokenizers, list(qualities), bpe_vocab)]
    ck = None
    if checkpoint:
        from dctgpt import checkpoint as ckpt
        ck = ckpt.load(checkpoint)
        toks.append((f"ckpt {label(ck.tokenizer)}", ck.tokenizer))
    rows, recons = [], {}
    for name, tok in toks:
        log.info("measuring %s", name)
        row, rec = measure(name, tok, paths, originals, ck.model if ck and tok is ck.tokenizer else None)
        rows.append(row)
        recons[name] = rec
    md = write_table(rows, out_dir)
    rd_plot(rows).save(out_dir / "rd.png")
    cols, labels = [], []
    for name, rec in recons.items():                  # one column per distinct reconstruction
        if not any(all(np.array_equal(a, b) for a, b in zip(rec, c)) for c in cols):
            cols.append(rec)
            labels.append(name.replace(" raster", "").replace(" c2f", ""))
    k = min(grid_images, len(paths))
    rows_px = [[fit_like(originals[i], cols[0][i].shape)] + [c[i] for c in cols] for i in range(k)]
    image_grid(rows_px, ["original"] + labels).save(out_dir / "recon.png")
    log.info("\n%s", md)
    if videos:
        vrows = video_rows(list(videos), qualities, video_size, max_frames)
        log.info("\n%s", write_video_table(vrows, out_dir))
    return rows


@dataclass(frozen=True)
class CompareConfig:
    images: str                   # folder of images
    out: str                      # output folder (results.md/.csv, rd.png, recon.png)
    tokenizers: tuple[str, ...] = ("jpeg-grid", "bpe-grid")  # specs: jpeg:..., bpe:..., DIR (see above)
    checkpoint: str = ""          # a training run or checkpoint: model bits for its tokenizer
    qualities: tuple[int, ...] = (10, 25, 50)  # JPEG qualities of the jpeg-grid / bpe-grid shorthands
    bpe_vocab: int = 2048         # BPE vocabulary of the bpe specs
    bpe_crops: int = 300          # embedded train crops BPE learns from
    videos: tuple[str, ...] = ()  # clips for the video tokenizer (both modes)
    video_size: tuple[int, int] = (64, 64)  # (height, width) of the video frames
    max_frames: int = 16          # frames per clip
    threads: int = 1              # torch CPU threads (speeds are per thread)


def _main(c: CompareConfig) -> list[Row]:
    return main(c.images, c.out, list(c.tokenizers), c.checkpoint or None, c.qualities, c.bpe_vocab,
                c.bpe_crops, videos=c.videos, video_size=c.video_size, max_frames=c.max_frames,
                threads=c.threads)


def cli(argv: list[str] | None = None) -> list:
    """The comparison on a folder; with --train, the comparison that trains (dctgpt.compare_train)."""
    argv = sys.argv[1:] if argv is None else argv
    if "--train" in argv:
        from dctgpt import compare_train
        return compare_train.cli([a for a in argv if a != "--train"])
    return run(_main, CompareConfig, argv)


if __name__ == "__main__":
    cli()
