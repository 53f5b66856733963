"""Lepton-style context of each token of a raster JPEG-DCT stream: what is known before the next one.

    >>> from tokenizer.corpus.embedded import crops
    >>> from tokenizer.jpeg.tokenizer import JpegDctTokenizer, JpegDctConfig
    >>> tok = JpegDctTokenizer(JpegDctConfig(size=(64, 64)))
    >>> seq = tok.encode(next(crops("val", 1, (64, 64))).pixels)
    >>> context_values(tok.vocab, seq).shape == (len(seq), N_CONTEXT)
    True
    >>> cur = ContextCursor(tok.vocab)           # the same rows, one token at a time
    >>> rows = [cur.push(t, p) for t, p in zip(seq.ids, seq.positions)]
    >>> bool((np.stack(rows) == context_buckets(context_values(tok.vocab, seq))).all())
    True

Row t describes the prediction of token t + 1: the block b the next token belongs to, the zigzag
index k it will code next, and what is already decoded around it, as in Lepton's model: the
quantized coefficients k..k+3 of the blocks above and to the left (same component), the nonzeros
coded so far in b, the AC nonzero counts of those two neighbours, the DC difference the neighbours
predict (mean of their DCs minus the DC the stream's difference is taken from) and b's component.
Rows of header tokens before the last, of the final EOB and of EOS are all 0. Row t depends on
tokens 0..t only, so `ContextCursor` gives it as soon as token t is known (sampling, the codec);
both paths compute the features with `feature_values`.
`context_buckets` maps the values to small ints for the model's embedding tables.
Only raster order: in coarse_to_fine the features would mean something else (ValueError).
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

import numpy as np

from tokenizer.base import FREQUENCY, TokenSequence
from tokenizer.jpeg.codec import decode_coefficients, parse_header, symbols
from tokenizer.jpeg.format import EOB_FREQ, HEADER_LEN, BlockLayout, Vocab, block_layout
from tokenizer.jpeg.io import SUBSAMPLINGS

CONTEXT_FIELDS = ("k", "above_k", "above_k1", "above_k2", "above_k3", "left_k", "left_k1", "left_k2",
                  "left_k3", "nonzeros", "above_nonzeros", "left_nonzeros", "dc_pred", "component")
N_CONTEXT = len(CONTEXT_FIELDS)
NONZEROS = CONTEXT_FIELDS.index("nonzeros")
SIGNED = np.array([f.startswith(("above_k", "left_k", "dc_pred")) for f in CONTEXT_FIELDS])
N_BUCKETS = 66   # k 0..64 and counts 0..63 direct; signed values 0..32 (see context_buckets)


@dataclass(frozen=True, eq=False)
class Geometry:
    """The blocks of one stream geometry as the features see them, each (n,) in stream block order:
    the block above and to the left in the same component, and the previous block of that component
    in stream order (whose DC the stream's difference is taken from); -1 where there is none."""

    layout: BlockLayout
    above: np.ndarray
    left: np.ndarray
    prev: np.ndarray


@functools.lru_cache(maxsize=64)
def geometry(height: int, width: int, subsampling: str, bands: tuple[int, ...] = (1, 64)) -> Geometry:
    """The cached Geometry of a raster stream of this size and subsampling."""
    layout = block_layout(height, width, subsampling, "raster", bands)
    n = layout.n_blocks
    above, left, prev = (np.full(n, -1, np.int64) for _ in range(3))
    for c, (gr, gc) in enumerate(layout.grid):
        m = np.nonzero(layout.comp == c)[0]                # this component's blocks, in stream order
        grid = np.full((gr, gc), -1, np.int64)             # block index at each (brow, bcol)
        grid[layout.brow[m], layout.bcol[m]] = m
        r, col = layout.brow[m], layout.bcol[m]
        above[m] = np.where(r > 0, grid[np.maximum(r - 1, 0), col], -1)
        left[m] = np.where(col > 0, grid[r, np.maximum(col - 1, 0)], -1)
        prev[m[1:]] = m[:-1]
    return Geometry(layout, above, left, prev)


def feature_values(g: Geometry, xp: np.ndarray, total: np.ndarray, b: np.ndarray, k: np.ndarray,
                   nonzeros: np.ndarray) -> np.ndarray:
    """(L, N_CONTEXT) raw values of L places: the next token codes zigzag index k (0..64) of block b,
    after `nonzeros` AC nonzeros of b. `xp` (n + 1, 68): decoded blocks in zigzag order, four zero
    columns and a zero last row (index -1: no block); `total` (n + 1,): their AC nonzeros, 0 last.
    Only the rows of blocks before each b are read (the neighbours and the previous DC)."""
    above, left, prev = g.above[b], g.left[b], g.prev[b]   # (L,) each, -1 -> xp's zero row
    cols = k[:, None] + np.arange(4)                       # (L, 4) zigzag indices k..k+3 (64+: zeros)
    out = np.empty((len(b), N_CONTEXT), np.int64)
    out[:, 0] = k
    out[:, 1:5] = xp[above[:, None], cols]
    out[:, 5:9] = xp[left[:, None], cols]
    out[:, 9] = nonzeros
    out[:, 10], out[:, 11] = total[above], total[left]
    # DC prediction (k = 0 only): mean DC of the available neighbours (else the stream predictor
    # itself), minus the stream predictor (the previous DC of the component, 0 for the first)
    have = (above >= 0).astype(np.int64) + (left >= 0)
    mean = (xp[above, 0] + xp[left, 0]) // np.maximum(have, 1)
    pred = xp[prev, 0]
    out[:, 12] = np.where(k == 0, np.where(have > 0, mean, pred) - pred, 0)
    out[:, 13] = g.layout.comp[b] + 1
    return out


def context_values(vocab: Vocab, seq: TokenSequence, order: str = "raster",
                   bands: tuple[int, ...] = (1, 64)) -> np.ndarray:
    """(T, N_CONTEXT) int64 raw context values of a whole stream (see the module docstring)."""
    if order != "raster":
        raise ValueError(f"context features need order='raster', got order={order!r}")
    ids = seq.ids.astype(np.int64)
    height, width, sub, _, hlen = parse_header(vocab, ids)
    g = geometry(height, width, sub, bands)
    x = g.layout.gather(decode_coefficients(vocab, seq, order, bands)).astype(np.int64)  # (n, 64) zigzag
    n, T = g.layout.n_blocks, len(ids)

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

    # The decoded blocks padded as feature_values reads them; nz[b, k]: AC nonzeros of b below k
    xp = np.zeros((n + 1, 68), np.int64)
    xp[:n, :64] = x
    nz = np.zeros((n, 65), np.int64)
    nz[:, 2:] = np.cumsum(x[:, 1:] != 0, axis=1)[:, :63]
    total = np.append((x[:, 1:] != 0).sum(1), 0)
    out = np.zeros((T, N_CONTEXT), np.int64)
    out[live] = feature_values(g, xp, total, b, k, nz[b, k])
    return out


class ContextCursor:
    """The context rows of a raster stream fed one token at a time: after tokens 0..t, `row` is
    row t of `context_values` of any stream that starts with them (their features depend on
    nothing later). Sampling and the codec feed each token's row to the model with the token.

        cur = ContextCursor(tok.vocab)
        row = cur.push(token, position)   # bucketed (N_CONTEXT,) int32, as Tokenizer.context gives
        cur.take_back(n)                  # as if the last n pushes had not happened

    Counting is all a block in progress needs (its index, the zigzag index next, its AC tokens so
    far); its values are decoded at its EOB, into the rows `feature_values` reads of later blocks.
    Taking back never needs those rows undone: a block's row is read only by later blocks.
    """

    def __init__(self, vocab: Vocab, order: str = "raster", bands: tuple[int, ...] = (1, 64)):
        if order != "raster":
            raise ValueError(f"context features need order='raster', got order={order!r}")
        self.vocab, self.bands = vocab, bands
        self.ids: list[int] = []
        self.freqs: list[int] = []
        self.rows: list[np.ndarray] = []     # bucketed row of each token pushed
        # after each token: the block b of the next token, the zigzag index k it codes, b's AC
        # nonzeros so far and the index of b's DC token
        self.states: list[tuple[int, int, int, int]] = []
        self.hlen = 0                        # header length, once known
        self.g: Geometry | None = None       # once the header is complete
        self._zero = context_buckets(np.zeros(N_CONTEXT, np.int64))   # rows with nothing to say
        self._table, self._table_of = self._zero, -1   # block _table_of's rows (see _row)

    @property
    def row(self) -> np.ndarray:
        return self.rows[-1]

    def copy(self) -> ContextCursor:
        """An independent cursor at the same place."""
        c = copy.copy(self)
        c.ids, c.freqs, c.rows, c.states = (list(x) for x in (self.ids, self.freqs, self.rows, self.states))
        if self.g is not None:
            c.xp, c.total = self.xp.copy(), self.total.copy()
        return c

    def push(self, token: int, position: np.ndarray) -> np.ndarray:
        """Feed one token and its position row; returns its (bucketed) context row."""
        v, t = self.vocab, len(self.ids)
        self.ids.append(int(token))
        self.freqs.append(int(position[FREQUENCY]))
        b, k, nz, start = self.states[-1] if self.states else (-1, 0, 0, 0)
        if self.g is None:                   # the header: no features until its last token
            if t + 1 == self._header_length():
                self._enter_body()
                b = 0                        # next: block 0's DC
        elif token == v.eob:                 # block b is complete: decode it; next, block b + 1's DC
            self._decode_block(b, start, t)
            b, k, nz = b + 1, 0, 0
        elif token == v.eos:
            b = -1
        else:
            if v.dc <= token < v.ac:         # a DC opens block b
                nz, start = 0, t
            elif v.ac <= token < v.zrl:      # an AC token: one more nonzero
                nz += 1
            k = min(self.freqs[-1] + 1, EOB_FREQ)   # (escape bytes repeat their value's frequency)
        self.states.append((b, k, nz, start))
        self.rows.append(self._row(b, k, nz))
        return self.rows[-1]

    def _row(self, b: int, k: int, nz: int) -> np.ndarray:
        """The bucketed row of the next token: block b, zigzag index k, after nz nonzeros. Within a
        block only k and nz change, so the block's rows for every k (nz = 0) are computed once."""
        if self.g is None or not 0 <= b < self.g.layout.n_blocks:
            return self._zero
        if self._table_of != b:
            rows = feature_values(self.g, self.xp, self.total, np.full(EOB_FREQ + 1, b),
                                  np.arange(EOB_FREQ + 1), np.zeros(EOB_FREQ + 1, np.int64))
            self._table, self._table_of = context_buckets(rows), b
        row = self._table[k].copy()
        row[NONZEROS] = min(nz, EOB_FREQ)    # (counts are their own bucket up to 64: context_buckets)
        return row

    def take_back(self, n: int) -> None:
        """Forget the last n tokens pushed."""
        if n:
            del self.ids[-n:], self.freqs[-n:], self.rows[-n:], self.states[-n:]
        if len(self.ids) < self.hlen:
            self.g, self.hlen = None, 0

    def _header_length(self) -> int:
        """The header's length, once its first HEADER_LEN tokens tell it (else 0)."""
        ids, v = self.ids, self.vocab
        if len(ids) < HEADER_LEN:
            return 0
        if ids[HEADER_LEN - 1] != v.qt_custom:
            return HEADER_LEN
        return HEADER_LEN + 64 * (1 if list(SUBSAMPLINGS)[ids[1] - v.sub] == "gray" else 3)

    def _enter_body(self) -> None:
        height, width, sub, _, self.hlen = parse_header(self.vocab, np.array(self.ids + [self.vocab.eos]))
        self.g = geometry(height, width, sub, self.bands)
        n = self.g.layout.n_blocks
        self.xp = np.zeros((n + 1, 68), np.int64)   # as feature_values reads them
        self.total = np.zeros(n + 1, np.int64)

    def _decode_block(self, b: int, start: int, end: int) -> None:
        """Block b's coefficients from its tokens start..end-1 (DC first) into xp and total."""
        sym, value, kept = symbols(self.vocab, np.array(self.ids[start:end]))
        freq = np.array(self.freqs[start:end])[kept]
        ac = (sym >= self.vocab.ac) & (sym < self.vocab.zrl)
        self.xp[b, :64] = 0
        self.xp[b, 0] = self.xp[self.g.prev[b], 0] + value[0]   # the DC difference from the predictor
        self.xp[b, freq[ac]] = value[ac]
        self.total[b] = ac.sum()
        self._table_of = -1                  # a table computed before may have read the old row b


def context_buckets(values: np.ndarray) -> np.ndarray:
    """Raw context values -> ints in 0..N_BUCKETS-1: counts and k clipped to 0..64, signed values
    exact for |v| <= 3, then one bucket per power of two (4-7, 8-15, ... up to 2^14+), plus 16."""
    v = np.asarray(values, np.int64)
    m = np.abs(v)
    mag = np.where(m <= 3, m, np.minimum(2 + np.floor(np.log2(np.maximum(m, 1))).astype(np.int64), 16))
    signed = np.sign(v) * mag + 16
    return np.where(SIGNED, signed, np.clip(v, 0, EOB_FREQ)).astype(np.int32)
