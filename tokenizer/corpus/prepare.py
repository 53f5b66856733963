"""Corpus tokenization: images -> sharded token files for training (layout: tokenizer.corpus.shards).

    python -m tokenizer.corpus.prepare --source embedded --out data/embedded64 --size 64 64 --quality 25
    python -m tokenizer.corpus.prepare --source photos/ --out data/photos \
        --tokenizer data/embedded64/tokenizer
    python -m tokenizer.corpus.prepare --source hf:some/dataset --out data/hf   # datasets.load_dataset
    python -m tokenizer.corpus.prepare --source hf:photos/ --out data/hf        # an imagefolder dataset

Sources: "embedded" (photos in the scikit-image / scikit-learn wheels, train and val crops from
different photos); a folder of images (val chosen by a stable hash of each relative path); a
Hugging Face dataset saved locally (save_to_disk output, parquet or arrow files), "hf:NAME" for
anything `datasets.load_dataset` takes, or "hf:FOLDER" for an imagefolder dataset; any image column.

Work is cut into shards planned up front; shards are tokenized in parallel processes and each is
written whole (temporary name, then rename), so a killed run resumes where it stopped. A file that
cannot be tokenized is skipped with a one-line warning naming it, never aborting the run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from safetensors import safe_open
from tqdm import tqdm

from tokenizer.base import load_tokenizer, write_json_atomic
from tokenizer.cli import run
from tokenizer.corpus.shards import write_shard

log = logging.getLogger("tokenizer.corpus.prepare")
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jfif"}


@dataclass(frozen=True)
class Source:
    """Where images come from; picklable so each worker process can reopen it."""

    kind: str                    # "embedded" | "folder" | "hf"
    path: str = ""
    image_column: str | None = None
    crop_size: tuple[int, int] = (64, 64)
    seed: int = 0


def plan_items(src: Source, train_crops: int, val_crops: int, val_fraction: float) -> dict[str, list]:
    """Per split, the list of item references (crop index, file path or row key), deterministic."""
    if src.kind == "embedded":
        return {"train": list(range(train_crops)), "val": list(range(val_crops))}
    if src.kind == "folder":
        root = Path(src.path)
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*")
                       if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise FileNotFoundError(f"{root}: no image files ({', '.join(sorted(IMAGE_EXTS))})")
        return _hash_split(files, val_fraction)
    splits = _hf_splits(src)
    names = list(splits)
    if len(names) > 1:
        val = next((n for n in ("validation", "val", "test") if n in names), None)
        train = "train" if "train" in names else next(n for n in names if n != val)
        if val is not None:
            return {"train": [[train, i] for i in range(len(splits[train]))],
                    "val": [[val, i] for i in range(len(splits[val]))]}
    name = names[0] if len(names) == 1 else ("train" if "train" in names else names[0])
    return _hash_split([[name, i] for i in range(len(splits[name]))], val_fraction)


def _hash_split(items: list, val_fraction: float) -> dict[str, list]:
    fracs = [int(hashlib.md5(json.dumps(i).encode()).hexdigest()[:8], 16) / 0xFFFFFFFF for i in items]
    val = {k for k, f in enumerate(fracs) if f < val_fraction}
    if val_fraction > 0 and len(items) >= 2 and not val:   # a small folder can hash nothing into val:
        val = {fracs.index(min(fracs))}                    # then the lowest hash goes there
    return {"train": [i for k, i in enumerate(items) if k not in val],
            "val": [i for k, i in enumerate(items) if k in val]}


def _hf_splits(src: Source) -> dict:
    """name -> datasets.Dataset for a local saved dataset, parquet/arrow files or a load_dataset name."""
    import datasets

    p = Path(src.path)
    if src.path.startswith("hf:"):
        name = src.path[3:]
        ds = (datasets.load_dataset("imagefolder", data_dir=name) if Path(name).is_dir()
              else datasets.load_dataset(name))
    elif (p / "dataset_dict.json").is_file() or (p / "state.json").is_file():
        ds = datasets.load_from_disk(str(p))
    else:
        for fmt, ext in (("parquet", "parquet"), ("arrow", "arrow")):
            files = sorted(str(f) for f in p.rglob(f"*.{ext}"))
            if files:
                ds = datasets.load_dataset(fmt, data_files=files)
                break
        else:
            raise FileNotFoundError(f"{p}: neither a saved dataset nor parquet/arrow files")
    return dict(ds) if isinstance(ds, datasets.DatasetDict) else {"train": ds}


def _image_column(ds: Any, wanted: str | None, where: str) -> str:
    import datasets

    if wanted is not None:
        if wanted not in ds.column_names:
            raise ValueError(f"{where}: no column {wanted!r}; columns are {ds.column_names}")
        return wanted
    for name, feature in ds.features.items():
        if isinstance(feature, datasets.Image):
            return name
    for name in ("image", "img", "jpg", "png"):
        if name in ds.column_names:
            return name
    raise ValueError(f"{where}: no image column among {ds.column_names}; pass --image_column")


class _Reader:
    """Opens a Source once per process and returns (name, media) for an item reference."""

    def __init__(self, src: Source):
        self.src = src
        self.hf: dict = {}

    def read(self, split: str, ref: Any) -> tuple[str, Any]:
        src = self.src
        if src.kind == "embedded":
            from tokenizer.corpus.embedded import crops
            crop = next(crops(split, ref + 1, src.crop_size, src.seed, start=ref))
            return crop.name, crop.pixels
        if src.kind == "folder":
            return str(Path(src.path) / ref), Path(src.path) / ref
        name, row = ref
        if name not in self.hf:
            import datasets
            ds = _hf_splits(src)[name]
            col = _image_column(ds, src.image_column, src.path)
            if isinstance(ds.features[col], datasets.Image):
                ds = ds.cast_column(col, datasets.Image(decode=False))   # raw bytes: JPEGs stay JPEGs
            self.hf[name] = (ds, col)
        ds, col = self.hf[name]
        value = ds[row][col]
        where = f"{src.path}[{name}][{row}]"
        if isinstance(value, dict):
            value = value.get("bytes") or value.get("path")
        return where, value


_WORKER: dict = {}


def _tokenize_shard(job: dict) -> dict:
    """Tokenize one shard's items and write the shard; returns its stats."""
    if _WORKER.get("key") != (job["tokenizer"], job["source"]):
        _WORKER.update(key=(job["tokenizer"], job["source"]), tok=load_tokenizer(job["tokenizer"]),
                       reader=_Reader(Source(**job["source"])))
    tok, reader = _WORKER["tok"], _WORKER["reader"]
    seqs, skipped = [], []
    for ref in job["refs"]:
        name = str(ref)
        try:
            name, media = reader.read(job["split"], ref)
            seqs.append(tok.encode(media, name))
        except Exception as e:    # a bad file is skipped with its reason, never aborts the run
            skipped.append([name, f"{type(e).__name__}: {e}".splitlines()[0][:300]])
    stats = write_shard(job["path"], seqs, metadata={"skipped": json.dumps(skipped)})
    return {**stats, "split": job["split"], "skipped": skipped, "path": job["path"]}


def prepare(src: Source, out: str | os.PathLike, tokenizer: Any, train_crops: int = 8000,
            val_crops: int = 512, val_fraction: float = 0.05, shard_size: int = 1000,
            workers: int | None = None, progress: bool = True) -> dict:
    """Tokenize `src` into the corpus directory `out`; resumes a killed run with the same plan."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok_dir = out / "tokenizer"
    items = plan_items(src, train_crops, val_crops, val_fraction)
    plan = json.loads(json.dumps({
        "source": asdict(src), "tokenizer": tokenizer.name, "config": asdict(tokenizer.config),
        "shard_size": shard_size, "items": hashlib.sha256(json.dumps(items).encode()).hexdigest()}))
    plan_path = out / "plan.json"
    if plan_path.is_file():
        if json.loads(plan_path.read_text()) != plan:
            raise ValueError(f"{out}: holds a corpus made with other settings ({plan_path}); "
                             "choose a new --out or delete it")
    else:
        tokenizer.save(tok_dir)
        write_json_atomic(plan_path, plan)
    jobs = []
    for split, refs in items.items():
        (out / split).mkdir(exist_ok=True)
        for s in range(0, len(refs), shard_size):
            path = out / split / f"shard-{s // shard_size:05d}.safetensors"
            jobs.append({"split": split, "refs": refs[s:s + shard_size], "path": str(path),
                         "tokenizer": str(tok_dir), "source": asdict(src)})
    done = [_read_stats(j) for j in jobs if Path(j["path"]).is_file()]
    todo = [j for j in jobs if not Path(j["path"]).is_file()]
    workers = min(workers or os.cpu_count() or 1, max(1, len(todo)))
    bar = tqdm(total=sum(len(j["refs"]) for j in jobs), initial=sum(s["sequences"] + len(s["skipped"])
               for s in done), unit="img", desc="tokenize", disable=not progress or None)
    ctx = mp.get_context("spawn" if sys.platform == "darwin" else "fork")
    with ctx.Pool(workers) if workers > 1 else _Serial() as pool:
        for stats in pool.imap_unordered(_tokenize_shard, todo):
            for name, why in stats["skipped"]:
                log.warning("skipped %s: %s", name, why)
            bar.update(stats["sequences"] + len(stats["skipped"]))
            done.append(stats)
    bar.close()
    return _write_manifest(out, tokenizer, src, jobs, done)


class _Serial:
    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def imap_unordered(self, fn, jobs):
        return map(fn, jobs)


def _read_stats(job: dict) -> dict:
    with safe_open(job["path"], "numpy") as f:
        meta = f.metadata() or {}
        n = f.get_slice("offsets").get_shape()[0] - 1
        tokens = int(f.get_slice("offsets")[n:n + 1][0]) if n > 0 else 0
    return {"sequences": n, "tokens": tokens, "split": job["split"], "path": job["path"],
            "skipped": json.loads(meta.get("skipped", "[]"))}


def _write_manifest(out: Path, tokenizer: Any, src: Source, jobs: list, done: list) -> dict:
    by_path = {s["path"]: s for s in done}
    splits: dict[str, dict] = {}
    for j in jobs:
        s = by_path[j["path"]]
        d = splits.setdefault(j["split"], {"shards": [], "sequences": 0, "tokens": 0, "skipped": []})
        d["shards"].append(Path(j["path"]).name)
        d["sequences"] += s["sequences"]
        d["tokens"] += s["tokens"]
        d["skipped"] += s["skipped"]
    nbytes = sum(Path(j["path"]).stat().st_size for j in jobs)
    manifest = {"tokenizer": tokenizer.name, "vocab_size": tokenizer.vocab_size, "source": asdict(src),
                "bytes": nbytes, "splits": splits}
    write_json_atomic(out / "corpus.json", manifest)
    return manifest


def summary(manifest: dict) -> str:
    lines = [f"{'split':6} {'images':>8} {'tokens':>11} {'tok/img':>8} {'skipped':>8}"]
    for name, d in manifest["splits"].items():
        per = d["tokens"] / max(1, d["sequences"])
        lines.append(f"{name:6} {d['sequences']:8d} {d['tokens']:11d} {per:8.1f} {len(d['skipped']):8d}")
    lines.append(f"shards on disk: {manifest['bytes'] / 1e6:.1f} MB; vocab {manifest['vocab_size']}")
    for name, d in manifest["splits"].items():
        for file, why in d["skipped"][:10]:
            lines.append(f"skipped ({name}) {file}: {why}")
    return "\n".join(lines)


@dataclass(frozen=True)
class PrepareConfig:
    """Tokenize a corpus: the source, the tokenizer and the split."""

    source: str                   # "embedded", a folder of images, a saved dataset, or hf:NAME / hf:FOLDER
    out: str = ""                 # corpus directory to write (or resume); in a training recipe: data_dir
    tokenizer: str = ""           # a saved tokenizer directory; then quality, subsampling, order are unused
    quality: int = 25             # JPEG quality the images are encoded at
    size: tuple[int, int] = (64, 64)  # (height, width) images are fitted to; the embedded crops' size
    subsampling: str = "4:2:0"    # chroma subsampling: "4:4:4", "4:2:2", "4:2:0" or "gray"
    order: str = "raster"         # block order: "raster" or "coarse_to_fine"
    train_crops: int = 8000       # embedded source: train crops
    val_crops: int = 512          # embedded source: val crops
    val_fraction: float = 0.05    # other sources: share of images hashed into val (at least one of 2+)
    image_column: str = ""        # datasets: the image column ("" = found from the features)
    shard_size: int = 1000        # images per shard file
    workers: int = 0              # tokenizing processes; 0 = one per CPU core
    seed: int = 0                 # embedded source: which crops

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction={self.val_fraction}: expected 0 <= val_fraction < 1")
        for name in ("train_crops", "val_crops", "workers", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)}: expected >= 0")
        if self.shard_size < 1:
            raise ValueError(f"shard_size={self.shard_size}: expected >= 1")


def source_of(cfg: PrepareConfig, size: tuple[int, int]) -> Source:
    """The Source `cfg.source` names; crops of the embedded photos are `size`."""
    column = cfg.image_column or None
    if cfg.source == "embedded":
        return Source("embedded", crop_size=tuple(size), seed=cfg.seed)
    if cfg.source.startswith("hf:"):
        return Source("hf", cfg.source, column)
    p = Path(cfg.source)
    if not p.is_dir():
        raise FileNotFoundError(f"source={cfg.source!r}: no such folder (expected \"embedded\", a folder "
                                "of images, a saved dataset or hf:NAME)")
    is_hf = any((p / f).is_file() for f in ("dataset_dict.json", "state.json")) or \
        any(p.rglob("*.parquet")) or any(p.rglob("*.arrow"))
    return Source("hf" if is_hf else "folder", str(p), column)


def main(cfg: PrepareConfig) -> dict:
    """Tokenize `cfg.source` into `cfg.out`; returns the corpus manifest (corpus.json)."""
    from tokenizer.jpeg.tokenizer import JpegDctConfig, JpegDctTokenizer

    if not cfg.out:
        raise ValueError("out: expected the corpus directory to write, e.g. --out=data/mine")
    if cfg.tokenizer:
        tok = load_tokenizer(cfg.tokenizer)
    else:
        tok = JpegDctTokenizer(JpegDctConfig(quality=cfg.quality, size=cfg.size, subsampling=cfg.subsampling,
                                             order=cfg.order))
    src = source_of(cfg, tok.size or cfg.size)
    return prepare(src, cfg.out, tok, cfg.train_crops, cfg.val_crops, cfg.val_fraction, cfg.shard_size,
                   cfg.workers or None, progress=sys.stderr.isatty())


def cli(argv: list[str] | None = None) -> dict:
    manifest = run(main, PrepareConfig, argv)
    print(summary(manifest))
    return manifest


if __name__ == "__main__":
    cli()
