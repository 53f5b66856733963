"""Video tokenizer: lossless in both modes on clips PyAV writes (MJPEG as is, H.264 re-encoded),
grammar walks, sparse deltas of still frames, table changes, save/load, odd MJPEG sampling factors."""

import io

import numpy as np
import pytest
from PIL import Image

from tokenizer import TokenizerError, TokenSequence, load_tokenizer
from tokenizer.corpus.embedded import load_photo
from tokenizer.jpeg.io import read_coefficients
from tokenizer.video.io import (
    equivalent_subsampling,
    filmstrip,
    read_frame,
    read_video,
    write_mjpeg,
)
from tokenizer.video.tokenizer import VideoConfig, VideoTokenizer

av = pytest.importorskip("av")

# A camera that holds, pans 4 pixels down, holds again: still frames and one moving frame.
SHIFTS = [0, 0, 0, 4, 4, 4]


def pan_frames(height: int = 48, width: int = 64) -> list[np.ndarray]:
    photo = load_photo("skimage:astronaut.png")
    return [np.ascontiguousarray(photo[100 + s:100 + s + height, 150:150 + width]) for s in SHIFTS]


def write_clip(path, codec: str, pix_fmt: str, frames: list[np.ndarray], options: dict | None = None) -> None:
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=10)
        s.height, s.width = frames[0].shape[:2]
        s.pix_fmt = pix_fmt
        s.codec_context.options = options or {}
        for img in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    frames = pan_frames()
    write_clip(d / "fixed.avi", "mjpeg", "yuvj420p", frames, {"qmin": "4", "qmax": "4"})
    write_clip(d / "ratecontrol.avi", "mjpeg", "yuvj420p", frames)           # tables change per frame
    write_clip(d / "422.avi", "mjpeg", "yuvj422p", frames, {"qmin": "4", "qmax": "4"})
    write_clip(d / "h264.mp4", "libx264", "yuv420p", frames)
    return d


def check_round_trip(tok: VideoTokenizer, media) -> list:
    coefs = tok.frames(media)
    seq = tok.encode_frames(coefs)
    assert seq.ids.min() >= 0 and seq.ids.max() < tok.vocab_size
    assert tok.decode_frames(seq) == coefs                         # lossless, every frame
    assert [read_coefficients(j) for j in tok.decode(seq)] == coefs
    g = tok.grammar()
    rows = np.array([g.push(int(t)) for t in seq.ids])
    assert g.done and np.array_equal(rows, seq.positions)          # grammar accepts, same positions
    assert np.array_equal(np.unique(seq.positions[:, 0]), np.arange(len(coefs)))
    return coefs, seq


def tokens_per_frame(seq) -> list[int]:
    return np.bincount(seq.positions[:, 0]).tolist()


@pytest.mark.parametrize("mode", ["intra", "delta"])
def test_mjpeg_read_as_is_lossless(clips, mode):
    tok = VideoTokenizer(VideoConfig(mode=mode, quality=None, size=None))
    coefs, seq = check_round_trip(tok, clips / "fixed.avi")
    packets = read_video(clips / "fixed.avi", 99)
    assert len(coefs) == len(packets) == 6
    assert all(b"\xff\xd0" in p for p in packets)                   # FFmpeg wrote restart markers
    assert coefs == [read_coefficients(p) for p in packets]          # no re-encode
    per = tokens_per_frame(seq)
    if mode == "delta":
        assert per[1] == per[2] == per[4] <= 4                        # still frames: FRAME_D + SKIPs
        assert per[3] > 100
    else:
        assert min(per) > 100


@pytest.mark.parametrize("mode", ["intra", "delta"])
def test_h264_frames_encoded_at_quality_lossless(clips, mode):
    tok = VideoTokenizer(VideoConfig(mode=mode, quality=50, size=(48, 64)))
    coefs, seq = check_round_trip(tok, clips / "h264.mp4")
    assert len(coefs) == 6 and coefs[0].qtables.tolist() == coefs[5].qtables.tolist()
    if mode == "delta":
        assert sum(tokens_per_frame(seq)[1:3]) < 0.2 * tokens_per_frame(seq)[0]


def test_table_changes_and_odd_sampling_factors(clips):
    tok = VideoTokenizer(VideoConfig(mode="delta", quality=None, size=None))
    coefs, seq = check_round_trip(tok, clips / "ratecontrol.avi")
    assert (seq.ids == tok.qt_new).sum() >= 1                        # per-frame tables are carried
    packets = read_video(clips / "422.avi", 99)
    assert b"\xff\xc0" in packets[0]
    coefs, _ = check_round_trip(tok, clips / "422.avi")
    assert coefs[0].subsampling == "4:2:2" and coefs == [read_frame(p, "p") for p in packets]
    assert equivalent_subsampling(((1, 2, 2), (2, 1, 2), (3, 1, 2))) == "4:2:2"
    assert equivalent_subsampling(((1, 1, 2), (2, 1, 2), (3, 1, 2))) == "4:4:4"
    assert equivalent_subsampling(((1, 4, 1), (2, 1, 1), (3, 1, 1))) is None   # 4:1:1 has no name here


def test_list_of_frames_keyframes_save_load_and_mjpeg_out(tmp_path):
    frames = pan_frames()
    tok = VideoTokenizer(VideoConfig(mode="delta", quality=30, size=(32, 32), keyframe_interval=3,
                                     order="coarse_to_fine", max_frames=5))
    coefs, seq = check_round_trip(tok, frames)
    assert len(coefs) == 5 and (seq.ids == tok.frame_i).sum() == 2 and (seq.ids == tok.frame_d).sum() == 3
    tok.save(tmp_path / "tok")
    again = load_tokenizer(tmp_path / "tok")
    assert isinstance(again, VideoTokenizer) and again.config == tok.config and again.encode(frames) == seq
    jpegs = tok.decode(seq)
    write_mjpeg(jpegs, tmp_path / "out.avi")
    assert [read_coefficients(p) for p in read_video(tmp_path / "out.avi", 99)] == coefs
    assert filmstrip(jpegs).size == (5 * 34 + 2, 36)


def test_grammar_bounds_prompts_and_errors():
    frames = pan_frames()
    tok = VideoTokenizer(VideoConfig(mode="delta", quality=50, size=(32, 32), max_frames=3))
    seq = tok.encode(frames)
    assert len(np.unique(seq.positions[:, 0])) == 3                   # max_frames frames taken
    g = tok.grammar(seq[:-1])
    allowed = g.allowed()
    assert allowed[tok.eos_id] and not allowed[tok.frame_i] and not allowed[tok.frame_d]   # 3 = max
    prompt = tok.prompt(frames, 2)
    assert np.array_equal(prompt.ids, seq.ids[:len(prompt)]) and prompt.positions[-1, 0] == 1
    g = tok.grammar(prompt)
    assert g.allowed()[tok.frame_d] and g.allowed()[tok.frame_i] and not g.allowed()[tok.eos_id + 3]
    h = tok.header(32, 32)
    g = tok.grammar(h)
    assert not g.allowed()[tok.eos_id] and g.allowed().sum() > 10     # inside frame 0's body
    with pytest.raises(TokenizerError, match="not allowed"):
        tok.grammar(h).push(tok.frame_d)
    with pytest.raises(TokenizerError, match="ends before its EOS"):
        tok.decode_frames(seq[:-1])
    with pytest.raises(ValueError, match="mode='both'"):
        VideoConfig(mode="both")


def test_random_walk_of_the_grammar_decodes():
    """Streams sampled uniformly from the grammar's masks (after a 16x16 header) decode to valid JPEGs
    of the frames the grammar read, and re-encode losslessly."""
    tok = VideoTokenizer(VideoConfig(mode="delta", quality=50, size=(16, 16), max_frames=3))
    rng = np.random.default_rng(0)
    header = tok.header(16, 16)
    for trial in range(3):
        g, ids, rows = tok.grammar(header), [], []
        while not g.done:
            m = g.allowed()
            if m[tok.eos_id] and m.sum() > 1 and len(ids) < 2000:      # prefer continuing the clip
                m = m.copy()
                m[tok.eos_id] = False
            t = int(rng.choice(np.flatnonzero(m)))
            rows.append(g.push(t))
            ids.append(t)
        walk = TokenSequence.concat([header, TokenSequence(np.array(ids), np.array(rows))])
        frames = tok.decode_frames(walk)                                # the walk itself, decoded
        assert len(frames) == 3 and frames == g.frames
        jpegs = tok.decode(walk)
        assert [read_coefficients(j) for j in jpegs] == frames          # valid JPEGs of those frames
        for j in jpegs:
            Image.open(io.BytesIO(j)).load()
        again = tok.encode_frames(frames)                               # re-encoded: the same frames
        assert tok.decode_frames(again) == frames
        g2 = tok.grammar()
        assert np.array_equal([g2.push(int(t)) for t in again.ids], again.positions) and g2.done


@pytest.fixture(scope="module")
def video_corpus(tmp_path_factory):
    from tokenizer.corpus.clips import pans, write_corpus

    d = tmp_path_factory.mktemp("video_corpus")
    tok = VideoTokenizer(VideoConfig(mode="delta", quality=50, size=(16, 16), max_frames=3))
    clips = {"train": list(pans("train", 6, 3, (16, 16))), "val": list(pans("val", 2, 3, (16, 16)))}
    write_corpus(d, tok, clips)
    return d, tok, clips


def test_video_corpus_of_camera_pans(video_corpus):
    from tokenizer.corpus.shards import Corpus

    d, tok, clips = video_corpus
    corpus = Corpus(d)
    assert corpus.tokenizer().config == tok.config and len(corpus.split("train")) == 6
    assert corpus.split("train")[0] == tok.encode(clips["train"][0])
    assert corpus.split("val")[0].positions[:, 0].max() == 2              # frame index 0..2


def test_train_main_runs_on_video_tokens(video_corpus, tmp_path):
    import train as train_py
    from dctgpt.config import TrainConfig
    from dctgpt.model import GPTConfig

    d, tok, _ = video_corpus
    cfg = TrainConfig(data_dir=str(d), out_dir=str(tmp_path / "run"), batch_size=2, max_iters=2,
                      eval_interval=2, eval_iters=1, warmup_iters=1, num_threads=1,
                      model=GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=64))
    result = train_py.main(cfg)
    assert sorted(result.train_loss) == [0, 1]


def test_sample_continues_a_clip(video_corpus, tmp_path):
    import sample
    import train as train_py
    from dctgpt.config import TrainConfig
    from dctgpt.model import GPTConfig

    d, tok, clips = video_corpus
    train_py.main(TrainConfig(data_dir=str(d), out_dir=str(tmp_path / "run"), batch_size=2, max_iters=2,
                              eval_interval=2, eval_iters=1, warmup_iters=1, num_threads=1,
                              model=GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=64)))
    write_clip(tmp_path / "prefix.avi", "mjpeg", "yuvj420p", [c for c in clips["val"][0]])
    paths = sample.main(sample.SampleConfig(out_dir=str(tmp_path / "run"), num_samples=4, batch_size=4,
                                            prefix_clip=str(tmp_path / "prefix.avi"), prefix_frames=2))
    source = tok.frames(tmp_path / "prefix.avi")
    assert len(source) == 3 and source[2] not in source[:2]             # the clip moves
    third = []
    for p in paths:
        frames = [read_coefficients(f) for f in read_video(p, 99)]
        assert p.suffix == ".avi" and frames[:2] == source[:2]            # the prefix frames, unchanged
        assert len(frames) in (2, 3) and all((f.height, f.width) == (16, 16) for f in frames)
        third += frames[2:]
    # after two frames the grammar allows the end (a 2-frame clip) or a third frame (max_frames=3):
    # some streams must go on with a sampled frame, not the clip's own third frame
    assert third and any(f != source[2] for f in third)
    assert (tmp_path / "run" / "samples" / "001" / "grid.png").is_file()   # each run: a new folder
