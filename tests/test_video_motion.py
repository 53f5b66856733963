"""Motion-aware delta frames and coarse-to-fine delta order: lossless round trips of every mode x order
on real clips and camera pans, the encoder finds a known whole-block shift, grammar walks decode and
re-encode to the same ids, old modes keep their ids."""

import numpy as np
import pytest

from tokenizer import load_tokenizer
from tokenizer.corpus.clips import pans
from tokenizer.corpus.embedded import load_photo
from tokenizer.jpeg.format import block_layout
from tokenizer.jpeg.io import read_coefficients
from tokenizer.video.delta import DeltaGrammar, encode_delta, motion_reference
from tokenizer.video.io import read_video, real_clip
from tokenizer.video.tokenizer import VideoConfig, VideoTokenizer

pytest.importorskip("av")

MODES_ORDERS = [(m, o) for m in ("intra", "delta", "motion") for o in ("raster", "coarse_to_fine")]


def config(mode: str, order: str, **kw) -> VideoConfig:
    return VideoConfig(mode=mode, order=order, delta_order=order, **kw)


def block_pan(step: tuple[int, int], n: int = 5, height: int = 48, width: int = 64) -> list[np.ndarray]:
    """A camera moving `step` pixels (down, right) per frame over a photo."""
    photo = load_photo("skimage:astronaut.png")
    return [np.ascontiguousarray(photo[100 + step[0] * f:100 + step[0] * f + height,
                                       200 + step[1] * f:200 + step[1] * f + width]) for f in range(n)]


def round_trip(tok: VideoTokenizer, media) -> tuple[list, object]:
    coefs = tok.frames(media)
    seq = tok.encode_frames(coefs)
    assert seq.ids.min() >= 0 and seq.ids.max() < tok.vocab_size
    assert tok.decode_frames(seq) == coefs                          # lossless, every frame
    assert [read_coefficients(j) for j in tok.decode(seq)] == coefs
    g = tok.grammar()
    rows = np.array([g.push(int(t)) for t in seq.ids])
    assert g.done and np.array_equal(rows, seq.positions)           # grammar accepts, same positions
    return coefs, seq


def vectors(tok: VideoTokenizer, seq) -> list[tuple[int, int]]:
    at = np.flatnonzero(seq.ids == tok.frame_d)
    r = tok.config.motion_range
    return [(int(seq.ids[i + 1]) - tok.mv_y - r, int(seq.ids[i + 2]) - tok.mv_x - r) for i in at]


@pytest.mark.parametrize("mode,order", MODES_ORDERS)
def test_every_mode_and_order_lossless_on_real_clips_and_pans(mode, order):
    tok = VideoTokenizer(config(mode, order, quality=50, size=(32, 48), max_frames=4))
    for media in [real_clip("bikes.mp4"), real_clip("carphone_pristine.mp4"),
                  *pans("val", 2, 4, (32, 48)), block_pan((16, -8), 4)]:
        coefs, seq = round_trip(tok, media)
        kinds = seq.ids[np.isin(seq.ids, [tok.frame_i, tok.frame_d])].tolist()
        assert kinds == [tok.frame_i] + [tok.frame_i if mode == "intra" else tok.frame_d] * 3


@pytest.mark.parametrize("subsampling,step,vector", [("4:2:0", (16, -8), (-2, 1)),
                                                     ("4:4:4", (-8, 16), (1, -2)), ("4:2:0", (0, 0), (0, 0))])
@pytest.mark.parametrize("order", ["raster", "coarse_to_fine"])
def test_motion_encoder_finds_the_pan(subsampling, step, vector, order):
    """The window moves `step` px per frame, so the content moves -step: whole blocks of 8 px."""
    frames = block_pan(step)
    motion = VideoTokenizer(config("motion", order, quality=50, size=None, subsampling=subsampling))
    delta = VideoTokenizer(config("delta", order, quality=50, size=None, subsampling=subsampling))
    _, seq = round_trip(motion, frames)
    assert vectors(motion, seq) == [vector] * 4
    per, plain = np.bincount(seq.positions[:, 0]), np.bincount(delta.encode(frames).positions[:, 0])
    if vector != (0, 0):
        assert per[1:].sum() < 0.7 * plain[1:].sum()                  # the moved reference pays
    else:
        assert np.array_equal(per[1:], plain[1:] + 2)                  # still: plain delta + MV_Y MV_X


def test_motion_reference_moves_blocks_and_keeps_edges():
    layout = block_layout(32, 32, "4:2:0", "coarse_to_fine", (1, 6, 15, 28, 64))
    prev = np.arange(layout.n_blocks * 64).reshape(-1, 64)
    ref = motion_reference(layout, prev, -2, 1)
    luma = layout.comp == 0
    grid = ref[luma].reshape(4, 4, 64)[:, :, 0] // 64                 # source block of each luma block
    assert grid.tolist() == [[0, 8, 9, 10], [4, 12, 13, 14], [8, 9, 10, 11], [12, 13, 14, 15]]
    chroma = ref[layout.comp == 1][:, 0] // 64                        # chroma: dy -1, dx 0 (truncated)
    assert chroma.tolist() == [18, 19, 18, 19]


@pytest.mark.parametrize("order", ["raster", "coarse_to_fine"])
def test_delta_units_are_skipped_per_pass_and_never_code_nothing(order):
    """A still frame is SKIP runs that end at each pass; a DC unit is never DC(0), an empty band
    never EOB (both are SKIPs), while a raster block may start with DC(0)."""
    tok = VideoTokenizer(config("delta", order, quality=50, size=None))
    v, frames = tok.vocab, block_pan((0, 0), 2)                      # 48x64 4:2:0: 72 blocks
    seq = tok.encode(frames)
    body = seq.ids[np.flatnonzero(seq.ids == tok.frame_d)[0] + 1:-1].tolist()
    passes = 1 if order == "raster" else 5
    assert body == [v.skip + 63, v.skip + 7] * passes
    layout = block_layout(48, 64, "4:2:0", order, tok.config.bands)
    g = DeltaGrammar(v, layout, np.zeros((layout.n_blocks, 64), np.int64), 1)
    assert g.allowed()[v.dc + v.dc_range] == (order == "raster") and g.allowed()[v.skip]
    if order == "coarse_to_fine":
        g.push(v.skip + 63)
        g.push(v.skip + 7)                                           # the DC pass, all skipped
        assert not g.allowed()[v.eob] and g.allowed()[v.ac] and g.allowed()[v.skip]
        g.push(v.ac)                                                  # AC(run 0, +1) at frequency 1
        assert g.allowed()[v.eob] and not g.allowed()[v.skip]


def walk(tok: VideoTokenizer, seed: int) -> list[int]:
    """A stream sampled uniformly from the grammar's masks after a 16x16 header."""
    rng = np.random.default_rng(seed)
    h = tok.header(16, 16)
    g, ids = tok.grammar(h), h.ids.tolist()
    while not g.done:
        m = g.allowed()
        if m[tok.eos_id] and m.sum() > 1 and len(ids) < 1500:        # prefer continuing the clip
            m = m.copy()
            m[tok.eos_id] = False
        t = int(rng.choice(np.flatnonzero(m)))
        g.push(t)
        ids.append(t)
    return ids


@pytest.mark.parametrize("mode,order", [("delta", "coarse_to_fine"), ("motion", "raster"),
                                        ("motion", "coarse_to_fine")])
def test_grammar_walks_decode_and_reencode_to_the_same_ids(mode, order):
    """Every walked delta body is the encoder's body of its frame given the walked reference (the
    frame kinds are the walk's choice: the clip grammar allows FRAME_I or FRAME_D at any frame)."""
    tok = VideoTokenizer(config(mode, order, quality=50, size=(16, 16), max_frames=4, motion_range=1))
    layout = block_layout(16, 16, "4:2:0", order, tok.config.bands)
    n_delta = 0
    for seed in range(3):
        ids = walk(tok, seed)
        g = tok.grammar()
        for t in ids:
            g.push(t)
        frames = g.frames
        assert tok.decode_frames(tok.encode_frames(frames)) == frames
        for jpeg in tok.decode(tok.encode_frames(frames)):
            assert read_coefficients(jpeg).height == 16
        starts = [i for i, t in enumerate(ids) if t in (tok.frame_i, tok.frame_d, tok.qt_new)]
        kinds = [i for i in starts if ids[i] != tok.qt_new]
        ends = [min([j for j in starts if j > i] + [len(ids) - 1]) for i in kinds]
        for f, (a, b) in enumerate(zip(kinds, ends)):
            if ids[a] != tok.frame_d:
                continue
            ref, body = layout.gather(frames[f - 1]), ids[a + 1:b]
            if mode == "motion":
                dy, dx = body[0] - tok.mv_y - 1, body[1] - tok.mv_x - 1
                ref, body = motion_reference(layout, ref, dy, dx), body[2:]
            assert encode_delta(tok.vocab, layout, ref, layout.gather(frames[f]), f)[0] == body
            n_delta += 1
    assert n_delta >= 4


def test_old_modes_keep_their_ids_motion_ids_appended_and_config_checked(tmp_path):
    delta = VideoTokenizer(VideoConfig(mode="delta"))
    motion = VideoTokenizer(VideoConfig(mode="motion", motion_range=2))
    assert delta.vocab_size == delta.qt_new + 1
    assert (motion.frame_i, motion.qt_new) == (delta.frame_i, delta.qt_new)
    assert (motion.mv_y, motion.mv_x, motion.vocab_size) == (delta.vocab_size, delta.vocab_size + 5,
                                                             delta.vocab_size + 10)
    tok = VideoTokenizer(config("motion", "coarse_to_fine", quality=40, size=(32, 32), max_frames=3))
    tok.save(tmp_path / "tok")
    again = load_tokenizer(tmp_path / "tok")
    clip = read_video(real_clip("bikes.mp4"), 3)
    assert again.config == tok.config and again.encode(clip) == tok.encode(clip)
    with pytest.raises(ValueError, match="delta_order='zigzag'"):
        VideoConfig(delta_order="zigzag")
    with pytest.raises(ValueError, match="motion_range=0"):
        VideoConfig(mode="motion", motion_range=0)
