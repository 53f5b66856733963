"""A JPEG's scan re-created from its coefficients and own tables; its head packed and unpacked."""

import io

import numpy as np
import pytest
from PIL import Image

from tokenizer.corpus.embedded import load_photo
from tokenizer.jpeg.head import OPTIMAL_DHT, STANDARD_DQT, pack_head, unpack_head
from tokenizer.jpeg.io import encode_pixels, read_coefficients
from tokenizer.jpeg.scan import encode_scan, scan_spec, split_jpeg

SUBSAMPLING = {"4:2:0": 2, "4:2:2": 1, "4:4:4": 0}   # PIL's names for libjpeg's layouts


def photo(height: int, width: int) -> np.ndarray:
    """A real photo's corner (coffee, from the scikit-image wheel)."""
    return np.ascontiguousarray(load_photo("skimage:coffee.png")[100:100 + height, 150:150 + width])


def pil_jpeg(px: np.ndarray, **kw) -> bytes:
    b = io.BytesIO()
    Image.fromarray(px).save(b, "JPEG", **kw)
    return b.getvalue()


# Odd sizes leave partial MCUs (libjpeg's dummy blocks); restarts reset the DC predictor.
CASES = {
    "pil-420-standard-odd": lambda: pil_jpeg(photo(37, 45), quality=25),
    "pil-420-optimized": lambda: pil_jpeg(photo(64, 80), quality=25, optimize=True),
    "pil-422-odd": lambda: pil_jpeg(photo(33, 50), quality=60, subsampling=1),
    "pil-444-q95": lambda: pil_jpeg(photo(24, 40), quality=95, subsampling=0),
    "pil-gray-odd": lambda: pil_jpeg(photo(29, 31)[:, :, 1], quality=50, optimize=True),
    "pil-restarts": lambda: pil_jpeg(photo(48, 70), quality=40, restart_marker_blocks=3),
    "pil-restart-rows": lambda: pil_jpeg(photo(41, 50), quality=40, restart_marker_rows=1, optimize=True),
    "jpeglib-420-q25": lambda: encode_pixels(photo(64, 64), 25, "4:2:0"),
    "jpeglib-odd-q10": lambda: encode_pixels(photo(45, 61), 10, "4:2:0"),
    "pil-flat-no-ac": lambda: pil_jpeg(np.full((20, 20, 3), 128, np.uint8), quality=25),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_scan_is_recreated_from_coefficients_and_head_round_trips(case):
    data = CASES[case]()
    parts = split_jpeg(data)
    assert parts.head + parts.scan + parts.trailer == data
    coef = read_coefficients(data)
    assert encode_scan(scan_spec(parts.head), coef) == parts.scan
    packed = pack_head(parts.head, coef)
    template = unpack_head(packed)
    assert template.fill(coef) == parts.head
    kinds = [k for k, _ in template.pieces]
    assert STANDARD_DQT in kinds                     # libjpeg's standard tables: stored as a quality
    optimized = "optimized" in case or "jpeglib" in case or "gray" in case or "rows" in case
    assert (OPTIMAL_DHT in kinds) == optimized       # libjpeg's optimized Huffman tables: recomputed
    assert len(packed) < 64 < len(parts.head)


def test_scan_with_other_padding_bits_is_not_recreated():
    data = bytearray(CASES["pil-420-standard-odd"]())
    parts = split_jpeg(bytes(data))
    end = len(parts.head) + len(parts.scan) - 1   # the last scan byte ends in 1-bit padding
    last = data[end]
    pad = (last ^ (last + 1)).bit_length() - 1    # trailing 1-bits: padding and maybe coded bits
    assert pad >= 1
    data[end] = last & ~1                          # one padding bit set to 0: libjpeg decodes the same
    assert read_coefficients(bytes(data)) == read_coefficients(parts.head + parts.scan + parts.trailer)
    parts2 = split_jpeg(bytes(data))
    assert encode_scan(scan_spec(parts2.head), read_coefficients(bytes(data))) != parts2.scan


@pytest.mark.parametrize("data", [b"", b"\x00", b"garbage that is not deflate", bytes(range(256))])
def test_unpack_head_rejects_garbage(data):
    with pytest.raises(ValueError):
        unpack_head(data).provisional


@pytest.mark.parametrize("why, data", [
    ("progressive", lambda: pil_jpeg(photo(32, 32), quality=50, progressive=True)),
    ("no scan", lambda: split_jpeg(pil_jpeg(photo(16, 16))).head[:-14] + b"\xff\xd9"),
])
def test_unsupported_scans_are_refused(why, data):
    d = data()
    with pytest.raises(ValueError):
        scan_spec(split_jpeg(d).head)
