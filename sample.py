"""Sample images from a trained checkpoint; every sample is a valid JPEG (grammar-constrained).

    python sample.py --out_dir=out/quickstart --num_samples=16 --temperature=0.9 --top_k=100
    python sample.py --out_dir=out/quickstart --prefix_image=photo.jpg --prefix_rows=4

The checkpoint alone rebuilds model and tokenizer. Writes `sample-NNN.jpg` per sample and
`grid.png` into `samples_dir` (default `<out_dir>/samples`).
"""

from __future__ import annotations

import io
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dctgpt import checkpoint
from dctgpt.config import parse_config
from dctgpt.generate import SamplingConfig, generate
from tokenizer.base import BLOCK_ROW, COMPONENT, TokenSequence

log = logging.getLogger("dctgpt.sample")


@dataclass(frozen=True)
class SampleConfig:
    out_dir: str = "out"          # the training run (or its ckpt/ directory)
    samples_dir: str = ""         # default <out_dir>/samples
    num_samples: int = 16
    batch_size: int = 16          # streams sampled together
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 1337
    height: int = 0               # 0 = the tokenizer's configured size
    width: int = 0
    quality: int = 0              # 0 = the tokenizer's configured quality
    prefix_image: str = ""        # keep the first prefix_rows block rows of this image, sample the rest
    prefix_rows: int = 0
    max_new_tokens: int = 0       # 0 = until the end token
    device: str = "auto"
    num_threads: int = 1          # CPU threads; sampling is many tiny ops, where more threads mostly wait

    def __post_init__(self) -> None:
        if self.num_samples < 1 or self.batch_size < 1:
            raise ValueError(f"num_samples={self.num_samples}, batch_size={self.batch_size}: expected >= 1")
        if self.prefix_rows < 0:
            raise ValueError(f"prefix_rows={self.prefix_rows}: expected >= 0")
        if self.prefix_rows and not self.prefix_image:
            raise ValueError("prefix_rows is set but prefix_image is not")


def prompt_for(tok, cfg: SampleConfig) -> TokenSequence:
    """BOS + header at the requested size and quality, or the first rows of a given image."""
    if cfg.prefix_image:
        path = Path(cfg.prefix_image)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: prefix_image not found")
        seq = tok.encode(path)
        rows = seq.positions[:, BLOCK_ROW]
        beyond = np.flatnonzero((seq.positions[:, COMPONENT] > 0) & (rows >= cfg.prefix_rows))
        return seq[:int(beyond[0])] if len(beyond) else seq[:-1]
    size = getattr(getattr(tok, "config", None), "size", None) or (0, 0)  # (height, width) if fixed
    height, width = cfg.height or size[0], cfg.width or size[1]
    if not (height and width):
        raise ValueError("height and width: give --height and --width (the tokenizer has no default size)")
    return tok.header(height, width, quality=cfg.quality or None)


def make_grid(images: list[Image.Image], pad: int = 2) -> Image.Image:
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    w = max(im.width for im in images)
    h = max(im.height for im in images)
    grid = Image.new("RGB", (cols * (w + pad) + pad, rows * (h + pad) + pad), "white")
    for i, im in enumerate(images):
        grid.paste(im.convert("RGB"), (pad + (i % cols) * (w + pad), pad + (i // cols) * (h + pad)))
    return grid


def main(cfg: SampleConfig) -> list[Path]:
    """Sample, write JPEGs and grid.png; returns the JPEG paths."""
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    ck = checkpoint.load(cfg.out_dir, device)
    tok = ck.tokenizer
    out = Path(cfg.samples_dir) if cfg.samples_dir else Path(cfg.out_dir) / "samples"
    out.mkdir(parents=True, exist_ok=True)
    prompt = prompt_for(tok, cfg)
    paths, images = [], []
    progress = sys.stderr.isatty()
    for start in range(0, cfg.num_samples, cfg.batch_size):
        n = min(cfg.batch_size, cfg.num_samples - start)
        scfg = SamplingConfig(temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                              seed=cfg.seed + start, max_new_tokens=cfg.max_new_tokens)
        for i, seq in enumerate(generate(ck.model, tok, prompt, n, scfg, progress=progress)):
            data = tok.decode(seq)
            path = out / f"sample-{start + i:03d}.jpg"
            path.write_bytes(data)
            images.append(Image.open(io.BytesIO(data)))
            paths.append(path)
            log.info("%s: %d tokens", path, len(seq))
    make_grid(images).save(out / "grid.png")
    log.info("wrote %d samples and %s", len(paths), out / "grid.png")
    return paths


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main(parse_config(SampleConfig, sys.argv[1:]))
