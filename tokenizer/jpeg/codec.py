"""Coefficients <-> JPEG-DCT token ids, vectorized over all blocks (format: tokenizer.jpeg.format).

Encoding builds every token as an event (unit rank, place within unit, id, block, frequency) with
numpy and sorts the events once; decoding classifies all ids at once and scatters the values back.
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

_PLACES = 4 * (EOB_FREQ + 1)      # places within a unit: 4 per frequency (token, 2 escape bytes)


def _dpcm(values: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Differences from the previous block of the same group (image, component); first from 0."""
    order = np.argsort(group, kind="stable")
    v, g = values[order], group[order]
    d = np.diff(v, prepend=0)
    first = np.ones(len(g), bool)
    first[1:] = g[1:] != g[:-1]
    d[first] = v[first]
    out = np.empty_like(values)
    out[order] = d
    return out


def _undpcm(diffs: np.ndarray, comp: np.ndarray) -> np.ndarray:
    out = np.empty_like(diffs)
    for c in np.unique(comp):
        m = comp == c
        out[m] = np.cumsum(diffs[m])
    return out


class _Events:
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
    layouts = [block_layout(c.height, c.width, c.subsampling, order, bands) for c in coefs]
    nb = np.array([lay.n_blocks for lay in layouts])
    raster = order == "raster"
    n_bands = len(layouts[0].ac_bands)
    units = nb * (2 if raster else 1 + n_bands)
    img = np.repeat(np.arange(len(coefs)), nb)
    local = np.arange(nb.sum()) - np.repeat(np.cumsum(nb) - nb, nb)   # block index within its image
    base = np.repeat(np.cumsum(units) - units, nb)                     # first unit rank of its image
    x = np.concatenate([lay.gather(c) for lay, c in zip(layouts, coefs)]).astype(np.int64)
    comp = np.concatenate([lay.comp for lay in layouts])
    row = np.concatenate([lay.row for lay in layouts])
    col = np.concatenate([lay.col for lay in layouts])
    blocks = np.arange(len(x))
    ev = _Events()

    dc_rank = base + (2 * local if raster else local)
    diff = _dpcm(x[:, 0], img * 4 + comp)
    ids, esc = vocab.dc_ids(diff)
    ev.add(dc_rank, 0, ids, blocks, 0)
    _add_escapes(ev, vocab, esc, diff, vocab.dc_range, dc_rank, np.zeros(len(x), np.int64), blocks,
                 np.zeros(len(x)))

    for i, (s, e) in enumerate(layouts[0].ac_bands):
        rank_of = base + ((2 * local + 1) if raster else (nb[img] * (i + 1) + local))
        m = x[:, s:e] != 0
        ub, kk = np.nonzero(m)
        k = kk + s
        first = np.ones(len(ub), bool)
        first[1:] = ub[1:] != ub[:-1]
        prev = np.where(first, s - 1, np.roll(k, 1))
        run = k - prev - 1
        value = x[ub, k]
        ids, esc = vocab.ac_ids(run % 16, value)
        ev.add(rank_of[ub], 4 * k, ids, ub, k)
        _add_escapes(ev, vocab, esc, value, vocab.ac_range, rank_of[ub], 4 * k, ub, k)
        nz = run // 16
        if nz.any():
            rep = np.repeat(np.arange(len(ub)), nz)
            j = np.arange(len(rep)) - np.repeat(np.cumsum(nz) - nz, nz)
            zf = prev[rep] + 16 * (j + 1)
            ev.add(rank_of[ub[rep]], 4 * zf, vocab.zrl, ub[rep], zf)
        nonempty = m.any(1)
        ends = blocks if raster else blocks[nonempty]
        ev.add(rank_of[ends], 4 * EOB_FREQ, vocab.eob, ends, EOB_FREQ)
        if not raster:
            _add_skips(ev, vocab, ~nonempty, local == 0, rank_of, s)

    body, blk, freq = ev.sorted()
    pos = np.zeros((len(body), 5), np.int64)
    pos[:, 1], pos[:, 2], pos[:, 3], pos[:, 4] = comp[blk] + 1, row[blk], col[blk], freq
    cuts = np.searchsorted(img[blk], np.arange(1, len(coefs)))
    end = np.array([[0, 0, 0, 0, HEADER_LEN]])
    out = []
    for c, ids_i, pos_i in zip(coefs, np.split(body, cuts), np.split(pos, cuts)):
        hdr = header_ids(vocab, c.height, c.width, c.subsampling, c.qtables)
        out.append(TokenSequence(np.concatenate([hdr, ids_i, [vocab.eos]]),
                                 np.concatenate([header_positions(len(hdr)), pos_i, end])))
    return out


def _add_skips(ev: _Events, vocab: Vocab, empty: np.ndarray, image_start: np.ndarray, rank_of: np.ndarray,
               start: int) -> None:
    """SKIP(n) tokens over maximal runs of empty blocks within an image, greedily cut at max_skip."""
    if not empty.any():
        return
    prev_empty = np.concatenate([[False], empty[:-1]]) & ~image_start
    next_start = np.concatenate([image_start[1:], [True]])
    next_empty = np.concatenate([empty[1:], [False]]) & ~next_start
    starts, stops = np.nonzero(empty & ~prev_empty)[0], np.nonzero(empty & ~next_empty)[0] + 1
    lengths = stops - starts
    chunks = -(-lengths // vocab.max_skip)
    run = np.repeat(np.arange(len(starts)), chunks)
    j = np.arange(len(run)) - np.repeat(np.cumsum(chunks) - chunks, chunks)
    first = starts[run] + j * vocab.max_skip
    size = np.minimum(vocab.max_skip, lengths[run] - j * vocab.max_skip)
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


def decode_coefficients(vocab: Vocab, seq: TokenSequence, order: str, bands: tuple[int, ...]) -> Coefficients:
    """Inverse of encode_coefficients. TokenizerError on a stream that is not well formed."""
    ids = seq.ids.astype(np.int64)
    height, width, sub, qt, hlen = parse_header(vocab, ids)
    if ids[-1] != vocab.eos:
        raise TokenizerError("stream does not end with EOS")
    layout = block_layout(height, width, sub, order, bands)
    body = ids[hlen:-1]
    is_byte = (body >= vocab.byte) & (body < vocab.byte + 256)
    dc_esc = (body >= vocab.dc + 2 * vocab.dc_range + 1) & (body < vocab.ac)
    ac_slot = (body - vocab.ac) % vocab.ac_stride
    is_ac = (body >= vocab.ac) & (body < vocab.zrl)
    ac_esc = is_ac & (ac_slot >= 2 * vocab.ac_range)
    esc = np.nonzero(dc_esc | ac_esc)[0]
    if (esc.size and esc[-1] + 2 >= len(body)) or is_byte.sum() != 2 * len(esc) or \
            (esc.size and not (is_byte[esc + 1].all() and is_byte[esc + 2].all())):
        raise TokenizerError("escape tokens must each be followed by two byte tokens")
    payload = np.zeros(len(body), np.int64)
    payload[esc] = (body[esc + 1] - vocab.byte) * 256 + (body[esc + 2] - vocab.byte) + 1
    sym, payload = body[~is_byte], payload[~is_byte]
    is_dc = (sym >= vocab.dc) & (sym < vocab.ac)
    is_ac = (sym >= vocab.ac) & (sym < vocab.zrl)
    is_zrl, is_eob = sym == vocab.zrl, sym == vocab.eob
    is_skip = (sym >= vocab.skip) & (sym < vocab.size)
    if not (is_dc | is_ac | is_zrl | is_eob | is_skip).all():
        raise TokenizerError("a header or special token appears inside the body")

    n = layout.n_blocks
    raster = order == "raster"
    dc_pos = np.nonzero(is_dc)[0]
    if len(dc_pos) != n:
        raise TokenizerError(f"stream has {len(dc_pos)} DC tokens; its geometry needs {n}")
    # DC values
    d = sym[dc_pos] - vocab.dc
    diff = np.where(d <= 2 * vocab.dc_range, d - vocab.dc_range,
                    np.where(d == 2 * vocab.dc_range + 1, 1, -1) * (payload[dc_pos] + vocab.dc_range))
    x = np.zeros((n, 64), np.int64)
    x[:, 0] = _undpcm(diff, layout.comp)

    # Unit structure: which unit each symbol belongs to, and where units start.
    if raster:
        if is_skip.any():
            raise TokenizerError("SKIP tokens only occur in coarse_to_fine streams")
        eob_pos = np.nonzero(is_eob)[0]
        if len(eob_pos) != n or not np.array_equal(dc_pos, np.concatenate([[0], eob_pos[:-1] + 1])) \
                or eob_pos[-1] != len(sym) - 1:
            raise TokenizerError("each block must be DC, AC tokens, EOB")
        unit_start, unit_block = dc_pos, np.arange(n)
        band_start = np.ones(n, np.int64)
    else:
        if not np.array_equal(dc_pos, np.arange(n)):
            raise TokenizerError("coarse_to_fine streams start with every block's DC")
        rest = slice(n, None)
        count = np.where(is_skip, sym - vocab.skip + 1, is_eob.astype(np.int64))[rest]
        done = np.cumsum(count)
        bands = layout.ac_bands
        if len(count) == 0 or done[-1] != n * len(bands) or count[-1] == 0:
            raise TokenizerError(f"band section must end {n * len(bands)} units with EOB/SKIP")
        before = done - count
        starts = np.concatenate([[True], count[:-1] > 0])
        if (is_skip[rest] & ~starts).any() or ((before // n) != ((done - 1) // n))[is_skip[rest]].any():
            raise TokenizerError("SKIP must start a block's band and stay within the band")
        unit_start = n + np.nonzero(starts & ~is_skip[rest])[0]
        unit = before[unit_start - n]
        unit_block, band_start = unit % n, np.array([s for s, _ in bands])[unit // n]
    coded = is_ac | is_zrl
    if coded.any():
        _scatter_ac(vocab, layout, x, sym, payload, coded, unit_start, unit_block, band_start,
                    None if raster else unit // n)
    if x.size and (x.min() < -32768 or x.max() > 32767):
        raise TokenizerError("a coefficient falls outside int16")
    return Coefficients(height, width, sub, layout.scatter(x.astype(np.int16)), qt)


def _scatter_ac(vocab: Vocab, layout: BlockLayout, x: np.ndarray, sym: np.ndarray, payload: np.ndarray,
                coded: np.ndarray, unit_start: np.ndarray, unit_block: np.ndarray, band_start: np.ndarray,
                unit_band: np.ndarray | None) -> None:
    """Place AC values: frequency = running sum of run+1 (AC) or 16 (ZRL) within each unit."""
    is_ac = coded & (sym != vocab.zrl)
    step = np.where(is_ac, (sym - vocab.ac) // vocab.ac_stride + 1, 0) + 16 * (sym == vocab.zrl)
    cs = np.cumsum(step)
    sid = np.searchsorted(unit_start, np.arange(len(sym)), side="right") - 1
    if (coded & (sid < 0)).any():
        raise TokenizerError("AC tokens outside any block")
    sid = np.maximum(sid, 0)
    k = cs - (cs[unit_start] - step[unit_start])[sid] + band_start[sid] - 1
    end = 64 if unit_band is None else np.array([e for _, e in layout.ac_bands])[unit_band][sid]
    if (coded & (k >= end)).any():
        raise TokenizerError("AC tokens run past the end of their block or band")
    sel = np.nonzero(is_ac)[0]
    slot = (sym[sel] - vocab.ac) % vocab.ac_stride
    a = vocab.ac_range
    value = np.where(slot < a, slot + 1, np.where(slot < 2 * a, -(slot - a + 1),
                     np.where(slot == 2 * a, 1, -1) * (payload[sel] + a)))
    x[unit_block[sid[sel]], k[sel]] = value
