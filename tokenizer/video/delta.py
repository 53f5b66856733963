"""Delta frames: a frame's quantized coefficients coded as the difference from a reference frame's.

    ids, rows = encode_delta(vocab, layout, ref, cur, frame)     # ref, cur: (n_blocks, 64) zigzag
    g = DeltaGrammar(vocab, layout, ref, frame); [g.push(t) for t in ids]; g.cur == cur

The reference is the previous frame's coefficients, or in motion mode those moved by a whole-block
motion vector (`motion_reference`, chosen by `best_motion`). The frame is coded in *units* of
`delta_units(layout)`, in the layout's order:

- "raster": one unit per block (JPEG's MCU order), the block's 64 differences:
  DC(d0) AC(run, d)... [ZRL]... EOB
- "coarse_to_fine": every block's DC difference first (a DC(d) token alone), then for each frequency
  band every block's differences in that band (AC(run, d)... [ZRL]... EOB), as the JPEG-DCT
  coarse_to_fine order does for an image.

A unit whose differences are all zero is part of a SKIP(n) run (n <= max_skip, greedy and maximal,
never across a pass: the whole frame in raster, one DC or band pass in coarse_to_fine), so each frame
has one stream; a coded unit has at least one nonzero difference (DC(0) EOB, a DC(0) unit or an empty
band never occur). d0 is the DC difference from the reference (no DPCM across blocks); values beyond
the direct ranges use the same escape tokens + two byte tokens as intra frames. The grammar knows the
reference and only allows differences that keep DC in -1024..1023 and |AC| <= 1023, so every sampled
frame is a baseline JPEG.
"""

from __future__ import annotations

import numpy as np

from tokenizer.base import TokenizerError
from tokenizer.jpeg.format import EOB_FREQ, BlockLayout, Vocab
from tokenizer.jpeg.io import AC_MAX, DC_MAX, DC_MIN, sampling_factors


def delta_units(layout: BlockLayout) -> tuple[np.ndarray, np.ndarray]:
    """(units (U, 3) rows (block, start, end) in stream order, pass_end (U,): the unit index where
    each unit's pass ends, so a SKIP never crosses it)."""
    if layout.order == "raster":
        b = np.arange(layout.n_blocks)
        units = np.stack([b, np.zeros_like(b), np.full_like(b, 64)], 1)
    else:
        units = layout.units
    # a pass is a maximal run of units with the same start frequency
    new_pass = np.r_[True, units[1:, 1] != units[:-1, 1]]
    starts = np.flatnonzero(new_pass)
    ends = np.r_[starts[1:], len(units)]
    return units, np.repeat(ends, ends - starts)


def motion_reference(layout: BlockLayout, prev: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """`prev` (n_blocks, 64, layout order) moved by (dy, dx) luma blocks: the reference block at
    (r, c) is prev's block at (r - dy, c - dx); chroma planes move by the vector scaled to their
    sampling, truncated toward zero; a block whose source falls outside the frame keeps prev's
    block at its own place (the unshifted reference)."""
    factors = np.array(sampling_factors(layout.subsampling))
    grid = np.array(layout.grid)
    comp = layout.comp
    # per block: its plane's grid and the vector in that plane's blocks
    gr, gc = grid[comp, 0], grid[comp, 1]
    sy = np.fix(dy * factors[comp, 1] / factors[:, 1].max()).astype(np.int64)
    sx = np.fix(dx * factors[comp, 0] / factors[:, 0].max()).astype(np.int64)
    src_r, src_c = layout.brow - sy, layout.bcol - sx
    inside = (src_r >= 0) & (src_r < gr) & (src_c >= 0) & (src_c < gc)
    src_r, src_c = np.where(inside, src_r, layout.brow), np.where(inside, src_c, layout.bcol)
    # (comp, row, col) -> index in layout order, through each block's flat plane index
    base = np.r_[0, np.cumsum(grid[:, 0] * grid[:, 1])[:-1]][comp]
    lookup = np.empty(layout.n_blocks, np.int64)
    lookup[base + layout.brow * gc + layout.bcol] = np.arange(layout.n_blocks)
    return prev[lookup[base + src_r * gc + src_c]]


def best_motion(layout: BlockLayout, prev: np.ndarray, cur: np.ndarray, radius: int) -> tuple[int, int]:
    """The vector within +-radius blocks whose reference leaves the fewest nonzero differences;
    ties go to the shortest vector (|dy| + |dx|), then the smallest (dy, dx)."""
    r = range(-radius, radius + 1)
    vectors = sorted(((dy, dx) for dy in r for dx in r), key=lambda v: (abs(v[0]) + abs(v[1]), v))
    cost = [np.count_nonzero(cur != motion_reference(layout, prev, dy, dx)) for dy, dx in vectors]
    return vectors[int(np.argmin(cost))]


def encode_delta(vocab: Vocab, layout: BlockLayout, prev: np.ndarray, cur: np.ndarray,
                 frame: int) -> tuple[list[int], list[tuple[int, ...]]]:
    """(ids, position rows) of the delta stream of `cur` given the reference `prev`, both
    (n_blocks, 64) in `layout` order (zigzag)."""
    diff = cur.astype(np.int64) - prev.astype(np.int64)
    units, pass_end = delta_units(layout)
    # a unit changed if its zigzag range holds a nonzero: differences of running counts
    count = np.pad(np.cumsum(diff != 0, axis=1), ((0, 0), (1, 0)))
    changed = count[units[:, 0], units[:, 2]] > count[units[:, 0], units[:, 1]]
    ids: list[int] = []
    pos: list[tuple[int, ...]] = []

    def where(b: int, k: int) -> tuple[int, ...]:
        return (frame, int(layout.comp[b]) + 1, int(layout.row[b]), int(layout.col[b]), k)

    def value(token: int, esc: bool, v: int, direct: int, p: tuple[int, ...]) -> None:
        ids.append(int(token))
        pos.append(p)
        if esc:
            ids.extend(int(t) for t in vocab.escape_bytes(np.array([v]), direct)[0])
            pos.extend([p, p])

    u, n = 0, len(units)
    while u < n:
        b, s, e = (int(x) for x in units[u])
        if not changed[u]:                                    # SKIP runs up to the pass end
            end = int(pass_end[u])
            run = int(np.argmax(changed[u:end])) if changed[u:end].any() else end - u
            while run:
                size = min(run, vocab.max_skip)
                ids.append(vocab.skip + size - 1)
                pos.append(where(int(units[u, 0]), s))
                u, run = u + size, run - size
            continue
        d = diff[b]
        if s == 0:
            t, esc = vocab.dc_ids(d[:1])
            value(t[0], bool(esc[0]), int(d[0]), vocab.dc_range, where(b, 0))
        if e > 1:                                             # AC part: runs, ZRLs, EOB
            last = max(s, 1) - 1
            for j in np.flatnonzero(d[max(s, 1):e]) + max(s, 1):
                run = int(j) - last - 1
                while run >= 16:
                    last += 16
                    ids.append(vocab.zrl)
                    pos.append(where(b, last))
                    run -= 16
                t, esc = vocab.ac_ids(np.array([run]), d[j:j + 1])
                value(t[0], bool(esc[0]), int(d[j]), vocab.ac_range, where(b, int(j)))
                last = int(j)
            ids.append(vocab.eob)
            pos.append(where(b, EOB_FREQ))
        u += 1
    return ids, pos


_MASKS: dict[tuple, np.ndarray] = {}      # shared, read-only masks by state key


class DeltaGrammar:
    """A cursor over one delta frame's stream; `cur` holds the frame as decoded so far.

    `finished` is True once every unit is coded or skipped. See the module docstring.
    """

    def __init__(self, vocab: Vocab, layout: BlockLayout, prev: np.ndarray, frame: int):
        self.vocab, self.layout, self.frame = vocab, layout, frame
        self.prev = prev.astype(np.int64)
        self.cur = self.prev.copy()
        self.units, self.pass_end = delta_units(layout)
        self.n = len(self.units)
        self.u = 0                      # unit being coded
        self.k = 0                      # next zigzag index
        self.fresh = True               # unit not started (SKIP or its first value)
        self.nonzero = False            # unit has a nonzero difference so far
        self.after_zrl = False
        self.no_skip = False            # a SKIP shorter than max_skip must be followed by a coded unit
        self._pending: list[int] = []   # byte limits of an escape still to come
        self._esc: tuple[int, int, int, int] | None = None   # (index, sign, base, payload so far)
        self._pos = np.zeros(5, np.int64)
        self._enter(0)

    @property
    def finished(self) -> bool:
        return self.u == self.n and not self._pending

    def _enter(self, u: int, no_skip: bool = False) -> None:
        self.u, self.fresh, self.nonzero, self.after_zrl, self.no_skip = u, True, False, False, no_skip
        self.b, self.s, self.e = (int(x) for x in self.units[u]) if u < self.n else (0, 0, 0)
        self.k = self.s

    def _where(self, k: int) -> np.ndarray:
        b, lay = self.b, self.layout
        return np.array([self.frame, lay.comp[b] + 1, lay.row[b], lay.col[b], k])

    def allowed(self) -> np.ndarray:
        key = self._key()
        m = _MASKS.get(key)
        if m is None:
            m = self._mask()
            m.flags.writeable = False
            if len(_MASKS) < 1 << 14:
                _MASKS[key] = m
        return m

    def _skip_max(self) -> int:
        if not self.fresh or self.no_skip:
            return 0
        return min(self.vocab.max_skip, int(self.pass_end[self.u]) - self.u)

    def _key(self) -> tuple:
        """What the mask depends on; reference values enter only where they limit the range."""
        v = self.vocab
        if self._pending or self.u == self.n:
            return (v, tuple(self._pending[:1]), self.u == self.n)
        if self.k == 0:
            p = int(self.prev[self.b, 0])
            return (v, 0, self.e, self._skip_max(),
                    p if not DC_MIN + v.dc_range < p < DC_MAX - v.dc_range else None)
        near = self.prev[self.b, self.k:min(self.k + 16, self.e)]
        edge = tuple(near.tolist()) if near.size and np.abs(near).max() >= AC_MAX - v.ac_range else None
        return (v, self.k, self.e, self._skip_max(), self.nonzero and not self.after_zrl, edge)

    def _mask(self) -> np.ndarray:
        v = self.vocab
        m = np.zeros(v.size, bool)
        if self._pending:
            m[v.byte:v.byte + self._pending[0] + 1] = True
            return m
        if self.u == self.n:
            return m
        m[v.skip:v.skip + self._skip_max()] = True                   # SKIP(1..) at a fresh unit
        if self.k == 0:                                              # DC difference
            p, r = int(self.prev[self.b, 0]), v.dc_range
            lo, hi = max(-r, DC_MIN - p), min(r, DC_MAX - p)
            m[v.dc + lo + r:v.dc + hi + r + 1] = True
            m[v.dc + r] = self.e > 1                                 # a DC-only unit is never DC(0)
            m[v.dc + 2 * r + 1] = DC_MAX - p > r
            m[v.dc + 2 * r + 2] = p - DC_MIN > r
            return m
        a, s = v.ac_range, v.ac_stride
        for run in range(min(16, self.e - self.k)):
            p = int(self.prev[self.b, self.k + run])
            base = v.ac + run * s
            m[base:base + min(a, AC_MAX - p)] = True                  # +1.. ; slot = v - 1
            m[base + a:base + a + min(a, AC_MAX + p)] = True          # -1.. ; slot = a + |v| - 1
            m[base + 2 * a] = AC_MAX - p > a
            m[base + 2 * a + 1] = AC_MAX + p > a
        m[v.zrl] = self.k + 16 <= self.e - 1
        m[v.eob] = self.nonzero and not self.after_zrl
        return m

    def push(self, token: int) -> np.ndarray:
        token, v = int(token), self.vocab
        if not (0 <= token < v.size) or not self.allowed()[token]:
            raise TokenizerError(f"token {token} is not allowed in delta frame {self.frame} "
                                 f"(unit {self.u} of {self.n}, frequency {self.k})")
        if self._pending:
            return self._push_byte(token - v.byte)
        if self.fresh and token >= v.skip:                   # SKIP(n): this unit and the next n - 1
            n = token - v.skip + 1
            pos = self._where(self.s)
            end = int(self.pass_end[self.u])
            self._enter(self.u + n, no_skip=n < v.max_skip and self.u + n < end)
            return pos
        self.fresh = False
        if self.k == 0:                                      # DC difference
            pos, r, p = self._where(0), v.dc_range, int(self.prev[self.b, 0])
            d = token - v.dc - r
            self.k = 1
            if d > r:                                        # escape: 2 bytes follow
                sign = 1 if d == r + 1 else -1
                self._escape(pos, 0, sign, r, (DC_MAX - p if sign > 0 else p - DC_MIN) - r - 1)
            else:
                self.cur[self.b, 0] = p + d
                self.nonzero = d != 0
                self._dc_unit_done()
            return pos
        if token == v.eob:
            pos = self._where(EOB_FREQ)
            self._enter(self.u + 1)
            return pos
        if token == v.zrl:
            self.k += 16
            self.after_zrl = True
            return self._where(self.k - 1)
        run, slot = divmod(token - v.ac, v.ac_stride)
        j = self.k + run
        pos, a, p = self._where(j), v.ac_range, int(self.prev[self.b, j])
        self.k, self.nonzero, self.after_zrl = j + 1, True, False
        if slot >= 2 * a:
            sign = 1 if slot == 2 * a else -1
            self._escape(pos, j, sign, a, (AC_MAX - p if sign > 0 else AC_MAX + p) - a - 1)
        else:
            self.cur[self.b, j] = p + (slot + 1 if slot < a else -(slot - a + 1))
        return pos

    def _dc_unit_done(self) -> None:
        """A DC-only unit (coarse_to_fine's DC pass) ends with its value, no EOB."""
        if self.e == 1:
            self._enter(self.u + 1)

    def _escape(self, pos: np.ndarray, index: int, sign: int, direct: int, max_payload: int) -> None:
        assert max_payload >= 0
        self._pending = [max_payload >> 8, max_payload & 255]
        self._esc = (index, sign, direct, 0)
        self._pos = pos
        self.nonzero = True

    def _push_byte(self, byte: int) -> np.ndarray:
        limit = self._pending.pop(0)
        if self._pending and byte < limit:
            self._pending[0] = 255                          # high byte below its limit frees the low byte
        index, sign, direct, payload = self._esc
        payload = payload * 256 + byte
        self._esc = (index, sign, direct, payload)
        if not self._pending:
            self.cur[self.b, index] = self.prev[self.b, index] + sign * (payload + direct + 1)
            self._esc = None
            if index == 0:
                self._dc_unit_done()
        return self._pos
