"""The JPEG-DCT token stream written plainly: one loop per block, slow and obviously correct.

    from tokenizer import JpegDctTokenizer
    from tokenizer.jpeg import reference
    tok = JpegDctTokenizer()
    coef = tok.coefficients("photo.png")
    seq = reference.encode_coefficients(tok.vocab, coef, "raster", tok.config.bands)
    assert seq == tok.encode_coefficients(coef)          # the fast codec gives the same tokens
    assert reference.decode_coefficients(tok.vocab, seq, "raster", tok.config.bands) == coef

The fast codec (tokenizer.jpeg.codec) builds all tokens of all blocks at once with numpy; this
module is its slow twin, to read and to test against (tests/test_reference.py holds the two to the
same ids and positions). It follows docs/token-format.md rule by rule and shares with the rest of
the package only the id ranges (`Vocab`), the header (`header_ids`, `parse_header`) and the block
grid sizes (`block_grid`): block order, DC prediction, runs, escapes, SKIP runs and positions are
its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from tokenizer.base import TokenizerError, TokenSequence
from tokenizer.cli import run
from tokenizer.jpeg.codec import parse_header
from tokenizer.jpeg.format import EOB_FREQ, HEADER_LEN, Vocab, header_ids, header_positions
from tokenizer.jpeg.io import SUBSAMPLINGS, Coefficients, block_grid, sampling_factors


class Block(NamedTuple):
    """One 8x8 block: component, its row and column in the component's own block grid, and its
    row and column in luma-block units (the position the model sees)."""

    comp: int
    brow: int
    bcol: int
    row: int
    col: int


def blocks_in_order(height: int, width: int, subsampling: str, order: str) -> list[Block]:
    """Every block of an image, in the order the stream visits them."""
    factors = sampling_factors(subsampling)              # (h, v) per component
    grid = block_grid(height, width, subsampling)        # (rows, cols) per component
    hmax, vmax = max(h for h, _ in factors), max(v for _, v in factors)
    out = []
    if order == "raster":
        # JPEG's MCU order: an MCU covers 8*hmax x 8*vmax pixels and holds h x v blocks of each
        # component, component after component, row-major; blocks past a component's grid are not coded.
        for my in range(-(-height // (8 * vmax))):
            for mx in range(-(-width // (8 * hmax))):
                for c, (h, v) in enumerate(factors):
                    for dv in range(v):
                        for dh in range(h):
                            br, bc = my * v + dv, mx * h + dh
                            if br < grid[c][0] and bc < grid[c][1]:
                                out.append(Block(c, br, bc, br * (vmax // v), bc * (hmax // h)))
    elif order == "coarse_to_fine":
        # component after component, each in row-major block order
        for c, (h, v) in enumerate(factors):
            for br in range(grid[c][0]):
                for bc in range(grid[c][1]):
                    out.append(Block(c, br, bc, br * (vmax // v), bc * (hmax // h)))
    else:
        raise TokenizerError(f"order={order!r}: expected 'raster' or 'coarse_to_fine'")
    return out


# -- coefficients -> ids --------------------------------------------------------------------------------

def encode_coefficients(vocab: Vocab, coef: Coefficients, order: str,
                        bands: tuple[int, ...]) -> TokenSequence:
    """The token stream of one JPEG's coefficients, block by block."""
    ids = [int(t) for t in header_ids(vocab, coef.height, coef.width, coef.subsampling, coef.qtables)]
    pos = [tuple(int(x) for x in p) for p in header_positions(len(ids))]

    def emit(token: int, block: Block, freq: int) -> None:
        ids.append(token)
        pos.append((0, block.comp + 1, block.row, block.col, freq))

    def emit_escape_bytes(magnitude: int, direct: int, block: Block, freq: int) -> None:
        rest = magnitude - direct - 1                    # what the escape token does not already say
        if rest > 0xFFFF:
            raise TokenizerError(f"coefficient magnitude {magnitude} does not fit an escape")
        emit(vocab.byte + (rest >> 8), block, freq)
        emit(vocab.byte + (rest & 0xFF), block, freq)

    def emit_dc(diff: int, block: Block) -> None:
        r = vocab.dc_range
        if -r <= diff <= r:
            emit(vocab.dc + r + diff, block, 0)
        else:
            emit(vocab.dc + 2 * r + (1 if diff > 0 else 2), block, 0)
            emit_escape_bytes(abs(diff), r, block, 0)

    def emit_ac(run: int, value: int, block: Block, k: int) -> None:
        a = vocab.ac_range
        if 0 < value <= a:
            slot = value - 1
        elif -a <= value < 0:
            slot = a - value - 1                         # a + |value| - 1
        else:
            slot = 2 * a if value > 0 else 2 * a + 1
        emit(vocab.ac + run * vocab.ac_stride + slot, block, k)
        if slot >= 2 * a:
            emit_escape_bytes(abs(value), a, block, k)

    def emit_band(zz: list[int], block: Block, start: int, end: int) -> None:
        """AC tokens of zigzag coefficients start..end-1 (not EOB): runs of zeros before each nonzero."""
        last = start - 1                                 # zigzag index of the last coefficient coded
        for k in range(start, end):
            if zz[k] == 0:
                continue
            while k - last - 1 >= 16:                    # 16 zeros: ZRL, at the last of them
                last += 16
                emit(vocab.zrl, block, last)
            emit_ac(k - last - 1, zz[k], block, k)
            last = k

    blocks = blocks_in_order(coef.height, coef.width, coef.subsampling, order)
    zigzag = [coef.blocks[b.comp][b.brow, b.bcol].astype(np.int64).tolist() for b in blocks]
    previous_dc = [0] * len(coef.blocks)                 # per component, in stream block order

    def emit_dc_of(i: int) -> None:
        b = blocks[i]
        emit_dc(zigzag[i][0] - previous_dc[b.comp], b)
        previous_dc[b.comp] = zigzag[i][0]

    if order == "raster":
        for i, b in enumerate(blocks):                   # per block: DC, AC..., EOB
            emit_dc_of(i)
            emit_band(zigzag[i], b, 1, 64)
            emit(vocab.eob, b, EOB_FREQ)
    else:
        for i in range(len(blocks)):                     # every DC first
            emit_dc_of(i)
        for start, end in zip(bands[:-1], bands[1:]):     # then band by band, block by block
            i = 0
            while i < len(blocks):
                if any(zigzag[i][start:end]):
                    emit_band(zigzag[i], blocks[i], start, end)
                    emit(vocab.eob, blocks[i], EOB_FREQ)
                    i += 1
                    continue
                n = 1                                    # a run of blocks empty in this band
                while i + n < len(blocks) and n < vocab.max_skip and not any(zigzag[i + n][start:end]):
                    n += 1
                emit(vocab.skip + n - 1, blocks[i], start)
                i += n
    ids.append(vocab.eos)
    pos.append((0, 0, 0, 0, HEADER_LEN))
    return TokenSequence(np.array(ids), np.array(pos))


# -- ids -> coefficients --------------------------------------------------------------------------------

class _Reader:
    """The body's ids, one at a time, with errors that say where the stream went wrong."""

    def __init__(self, ids: list[int], start: int, byte: int):
        self.ids, self.i, self.first_byte = ids, start, byte

    def peek(self) -> int:
        if self.i >= len(self.ids):
            raise TokenizerError(f"stream ends at token {self.i} inside the body")
        return self.ids[self.i]

    def next(self) -> int:
        t = self.peek()
        self.i += 1
        return t

    def byte(self) -> int:
        t = self.next()
        if not 0 <= t - self.first_byte < 256:
            raise TokenizerError(f"token {self.i - 1}: an escape must be followed by two byte tokens")
        return t - self.first_byte


def decode_coefficients(vocab: Vocab, seq: TokenSequence, order: str, bands: tuple[int, ...]) -> Coefficients:
    """Inverse of encode_coefficients. TokenizerError on a stream that is not well formed."""
    all_ids = [int(t) for t in seq.ids]
    height, width, sub, qtables, start = parse_header(vocab, np.array(all_ids))
    blocks = blocks_in_order(height, width, sub, order)
    planes = [np.zeros((rows, cols, 64), np.int64) for rows, cols in block_grid(height, width, sub)]
    read = _Reader(all_ids, start, vocab.byte)
    r, a = vocab.dc_range, vocab.ac_range
    previous_dc = [0] * len(planes)

    def read_dc(b: Block) -> None:
        t = read.next() - vocab.dc
        if not 0 <= t <= 2 * r + 2:
            raise TokenizerError(f"token {read.i - 1}: expected the DC of a block")
        if t <= 2 * r:
            diff = t - r
        else:
            diff = (read.byte() * 256 + read.byte() + r + 1) * (1 if t == 2 * r + 1 else -1)
        previous_dc[b.comp] += diff
        planes[b.comp][b.brow, b.bcol, 0] = previous_dc[b.comp]

    def read_band(b: Block, start: int, end: int) -> None:
        """AC and ZRL tokens up to and including EOB; `k` is the next zigzag index to fill."""
        k = start
        while (t := read.next()) != vocab.eob:
            if t == vocab.zrl:                           # 16 zeros
                k += 16
                if k > end:
                    raise TokenizerError(f"token {read.i - 1}: ZRL runs past zigzag index {end - 1}")
                continue
            if not vocab.ac <= t < vocab.zrl:
                raise TokenizerError(f"token {read.i - 1}: expected AC, ZRL or EOB")
            run, slot = divmod(t - vocab.ac, vocab.ac_stride)
            k += run                                     # the zeros, then the value at k
            if k >= end:
                raise TokenizerError(f"token {read.i - 1}: AC runs past zigzag index {end - 1}")
            if slot < a:
                value = slot + 1
            elif slot < 2 * a:
                value = -(slot - a + 1)
            else:
                value = (read.byte() * 256 + read.byte() + a + 1) * (1 if slot == 2 * a else -1)
            planes[b.comp][b.brow, b.bcol, k] = value
            k += 1

    if order == "raster":
        for b in blocks:
            read_dc(b)
            read_band(b, 1, 64)
    else:
        for b in blocks:
            read_dc(b)
        for s, e in zip(bands[:-1], bands[1:]):
            i = 0
            while i < len(blocks):
                t = read.peek()
                if vocab.skip <= t < vocab.size:
                    i += read.next() - vocab.skip + 1
                    if i > len(blocks):
                        raise TokenizerError(f"token {read.i - 1}: SKIP runs past the last block")
                else:
                    read_band(blocks[i], s, e)
                    i += 1
    if read.next() != vocab.eos or read.i != len(all_ids):
        raise TokenizerError(f"token {read.i - 1}: expected EOS, the last token")
    for p in planes:
        if p.size and (p.min() < -32768 or p.max() > 32767):
            raise TokenizerError("a coefficient falls outside int16")
    return Coefficients(height, width, sub, tuple(p.astype(np.int16) for p in planes), qtables)


# -- ids -> names, for reading a stream -------------------------------------------------------------------

def token_name(vocab: Vocab, token: int) -> str:
    """What one id means, e.g. "AC(run 2, -3)", "DC(+5)", "SKIP(4)", "BYTE(23)"."""
    v, t = vocab, int(token)
    if t in (v.pad, v.bos, v.eos):
        return ("PAD", "BOS", "EOS")[t - v.pad]
    if v.sub <= t < v.quality:
        return f"SUB({list(SUBSAMPLINGS)[t - v.sub]})"
    if v.quality <= t < v.qt_custom:
        return f"Q({t - v.quality + 1})"
    if t == v.qt_custom:
        return "QT_CUSTOM"
    if v.byte <= t < v.dc:
        return f"BYTE({t - v.byte})"
    if v.dc <= t < v.ac:
        d = t - v.dc - v.dc_range
        return f"DC({d:+d})" if abs(d) <= v.dc_range else f"DC(ESC{'+' if d == v.dc_range + 1 else '-'})"
    if v.ac <= t < v.zrl:
        run, slot = divmod(t - v.ac, v.ac_stride)
        a = v.ac_range
        value = f"{slot + 1:+d}" if slot < a else f"{a - slot - 1:+d}" if slot < 2 * a else \
            f"ESC{'+' if slot == 2 * a else '-'}"
        return f"AC(run {run}, {value})"
    if t == v.zrl:
        return "ZRL"
    if t == v.eob:
        return "EOB"
    if v.skip <= t < v.size:
        return f"SKIP({t - v.skip + 1})"
    raise TokenizerError(f"id {t} is outside the vocabulary 0..{v.size - 1}")


def describe(vocab: Vocab, seq: TokenSequence) -> str:
    """One line per token: index, id, name, position (frame, component, row, col, frequency)."""
    lines = [f"{'#':>4} {'id':>5}  {'token':<18} frame comp row col freq"]
    for i, (t, p) in enumerate(zip(seq.ids.tolist(), seq.positions.tolist())):
        lines.append(f"{i:>4} {t:>5}  {token_name(vocab, t):<18} " + " ".join(f"{x:>{w}}" for x, w in
                                                                             zip(p, (5, 4, 3, 3, 4))))
    return "\n".join(lines)


@dataclass(frozen=True)
class ReferenceConfig:
    image: str = ""               # an image file; "" = crop 0 of the embedded corpus' val split
    size: tuple[int, int] = (16, 16)  # (height, width) the image is fitted to
    quality: int = 25             # JPEG quality it is encoded at
    subsampling: str = "4:2:0"    # "4:4:4", "4:2:2", "4:2:0" or "gray"
    order: str = "raster"         # block order: "raster" or "coarse_to_fine"


def main(cfg: ReferenceConfig) -> TokenSequence:
    """Print an image's JPEG-DCT tokens, one per line, coded by this plain encoder (checked against the
    fast one)."""
    from tokenizer.corpus.embedded import crops
    from tokenizer.jpeg.tokenizer import JpegDctConfig, JpegDctTokenizer
    tok = JpegDctTokenizer(JpegDctConfig(quality=cfg.quality, size=cfg.size, subsampling=cfg.subsampling,
                                         order=cfg.order))
    media = cfg.image if cfg.image else next(crops("val", 1, cfg.size)).pixels
    coef = tok.coefficients(media, cfg.image or "val crop 0")
    seq = encode_coefficients(tok.vocab, coef, cfg.order, tok.config.bands)
    assert seq == tok.encode_coefficients(coef), "the fast codec disagrees with the reference"
    print(describe(tok.vocab, seq))
    return seq


def cli(argv: list[str] | None = None) -> TokenSequence:
    return run(main, ReferenceConfig, argv)


if __name__ == "__main__":
    cli()
