"""Video corpora through the prepare command: a folder of videos cut into clips (MJPEG packets kept as
the JPEGs they are, H.264 decoded), a broken file skipped and named, two parts make the corpus one
process makes, a killed run resumes, Hugging Face datasets with a Video column."""

import io
import logging
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tokenizer.corpus.prepare as prepare_module
from tokenizer.corpus.clips import pans
from tokenizer.corpus.prepare import Source, cli, prepare
from tokenizer.corpus.shards import Corpus
from tokenizer.jpeg.io import read_coefficients
from tokenizer.video.io import clip_windows, read_video, write_mjpeg
from tokenizer.video.tokenizer import VideoConfig, VideoTokenizer

av = pytest.importorskip("av")
from test_corpus_parts import _files, _parts  # noqa: E402  (the parts helpers, shared)
from test_prepare import KILLED_RUN  # noqa: E402
from test_video import write_clip  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIZE = (32, 32)


def _jpegs(frames: list[np.ndarray]) -> list[bytes]:
    """Frames as JPEG files at quality 25, 4:2:0: what the corpus's tokenizer keeps as they are."""
    out = []
    for f in frames:
        buf = io.BytesIO()
        Image.fromarray(f).save(buf, format="JPEG", quality=25)
        out.append(buf.getvalue())
    return out


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """a.avi (MJPEG, 7 frames: 2 clips of 3), broken.mp4, c.mp4 (H.264, 4 frames: 1 clip),
    sub/b.avi (MJPEG, 5 frames: 1 clip), notes.txt (not a video). Frames: pans over the photos."""
    d = tmp_path_factory.mktemp("videos")
    (d / "sub").mkdir()
    a, b = pans("train", 2, 7, SIZE, seed=3)
    write_mjpeg(_jpegs(a), d / "a.avi")
    write_mjpeg(_jpegs(b[:5]), d / "sub" / "b.avi")
    write_clip(d / "c.mp4", "libx264", "yuv420p", next(pans("val", 1, 4, SIZE)))
    (d / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    (d / "notes.txt").write_text("ignored: not a video extension")
    return d


def _tok() -> VideoTokenizer:
    return VideoTokenizer(VideoConfig(mode="delta", quality=25, size=SIZE, max_frames=3))


def _expected(videos: Path, tok: VideoTokenizer) -> list[list]:
    """Each clip's frames' coefficients, in corpus order (files sorted, clips from each file's start)."""
    packets = {n: read_video(videos / n, 99) for n in ("a.avi", "sub/b.avi")}
    mjpeg = [read_coefficients(j) for j in packets["a.avi"][0:3]], \
        [read_coefficients(j) for j in packets["a.avi"][3:6]], \
        [read_coefficients(j) for j in packets["sub/b.avi"][0:3]]
    return [mjpeg[0], mjpeg[1], tok.frames(read_video(videos / "c.mp4", 3)), mjpeg[2]]


ARGS = ["--video_mode", "delta", "--quality", "25", "--size", "32", "32", "--clip_frames", "3",
        "--val_fraction", "0", "--workers", "1"]


def test_clip_windows_cut_frames_by_length_stride_and_limit(videos):
    assert list(clip_windows(range(10), 3, 3)) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert list(clip_windows(range(8), 3, 2)) == [[0, 1, 2], [2, 3, 4], [4, 5, 6]]
    assert list(clip_windows(range(12), 2, 5)) == [[0, 1], [5, 6], [10, 11]]
    assert list(clip_windows(range(10), 3, 1, limit=2)) == [[0, 1, 2], [1, 2, 3]]
    assert list(clip_windows(range(2), 3, 3)) == []
    # with frame_step 2, a clip of 2 frames spans 3 and a stride of 3 clip frames is 6 file frames
    src = Source("folder", str(videos), clip_frames=2, clip_stride=3, frame_step=2)
    assert list(src.clips(videos / "a.avi", "a.avi")) == [read_video(videos / "a.avi", 3)]
    with pytest.raises(ValueError, match="clip_frames"):
        Source("embedded", clip_frames=3)


def test_a_folder_of_videos_becomes_clips_that_decode_to_their_frames(videos, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="tokenizer.corpus.prepare"):
        m = cli(["--source", str(videos), "--out", str(tmp_path / "out"), "--shard_size", "3", *ARGS])
    assert m["source"]["clip_frames"] == 3 and m["tokenizer"] == "video_dct"
    train = Corpus(tmp_path / "out").split("train")
    tok = Corpus(tmp_path / "out").tokenizer()
    assert tok.config == _tok().config and len(train) == 4 and len(train.paths) == 2
    # MJPEG packets are the frames as they are; H.264 frames are the tokenizer's JPEGs of them
    assert [tok.decode_frames(train[i]) for i in range(4)] == _expected(videos, tok)
    assert train[2] == tok.encode(videos / "c.mp4")
    [skipped] = m["splits"]["train"]["skipped"]
    assert skipped[0].endswith("broken.mp4") and "TokenizerError" in skipped[1]
    assert "broken.mp4" in caplog.text


def test_a_video_shorter_than_a_clip_is_skipped_and_strides_overlap_clips(videos, tmp_path, capsys):
    src = Source("folder", str(videos), clip_frames=5, clip_stride=2, clips_per_file=3)
    tok = VideoTokenizer(VideoConfig(mode="intra", quality=25, size=SIZE, max_frames=5))
    m = prepare(src, tmp_path, tok, val_fraction=0.0, workers=1, progress=False)
    train = Corpus(tmp_path).split("train")
    packets = read_video(videos / "a.avi", 99)
    # a.avi: frames 0-4 and 2-6 (a third would need 9 frames); sub/b.avi: frames 0-4; c.mp4 too short
    assert len(train) == 3
    for i, start in enumerate((0, 2)):
        assert tok.decode_frames(train[i]) == [read_coefficients(j) for j in packets[start:start + 5]]
    assert sorted(Path(s[0]).name for s in m["splits"]["train"]["skipped"]) == ["broken.mp4", "c.mp4"]
    with pytest.raises(ValueError, match="max_frames=5"):
        prepare(Source("folder", str(videos), clip_frames=6), tmp_path / "x", tok, workers=1, progress=False)
    with pytest.raises(SystemExit):           # one line on stderr, exit status 2
        cli(["--source", str(videos), "--out", str(tmp_path / "y"), "--clip_frames", "3"])
    assert "clip_frames=3: needs a video tokenizer" in capsys.readouterr().err


def test_two_parts_make_the_video_corpus_one_process_makes(videos, tmp_path):
    args = ["--source", str(videos), "--shard_size", "1", *ARGS]
    cli(args + ["--out", str(tmp_path / "one")])
    _parts(args, tmp_path / "two", 2)
    one, two = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert len(one) == 5 and one == two                 # 4 shards of one clip + corpus.json


def test_a_killed_video_run_resumes_without_rewriting_finished_shards(videos, tmp_path, monkeypatch):
    """Killed at its 3rd shard write (c.mp4's clip): a.avi's two shards and the broken file's record
    are finished; the rerun writes only c.mp4's and sub/b.avi's shards."""
    args = ["--source", str(videos), "--shard_size", "1", *ARGS]
    cli(args + ["--out", str(tmp_path / "clean")])
    out = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", KILLED_RUN.format(kill_at=3), *args, "--out", str(out)],
                          cwd=ROOT, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    finished = sorted(out.glob("train/*.safetensors"))
    assert [p.name for p in finished] == ["shard-00000-000.safetensors", "shard-00000-001.safetensors"]
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in finished}
    writes = []
    write = prepare_module.write_shard
    monkeypatch.setattr(prepare_module, "write_shard", lambda *a, **k: writes.append(a[0]) or write(*a, **k))
    cli(args + ["--out", str(out)])
    assert len(writes) == 2
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in finished} == before
    assert _files(tmp_path / "clean") == _files(out)


@pytest.mark.parametrize("layout", ["save_to_disk", "parquet_streaming", "videofolder"])
def test_hugging_face_video_column(videos, tmp_path, layout):
    datasets = pytest.importorskip("datasets")
    if not hasattr(datasets, "Video"):
        pytest.skip("this datasets has no Video feature")
    names = ["a.avi", "c.mp4", "sub/b.avi", "broken.mp4"]
    movies = [{"bytes": (videos / n).read_bytes(), "path": None} for n in names]
    ds = datasets.Dataset.from_dict(
        {"label": list(range(4)), "movie": movies},
        features=datasets.Features({"label": datasets.Value("int64"), "movie": datasets.Video()}))
    source = str(tmp_path / "ds")
    if layout == "videofolder":        # datasets' own loader of a folder of videos: hf:FOLDER
        source = f"hf:{videos}"
    elif layout == "save_to_disk":
        splits = {"train": ds.select([0, 1, 3]), "test": ds.select([2])}
        datasets.DatasetDict(splits).save_to_disk(tmp_path / "ds")
    else:
        (tmp_path / "ds").mkdir()
        ds.to_parquet(tmp_path / "ds" / "data.parquet")
    args = ["--source", source, "--out", str(tmp_path / "out"), *ARGS]
    m = cli(args + (["--streaming"] if layout == "parquet_streaming" else []))
    tok = _tok()
    expected = _expected(videos, tok)
    corpus = Corpus(tmp_path / "out")
    train = corpus.split("train")
    if layout == "save_to_disk":       # the dataset's test split is val
        assert [tok.decode_frames(train[i]) for i in range(len(train))] == expected[:3]
        assert tok.decode_frames(corpus.split("val")[0]) == expected[3]
    elif layout == "parquet_streaming":
        assert [tok.decode_frames(train[i]) for i in range(len(train))] == expected
    else:                              # the folder's rows in the loader's order
        clips = [tok.decode_frames(train[i]) for i in range(len(train))]
        assert len(clips) == 4 and all(c in clips for c in expected)
    [skipped] = [s for d in m["splits"].values() for s in d["skipped"]]
    assert "TokenizerError" in skipped[1]
    if layout != "videofolder":            # the broken row, named
        assert skipped[0].endswith("[2]" if layout == "save_to_disk" else "[3]")
