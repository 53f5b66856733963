"""The JPEG-DCT token format: vocabulary, header, block layout and order (ids: tokenizer.jpeg.codec).

A stream is header, body, end (docs/token-format.md says it in prose):

    BOS  SUB(layout)  H_hi H_lo W_hi W_lo  (Q(quality) | QT_CUSTOM 64 x n_components bytes)  body  EOS

The body codes each block's zigzag coefficients sparsely, as JPEG's run/size symbols do:
a DC token (the difference from the previous block of the same component in stream order), then
AC tokens AC(run, value) for each nonzero (run = zeros skipped, 0..15), ZRL for 16 zeros, and EOB.
Values beyond the direct range are an escape token followed by two byte tokens (|v| - range - 1, big
endian), so nothing is clipped. Two block orders:

- "raster": JPEG's MCU order; per block: DC, AC..., EOB.
- "coarse_to_fine": every block's DC first, then for each frequency band every block's coefficients
  in that band (AC..., EOB); runs of blocks with nothing in a band are SKIP(n) tokens (n <= max_skip,
  greedy, so the coding is unique), like progressive JPEG's spectral selection with EOB runs.

Blocks are ordered by `BlockLayout`, the one explicit ordering step: the codec (tokenizer.jpeg.codec,
vectorized over all blocks), the compiled path (tokenizer.jpeg.compiled) and the grammar
(tokenizer.jpeg.grammar) follow it; tokenizer.jpeg.reference orders blocks in its own loops, to check it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from tokenizer.base import TokenizerError
from tokenizer.jpeg.io import SUBSAMPLINGS, Coefficients, block_grid, sampling_factors, standard_quality

ORDERS = ("raster", "coarse_to_fine")
EOB_FREQ = 64        # frequency field of EOB / end tokens
HEADER_LEN = 7       # BOS SUB H_hi H_lo W_hi W_lo Q|QT_CUSTOM


@dataclass(frozen=True)
class Vocab:
    """Id ranges of the JPEG-DCT vocabulary for given direct value ranges (offsets computed once:
    the grammar reads them at every token)."""

    dc_range: int = 64
    ac_range: int = 16
    max_skip: int = 64

    pad: int = 0
    bos: int = 1
    eos: int = 2
    sub: int = 3                         # + index into SUBSAMPLINGS

    @cached_property
    def quality(self) -> int:            # + quality - 1, quality 1..100
        return self.sub + len(SUBSAMPLINGS)

    @cached_property
    def qt_custom(self) -> int:
        return self.quality + 100

    @cached_property
    def byte(self) -> int:               # + value 0..255
        return self.qt_custom + 1

    @cached_property
    def dc(self) -> int:                 # + diff + dc_range; then ESC+, ESC-
        return self.byte + 256

    @cached_property
    def ac(self) -> int:                 # + run * ac_stride + slot
        return self.dc + 2 * self.dc_range + 3

    @cached_property
    def ac_stride(self) -> int:          # slots: +v -> v-1, -v -> ac_range+v-1, ESC+ 2A, ESC- 2A+1
        return 2 * self.ac_range + 2

    @cached_property
    def zrl(self) -> int:
        return self.ac + 16 * self.ac_stride

    @cached_property
    def eob(self) -> int:
        return self.zrl + 1

    @cached_property
    def skip(self) -> int:               # + n - 1, n = 1..max_skip
        return self.eob + 1

    @cached_property
    def size(self) -> int:
        return self.skip + self.max_skip

    def dc_ids(self, diff: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(token ids, escape mask) of DC differences."""
        esc = np.abs(diff) > self.dc_range
        ids = np.where(esc, self.dc + 2 * self.dc_range + 1 + (diff < 0), self.dc + diff + self.dc_range)
        return ids, esc

    def ac_ids(self, run: np.ndarray, value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(token ids, escape mask) of AC (run, nonzero value) pairs."""
        a = self.ac_range
        mag = np.abs(value)
        esc = mag > a
        slot = np.where(esc, 2 * a + (value < 0), np.where(value > 0, mag - 1, a + mag - 1))
        return self.ac + run * self.ac_stride + slot, esc

    def escape_bytes(self, value: np.ndarray, direct: int) -> np.ndarray:
        """(N, 2) byte token ids carrying |value| - direct - 1 in 16 bits."""
        rest = np.abs(value).astype(np.int64) - direct - 1
        if rest.size and (rest.max() > 0xFFFF):
            raise TokenizerError(f"coefficient magnitude {np.abs(value).max()} does not fit an escape")
        return self.byte + np.stack([rest >> 8, rest & 0xFF], axis=-1)


@dataclass(frozen=True)
class BlockLayout:
    """Which blocks a geometry has and in which order the stream visits them.

    Blocks are listed in stream block order: `comp`, `brow`, `bcol` (block index in the component's
    own grid) and `row`, `col` (in luma-block units, so luma and chroma of one place share coordinates).
    `units` is the coding schedule: (block, start, end) zigzag ranges, one per DC or AC run.
    """

    height: int
    width: int
    subsampling: str
    order: str
    bands: tuple[int, ...]

    @cached_property
    def grid(self) -> list[tuple[int, int]]:
        return block_grid(self.height, self.width, self.subsampling)

    @cached_property
    def _blocks(self) -> np.ndarray:
        factors = sampling_factors(self.subsampling)
        hmax, vmax = max(f[0] for f in factors), max(f[1] for f in factors)
        rows = []
        if self.order == "raster":
            mcu_rows, mcu_cols = -(-self.height // (8 * vmax)), -(-self.width // (8 * hmax))
            for c, (h, v) in enumerate(factors):
                gr, gc = self.grid[c]
                my, mx, dv, dh = np.meshgrid(np.arange(mcu_rows), np.arange(mcu_cols), np.arange(v),
                                             np.arange(h), indexing="ij")
                br, bc = (my * v + dv).ravel(), (mx * h + dh).ravel()
                mcu = (my * mcu_cols + mx).ravel()
                within = (dv * h + dh).ravel()
                keep = (br < gr) & (bc < gc)
                rows.append(np.stack([mcu[keep], np.full(keep.sum(), c), within[keep], br[keep], bc[keep],
                                      br[keep] * (vmax // v), bc[keep] * (hmax // h)], 1))
            b = np.concatenate(rows)
            b = b[np.lexsort((b[:, 2], b[:, 1], b[:, 0]))]
        else:
            for c, (h, v) in enumerate(factors):
                gr, gc = self.grid[c]
                br, bc = np.divmod(np.arange(gr * gc), gc)
                rows.append(np.stack([np.zeros_like(br), np.full(len(br), c), np.zeros_like(br), br, bc,
                                      br * (vmax // v), bc * (hmax // h)], 1))
            b = np.concatenate(rows)
        return b[:, 1:].astype(np.int64)      # comp, within, brow, bcol, row, col

    @property
    def n_blocks(self) -> int:
        return len(self._blocks)

    @property
    def comp(self) -> np.ndarray:
        return self._blocks[:, 0]

    @property
    def brow(self) -> np.ndarray:
        return self._blocks[:, 2]

    @property
    def bcol(self) -> np.ndarray:
        return self._blocks[:, 3]

    @property
    def row(self) -> np.ndarray:
        return self._blocks[:, 4]

    @property
    def col(self) -> np.ndarray:
        return self._blocks[:, 5]

    @cached_property
    def ac_bands(self) -> list[tuple[int, int]]:
        edges = (1, 64) if self.order == "raster" else self.bands
        return list(zip(edges[:-1], edges[1:]))

    @cached_property
    def units(self) -> np.ndarray:
        """(U, 3) schedule rows (block, start, end) in stream order."""
        b = np.arange(self.n_blocks)
        dc = np.stack([b, np.zeros_like(b), np.ones_like(b)], 1)
        if self.order == "raster":
            ac = np.stack([b, np.ones_like(b), np.full_like(b, 64)], 1)
            return np.stack([dc, ac], 1).reshape(-1, 3)
        bands = [np.stack([b, np.full_like(b, s), np.full_like(b, e)], 1) for s, e in self.ac_bands]
        return np.concatenate([dc, *bands])

    def gather(self, coef: Coefficients) -> np.ndarray:
        """(n_blocks, 64) zigzag coefficients in stream block order."""
        planes = [blk.reshape(-1, 64) for blk in coef.blocks]
        flat = np.concatenate(planes)
        base = np.cumsum([0] + [len(p) for p in planes])[:-1]
        return flat[base[self.comp] + self.brow * np.array([g[1] for g in self.grid])[self.comp] + self.bcol]

    def scatter(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        """Inverse of gather: per-component (rows, cols, 64) int16 arrays."""
        out = []
        for c, (gr, gc) in enumerate(self.grid):
            plane = np.zeros((gr, gc, 64), np.int16)
            m = self.comp == c
            plane[self.brow[m], self.bcol[m]] = x[m]
            out.append(plane)
        return tuple(out)


@functools.lru_cache(maxsize=64)
def block_layout(height: int, width: int, subsampling: str, order: str,
                 bands: tuple[int, ...]) -> BlockLayout:
    """A cached BlockLayout (layouts of one geometry are reused across images)."""
    return BlockLayout(height, width, subsampling, order, bands)


def header_ids(vocab: Vocab, height: int, width: int, subsampling: str, qtables: np.ndarray) -> np.ndarray:
    """BOS SUB H_hi H_lo W_hi W_lo (Q | QT_CUSTOM + table bytes)."""
    if not (1 <= height <= 0xFFFF and 1 <= width <= 0xFFFF):
        raise TokenizerError(f"image size {width}x{height} is outside 1..65535")
    ids = [vocab.bos, vocab.sub + list(SUBSAMPLINGS).index(subsampling),
           vocab.byte + (height >> 8), vocab.byte + (height & 255),
           vocab.byte + (width >> 8), vocab.byte + (width & 255)]
    q = standard_quality(qtables)
    if q is not None:
        return np.array(ids + [vocab.quality + q - 1])
    if qtables.min() < 1 or qtables.max() > 255:
        raise TokenizerError("quantization table entries must be 1..255")
    return np.array(ids + [vocab.qt_custom] + list(vocab.byte + qtables.ravel().astype(np.int64)))


def header_positions(n: int) -> np.ndarray:
    """Header tokens: component 0; fixed tokens at frequency 0..6, custom table bytes at
    block_row = table + 1 and frequency = zigzag index."""
    pos = np.zeros((n, 5), np.int64)
    j = np.arange(n)
    fixed = j < HEADER_LEN
    pos[fixed, 4] = j[fixed]
    pos[~fixed, 2] = (j[~fixed] - HEADER_LEN) // 64 + 1
    pos[~fixed, 4] = (j[~fixed] - HEADER_LEN) % 64
    return pos
