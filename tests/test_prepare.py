"""Corpus tokenization: sources, shards, skipping bad files, resuming after a kill."""

import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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


def test_resume_after_kill_equals_uninterrupted(tmp_path):
    args = ["--source", "embedded", "--size", "32", "32", "--train_crops", "60", "--val_crops", "4",
            "--shard_size", "4", "--workers", "1"]
    cli(args + ["--out", str(tmp_path / "clean")])
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "tokenizer.corpus.prepare", *args, "--out", str(out)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and len(list((out / "train").glob("*.safetensors"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = len(list((out / "train").glob("*.safetensors")))
    assert 2 <= finished < 15 and not (out / "corpus.json").exists()
    cli(args + ["--out", str(out)])
    a, b = Corpus(tmp_path / "clean").split("train"), Corpus(out).split("train")
    assert len(a) == len(b) == 60 and all(a[i] == b[i] for i in range(len(a)))


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
        assert all(s[i].ids[0] == s[i].ids[0] == JpegDctTokenizer().bos_id for i in range(len(s)))
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
