"""A sequential JPEG's Huffman-coded scan, re-created from its coefficients and its own tables.

    parts = split_jpeg(data)                    # head (SOI .. SOS header), scan, trailer
    spec = scan_spec(parts.head)                # what the head says: frame, scan, tables, restarts
    scan = encode_scan(spec, read_coefficients(data))
    assert parts.head + scan + parts.trailer == data   # for files libjpeg (and most encoders) write

Only what the quantized coefficients cannot say has to be kept beside them: the bytes around the
scan. The scan follows from the coefficients, the Huffman tables and the restart interval, provided
the encoder padded with 1-bits (the standard's choice) and filled the blocks past the image edge
that complete the last MCUs as libjpeg does (AC zero, DC of the block before it in the MCU). A
caller compares the result with the original scan and keeps the file as it is when they differ.
`symbol_counts` gives what Huffman optimization counts (tokenizer.jpeg.head recomputes tables).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from tokenizer.jpeg.io import Coefficients, block_grid, segments


@dataclass(frozen=True)
class JpegParts:
    """A JPEG cut around its first scan's entropy-coded data: head + scan + trailer == the file."""

    head: bytes       # SOI up to the end of the first SOS header
    scan: bytes       # entropy-coded data, RST markers included
    trailer: bytes    # from the first marker after the scan (EOI, anything after it)


class HuffmanTable(bytes):
    """A DHT table as the file writes it: 16 counts of codes per length, then the symbols."""

    @property
    def counts(self) -> bytes:
        return self[:16]

    @property
    def symbols(self) -> bytes:
        return self[16:]

    def codes(self) -> tuple[np.ndarray, np.ndarray]:
        """(code, length) per symbol 0..255 (length 0: not in the table), as in Annex C."""
        code, length = np.zeros(256, np.int64), np.zeros(256, np.int64)
        c, k = 0, 0
        for n_bits, count in enumerate(self.counts, start=1):
            for s in self.symbols[k:k + count]:
                code[s], length[s] = c, n_bits
                c += 1
            k += count
            c <<= 1
        return code, length


@dataclass(frozen=True)
class ScanSpec:
    """What a head says about its one scan."""

    height: int
    width: int
    factors: tuple[tuple[int, int], ...]   # (h, v) per frame component
    order: tuple[int, ...]                 # frame component index of each scan component
    dc: tuple[int, ...]                    # DC table id of each scan component
    ac: tuple[int, ...]                    # AC table id of each scan component
    tables: dict[tuple[int, int], HuffmanTable]   # (class 0 DC / 1 AC, id) -> table in force
    restart: int                           # MCUs per restart interval, 0 = none


def split_jpeg(data: bytes, name: str = "<bytes>") -> JpegParts:
    """Cut `data` around its first scan. ValueError naming `name` if it has none."""
    for seg in segments(data, name):
        if seg.marker == 0xDA:
            begin = seg.start + len(seg.payload)
            return JpegParts(data[:begin], data[begin:seg.end], data[seg.end:])
    raise ValueError(f"{name}: no scan (SOS)")


def parse_dht(payload: bytes, name: str = "<bytes>") -> list[tuple[int, HuffmanTable]]:
    """The (class << 4 | id, table) pairs of one DHT segment."""
    out, j = [], 0
    while j < len(payload):
        n = sum(payload[j + 1:j + 17])
        if j + 17 + n > len(payload):
            raise ValueError(f"{name}: truncated Huffman table (DHT)")
        out.append((payload[j], HuffmanTable(payload[j + 1:j + 17 + n])))
        j += 17 + n
    return out


def scan_spec(head: bytes, name: str = "<bytes>") -> ScanSpec:
    """Parse the head of a JPEG (split_jpeg(...).head). ValueError naming `name` when its scan is
    not one this module re-creates: a single sequential, Huffman-coded, 8-bit scan holding every
    component of the frame."""
    frame, tables, restart = None, {}, 0
    for marker, seg, _, _ in segments(head, name):
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if marker not in (0xC0, 0xC1) or seg[0] != 8:
                raise ValueError(f"{name}: not an 8-bit sequential Huffman JPEG (SOF{marker - 0xC0})")
            h, w, nc = struct.unpack(">HHB", seg[1:6])
            ids = [seg[6 + 3 * k] for k in range(nc)]
            frame = (h, w, ids, tuple((seg[7 + 3 * k] >> 4, seg[7 + 3 * k] & 15) for k in range(nc)))
        elif marker == 0xC4:
            tables.update({(tc >> 4, tc & 15): t for tc, t in parse_dht(seg, name)})
        elif marker == 0xDD and len(seg) >= 2:
            (restart,) = struct.unpack(">H", seg[:2])
        elif marker == 0xDA:
            if frame is None:
                raise ValueError(f"{name}: scan before the frame header")
            h, w, ids, factors = frame
            ns = seg[0]
            sel = [seg[1 + 2 * k] for k in range(ns)]
            if (len(seg) != 4 + 2 * ns or len(set(sel)) != ns or ns != len(ids) or set(sel) != set(ids)
                    or tuple(seg[-3:]) != (0, 63, 0)):
                raise ValueError(f"{name}: the first scan is not one sequential scan of every component")
            dc = tuple(seg[2 + 2 * k] >> 4 for k in range(ns))
            ac = tuple(seg[2 + 2 * k] & 15 for k in range(ns))
            if any((0, t) not in tables for t in dc) or any((1, t) not in tables for t in ac):
                raise ValueError(f"{name}: the scan uses a Huffman table the file does not define")
            return ScanSpec(h, w, factors, tuple(ids.index(s) for s in sel), dc, ac, tables, restart)
    raise ValueError(f"{name}: no scan (SOS) in the head")


@dataclass(frozen=True)
class Symbols:
    """Every Huffman symbol of a scan in stream order, with its extra bits."""

    table: np.ndarray      # (S,) index into `keys`
    symbol: np.ndarray     # (S,) 0..255
    extra: np.ndarray      # (S,) the value bits that follow the code
    n_extra: np.ndarray    # (S,)
    interval: np.ndarray   # (S,) restart interval
    keys: list[tuple[int, int]]   # (class, id) of each table index


def scan_symbols(spec: ScanSpec, coef: Coefficients) -> Symbols:
    """The symbols JPEG's sequential Huffman coding spends on these coefficients (Annex F.1.2)."""
    x, comp, mcu = _scan_blocks(spec, coef)
    n = len(x)
    interval = mcu // spec.restart if spec.restart else np.zeros(n, np.int64)
    # DC difference from the previous block of the same component; the predictor restarts at 0 in
    # every restart interval.
    group = comp * (interval.max(initial=0) + 1) + interval
    order = np.argsort(group, kind="stable")
    dc, g = x[order, 0], group[order]
    diff = np.diff(dc, prepend=0)
    first = np.concatenate([[True], g[1:] != g[:-1]])
    diff[first] = dc[first]
    dc_diff = np.empty(n, np.int64)
    dc_diff[order] = diff
    # AC nonzeros in zigzag order: run of zeros before each, ZRL for every 16, EOB after the last
    # unless it is coefficient 63.
    b, k = np.nonzero(x[:, 1:])
    k = k + 1
    first, ends = np.ones(len(b), bool), np.ones(len(b), bool)   # first / last nonzero of a block
    first[1:] = ends[:-1] = b[1:] != b[:-1]
    prev = np.where(first, 0, np.roll(k, 1))
    run, value = k - prev - 1, x[b, k]
    n_zrl = run // 16
    zb = np.repeat(b, n_zrl)
    zj = np.arange(len(zb)) - np.repeat(np.cumsum(n_zrl) - n_zrl, n_zrl)
    zplace = 4 * (np.repeat(prev, n_zrl) + 16 * (zj + 1)) + 1
    last = np.zeros(n, np.int64)                 # zigzag index of each block's last nonzero
    last[b[ends]] = k[ends]
    eob = np.nonzero(last < 63)[0]
    # One row per symbol: (block, place within block) sorts them into stream order.
    scomp = _scan_index(spec, comp)
    keys = sorted({(0, t) for t in spec.dc} | {(1, t) for t in spec.ac})
    dc_t = np.array([keys.index((0, t)) for t in spec.dc])[scomp]
    ac_t = np.array([keys.index((1, t)) for t in spec.ac])[scomp]
    s_dc, s_ac = _bit_length(dc_diff), _bit_length(value)
    block = np.concatenate([np.arange(n), b, zb, eob])
    place = np.concatenate([np.zeros(n, np.int64), 4 * k + 2, zplace, np.full(len(eob), 256)])
    sym = np.concatenate([s_dc, (run % 16) * 16 + s_ac, np.full(len(zb), 0xF0), np.zeros(len(eob), np.int64)])
    n_extra = np.concatenate([s_dc, s_ac, np.zeros(len(zb) + len(eob), np.int64)])
    extra = np.concatenate([_extra_bits(dc_diff, s_dc), _extra_bits(value, s_ac),
                            np.zeros(len(zb) + len(eob), np.int64)])
    table = np.concatenate([dc_t, ac_t[b], ac_t[zb], ac_t[eob]])
    if s_dc.max(initial=0) > 11 or s_ac.max(initial=0) > 10:
        raise ValueError("coefficients outside what 8-bit Huffman coding holds")
    o = np.argsort(block * 260 + place, kind="stable")
    return Symbols(table[o], sym[o], extra[o], n_extra[o], interval[block[o]], keys)


def _scan_index(spec: ScanSpec, comp: np.ndarray) -> np.ndarray:
    """Position in the scan's component list of each block's frame component."""
    lookup = np.zeros(len(spec.factors), np.int64)
    lookup[list(spec.order)] = np.arange(len(spec.order))
    return lookup[comp]


def _scan_blocks(spec: ScanSpec, coef: Coefficients) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, 64) zigzag coefficients, component and MCU index of every block the scan codes, in order.

    An interleaved scan codes whole MCUs: blocks past the image edge that complete them hold zero
    AC and the DC of the block before them in the MCU (libjpeg's dummy blocks)."""
    grid = block_grid(coef.height, coef.width, coef.subsampling)
    if [tuple(p.shape[:2]) for p in coef.blocks] != grid or (coef.height, coef.width) != (spec.height,
                                                                                           spec.width):
        raise ValueError("coefficients do not fit the frame header")
    planes = [p.reshape(-1, 64).astype(np.int64) for p in coef.blocks]
    if len(spec.order) == 1:       # a non-interleaved scan: one block per MCU, no padding
        c = spec.order[0]
        return planes[c], np.full(len(planes[c]), c), np.arange(len(planes[c]))
    hmax, vmax = max(h for h, _ in spec.factors), max(v for _, v in spec.factors)
    mcu_rows, mcu_cols = -(-spec.height // (8 * vmax)), -(-spec.width // (8 * hmax))
    parts = []                     # per scan component: (MCUs, blocks per MCU) rows and columns
    for c in spec.order:
        h, v = spec.factors[c]
        my, mx, dv, dh = np.meshgrid(np.arange(mcu_rows), np.arange(mcu_cols), np.arange(v), np.arange(h),
                                     indexing="ij")
        parts.append((np.full(v * h * mcu_rows * mcu_cols, c).reshape(-1, v * h),
                      (my * v + dv).reshape(-1, v * h), (mx * h + dh).reshape(-1, v * h)))
    comp, row, col = (np.concatenate([p[i] for p in parts], axis=1).ravel() for i in range(3))
    mcu = np.repeat(np.arange(mcu_rows * mcu_cols), len(comp) // (mcu_rows * mcu_cols))
    cols = np.array([g[1] for g in grid])[comp]
    real = (row < np.array([g[0] for g in grid])[comp]) & (col < cols)
    x = np.zeros((len(comp), 64), np.int64)
    base = np.cumsum([0] + [len(p) for p in planes])[:-1]
    flat = np.concatenate(planes)
    x[real] = flat[base[comp[real]] + row[real] * cols[real] + col[real]]
    for c in spec.order:           # dummy DC: forward fill within the component's block sequence
        at = np.nonzero(comp == c)[0]
        src = np.maximum.accumulate(np.where(real[at], np.arange(len(at)), 0))
        x[at, 0] = x[at[src], 0]
    return x, comp, mcu


def _bit_length(v: np.ndarray) -> np.ndarray:
    """JPEG's magnitude category: bits of |v| (0 for 0)."""
    return np.frexp(np.abs(v).astype(np.float64))[1].astype(np.int64)


def _extra_bits(v: np.ndarray, s: np.ndarray) -> np.ndarray:
    """The s value bits after a code: v itself if positive, else v - 1 in s-bit two's complement."""
    return np.where(v >= 0, v, v + (1 << s) - 1)


def encode_scan(spec: ScanSpec, coef: Coefficients,
                tables: dict[tuple[int, int], HuffmanTable] | None = None) -> bytes:
    """The entropy-coded scan of `coef` with the head's tables (or `tables`), 1-bit padding at each
    restart, 0xFF bytes stuffed, RSTn markers between intervals. ValueError if a symbol has no code."""
    sy = scan_symbols(spec, coef)
    tables = tables or spec.tables
    codes = [tables[k].codes() for k in sy.keys]
    code = np.stack([c for c, _ in codes])[sy.table, sy.symbol]
    size = np.stack([s for _, s in codes])[sy.table, sy.symbol]
    if (size == 0).any():
        raise ValueError("a symbol of the scan has no code in its Huffman table")
    value, length = (code << sy.n_extra) | sy.extra, size + sy.n_extra
    # Pad every restart interval to a byte with 1-bits: one more chunk after its last symbol.
    n_int = int(sy.interval.max(initial=0)) + 1
    bits = np.bincount(sy.interval, weights=length, minlength=n_int).astype(np.int64)
    pad = -bits % 8
    ends = np.searchsorted(sy.interval, np.arange(n_int), side="right")
    value = np.insert(value, ends, (1 << pad) - 1)
    length = np.insert(length, ends, pad)
    # Pack: each chunk (<= 27 bits) lands in a 40-bit window from the byte where it starts; the
    # windows' bytes are summed into place (chunks never share a bit, so the sum is an OR).
    offset = np.cumsum(length) - length
    window = value << (40 - offset % 8 - length)
    start = offset // 8
    total = int((offset[-1] + length[-1]) // 8) if len(offset) else 0
    out = np.zeros(total + 5)
    for j in range(5):
        out += np.bincount(start + j, weights=(window >> (32 - 8 * j)) & 0xFF, minlength=total + 5)
    data = out[:total].astype(np.uint8)
    # Stuff a 0x00 after every 0xFF and put RSTn between intervals.
    pieces = []
    for i, part in enumerate(np.split(data, np.cumsum((bits + pad) // 8)[:-1])):
        if i:
            pieces.append(bytes([0xFF, 0xD0 + (i - 1) % 8]))
        ff = np.nonzero(part == 0xFF)[0]
        pieces.append(np.insert(part, ff + 1, 0).tobytes())
    return b"".join(pieces)


def symbol_counts(spec: ScanSpec, coef: Coefficients) -> dict[tuple[int, int], np.ndarray]:
    """(257,) symbol frequencies of each table the scan uses (what libjpeg's -optimize counts)."""
    sy = scan_symbols(spec, coef)
    return {k: np.bincount(sy.symbol[sy.table == i], minlength=257) for i, k in enumerate(sy.keys)}
