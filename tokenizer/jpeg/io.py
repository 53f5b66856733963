"""JPEG files in and out: marker parsing, coefficients through jpeglib, pixels to a JPEG.

Everything here works on quantized DCT coefficients as libjpeg stores them; no inverse DCT is run
unless an image has to be re-encoded at the configured size or quality.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import os
import struct
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import jpeglib
import numpy as np
from jpeglib._bind import CJpegLib

# ZIGZAG[k] is the natural (row * 8 + col) index of the k-th coefficient in zigzag order.
ZIGZAG = np.array([
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27,
    20, 13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58,
    59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63])
UNZIGZAG = np.argsort(ZIGZAG)

# JPEG Annex K tables (natural order), scaled by libjpeg's jpeg_quality_scaling with force_baseline.
_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99])
_CHROMA = np.array([
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99] + [99] * 32)

# Quantized coefficients 8-bit JPEG can hold: an 8x8 block of 8-bit samples has DC in -1024..1016 and
# |AC| < 1024, and baseline Huffman coding carries |DC difference| <= 2047 and |AC| <= 1023.
DC_MIN, DC_MAX, AC_MAX = -1024, 1023, 1023

# Sampling layouts the tokenizer writes and reads: name -> luma (h, v); chroma is always 1x1.
SUBSAMPLINGS = {"gray": None, "4:4:4": (1, 1), "4:2:0": (2, 2), "4:2:2": (2, 1), "4:4:0": (1, 2)}

jpeglib.version.set("turbo210")


@functools.cache
def standard_qtables(quality: int, n_components: int) -> np.ndarray:
    """(n_components, 64) zigzag-ordered tables libjpeg writes at `quality` (1..100); read-only."""
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    tabs = [np.clip((t * scale + 50) // 100, 1, 255)[ZIGZAG] for t in (_LUMA, _CHROMA)]
    out = np.stack([tabs[0]] + [tabs[1]] * (n_components - 1)).astype(np.uint16)
    out.flags.writeable = False
    return out


@functools.cache
def _quality_index(n_components: int) -> dict[bytes, int]:
    return {standard_qtables(q, n_components).tobytes(): q for q in range(100, 0, -1)}


def standard_quality(qtables: np.ndarray) -> int | None:
    """The quality whose standard tables these are, or None (custom tables)."""
    return _quality_index(len(qtables)).get(np.asarray(qtables, np.uint16).tobytes())


@dataclass(frozen=True, eq=False)
class Coefficients:
    """One JPEG's quantized DCT coefficients: everything needed to write it back bit for bit.

    `blocks[c]` is (rows, cols, 64) int16 in zigzag order for component c (Y, Cb, Cr or just Y);
    `qtables` is (n_components, 64) in zigzag order; `subsampling` is a key of SUBSAMPLINGS.
    """

    height: int
    width: int
    subsampling: str
    blocks: tuple[np.ndarray, ...]
    qtables: np.ndarray

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Coefficients) and (self.height, self.width, self.subsampling)
                == (other.height, other.width, other.subsampling)
                and all(np.array_equal(a, b) for a, b in zip(self.blocks, other.blocks))
                and len(self.blocks) == len(other.blocks)
                and np.array_equal(self.qtables, other.qtables))


def sampling_factors(subsampling: str) -> list[tuple[int, int]]:
    """Per component (h, v) sampling factors of a layout name."""
    luma = SUBSAMPLINGS[subsampling]
    return [(1, 1)] if luma is None else [luma, (1, 1), (1, 1)]


def block_grid(height: int, width: int, subsampling: str) -> list[tuple[int, int]]:
    """Per component (rows, cols) of coded blocks, as libjpeg computes them (no MCU padding)."""
    factors = sampling_factors(subsampling)
    hmax, vmax = max(f[0] for f in factors), max(f[1] for f in factors)
    return [(-(-height * v // (vmax * 8)), -(-width * h // (hmax * 8))) for h, v in factors]


@dataclass(frozen=True)
class JpegInfo:
    """What the markers of a JPEG file say (parsed without decoding)."""

    sof: int                         # SOFn marker: 0xC0 baseline, 0xC1 extended, 0xC2 progressive, ...
    precision: int
    height: int
    width: int
    components: tuple[tuple[int, int, int], ...]   # (id, h, v) per component
    qtables: dict[int, np.ndarray]   # table slot -> (64,) zigzag order
    table_of: tuple[int, ...]         # table slot per component
    scan_bytes: int                   # entropy-coded bytes of all scans (RST markers included)
    adobe_transform: int | None
    orientation: int = 1              # EXIF orientation (1 = as stored)

    @property
    def subsampling(self) -> str | None:
        """The SUBSAMPLINGS name of this file's layout, or None if it has no name here."""
        f = [(h, v) for _, h, v in self.components]
        if len(f) == 1:
            return "gray"
        if len(f) == 3 and f[1] == f[2] == (1, 1):
            return next((k for k, s in SUBSAMPLINGS.items() if s == f[0]), None)
        return None


class Segment(NamedTuple):
    """One marker segment of a JPEG file: `data[start:end]` holds its payload (after the length
    field); for SOS, `end` is past its entropy-coded data, which runs from `start + len(payload)`."""

    marker: int       # the byte after 0xFF
    payload: bytes
    start: int
    end: int


def segments(data: bytes, name: str = "<bytes>") -> Iterator[Segment]:
    """The segments after SOI in file order, up to EOI (yielded, empty) or the end of the data.
    Junk and fill bytes between segments are skipped, as libjpeg does; standalone markers (RSTn,
    TEM) outside a scan are skipped too. ValueError naming `name` on a segment cut short."""
    if data[:2] != b"\xff\xd8":
        raise ValueError(f"{name}: not a JPEG file (no SOI marker)")
    i, n = 2, len(data)
    while True:
        while i < n and data[i] != 0xFF:  # tolerate junk between segments, as libjpeg does
            i += 1
        while i < n and data[i] == 0xFF:
            i += 1
        if i >= n:
            return
        marker = data[i]
        i += 1
        if marker == 0xD9:
            yield Segment(marker, b"", i, i)
            return
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            continue
        if i + 2 > n:
            raise ValueError(f"{name}: truncated JPEG (segment {marker:#04x} has no length)")
        (length,) = struct.unpack(">H", data[i:i + 2])
        seg = data[i + 2:i + length]
        if length < 2 or len(seg) != length - 2:
            raise ValueError(f"{name}: truncated JPEG (segment {marker:#04x} runs past the end)")
        start, i = i + 2, i + length
        if marker == 0xDA:      # entropy-coded data runs to the first 0xFF that is not 0xFF00 or RSTn
            while True:
                j = data.find(b"\xff", i, n - 1)
                if j < 0:
                    i = max(n - 1, i)
                    break
                if data[j + 1] == 0 or 0xD0 <= data[j + 1] <= 0xD7:
                    i = j + 2
                else:
                    i = j
                    break
        yield Segment(marker, seg, start, i)


def parse_jpeg(data: bytes, name: str = "<bytes>") -> JpegInfo:
    """Walk the markers of a JPEG file. Raises ValueError naming `name` on anything malformed."""
    sof = info = None
    qtables: dict[int, np.ndarray] = {}
    scan, adobe, orientation = 0, None, 1
    for marker, seg, start, end in segments(data, name):
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            if sof is not None:
                raise ValueError(f"{name}: more than one frame header (SOF)")
            if len(seg) < 6:
                raise ValueError(f"{name}: truncated frame header (SOF)")
            prec, h, w, nc = struct.unpack(">BHHB", seg[:6])
            if len(seg) < 6 + 3 * nc:
                raise ValueError(f"{name}: truncated frame header (SOF)")
            comps = [(seg[6 + 3 * k], seg[7 + 3 * k] >> 4, seg[7 + 3 * k] & 15) for k in range(nc)]
            sof, info = marker, (prec, h, w, tuple(comps), tuple(seg[8 + 3 * k] for k in range(nc)))
        elif marker == 0xDB:
            j = 0
            while j < len(seg):
                pq, tq = seg[j] >> 4, seg[j] & 15
                size = 128 if pq else 64
                if j + 1 + size > len(seg):
                    raise ValueError(f"{name}: truncated quantization table (DQT)")
                raw = seg[j + 1:j + 1 + size]
                qtables[tq] = np.frombuffer(raw, ">u2" if pq else "u1").astype(np.uint16)
                j += 1 + size
        elif marker == 0xE1 and seg[:6] == b"Exif\0\0":
            orientation = _exif_orientation(seg[6:])
        elif marker == 0xEE and seg[:5] == b"Adobe" and len(seg) >= 12:
            adobe = seg[11]
        elif marker == 0xDA:
            scan += end - start - len(seg)
    if sof is None:
        raise ValueError(f"{name}: no frame header (SOF): not a complete JPEG")
    if scan == 0:
        raise ValueError(f"{name}: no scan data (SOS): not a complete JPEG")
    prec, h, w, comps, table_of = info
    return JpegInfo(sof, prec, h, w, comps, qtables, table_of, scan, adobe, orientation)


def _exif_orientation(tiff: bytes) -> int:
    """The Orientation tag (0x0112) of IFD0 in an EXIF TIFF block; 1 if absent or unreadable."""
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return 1
    (ifd,) = struct.unpack(order + "I", tiff[4:8])
    if ifd + 2 > len(tiff):
        return 1
    (count,) = struct.unpack(order + "H", tiff[ifd:ifd + 2])
    for e in range(ifd + 2, min(ifd + 2 + 12 * count, len(tiff) - 11), 12):
        tag, kind, _, value = struct.unpack(order + "HHIH", tiff[e:e + 10])
        if tag == 0x0112 and kind == 3:
            return value if 1 <= value <= 8 else 1
    return 1


def scan_bytes(data: bytes) -> int:
    """Bytes of entropy-coded scan data in a JPEG file: what its Huffman (or arithmetic) coding spends."""
    return parse_jpeg(data).scan_bytes


def check_readable(info: JpegInfo, name: str) -> None:
    """Refuse what libjpeg (8-bit) cannot hand us as Y/Cb/Cr or gray coefficients, before it tries."""
    if info.sof in (0xC3, 0xC7, 0xCB, 0xCF):
        raise ValueError(f"{name}: lossless JPEG (SOF{info.sof - 0xC0}) has no DCT coefficients")
    if info.sof in (0xC5, 0xC6, 0xCD, 0xCE):
        raise ValueError(f"{name}: hierarchical JPEG (SOF{info.sof - 0xC0}) is not supported")
    if info.precision != 8:
        raise ValueError(f"{name}: {info.precision}-bit JPEG is not supported (8-bit only)")
    if info.height == 0 or info.width == 0:
        raise ValueError(f"{name}: image has zero size {info.width}x{info.height}")
    if len(info.components) not in (1, 3):
        raise ValueError(f"{name}: {len(info.components)} components (CMYK/YCCK or other) are not supported"
                         " without re-encoding; set a quality to re-encode it")
    if any(not (1 <= h <= 4 and 1 <= v <= 4) for _, h, v in info.components):
        raise ValueError(f"{name}: invalid sampling factors {info.components}")
    if len(info.components) == 3 and info.adobe_transform == 0:
        raise ValueError(f"{name}: 3-component RGB JPEG (no YCbCr transform) is not supported as-is")
    if any(t not in info.qtables for t in info.table_of):
        raise ValueError(f"{name}: a component uses a quantization table the file does not define")


def read_coefficients(data: bytes, name: str = "<bytes>") -> Coefficients:
    """The quantized coefficients of a JPEG file, exactly as stored. ValueError names `name`."""
    info = parse_jpeg(data, name)
    check_readable(info, name)
    sub = info.subsampling
    if sub is None:
        raise ValueError(f"{name}: sampling factors {[(h, v) for _, h, v in info.components]} are not one"
                         f" of {list(SUBSAMPLINGS)}; set a quality to re-encode it")
    qt = np.stack([info.qtables[t] for t in info.table_of])
    if qt.max() > 255:
        raise ValueError(f"{name}: 16-bit quantization tables are not supported")
    if qt.min() == 0:
        raise ValueError(f"{name}: a quantization table has a zero entry")
    grid = block_grid(info.height, info.width, sub)
    with _tempfile(data) as path, _LibjpegMessages() as messages:
        planes = _libjpeg_read(path, grid)
    if planes is None or isinstance(planes, str):
        raise ValueError(f"{name}: libjpeg could not read the coefficients "
                         f"({planes or '; '.join(messages.lines) or 'no reason given'})")
    lost = [m for m in messages.lines if any(w in m for w in _DATA_LOSS)]
    if lost:
        raise ValueError(f"{name}: truncated or corrupt JPEG data (libjpeg: {'; '.join(lost)})")
    blocks = tuple(plane[:, :, ZIGZAG] for plane in planes)
    for b in blocks:
        dc, ac = b[:, :, 0], b[:, :, 1:]
        if dc.size and (dc.min() < DC_MIN or dc.max() > DC_MAX or ac.min() < -AC_MAX or ac.max() > AC_MAX):
            raise ValueError(f"{name}: coefficients outside 8-bit JPEG's range (DC {DC_MIN}..{DC_MAX}, "
                             f"AC +-{AC_MAX}): corrupt data")
    return Coefficients(info.height, info.width, sub, blocks, qt.astype(np.uint16))


def write_coefficients(coef: Coefficients) -> bytes:
    """A baseline JPEG file holding exactly these coefficients and tables (Huffman-optimized).
    OSError (with libjpeg's reason) if libjpeg refuses them."""
    grid = block_grid(coef.height, coef.width, coef.subsampling)
    if [b.shape for b in coef.blocks] != [(r, c, 64) for r, c in grid]:
        raise ValueError(f"coefficient planes {[b.shape for b in coef.blocks]} do not fit a "
                         f"{coef.width}x{coef.height} {coef.subsampling} image ({grid} blocks)")
    planes = [np.ascontiguousarray(b[:, :, UNZIGZAG], dtype=np.int16) for b in coef.blocks]
    tables, table_of = table_slots(coef.qtables)
    qt = np.ascontiguousarray(tables[:, UNZIGZAG], dtype=np.uint16)
    with _tempfile(b"") as path:
        with _LibjpegMessages() as messages:
            ok = _libjpeg_write(path, coef, planes, qt, table_of)
        if not ok:
            raise OSError(f"libjpeg could not write the coefficients ({'; '.join(messages.lines)})")
        with open(path, "rb") as f:
            return f.read()


def table_slots(qtables: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """(distinct tables, slot of each component): the quantization table slots a written file uses.

    Slots in order of first use: jpeglib fills a slot it has no defaults for (2, 3) from
    qt[component] rather than qt[slot], which agree only when slot k is first used by component k."""
    slot_of: dict[bytes, int] = {}
    table_of = [slot_of.setdefault(t.tobytes(), len(slot_of)) for t in qtables]
    return np.stack([qtables[table_of.index(k)] for k in range(len(slot_of))]), table_of


# -- libjpeg through jpeglib's C functions, called directly ------------------------------------------
# jpeglib's Python layer also reads markers and Huffman tables in extra libjpeg passes and copies the
# file to another temporary file; these are the calls it ends up making, minus that.

def _short_ptr(a: np.ndarray):
    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_short))


def _libjpeg_read(path: str, grid: list[tuple[int, int]]) -> list[np.ndarray] | str | None:
    """(rows, cols, 64) natural-order int16 planes of a JPEG file; None if libjpeg fails (its
    messages say why), a reason if its block counts differ from ours.

    read_jpeg_info goes first: it fails cleanly on a bad header (read_jpeg_dct would crash on one)
    and gives libjpeg's block counts, which must be `grid` so the planes always fit."""
    lib = CJpegLib.get()
    dims, scans = (ctypes.c_int * 8)(), (ctypes.c_int * 1)()
    if not lib.read_jpeg_info(CJpegLib.cstr(path), dims, *[None] * 8, scans, None):
        return None
    if list(dims)[:2 * len(grid)] != [d for rc in grid for d in rc]:
        return f"libjpeg sees blocks {list(dims)[:2 * len(grid)]}, the frame header {grid}"
    planes = [np.zeros((rows, cols, 64), np.int16) for rows, cols in grid]
    ptrs = [_short_ptr(p) for p in planes] + [None] * (4 - len(planes))
    return planes if lib.read_jpeg_dct(CJpegLib.cstr(path), *ptrs, None, None) else None


def _libjpeg_write(path: str, coef: Coefficients, planes: list[np.ndarray], qt: np.ndarray,
                   table_of: list[int]) -> bool:
    """Write `planes` ((rows, cols, 64) natural order, sized by block_grid) as a baseline JPEG."""
    n = len(planes)
    factors = [x for h, v in sampling_factors(coef.subsampling) for x in (v, h)]
    color_space = jpeglib.Colorspace.JCS_GRAYSCALE if n == 1 else jpeglib.Colorspace.JCS_YCbCr
    ptrs = [_short_ptr(p) for p in planes] + [None] * (4 - n)
    status = CJpegLib.get().write_jpeg_dct(
        None, CJpegLib.cstr(path), *ptrs,
        (ctypes.c_int * 2)(coef.height, coef.width),
        (ctypes.c_int * 6)(*[d for p in planes for d in p.shape[:2]]),
        (ctypes.c_int * 6)(*factors), int(color_space), n,
        qt.ctypes.data_as(ctypes.POINTER(ctypes.c_ushort)), -1,
        (ctypes.c_short * 4)(*table_of, *[-1] * (4 - n)),
        0, None, None, None, *CJpegLib.flags_to_mask(["+optimize_coding"]))
    return bool(status)


def encode_pixels(pixels: np.ndarray, quality: int, subsampling: str) -> bytes:
    """JPEG bytes of an (H, W, 3) RGB or (H, W) gray uint8 array, encoded by libjpeg at `quality`."""
    arr = pixels[:, :, None] if pixels.ndim == 2 else pixels
    jpeg = jpeglib.from_spatial(np.ascontiguousarray(arr))
    if subsampling != "gray":
        jpeg.samp_factor = [[v, h] for h, v in sampling_factors(subsampling)]
    n = 1 if subsampling == "gray" else 2   # libjpeg's force_baseline tables, given explicitly
    qt = np.ascontiguousarray(standard_qtables(quality, n)[:, UNZIGZAG].reshape(n, 8, 8))
    with _tempfile(b"") as path:
        jpeg.write_spatial(path, qt=qt, flags=["+optimize_coding"])
        with open(path, "rb") as f:
            return f.read()


# libjpeg warnings that mean coefficients were lost: it fills the rest with zeros and carries on.
_DATA_LOSS = ("Premature end of JPEG file", "premature end of data segment", "bad Huffman code",
              "bad arithmetic code", "Inconsistent progression", "Corrupt JPEG data: found marker")


class _LibjpegMessages:
    """Capture what libjpeg writes to stderr (its warnings) as `lines`, through a pipe; not
    thread-safe (fd 2). libjpeg's few short warnings fit the pipe's buffer."""

    def __enter__(self) -> _LibjpegMessages:
        sys.stderr.flush()
        self.lines: list[str] = []
        self._read, write = os.pipe()
        os.set_blocking(self._read, False)
        self._saved = os.dup(2)
        os.dup2(write, 2)
        os.close(write)
        return self

    def __exit__(self, *exc: object) -> None:
        os.dup2(self._saved, 2)
        os.close(self._saved)
        chunks = []
        while True:
            try:
                chunk = os.read(self._read, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(self._read)
        text = b"".join(chunks).decode(errors="replace")
        self.lines = [ln.strip() for ln in text.splitlines() if ln.strip()]


class _tempfile:
    """A scratch file holding `data` (libjpeg reads and writes paths only). Each process and thread
    reuses one path (no directory churn per image); it is removed when the process exits."""

    _dir = "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
    _paths: dict[tuple[int, int], str] = {}

    def __init__(self, data: bytes):
        key = (os.getpid(), threading.get_ident())
        if key not in self._paths:
            fd, path = tempfile.mkstemp(prefix="dctgpt-", suffix=".jpg", dir=self._dir)
            os.close(fd)
            self._paths[key] = path
            atexit.register(_remove, path)
        self.path = self._paths[key]
        with open(self.path, "wb") as f:
            f.write(data)

    def __enter__(self) -> str:
        return self.path

    def __exit__(self, *exc: object) -> None:
        pass


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
