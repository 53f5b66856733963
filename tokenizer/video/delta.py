"""Delta frames: a frame's quantized coefficients coded as the difference from the previous frame's.

Blocks are visited in JPEG's MCU raster order (`BlockLayout`, order "raster"). A block whose 64
differences are all zero is part of a SKIP(n) run (n <= max_skip, greedy and maximal, so each frame
has one stream); any other block is coded with the JPEG-DCT vocabulary:

    DC(d0)  AC(run, d)... [ZRL]...  EOB

where d0 is the DC *difference from the previous frame* (no DPCM across blocks) and the AC tokens
code the nonzero differences run-length style; values beyond the direct ranges use the same escape
tokens + two byte tokens as intra frames. A coded block has at least one nonzero difference (so DC(0)
EOB never occurs). The grammar knows the previous frame's coefficients and only allows differences
that keep DC in -1024..1023 and |AC| <= 1023, so every sampled frame is a baseline JPEG.
"""

from __future__ import annotations

import numpy as np

from tokenizer.base import TokenizerError
from tokenizer.jpeg.format import EOB_FREQ, BlockLayout, Vocab
from tokenizer.jpeg.io import AC_MAX, DC_MAX, DC_MIN


def encode_delta(vocab: Vocab, layout: BlockLayout, prev: np.ndarray, cur: np.ndarray,
                 frame: int) -> tuple[list[int], list[tuple[int, ...]]]:
    """(ids, position rows) of the delta stream of `cur` given `prev`, both (n_blocks, 64) in
    `layout` order (zigzag)."""
    diff = cur.astype(np.int64) - prev.astype(np.int64)
    changed = diff.any(1)
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

    b, n = 0, layout.n_blocks
    while b < n:
        if not changed[b]:
            run = int(np.argmax(changed[b:])) if changed[b:].any() else n - b
            while run:
                size = min(run, vocab.max_skip)
                ids.append(vocab.skip + size - 1)
                pos.append(where(b, 0))
                b, run = b + size, run - size
            continue
        d = diff[b]
        t, esc = vocab.dc_ids(d[:1])
        value(t[0], bool(esc[0]), int(d[0]), vocab.dc_range, where(b, 0))
        last = 0
        for j in np.flatnonzero(d[1:]) + 1:
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
        b += 1
    return ids, pos


_MASKS: dict[tuple, np.ndarray] = {}      # shared, read-only masks by state key


class DeltaGrammar:
    """A cursor over one delta frame's stream; `cur` holds the frame as decoded so far.

    `finished` is True once every block is coded or skipped. See the module docstring.
    """

    def __init__(self, vocab: Vocab, layout: BlockLayout, prev: np.ndarray, frame: int):
        self.vocab, self.layout, self.frame = vocab, layout, frame
        self.prev = prev.astype(np.int64)
        self.cur = self.prev.copy()
        self.n = layout.n_blocks
        self.b = 0                      # block being coded
        self.k = 0                      # next zigzag index (0: block not started)
        self.nonzero = False            # block has a nonzero difference so far
        self.after_zrl = False
        self.no_skip = False            # a SKIP shorter than max_skip must be followed by a coded block
        self._pending: list[int] = []   # byte limits of an escape still to come
        self._esc: tuple[int, int, int, int] | None = None   # (index, sign, base, payload so far)
        self._pos = np.zeros(5, np.int64)

    @property
    def finished(self) -> bool:
        return self.b == self.n and not self._pending

    def _where(self, k: int) -> np.ndarray:
        b, lay = min(self.b, self.n - 1), self.layout
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

    def _key(self) -> tuple:
        """What the mask depends on; previous values enter only where they limit the range."""
        v = self.vocab
        if self._pending or self.b == self.n:
            return (v, tuple(self._pending[:1]), self.b == self.n)
        if self.k == 0:
            p = int(self.prev[self.b, 0])
            return (v, 0, self.no_skip, min(v.max_skip, self.n - self.b),
                    p if not DC_MIN + v.dc_range < p < DC_MAX - v.dc_range else None)
        near = self.prev[self.b, self.k:self.k + 16]
        edge = tuple(near.tolist()) if near.size and np.abs(near).max() >= AC_MAX - v.ac_range else None
        return (v, self.k, self.nonzero and not self.after_zrl, edge)

    def _mask(self) -> np.ndarray:
        v = self.vocab
        m = np.zeros(v.size, bool)
        if self._pending:
            m[v.byte:v.byte + self._pending[0] + 1] = True
            return m
        if self.b == self.n:
            return m
        if self.k == 0:                                     # block start: SKIP or DC
            if not self.no_skip:
                m[v.skip:v.skip + min(v.max_skip, self.n - self.b)] = True
            p, r = int(self.prev[self.b, 0]), v.dc_range
            lo, hi = max(-r, DC_MIN - p), min(r, DC_MAX - p)
            m[v.dc + lo + r:v.dc + hi + r + 1] = True
            m[v.dc + 2 * r + 1] = DC_MAX - p > r
            m[v.dc + 2 * r + 2] = p - DC_MIN > r
            return m
        a, s = v.ac_range, v.ac_stride
        for run in range(min(16, 64 - self.k)):
            p = int(self.prev[self.b, self.k + run])
            base = v.ac + run * s
            m[base:base + min(a, AC_MAX - p)] = True                  # +1.. ; slot = v - 1
            m[base + a:base + a + min(a, AC_MAX + p)] = True          # -1.. ; slot = a + |v| - 1
            m[base + 2 * a] = AC_MAX - p > a
            m[base + 2 * a + 1] = AC_MAX + p > a
        m[v.zrl] = self.k + 16 <= 63
        m[v.eob] = self.nonzero and not self.after_zrl
        return m

    def push(self, token: int) -> np.ndarray:
        token, v = int(token), self.vocab
        if not (0 <= token < v.size) or not self.allowed()[token]:
            raise TokenizerError(f"token {token} is not allowed in delta frame {self.frame} "
                                 f"(block {self.b} of {self.n}, frequency {self.k})")
        if self._pending:
            return self._push_byte(token - v.byte)
        if self.k == 0 and token >= v.skip:
            n = token - v.skip + 1
            pos = self._where(0)
            self.b += n
            self.no_skip = n < v.max_skip and self.b < self.n
            return pos
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
            return pos
        if token == v.eob:
            pos = self._where(EOB_FREQ)
            self.b, self.k, self.nonzero, self.after_zrl, self.no_skip = self.b + 1, 0, False, False, False
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
        return self._pos
