"""How many bits the model needs per image, next to JPEG's own Huffman-coded scan.

    python -m dctgpt.evaluate --ckpt out/quickstart --images DIR [--json FILE] [--stride N]
    python -m dctgpt.evaluate --ckpt out/quickstart --images DIR --as_is     # JPEG files as they are

Each image is prepared at the tokenizer's geometry and quality (`tok.to_jpeg`), or, with `--as_is`,
each JPEG is read as it is (its own coefficients and tables at its own size; anything else is an
error), tokenized, and scored: bits = sum over tokens after BOS of -log2 p(token | previous
tokens). Streams longer than the context are scored with sliding windows (each window advances by
`stride` tokens and scores only tokens not scored before, so every token keeps at least
block_size - stride tokens of context).
The baseline is the entropy-coded scan of the prepared JPEG (`scan_bytes`); saving = 1 - bits /
(8 * scan bytes).
"""

from __future__ import annotations

import io
import json
import logging
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F
from tqdm import tqdm

from dctgpt import checkpoint
from dctgpt.model import GPT
from tokenizer.base import Tokenizer, TokenSequence
from tokenizer.cli import run
from tokenizer.media import IMAGE_EXTS

log = logging.getLogger("dctgpt.evaluate")


@dataclass(frozen=True)
class ImageResult:
    name: str
    height: int
    width: int
    tokens: int
    bits: float            # model NLL of the tokens after BOS
    bits_per_pixel: float
    scan_bytes: int        # JPEG's Huffman-coded scan of the same prepared image
    saving: float          # 1 - bits / (8 * scan_bytes)


@torch.no_grad()
def sequence_nll(model: GPT, seq: TokenSequence, stride: int = 0,
                 context: np.ndarray | None = None) -> np.ndarray:
    """Per-token NLL in nats (len(seq) - 1,): entry t-1 scores token t given the tokens before it.
    `context`: the tokenizer's (T, n_context) features of `seq`, for a model with n_context > 0."""
    W = model.config.block_size
    stride = stride or max(1, W // 2)
    if not 0 < stride <= W:
        raise ValueError(f"sequence_nll: stride={stride} must be in 1..block_size={W}")
    device = next(model.parameters()).device
    ids = torch.from_numpy(seq.ids.astype(np.int64)).to(device)
    pos = torch.from_numpy(seq.positions.astype(np.int64)).to(device)
    ctx = None if context is None else torch.from_numpy(context.astype(np.int64)).to(device)
    L = len(ids)
    nll = np.zeros(max(L - 1, 0), np.float64)
    scored, start = 0, 0  # targets 1..scored are done
    while scored < L - 1:
        end = min(start + W, L)
        logits, _ = model(ids[None, start:end], pos[None, start:end],
                          context=None if ctx is None else ctx[None, start:end])
        losses = F.cross_entropy(logits[0, :-1].float(), ids[start + 1:end], reduction="none")
        first = scored + 1  # first target not scored yet; it sits at logits index first - 1 - start
        nll[first - 1:end - 1] = losses[first - 1 - start:].double().cpu().numpy()
        scored = end - 1
        start += stride
    return nll


def stream_bits(model: GPT, tok, seq: TokenSequence, stride: int = 0) -> float:
    """The model's code length of `seq` in bits (tokens after BOS), with the tokenizer's context
    features when the model takes them."""
    context = tok.context(seq) if model.config.n_context else None
    return float(sequence_nll(model, seq, stride, context).sum() / math.log(2))


def evaluate_image(model: GPT, tok, path: Path, stride: int = 0) -> ImageResult:
    from tokenizer import scan_bytes  # the baseline is JPEG-specific; the model is not

    seq = tok.encode(path)
    bits = stream_bits(model, tok, seq, stride)
    prepared = tok.to_jpeg(path)      # the JPEG whose coefficients encode(path) tokenizes
    if prepared is not None:
        scan = scan_bytes(prepared)
    else:                             # learned tokens (VQ-VAE): no JPEG scan to compare with
        prepared, scan = tok.decode(seq), 0
    width, height = Image.open(io.BytesIO(prepared)).size
    return ImageResult(name=path.name, height=height, width=width, tokens=len(seq), bits=bits,
                       bits_per_pixel=bits / (height * width), scan_bytes=scan,
                       saving=1 - bits / (8 * scan) if scan else float("nan"))


def list_images(directory: str | Path) -> list[Path]:
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: not a directory of images")
    paths = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not paths:
        raise FileNotFoundError(f"{d}: no images ({', '.join(sorted(IMAGE_EXTS))})")
    return paths


def summarize(results: list[ImageResult]) -> dict:
    bits = sum(r.bits for r in results)
    scan = sum(r.scan_bytes for r in results)
    return {"images": len(results), "mean_bits_per_image": bits / len(results),
            "mean_bits_per_pixel": float(np.mean([r.bits_per_pixel for r in results])),
            "mean_scan_bytes": scan / len(results),
            "mean_saving": float(np.mean([r.saving for r in results])),
            "total_saving": 1 - bits / (8 * scan) if scan else float("nan")}


def format_table(results: list[ImageResult], summary: dict) -> str:
    lines = [f"{'image':<28} {'size':>9} {'tokens':>7} {'bits':>10} {'bpp':>6} {'scan B':>8} {'saving':>7}"]
    for r in results:
        lines.append(f"{r.name[:28]:<28} {r.width:>4}x{r.height:<4} {r.tokens:>7} {r.bits:>10.0f} "
                     f"{r.bits_per_pixel:>6.3f} {r.scan_bytes:>8} {r.saving:>7.1%}")
    s = summary
    lines.append(f"{'mean':<28} {'':>9} {'':>7} {s['mean_bits_per_image']:>10.0f} "
                 f"{s['mean_bits_per_pixel']:>6.3f} {s['mean_scan_bytes']:>8.0f} {s['mean_saving']:>7.1%}")
    return "\n".join(lines)


def as_is(tok: Tokenizer) -> Tokenizer:
    """`tok` with its size and quality lifted: it reads any JPEG's own coefficients and tables."""
    from dataclasses import replace

    from tokenizer.jpeg.tokenizer import JpegDctTokenizer

    if not isinstance(tok, JpegDctTokenizer):
        raise ValueError(f"the checkpoint's {tok.name!r} tokenizer cannot read JPEG files as they are "
                         "(--as_is and the codec need a 'jpeg_dct' tokenizer)")
    return JpegDctTokenizer(replace(tok.config, quality=None, size=None))


def main(ckpt: str, images: str, json_path: str = "", stride: int = 0, device: str = "cpu",
         progress: bool = True, as_is_files: bool = False) -> dict:
    """Evaluate every image in `images`; returns {"checkpoint", "images", "summary"} (also as JSON).
    `as_is_files`: score each JPEG file as it is (its own size and tables) instead of preparing it."""
    ck = checkpoint.load(ckpt, device)
    tok = as_is(ck.tokenizer) if as_is_files else ck.tokenizer
    paths = list_images(images)
    results = [evaluate_image(ck.model, tok, p, stride)
               for p in tqdm(paths, desc="evaluate", disable=not (progress and sys.stderr.isatty()))]
    summary = summarize(results)
    print(format_table(results, summary))
    report = {"checkpoint": str(ck.directory), "iter_num": ck.meta.get("iter_num"),
              "images": [asdict(r) for r in results], "summary": summary}
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2) + "\n")
    return report


@dataclass(frozen=True)
class EvaluateConfig:
    ckpt: str                     # checkpoint directory (or the out_dir holding ckpt/)
    images: str                   # folder of images, held out from training
    json: str = ""                # write per-image and mean figures to this file
    stride: int = 0               # sliding-window stride in tokens; 0 = block_size / 2
    device: str = "cpu"           # "cpu", "cuda" or "cuda:N"
    as_is: bool = False           # score each JPEG file as it is (own size, own tables); others: error


def cli(argv: list[str] | None = None) -> dict:
    return run(lambda c: main(c.ckpt, c.images, c.json, c.stride, c.device, as_is_files=c.as_is),
               EvaluateConfig, argv)


if __name__ == "__main__":
    cli()
