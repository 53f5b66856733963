"""The grammar state machine: encoded streams are accepted at the encoder's positions, mutated ones
are rejected, and every walk through it decodes to a JPEG whose re-encoding gives the same ids."""

import io
import zlib

import numpy as np
import pytest
from jpeg_reference import photo_pixels, reference
from PIL import Image

from tokenizer import JpegDctConfig, JpegDctTokenizer, TokenizerError, TokenSequence
from tokenizer.jpeg.grammar import accepts
from tokenizer.jpeg.io import read_coefficients

ORDERS = ("raster", "coarse_to_fine")


def tok_for(**kw) -> JpegDctTokenizer:
    return JpegDctTokenizer(JpegDctConfig(**kw))


def walk_positions(tok: JpegDctTokenizer, ids: np.ndarray) -> np.ndarray:
    g = tok.grammar()
    pos = [g.push(int(t)) for t in ids]
    assert g.done
    return np.stack(pos)


# -- encoded streams ----------------------------------------------------------------------------------

@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("subsampling", ["4:2:0", "4:4:4", "gray", "4:2:2"])
@pytest.mark.parametrize("quality,size,photo", [(10, (64, 64), "astronaut"), (25, (37, 53), "coffee"),
                                                (50, (1, 1), "chelsea"), (90, (40, 136), "china"),
                                                (100, (24, 24), "flower")])
def test_encoded_streams_are_accepted_at_the_encoders_positions(order, subsampling, quality, size, photo):
    tok = tok_for(quality=quality, size=size, subsampling=subsampling, order=order)
    seq = tok.encode(photo_pixels(photo))
    assert np.array_equal(walk_positions(tok, seq.ids), seq.positions)
    # a prefix continues where it left off
    cut = len(seq) // 2
    g = tok.grammar(seq[:cut])
    assert np.array_equal(np.stack([g.push(int(t)) for t in seq.ids[cut:]]), seq.positions[cut:])
    assert g.done


@pytest.mark.parametrize("order", ORDERS)
def test_custom_table_streams_are_accepted(order):
    buf = io.BytesIO()
    Image.fromarray(photo_pixels("coffee")[:48, :40]).save(buf, "JPEG", qtables=[[3] * 64, [200] * 64])
    tok = tok_for(quality=None, size=None, order=order)
    seq = tok.encode(buf.getvalue())
    assert seq.ids[6] == tok.vocab.qt_custom
    assert np.array_equal(walk_positions(tok, seq.ids), seq.positions)


def test_allowed_is_a_readonly_mask_and_done_allows_nothing():
    tok = tok_for(size=(16, 16))
    seq = tok.encode(photo_pixels("astronaut"))
    g = tok.grammar()
    for t in seq.ids:
        m = g.allowed()
        assert m.shape == (tok.vocab_size,) and m.dtype == bool and not m.flags.writeable
        assert m[t]
        g.push(int(t))
    assert g.done and not g.allowed().any()
    with pytest.raises(TokenizerError):
        g.push(tok.eos_id)


def test_copy_is_independent():
    tok = tok_for(size=(16, 16))
    seq = tok.encode(photo_pixels("coffee"))
    g = tok.grammar(seq[:10])
    h = g.copy()
    for t in seq.ids[10:]:
        h.push(int(t))
    assert h.done and not g.done
    assert np.array_equal(np.stack([g.push(int(t)) for t in seq.ids[10:]]), seq.positions[10:])


def test_header_limits():
    tok = tok_for(max_pixels=1000)
    with pytest.raises(TokenizerError, match="max_pixels"):
        tok.grammar(tok.header(100, 100))
    g = tok.grammar()
    for t in tok.header(20, 20).ids[:3]:
        g.push(int(t))
    assert not g.allowed()[tok.vocab.byte]           # height 0 is not a size
    assert g.allowed()[tok.vocab.byte + 1]


# -- mutations ----------------------------------------------------------------------------------------

def _mutants(seq: TokenSequence, vocab_size: int, rng: np.random.Generator, n: int):
    ids = seq.ids
    for i in range(n):
        kind = ("drop", "insert", "replace", "truncate")[i % 4]
        j = int(rng.integers(0, len(ids)))
        if kind == "drop":
            out = np.delete(ids, j)
        elif kind == "insert":
            out = np.insert(ids, j, rng.integers(0, vocab_size))
        elif kind == "replace":
            out = ids.copy()
            out[j] = (ids[j] + rng.integers(1, vocab_size)) % vocab_size
        else:
            out = ids[:j]
        yield kind, out


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("subsampling", ["4:2:0", "gray"])
def test_mutated_streams_are_rejected_unless_they_spell_another_image(order, subsampling):
    """Dropping or changing an AC token can spell another valid image, so the grammar may accept
    a mutant; then it must be that image's one canonical stream. Everything else is rejected, and a
    rejected mutant never decodes to coefficients whose canonical stream it is."""
    tok = tok_for(quality=50, size=(24, 40), order=order, subsampling=subsampling)
    seq = tok.encode(photo_pixels("chelsea"))
    coef = tok.decode_coefficients(seq)
    rng = np.random.default_rng(0)
    rejected = 0
    for kind, ids in _mutants(seq, tok.vocab_size, rng, 200):
        ok = accepts(tok.grammar(), ids)
        try:
            back = tok.decode_coefficients(TokenSequence(ids, np.zeros((len(ids), 5))))
        except TokenizerError:
            back = None
        if ok:
            assert kind != "truncate"
            assert back is not None and back != coef, f"accepted {kind} mutant decodes to the original"
            assert np.array_equal(tok.encode_coefficients(back).ids, ids), f"accepted {kind} mutant"
        else:
            rejected += 1
            assert back is None or not np.array_equal(tok.encode_coefficients(back).ids, ids)
    assert rejected > 100


@pytest.mark.parametrize("order", ORDERS)
def test_structural_mutations_are_rejected(order):
    tok = tok_for(quality=50, size=(24, 40), order=order, dc_range=4)    # small range: DC escapes
    v = tok.vocab
    ids = tok.encode(photo_pixels("coffee")).ids
    eob = int(np.flatnonzero(ids == v.eob)[0])
    esc = int(np.flatnonzero((ids >= v.dc + 2 * v.dc_range + 1) & (ids < v.ac))[0])
    mutants = {
        "no EOS": ids[:-1], "no BOS": ids[1:], "two EOS": np.append(ids, v.eos),
        "EOS inside": np.insert(ids, eob, v.eos), "no first EOB": np.delete(ids, eob),
        "ZRL before EOB": np.insert(ids, eob, v.zrl), "BOS inside": np.insert(ids, eob, v.bos),
        "escape without its bytes": np.delete(ids, [esc + 1, esc + 2]),
        "escape with one byte": np.delete(ids, esc + 2), "empty": ids[:0], "header only": ids[:7],
        "pad": np.insert(ids, 8, v.pad),
    }
    if order == "raster":
        mutants["SKIP in raster"] = np.insert(ids, eob, v.skip)
    for name, m in mutants.items():
        assert not accepts(tok.grammar(), m), name
        try:
            back = tok.decode_coefficients(TokenSequence(m, np.zeros((len(m), 5))))
        except TokenizerError:
            continue
        assert not np.array_equal(tok.encode_coefficients(back).ids, m), name


@pytest.mark.parametrize("order", ORDERS)
def test_mutated_streams_never_crash_decode(order):
    """decode either raises TokenizerError or returns a JPEG PIL opens; no other exception."""
    tok = tok_for(quality=25, size=(16, 32), order=order, subsampling="4:4:4")
    seq = tok.encode(photo_pixels("astronaut"))
    rng = np.random.default_rng(1)
    for _, ids in _mutants(seq, tok.vocab_size, rng, 200):
        try:
            jpeg = tok.decode(TokenSequence(ids, np.zeros((len(ids), 5))))
        except TokenizerError:
            continue
        Image.open(io.BytesIO(jpeg)).load()


# -- random walks -------------------------------------------------------------------------------------

def _choose(policy: str, allowed: np.ndarray, rng: np.random.Generator, tok: JpegDctTokenizer) -> int:
    ids = np.flatnonzero(allowed)
    if policy == "uniform":
        return int(rng.choice(ids))
    v = tok.vocab
    if policy in ("max", "min"):          # extremes: escapes, largest payloads, longest runs
        return int(ids[-1] if policy == "max" else ids[0])
    # "long": keep blocks busy (never end a block early), escapes half the time
    esc = ids[(ids == v.dc + 2 * v.dc_range + 1) | (ids == v.dc + 2 * v.dc_range + 2)]
    if len(esc) and rng.random() < 0.5:
        return int(rng.choice(esc))
    busy = ids[(ids != v.eob) & ((ids < v.skip) | (ids >= v.size))]
    return int(rng.choice(busy if len(busy) else ids))


WALKS = [(h, w, q, sub, policy)
         for (h, w), q, sub in [((16, 16), 25, "4:2:0"), ((9, 23), 10, "4:4:4"), ((1, 1), 50, "gray"),
                                ((40, 24), 90, "4:2:0"), ((17, 33), 1, "4:2:2"), ((24, 8), 100, "gray")]
         for policy in ("uniform", "max", "min", "long")]


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("h,w,quality,subsampling,policy", WALKS)
def test_random_walks_decode_to_canonical_jpegs(order, h, w, quality, subsampling, policy):
    tok = tok_for(order=order, subsampling=subsampling)
    rng = np.random.default_rng(zlib.crc32(repr((h, w, quality, policy, order)).encode()))
    prompt = tok.header(h, w, quality=quality)
    g = tok.grammar(prompt)
    ids, pos = list(prompt.ids), list(prompt.positions)
    while not g.done:
        t = _choose(policy, g.allowed(), rng, tok)
        pos.append(g.push(t))
        ids.append(t)
        assert len(ids) < 200_000
    seq = TokenSequence(np.array(ids), np.stack(pos))
    jpeg = tok.decode(seq)
    im = Image.open(io.BytesIO(jpeg))
    im.load()
    assert im.size == (w, h) and im.mode == ("L" if subsampling == "gray" else "RGB")
    # canonical: re-encoding the decoded file gives back the very same ids and positions
    assert tok.encode_coefficients(read_coefficients(jpeg)) == seq
    assert tok_for(order=order, quality=None, size=None).encode(jpeg) == seq
    ref = reference(jpeg)
    assert ref.size == (h, w)
    assert max(int(abs(b[..., 1:]).max()) for b in ref.blocks) <= 1023
    assert all(-1024 <= b[..., 0].min() and b[..., 0].max() <= 1023 for b in ref.blocks)
