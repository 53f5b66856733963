"""Tokenization as N parts: two processes make the corpus one process makes, a killed part resumes
without redoing finished jobs, and streaming Hugging Face sources are read shard by shard."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from tokenizer import JpegDctConfig, JpegDctTokenizer
from tokenizer.corpus.embedded import crops
from tokenizer.corpus.prepare import Source, cli, merge, part_from_env, prepare
from tokenizer.corpus.shards import Corpus

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = ["--source", "embedded", "--size", "32", "32", "--train_crops", "30", "--val_crops", "6",
            "--shard_size", "3", "--workers", "1"]


def _files(d: Path) -> dict[str, bytes]:
    """Every shard and the index, by path relative to the corpus (job records and plan excluded)."""
    paths = [p for p in d.rglob("*.safetensors")] + [d / "corpus.json"]
    return {str(p.relative_to(d)): p.read_bytes() for p in paths}


def _parts(args: list[str], out: Path, n: int, env_style: bool = False) -> None:
    """Run `n` parts of the prepare command at once, as separate processes."""
    procs = []
    for i in range(n):
        extra, env = (["--part", str(i), "--parts", str(n)], dict(os.environ))
        if env_style:       # as torchrun would start them
            extra, env = [], {**os.environ, "RANK": str(i), "WORLD_SIZE": str(n)}
        cmd = [sys.executable, "-m", "tokenizer.corpus.prepare", *args, "--out", str(out), *extra]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE))
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]


def test_two_processes_make_the_corpus_one_process_makes(tmp_path):
    cli(EMBEDDED + ["--out", str(tmp_path / "one")])
    _parts(EMBEDDED, tmp_path / "two", 2)
    one, two = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert len(one) == 13 and one == two                 # 12 shards + corpus.json, byte for byte
    train = Corpus(tmp_path / "two").split("train")
    tok = JpegDctTokenizer(JpegDctConfig(quality=25, size=(32, 32)))
    assert [train[i] for i in (0, 29)] == [tok.encode(c.pixels) for c in crops("train", 30, (32, 32))][::29]


def _killed_part(args: list[str], out: Path) -> None:
    """Start part 1 of 2 and SIGKILL it once it has finished two jobs."""
    proc = subprocess.Popen([sys.executable, "-m", "tokenizer.corpus.prepare", *args, "--out", str(out),
                             "--part", "1", "--parts", "2"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    before, deadline = len(list((out / "jobs").glob("*.json"))), time.time() + 120
    while time.time() < deadline and len(list((out / "jobs").glob("*.json"))) < before + 2:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_a_killed_part_loses_nothing_finished_and_resumes(tmp_path):
    args = EMBEDDED[:-2] + ["--workers", "1", "--train_crops", "80"]
    out = tmp_path / "two"
    tok = JpegDctTokenizer(JpegDctConfig(quality=25, size=(32, 32)))
    src = Source("embedded", crop_size=(32, 32))
    assert prepare(src, out, tok, 80, 6, shard_size=3, workers=1, progress=False, part=0, parts=2) is None
    with pytest.raises(FileNotFoundError, match=r"jobs unfinished .*part j % parts"):
        merge(out)
    _killed_part(args, out)
    records = sorted((out / "jobs").glob("*.json"))
    assert 15 + 2 <= len(records) < 29 and not (out / "corpus.json").exists()    # killed mid-way
    finished = [*records, *[out / split / s["file"] for r in records
                            for split, infos in json.loads(r.read_text())["shards"].items() for s in infos]]
    finished = {p: p.stat().st_mtime_ns for p in finished}
    assert cli(args + ["--out", str(out), "--part", "1", "--parts", "2"]) is not None   # the last part
    for p, mtime in finished.items():
        assert p.stat().st_mtime_ns == mtime, f"{p} was redone"              # finished jobs kept
    cli(args + ["--out", str(tmp_path / "one")])
    assert _files(out) == _files(tmp_path / "one")
    assert merge(out) == Corpus(out).meta                                    # --merge: same index


def test_parts_come_from_torchrun_or_a_slurm_array():
    assert part_from_env({}) == (0, 1)
    assert part_from_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}) == (3, 8)
    assert part_from_env({"SLURM_ARRAY_TASK_ID": "11", "SLURM_ARRAY_TASK_MIN": "10",
                          "SLURM_ARRAY_TASK_COUNT": "4"}) == (1, 4)
    with pytest.raises(ValueError, match="part=2, parts=2"):
        prepare(Source("embedded"), "unused", JpegDctTokenizer(), part=2, parts=2)


def _jpeg(px) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photos():
    return [c.pixels for c in crops("val", 10, (40, 48), seed=4)]


def _dataset(photos, tmp_path: Path, layout: str) -> str:
    """The photos as a local Hugging Face dataset: parquet files, save_to_disk output or imagefolder."""
    datasets = pytest.importorskip("datasets")
    if layout == "imagefolder":
        for i, px in enumerate(photos):
            Image.fromarray(px).save(tmp_path / f"{i:02d}.png")
        return f"hf:{tmp_path}"
    ds = datasets.Dataset.from_dict({"picture": [{"bytes": _jpeg(px), "path": None} for px in photos]},
                                    features=datasets.Features({"picture": datasets.Image()}))
    if layout == "save_to_disk":
        ds.save_to_disk(tmp_path / "ds")
        return str(tmp_path / "ds")
    (tmp_path / "pq").mkdir()
    for k, rows in enumerate([range(0, 4), range(4, 7), range(7, 10)]):     # three input shards
        ds.select(rows).to_parquet(tmp_path / "pq" / f"part-{k}.parquet")
    return str(tmp_path / "pq")


@pytest.mark.parametrize("layout", ["parquet", "save_to_disk", "imagefolder"])
def test_streaming_sources_tokenize_every_image(photos, tmp_path, layout):
    src = Source("hf", _dataset(photos, tmp_path, layout), streaming=True)
    tok = JpegDctTokenizer(JpegDctConfig(quality=25, size=(32, 32)))
    m = prepare(src, tmp_path / "out", tok, val_fraction=0.3, shard_size=2, workers=1, progress=False)
    corpus = Corpus(tmp_path / "out")
    got = sorted(tuple(s[i].ids) for s in map(corpus.split, ("train", "val")) for i in range(len(s)))
    media = [_jpeg(px) for px in photos] if layout != "imagefolder" else photos
    assert got == sorted(tuple(tok.encode(x).ids) for x in media)
    assert m["splits"]["val"]["sequences"] >= 1 and m["splits"]["train"]["sequences"] >= 1
    if layout == "parquet":                     # one job per input shard, shards of at most 2 images
        assert len(list((tmp_path / "out" / "jobs").glob("*.json"))) == 3
        assert max(s["sequences"] for d in m["splits"].values() for s in d["shards"]) == 2


def test_two_torchrun_ranks_stream_the_corpus_one_process_makes(photos, tmp_path):
    args = ["--source", _dataset(photos, tmp_path, "parquet"), "--streaming", "--size", "32", "32",
            "--shard_size", "2", "--workers", "1", "--val_fraction", "0.3"]
    cli(args + ["--out", str(tmp_path / "one")])
    _parts(args, tmp_path / "two", 2, env_style=True)
    assert _files(tmp_path / "one") == _files(tmp_path / "two")
