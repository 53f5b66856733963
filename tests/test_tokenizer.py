"""JPEG-DCT tokenizer: exact round trips on the wheel photos, exact ids, vocabulary, save/load.

Coefficients and tables are compared against libjpeg's own reading of the JPEGs (jpeg_reference),
bit for bit.
"""

import io
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from jpeg_reference import (
    JPEG_PHOTOS,
    PHOTOS,
    photo_pixels,
    pil_pixels,
    pil_tables,
    reference,
    to_natural,
    zigzag,
)
from PIL import Image

from tokenizer import (
    Coefficients,
    JpegDctConfig,
    JpegDctTokenizer,
    TokenizerError,
    TokenSequence,
    load_tokenizer,
)
from tokenizer.jpeg.codec import decode_coefficients, encode_batch, encode_coefficients
from tokenizer.jpeg.grammar import accepts
from tokenizer.jpeg.io import SUBSAMPLINGS, ZIGZAG, block_grid

ORDERS = ("raster", "coarse_to_fine")
SIZES = [(64, 64), (37, 53), (1, 1), (8, 200), (130, 17)]
FACTORS = {"gray": [(1, 1)], "4:4:4": [(1, 1)] * 3, "4:2:0": [(2, 2), (1, 1), (1, 1)],
           "4:2:2": [(2, 1), (1, 1), (1, 1)], "4:4:0": [(1, 2), (1, 1), (1, 1)]}


def tok_for(**kw) -> JpegDctTokenizer:
    return JpegDctTokenizer(JpegDctConfig(**kw))


def assert_coefficients_equal(a: Coefficients, b: Coefficients) -> None:
    """Field by field (not Coefficients.__eq__, which is code under test)."""
    assert (a.height, a.width, a.subsampling) == (b.height, b.width, b.subsampling)
    assert len(a.blocks) == len(b.blocks)
    for x, y in zip(a.blocks, b.blocks):
        assert x.dtype == y.dtype == np.int16 and x.shape == y.shape
        assert np.array_equal(x, y), f"{np.sum(x != y)} coefficients differ"
    assert np.array_equal(np.asarray(a.qtables), np.asarray(b.qtables))


def assert_round_trip(tok: JpegDctTokenizer, media, expect_size=None) -> TokenSequence:
    """encode -> decode gives a JPEG whose coefficients and tables equal the prepared JPEG's."""
    prepared = tok.to_jpeg(media)
    ref = reference(prepared)
    seq = tok.encode(media)
    assert seq.ids.dtype == np.int32 and seq.positions.shape == (len(seq), 5)
    assert seq.ids.min() >= 0 and seq.ids.max() < tok.vocab_size
    assert seq.ids[0] == tok.bos_id and seq.ids[-1] == tok.eos_id
    assert np.sum(seq.ids == tok.eos_id) == 1 and np.sum(seq.ids == tok.bos_id) == 1
    jpeg = tok.decode(seq)
    reference(jpeg).assert_equal(ref, "decode(encode(x)) vs the prepared JPEG")
    # the tokenizer's own coefficient view agrees with libjpeg's (zigzag order, tables)
    coef = tok.coefficients(media)
    assert [to_natural(b).tolist() for b in coef.blocks] == [b.tolist() for b in ref.blocks]
    assert np.array_equal(to_natural(coef.qtables), np.stack(ref.tables))
    assert_coefficients_equal(tok.decode_coefficients(seq), coef)
    # same coefficients, same libjpeg: same pixels
    assert np.array_equal(pil_pixels(jpeg), pil_pixels(prepared))
    if expect_size is not None:
        assert ref.size == expect_size
    return seq


def test_zigzag_is_jpeg_zigzag():
    assert np.array_equal(ZIGZAG, zigzag())


# -- round trips on the wheel photos ------------------------------------------------------------------

@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("subsampling", ["4:2:0", "4:4:4", "gray", "4:2:2", "4:4:0"])
@pytest.mark.parametrize("quality", [10, 25, 50])
@pytest.mark.parametrize("size", SIZES)
def test_round_trip_photos(order, subsampling, quality, size):
    names = sorted(PHOTOS)
    name = names[(SIZES.index(size) * 3 + quality + len(subsampling)) % len(names)]
    tok = tok_for(quality=quality, size=size, subsampling=subsampling, order=order)
    seq = assert_round_trip(tok, photo_pixels(name), expect_size=size)
    ref = reference(tok.decode(seq))
    assert ref.factors == FACTORS[subsampling]
    expected = pil_tables(quality, gray=subsampling == "gray")    # libjpeg's tables at this quality
    assert [t.tolist() for t in ref.tables] == [t.tolist() for t in expected]
    v = tok.vocab
    h, w = size
    assert seq.ids[:7].tolist() == [v.bos, v.sub + list(SUBSAMPLINGS).index(subsampling), v.byte + (h >> 8),
                                    v.byte + (h & 255), v.byte + (w >> 8), v.byte + (w & 255),
                                    v.quality + quality - 1]


@pytest.mark.parametrize("name", ["astronaut", "coffee", "camera"])
@pytest.mark.parametrize("order", ORDERS)
def test_round_trip_full_size(name, order):
    """size=None keeps the photo's own size (coffee is 400x600, not a multiple of 16 in height)."""
    tok = tok_for(quality=25, size=None, order=order, subsampling="gray" if name == "camera" else "4:2:0")
    h, w = Image.open(PHOTOS[name]).size[::-1]
    assert_round_trip(tok, PHOTOS[name], expect_size=(h, w))


@pytest.mark.parametrize("media_kind", ["path", "bytes", "pil", "array"])
def test_every_input_kind_gives_the_same_tokens(media_kind):
    path = PHOTOS["chelsea"]
    media = {"path": path, "bytes": path.read_bytes(), "pil": Image.open(path),
             "array": photo_pixels("chelsea")}[media_kind]
    tok = tok_for(quality=25, size=(40, 56))
    assert tok.encode(media) == tok.encode(photo_pixels("chelsea"))


# -- quality=None: a JPEG's own coefficients and tables, bit for bit -----------------------------------

def _jpeg(name: str, size=(96, 120), **save) -> bytes:
    buf = io.BytesIO()
    im = Image.fromarray(photo_pixels(name)[:size[0], :size[1]])
    if save.pop("gray", False):
        im = im.convert("L")
    im.save(buf, "JPEG", **save)
    return buf.getvalue()


CUSTOM_TABLES = [list(range(1, 65)), [255 - k for k in range(64)]]
KEPT_JPEGS = {
    "420-q75": lambda: _jpeg("astronaut", quality=75),
    "444-q90": lambda: _jpeg("coffee", quality=90, subsampling=0),
    "422-q40": lambda: _jpeg("chelsea", quality=40, subsampling=1),
    "gray-q60": lambda: _jpeg("camera", quality=60, gray=True),
    "progressive": lambda: _jpeg("astronaut", quality=50, progressive=True),
    "custom-tables": lambda: _jpeg("coffee", qtables=CUSTOM_TABLES),
    "odd-size-17x5": lambda: _jpeg("chelsea", size=(17, 5), quality=30),
    "1x1": lambda: _jpeg("chelsea", size=(1, 1), quality=95),
}


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("kind", sorted(KEPT_JPEGS))
def test_quality_none_keeps_jpeg_exactly(kind, order):
    data = KEPT_JPEGS[kind]()
    tok = tok_for(quality=None, size=None, order=order)
    assert tok.to_jpeg(data) == data
    seq = assert_round_trip(tok, data)
    reference(tok.decode(seq)).assert_equal(reference(data), kind)
    custom = kind == "custom-tables"
    assert (seq.ids[6] == tok.vocab.qt_custom) == custom
    if custom:   # the tables travel as bytes in the header
        assert seq.ids[7:7 + 64].tolist() == [tok.vocab.byte + t for t in np.array(CUSTOM_TABLES[0])[ZIGZAG]]


@pytest.mark.parametrize("name", JPEG_PHOTOS)
def test_quality_none_keeps_wheel_jpegs(name, tmp_path):
    tok = tok_for(quality=None, size=None)
    jpeg = tok.decode(tok.encode(PHOTOS[name]))
    reference(jpeg).assert_equal(reference(PHOTOS[name]), name)


def test_jpeg_already_at_the_target_is_used_as_is():
    tok = tok_for(quality=25, size=(48, 64))
    data = tok.to_jpeg(photo_pixels("coffee"))
    assert tok.to_jpeg(data) == data
    other = tok_for(quality=26, size=(48, 64)).to_jpeg(data)   # another quality re-encodes
    assert other != data and reference(other).tables[0].tolist() == pil_tables(26, False)[0].tolist()
    assert reference(tok_for(quality=25, size=(48, 64), subsampling="4:4:4").to_jpeg(data)).factors == \
        FACTORS["4:4:4"]


def test_quality_none_refuses_what_it_cannot_keep():
    tok = tok_for(quality=None, size=(32, 32))
    with pytest.raises(TokenizerError, match="quality=None"):
        tok.encode(KEPT_JPEGS["420-q75"]())            # 96x120, not 32x32
    with pytest.raises(TokenizerError, match="not a JPEG"):
        tok_for(quality=None, size=None).encode(PHOTOS["astronaut"])


# -- exact ids of a hand-built block ------------------------------------------------------------------

def _one_block(**values) -> Coefficients:
    blk = np.zeros((1, 1, 64), np.int16)
    for k, v in values.items():
        blk[0, 0, int(k[1:])] = v
    from tokenizer.jpeg.io import standard_qtables
    return Coefficients(8, 8, "gray", (blk,), standard_qtables(50, 1).copy())


def test_exact_ids_raster():
    tok = tok_for(order="raster")
    v = tok.vocab
    coef = _one_block(z0=5, z1=3, z20=-40, z63=1)
    seq = tok.encode_coefficients(coef)
    s = v.ac_stride
    expect = [v.bos, v.sub + 0, v.byte, v.byte + 8, v.byte, v.byte + 8, v.quality + 49,
              v.dc + 64 + 5,                       # DC difference 5
              v.ac + 0 * s + 2,                    # run 0, +3
              v.zrl, v.ac + 2 * s + 33, v.byte + 0, v.byte + 23,   # 18 zeros: ZRL, run 2, escape -(17+23)
              v.zrl, v.zrl, v.ac + 10 * s + 0,     # 42 zeros: ZRL ZRL, run 10, +1
              v.eob, v.eos]
    assert seq.ids.tolist() == expect
    assert seq.positions[7:, 4].tolist() == [0, 1, 17, 20, 20, 20, 36, 52, 63, 64, 7]
    assert seq.positions[7:-1, 1].tolist() == [1] * 10
    assert_coefficients_equal(tok.decode_coefficients(seq), coef)


def test_exact_ids_coarse_to_fine():
    tok = tok_for(order="coarse_to_fine")          # bands (1, 6, 15, 28, 64)
    v = tok.vocab
    seq = tok.encode_coefficients(_one_block(z0=-70, z1=3, z20=-40, z63=1))
    s = v.ac_stride
    expect = [v.dc + 2 * 64 + 2, v.byte, v.byte + 5,   # DC -70: escape -, 70 - 65 = 5
              v.ac + 2, v.eob,                         # band 1..5
              v.skip + 0,                              # band 6..14 empty: SKIP(1)
              v.ac + 5 * s + 33, v.byte, v.byte + 23, v.eob,   # band 15..27: run 5, -40
              v.zrl, v.zrl, v.ac + 3 * s + 0, v.eob,   # band 28..63: 35 zeros, +1
              v.eos]
    assert seq.ids[7:].tolist() == expect


def test_coarse_to_fine_puts_every_dc_first_and_raster_keeps_blocks_together():
    px = photo_pixels("astronaut")[:40, :56]
    for order in ORDERS:
        seq = tok_for(order=order, size=None).encode(px)
        body = seq.positions[7:-1]
        n_blocks = sum(r * c for r, c in block_grid(40, 56, "4:2:0"))
        dc = body[:, 4] == 0
        assert dc.sum() == n_blocks
        if order == "coarse_to_fine":
            assert dc[:n_blocks].all()
        else:   # each block's tokens are one run: a new (component, row, col) starts only at its DC
            key = body[:, 1] * 10**6 + body[:, 2] * 1000 + body[:, 3]
            assert np.array_equal(np.flatnonzero(np.diff(key) != 0) + 1, np.flatnonzero(dc)[1:])


# -- coefficients drawn by hypothesis -----------------------------------------------------------------

INT16 = st.one_of(st.integers(-32768, 32767), st.sampled_from([-32768, 32767, -65, 65, -64, 64, -17, 17,
                                                                -16, 16, -1, 1]), st.just(0), st.just(0))


@st.composite
def coefficient_sets(draw, values=INT16, dc_values=None):
    sub = draw(st.sampled_from(sorted(SUBSAMPLINGS)))
    h, w = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    blocks = []
    for rows, cols in block_grid(h, w, sub):
        b = draw(arrays(np.int16, (rows, cols, 64), elements=values))
        if dc_values is not None:
            b[:, :, 0] = draw(arrays(np.int16, (rows, cols), elements=dc_values))
        blocks.append(b)
    n = len(blocks)
    if draw(st.booleans()):
        from tokenizer.jpeg.io import standard_qtables
        qt = standard_qtables(draw(st.integers(1, 100)), n).copy()
    else:
        qt = draw(arrays(np.uint16, (n, 64), elements=st.integers(1, 255)))
    return Coefficients(h, w, sub, tuple(blocks), qt)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(coef=coefficient_sets(), order=st.sampled_from(ORDERS),
       ranges=st.sampled_from([(64, 16, 64), (1, 1, 1), (1024, 1024, 3)]))
def test_any_int16_coefficients_survive_tokens(coef, order, ranges):
    tok = tok_for(order=order, dc_range=ranges[0], ac_range=ranges[1], max_skip=ranges[2])
    seq = tok.encode_coefficients(coef)
    assert seq.ids.min() >= 0 and seq.ids.max() < tok.vocab_size
    assert_coefficients_equal(tok.decode_coefficients(seq), coef)
    assert_coefficients_equal(decode_coefficients(tok.vocab, seq, order, tok.config.bands),
                              coef)


WRITABLE_AC = st.one_of(st.integers(-1023, 1023), st.sampled_from([-1023, 1023, -17, 17]), st.just(0),
                        st.just(0), st.just(0))
WRITABLE_DC = st.one_of(st.integers(-1024, 1023), st.sampled_from([-1024, 1023]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(coef=coefficient_sets(values=WRITABLE_AC, dc_values=WRITABLE_DC), order=st.sampled_from(ORDERS))
def test_writable_coefficients_survive_jpeg_bytes(coef, order):
    """Coefficients 8-bit JPEG can hold: tokens -> JPEG file -> libjpeg reads them back exactly,
    the grammar accepts the stream at the encoder's positions, and re-tokenizing the file is stable."""
    tok = tok_for(order=order)
    seq = encode_coefficients(tok.vocab, coef, order, tok.config.bands)
    g = tok.grammar()
    assert np.array_equal(np.stack([g.push(t) for t in seq.ids]), seq.positions) and g.done
    jpeg = tok.decode(seq)
    ref = reference(jpeg)
    assert [b.tolist() for b in ref.blocks] == [to_natural(b).tolist() for b in coef.blocks]
    assert [t.tolist() for t in ref.tables] == [to_natural(t).tolist() for t in coef.qtables]
    assert tok_for(order=order, quality=None, size=None).encode(jpeg) == seq


# -- save / load, vocabulary, config ------------------------------------------------------------------

@pytest.mark.parametrize("cfg", [
    JpegDctConfig(),
    JpegDctConfig(quality=None, size=None, subsampling="4:4:4", order="coarse_to_fine"),
    JpegDctConfig(quality=10, size=(24, 40), subsampling="gray", resize="stretch", bands=(1, 3, 64),
                  dc_range=16, ac_range=4, max_skip=8, max_pixels=10_000),
])
def test_save_load_same_config_and_ids(cfg, tmp_path):
    tok = JpegDctTokenizer(cfg)
    tok.save(tmp_path)
    assert json.loads((tmp_path / "tokenizer.json").read_text())["name"] == "jpeg_dct"
    back = load_tokenizer(tmp_path)
    assert type(back) is JpegDctTokenizer and back.config == cfg and back.vocab_size == tok.vocab_size
    media = KEPT_JPEGS["420-q75"]() if cfg.quality is None else photo_pixels("coffee")[:90, :100]
    assert back.encode(media) == tok.encode(media)


def test_load_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(tmp_path / "nowhere")


def _ranges(v):
    """(name, first id, count) of every id range, in id order."""
    return [("pad", v.pad, 1), ("bos", v.bos, 1), ("eos", v.eos, 1), ("sub", v.sub, len(SUBSAMPLINGS)),
            ("quality", v.quality, 100), ("qt_custom", v.qt_custom, 1), ("byte", v.byte, 256),
            ("dc", v.dc, 2 * v.dc_range + 3), ("ac", v.ac, 16 * v.ac_stride), ("zrl", v.zrl, 1),
            ("eob", v.eob, 1), ("skip", v.skip, v.max_skip)]


@pytest.mark.parametrize("kw", [{}, {"dc_range": 1, "ac_range": 1, "max_skip": 1},
                                {"dc_range": 1024, "ac_range": 300, "max_skip": 1024}])
def test_vocab_ranges_are_distinct_and_cover_the_vocabulary(kw):
    tok = tok_for(**kw)
    v = tok.vocab
    r = _ranges(v)
    assert r[0][1] == 0
    for (_, a, n), (name, b, _) in zip(r, r[1:]):
        assert a + n == b, f"range {name} does not follow the previous one"
    assert r[-1][1] + r[-1][2] == tok.vocab_size == v.size
    assert v.ac_stride == 2 * v.ac_range + 2
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)


def test_default_vocab_size_is_small():
    # 3 specials + 5 layouts + 100 qualities + QT_CUSTOM + 256 bytes + 131 DC + 16*34 AC + ZRL + EOB + 64 SKIP
    assert tok_for().vocab_size == 1106


def test_encoded_ids_fall_in_their_ranges():
    tok = tok_for(order="coarse_to_fine", size=(48, 48))
    v = tok.vocab
    seq = tok.encode(photo_pixels("astronaut"))
    body = seq.ids[7:-1]
    assert ((body >= v.dc) | ((body >= v.byte) & (body < v.byte + 256))).all()
    assert (body < v.size).all()
    name_of = {}
    for name, a, n in _ranges(v):
        name_of.update({i: name for i in range(a, a + n)})
    kinds = {name_of[int(t)] for t in body}
    assert {"dc", "ac", "eob"} <= kinds <= {"dc", "ac", "eob", "zrl", "skip", "byte"}
    assert {name_of[int(t)] for t in seq.ids[:7]} == {"bos", "sub", "byte", "quality"}


@pytest.mark.parametrize("bad", [dict(quality=0), dict(quality=101), dict(quality=2.5), dict(size=(0, 8)),
                                 dict(size=(8,)), dict(size=(70000, 8)), dict(subsampling="4:1:1"),
                                 dict(order="zigzag"), dict(resize="pad"), dict(bands=(1, 64, 30)),
                                 dict(bands=(0, 64)), dict(dc_range=0), dict(max_skip=5000)])
def test_config_rejects_bad_values_naming_them(bad):
    (key, value), = bad.items()
    with pytest.raises(ValueError, match=key):
        JpegDctConfig(**bad)


def test_header_prompt_matches_encoded_header():
    tok = tok_for(quality=25, size=(37, 53))
    seq = tok.encode(photo_pixels("chelsea"))
    assert tok.header(37, 53, quality=25) == seq[:7]
    assert accepts(tok.grammar(), seq.ids)


@pytest.mark.parametrize("order", ORDERS)
def test_encode_batch_equals_one_by_one(order):
    """Mixed sizes and layouts in one batch (gray next to color; 1x1; SKIP runs at image edges)."""
    inputs = [(photo_pixels("astronaut")[100:140, 200:224], "4:2:0"),
              (photo_pixels("camera")[:1, :1], "gray"), (photo_pixels("coffee")[50:66, :72], "4:4:4"),
              (np.zeros((32, 32, 3), np.uint8), "4:2:0"), (photo_pixels("chelsea")[:64, :48], "4:2:0")]
    coefs, singles = [], []
    for px, sub in inputs:
        tok = JpegDctTokenizer(JpegDctConfig(quality=25, size=None, subsampling=sub, order=order))
        px = np.ascontiguousarray(px)
        coefs.append(tok.coefficients(px))
        singles.append(tok.encode(px))
    batch = encode_batch(tok.vocab, coefs, order, tok.config.bands)
    assert len(batch) == len(singles)
    for b, s in zip(batch, singles):
        assert b == s
    tok = JpegDctTokenizer(JpegDctConfig(quality=25, size=(32, 32), order=order))
    pixels = [np.ascontiguousarray(px) for px, sub in inputs if sub == "4:2:0"]
    assert tok.encode_batch(pixels) == [tok.encode(px) for px in pixels]
