"""Lepton-style context of each token of a raster JPEG-DCT stream: what is known before the next one.

    >>> from tokenizer.corpus.embedded import crops
    >>> from tokenizer.jpeg.tokenizer import JpegDctTokenizer, JpegDctConfig
    >>> tok = JpegDctTokenizer(JpegDctConfig(size=(64, 64)))
    >>> seq = tok.encode(next(crops("val", 1, (64, 64))).pixels)
    >>> context_values(tok.vocab, seq).shape == (len(seq), N_CONTEXT)
    True

Row t describes the prediction of token t + 1: the block b the next token belongs to, the zigzag
index k it will code next, and what is already decoded around it, as in Lepton's model: the
quantized coefficients k..k+3 of the blocks above and to the left (same component), the nonzeros
coded so far in b, the AC nonzero counts of those two neighbours, the DC difference the neighbours
predict (mean of their DCs minus the DC the stream's difference is taken from) and b's component.
Rows of header tokens before the last, of the final EOB and of EOS are all 0.
`context_buckets` maps the values to small ints for the model's embedding tables.
Only raster order: in coarse_to_fine the features would mean something else (ValueError).
"""

from __future__ import annotations

import numpy as np

from tokenizer.base import FREQUENCY, TokenSequence
from tokenizer.jpeg.codec import decode_coefficients, parse_header
from tokenizer.jpeg.format import EOB_FREQ, Vocab, block_layout

CONTEXT_FIELDS = ("k", "above_k", "above_k1", "above_k2", "above_k3", "left_k", "left_k1", "left_k2",
                  "left_k3", "nonzeros", "above_nonzeros", "left_nonzeros", "dc_pred", "component")
N_CONTEXT = len(CONTEXT_FIELDS)
SIGNED = np.array([f.startswith(("above_k", "left_k", "dc_pred")) for f in CONTEXT_FIELDS])
N_BUCKETS = 66   # k 0..64 and counts 0..63 direct; signed values 0..32 (see context_buckets)


def neighbours(layout) -> tuple[np.ndarray, np.ndarray]:
    """(above, left): stream index of the block above / to the left in the same component, or -1."""
    n = layout.n_blocks
    above, left = np.full(n, -1, np.int64), np.full(n, -1, np.int64)
    for c, (gr, gc) in enumerate(layout.grid):
        m = np.nonzero(layout.comp == c)[0]
        grid = np.full((gr, gc), -1, np.int64)             # block index at each (brow, bcol)
        grid[layout.brow[m], layout.bcol[m]] = m
        r, col = layout.brow[m], layout.bcol[m]
        above[m] = np.where(r > 0, grid[np.maximum(r - 1, 0), col], -1)
        left[m] = np.where(col > 0, grid[r, np.maximum(col - 1, 0)], -1)
    return above, left


def context_values(vocab: Vocab, seq: TokenSequence, order: str = "raster",
                   bands: tuple[int, ...] = (1, 64)) -> np.ndarray:
    """(T, N_CONTEXT) int64 raw context values of a whole stream (see the module docstring)."""
    if order != "raster":
        raise ValueError(f"context features need order='raster', got order={order!r}")
    ids = seq.ids.astype(np.int64)
    height, width, sub, _, hlen = parse_header(vocab, ids)
    layout = block_layout(height, width, sub, order, bands)
    x = layout.gather(decode_coefficients(vocab, seq, order, bands)).astype(np.int64)  # (n, 64) zigzag
    n, T = layout.n_blocks, len(ids)
    above, left = neighbours(layout)

    # Per token: the block of the last DC so far (blk) and the zigzag index coded next (kn): after a
    # DC, AC, ZRL or escape byte, its frequency + 1; after an EOB (frequency 64) the next block at 0.
    is_dc = (ids >= vocab.dc) & (ids < vocab.ac)
    is_dc[:hlen] = False
    blk = np.cumsum(is_dc) - 1
    freq = seq.positions[:, FREQUENCY].astype(np.int64)
    eob = (ids == vocab.eob) & (np.arange(T) >= hlen)
    start = eob.copy()                                   # next token opens a block: after EOB or header
    start[hlen - 1] = True
    bn = np.where(start, blk + 1, blk)                   # block of the next token
    kn = np.where(start, 0, np.minimum(freq + 1, EOB_FREQ))
    live = (np.arange(T) >= hlen - 1) & (bn < n) & (ids != vocab.eos)
    b, k = bn[live], kn[live]

    # Neighbour coefficients k..k+3 (0 past 63 or without a neighbour): x padded by 4 zero columns
    # and one zero row (index -1 = no neighbour); k may be 64 (before an EOB).
    xp = np.zeros((n + 1, 68), np.int64)
    xp[:n, :64] = x
    cols = k[:, None] + np.arange(4)                     # (L, 4) zigzag indices
    nz = np.zeros((n + 1, 65), np.int64)                 # nz[b, k]: AC nonzeros of b below index k
    nz[:n, 2:] = np.cumsum(x[:, 1:] != 0, axis=1)[:, :63]
    total = np.append((x[:, 1:] != 0).sum(1), 0)         # AC nonzeros of each block; -1 -> 0

    # DC prediction: mean DC of the available neighbours (else the stream predictor itself), minus
    # the stream predictor (the previous DC of the same component in stream order, 0 for the first).
    prev = np.zeros(n, np.int64)
    for c in range(len(layout.grid)):
        m = np.nonzero(layout.comp == c)[0]
        prev[m[1:]] = x[m[:-1], 0]
    dc = xp[:, 0]
    have = (above >= 0).astype(np.int64) + (left >= 0)
    mean = (dc[above] * (above >= 0) + dc[left] * (left >= 0)) // np.maximum(have, 1)
    pred = np.where(have > 0, mean, prev) - prev

    out = np.zeros((T, N_CONTEXT), np.int64)
    out[live, 0] = k
    out[live, 1:5] = xp[above[b][:, None], cols]
    out[live, 5:9] = xp[left[b][:, None], cols]
    out[live, 9] = nz[b, k]
    out[live, 10], out[live, 11] = total[above[b]], total[left[b]]
    out[live, 12] = np.where(k == 0, pred[b], 0)
    out[live, 13] = layout.comp[b] + 1
    return out


def context_buckets(values: np.ndarray) -> np.ndarray:
    """Raw context values -> ints in 0..N_BUCKETS-1: counts and k clipped to 0..64, signed values
    exact for |v| <= 3, then one bucket per power of two (4-7, 8-15, ... up to 2^14+), plus 16."""
    v = np.asarray(values, np.int64)
    m = np.abs(v)
    mag = np.where(m <= 3, m, np.minimum(2 + np.floor(np.log2(np.maximum(m, 1))).astype(np.int64), 16))
    signed = np.sign(v) * mag + 16
    return np.where(SIGNED, signed, np.clip(v, 0, EOB_FREQ)).astype(np.int32)
