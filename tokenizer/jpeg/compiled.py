"""The compiled JPEG path: a JPEG's Huffman-coded scan straight to token ids, and ids straight back to
a baseline JPEG, with no libjpeg coefficient round trip (C extension tokenizer.jpeg._scan).

    from tokenizer.jpeg import compiled
    seq = compiled.encode_jpeg(tok.vocab, jpeg_bytes, "raster", tok.config.bands)   # or None
    jpeg_bytes = compiled.decode_jpeg(tok.vocab, seq, "raster", tok.config.bands)   # or None

JpegDctTokenizer uses it by default. The reference path stays the definition of the tokens:
io.read_coefficients (libjpeg) + codec.encode_coefficients, and codec.decode_coefficients +
io.write_coefficients (libjpeg, optimized Huffman tables). The compiled path gives the same ids, the
same positions and the same file bytes, or returns None and the tokenizer takes the reference path:
it takes sequential Huffman JPEGs (baseline or extended, interleaved or not, restart markers) in the
layouts of io.SUBSAMPLINGS, and refuses anything unusual (progressive or arithmetic coding, corrupt
data, junk between segments, ...), whose answer or error then comes from libjpeg. Well-formed
streams decode here; a malformed one goes to the reference decoder for its error message.

Set the environment variable DCTGPT_COMPILED=0 (or `compiled.enabled = False`) to use the reference path
everywhere; without a C compiler at install time the extension is absent and the same happens.
"""

from __future__ import annotations

import functools
import logging
import os

import numpy as np

from tokenizer.base import TokenizerError, TokenSequence
from tokenizer.jpeg.codec import parse_header
from tokenizer.jpeg.format import Vocab, block_layout, header_ids, header_positions
from tokenizer.jpeg.io import SUBSAMPLINGS, Coefficients, sampling_factors, table_slots

try:
    from tokenizer.jpeg import _scan
except ImportError:   # built without a C compiler: reference path only
    _scan = None

log = logging.getLogger(__name__)
enabled = _scan is not None and os.environ.get("DCTGPT_COMPILED", "1") != "0"

# flat (h, v) sampling factors per component <-> layout name
_HV = {sub: tuple(x for hv in sampling_factors(sub) for x in hv) for sub in SUBSAMPLINGS}
_SUB = {hv: sub for sub, hv in _HV.items()}


@functools.lru_cache(maxsize=16)
def _vocab_ids(vocab: Vocab) -> tuple[int, ...]:
    v = vocab
    return (v.dc_range, v.ac_range, v.max_skip, v.byte, v.dc, v.ac, v.ac_stride, v.zrl, v.eob, v.skip,
            v.eos, v.size)


@functools.lru_cache(maxsize=16)
def _order(height: int, width: int, subsampling: str, order: str, bands: tuple[int, ...]) -> np.ndarray:
    """(n_blocks, 5) int32 rows (comp, brow, bcol, row, col) in stream block order (format.BlockLayout)."""
    lay = block_layout(height, width, subsampling, order, bands)
    return np.ascontiguousarray(np.stack([lay.comp, lay.brow, lay.bcol, lay.row, lay.col], 1), np.int32)


@functools.lru_cache(maxsize=64)
def _header(vocab: Vocab, height: int, width: int, subsampling: str,
            qtables: bytes) -> tuple[np.ndarray, np.ndarray]:
    qt = np.frombuffer(qtables, np.uint16).reshape(-1, 64)
    ids = header_ids(vocab, height, width, subsampling, qt).astype(np.int32)
    return ids, header_positions(len(ids)).astype(np.int32)


def _read(data: bytes) -> tuple | None:
    """(height, width, subsampling, qtables, planes, shapes) of a JPEG the compiled reader takes."""
    if not enabled:
        return None
    r = _scan.read(data)
    if isinstance(r, str):
        log.debug("compiled path declines a JPEG: %s", r)
        return None
    height, width, hv, qt, planes, shapes = r
    sub = _SUB.get(hv)
    return None if sub is None else (height, width, sub, qt, planes, shapes)


def encode_jpeg(vocab: Vocab, data: bytes, order: str, bands: tuple[int, ...]) -> TokenSequence | None:
    """The token stream of a JPEG file (as codec.encode_coefficients gives it), or None when the
    compiled path does not take this file."""
    r = _read(data)
    if r is None:
        return None
    height, width, sub, qt, planes, _ = r
    hdr, hdr_pos = _header(vocab, height, width, sub, qt)
    ids, pos = _scan.tokens(planes, height, width, _HV[sub], _order(height, width, sub, order, bands),
                            order == "raster", bands if order != "raster" else (1, 64), _vocab_ids(vocab),
                            hdr, hdr_pos)
    return TokenSequence(np.frombuffer(ids, np.int32), np.frombuffer(pos, np.int32).reshape(-1, 5))


def read_coefficients(data: bytes) -> Coefficients | None:
    """A JPEG's coefficients as io.read_coefficients gives them, or None when not taken here."""
    r = _read(data)
    if r is None:
        return None
    height, width, sub, qt, planes, shapes = r
    n_blocks = sum(prows * pcols for prows, pcols, _, _ in shapes)
    flat = np.frombuffer(planes, np.int16, count=64 * n_blocks).reshape(-1, 64)   # (then the masks)
    blocks, first = [], 0
    for prows, pcols, rows, cols in shapes:
        blocks.append(flat[first:first + prows * pcols].reshape(prows, pcols, 64)[:rows, :cols].copy())
        first += prows * pcols
    qtables = np.frombuffer(qt, np.uint16).reshape(-1, 64).copy()
    return Coefficients(height, width, sub, tuple(blocks), qtables)


def decode_jpeg(vocab: Vocab, seq: TokenSequence, order: str, bands: tuple[int, ...]) -> bytes | None:
    """The baseline JPEG file of a token stream (byte for byte what io.write_coefficients writes), or
    None when the compiled path does not take it (a malformed stream, or coefficients libjpeg refuses:
    the reference path then raises the error)."""
    if not enabled:
        return None
    try:
        height, width, sub, qt, hlen = parse_header(vocab, seq.ids)
    except TokenizerError:
        return None
    hv = _HV[sub]
    planes = _scan.coefficients(seq.ids, hlen, height, width, hv, _order(height, width, sub, order, bands),
                                order == "raster", bands if order != "raster" else (1, 64), _vocab_ids(vocab))
    if isinstance(planes, str):
        log.debug("compiled path declines a token stream: %s", planes)
        return None
    tables, table_of = table_slots(qt)
    out = _scan.write(planes, height, width, hv, np.ascontiguousarray(tables, np.uint16), tuple(table_of))
    if isinstance(out, str):
        log.debug("compiled path declines to write coefficients: %s", out)
        return None
    return out
