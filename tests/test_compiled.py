"""The compiled JPEG path (tokenizer.jpeg.compiled) against the reference path (libjpeg + numpy codec):
the same ids, positions and file bytes on real photos, and on every odd file it takes; the same
answer or error on everything else.

    PYTHONPATH=.:tests python tests/test_compiled.py [folder]   # the sweep over ../shared/robust-jpeg
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import robust_sweep
from PIL import Image

from tokenizer import JpegDctConfig, JpegDctTokenizer, TokenizerError, TokenSequence
from tokenizer.corpus.embedded import crops
from tokenizer.jpeg import compiled
from tokenizer.jpeg.codec import decode_coefficients, encode_coefficients
from tokenizer.jpeg.io import SUBSAMPLINGS, Coefficients, read_coefficients, write_coefficients

pytestmark = pytest.mark.skipif(not compiled.enabled, reason="compiled path not built (or DCTGPT_COMPILED=0)")

ROOT = Path(__file__).resolve().parents[1]
ORDERS = ("raster", "coarse_to_fine")


def reference_tokens(tok: JpegDctTokenizer, data: bytes) -> TokenSequence:
    return encode_coefficients(tok.vocab, read_coefficients(data), tok.config.order, tok.config.bands)


def reference_jpeg(tok: JpegDctTokenizer, seq: TokenSequence) -> bytes:
    return write_coefficients(decode_coefficients(tok.vocab, seq, tok.config.order, tok.config.bands))


def assert_same_as_reference(tok: JpegDctTokenizer, data: bytes) -> TokenSequence:
    """Fast encode == reference encode (ids and positions); fast decode == reference bytes."""
    c = tok.config
    fast = compiled.encode_jpeg(tok.vocab, data, c.order, c.bands)
    assert fast is not None, f"compiled path declined a plain libjpeg file: {compiled._scan.read(data)}"
    ref = reference_tokens(tok, data)
    assert np.array_equal(fast.ids, ref.ids), "ids differ"
    assert np.array_equal(fast.positions, ref.positions), "positions differ"
    assert compiled.decode_jpeg(tok.vocab, fast, c.order, c.bands) == reference_jpeg(tok, ref), "bytes differ"
    return fast


@pytest.mark.parametrize("size", [64, 128, 256])
@pytest.mark.parametrize("subsampling", list(SUBSAMPLINGS))
def test_photos_match_reference(size, subsampling):
    pixels = [c.pixels for c in crops("val", 2, (size, size), seed=size)]
    for quality in (10, 25, 50):
        for order in ORDERS:
            tok = JpegDctTokenizer(JpegDctConfig(quality=quality, size=(size, size), subsampling=subsampling,
                                                 order=order))
            for px in pixels:
                assert_same_as_reference(tok, tok.to_jpeg(px))


@pytest.mark.parametrize("subsampling", list(SUBSAMPLINGS))
@pytest.mark.parametrize("hw", [(8, 8), (9, 23), (17, 40), (33, 17), (48, 24)])
def test_odd_sizes_match_reference(subsampling, hw):
    """Sizes that are not MCU multiples: padding blocks in the scan, not in the tokens."""
    px = next(iter(crops("train", 1, hw, seed=5))).pixels
    for order in ORDERS:
        tok = JpegDctTokenizer(JpegDctConfig(quality=90, size=hw, subsampling=subsampling, order=order))
        assert_same_as_reference(tok, tok.to_jpeg(px))


def test_escapes_and_custom_tables_match_reference():
    """Quality 100 (large values: DC and AC escapes) and three custom tables (QT_CUSTOM header)."""
    px = next(iter(crops("train", 1, (32, 48), seed=2))).pixels
    buf = io.BytesIO()
    tables = [list(range(1, 65)), [3] * 64, [200 - k for k in range(64)]]
    Image.fromarray(px).save(buf, "JPEG", qtables=tables, subsampling=0)
    for order in ORDERS:
        tok = JpegDctTokenizer(JpegDctConfig(quality=None, size=None, order=order, dc_range=8, ac_range=2))
        seq = assert_same_as_reference(tok, buf.getvalue())
        assert seq.ids[6] == tok.vocab.qt_custom
        for quality in (100, 97):
            tok = JpegDctTokenizer(JpegDctConfig(quality=quality, size=(32, 48), order=order, dc_range=8))
            assert_same_as_reference(tok, tok.to_jpeg(px))


@pytest.mark.parametrize("blocks", [1, 3, 7])
def test_restart_markers_match_reference(blocks):
    px = next(iter(crops("val", 1, (40, 72), seed=4))).pixels
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, "JPEG", quality=60, restart_marker_blocks=blocks)
    assert b"\xff\xdd" in buf.getvalue()
    tok = JpegDctTokenizer(JpegDctConfig(quality=None, size=None))
    assert compiled.read_coefficients(buf.getvalue()) == read_coefficients(buf.getvalue())
    assert_same_as_reference(tok, buf.getvalue())


# -- a sequential JPEG with one scan per component (libjpeg writes only interleaved ones) -----------

class _Bits:
    def __init__(self) -> None:
        self.out, self.acc, self.n = bytearray(), 0, 0

    def put(self, value: int, size: int) -> None:
        self.acc, self.n = (self.acc << size) | (value & ((1 << size) - 1)), self.n + size
        while self.n >= 8:
            self.n -= 8
            byte = (self.acc >> self.n) & 255
            self.out += bytes([byte, 0]) if byte == 255 else bytes([byte])

    def align(self) -> None:
        if self.n:
            self.put((1 << (8 - self.n)) - 1, 8 - self.n)


def _symbols(blocks: np.ndarray, restart: int) -> list[tuple[int, int, bool]]:
    """(symbol, value, is_dc) per coded item of one component's blocks in order (zigzag); the DC
    prediction restarts from 0 every `restart` blocks."""
    out, pred = [], 0
    for b, x in enumerate(blocks.reshape(-1, 64).tolist()):
        if restart and b % restart == 0:
            pred = 0
        diff, pred = x[0] - pred, x[0]
        out.append((abs(diff).bit_length(), diff, True))
        run = 0
        for v in x[1:]:
            if v == 0:
                run += 1
                continue
            out += [(0xF0, 0, False)] * (run // 16)
            out.append(((run % 16) << 4 | abs(v).bit_length(), v, False))
            run = 0
        if run:
            out.append((0, 0, False))
    return out


def non_interleaved_jpeg(coef: Coefficients, restart: int = 0) -> bytes:
    """A baseline JPEG holding `coef` in one scan per component, with flat (equal-length) Huffman codes
    and, if `restart`, a restart marker every `restart` blocks."""
    def seg(marker: int, body: bytes) -> bytes:
        return bytes([0xFF, marker]) + (len(body) + 2).to_bytes(2, "big") + body

    n = len(coef.blocks)
    factors = [(1, 1)] if n == 1 else [SUBSAMPLINGS[coef.subsampling], (1, 1), (1, 1)]
    out = b"\xff\xd8" + b"".join(seg(0xDB, bytes([c]) + bytes(coef.qtables[c].astype(np.uint8)))
                                 for c in range(n))
    out += seg(0xC0, bytes([8]) + coef.height.to_bytes(2, "big") + coef.width.to_bytes(2, "big") + bytes([n])
               + b"".join(bytes([c + 1, h << 4 | v, c]) for c, (h, v) in enumerate(factors)))
    out += seg(0xDD, restart.to_bytes(2, "big"))
    for c, blocks in enumerate(coef.blocks):
        items = _symbols(blocks, restart)
        codes = {}
        for is_dc in (True, False):              # flat codes: every symbol the same length
            syms = sorted({s for s, _, dc in items if dc == is_dc})
            size = max(1, len(syms).bit_length())
            codes[is_dc] = {s: i for i, s in enumerate(syms)}, size
            counts = [0] * 16
            counts[size - 1] = len(syms)
            out += seg(0xC4, bytes([(0 if is_dc else 16) | c]) + bytes(counts) + bytes(syms))
        out += seg(0xDA, bytes([1, c + 1, c << 4 | c, 0, 63, 0]))
        bits, block = _Bits(), -1
        for s, value, is_dc in items:
            if is_dc:
                block += 1
                if restart and block and block % restart == 0:
                    bits.align()
                    bits.out += bytes([0xFF, 0xD0 + (block // restart - 1) % 8])
            table, size = codes[is_dc]
            bits.put(table[s], size)
            nb = s if is_dc else s & 15
            if nb:
                bits.put(value if value > 0 else value - 1, nb)
        bits.align()
        out += bytes(bits.out)
    return out + b"\xff\xd9"


@pytest.mark.parametrize("subsampling", list(SUBSAMPLINGS))
@pytest.mark.parametrize("restart", [0, 1, 5])
def test_non_interleaved_scans_match_reference(subsampling, restart):
    tok = JpegDctTokenizer(JpegDctConfig(quality=50, size=(24, 40), subsampling=subsampling))
    coef = tok.coefficients(next(iter(crops("val", 1, (24, 40), seed=6))).pixels)
    data = non_interleaved_jpeg(coef, restart)
    assert data.count(b"\xff\xda") == len(coef.blocks)
    assert read_coefficients(data) == coef                  # libjpeg reads the file we made
    assert compiled.read_coefficients(data) == coef
    assert_same_as_reference(JpegDctTokenizer(JpegDctConfig(quality=None, size=None)), data)


def _gray(dc: list[int], ac1: int = 0) -> Coefficients:
    """A gray 8 x 8n image: block i has DC dc[i], the first block AC 1 = ac1."""
    blocks = np.zeros((1, len(dc), 64), np.int16)
    blocks[0, :, 0] = dc
    blocks[0, 0, 1] = ac1
    return Coefficients(8, 8 * len(dc), "gray", (blocks,), np.full((1, 64), 4, np.uint16))


@pytest.mark.parametrize("case", ["ac_2000", "dc_1500", "bad_code"])
def test_values_and_codes_libjpeg_flags_give_the_reference_error(monkeypatch, case):
    """Files libjpeg reads with a warning or with values 8-bit JPEG cannot hold: the reference's error."""
    if case == "bad_code":                 # DC codes 00 01 10 (3 categories); 11 is no code
        data = bytearray(non_interleaved_jpeg(_gray([0, 1, 3])))
        data[data.rindex(b"\xff\xda") + 10] = 0xC0
    else:
        data = non_interleaved_jpeg(_gray([1500]) if case == "dc_1500" else _gray([0], ac1=2000))
    tok = JpegDctTokenizer(JpegDctConfig(quality=None, size=None))
    fast, ref = both_paths(monkeypatch, tok.encode, bytes(data))
    assert isinstance(ref, tuple) and "corrupt" in ref[1], ref
    assert fast == ref


# -- the tokenizer: compiled by default, the same answers and errors as the reference ---------------

def outcome(fn, *args):
    """What a call gives: its result, or its error's type and message."""
    try:
        return fn(*args)
    except (TokenizerError, ValueError, OSError) as e:
        return type(e).__name__, str(e)


def same(a, b) -> bool:
    if isinstance(a, TokenSequence) or isinstance(b, TokenSequence):
        return a == b
    return type(a) is type(b) and a == b


def both_paths(monkeypatch, fn, *args):
    monkeypatch.setattr(compiled, "enabled", False)
    ref = outcome(fn, *args)
    monkeypatch.setattr(compiled, "enabled", True)
    return outcome(fn, *args), ref


def test_tokenizer_uses_compiled_path_by_default(monkeypatch):
    tok = JpegDctTokenizer(JpegDctConfig(quality=25, size=(64, 64), order="coarse_to_fine"))
    files = [tok.to_jpeg(c.pixels) for c in crops("val", 3, (64, 64), seed=8)]
    calls = []
    read = compiled._scan.read
    monkeypatch.setattr(compiled._scan, "read", lambda data: calls.append(1) or read(data))
    seqs = tok.encode_batch(files)
    assert len(calls) == 3
    fast_dec = [tok.decode(s) for s in seqs]
    monkeypatch.setattr(compiled, "enabled", False)
    assert seqs == [tok.encode(f) for f in files] and len(calls) == 3
    assert fast_dec == [tok.decode(s) for s in seqs]


@pytest.mark.parametrize("seed", range(4))
def test_corrupt_files_give_the_reference_answer(monkeypatch, seed):
    """Random byte changes, mostly in the scan data: the same tokens or the same error either way."""
    rng = np.random.default_rng(seed)
    px = next(iter(crops("val", 1, (32, 48), seed=seed))).pixels
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, "JPEG", quality=70, restart_marker_blocks=2 * seed)
    clean = buf.getvalue()
    start = clean.index(b"\xff\xda")
    tok = JpegDctTokenizer(JpegDctConfig(quality=None, size=None))
    taken = 0
    for _ in range(60):
        data = bytearray(clean)
        for i in rng.integers(start if rng.random() < 0.8 else 2, len(data), size=rng.integers(1, 4)):
            data[i] = int(rng.integers(0, 256))
        if rng.random() < 0.2:
            data = data[:rng.integers(start, len(data))]
        fast, ref = both_paths(monkeypatch, tok.encode, bytes(data))
        assert same(fast, ref), (fast, ref)
        taken += compiled.encode_jpeg(tok.vocab, bytes(data), "raster", tok.config.bands) is not None
    assert taken > 0


@pytest.mark.parametrize("order", ORDERS)
def test_malformed_streams_give_the_reference_error(monkeypatch, order):
    """Token streams with one token changed, dropped, doubled or cut off: the same JPEG or the same
    error from the compiled path and the reference."""
    rng = np.random.default_rng(1)
    tok = JpegDctTokenizer(JpegDctConfig(quality=90, size=(24, 40), order=order, dc_range=4, ac_range=3,
                                         max_skip=3))
    seq = tok.encode(next(iter(crops("val", 1, (24, 40), seed=3))).pixels)
    ids, n = seq.ids, len(seq.ids)
    for trial in range(400):
        i = int(rng.integers(7, n))
        kind = trial % 4
        if kind == 0:
            mutated = ids.copy()
            mutated[i] = rng.integers(-2, tok.vocab_size + 2)
        elif kind == 1:
            mutated = np.delete(ids, i)
        elif kind == 2:
            mutated = np.insert(ids, i, ids[int(rng.integers(7, n))])
        else:
            mutated = ids[:i]
        s = TokenSequence(mutated, np.zeros((len(mutated), 5)))
        fast, ref = both_paths(monkeypatch, tok.decode, s)
        assert same(fast, ref), (trial, fast, ref)


def test_coefficients_libjpeg_cannot_write_give_the_reference_error(monkeypatch):
    """A DC escape past what baseline JPEG codes: the reference's libjpeg error, not a file."""
    tok = JpegDctTokenizer(JpegDctConfig(quality=50, size=(8, 16), subsampling="gray"))
    seq = tok.encode(next(iter(crops("val", 1, (8, 16), seed=1))).pixels)
    v = tok.vocab
    first_dc = 3 if seq.ids[7] > v.dc + 2 * v.dc_range else 1       # the first block's DC token(s)
    escape = [v.dc + 2 * v.dc_range + 1, v.byte + 20, v.byte]      # DC difference 64 + 5121
    ids = np.concatenate([seq.ids[:7], escape, seq.ids[7 + first_dc:]])
    fast, ref = both_paths(monkeypatch, tok.decode, TokenSequence(ids, np.zeros((len(ids), 5))))
    assert isinstance(ref, tuple) and ref[0] == "TokenizerError" and "libjpeg" in ref[1], ref
    assert fast == ref


# -- every file of ../shared/robust-jpeg, in a worker process ----------------------------------------

def check_file(path: Path) -> dict:
    """Compiled path vs reference on one file: coefficients, tokens (both orders) and written bytes."""
    data = path.read_bytes()
    fast = compiled.read_coefficients(data)
    try:
        ref = read_coefficients(data, str(path))
    except (ValueError, TokenizerError) as e:
        ref = e
    if fast is None:
        return {"taken": False, "ok": True}
    if not isinstance(ref, Coefficients) or fast != ref:
        return {"taken": True, "ok": False, "message": f"reference gives {ref!r}"}
    for order in ORDERS:
        tok = JpegDctTokenizer(JpegDctConfig(quality=None, size=None, order=order))
        seq = compiled.encode_jpeg(tok.vocab, data, order, tok.config.bands)
        if seq != encode_coefficients(tok.vocab, ref, order, tok.config.bands):
            return {"taken": True, "ok": False, "message": f"{order} tokens differ"}
        out = outcome(compiled.decode_jpeg, tok.vocab, seq, order, tok.config.bands)
        if out != outcome(reference_jpeg, tok, seq):
            return {"taken": True, "ok": False, "message": f"{order} written bytes differ"}
    return {"taken": True, "ok": True}


@pytest.mark.skipif(not robust_sweep.FOLDER.is_dir(), reason=f"{robust_sweep.FOLDER} is absent")
def test_robust_jpeg_files_match_reference():
    """The sweep runs in a worker process (libjpeg may crash on hostile input): every file the
    compiled path takes gives the reference's coefficients, tokens and bytes."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    proc = subprocess.run([sys.executable, __file__, str(robust_sweep.FOLDER)], capture_output=True,
                          text=True, timeout=600, cwd=ROOT, env=env)
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert proc.returncode == 0, f"worker died: {proc.stderr[-2000:]}"
    assert len(records) == len(robust_sweep.files())
    bad = [r for r in records if not r["ok"]]
    assert not bad, bad
    assert sum(r["taken"] for r in records) >= 30      # the compiled path takes the plain ones


if __name__ == "__main__":
    for p in robust_sweep.files(Path(sys.argv[1]) if len(sys.argv) > 1 else robust_sweep.FOLDER):
        print(json.dumps({"file": str(p), **check_file(p)}), flush=True)
