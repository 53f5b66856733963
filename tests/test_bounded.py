"""The bounded grammar (sampling): every walk through it decodes to blocks inside the 8-bit range,
blocks outside it are taken back exactly, and encoding still takes any legal JPEG as it is."""

import zlib

import numpy as np
import pytest
from jpeg_reference import photo_pixels, reference

from tokenizer import JpegDctConfig, JpegDctTokenizer, TokenizerError, TokenSequence
from tokenizer.base import Rewind
from tokenizer.jpeg.grammar import HIGH, LOW, MAX_TRIES, block_pixels, dc_bounds
from tokenizer.jpeg.io import Coefficients, encode_pixels, read_coefficients, write_coefficients


def tok_for(**kw) -> JpegDctTokenizer:
    return JpegDctTokenizer(JpegDctConfig(**kw))


def spec_pixels(blocks: np.ndarray, table: np.ndarray) -> np.ndarray:
    """(..., 64) natural-order coefficients and table -> (n, 8, 8) pixels before clamping, from the
    JPEG spec's inverse DCT: f(y, x) = 1/4 sum C(v) C(u) F(v, u) cos((2y+1)v pi/16) cos((2x+1)u pi/16)
    + 128, as M F M^T with M[x, u] = C(u) cos((2x+1)u pi/16) / 2."""
    u = np.arange(8)
    m = np.where(u == 0, np.sqrt(0.5), 1.0) * np.cos((2 * u[:, None] + 1) * u * np.pi / 16) / 2
    f = (blocks.reshape(-1, 64) * table).reshape(-1, 8, 8)
    return m @ f @ m.T + 128


def test_block_pixels_is_the_spec_inverse_dct():
    photo = encode_pixels(photo_pixels("astronaut")[:48, :64].copy(), 30, "4:2:0")
    ref, coef = reference(photo), read_coefficients(photo)
    for nat, table_nat, zz, table_zz in zip(ref.blocks, ref.tables, coef.blocks, coef.qtables):
        assert np.abs(block_pixels(zz.reshape(-1, 64), table_zz) - spec_pixels(nat, table_nat)).max() < 1e-9


# -- the DC bounds ------------------------------------------------------------------------------------

@pytest.mark.parametrize("quality", [1, 10, 25, 50, 90, 100])
def test_dc_bounds_are_the_dc_of_black_and_white_blocks(quality):
    """libjpeg's own DC for all-0 and all-255 planes (and the most saturated chroma) is each end."""
    ends = {}
    for colour in [(0, 0, 0), (255, 255, 255), (0, 0, 255), (255, 255, 0), (255, 0, 0), (0, 255, 255)]:
        px = np.zeros((16, 16, 3), np.uint8) + np.array(colour, np.uint8)
        coef = read_coefficients(encode_pixels(px, quality, "4:4:4"))
        for blocks, table in zip(coef.blocks, coef.qtables):
            dc = set(blocks[..., 0].ravel().tolist())
            assert len(dc) == 1
            ends.setdefault(int(table[0]), set()).update(dc)
    for q, seen in ends.items():
        lo, hi = dc_bounds(q)
        assert min(seen) == lo and max(seen) == hi   # reached at both ends, never beyond


# -- walks through the bounded grammar ----------------------------------------------------------------

def bounded_walk(tok, prompt, rng, policy: str) -> tuple[TokenSequence, int]:
    """A random walk of tok.grammar(prompt, bounded=True) that takes back what it is told to; returns
    the stream and the number of rewinds. Policies: uniform, or long (never end a block early,
    escapes half the time: the busiest blocks the grammar allows)."""
    g = tok.grammar(prompt, bounded=True)
    v = tok.vocab
    ids, pos, rewinds = list(prompt.ids), list(prompt.positions), 0
    while not g.done:
        allowed = np.flatnonzero(g.allowed())
        if policy == "long":
            esc = allowed[(allowed >= v.dc + 2 * v.dc_range + 1) & (allowed < v.ac)]
            busy = allowed[allowed != v.eob]
            allowed = esc if len(esc) and rng.random() < 0.5 else (busy if len(busy) else allowed)
        t = int(rng.choice(allowed))
        try:
            pos.append(g.push(t))
            ids.append(t)
        except Rewind as r:
            rewinds += 1
            del ids[len(ids) - (r.tokens - 1):], pos[len(pos) - (r.tokens - 1):]
        assert len(ids) < 100_000
    return TokenSequence(np.array(ids), np.stack(pos)), rewinds


WALKS = [((16, 16), 25, "4:2:0"), ((9, 23), 10, "4:4:4"), ((8, 8), 1, "gray"), ((24, 16), 90, "4:2:2"),
         ((16, 8), 100, "gray")]


@pytest.mark.parametrize("size,quality,subsampling", WALKS)
@pytest.mark.parametrize("policy", ["uniform", "long"])
def test_bounded_walks_decode_to_blocks_inside_the_range(size, quality, subsampling, policy):
    tok = tok_for(subsampling=subsampling)
    rng = np.random.default_rng(zlib.crc32(repr((size, quality, policy)).encode()))
    seq, rewinds = bounded_walk(tok, tok.header(*size, quality=quality), rng, policy)
    jpeg = tok.decode(seq)
    assert tok.encode_coefficients(read_coefficients(jpeg)) == seq   # still one canonical stream
    ref = reference(jpeg)                             # coefficients as libjpeg reads them
    for blocks, table in zip(ref.blocks, ref.tables):
        lo, hi = dc_bounds(int(table[0]))
        assert lo <= blocks[..., 0].min() and blocks[..., 0].max() <= hi
        px = spec_pixels(blocks, table)
        assert LOW <= px.min() and px.max() <= HIGH
    assert rewinds > 0 or quality == 100


@pytest.mark.parametrize("subsampling", ["4:2:0", "gray"])
def test_coarse_to_fine_bounds_every_dc(subsampling):
    """coarse_to_fine takes nothing back (a block ends in its last band); its DC values are bounded."""
    tok = tok_for(order="coarse_to_fine", subsampling=subsampling)
    rng = np.random.default_rng(3)
    seq, rewinds = bounded_walk(tok, tok.header(24, 40, quality=25), rng, "uniform")
    assert rewinds == 0
    coef = read_coefficients(tok.decode(seq))
    for blocks, table in zip(coef.blocks, coef.qtables):
        lo, hi = dc_bounds(int(table[0]))
        assert lo <= blocks[..., 0].min() and blocks[..., 0].max() <= hi


# -- taking a block back ------------------------------------------------------------------------------

def wild_block(tok) -> list[int]:
    """Tokens of one quality-25 luma block far outside the range: the highest DC (32 at q=32: mean
    256), then +16 at each of the first 10 AC."""
    v = tok.vocab
    return [v.dc + v.dc_range + 32] + [v.ac + v.ac_range - 1] * 10 + [v.eob]


def test_a_block_outside_the_range_is_taken_back_exactly():
    tok = tok_for(subsampling="gray", size=(8, 16), quality=25)
    seq = tok.encode(photo_pixels("coffee")[100:108, 200:216].copy())   # a real photo: in range
    g = tok.grammar(seq[:7], bounded=True)                                # after its header
    start = g.allowed()
    block = wild_block(tok)
    for t in block[:-1]:
        g.push(t)
    with pytest.raises(Rewind) as e:
        g.push(block[-1])
    assert e.value.tokens == len(block)
    assert g.allowed() is start and g.rejected == 1 and g.flattened == 0
    # back where it was: the photo's body walks on at the encoder's positions, nothing taken back
    assert np.array_equal(np.stack([g.push(int(t)) for t in seq.ids[7:]]), seq.positions[7:])
    assert g.done and g.rejected == 1


def test_a_block_the_prefix_began_is_not_taken_back():
    tok = tok_for(subsampling="gray")
    head = tok.header(8, 16, quality=25)
    block = wild_block(tok)
    prefix = TokenSequence(np.concatenate([head.ids, block[:3]]), np.zeros((len(head) + 3, 5), np.int64))
    g = tok.grammar(prefix, bounded=True)
    for t in block[3:]:
        g.push(t)                                          # its EOB: no Rewind, nothing to go back to
    g.push(tok.vocab.dc + tok.vocab.dc_range)              # the next block is sampled: checked
    for t in block[1:-1]:
        g.push(t)
    with pytest.raises(Rewind) as e:
        g.push(tok.vocab.eob)
    assert e.value.tokens == len(block) and g.rejected == 1


def test_a_block_rejected_max_tries_times_becomes_flat():
    tok = tok_for(subsampling="gray")
    g = tok.grammar(tok.header(8, 8, quality=25), bounded=True)
    v = tok.vocab
    for _ in range(MAX_TRIES):
        for t in wild_block(tok)[:-1]:
            g.push(t)
        with pytest.raises(Rewind):
            g.push(v.eob)
    assert g.rejected == MAX_TRIES and g.flattened == 1
    g.push(v.dc + v.dc_range + 32)                     # the DC is still free within its bounds
    assert np.flatnonzero(g.allowed()).tolist() == [v.eob]   # then the block ends: flat
    g.push(v.eob)
    g.push(v.eos)
    assert g.done


# -- encoding is not bounded --------------------------------------------------------------------------

def out_of_range_jpeg() -> bytes:
    """A legal baseline JPEG no 8-bit image gives: DC at 8-bit JPEG's limits and a wild block."""
    q = np.full((1, 64), 32, np.uint16)
    blocks = np.zeros((2, 3, 64), np.int16)
    blocks[0, 0, 0], blocks[0, 1, 0], blocks[1, 2, 0] = 1023, -1024, 500
    blocks[1, 0, 1:20] = 300
    return write_coefficients(Coefficients(16, 24, "gray", (blocks,), q))


def test_encoding_takes_out_of_range_jpegs_as_they_are():
    jpeg = out_of_range_jpeg()
    tok = tok_for(quality=None, size=None, subsampling="gray")
    seq = tok.encode(jpeg)
    ref, back = reference(jpeg), reference(tok.decode(seq))
    assert all(np.array_equal(a, b) for a, b in zip(ref.blocks, back.blocks))
    assert ref.blocks[0][0, 0, 0] == 1023 and ref.blocks[0][0, 1, 0] == -1024
    g = tok.grammar()                                   # the encoder's grammar accepts it
    for t in seq.ids:
        g.push(int(t))
    assert g.done
    prefix = seq[:-1]                                   # a bounded cursor takes it as a prefix
    assert tok.grammar(prefix, bounded=True).allowed()[tok.eos_id]
    g = tok.grammar(seq[:7], bounded=True)              # but would not sample it
    with pytest.raises(TokenizerError):
        for t in seq.ids[7:]:
            g.push(int(t))


def test_after_an_out_of_range_prefix_the_next_dc_comes_back_into_range():
    """Prefix: the first block at DC 1023 (mean 4,220 at q=32). The next DC difference a bounded
    cursor allows, escape bytes included, lands within dc_bounds and reaches both of its ends."""
    tok = tok_for(quality=None, size=None, subsampling="gray")
    seq = tok.encode(out_of_range_jpeg())
    v, r = tok.vocab, tok.vocab.dc_range
    eob = np.flatnonzero(seq.ids == v.eob)[0]
    g = tok.grammar(seq[:eob + 1], bounded=True)         # the next token is block 2's DC difference
    lo, hi = dc_bounds(32)
    reached = set()
    for t in np.flatnonzero(g.allowed()):
        if t < v.dc + 2 * r + 1:
            reached.add(1023 + int(t) - v.dc - r)
            continue
        sign = 1 if t == v.dc + 2 * r + 1 else -1
        h = g.copy()
        h.push(int(t))
        for b1 in np.flatnonzero(h.allowed()):
            h2 = h.copy()
            h2.push(int(b1))
            for b2 in np.flatnonzero(h2.allowed()):
                payload = (b1 - v.byte) * 256 + (b2 - v.byte)
                reached.add(1023 + sign * (payload + r + 1))
    assert reached == set(range(lo, hi + 1))
