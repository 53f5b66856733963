"""The grammar of JPEG-DCT streams as a state machine: which ids may come next.

For a given header (geometry, layout) and block order, valid streams form a regular language. The
cursor walks the same unit schedule as the codec (`BlockLayout.units`) and allows exactly the
streams `encode` can produce whose coefficients baseline libjpeg can write: runs that stay inside
their block or band, no ZRL before EOB, SKIP runs that are maximal (so each image has one stream),
DC values within 8-bit JPEG's range (-1024..1023, tracked per component, so every DC difference fits
baseline coding in any block order) and |AC| <= 1023.

That range is what a JPEG file can hold, not what 8-bit pixels produce: a block's mean is
DC * q / 8 + 128 for its component's DC quantizer q, so at quality 25 (q = 32 for luma) a DC of
1023 means a mean of 4,220. A `bounded` cursor (sampling, never encoding) keeps every DC where a
block of 0..255 pixels puts it (`dc_bounds`). The AC terms cannot be bounded one by one without
forbidding blocks real photos have (a sum of |AC| bound rejects 12% of quality-25 photo blocks),
so a `resample` cursor (raster order) checks each block's exact pixels at its EOB: outside
[LOW, HIGH] it returns to the block's start and raises Rewind, and the sampler draws the block
again; after MAX_TRIES draws the block is DC only (flat, always in range).

    g = tok.grammar()            # or tok.grammar(prefix) to continue a prefix; bounded=True to sample
    while not g.done:
        mask = g.allowed()       # (vocab_size,) bool, read-only
        pos = g.push(token)      # the token's position row; TokenizerError if not allowed
"""

from __future__ import annotations

import copy
import functools

import numpy as np

from tokenizer.base import Rewind, TokenizerError
from tokenizer.jpeg.codec import parse_header
from tokenizer.jpeg.format import EOB_FREQ, HEADER_LEN, Vocab, block_layout
from tokenizer.jpeg.io import AC_MAX, DC_MAX, DC_MIN, SUBSAMPLINGS, ZIGZAG


def dc_bounds(q: int) -> tuple[int, int]:
    """(lowest, highest) quantized DC an 8-bit block can have with DC quantizer step `q`.

    The inverse DCT makes a block's mean DC * q / 8 + 128, so pixels in 0..255 put the unquantized
    DC in 8 * (0 - 128) .. 8 * (255 - 128) = -1024..1016; libjpeg rounds half away from zero.
    Both ends are reached (a black and a white block).
    """
    return -((1024 + q // 2) // q), (1016 + q // 2) // q


LOW, HIGH = -64, 319    # pixel range (before clamping) a resampled block must stay within
MAX_TRIES = 16          # draws of one block before it is made flat


@functools.cache
def _idct_basis() -> np.ndarray:
    """(64, 8, 8): the pixels of each zigzag coefficient, 1/4 C(u) C(v) cos((2x+1)u pi/16) cos(...)."""
    u = np.arange(8)
    c = np.where(u == 0, np.sqrt(0.5), 1.0)
    cos = np.cos((2 * u[:, None] + 1) * u[None, :] * np.pi / 16) * c / 2     # (x, u), scaled
    return np.einsum("xu,yv->uvxy", cos, cos).reshape(64, 8, 8)[ZIGZAG]


def block_pixels(blocks: np.ndarray, qtable: np.ndarray) -> np.ndarray:
    """(..., 64) zigzag quantized coefficients and their (64,) table -> (..., 8, 8) pixels as the
    exact inverse DCT gives them, level shift included, before any decoder clamps them to 0..255."""
    return np.tensordot(blocks * np.asarray(qtable, np.float64), _idct_basis(), axes=1) + 128


class JpegGrammar:
    """A cursor over one stream. See the module docstring.

    `bounded`: keep each sampled DC within `dc_bounds` of its component's quantization table.
    `resample` (raster order): raise Rewind at the EOB of a block whose pixels leave [LOW, HIGH].
    Both may be switched on after a prefix (tokenizer.grammar does), so a prefix is accepted as it
    is. `rejected` and `flattened` count the blocks drawn again and those made flat.
    """

    def __init__(self, vocab: Vocab, order: str, bands: tuple[int, ...], max_pixels: int = 1 << 26,
                 bounded: bool = False):
        self.vocab, self.order, self.bands, self.max_pixels = vocab, order, bands, max_pixels
        self._masks: dict[tuple, np.ndarray] = {}
        self._cur: np.ndarray | None = None  # allowed() at this place, until the next push
        self.bounded = bounded
        self.header: list[int] = []
        self.layout = None                  # the header's BlockLayout, once the header is complete
        self.done = False
        self._pending: list[tuple[int, int]] = []   # (lowest, highest) of each escape byte to come
        self._pending_pos = None            # position the escape bytes repeat (their value's)
        self._dc: list[int] = []            # current DC value per component
        self._escaping = None               # (component, zigzag index, sign, payload so far)
        self.resample, self.rejected, self.flattened = False, 0, 0
        self._n = 0                         # tokens pushed
        self._block: list[int] = [0] * 64   # resample: the current block's coefficients so far
        self._start: JpegGrammar | None = None  # resample: this cursor before the block's DC
        self._tries = 0                     # resample: draws of the current block so far
        # In the body (set by _enter): `units` is the layout's schedule of (block, start, end) rows,
        # `u` the unit being coded, `k` the next zigzag index it may code, `after_zrl` whether the
        # last token was ZRL, `no_skip` whether a SKIP here would continue the previous SKIP's run.

    @property
    def bounded(self) -> bool:
        return self._bounded

    @bounded.setter
    def bounded(self, on: bool) -> None:
        self._bounded, self._cur = on, None    # the cached mask may be the other mode's

    def copy(self) -> JpegGrammar:
        """An independent cursor at the same place (masks and layout are shared, read-only)."""
        g = copy.copy(self)
        g.header, g._pending, g._dc = list(self.header), list(self._pending), list(self._dc)
        g._block = list(self._block)
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
            if max(lo, -r) <= min(hi, r):           # (after an out-of-range prefix, none may be direct)
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
        if self._cur is None:
            self._cur = self._allowed()
        return self._cur

    def _allowed(self) -> np.ndarray:
        if self.done:
            return self._mask(("ids", ()))
        if self._pending:                           # inside an escape: its next byte, within its limits
            return self._mask(("bytes", *self._pending[0]))
        if self.layout is None:
            return self._header_mask()
        if self.u == len(self.units):               # every unit coded: only EOS
            return self._mask(("ids", (self.vocab.eos,)))
        _, s, e = self.units[self.u]                # the unit being coded: zigzag s..e-1 of a block
        if s == 0:                                  # a DC unit: differences that keep the DC in range
            lo, hi = self._dc_room()
            r = self.vocab.dc_range
            # (beyond the direct range only "escape allowed or not" matters: clip, so masks are shared)
            return self._mask(("dc", min(max(lo, -r - 1), r + 1), max(min(hi, r + 1), -r - 1)))
        if self._tries >= MAX_TRIES:                 # resample gave up on this block: flat
            return self._mask(("ids", (self.vocab.eob,)))
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
        self._cur = None
        self._n += 1
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
        lo, hi = self._pending.pop(0)
        if self._pending:                           # a high byte inside its limits frees the low byte
            b, (lo2, hi2) = token - self.vocab.byte, self._pending[0]
            self._pending[0] = (lo2 if b == lo else 0, hi2 if b == hi else 255)
        c, k, sign, payload = self._escaping
        payload = payload * 256 + token - self.vocab.byte
        self._escaping = (c, k, sign, payload)
        if not self._pending:                       # the value is complete: |value| = payload + range + 1
            if k == 0:                              # a DC difference: move the DC
                self._dc[c] += sign * (payload + self.vocab.dc_range + 1)
                self._block[0] = self._dc[c]
            else:
                self._block[k] = sign * (payload + self.vocab.ac_range + 1)
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
            self._qtables = parse_header(v, np.array(self.header + [v.eos]))[3]
            self._dc_bounds = [dc_bounds(int(q)) for q in self._qtables[:, 0]]
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
        """Smallest and largest DC difference that keep this block's DC within DC_MIN..DC_MAX
        (bounded: within what 8-bit pixels give with this component's table)."""
        c = self.layout.comp[self.units[self.u][0]]
        lo, hi = self._dc_bounds[c] if self.bounded else (DC_MIN, DC_MAX)
        return lo - self._dc[c], hi - self._dc[c]

    def _push_body(self, token: int) -> np.ndarray:
        """One body token (already allowed): its position, and the cursor moved past it."""
        v = self.vocab
        _, s, e = self.units[self.u]
        if s == 0:                                   # DC: the difference moves this component's DC
            pos = self._position(0)
            c, r = int(self.layout.comp[self.units[self.u][0]]), v.dc_range
            if self.resample and (self._start is None or self._start.u != self.u):   # a new block
                self._tries, self._block = 0, [0] * 64
                self._start = self.copy()           # where a rejected block takes the cursor back,
                self._start._n -= 1                 # before this DC token
            if token >= v.dc + 2 * r + 1:            # escape: two bytes follow, their payload bounded so
                lo, hi = self._dc_room()             # the DC stays in range; the DC moves after them
                sign = 1 if token == v.dc + 2 * r + 1 else -1
                least, most = (lo, hi) if sign > 0 else (-hi, -lo)   # |difference| limits
                self._escape(pos, max(0, least - r - 1), most - r - 1)
                self._escaping = (c, 0, sign, 0)
            else:
                self._dc[c] += token - v.dc - r
                self._block[0] = self._dc[c]
            self._enter(self.u + 1)
            return pos
        if token == v.eob:                           # the unit ends (position: frequency 64)
            if self.resample and self._start is not None and self._start.u == self.u - 1:
                self._check_block()                  # (a block the prefix began is the prefix's)
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
        a = v.ac_range
        if slot >= 2 * a:                            # escape: two bytes, |value| <= AC_MAX
            self._escape(pos, 0, AC_MAX - a - 1)
            self._escaping = (0, self.k - 1, 1 if slot == 2 * a else -1, 0)
        else:
            self._block[self.k - 1] = slot + 1 if slot < a else a - slot - 1
        return pos

    def _check_block(self) -> None:
        """At a block's EOB: if its pixels leave [LOW, HIGH], go back to its start; raise Rewind."""
        c = self.layout.comp[self.units[self.u][0]]
        px = block_pixels(np.array(self._block), self._qtables[c])
        if LOW <= px.min() and px.max() <= HIGH:
            return
        start, tries = self._start, self._tries + 1
        counts = self.rejected + 1, self.flattened + (tries == MAX_TRIES)
        n = self._n - start._n                      # tokens since the block's start, this EOB included
        self.__dict__.update(start.copy().__dict__)
        self._start, self._tries, (self.rejected, self.flattened) = start, tries, counts
        raise Rewind(n)

    def _escape(self, pos: np.ndarray, least: int, most: int) -> None:
        """Two escape bytes carrying a payload in least..most (big endian) come next."""
        self._pending = [(least >> 8, most >> 8), (least & 255, most & 255)]
        self._pending_pos = pos


def accepts(grammar: JpegGrammar, ids: np.ndarray) -> bool:
    """True if `ids` is one complete valid stream."""
    try:
        for t in ids:
            grammar.push(int(t))
    except TokenizerError:
        return False
    return grammar.done
