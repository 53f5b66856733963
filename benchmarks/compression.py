"""Lossless coders of the same JPEG coefficients, side by side, on held-out photos.

    python benchmarks/compression.py --ckpt out/quickstart [--images DIR] [--json FILE] [--png FILE]

For every image, the JPEG that the tokenizer tokenizes (`tok.prepare`: the configured size and
quality) is coded losslessly by:

- JPEG Huffman, libjpeg's standard tables (`jpegtran -copy none`) and optimized tables (`-optimize`)
- JPEG arithmetic coding (`jpegtran -arithmetic`, Debian's libjpeg-turbo-progs)
- Lepton (`lepton-jpeg-python`) and JPEG XL lossless JPEG transcoding (`imagecodecs`)
- the model: its NLL of the image's tokens in bits (dctgpt.evaluate), if --ckpt is given.

Every figure is the coefficient payload in bytes. For the JPEG codings it is the entropy-coded scan
(markers parsed). Lepton and JPEG XL do not separate their header, so their payload is the output
size minus the JPEG's own non-scan bytes (headers and tables): an approximation that credits them
with a header as small as JPEG's. The model's bits include its header tokens. Savings are against
the optimized Huffman scan. A coder that is not installed is left out with a note.
Default images: 64 val crops of the embedded corpus (photos never seen in training).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tokenizer import JpegDctConfig, JpegDctTokenizer  # noqa: E402
from tokenizer.corpus.embedded import export  # noqa: E402
from tokenizer.jpeg.io import parse_jpeg  # noqa: E402


def _jpegtran(data: bytes, *flags: str) -> bytes:
    with tempfile.NamedTemporaryFile(suffix=".jpg") as f:
        f.write(data)
        f.flush()
        return subprocess.run(["jpegtran", "-copy", "none", *flags, f.name], check=True,
                              capture_output=True).stdout


def coders() -> tuple[dict, list[str]]:
    """name -> fn(jpeg bytes) -> payload bytes; and notes on coders left out."""
    out, notes = {}, []
    if shutil.which("jpegtran"):
        out["huffman_std"] = lambda d: parse_jpeg(_jpegtran(d)).scan_bytes
        out["huffman_opt"] = lambda d: parse_jpeg(_jpegtran(d, "-optimize")).scan_bytes
        out["arithmetic"] = lambda d: parse_jpeg(_jpegtran(d, "-arithmetic")).scan_bytes
    else:
        out["huffman_opt"] = lambda d: parse_jpeg(d).scan_bytes   # prepare() writes optimized tables
        notes.append("jpegtran not found (apt-get install libjpeg-turbo-progs): no std/arithmetic rows")
    try:
        import lepton_jpeg_python as lepton
        out["lepton"] = lambda d: len(lepton.compress_bytes(d)) - (len(d) - parse_jpeg(d).scan_bytes)
    except ImportError:
        notes.append("lepton-jpeg-python not installed: no Lepton row")
    try:
        import imagecodecs
        if imagecodecs.JPEGXL.available:
            out["jpegxl"] = lambda d: (len(imagecodecs.jpegxl_encode_jpeg(d))
                                       - (len(d) - parse_jpeg(d).scan_bytes))
    except ImportError:
        notes.append("imagecodecs not installed: no JPEG XL row")
    return out, notes


def run(images: list[Path], tok, model=None) -> dict:
    from tqdm import tqdm

    fns, notes = coders()
    rows: dict[str, list[float]] = {k: [] for k in fns}
    if model is not None:
        from dctgpt.evaluate import sequence_nll
        rows["model"] = []
    pixels = []
    for p in tqdm(images, desc="compress", disable=not sys.stderr.isatty()):
        data = tok.to_jpeg(p)
        info = parse_jpeg(data)
        pixels.append(info.height * info.width)
        for name, fn in fns.items():
            rows[name].append(float(fn(data)))
        if model is not None:
            bits = float(sequence_nll(model, tok.encode(p)).sum() / math.log(2))
            rows["model"].append(bits / 8)
    base = np.array(rows["huffman_opt"])
    table = {}
    for name, vals in rows.items():
        v = np.array(vals)
        table[name] = {"mean_bytes": float(v.mean()), "bits_per_pixel": float((8 * v / pixels).mean()),
                       "saving_vs_huffman_opt": float(1 - v.sum() / base.sum())}
    return {"images": len(images), "pixels_per_image": float(np.mean(pixels)), "table": table,
            "notes": notes}


def format_table(report: dict) -> str:
    lines = [f"{report['images']} images, {report['pixels_per_image']:.0f} pixels each (mean); "
             "coefficient payload per image", f"{'coder':<12} {'bytes':>8} {'bpp':>7} {'saving':>8}"]
    for name, r in report["table"].items():
        lines.append(f"{name:<12} {r['mean_bytes']:>8.1f} {r['bits_per_pixel']:>7.3f} "
                     f"{r['saving_vs_huffman_opt']:>8.1%}")
    lines += [f"note: {n}" for n in report["notes"]]
    return "\n".join(lines)


def plot(report: dict, path: str) -> None:
    """A bar chart of payload bytes per coder, drawn with PIL (no plotting dependency)."""
    from PIL import Image, ImageDraw

    items = list(report["table"].items())
    w, h, left = 640, 40 + 36 * len(items), 120
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    top = max(r["mean_bytes"] for _, r in items)
    d.text((10, 10), "payload bytes per image (lower is better)", fill="black")
    for i, (name, r) in enumerate(items):
        y = 36 + 36 * i
        length = int((w - left - 90) * r["mean_bytes"] / top)
        color = (220, 90, 40) if name == "model" else (70, 110, 200)
        d.rectangle([left, y, left + length, y + 24], fill=color)
        d.text((10, y + 6), name, fill="black")
        d.text((left + length + 6, y + 6), f"{r['mean_bytes']:.0f} B ({r['saving_vs_huffman_opt']:+.1%})",
               fill="black")
    img.save(path)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", help="a training out_dir or checkpoint dir (adds the model row)")
    ap.add_argument("--images", help="folder of held-out images (default: embedded val crops)")
    ap.add_argument("--crops", type=int, default=64)
    ap.add_argument("--json")
    ap.add_argument("--png")
    a = ap.parse_args(argv)
    model = None
    if a.ckpt:
        from dctgpt import checkpoint
        ck = checkpoint.load(a.ckpt, "cpu")
        model, tok = ck.model, ck.tokenizer
    else:
        tok = JpegDctTokenizer(JpegDctConfig())
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(a.images) if a.images else Path(tmp)
        if not a.images:
            size = tok.config.size or (64, 64)
            export(folder, "val", a.crops, size, seed=1)
        images = sorted(p for p in folder.iterdir() if p.is_file())
        report = run(images, tok, model)
    report["tokenizer"] = {"name": tok.name, "config": {k: v for k, v in vars(tok.config).items()}}
    print(format_table(report))
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2, default=list) + "\n")
    if a.png:
        plot(report, a.png)
    return report


if __name__ == "__main__":
    main()
