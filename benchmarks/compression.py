"""Lossless coders of the same JPEG coefficients, side by side, on held-out photos.

    python benchmarks/compression.py --ckpt out/quickstart [--images DIR] [--json FILE] [--png FILE]
    python benchmarks/compression.py --ckpt out/quickstart --images DIR --as_is --codec

For every image, the JPEG that the tokenizer tokenizes (`tok.to_jpeg`: the configured size and
quality; with `--as_is`, each JPEG file as it is) is coded losslessly by:

- JPEG Huffman, libjpeg's standard tables (`jpegtran -copy none`) and optimized tables (`-optimize`)
- JPEG arithmetic coding (`jpegtran -arithmetic`, Debian's libjpeg-turbo-progs)
- Lepton (`lepton-jpeg-python`) and JPEG XL lossless JPEG transcoding (`imagecodecs`)
- the model: its NLL of the image's tokens in bits (dctgpt.evaluate), if --ckpt is given
- with --codec, the model as a real coder (dctgpt.codec): each file compressed and decompressed,
  checked byte for byte, timed.

The first table is the coefficient payload in bytes. For the JPEG codings it is the entropy-coded
scan (markers parsed). Lepton and JPEG XL do not separate their header, so their payload is the
output size minus the JPEG's own non-scan bytes (headers and tables): an approximation that credits
them with a header as small as JPEG's. The model's bits include its header tokens; the codec's
payload is its range-coded bytes (its header tokens come from the file's head, not the coder).
The second table is whole files: everything each coder writes for the file, container included.
Savings are against the optimized Huffman scan (total, and mean per image). A coder that is not
installed is left out with a note. Default images: 64 val crops of the embedded corpus (photos
never seen in training).
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


def _sizes(out: bytes, jpeg: bytes) -> tuple[float, float]:
    """(payload, whole file) of a coder's output for `jpeg`: a JPEG's scan, or for other formats the
    output less the input's non-scan bytes."""
    if out[:2] == b"\xff\xd8":
        return float(parse_jpeg(out).scan_bytes), float(len(out))
    return float(len(out) - (len(jpeg) - parse_jpeg(jpeg).scan_bytes)), float(len(out))


def coders() -> tuple[dict, list[str]]:
    """name -> fn(jpeg bytes) -> (payload bytes, whole file bytes); and notes on coders left out."""
    out, notes = {}, []
    if shutil.which("jpegtran"):
        out["huffman_std"] = lambda d: _sizes(_jpegtran(d), d)
        out["huffman_opt"] = lambda d: _sizes(_jpegtran(d, "-optimize"), d)
        out["arithmetic"] = lambda d: _sizes(_jpegtran(d, "-arithmetic"), d)
    else:
        out["huffman_opt"] = lambda d: _sizes(d, d)   # prepared JPEGs have optimized tables
        notes.append("jpegtran not found (apt-get install libjpeg-turbo-progs): no std/arithmetic rows")
    try:
        import lepton_jpeg_python as lepton
        out["lepton"] = lambda d: _sizes(lepton.compress_bytes(d), d)
    except ImportError:
        notes.append("lepton-jpeg-python not installed: no Lepton row")
    try:
        import imagecodecs
        if imagecodecs.JPEGXL.available:
            out["jpegxl"] = lambda d: _sizes(imagecodecs.jpegxl_encode_jpeg(d), d)
    except ImportError:
        notes.append("imagecodecs not installed: no JPEG XL row")
    return out, notes


def _codec_row(data: bytes, pred, tok, name: str, timing: dict) -> tuple[float, float]:
    """Compress and decompress one file with dctgpt.codec; check the bytes; (payload, whole file)."""
    import time

    from dctgpt import codec

    t0 = time.perf_counter()
    packed = codec.compress(data, pred, tok, name)
    t1 = time.perf_counter()
    if codec.decompress(packed.data, pred, tok) != data:
        raise AssertionError(f"{name}: the codec did not give the file back")
    t2 = time.perf_counter()
    timing["compress_s"] += t1 - t0
    timing["decompress_s"] += t2 - t1
    timing["stored"] += not packed.coded
    return float(packed.payload if packed.coded else len(data)), float(len(packed.data))


def run(images: list[Path], tok, model=None, as_is: bool = False, codec: bool = False) -> dict:
    """Every coder on every image: per coder mean payload and file bytes, bits per pixel, savings."""
    from tqdm import tqdm

    fns, notes = coders()
    if as_is:
        from dctgpt.evaluate import as_is as lift
        tok = lift(tok)
    if model is not None:
        from dctgpt.evaluate import stream_bits
        fns["model"] = lambda d: (stream_bits(model, tok, tok.encode(d)) / 8, math.nan)
    timing = {"compress_s": 0.0, "decompress_s": 0.0, "stored": 0}
    if codec:
        from dctgpt.codec import GPTPredictor
        pred = GPTPredictor(model, tok)
        fns["codec"] = lambda d, n: _codec_row(d, pred, tok, n, timing)
    rows: dict[str, list[tuple[float, float]]] = {k: [] for k in ("file", *fns)}
    pixels = []
    for p in tqdm(images, desc="compress", disable=not sys.stderr.isatty()):
        data = tok.to_jpeg(p)
        info = parse_jpeg(data)
        pixels.append(info.height * info.width)
        rows["file"].append((float(info.scan_bytes), float(len(data))))
        for name, fn in fns.items():
            rows[name].append(fn(data, str(p)) if name == "codec" else fn(data))
    base = np.array([r[0] for r in rows["huffman_opt"]])
    table = {}
    for name, vals in rows.items():
        v, f = np.array(vals).T
        table[name] = {"mean_bytes": float(v.mean()), "mean_file_bytes": float(f.mean()),
                       "bits_per_pixel": float((8 * v / pixels).mean()),
                       "saving_vs_huffman_opt": float(1 - v.sum() / base.sum()),
                       "mean_saving_vs_huffman_opt": float(np.mean(1 - v / base))}
    report = {"images": len(images), "pixels_per_image": float(np.mean(pixels)), "as_is": as_is,
              "table": table, "notes": notes,
              "per_image": {"names": [p.name for p in images],
                            **{name: [r[0] for r in vals] for name, vals in rows.items()}}}
    if codec:
        jpeg_kb = sum(r[1] for r in rows["file"]) / 1000
        report["codec_speed"] = {"compress_kb_per_s": jpeg_kb / timing["compress_s"],
                                 "decompress_kb_per_s": jpeg_kb / timing["decompress_s"],
                                 "stored_as_is": timing["stored"]}
    return report


def format_table(report: dict) -> str:
    lines = [f"{report['images']} images, {report['pixels_per_image']:.0f} pixels each (mean)"
             f"{', JPEG files as they are' if report.get('as_is') else ''}; per image:",
             f"{'coder':<12} {'payload B':>10} {'bpp':>7} {'saving':>8} {'mean sav.':>9} {'file B':>9}"]
    for name, r in report["table"].items():
        lines.append(f"{name:<12} {r['mean_bytes']:>10.1f} {r['bits_per_pixel']:>7.3f} "
                     f"{r['saving_vs_huffman_opt']:>8.1%} {r['mean_saving_vs_huffman_opt']:>9.1%} "
                     f"{r['mean_file_bytes']:>9.1f}")
    if "codec_speed" in report:
        c = report["codec_speed"]
        lines.append(f"codec: compress {c['compress_kb_per_s']:.2f} KB/s, decompress "
                     f"{c['decompress_kb_per_s']:.2f} KB/s (JPEG bytes), {c['stored_as_is']} stored as is")
    per = report.get("per_image", {})
    for name in ("model", "codec"):
        if name in per:
            ours = np.array(per[name])
            wins = [f"{other} on {int((ours < np.array(per[other])).sum())}/{len(ours)}"
                    for other in ("huffman_opt", "arithmetic", "lepton", "jpegxl") if other in per]
            lines.append(f"{name} smaller than " + ", ".join(wins) + " images")
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
    ap.add_argument("--as_is", action="store_true", help="JPEG files as they are (own size, own tables)")
    ap.add_argument("--codec", action="store_true", help="also compress and decompress with dctgpt.codec")
    ap.add_argument("--json")
    ap.add_argument("--png")
    a = ap.parse_args(argv)
    if a.codec and not a.ckpt:
        ap.error("--codec needs --ckpt")
    if a.as_is and not a.images:
        ap.error("--as_is needs --images (a folder of JPEG files)")
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
        try:
            report = run(images, tok, model, a.as_is, a.codec)
        except ValueError as e:      # e.g. a file that is not a JPEG with --as_is
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
    report["tokenizer"] = {"name": tok.name, "config": {k: v for k, v in vars(tok.config).items()}}
    print(format_table(report))
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2, default=list) + "\n")
    if a.png:
        plot(report, a.png)
    return report


if __name__ == "__main__":
    main()
