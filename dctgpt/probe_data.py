"""Data for linear probes: train / val / test images with labels, from photos or labelled sets.

    data = probe_data("rotation", "embedded", seed=0, crop=(64, 64), crops_per_photo=32)
    data.splits["train"].images[0], data.splits["train"].labels[0]    # an HxWx3 array, 0..3

Tasks that need no downloaded labels, built from any photos ("embedded": the photos in the
scikit-image / scikit-learn wheels, tokenizer.corpus.embedded; "embedded:train" / "embedded:val"
for one side; or a folder of photos):

- `rotation`: square crops turned by 0, 90, 180 or 270 degrees (every crop in all four; label = turns).
- `source`: which photo a crop came from.

Every photo is cut along its longer side into fifths: the first three give the train crops, the
fourth the val crops, the fifth the test crops, so no two splits share a pixel. A crop has a random
place in its region and a random side between the crop size and the smaller side of a fifth
(log-uniform), resized to the crop size; crop i of a split is a function of (seed, photo, split, i).

`labels`: a folder with one subfolder per class (or train/ and test/ folders that hold those), or a
Hugging Face dataset saved locally (save_to_disk, parquet or arrow files; the CIFAR-10 layout: an
image column `img` or `image` and a `label` column). Splits a dataset does not have are carved out
of train by a stable hash of each item (val: 20% of train; test: 20% when there is none).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

TASKS = ("rotation", "source", "labels")
SPLITS = ("train", "val", "test")
FIFTHS = {"train": (0, 3), "val": (3, 4), "test": (4, 5)}   # region of a photo per split, in fifths
CROPS_PER_SPLIT = {"train": 1.0, "val": 0.25, "test": 0.5}  # crops of a split per train crop


@dataclass(frozen=True)
class ProbeSplit:
    images: list[Any]          # anything a tokenizer encodes: HxWx3 uint8 arrays, paths, bytes
    labels: np.ndarray         # (N,) int64


@dataclass(frozen=True)
class ProbeData:
    task: str
    classes: list[str]
    splits: dict[str, ProbeSplit]
    key: dict = field(default_factory=dict)   # identifies the data: cache key and JSON record


def probe_data(task: str, images: str, seed: int = 0, crop: tuple[int, int] = (64, 64),
               crops_per_photo: int = 32, max_images: int = 0, label_column: str | None = None,
               image_column: str | None = None) -> ProbeData:
    """The train / val / test data of `task` on `images` (see the module docstring)."""
    if task not in TASKS:
        raise ValueError(f"task={task!r}: expected one of {TASKS}")
    if task == "labels":
        p = Path(images)
        if not p.is_dir():
            raise FileNotFoundError(f"{p}: expected a folder of class folders or a saved dataset")
        hf = any((p / f).is_file() for f in ("dataset_dict.json", "state.json")) or \
            any(p.rglob("*.parquet")) or any(p.rglob("*.arrow"))
        data = (_hf_data(p, label_column, image_column) if hf else _folder_data(p))
        return _subsample(data, max_images, seed)
    names, photos = load_photos(images)
    side = max(crop)
    splits = {}
    for split in SPLITS:
        n = max(1, round(crops_per_photo * CROPS_PER_SPLIT[split]))
        imgs, labels = [], []
        for k, photo in enumerate(photos):
            for i in range(n):
                rng = np.random.default_rng([seed, k, SPLITS.index(split), i])
                c = region_crop(photo, split, side, rng)
                if task == "source":
                    imgs.append(c)
                    labels.append(k)
                else:                                          # every crop in all four turns
                    imgs += [np.ascontiguousarray(np.rot90(c, r)) for r in range(4)]
                    labels += [0, 1, 2, 3]
        splits[split] = ProbeSplit(imgs, np.array(labels, np.int64))
    classes = names if task == "source" else ["0", "90", "180", "270"]
    key = {"task": task, "images": images, "photos": _fingerprint(images, names), "seed": seed,
           "side": side, "crops_per_photo": crops_per_photo}
    return ProbeData(task, classes, splits, key)


def load_photos(images: str) -> tuple[list[str], list[np.ndarray]]:
    """(names, (H, W, 3) uint8 photos) of "embedded", "embedded:train|val" or a folder of photos."""
    if images == "embedded" or images.startswith("embedded:"):
        from tokenizer.corpus.embedded import SPLITS as PHOTO_SPLITS
        from tokenizer.corpus.embedded import load_photo

        side = images.partition(":")[2]
        if side and side not in PHOTO_SPLITS:
            raise ValueError(f"images={images!r}: expected embedded, embedded:train or embedded:val")
        keys = PHOTO_SPLITS[side] if side else PHOTO_SPLITS["train"] + PHOTO_SPLITS["val"]
        return [k.split(":")[1].rsplit(".", 1)[0] for k in keys], [load_photo(k) for k in keys]
    from tokenizer.corpus.sources import IMAGE_EXTS
    from tokenizer.media import load_pixels, read_bytes

    folder = Path(images)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: expected 'embedded' or a folder of photos")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
    if len(files) < 2:
        raise FileNotFoundError(f"{folder}: fewer than 2 photos ({', '.join(sorted(IMAGE_EXTS))})")
    photos = [load_pixels(p, read_bytes(p, str(p)), str(p), gray=False, limit=1 << 28) for p in files]
    return [str(p.relative_to(folder)) for p in files], photos


def region_crop(photo: np.ndarray, split: str, side: int, rng: np.random.Generator) -> np.ndarray:
    """A random (side, side) crop of the split's region of `photo` (see the module docstring)."""
    h, w = photo.shape[:2]
    a, b = FIFTHS[split]
    long = max(h, w)
    lo, hi = a * long // 5, b * long // 5                      # the region along the longer side
    region = photo[lo:hi] if h >= w else photo[:, lo:hi]
    fit = min(long // 5, min(h, w))                            # the largest side every region holds
    s = min(fit, int(round(side * np.exp(rng.uniform(0.0, np.log(max(fit / side, 1.0)))))))
    y = int(rng.integers(region.shape[0] - s + 1))
    x = int(rng.integers(region.shape[1] - s + 1))
    img = Image.fromarray(np.ascontiguousarray(region[y:y + s, x:x + s]))
    return np.asarray(img.resize((side, side), Image.Resampling.LANCZOS) if s != side else img)


def _fingerprint(images: str, names: list[str]) -> str:
    """What identifies a photo set or dataset folder: names, sizes and times of its files."""
    if images.startswith("embedded"):
        return ",".join(names)
    root = Path(images)
    rows = sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in root.rglob("*") if p.is_file())
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def _hash_fraction(item: Any) -> float:
    return int(hashlib.md5(json.dumps(item).encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def _carve(given: dict[str, list], fraction: float = 0.2) -> dict[str, list]:
    """train / val / test lists of (ref, label) from the splits a dataset has."""
    train = given.get("train") or next(iter(given.values()))
    val = given.get("val") or given.get("validation")
    test = given.get("test")
    if test is None and val is not None and len(given) == 2:   # train + one held-out split: it tests
        test, val = val, None
    if test is None:
        test = [t for t in train if _hash_fraction([0, t[0]]) < fraction]
        train = [t for t in train if _hash_fraction([0, t[0]]) >= fraction]
    if val is None:
        val = [t for t in train if _hash_fraction([1, t[0]]) < fraction]
        train = [t for t in train if _hash_fraction([1, t[0]]) >= fraction]
    return {"train": train, "val": val, "test": test}


def _folder_data(root: Path) -> ProbeData:
    from tokenizer.corpus.sources import IMAGE_EXTS

    tops = {d.name for d in root.iterdir() if d.is_dir()}
    parts = {s: root / s for s in ("train", "val", "validation", "test") if s in tops}
    if "train" not in parts:
        parts = {"all": root}
    classes = sorted({d.name for part in parts.values() for d in part.iterdir() if d.is_dir()})
    if len(classes) < 2:
        raise FileNotFoundError(f"{root}: expected one folder per class (at least 2), found {classes}")
    given = {}
    for split, part in parts.items():
        given[split] = [(str(p.relative_to(root)), classes.index(p.parent.name))
                        for c in classes if (part / c).is_dir()
                        for p in sorted((part / c).rglob("*")) if p.suffix.lower() in IMAGE_EXTS]
    splits = {s: ProbeSplit([root / r for r, _ in items], np.array([y for _, y in items], np.int64))
              for s, items in _carve(given).items()}
    key = {"task": "labels", "images": str(root), "fingerprint": _fingerprint(str(root), [])}
    return ProbeData("labels", classes, splits, key)


def _hf_data(path: Path, label_column: str | None, image_column: str | None) -> ProbeData:
    import datasets

    from tokenizer.corpus.sources import Source, find_image_column, hf_splits

    given_ds = hf_splits(Source("hf", str(path)))
    first = next(iter(given_ds.values()))
    names = first.column_names
    label = label_column or next((c for c in ("label", "labels", "fine_label") if c in names), None)
    if label is None or label not in names:
        raise ValueError(f"{path}: no label column {label_column or 'label'!r}; columns are {names}")
    col = find_image_column(first, image_column, str(path))
    feature = first.features[label]
    classes = list(feature.names) if isinstance(feature, datasets.ClassLabel) else \
        [str(v) for v in sorted(set(first[label]))]
    given, media = {}, {}
    for split, ds in given_ds.items():
        if isinstance(ds.features[col], datasets.Image):
            ds = ds.cast_column(col, datasets.Image(decode=False))   # raw bytes: JPEGs stay JPEGs
        ys = ds[label]
        ys = ys if isinstance(feature, datasets.ClassLabel) else [classes.index(str(v)) for v in ys]
        given[split] = [([split, i], int(y)) for i, y in enumerate(ys)]
        media[split] = ds[col]                                     # the whole column, read once
    splits = {}
    for s, items in _carve(given).items():
        imgs = [media[ref[0]][ref[1]] for ref, _ in items]
        imgs = [v.get("bytes") or v.get("path") if isinstance(v, dict) else v for v in imgs]
        splits[s] = ProbeSplit(imgs, np.array([y for _, y in items], np.int64))
    key = {"task": "labels", "images": str(path), "fingerprint": _fingerprint(str(path), []),
           "label_column": label, "image_column": col}
    return ProbeData("labels", classes, splits, key)


def _subsample(data: ProbeData, max_images: int, seed: int) -> ProbeData:
    """At most `max_images` per split (a seeded random subset, in the original order)."""
    if not max_images:
        return data
    splits = {}
    for s, sp in data.splits.items():
        keep = np.arange(len(sp.labels))
        if len(keep) > max_images:
            keep = np.sort(np.random.default_rng([seed, SPLITS.index(s)]).permutation(len(keep))[:max_images])
        splits[s] = ProbeSplit([sp.images[i] for i in keep], sp.labels[keep])
    return ProbeData(data.task, data.classes, splits, {**data.key, "max_images": max_images, "seed": seed})
