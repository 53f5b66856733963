"""The grammar of JPEG-DCT streams as a state machine: which ids may come next.

For a given header (geometry, layout) and block order, valid streams form a regular language. The
cursor walks the same unit schedule as the codec (`BlockLayout.units`) and allows exactly the
streams `encode` can produce whose coefficients baseline libjpeg can write: runs that stay inside
their block or band, no ZRL before EOB, SKIP runs that are maximal (so each image has one stream),
DC values within 8-bit JPEG's range (-1024..1023, tracked per component, so every DC difference fits
baseline coding in any block order) and |AC| <= 1023.

    g = tok.grammar()            # or tok.grammar(prefix) to continue a prefix
    while not g.done:
        mask = g.allowed()       # (vocab_size,) bool, read-only
        pos = g.push(token)      # the token's position row; TokenizerError if not allowed
"""

from __future__ import annotations

import copy

import numpy as np

from tokenizer.base import TokenizerError
from tokenizer.jpeg.format import EOB_FREQ, HEADER_LEN, Vocab, block_layout
from tokenizer.jpeg.io import AC_MAX, DC_MAX, DC_MIN, SUBSAMPLINGS


class JpegGrammar:
    """A cursor over one stream. See the module docstring."""

    def __init__(self, vocab: Vocab, order: str, bands: tuple[int, ...], max_pixels: int = 1 << 26):
        self.vocab, self.order, self.bands, self.max_pixels = vocab, order, bands, max_pixels
        self._masks: dict[tuple, np.ndarray] = {}
        self.header: list[int] = []
        self.layout = None                  # the header's BlockLayout, once the header is complete
        self.done = False
        self._pending: list[int] = []      # allowed maxima of the escape bytes still to come
        self._pending_pos = None            # position the escape bytes repeat (their value's)
        self._dc: list[int] = []            # current DC value per component
        self._dc_escape = None              # (component, sign, payload so far) of a DC escape
        # In the body (set by _enter): `units` is the layout's schedule of (block, start, end) rows,
        # `u` the unit being coded, `k` the next zigzag index it may code, `after_zrl` whether the
        # last token was ZRL, `no_skip` whether a SKIP here would continue the previous SKIP's run.

    def copy(self) -> JpegGrammar:
        """An independent cursor at the same place (masks and layout are shared, read-only)."""
        g = copy.copy(self)
        g.header, g._pending, g._dc = list(self.header), list(self._pending), list(self._dc)
        return g

    # -- masks ------------------------------------------------------------------------------------
    def _mask(self, key: tuple) -> np.ndarray:
        m = self._masks.get(key)
        if m is None:
            m = np.zeros(self.vocab.size, bool)
            self._fill(m, key)
            m.flags.writeable = False
            self._masks[key] = m
        return m

    def _fill(self, m: np.ndarray, key: tuple) -> None:
        v = self.vocab
        kind = key[0]
        if kind == "ids":
            m[list(key[1])] = True
        elif kind == "bytes":                       # byte values lo..hi
            m[v.byte + key[1]:v.byte + key[2] + 1] = True
        elif kind == "quality":
            m[v.quality:v.quality + 100] = True
            m[v.qt_custom] = True
        elif kind == "dc":                          # DC differences lo..hi (clipped to the direct range)
            _, lo, hi = key
            r = v.dc_range
            m[v.dc + max(lo, -r) + r:v.dc + min(hi, r) + r + 1] = True
            m[v.dc + 2 * r + 1] = hi > r            # escape +
            m[v.dc + 2 * r + 2] = lo < -r           # escape -
        elif kind == "ac":
            _, room, fresh, after_zrl, skip_max = key
            # AC(run, any value) while run zeros and the value still fit in the `room` indices left
            for r in range(min(16, room)):
                m[v.ac + r * v.ac_stride:v.ac + (r + 1) * v.ac_stride] = True
            m[v.zrl] = room >= 17                   # 16 zeros, and a nonzero after them must still fit
            # EOB: never right after ZRL (trailing zeros are the EOB's); in coarse_to_fine never on an
            # empty band (that is a SKIP)
            m[v.eob] = not after_zrl and (self.order == "raster" or not fresh)
            m[v.skip:v.skip + skip_max] = True      # SKIP(1..skip_max)

    def allowed(self) -> np.ndarray:
        if self.done:
            return self._mask(("ids", ()))
        if self._pending:                           # inside an escape: its next byte, up to its limit
            return self._mask(("bytes", 0, self._pending[0]))
        if self.layout is None:
            return self._header_mask()
        if self.u == len(self.units):               # every unit coded: only EOS
            return self._mask(("ids", (self.vocab.eos,)))
        _, s, e = self.units[self.u]                # the unit being coded: zigzag s..e-1 of a block
        if s == 0:                                  # a DC unit: differences that keep the DC in range
            lo, hi = self._dc_room()
            r = self.vocab.dc_range
            # (beyond the direct range only "escape allowed or not" matters: clip, so masks are shared)
            return self._mask(("dc", max(lo, -r - 1), min(hi, r + 1)))
        fresh = self.k == s                         # nothing coded in this unit yet
        skip_max = 0
        if fresh and self.order != "raster" and not self.no_skip:
            n = self.layout.n_blocks                # units of one band: n, so a SKIP stays in its band
            skip_max = min(self.vocab.max_skip, n * (self.u // n + 1) - self.u)
        return self._mask(("ac", e - self.k, fresh, self.after_zrl, skip_max))

    def _header_mask(self) -> np.ndarray:
        v, j = self.vocab, len(self.header)
        if j == 0:
            return self._mask(("ids", (v.bos,)))
        if j == 1:
            return self._mask(("ids", tuple(range(v.sub, v.sub + len(SUBSAMPLINGS)))))
        if j in (2, 4):
            return self._mask(("bytes", 0, 255))
        if j in (3, 5):                              # height and width are >= 1
            return self._mask(("bytes", 0 if self.header[j - 1] > v.byte else 1, 255))
        if j == 6:
            return self._mask(("quality",))
        return self._mask(("bytes", 1, 255))        # custom quantization table entries

    # -- transitions ------------------------------------------------------------------------------
    def push(self, token: int) -> np.ndarray:
        token = int(token)
        if not (0 <= token < self.vocab.size) or not self.allowed()[token]:
            raise TokenizerError(f"token {token} is not allowed here ({self._where()})")
        if self._pending:
            return self._push_escape_byte(token)
        if self.layout is None:
            return self._push_header(token)
        if self.u == len(self.units):
            self.done = True
            return np.array([0, 0, 0, 0, HEADER_LEN])
        return self._push_body(token)

    def _where(self) -> str:
        if self.layout is None:
            return f"header token {len(self.header)}"
        return f"unit {getattr(self, 'u', 0)} of {len(self.units)}, frequency {getattr(self, 'k', 0)}"

    def _push_escape_byte(self, token: int) -> np.ndarray:
        limit = self._pending.pop(0)
        if self._pending and token - self.vocab.byte < limit:
            self._pending[0] = 255                  # high byte below its limit frees the low byte
        if self._dc_escape is not None:             # a DC escape: collect the payload, then move the DC
            c, sign, payload = self._dc_escape
            payload = payload * 256 + token - self.vocab.byte
            self._dc_escape = (c, sign, payload)
            if not self._pending:                   # |difference| = payload + dc_range + 1
                self._dc[c] += sign * (payload + self.vocab.dc_range + 1)
                self._dc_escape = None
        return self._pending_pos

    def _push_header(self, token: int) -> np.ndarray:
        v = self.vocab
        j = len(self.header)
        self.header.append(token)
        pos = np.zeros(5, np.int64)
        if j < HEADER_LEN:
            pos[4] = j
        else:
            pos[2], pos[4] = (j - HEADER_LEN) // 64 + 1, (j - HEADER_LEN) % 64
        n_tables = 1 if j < 2 or self.header[1] == v.sub else 3
        if (j == HEADER_LEN - 1 and token != v.qt_custom) or j == HEADER_LEN - 1 + 64 * n_tables:
            b = [t - v.byte for t in self.header[2:6]]
            height, width = b[0] << 8 | b[1], b[2] << 8 | b[3]
            if height * width > self.max_pixels:
                raise TokenizerError(f"header asks for {width}x{height} pixels, over max_pixels")
            sub = list(SUBSAMPLINGS)[self.header[1] - v.sub]
            self.layout = block_layout(height, width, sub, self.order, self.bands)
            self.units = self.layout.units.tolist()
            self._dc = [0] * len(self.layout.grid)
            self._enter(0)
        return pos

    def _enter(self, u: int, no_skip: bool = False) -> None:
        """Start unit `u` (len(units): the body is complete) at its band's first zigzag index."""
        self.u = u
        self.k = self.units[u][1] if u < len(self.units) else 0
        self.after_zrl = False
        self.no_skip = no_skip

    def _position(self, freq: int) -> np.ndarray:
        b = self.units[self.u][0]
        lay = self.layout
        return np.array([0, lay.comp[b] + 1, lay.row[b], lay.col[b], freq])

    def _dc_room(self) -> tuple[int, int]:
        """Smallest and largest DC difference that keep this block's DC within DC_MIN..DC_MAX."""
        dc = self._dc[self.layout.comp[self.units[self.u][0]]]
        return DC_MIN - dc, DC_MAX - dc

    def _push_body(self, token: int) -> np.ndarray:
        """One body token (already allowed): its position, and the cursor moved past it."""
        v = self.vocab
        _, s, e = self.units[self.u]
        if s == 0:                                   # DC: the difference moves this component's DC
            pos = self._position(0)
            c, r = int(self.layout.comp[self.units[self.u][0]]), v.dc_range
            if token >= v.dc + 2 * r + 1:            # escape: two bytes follow, their payload bounded so
                lo, hi = self._dc_room()             # the DC stays in range; the DC moves after them
                sign = 1 if token == v.dc + 2 * r + 1 else -1
                self._escape(pos, (hi if sign > 0 else -lo) - r - 1)
                self._dc_escape = (c, sign, 0)
            else:
                self._dc[c] += token - v.dc - r
            self._enter(self.u + 1)
            return pos
        if token == v.eob:                           # the unit ends (position: frequency 64)
            pos = self._position(EOB_FREQ)
            self._enter(self.u + 1)
            return pos
        if token >= v.skip:                          # SKIP(n): this unit and the next n - 1 are empty
            n = token - v.skip + 1
            pos = self._position(s)                  # at the first skipped block, band start frequency
            nxt = self.u + n
            nb = self.layout.n_blocks
            # a short SKIP ends its run: the next unit of the same band may not start with SKIP
            self._enter(nxt, no_skip=n < v.max_skip and nxt // nb == self.u // nb)
            return pos
        if token == v.zrl:                           # 16 zeros; position: the last of them
            self.k += 16
            self.after_zrl = True
            return self._position(self.k - 1)
        run, slot = divmod(token - v.ac, v.ac_stride)   # AC(run, value): run zeros, then the value
        self.k += run + 1
        self.after_zrl = False
        pos = self._position(self.k - 1)             # at the value's zigzag index
        if slot >= 2 * v.ac_range:                   # escape: two bytes, |value| <= AC_MAX
            self._escape(pos, AC_MAX - v.ac_range - 1)
        return pos

    def _escape(self, pos: np.ndarray, max_payload: int) -> None:
        """Expect two byte tokens (high, low) whose 16-bit value is at most `max_payload`."""
        self._pending = [max_payload >> 8, max_payload & 255]
        self._pending_pos = pos


def accepts(grammar: JpegGrammar, ids: np.ndarray) -> bool:
    """True if `ids` is one complete valid stream."""
    try:
        for t in ids:
            grammar.push(int(t))
    except TokenizerError:
        return False
    return grammar.done
