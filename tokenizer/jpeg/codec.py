"""Coefficients <-> JPEG-DCT token ids, vectorized over all blocks (format: tokenizer.jpeg.format).

Encoding builds every token as an event (unit rank, place within unit, id, block, frequency) with
numpy and sorts the events once; decoding classifies all ids at once and scatters the values back.
A unit is one step of the coding schedule (`BlockLayout.units`): a block's DC, or a block's AC
coefficients in one band (all 63 in raster order). tokenizer/jpeg/reference.py writes the same
coding as plain loops; tests/test_reference.py holds the two to the same tokens.
"""

from __future__ import annotations

import numpy as np

from tokenizer.base import TokenizerError, TokenSequence
from tokenizer.jpeg.format import (
    EOB_FREQ,
    HEADER_LEN,
    BlockLayout,
    Vocab,
    block_layout,
    header_ids,
    header_positions,
)
from tokenizer.jpeg.io import SUBSAMPLINGS, Coefficients, standard_qtables

# Places within a unit: a token at zigzag index k sits at 4k, its escape bytes at 4k+1, 4k+2; DC and
# SKIP at 0, a ZRL at 4 * (the last zero it covers), EOB at 4 * 64. Sorting by (rank, place) is
# sorting by rank * _PLACES + place.
_PLACES = 4 * (EOB_FREQ + 1)


def _dpcm(values: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Differences from the previous block of the same group (image, component); first from 0."""
    order = np.argsort(group, kind="stable")     # blocks grouped, stream order kept within a group
    v, g = values[order], group[order]
    d = np.diff(v, prepend=0)                    # d[i] = v[i] - v[i-1] across the whole array
    first = np.ones(len(g), bool)                # first block of each group: predicted from 0
    first[1:] = g[1:] != g[:-1]
    d[first] = v[first]
    out = np.empty_like(values)                  # back to stream order
    out[order] = d
    return out


def _undpcm(diffs: np.ndarray, comp: np.ndarray) -> np.ndarray:
    """DC values from their differences: a running sum per component, in stream order."""
    out = np.empty_like(diffs)
    for c in np.unique(comp):
        m = comp == c
        out[m] = np.cumsum(diffs[m])
    return out


class _Events:
    """Tokens collected out of order as parallel arrays (rank, place, id, block, frequency)."""

    def __init__(self) -> None:
        self.parts: list[tuple[np.ndarray, ...]] = []

    def add(self, rank, place, ids, block, freq) -> None:
        arrays = np.broadcast_arrays(*(np.asarray(a, np.int64) for a in (rank, place, ids, block, freq)))
        self.parts.append(tuple(a.ravel() for a in arrays))

    def sorted(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rank, place, ids, block, freq = (np.concatenate(p) for p in zip(*self.parts))
        order = np.argsort(rank * _PLACES + place, kind="stable")
        return ids[order], block[order], freq[order]


def _add_escapes(ev: _Events, vocab: Vocab, esc, values, direct, rank, place, block, freq) -> None:
    """The two byte tokens after each escaped value (mask `esc`), right after its token's place."""
    if esc.any():
        b = vocab.escape_bytes(values[esc], direct)
        for j in (0, 1):
            ev.add(rank[esc], place[esc] + 1 + j, b[:, j], block[esc], freq[esc])


def encode_coefficients(vocab: Vocab, coef: Coefficients, order: str,
                        bands: tuple[int, ...]) -> TokenSequence:
    """The token stream of one JPEG's coefficients (lossless)."""
    return encode_batch(vocab, [coef], order, bands)[0]


def encode_batch(vocab: Vocab, coefs: list[Coefficients], order: str,
                 bands: tuple[int, ...]) -> list[TokenSequence]:
    """Token streams of many JPEGs at once: one pass of numpy over all their blocks."""
    if not coefs:
        return []
    # The blocks of all images, one after another, each image's in its stream block order (N blocks).
    layouts = [block_layout(c.height, c.width, c.subsampling, order, bands) for c in coefs]
    nb = np.array([lay.n_blocks for lay in layouts])                  # (I,) blocks per image
    raster = order == "raster"
    n_bands = len(layouts[0].ac_bands)
    units = nb * (2 if raster else 1 + n_bands)   # (I,) units per image: DC + AC per block, or DC + bands
    img = np.repeat(np.arange(len(coefs)), nb)                         # (N,) image of each block
    local = np.arange(nb.sum()) - np.repeat(np.cumsum(nb) - nb, nb)   # block index within its image
    base = np.repeat(np.cumsum(units) - units, nb)                     # first unit rank of its image
    x = np.concatenate([lay.gather(c) for lay, c in zip(layouts, coefs)]).astype(np.int64)  # (N, 64) zigzag
    comp = np.concatenate([lay.comp for lay in layouts])               # (N,) component 0..2
    row = np.concatenate([lay.row for lay in layouts])                 # (N,) luma-block row
    col = np.concatenate([lay.col for lay in layouts])                 # (N,) luma-block column
    blocks = np.arange(len(x))
    ev = _Events()

    # DC: unit 2b of block b in raster (its AC unit is 2b+1); in coarse_to_fine the first nb units
    # of an image are its DCs. The value coded is the difference from the previous block of the
    # same image and component; escaped differences add two byte tokens at places 1, 2.
    dc_rank = base + (2 * local if raster else local)
    diff = _dpcm(x[:, 0], img * 4 + comp)
    ids, esc = vocab.dc_ids(diff)
    ev.add(dc_rank, 0, ids, blocks, 0)
    _add_escapes(ev, vocab, esc, diff, vocab.dc_range, dc_rank, np.zeros(len(x), np.int64), blocks,
                 np.zeros(len(x)))

    for i, (s, e) in enumerate(layouts[0].ac_bands):    # raster: one band, zigzag 1..63
        # (N,) rank of each block's unit in this band: after its DC, or after all DCs and i bands
        rank_of = base + ((2 * local + 1) if raster else (nb[img] * (i + 1) + local))
        m = x[:, s:e] != 0                              # (N, e - s) nonzero coefficients of the band
        ub, kk = np.nonzero(m)                          # one entry per nonzero, by block then frequency
        k = kk + s                                      # its zigzag index
        first = np.ones(len(ub), bool)                  # first nonzero of its block in this band
        first[1:] = ub[1:] != ub[:-1]
        prev = np.where(first, s - 1, np.roll(k, 1))    # zigzag index of the previous nonzero (or s - 1)
        run = k - prev - 1                              # zeros before this nonzero
        value = x[ub, k]
        ids, esc = vocab.ac_ids(run % 16, value)        # AC(run mod 16, value); escapes: + 2 bytes
        ev.add(rank_of[ub], 4 * k, ids, ub, k)
        _add_escapes(ev, vocab, esc, value, vocab.ac_range, rank_of[ub], 4 * k, ub, k)
        nz = run // 16                                  # ZRLs before this nonzero
        if nz.any():
            rep = np.repeat(np.arange(len(ub)), nz)     # (Z,) the nonzero each ZRL precedes
            j = np.arange(len(rep)) - np.repeat(np.cumsum(nz) - nz, nz)   # 0.. within that nonzero
            zf = prev[rep] + 16 * (j + 1)               # the last zero the ZRL covers: its frequency
            ev.add(rank_of[ub[rep]], 4 * zf, vocab.zrl, ub[rep], zf)
        # EOB closes every block in raster; in coarse_to_fine only blocks with a nonzero in the band,
        # the others go into SKIP runs
        nonempty = m.any(1)
        ends = blocks if raster else blocks[nonempty]
        ev.add(rank_of[ends], 4 * EOB_FREQ, vocab.eob, ends, EOB_FREQ)
        if not raster:
            _add_skips(ev, vocab, ~nonempty, local == 0, rank_of, s)

    # One sort puts every token of every image in stream order (images stay contiguous: their
    # ranks do not interleave); then per token: (frame 0, component 1..3, row, col, frequency).
    body, blk, freq = ev.sorted()
    pos = np.zeros((len(body), 5), np.int64)
    pos[:, 1], pos[:, 2], pos[:, 3], pos[:, 4] = comp[blk] + 1, row[blk], col[blk], freq
    cuts = np.searchsorted(img[blk], np.arange(1, len(coefs)))        # where each next image begins
    end = np.array([[0, 0, 0, 0, HEADER_LEN]])                         # EOS position
    out = []
    for c, ids_i, pos_i in zip(coefs, np.split(body, cuts), np.split(pos, cuts)):
        hdr = header_ids(vocab, c.height, c.width, c.subsampling, c.qtables)
        out.append(TokenSequence(np.concatenate([hdr, ids_i, [vocab.eos]]),
                                 np.concatenate([header_positions(len(hdr)), pos_i, end])))
    return out


def _add_skips(ev: _Events, vocab: Vocab, empty: np.ndarray, image_start: np.ndarray, rank_of: np.ndarray,
               start: int) -> None:
    """SKIP(n) tokens over maximal runs of empty blocks within an image, greedily cut at max_skip.

    `empty`, `image_start`: (N,) per block, whether it has no nonzero in this band and whether it
    is the first block of its image; `rank_of`: (N,) its unit rank in this band; `start`: the band's
    first zigzag index (the SKIP tokens' frequency)."""
    if not empty.any():
        return
    prev_empty = np.concatenate([[False], empty[:-1]]) & ~image_start    # continues a run from the left
    next_start = np.concatenate([image_start[1:], [True]])
    next_empty = np.concatenate([empty[1:], [False]]) & ~next_start      # the run goes on to the right
    starts, stops = np.nonzero(empty & ~prev_empty)[0], np.nonzero(empty & ~next_empty)[0] + 1  # (R,)
    lengths = stops - starts
    chunks = -(-lengths // vocab.max_skip)           # (R,) SKIP tokens per run
    run = np.repeat(np.arange(len(starts)), chunks)  # (S,) the run of each SKIP token
    j = np.arange(len(run)) - np.repeat(np.cumsum(chunks) - chunks, chunks)   # 0.. within its run
    first = starts[run] + j * vocab.max_skip         # the block each SKIP starts at (its position)
    size = np.minimum(vocab.max_skip, lengths[run] - j * vocab.max_skip)       # max_skip, then the rest
    ev.add(rank_of[first], 0, vocab.skip + size - 1, first, start)


def parse_header(vocab: Vocab, ids: np.ndarray) -> tuple[int, int, str, np.ndarray, int]:
    """(height, width, subsampling, qtables, header length) of a stream. TokenizerError if malformed."""
    def byte(i: int) -> int:
        if i >= len(ids) or not (vocab.byte <= ids[i] < vocab.byte + 256):
            raise TokenizerError(f"header token {i} should be a byte token")
        return int(ids[i] - vocab.byte)

    if len(ids) < HEADER_LEN + 1 or ids[0] != vocab.bos:
        raise TokenizerError("stream does not start with BOS and a full header")
    subs = list(SUBSAMPLINGS)
    if not (vocab.sub <= ids[1] < vocab.sub + len(subs)):
        raise TokenizerError("header token 1 should name the subsampling")
    sub = subs[ids[1] - vocab.sub]
    height, width = byte(2) << 8 | byte(3), byte(4) << 8 | byte(5)
    if height == 0 or width == 0:
        raise TokenizerError(f"header gives an empty image {width}x{height}")
    n = 1 if sub == "gray" else 3
    if vocab.quality <= ids[6] < vocab.quality + 100:
        return height, width, sub, standard_qtables(int(ids[6] - vocab.quality + 1), n), HEADER_LEN
    if ids[6] != vocab.qt_custom:
        raise TokenizerError("header token 6 should be a quality or QT_CUSTOM")
    qt = np.array([byte(HEADER_LEN + i) for i in range(64 * n)], np.uint16).reshape(n, 64)
    if qt.min() == 0:
        raise TokenizerError("a quantization table entry is 0")
    return height, width, sub, qt, HEADER_LEN + 64 * n


def symbols(vocab: Vocab, body: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Body ids -> (symbols (S,), their values (S,), is_symbol (len(body),) bool): the body without
    its escape bytes; a DC symbol's value is its difference, an AC symbol's its coefficient, any
    other's 0. TokenizerError if an escape token is not followed by two byte tokens."""
    body = np.asarray(body, np.int64)
    # Escapes: in the body, byte tokens only follow escape tokens, two each. Fold each pair into its
    # escape's payload |value| - range, then drop the bytes: from there on, one entry per symbol.
    is_byte = (body >= vocab.byte) & (body < vocab.byte + 256)
    dc_esc = (body >= vocab.dc + 2 * vocab.dc_range + 1) & (body < vocab.ac)
    ac_slot = (body - vocab.ac) % vocab.ac_stride
    ac_esc = (body >= vocab.ac) & (body < vocab.zrl) & (ac_slot >= 2 * vocab.ac_range)
    esc = np.nonzero(dc_esc | ac_esc)[0]               # body index of every escape token
    if (esc.size and esc[-1] + 2 >= len(body)) or is_byte.sum() != 2 * len(esc) or \
            (esc.size and not (is_byte[esc + 1].all() and is_byte[esc + 2].all())):
        raise TokenizerError("escape tokens must each be followed by two byte tokens")
    payload = np.zeros(len(body), np.int64)
    payload[esc] = (body[esc + 1] - vocab.byte) * 256 + (body[esc + 2] - vocab.byte) + 1
    sym, payload = body[~is_byte], payload[~is_byte]
    # DC: difference d - dc_range, or +-(payload + dc_range) for the escapes
    d, r = sym - vocab.dc, vocab.dc_range
    dc = np.where(d <= 2 * r, d - r, np.where(d == 2 * r + 1, 1, -1) * (payload + r))
    # AC slots 0..a-1: +1..+a; a..2a-1: -1..-a; 2a, 2a+1: escape, +-(payload + a)
    slot, a = (sym - vocab.ac) % vocab.ac_stride, vocab.ac_range
    ac = np.where(slot < a, slot + 1, np.where(slot < 2 * a, -(slot - a + 1),
                  np.where(slot == 2 * a, 1, -1) * (payload + a)))
    is_dc, is_ac = (sym >= vocab.dc) & (sym < vocab.ac), (sym >= vocab.ac) & (sym < vocab.zrl)
    return sym, np.where(is_dc, dc, np.where(is_ac, ac, 0)), ~is_byte


def decode_coefficients(vocab: Vocab, seq: TokenSequence, order: str, bands: tuple[int, ...]) -> Coefficients:
    """Inverse of encode_coefficients. TokenizerError on a stream that is not well formed."""
    ids = seq.ids.astype(np.int64)
    height, width, sub, qt, hlen = parse_header(vocab, ids)
    if ids[-1] != vocab.eos:
        raise TokenizerError("stream does not end with EOS")
    layout = block_layout(height, width, sub, order, bands)
    sym, value, _ = symbols(vocab, ids[hlen:-1])       # (S,) symbols and their values
    is_dc = (sym >= vocab.dc) & (sym < vocab.ac)       # classify every symbol
    is_ac = (sym >= vocab.ac) & (sym < vocab.zrl)
    is_zrl, is_eob = sym == vocab.zrl, sym == vocab.eob
    is_skip = (sym >= vocab.skip) & (sym < vocab.size)
    if not (is_dc | is_ac | is_zrl | is_eob | is_skip).all():
        raise TokenizerError("a header or special token appears inside the body")

    n = layout.n_blocks
    raster = order == "raster"
    dc_pos = np.nonzero(is_dc)[0]                      # symbol index of each block's DC, in block order
    if len(dc_pos) != n:
        raise TokenizerError(f"stream has {len(dc_pos)} DC tokens; its geometry needs {n}")
    x = np.zeros((n, 64), np.int64)
    x[:, 0] = _undpcm(value[dc_pos], layout.comp)      # DC values: differences summed per component

    # Unit structure: the symbol where each coded AC unit starts (unit_start), the block it belongs
    # to (unit_block) and the first zigzag index of its band (band_start).
    if raster:                                         # per block: DC AC... EOB, so each DC starts one
        if is_skip.any():
            raise TokenizerError("SKIP tokens only occur in coarse_to_fine streams")
        eob_pos = np.nonzero(is_eob)[0]
        if len(eob_pos) != n or not np.array_equal(dc_pos, np.concatenate([[0], eob_pos[:-1] + 1])) \
                or eob_pos[-1] != len(sym) - 1:
            raise TokenizerError("each block must be DC, AC tokens, EOB")
        unit_start, unit_block = dc_pos, np.arange(n)
        band_start = np.ones(n, np.int64)
    else:                                              # n DCs, then band units: unit u = band * n + block
        if not np.array_equal(dc_pos, np.arange(n)):
            raise TokenizerError("coarse_to_fine streams start with every block's DC")
        rest = slice(n, None)
        count = np.where(is_skip, sym - vocab.skip + 1, is_eob.astype(np.int64))[rest]  # units each closes
        done = np.cumsum(count)                        # units closed up to and including each symbol
        bands = layout.ac_bands
        if len(count) == 0 or done[-1] != n * len(bands) or count[-1] == 0:
            raise TokenizerError(f"band section must end {n * len(bands)} units with EOB/SKIP")
        before = done - count                          # the unit each symbol belongs to (or a SKIP's first)
        starts = np.concatenate([[True], count[:-1] > 0])   # symbol opens a unit: the previous one closed
        if (is_skip[rest] & ~starts).any() or ((before // n) != ((done - 1) // n))[is_skip[rest]].any():
            raise TokenizerError("SKIP must start a block's band and stay within the band")
        unit_start = n + np.nonzero(starts & ~is_skip[rest])[0]   # symbol index of each coded unit
        unit = before[unit_start - n]
        unit_block, band_start = unit % n, np.array([s for s, _ in bands])[unit // n]
    coded = is_ac | is_zrl
    if coded.any():
        _scatter_ac(vocab, layout, x, sym, value, coded, unit_start, unit_block, band_start,
                    None if raster else unit // n)
    if x.size and (x.min() < -32768 or x.max() > 32767):
        raise TokenizerError("a coefficient falls outside int16")
    return Coefficients(height, width, sub, layout.scatter(x.astype(np.int16)), qt)


def _scatter_ac(vocab: Vocab, layout: BlockLayout, x: np.ndarray, sym: np.ndarray, value: np.ndarray,
                coded: np.ndarray, unit_start: np.ndarray, unit_block: np.ndarray, band_start: np.ndarray,
                unit_band: np.ndarray | None) -> None:
    """Place AC values: frequency = running sum of run+1 (AC) or 16 (ZRL) within each unit.

    `x` (n_blocks, 64) receives the values; `sym`, `value` (symbols()), `coded` (AC or ZRL) are (S,) per
    symbol; `unit_start`, `unit_block`, `band_start` (and `unit_band` in coarse_to_fine) are per
    coded unit, in stream order."""
    is_ac = coded & (sym != vocab.zrl)
    # how far each symbol moves the zigzag index: AC(run) run + 1, ZRL 16, anything else 0
    step = np.where(is_ac, (sym - vocab.ac) // vocab.ac_stride + 1, 0) + 16 * (sym == vocab.zrl)
    cs = np.cumsum(step)
    sid = np.searchsorted(unit_start, np.arange(len(sym)), side="right") - 1   # (S,) unit of each symbol
    if (coded & (sid < 0)).any():
        raise TokenizerError("AC tokens outside any block")
    sid = np.maximum(sid, 0)
    # steps since the unit began, from its band's start: an AC's own index, a ZRL's last zero
    k = cs - (cs[unit_start] - step[unit_start])[sid] + band_start[sid] - 1
    end = 64 if unit_band is None else np.array([e for _, e in layout.ac_bands])[unit_band][sid]
    if (coded & (k >= end)).any():
        raise TokenizerError("AC tokens run past the end of their block or band")
    sel = np.nonzero(is_ac)[0]
    x[unit_block[sid[sel]], k[sel]] = value[sel]

