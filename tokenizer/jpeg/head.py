"""The bytes of a JPEG before its scan, packed small: tables that follow from elsewhere are not stored.

    packed = pack_head(parts.head, coef)        # parts = scan.split_jpeg(data)
    template = unpack_head(packed)
    template.provisional                        # the head with placeholder Huffman tables: enough to
                                                # read the frame, the scan layout and the DQT tables
    assert template.fill(coef) == parts.head

A head is cut at its marker segments into pieces. A DHT segment whose tables are exactly what
libjpeg's Huffman optimization (`-optimize`, `optimize_coding`) makes for the scan's own symbols is
stored as the ids of its tables and recomputed from the coefficients (`optimal_table`, libjpeg's
`jpeg_gen_optimal_table`). A DQT segment holding libjpeg's standard tables at one quality is stored
as that quality. Every other byte is kept; the result is deflated with a preset dictionary of what
heads usually hold (JFIF, the standard Huffman tables of Annex K), so a common head costs a few bytes.
"""

from __future__ import annotations

import functools
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from tokenizer.jpeg.io import Coefficients, segments, standard_qtables
from tokenizer.jpeg.scan import HuffmanTable, parse_dht, scan_spec, symbol_counts

LITERAL, OPTIMAL_DHT, STANDARD_DQT = range(3)

# What deflate may refer back to: the packed heads (before deflate) that PIL (standard and optimized
# Huffman tables) and libjpeg through jpeglib write for a 16x16 4:2:0 image at quality 75. Part of
# the format: changing it changes every packed head.
_DICTIONARY = bytes.fromhex(
    "0014ffd8ffe000104a46494600010100000100010000024b0100024b011100d103ffc000110800100010030122000211"
    "01031101ffc4001f0000010501010101010100000000000000000102030405060708090a0bffc400b510000201030302"
    "0403050504040000017d01020300041105122131410613516107227114328191a1082342b1c11552d1f0243362728209"
    "0a161718191a25262728292a3435363738393a434445464748494a535455565758595a636465666768696a7374757677"
    "78797a838485868788898a92939495969798999aa2a3a4a5a6a7a8a9aab2b3b4b5b6b7b8b9bac2c3c4c5c6c7c8c9cad2"
    "d3d4d5d6d7d8d9dae1e2e3e4e5e6e7e8e9eaf1f2f3f4f5f6f7f8f9faffc4001f01000301010101010101010100000000"
    "00000102030405060708090a0bffc400b511000201020404030407050404000102770001020311040521310612415107"
    "61711322328108144291a1b1c109233352f0156272d10a162434e125f11718191a262728292a35363738393a43444546"
    "4748494a535455565758595a636465666768696a737475767778797a82838485868788898a92939495969798999aa2a3"
    "a4a5a6a7a8a9aab2b3b4b5b6b7b8b9bac2c3c4c5c6c7c8c9cad2d3d4d5d6d7d8d9dae2e3e4e5e6e7e8e9eaf2f3f4f5f6"
    "f7f8f9faffda000c03010002110311003f000014ffd8ffe000104a46494600010100000100010000024b0100024b0111"
    "0013ffc00011080010001003012200021101031101010100010110010101010111000effda000c03010002110311003f"
    "000014ffd8ffe000104a46494600010100000100010000024b0100024b01110013ffc000110800100010030022000111"
    "01021101010100010110010101010111000effda000c03000001110211003f00")


def optimal_table(freq: np.ndarray) -> HuffmanTable:
    """libjpeg's jpeg_gen_optimal_table: Huffman code lengths from (257,) symbol counts, limited to
    16 bits, a pseudo-symbol 256 keeping the all-ones code unused, ties to the larger symbol."""
    freq = [int(f) for f in freq[:256]] + [1]
    size, others = [0] * 257, [-1] * 257
    while True:
        live = [i for i in range(257) if freq[i]]
        if len(live) < 2:
            break
        c1 = min(live, key=lambda i: (freq[i], -i))          # smallest count, larger symbol on ties
        c2 = min((i for i in live if i != c1), key=lambda i: (freq[i], -i))
        freq[c1] += freq[c2]
        freq[c2] = 0
        size[c1] += 1                                         # one level deeper for c1's branch,
        while others[c1] >= 0:
            c1 = others[c1]
            size[c1] += 1
        others[c1] = c2                                       # c2's branch chained after it,
        size[c2] += 1                                         # and one level deeper for c2's
        while others[c2] >= 0:
            c2 = others[c2]
            size[c2] += 1
    bits = [0] * 33
    for s in size:
        if s:
            bits[s] += 1
    for i in range(32, 16, -1):                               # no code longer than 16 bits
        while bits[i] > 0:
            j = i - 2
            while bits[j] == 0:
                j -= 1
            bits[i] -= 2
            bits[i - 1] += 1
            bits[j + 1] += 2
            bits[j] -= 1
    i = 16
    while bits[i] == 0:
        i -= 1
    bits[i] -= 1                                              # drop the pseudo-symbol
    symbols = [j for n in range(1, 33) for j in range(256) if size[j] == n]
    return HuffmanTable(bytes(bits[1:17]) + bytes(symbols))


@functools.cache
def _standard_tables() -> dict[bytes, tuple[int, int]]:
    """Table bytes (zigzag) -> (kind 0 luma / 1 chroma, quality) of libjpeg's standard tables."""
    return {standard_qtables(q, 2)[kind].astype(np.uint8).tobytes(): (kind, q)
            for q in range(100, 0, -1) for kind in (0, 1)}


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def _standard_dqt(payload: bytes) -> bytes | None:
    """The STANDARD_DQT piece of a DQT payload of 8-bit standard tables at one quality, else None."""
    if len(payload) % 65 or not payload:
        return None
    tables = [(payload[j], _standard_tables().get(payload[j + 1:j + 65])) for j in range(0, len(payload), 65)]
    if any(pq_tq >> 4 or std is None for pq_tq, std in tables) or len({s[1] for _, s in tables}) != 1:
        return None
    return bytes([STANDARD_DQT, tables[0][1][1], len(tables)] + [t | s[0] << 4 for t, s in tables])


def pack_head(head: bytes, coef: Coefficients) -> bytes:
    """`head` (SOI .. SOS header of the JPEG holding `coef`) as a small byte string."""
    spec = scan_spec(head)
    optimal = {k: optimal_table(c) for k, c in symbol_counts(spec, coef).items()}
    segs = list(segments(head))
    last = {(tc >> 4, tc & 15): n for n, s in enumerate(segs) if s.marker == 0xC4
            for tc, _ in parse_dht(s.payload)}    # which segment defines each table last
    out, done = bytearray(), 0
    for n, (marker, payload, start, end) in enumerate(segs):
        piece = None
        if marker == 0xC4:     # tables in force at the scan (not redefined later) that are optimal
            tables = [((tc >> 4, tc & 15), t) for tc, t in parse_dht(payload)]
            if all(last[k] == n and optimal.get(k) == t for k, t in tables):
                piece = bytes([OPTIMAL_DHT, len(tables)] + [c << 4 | i for (c, i), _ in tables])
        elif marker == 0xDB:
            piece = _standard_dqt(payload)
        if piece is not None:
            out += _literal(head[done:start - 4]) + piece
            done = end
    out += _literal(head[done:])
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15, zdict=_DICTIONARY)
    return deflate.compress(bytes(out)) + deflate.flush()


def _literal(data: bytes) -> bytes:
    return bytes([LITERAL]) + varint(len(data)) + data if data else b""


def varint(n: int) -> bytes:
    """`n` >= 0 in LEB128: 7 bits a byte, low first, the top bit set on all but the last."""
    out = bytearray()
    while True:
        out.append(n & 0x7F | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


class ByteReader:
    """Reads a byte string front to back; `error(message)` is raised when it runs out."""

    def __init__(self, data: bytes, error: type[Exception] = ValueError, what: str = "data"):
        self.data, self.i, self.error, self.what = data, 0, error, what

    @property
    def left(self) -> int:
        return len(self.data) - self.i

    def take(self, n: int) -> bytes:
        if n > self.left:
            raise self.error(f"truncated {self.what}")
        self.i += n
        return self.data[self.i - n:self.i]

    def varint(self) -> int:
        n, shift = 0, 0
        while True:
            b = self.take(1)[0]
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return n

    def rest(self) -> bytes:
        self.i, rest = len(self.data), self.data[self.i:]
        return rest


@dataclass(frozen=True)
class HeadTemplate:
    """A packed head read back: literal bytes and the tables to recompute."""

    pieces: tuple[tuple[int, bytes], ...]     # (kind, literal bytes or table ids)

    def _join(self, dht: dict[tuple[int, int], HuffmanTable]) -> bytes:
        out = bytearray()
        for kind, body in self.pieces:
            if kind == LITERAL:
                out += body
            elif kind == OPTIMAL_DHT:
                out += _segment(0xC4, b"".join(bytes([tc]) + dht[tc >> 4, tc & 15] for tc in body))
            else:
                q, kinds = body[0], body[1:]
                out += _segment(0xDB, b"".join(bytes([k & 15]) + standard_qtables(q, 2)[k >> 4]
                                               .astype(np.uint8).tobytes() for k in kinds))
        return bytes(out)

    @property
    def provisional(self) -> bytes:
        """The head with empty stand-ins for the recomputed Huffman tables."""
        return self._join(_EmptyTables())

    def fill(self, coef: Coefficients) -> bytes:
        """The head, its optimized Huffman tables recomputed from the coefficients."""
        counts = symbol_counts(scan_spec(self.provisional), coef)
        return self._join({k: optimal_table(c) for k, c in counts.items()})


class _EmptyTables(dict):
    def __missing__(self, key: tuple[int, int]) -> HuffmanTable:
        return HuffmanTable(bytes(16))


def unpack_head(packed: bytes) -> HeadTemplate:
    """Inverse of pack_head. ValueError if `packed` is not one."""
    inflate = zlib.decompressobj(-15, zdict=_DICTIONARY)
    try:
        data = ByteReader(inflate.decompress(packed), what="packed head")
    except zlib.error as e:
        raise ValueError(f"packed head does not inflate ({e})") from None
    if not inflate.eof or inflate.unused_data:
        raise ValueError("packed head: the deflate stream is cut short or followed by other bytes")
    pieces = []
    while data.left:
        kind = data.take(1)[0]
        if kind == LITERAL:
            body = data.take(data.varint())
        elif kind == OPTIMAL_DHT:
            body = data.take(data.take(1)[0])
        elif kind == STANDARD_DQT:
            q, n = data.take(2)
            body = bytes([q]) + data.take(n)
            if not 1 <= q <= 100:
                raise ValueError(f"packed head: quality {q} outside 1..100")
        else:
            raise ValueError(f"packed head: unknown piece kind {kind}")
        pieces.append((kind, body))
    return HeadTemplate(tuple(pieces))

