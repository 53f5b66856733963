"""The vectorized codec (tokenizer.jpeg.codec) against its plain twin (tokenizer.jpeg.reference):
the same ids and positions, token for token, and each decodes the other's streams, on crops of the
embedded photos and on hypothesis-drawn extreme coefficients."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tokenizer import Coefficients, JpegDctConfig, JpegDctTokenizer, TokenizerError, TokenSequence
from tokenizer.corpus.embedded import crops, photo_path
from tokenizer.jpeg import codec, reference
from tokenizer.jpeg.format import Vocab
from tokenizer.jpeg.io import SUBSAMPLINGS, block_grid, standard_qtables

ORDERS = ("raster", "coarse_to_fine")
SIZES = [(64, 64), (37, 53), (96, 128), (8, 200), (1, 1)]
QUALITIES = (10, 50, 95)


def assert_same_stream(fast: TokenSequence, plain: TokenSequence, what: str) -> None:
    """Equal ids and positions; on a difference, name the first token that differs."""
    n = min(len(fast), len(plain))
    same = (fast.ids[:n] == plain.ids[:n]) & (fast.positions[:n] == plain.positions[:n]).all(1)
    differ = np.flatnonzero(~same)
    if len(differ):
        i = int(differ[0])
        pytest.fail(f"{what}: token {i} differs: codec {fast.ids[i]} at {fast.positions[i].tolist()}, "
                    f"reference {plain.ids[i]} at {plain.positions[i].tolist()}")
    assert len(fast) == len(plain), f"{what}: codec gives {len(fast)} tokens, reference {len(plain)}"


def assert_same_coefficients(a: Coefficients, b: Coefficients, what: str) -> None:
    assert (a.height, a.width, a.subsampling) == (b.height, b.width, b.subsampling), what
    assert len(a.blocks) == len(b.blocks), what
    for c, (x, y) in enumerate(zip(a.blocks, b.blocks)):
        assert x.dtype == y.dtype == np.int16 and np.array_equal(x, y), f"{what}: component {c} differs"
    assert np.array_equal(np.asarray(a.qtables), np.asarray(b.qtables)), f"{what}: tables differ"


def assert_twins(vocab: Vocab, coefs: list[Coefficients], order: str, bands: tuple[int, ...]) -> None:
    """encode_batch over all of them, encode_coefficients of each, and both decoders, against the
    reference, one image at a time."""
    batch = codec.encode_batch(vocab, coefs, order, bands)
    for i, coef in enumerate(coefs):
        what = f"image {i} ({coef.width}x{coef.height} {coef.subsampling}, {order})"
        plain = reference.encode_coefficients(vocab, coef, order, bands)
        assert_same_stream(batch[i], plain, what + " in a batch")
        assert_same_stream(codec.encode_coefficients(vocab, coef, order, bands), plain, what)
        assert_same_coefficients(codec.decode_coefficients(vocab, plain, order, bands), coef, what)
        assert_same_coefficients(reference.decode_coefficients(vocab, batch[i], order, bands), coef, what)


# -- real photos ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("subsampling", sorted(SUBSAMPLINGS))
def test_codec_equals_reference_on_photo_crops(subsampling, order):
    """Crops at every size and quality; all of them in one batch (mixed sizes)."""
    coefs = []
    for i, size in enumerate(SIZES):
        crop = next(crops("val" if i % 2 else "train", i + 1, size, start=i))
        for q in QUALITIES:
            tok = JpegDctTokenizer(JpegDctConfig(quality=q, size=size, subsampling=subsampling, order=order))
            coefs.append(tok.coefficients(crop.pixels, crop.name))
    assert {len(c.blocks) for c in coefs} == {1 if subsampling == "gray" else 3}
    assert_twins(tok.vocab, coefs, order, tok.config.bands)


@pytest.mark.parametrize("order", ORDERS)
def test_codec_equals_reference_on_a_whole_jpeg_with_its_own_tables(order):
    """rocket.jpg as it is (640x427 4:4:4, its own tables: a QT_CUSTOM header), with narrow ranges
    so escapes (and SKIP runs) are everywhere."""
    cfg = JpegDctConfig(quality=None, size=None, order=order, dc_range=4, ac_range=2, max_skip=3)
    tok = JpegDctTokenizer(cfg)
    coef = tok.coefficients(photo_path("skimage:rocket.jpg"))
    seq = reference.encode_coefficients(tok.vocab, coef, order, cfg.bands)
    assert seq.ids[6] == tok.vocab.qt_custom
    body, v = seq.ids[7 + 64 * 3:], tok.vocab
    assert ((body >= v.byte) & (body < v.byte + 256)).any()
    assert ((body >= v.skip) & (body < v.size)).any() == (order == "coarse_to_fine")
    assert_twins(tok.vocab, [coef], order, cfg.bands)


# -- extreme coefficients drawn by hypothesis ----------------------------------------------------------

EXTREMES = st.one_of(st.integers(-32768, 32767), st.sampled_from(
    [-32768, 32767, -1025, 1024, -66, 66, -65, 65, -64, 64, -18, 18, -17, 17, -16, 16, -3, 3, -2, 2, -1, 1]))


@st.composite
def coefficient_sets(draw) -> Coefficients:
    """Any geometry; mostly-zero blocks (long runs, whole empty blocks) with extreme values."""
    sub = draw(st.sampled_from(sorted(SUBSAMPLINGS)))
    h, w = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    blocks = tuple(draw(arrays(np.int16, (rows, cols, 64), elements=EXTREMES, fill=st.just(0)))
                   for rows, cols in block_grid(h, w, sub))
    n = len(blocks)
    if draw(st.booleans()):
        qt = standard_qtables(draw(st.integers(1, 100)), n).copy()
    else:
        qt = draw(arrays(np.uint16, (n, 64), elements=st.integers(1, 255)))
    return Coefficients(h, w, sub, blocks, qt)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(coefs=st.lists(coefficient_sets(), min_size=1, max_size=3), order=st.sampled_from(ORDERS),
       ranges=st.sampled_from([(64, 16, 64), (1, 1, 1), (5, 2, 2), (1024, 1024, 3)]),
       bands=st.sampled_from([(1, 6, 15, 28, 64), (1, 64), (1, 2, 3, 4, 64), (1, 63, 64)]))
def test_codec_equals_reference_on_extreme_coefficients(coefs, order, ranges, bands):
    assert_twins(Vocab(*ranges), coefs, order, bands)


def test_reference_block_order_is_jpegs_mcu_order():
    """A 4:2:0 image 24x40: MCUs of 16x16 pixels hold Y00 Y01 Y10 Y11 Cb Cr; the last MCU row and
    column are cut (24 = 16 + 8 rows, 40 = 2 * 16 + 8 columns), so their missing luma blocks are gone."""
    blocks = reference.blocks_in_order(24, 40, "4:2:0", "raster")
    first_mcu = [(b.comp, b.brow, b.bcol) for b in blocks[:6]]
    assert first_mcu == [(0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1), (1, 0, 0), (2, 0, 0)]
    last_mcu = [(b.comp, b.brow, b.bcol, b.row, b.col) for b in blocks[-3:]]
    assert last_mcu == [(0, 2, 4, 2, 4), (1, 1, 2, 2, 4), (2, 1, 2, 2, 4)]
    assert len(blocks) == 3 * 5 + 2 * 2 * 3


@pytest.mark.parametrize("ranges", [(64, 16, 64), (1, 1, 1)])
def test_every_id_has_its_own_name(ranges):
    v = Vocab(*ranges)
    names = [reference.token_name(v, i) for i in range(v.size)]
    assert len(set(names)) == v.size
    a, s = v.ac_range, v.ac_stride
    assert [reference.token_name(v, i) for i in (v.dc + v.dc_range + 1, v.dc + 2 * v.dc_range + 2,
                                                 v.ac + 2 * s + a, v.ac + 15 * s + 2 * a, v.quality + 49,
                                                 v.byte + 255, v.skip, v.sub + 2)] == \
        ["DC(+1)", "DC(ESC-)", "AC(run 2, -1)", "AC(run 15, ESC+)", "Q(50)", "BYTE(255)", "SKIP(1)",
         "SUB(4:2:0)"]
    with pytest.raises(TokenizerError):
        reference.token_name(v, v.size)
