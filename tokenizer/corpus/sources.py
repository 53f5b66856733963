"""Where corpus images and clips come from: the embedded photos (or camera pans over them), a folder,
or a Hugging Face dataset.

    src = Source("hf", "data/my_parquet_files", streaming=True)
    for split, hf_split, shard in plan_streams(src): ...       # what tokenizer.corpus.prepare runs

A map-style source is planned item by item (`plan_items`: crop indices, file paths, dataset rows);
a streaming Hugging Face source (`streaming=True`, images never copied to local disk) is planned by
the dataset's own input shards (`plan_streams`), each read start to end by `Reader.stream`. Without
a validation split of its own, a source's val images are chosen by a stable hash of each item.

A video source (`clip_frames` > 0) has video files or a video column as items (a folder's video
files; a dataset's `datasets.Video` column, read undecoded, or a column of video bytes or paths);
`Source.clips` cuts one item into clips of `clip_frames` frames as its frames are read. "pans" are
the camera pans of tokenizer.corpus.clips, planned like embedded crops (pan i of a split is a function
of (seed, split, i)).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizer.media import IMAGE_EXTS
from tokenizer.video.tokenizer import VIDEO_SUFFIXES as VIDEO_EXTS

VIDEO_COLUMNS = ("video", "mp4", "avi", "clip")
STREAM_ROWS = 1000   # rows per input shard when a dataset saved with save_to_disk is streamed


@dataclass(frozen=True)
class Source:
    """Where images come from; picklable so each worker process can reopen it."""

    kind: str                    # "embedded" | "folder" | "hf" | "pans"
    path: str = ""
    image_column: str | None = None
    crop_size: tuple[int, int] = (64, 64)
    seed: int = 0
    streaming: bool = False      # hf only: read the dataset as a stream of its input shards
    clip_frames: int = 0         # > 0: items are videos, cut into clips of this many frames
    clip_stride: int = 0         # frames from one clip's start to the next's (0 = clip_frames)
    clips_per_file: int = 0      # clips taken from one video, from its start (0 = every clip)
    frame_step: int = 1          # a clip takes every frame_step-th frame (the video tokenizer's)

    def __post_init__(self) -> None:
        if self.kind not in ("embedded", "folder", "hf", "pans"):
            raise ValueError(f"Source kind={self.kind!r}: expected 'embedded', 'folder', 'hf' or 'pans'")
        if self.streaming and self.kind != "hf":
            raise ValueError(f"streaming=True reads Hugging Face datasets; {self.kind!r} is not one")
        for name in ("clip_frames", "clip_stride", "clips_per_file"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)}: expected >= 0")
        if self.frame_step < 1:
            raise ValueError(f"frame_step={self.frame_step}: expected >= 1")
        if self.clip_frames and self.kind == "embedded":
            raise ValueError("clip_frames: the embedded source holds photos, not videos "
                             "(camera pans over them: source pans)")
        if self.kind == "pans" and not self.clip_frames:
            raise ValueError("source pans: makes clips, with a video tokenizer (--video_mode) "
                             "and clip_frames")
        object.__setattr__(self, "crop_size", tuple(self.crop_size))

    def clips(self, media: Any, name: str) -> Iterator[list]:
        """The clips of one video (path or bytes, or a list of frames), as its frames are read:
        windows of (clip_frames - 1) * frame_step + 1 frames, which a video tokenizer steps to
        clip_frames. TokenizerError (after the last clip) if the video holds no whole clip."""
        from tokenizer.base import TokenizerError
        from tokenizer.video.io import clip_windows, iter_video

        length = (self.clip_frames - 1) * self.frame_step + 1
        stride = (self.clip_stride or self.clip_frames) * self.frame_step
        frames = iter(media) if isinstance(media, list) else iter_video(media, name)
        n = 0
        for n, clip in enumerate(clip_windows(frames, length, stride, self.clips_per_file), 1):
            yield clip
        if not n:
            step = f" at frame_step={self.frame_step}" if self.frame_step > 1 else ""
            raise TokenizerError(f"{name}: shorter than one clip of {self.clip_frames} frames{step}")


def plan_items(src: Source, train_crops: int, val_crops: int, val_fraction: float) -> dict[str, list]:
    """Per split, the list of item references (crop index, file path or row key), deterministic."""
    if src.kind in ("embedded", "pans"):
        return {"train": list(range(train_crops)), "val": list(range(val_crops))}
    if src.kind == "folder":
        root = Path(src.path)
        exts, what = (VIDEO_EXTS, "video") if src.clip_frames else (IMAGE_EXTS, "image")
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*")
                       if p.is_file() and p.suffix.lower() in exts)
        if not files:
            raise FileNotFoundError(f"{root}: no {what} files ({', '.join(sorted(exts))})")
        return _hash_split(files, val_fraction)
    splits = hf_splits(src)
    train, val = _train_val(list(splits))
    if val is not None:
        return {"train": [[train, i] for i in range(len(splits[train]))],
                "val": [[val, i] for i in range(len(splits[val]))]}
    return _hash_split([[train, i] for i in range(len(splits[train]))], val_fraction)


def plan_streams(src: Source) -> list[tuple[str | None, str, int]]:
    """(corpus split, or None to split by hash; dataset split; input shard) for every input shard."""
    splits = hf_splits(src)
    train, val = _train_val(list(splits))
    plan: list[tuple[str | None, str, int]] = [
        ("train" if val is not None else None, train, k) for k in range(splits[train].num_shards)]
    if val is not None:
        plan += [("val", val, k) for k in range(splits[val].num_shards)]
    return plan


def _train_val(names: list[str]) -> tuple[str, str | None]:
    """Which dataset splits become train and val (None: the source has no validation split)."""
    val = next((n for n in ("validation", "val", "test") if n in names), None) if len(names) > 1 else None
    train = "train" if "train" in names else next(n for n in names if n != val)
    return train, val


def hash_fraction(item: Any) -> float:
    """A stable number in [0, 1] for an item reference: below val_fraction means val."""
    return int(hashlib.md5(json.dumps(item).encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def _hash_split(items: list, val_fraction: float) -> dict[str, list]:
    fracs = [hash_fraction(i) for i in items]
    val = {k for k, f in enumerate(fracs) if f < val_fraction}
    if val_fraction > 0 and len(items) >= 2 and not val:   # a small folder can hash nothing into val:
        val = {fracs.index(min(fracs))}                    # then the lowest hash goes there
    return {"train": [i for k, i in enumerate(items) if k not in val],
            "val": [i for k, i in enumerate(items) if k in val]}


def hf_splits(src: Source) -> dict:
    """name -> Dataset (or IterableDataset when streaming) for a local saved dataset, parquet/arrow
    files, an imagefolder ("hf:FOLDER") or anything `datasets.load_dataset` takes ("hf:NAME")."""
    import datasets

    p, stream = Path(src.path), src.streaming
    if src.path.startswith("hf:"):
        name = src.path[3:]
        folder = "videofolder" if src.clip_frames else "imagefolder"
        ds = (datasets.load_dataset(folder, data_dir=name, streaming=stream) if Path(name).is_dir()
              else datasets.load_dataset(name, streaming=stream))
    elif (p / "dataset_dict.json").is_file() or (p / "state.json").is_file():
        ds = datasets.load_from_disk(str(p))
        if stream:   # already on disk and mapped; streamed in input shards of STREAM_ROWS rows
            parts = dict(ds) if isinstance(ds, datasets.DatasetDict) else {"train": ds}
            return {n: d.to_iterable_dataset(num_shards=max(1, min(len(d), -(-len(d) // STREAM_ROWS))))
                    for n, d in parts.items()}
    else:
        for fmt in ("parquet", "arrow"):
            files = sorted(str(f) for f in p.rglob(f"*.{fmt}"))
            if files:
                ds = datasets.load_dataset(fmt, data_files=files, streaming=stream)
                break
        else:
            raise FileNotFoundError(f"{p}: neither a saved dataset nor parquet/arrow files")
    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        return dict(ds)
    return {"train": ds}


def _feature(video: bool) -> type:
    """datasets' Image feature, or its Video feature (an empty tuple where datasets has none)."""
    import datasets

    return getattr(datasets, "Video", ()) if video else datasets.Image


def find_image_column(ds: Any, wanted: str | None, where: str, video: bool = False) -> str:
    """The column holding the images (video=True: the videos): `wanted`, else the first of datasets'
    Image (Video) feature, else a column with a usual name."""
    if wanted is not None:
        if wanted not in ds.column_names:
            raise ValueError(f"{where}: no column {wanted!r}; columns are {ds.column_names}")
        return wanted
    for name, feature in (ds.features or {}).items():
        if isinstance(feature, _feature(video)):
            return name
    for name in VIDEO_COLUMNS if video else ("image", "img", "jpg", "png"):
        if name in (ds.column_names or []):
            return name
    what = "video" if video else "image"
    raise ValueError(f"{where}: no {what} column among {ds.column_names}; pass --image_column")


def _raw_images(ds: Any, src: Source) -> tuple[Any, str]:
    """The dataset with its image (video) column as undecoded bytes or paths (JPEGs and MJPEG
    packets stay as they are), and that column."""
    video = src.clip_frames > 0
    col = find_image_column(ds, src.image_column, src.path, video)
    feature = _feature(video)
    if isinstance((ds.features or {}).get(col), feature):
        ds = ds.cast_column(col, feature(decode=False))
    return ds, col


def _media(value: Any) -> Any:
    return (value.get("bytes") or value.get("path")) if isinstance(value, dict) else value


class Reader:
    """Opens a Source once per process: `read` one item of a plan, or `stream` one input shard."""

    def __init__(self, src: Source):
        self.src = src
        self.hf: dict = {}

    def _split(self, name: str) -> tuple[Any, str]:
        if name not in self.hf:
            self.hf[name] = _raw_images(hf_splits(self.src)[name], self.src)
        return self.hf[name]

    def read(self, split: str, ref: Any) -> tuple[str, Any]:
        """(name for messages, media) of the item `ref` of a plan_items plan."""
        src = self.src
        if src.kind == "embedded":
            from tokenizer.corpus.embedded import crops
            crop = next(crops(split, ref + 1, src.crop_size, src.seed, start=ref))
            return crop.name, crop.pixels
        if src.kind == "pans":
            from tokenizer.corpus.clips import pan
            length = (src.clip_frames - 1) * src.frame_step + 1
            return f"pan-{split}-{ref}", pan(split, ref, length, src.crop_size, src.seed)
        if src.kind == "folder":
            return str(Path(src.path) / ref), Path(src.path) / ref
        name, row = ref
        ds, col = self._split(name)
        return f"{src.path}[{name}][{row}]", _media(ds[row][col])

    def stream(self, name: str, shard: int) -> Iterator[tuple[list, str, Any]]:
        """(item key, name for messages, media) of every row of input shard `shard` of split `name`."""
        ds, col = self._split(name)
        part = ds.shard(num_shards=ds.num_shards, index=shard)
        for row, example in enumerate(part):
            yield [name, shard, row], f"{self.src.path}[{name}][shard {shard}][{row}]", _media(example[col])
