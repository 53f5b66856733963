"""Corpus tokenization: images -> sharded token files for training (layout: tokenizer.corpus.shards).

    python -m tokenizer.corpus.prepare --source embedded --out data/embedded64 --size 64 64 --quality 25
    python -m tokenizer.corpus.prepare --source photos/ --out data/photos \
        --tokenizer data/embedded64/tokenizer
    python -m tokenizer.corpus.prepare --source hf:some/dataset --out data/hf --streaming
    # videos (a folder of files, or a dataset's video column): clips of 16 frames, delta frames
    python -m tokenizer.corpus.prepare --source videos/ --out data/clips --video_mode delta \
        --quality 50 --clip_frames 16 --clips_per_file 8
    # the same command as N parts on N machines, one corpus (or torchrun ranks, a SLURM job array):
    python -m tokenizer.corpus.prepare --source /shared/parquet --streaming --out /shared/corpus \
        --part 3 --parts 16
    # the index, if no part could write it: the same command with --merge

Sources (tokenizer.corpus.sources): "embedded" (photos in the scikit-image / scikit-learn wheels),
"pans" (camera pans over them, tokenizer.corpus.clips; with a video tokenizer),
a folder of images, a Hugging Face dataset saved locally (save_to_disk output, parquet or arrow
files), "hf:NAME" for anything `datasets.load_dataset` takes, or "hf:FOLDER" for an imagefolder;
`--streaming` reads a Hugging Face source as a stream, so its images never sit on local disk.
With a video tokenizer (`--video_mode`, or a saved one through `--tokenizer`) the items are videos
(files, or a dataset's video column): each is cut into clips of `clip_frames` frames as it is read
(`Source.clips`), MJPEG packets kept as the JPEGs they are, and every clip is one sequence; a video
that cannot be read whole is skipped and named like a bad image, all its clips with it.

The work is cut into jobs planned the same way by every part: `shard_size` items of a map-style
source (video sources: shard_size // clips_per_file videos, when that is set), or one input shard
of a streaming dataset. Part i of N runs the jobs j with j % N == i in
local worker processes; a job writes its shards whole (temporary name, then rename) and then its
record, jobs/job-J.json. Parts share nothing but the output directory: whichever part finds every
record present writes the corpus index (corpus.json); the same command with `--merge` writes it. A
killed part loses only the jobs it was running; rerunning it skips every job with a record. A file
that cannot be tokenized is skipped with a one-line warning naming it, never aborting the run.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import multiprocessing as mp
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tokenizer.base import Tokenizer, load_tokenizer, read_config, write_json_atomic
from tokenizer.cli import run
from tokenizer.corpus.shards import (
    FORMAT,
    CorpusFormatError,
    ShardInfo,
    ids_dtype,
    rebuild_hint,
    write_index,
    write_shard,
)
from tokenizer.corpus.sources import IMAGE_EXTS, Reader, Source, hash_fraction, plan_items, plan_streams
from tokenizer.video.tokenizer import MODES

__all__ = ["IMAGE_EXTS", "PrepareConfig", "Source", "cli", "main", "merge", "part_from_env", "plan_items",
           "prepare", "source_of", "summary"]
log = logging.getLogger("tokenizer.corpus.prepare")
SPLITS = ("train", "val")


def plan_jobs(src: Source, train_crops: int, val_crops: int, val_fraction: float,
              shard_size: int) -> list[dict]:
    """Every job of the corpus, in order; the same list in every part, whatever the number of parts.

    A job is {"index", "split", "refs"} (items of a map-style plan, all in one split) or
    {"index", "split", "stream", "val_fraction"} (one input shard; split None: each item by hash).
    """
    if shard_size < 1:
        raise ValueError(f"shard_size={shard_size}: expected >= 1")
    per_job = max(1, shard_size // src.clips_per_file) if src.clips_per_file else shard_size
    jobs: list[dict] = []
    if src.streaming:
        for split, name, shard in plan_streams(src):
            jobs.append({"index": len(jobs), "split": split, "stream": [name, shard],
                         "val_fraction": val_fraction})
        return jobs
    for split, refs in plan_items(src, train_crops, val_crops, val_fraction).items():
        for s in range(0, len(refs), per_job):
            jobs.append({"index": len(jobs), "split": split, "refs": refs[s:s + per_job]})
    return jobs


def _record(out: Path, index: int) -> Path:
    return out / "jobs" / f"job-{index:05d}.json"


def _claim(out: Path, tokenizer: Tokenizer, plan: dict) -> None:
    """Write plan.json and tokenizer/ once for all parts (atomically, first part wins), then check
    that what is there was made with this part's settings."""
    path, tok_dir = out / "plan.json", out / "tokenizer"
    if not path.is_file():
        tmp = out / f"tokenizer.tmp{os.getpid()}"
        tokenizer.save(tmp)
        try:
            os.rename(tmp, tok_dir)              # fails if another part saved it first
        except OSError:
            shutil.rmtree(tmp)
        mine = out / f"plan.json.tmp{os.getpid()}"
        mine.write_text(json.dumps(plan, indent=2) + "\n")
        try:
            os.link(mine, path)                  # create-if-absent, atomic
        except FileExistsError:
            pass
        finally:
            mine.unlink()
    there = json.loads(path.read_text())
    if "format" not in there:
        raise CorpusFormatError(rebuild_hint(out))
    saved = read_config(tok_dir)
    if there != plan or saved != {"name": tokenizer.name, "config": plan["config"]}:
        raise ValueError(f"{out}: holds a corpus made with other settings ({path}); "
                         "choose a new --out or delete it")


def _items(job: dict, reader: Reader) -> Iterator[tuple[str, str, Any]]:
    """(corpus split, name for messages, a call returning (name, media)) for every item of a job."""
    if "refs" in job:
        for ref in job["refs"]:
            yield job["split"], str(ref), functools.partial(reader.read, job["split"], ref)
        return
    for key, where, media in reader.stream(*job["stream"]):
        split = job["split"] or ("val" if hash_fraction(key) < job["val_fraction"] else "train")
        yield split, where, lambda w=where, m=media: (w, m)


_WORKER: dict = {}


def _run_job(job: dict) -> dict:
    """Tokenize one job's items (a video: its clips) into its shards, then write its record."""
    key = (job["out"], json.dumps(job["source"]))
    if _WORKER.get("key") != key:
        _WORKER.update(key=key, tok=load_tokenizer(Path(job["out"]) / "tokenizer"),
                       reader=Reader(Source(**job["source"])))
    tok, reader, out = _WORKER["tok"], _WORKER["reader"], Path(job["out"])
    dtype = ids_dtype(tok.vocab_size)
    shards: dict[str, list] = {s: [] for s in SPLITS}
    skipped: dict[str, list] = {s: [] for s in SPLITS}
    pending: dict[str, list] = {s: [] for s in SPLITS}

    def flush(split: str) -> None:
        name = f"shard-{job['index']:05d}-{len(shards[split]):03d}.safetensors"
        shards[split].append(asdict(write_shard(out / split / name, pending[split], tok.vocab_size)))
        pending[split] = []

    items, src = 0, reader.src
    for split, name, read in _items(job, reader):
        items += 1
        try:
            name, media = read()
            clips = src.clips(media, name) if src.clip_frames else [media]
            seqs = [tok.encode(clip, f"{name}[clip {k}]" if src.clip_frames else name).ids.astype(dtype)
                    for k, clip in enumerate(clips)]
        except Exception as e:    # a bad file is skipped with its reason, never aborts the run
            skipped[split].append([name, f"{type(e).__name__}: {e}".splitlines()[0][:300]])
            continue
        for ids in seqs:
            pending[split].append(ids)
            if len(pending[split]) == job["shard_size"]:
                flush(split)
    for split in SPLITS:
        if pending[split]:
            flush(split)
    record = {"job": job["index"], "items": items, "shards": shards, "skipped": skipped}
    write_json_atomic(_record(out, job["index"]), record)
    return record


def prepare(src: Source, out: str | os.PathLike, tokenizer: Tokenizer, train_crops: int = 8000,
            val_crops: int = 512, val_fraction: float = 0.05, shard_size: int = 1000,
            workers: int | None = None, progress: bool = True, *, part: int = 0, parts: int = 1
            ) -> dict | None:
    """Tokenize this process's part of `src` into the corpus directory `out`; resumes a killed run.

    Returns the corpus index (what corpus.json holds) when every part's jobs are done, else None
    (the last part to finish, or `merge(out)`, writes it).
    """
    if not 0 <= part < parts:
        raise ValueError(f"part={part}, parts={parts}: expected 0 <= part < parts")
    _check_clips(src, tokenizer)
    out = Path(out)
    for d in ("jobs", *SPLITS):
        (out / d).mkdir(parents=True, exist_ok=True)
    jobs = plan_jobs(src, train_crops, val_crops, val_fraction, shard_size)
    plan = json.loads(json.dumps({
        "format": FORMAT, "source": asdict(src), "tokenizer": tokenizer.name,
        "config": asdict(tokenizer.config), "shard_size": shard_size, "jobs": len(jobs),
        "plan": hashlib.sha256(json.dumps(jobs).encode()).hexdigest()}))
    _claim(out, tokenizer, plan)
    common = {"out": str(out), "source": asdict(src), "shard_size": shard_size}
    todo = [{**j, **common} for j in jobs
            if j["index"] % parts == part and not _record(out, j["index"]).is_file()]
    workers = min(workers or os.cpu_count() or 1, max(1, len(todo)))
    total = None if src.streaming else sum(len(j["refs"]) for j in todo)
    bar = tqdm(total=total, unit="video" if src.clip_frames else "img", desc=f"tokenize {part + 1}/{parts}",
               disable=not progress or None)
    ctx = mp.get_context("spawn" if sys.platform == "darwin" else "fork")
    with ctx.Pool(workers) if workers > 1 else _Serial() as pool:
        for record in pool.imap_unordered(_run_job, todo):
            for split, items in record["skipped"].items():
                for name, why in items:
                    log.warning("skipped %s: %s", name, why)
            bar.update(record["items"])
    bar.close()
    missing = [j["index"] for j in jobs if not _record(out, j["index"]).is_file()]
    if missing:
        log.info("part %d of %d done; %d jobs of other parts unfinished: the last part (or --merge) "
                 "writes %s", part, parts, len(missing), out / "corpus.json")
        return None
    return merge(out)


def _check_clips(src: Source, tokenizer: Tokenizer) -> None:
    """A video source goes with a video tokenizer that holds its clips, an image source with an image one."""
    max_frames = getattr(tokenizer.config, "max_frames", 0)
    if bool(src.clip_frames) != bool(max_frames):
        raise ValueError(f"clip_frames={src.clip_frames} with the {tokenizer.name!r} tokenizer: clips of "
                         "videos need a video tokenizer (--video_mode or a saved one), images an image one")
    if src.clip_frames > max_frames:
        raise ValueError(f"clip_frames={src.clip_frames}: expected at most the tokenizer's "
                         f"max_frames={max_frames}")
    if src.clip_frames and src.frame_step != tokenizer.config.frame_step:
        raise ValueError(f"frame_step={src.frame_step}: the tokenizer's is {tokenizer.config.frame_step}")


class _Serial:
    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def imap_unordered(self, fn, jobs):
        return map(fn, jobs)


def merge(out: str | os.PathLike) -> dict:
    """Write corpus.json over every job's shards, in job order; FileNotFoundError if a job is unfinished."""
    out = Path(out)
    if not (out / "plan.json").is_file():
        raise FileNotFoundError(f"{out}: no plan.json (not a corpus being prepared)")
    n = json.loads((out / "plan.json").read_text())["jobs"]
    missing = [j for j in range(n) if not _record(out, j).is_file()]
    if missing:
        raise FileNotFoundError(f"{out}: {len(missing)} of {n} jobs unfinished (jobs {missing[:8]}...); "
                                "rerun the parts that own them (job j is part j % parts)")
    shards: dict[str, list[ShardInfo]] = {s: [] for s in SPLITS}
    skipped: dict[str, list] = {s: [] for s in SPLITS}
    for j in range(n):
        record = json.loads(_record(out, j).read_text())
        for split in SPLITS:
            shards[split] += [ShardInfo(**s) for s in record["shards"][split]]
            skipped[split] += record["skipped"][split]
    source = json.loads((out / "plan.json").read_text())["source"]
    return write_index(out, load_tokenizer(out / "tokenizer"), shards, source, skipped)


def part_from_env(env: dict | None = None) -> tuple[int, int]:
    """(part, parts) of this process: torchrun's RANK / WORLD_SIZE, a SLURM job array's task id and
    count, else (0, 1)."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"])
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        first = int(env.get("SLURM_ARRAY_TASK_MIN", 0))
        return int(env["SLURM_ARRAY_TASK_ID"]) - first, int(env["SLURM_ARRAY_TASK_COUNT"])
    return 0, 1


def summary(manifest: dict) -> str:
    what = "clips" if (manifest.get("source") or {}).get("clip_frames") else "images"
    lines = [f"{'split':6} {what:>8} {'tokens':>11} {'tok/seq':>8} {'skipped':>8}"]
    for name, d in manifest["splits"].items():
        per = d["tokens"] / max(1, d["sequences"])
        lines.append(f"{name:6} {d['sequences']:8d} {d['tokens']:11d} {per:8.1f} {len(d['skipped']):8d}")
    nbytes, tokens = manifest["bytes"], sum(d["tokens"] for d in manifest["splits"].values())
    lines.append(f"shards on disk: {nbytes / 1e6:.1f} MB ({nbytes / max(1, tokens):.2f} "
                 f"bytes/token, {manifest['dtype']} ids); vocab {manifest['vocab_size']}")
    for name, d in manifest["splits"].items():
        for file, why in d["skipped"][:10]:
            lines.append(f"skipped ({name}) {file}: {why}")
    return "\n".join(lines)


@dataclass(frozen=True)
class PrepareConfig:
    """Tokenize a corpus: the source, the tokenizer, the split, and this process's part of the work."""

    source: str                   # "embedded", "pans", a folder of images or videos, a saved dataset, hf:NAME
    out: str = ""                 # corpus directory to write (or resume); in a training recipe: data_dir
    tokenizer: str = ""           # a saved tokenizer directory; then quality, subsampling, order are unused
    quality: int = 25             # JPEG quality the images are encoded at
    size: tuple[int, int] = (64, 64)  # (height, width) images are fitted to; the embedded crops' size
    subsampling: str = "4:2:0"    # chroma subsampling: "4:4:4", "4:2:2", "4:2:0" or "gray"
    order: str = "raster"         # block order: "raster" or "coarse_to_fine"
    train_crops: int = 8000       # embedded source: train crops (pans: train pans)
    val_crops: int = 512          # embedded source: val crops (pans: val pans)
    val_fraction: float = 0.05    # other sources: share of images hashed into val (at least one of 2+)
    image_column: str = ""        # datasets: the image (video) column ("" = found from the features)
    streaming: bool = False       # datasets: read as a stream (streaming=True), one job per input shard
    shard_size: int = 1000        # images (clips) per shard file
    video_mode: str = ""          # "intra", "delta" or "motion": a new video tokenizer; items are videos
    clip_frames: int = 0          # video: frames per clip (0 = the tokenizer's max_frames; 16 when new)
    clip_stride: int = 0          # video: frames from one clip's start to the next (0 = clip_frames)
    clips_per_file: int = 0       # video: clips from each video, from its start (0 = all)
    workers: int = 0              # tokenizing processes; 0 = one per CPU core (shared by local parts)
    seed: int = 0                 # embedded source: which crops (pans: which pans)
    part: int = 0                 # this process's part of the work, 0..parts-1
    parts: int = 0                # processes sharing the work; 0 = torchrun's or a SLURM array's, else 1
    merge: bool = False           # only write corpus.json over the finished parts (same command + --merge)

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction={self.val_fraction}: expected 0 <= val_fraction < 1")
        if self.video_mode not in ("", *MODES):
            raise ValueError(f"video_mode={self.video_mode!r}: expected one of {MODES} or '' (images)")
        for name in ("train_crops", "val_crops", "workers", "seed", "part", "parts", "clip_frames",
                     "clip_stride", "clips_per_file"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)}: expected >= 0")
        if self.shard_size < 1:
            raise ValueError(f"shard_size={self.shard_size}: expected >= 1")
        if self.parts and self.part >= self.parts:
            raise ValueError(f"part={self.part}: expected 0..parts-1 = 0..{self.parts - 1}")


def source_of(cfg: PrepareConfig, size: tuple[int, int], tokenizer: Tokenizer | None = None) -> Source:
    """The Source `cfg.source` names; crops of the embedded photos are `size`; a video tokenizer
    makes it a source of clips."""
    column = cfg.image_column or None
    max_frames = getattr(getattr(tokenizer, "config", None), "max_frames", 0)
    if cfg.source == "embedded":
        return Source("embedded", crop_size=tuple(size), seed=cfg.seed)
    if cfg.clip_frames and not max_frames:
        raise ValueError(f"clip_frames={cfg.clip_frames}: needs a video tokenizer "
                         "(--video_mode or a saved one)")
    clips = {"clip_frames": cfg.clip_frames or max_frames, "clip_stride": cfg.clip_stride,
             "clips_per_file": cfg.clips_per_file, "frame_step": tokenizer.config.frame_step
             } if max_frames else {}
    if cfg.source == "pans":
        return Source("pans", crop_size=tuple(size), seed=cfg.seed, **clips)
    if cfg.source.startswith("hf:"):
        return Source("hf", cfg.source, column, streaming=cfg.streaming, **clips)
    p = Path(cfg.source)
    if not p.is_dir():
        raise FileNotFoundError(f"source={cfg.source!r}: no such folder (expected \"embedded\", \"pans\", a "
                                "folder of images or videos, a saved dataset or hf:NAME)")
    is_hf = any((p / f).is_file() for f in ("dataset_dict.json", "state.json")) or \
        any(p.rglob("*.parquet")) or any(p.rglob("*.arrow"))
    return Source("hf" if is_hf else "folder", str(p), column, streaming=cfg.streaming, **clips)


def main(cfg: PrepareConfig) -> dict | None:
    """Tokenize this process's part of `cfg.source` into `cfg.out`; returns the corpus manifest
    (corpus.json) once every part is done, else None."""
    from tokenizer.jpeg.tokenizer import JpegDctConfig, JpegDctTokenizer
    from tokenizer.video.tokenizer import VideoConfig, VideoTokenizer

    if not cfg.out:
        raise ValueError("out: expected the corpus directory to write, e.g. --out=data/mine")
    if cfg.merge:
        return merge(cfg.out)
    if cfg.tokenizer:
        tok = load_tokenizer(cfg.tokenizer)
    elif cfg.video_mode:
        tok = VideoTokenizer(VideoConfig(mode=cfg.video_mode, quality=cfg.quality, size=cfg.size,
                                         subsampling=cfg.subsampling, order=cfg.order, delta_order=cfg.order,
                                         max_frames=cfg.clip_frames or 16))
    else:
        tok = JpegDctTokenizer(JpegDctConfig(quality=cfg.quality, size=cfg.size, subsampling=cfg.subsampling,
                                             order=cfg.order))
    part, parts = (cfg.part, cfg.parts) if cfg.parts else part_from_env()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", 1)) if not cfg.parts else 1
    workers = cfg.workers or max(1, (os.cpu_count() or 1) // local)
    src = source_of(cfg, tok.size or cfg.size, tok)
    return prepare(src, cfg.out, tok, cfg.train_crops, cfg.val_crops, cfg.val_fraction, cfg.shard_size,
                   workers, progress=sys.stderr.isatty(), part=part, parts=parts)


def cli(argv: list[str] | None = None) -> dict | None:
    manifest = run(main, PrepareConfig, argv)
    print(summary(manifest) if manifest else "this part is done; the last part to finish (or the same "
          "command with --merge) writes corpus.json")
    return manifest

if __name__ == "__main__":
    cli()
