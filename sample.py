"""Sample images from a trained checkpoint; every sample is a valid JPEG (grammar-constrained).

    python sample.py --out_dir=out/quickstart --num_samples=16 --temperature=0.9 --top_k=100
    python sample.py --out_dir=out/quickstart --prefix_image=photo.jpg --prefix_rows=4

The checkpoint alone rebuilds model and tokenizer. Each run writes into a new folder,
`<out_dir>/samples/001`, `002`, ... (or `samples_dir`, which must hold no earlier samples unless
`--overwrite`): `sample-NNN.jpg` per sample, `grid.png`, and `sample.json` (the settings, the
checkpoint and its weights' SHA-256, and each sample's file, seed and length). The grid of a prefix
completion starts with the source photo and its kept region (the rest dimmed) beside the samples.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
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
from dctgpt.generate import SamplingConfig, generate
from tokenizer.base import BLOCK_COL, BLOCK_ROW, COMPONENT, TokenSequence, write_json_atomic
from tokenizer.cli import run

log = logging.getLogger("dctgpt.sample")


@dataclass(frozen=True)
class SampleConfig:
    out_dir: str = "out"          # the training run (or its ckpt/ directory)
    samples_dir: str = ""         # where samples go; "" = a new <out_dir>/samples/NNN each run
    overwrite: bool = False       # samples_dir may hold an earlier run's samples: delete and replace them
    num_samples: int = 16         # images (or clips) to sample
    batch_size: int = 16          # streams sampled together
    temperature: float = 1.0      # divides the logits; below 1 is more conservative
    top_k: int = 0                # sample among the k likeliest allowed ids; 0 = all
    top_p: float = 1.0            # sample among the likeliest ids holding this probability; 1 = all
    seed: int = 1337              # random seed; the batch starting at sample i uses seed + i
    height: int = 0               # pixels; 0 = the tokenizer's configured size
    width: int = 0                # pixels; 0 = the tokenizer's configured size
    quality: int = 0              # JPEG quality in the header; 0 = the tokenizer's configured quality
    prefix_image: str = ""        # keep the first prefix_rows block rows of this image, sample the rest
    prefix_rows: int = 0          # block rows of prefix_image to keep
    prefix_clip: str = ""         # video tokenizers: keep the first prefix_frames frames, sample the next
    prefix_frames: int = 0        # frames of prefix_clip to keep
    max_new_tokens: int = 0       # 0 = until the end token
    bounded: bool = True          # keep samples where 8-bit pixels can be (DC bounds, blocks redrawn)
    device: str = "auto"          # "auto", "cpu", "cuda" or "cuda:N"
    num_threads: int = 1          # CPU threads; sampling is many tiny ops, where more threads mostly wait

    def __post_init__(self) -> None:
        if self.num_samples < 1 or self.batch_size < 1:
            raise ValueError(f"num_samples={self.num_samples}, batch_size={self.batch_size}: expected >= 1")
        if self.prefix_rows < 0:
            raise ValueError(f"prefix_rows={self.prefix_rows}: expected >= 0")
        if self.prefix_rows and not self.prefix_image:
            raise ValueError("prefix_rows is set but prefix_image is not")
        if self.prefix_frames < 0 or (self.prefix_frames and not self.prefix_clip):
            raise ValueError(f"prefix_frames={self.prefix_frames}: expected >= 0, with prefix_clip set")
        if self.prefix_clip and self.prefix_image:
            raise ValueError("prefix_clip and prefix_image: give one of them")


def prompt_for(tok, cfg: SampleConfig) -> TokenSequence:
    """BOS + header at the requested size and quality, the first rows of an image or frames of a clip."""
    if cfg.prefix_clip:
        path = Path(cfg.prefix_clip)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: prefix_clip not found")
        return tok.prompt(path, cfg.prefix_frames)
    if cfg.prefix_image:
        path = Path(cfg.prefix_image)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: prefix_image not found")
        seq = tok.encode(path)
        rows = seq.positions[:, BLOCK_ROW]
        beyond = np.flatnonzero((seq.positions[:, COMPONENT] > 0) & (rows >= cfg.prefix_rows))
        return seq[:int(beyond[0])] if len(beyond) else seq[:-1]
    size = tok.size or (0, 0)  # (height, width) if the tokenizer fixes it
    height, width = cfg.height or size[0], cfg.width or size[1]
    if not (height and width):
        raise ValueError("height and width: give --height and --width (the tokenizer has no default size)")
    return tok.header(height, width, quality=cfg.quality or None)


def make_grid(images: list[Image.Image], pad: int = 2, cols: int = 0) -> Image.Image:
    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    w = max(im.width for im in images)
    h = max(im.height for im in images)
    grid = Image.new("RGB", (cols * (w + pad) + pad, rows * (h + pad) + pad), "white")
    for i, im in enumerate(images):
        grid.paste(im.convert("RGB"), (pad + (i % cols) * (w + pad), pad + (i // cols) * (h + pad)))
    return grid


def kept_region(source: Image.Image, prompt: TokenSequence, full: TokenSequence) -> Image.Image:
    """`source` with every cell the prompt holds no token of dimmed (cells: the luma blocks, or
    the codes, whose grid `full`, the source's whole stream, spans)."""
    body = full.positions[full.positions[:, COMPONENT] == 1]
    rows, cols = body[:, BLOCK_ROW].max() + 1, body[:, BLOCK_COL].max() + 1
    cell_h, cell_w = -(-source.height // rows), -(-source.width // cols)
    kept = np.zeros((rows, cols), bool)
    mine = prompt.positions[prompt.positions[:, COMPONENT] == 1]
    kept[mine[:, BLOCK_ROW], mine[:, BLOCK_COL]] = True
    mask = kept.repeat(cell_h, 0).repeat(cell_w, 1)[:source.height, :source.width, None]
    px = np.asarray(source.convert("RGB"), np.float32)
    return Image.fromarray(np.where(mask, px, 0.25 * px + 0.75 * 160).astype(np.uint8))


def prefix_grid(source: Image.Image, kept: Image.Image, completions: list[Image.Image],
                pad: int = 2) -> Image.Image:
    """The source photo above its kept region, then a gap, then the completions' grid."""
    left, right = make_grid([source, kept], pad, cols=1), make_grid(completions, pad)
    grid = Image.new("RGB", (left.width + 4 * pad + right.width, max(left.height, right.height)), "white")
    grid.paste(left, (0, 0))
    grid.paste(right, (left.width + 4 * pad, 0))
    return grid


def output_dir(cfg: SampleConfig) -> Path:
    """Where this run writes: `samples_dir` (made; earlier samples in it only with `overwrite`,
    which deletes them), else the next free `<out_dir>/samples/NNN`."""
    if cfg.samples_dir:
        out = Path(cfg.samples_dir)
        earlier = sorted(p for p in out.iterdir() if _is_output(p.name)) if out.is_dir() else []
        if earlier and not cfg.overwrite:
            raise ValueError(f"{out}: holds an earlier run's samples ({earlier[0].name}, ...); pass "
                             f"--overwrite to replace them, or leave samples_dir out for a new folder")
        for p in earlier:
            p.unlink()
        out.mkdir(parents=True, exist_ok=True)
        return out
    root = Path(cfg.out_dir) / "samples"
    root.mkdir(parents=True, exist_ok=True)
    n = max((int(p.name) for p in root.iterdir() if p.name.isdigit()), default=0) + 1
    while True:  # mkdir fails on a folder another run just took: try the next number
        try:
            (root / f"{n:03d}").mkdir()
            return root / f"{n:03d}"
        except FileExistsError:
            n += 1


def _is_output(name: str) -> bool:
    return name in ("grid.png", "sample.json") or (name.startswith("sample-") and "." in name)


def write_record(path: Path, cfg: SampleConfig, ck: checkpoint.Checkpoint, device: str,
                 prompt: TokenSequence, samples: list[dict]) -> None:
    """sample.json: what made these samples, enough to make them again."""
    weights = ck.directory / "model.safetensors"
    write_json_atomic(path, {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": dataclasses.asdict(cfg),
        "checkpoint": {"directory": str(ck.directory.resolve()), "iter_num": ck.meta.get("iter_num"),
                       "best_val_loss": ck.meta.get("best_val_loss"),
                       "model_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
                       "model_config": ck.meta["model_config"]},
        "tokenizer": {"name": ck.tokenizer.name, "config": dataclasses.asdict(ck.tokenizer.config)},
        "device": device, "torch": torch.__version__,
        "prompt_tokens": len(prompt),
        "samples": samples,
    })


def write_sample(data, stem: Path) -> tuple[Path, Image.Image]:
    """Write what a tokenizer decoded: image file bytes, a clip (JPEG frames, as MJPEG) or pixels."""
    if isinstance(data, bytes):  # an image file: JPEG (DCT tokens) or PNG (VQ-VAE tokens)
        image = Image.open(io.BytesIO(data))
        path = stem.with_suffix(".jpg" if image.format == "JPEG" else f".{image.format.lower()}")
        path.write_bytes(data)
        return path, image
    if isinstance(data, list):
        from tokenizer.video.io import filmstrip, write_mjpeg  # the video extra, only when sampling clips

        path = stem.with_suffix(".avi")
        write_mjpeg(data, path)
        return path, filmstrip(data)
    image = data if isinstance(data, Image.Image) else Image.fromarray(np.asarray(data))
    path = stem.with_suffix(".png")
    image.save(path)
    return path, image


def main(cfg: SampleConfig) -> list[Path]:
    """Sample, write each sample (JPEG, or MJPEG clip), grid.png and sample.json into a new folder;
    returns the sample paths."""
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    ck = checkpoint.load(cfg.out_dir, device)
    tok = ck.tokenizer
    prompt = prompt_for(tok, cfg)
    out = output_dir(cfg)
    paths, images, record = [], [], []
    progress = sys.stderr.isatty()
    for start in range(0, cfg.num_samples, cfg.batch_size):
        n = min(cfg.batch_size, cfg.num_samples - start)
        scfg = SamplingConfig(temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                              seed=cfg.seed + start, max_new_tokens=cfg.max_new_tokens, bounded=cfg.bounded)
        for i, seq in enumerate(generate(ck.model, tok, prompt, n, scfg, progress=progress)):
            path, image = write_sample(tok.decode(seq), out / f"sample-{start + i:03d}")
            images.append(image)
            paths.append(path)
            record.append({"file": path.name, "batch_seed": scfg.seed, "stream": i, "tokens": len(seq)})
            log.info("%s: %d tokens", path, len(seq))
    if cfg.prefix_image:
        full = tok.encode(Path(cfg.prefix_image))
        source = Image.open(io.BytesIO(tok.decode(full)))  # the photo as the tokenizer sees it
        grid = prefix_grid(source, kept_region(source, prompt, full), images)
    else:
        grid = make_grid(images, cols=1 if any(p.suffix == ".avi" for p in paths) else 0)  # clips: rows
    grid.save(out / "grid.png")
    write_record(out / "sample.json", cfg, ck, device, prompt, record)
    log.info("wrote %d samples, grid.png and sample.json to %s", len(paths), out)
    return paths


def cli(argv: list[str] | None = None) -> list[Path]:
    return run(main, SampleConfig, argv)


if __name__ == "__main__":
    cli()
