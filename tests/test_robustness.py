"""Bad and odd inputs: each tokenizes correctly (exact round trip) or raises an error naming the file
and the reason; the sweep over ../shared/robust-jpeg runs in a worker process so a libjpeg crash
fails the test instead of killing pytest."""

import io
import re
import struct

import numpy as np
import pytest
import robust_sweep
from jpeg_reference import PHOTOS, photo_pixels, pil_pixels, reference
from PIL import Image, ImageOps

from tokenizer import JpegDctConfig, JpegDctTokenizer, TokenizerError

CLEAN_ERRORS = (TokenizerError, ValueError, FileNotFoundError)


def tok_for(**kw) -> JpegDctTokenizer:
    return JpegDctTokenizer(JpegDctConfig(**kw))


def assert_round_trip(tok, path) -> np.ndarray:
    """Exact round trip; returns the pixels of the decoded JPEG."""
    seq = tok.encode(path)
    jpeg = tok.decode(seq)
    reference(jpeg).assert_equal(reference(tok.to_jpeg(path)), str(path))
    return pil_pixels(jpeg)


def assert_clean_error(tok, path, reason: str, kinds=CLEAN_ERRORS) -> None:
    with pytest.raises(kinds) as e:
        tok.encode(path)
    assert str(path) in str(e.value), f"message does not name the file: {e.value}"
    assert re.search(reason, str(e.value), re.I), f"message does not say {reason!r}: {e.value}"


def save(tmp_path, name: str, im: Image.Image, fmt: str, **kw):
    path = tmp_path / name
    im.save(path, fmt, **kw)
    return path


def test_grayscale_inputs(tmp_path):
    png = PHOTOS["camera"]                                  # an 8-bit gray PNG
    px = assert_round_trip(tok_for(size=(40, 48), subsampling="gray"), png)
    assert px.shape == (40, 48)
    rgb = assert_round_trip(tok_for(size=(40, 48), subsampling="4:2:0"), png)
    assert rgb.shape == (40, 48, 3)
    assert np.abs(rgb.astype(int) - rgb[..., :1]).max() <= 12   # gray in, (nearly) gray out
    jpg = save(tmp_path, "gray.jpg", Image.open(png), "JPEG", quality=70)
    assert reference(tok_for(quality=None, size=None).decode(tok_for(quality=None, size=None).encode(jpg))) \
        .blocks[0].shape == (64, 64, 64)


def test_cmyk_jpeg(tmp_path):
    im = Image.fromarray(photo_pixels("coffee")[:64, :80])
    path = save(tmp_path, "cmyk.jpg", im.convert("CMYK"), "JPEG", quality=90)
    px = assert_round_trip(tok_for(quality=50, size=None, subsampling="4:4:4"), path)
    expect = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert px.shape == (64, 80, 3) and np.abs(px.astype(int) - expect).mean() < 6   # colours kept
    assert_clean_error(tok_for(quality=None, size=None), path, "4 components")


def test_progressive_jpeg(tmp_path):
    im = Image.fromarray(photo_pixels("astronaut")[:72, :88])
    path = save(tmp_path, "prog.jpg", im, "JPEG", quality=25, progressive=True)
    assert_round_trip(tok_for(quality=None, size=None), path)
    assert_round_trip(tok_for(quality=25, size=None), path)        # same quality: kept as it is
    assert tok_for(quality=25, size=None).to_jpeg(path) == path.read_bytes()
    assert_round_trip(tok_for(quality=10, size=(32, 32)), path)


@pytest.mark.parametrize("quality", [25, 60])
def test_exif_rotated_jpeg_is_turned_upright(tmp_path, quality):
    im = Image.fromarray(photo_pixels("chelsea")[:48, :80])         # 80 wide, 48 high
    exif = Image.Exif()
    exif[0x0112] = 6                                                  # rotate 90 degrees clockwise
    path = save(tmp_path, "rot.jpg", im, "JPEG", quality=25, exif=exif.tobytes())
    px = assert_round_trip(tok_for(quality=quality, size=None), path)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(path))).astype(int)
    assert px.shape == (80, 48, 3) == upright.shape
    assert np.abs(px.astype(int) - upright).mean() < 8
    # quality=None keeps the stored coefficients exactly (the orientation cannot be applied losslessly)
    kept = tok_for(quality=None, size=None)
    reference(kept.decode(kept.encode(path))).assert_equal(reference(path))


def test_16bit_png(tmp_path):
    ramp = (np.arange(48 * 64, dtype=np.uint32).reshape(48, 64) * 21).astype(np.uint16)   # 0..64491
    path = save(tmp_path, "deep.png", Image.fromarray(ramp), "PNG")
    assert Image.open(path).mode.startswith("I")
    px = assert_round_trip(tok_for(quality=90, size=None, subsampling="gray"), path)
    assert np.abs(px.astype(int) - ramp.astype(int) / 257).max() < 8     # scaled to 8 bits, not clipped


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_is_composited_on_white(tmp_path, mode):
    a = np.zeros((32, 48, 4), np.uint8)
    a[:, :24] = (200, 30, 30, 255)             # left: opaque red; right: fully transparent black
    im = Image.fromarray(a, "RGBA")
    if mode == "LA":
        im = im.convert("LA")
    elif mode == "P":
        im = im.convert("RGB").quantize(4)
        im.info["transparency"] = im.getpixel((40, 10))
    path = save(tmp_path, f"alpha_{mode}.png", im, "PNG", **({"transparency": im.info["transparency"]}
                                                            if mode == "P" else {}))
    px = assert_round_trip(tok_for(quality=90, size=None, subsampling="4:4:4"), path).astype(int)
    assert px[:, 32:].min() >= 245                          # transparent -> white
    assert px[:, :16].mean() < 200                          # opaque part kept


@pytest.mark.parametrize("kind", ["png", "jpeg", "array"])
def test_1x1(tmp_path, kind):
    im = Image.new("RGB", (1, 1), (10, 200, 90))
    path = {"png": lambda: save(tmp_path, "one.png", im, "PNG"),
            "jpeg": lambda: save(tmp_path, "one.jpg", im, "JPEG", quality=25),
            "array": lambda: np.asarray(im)}[kind]()
    for tok in (tok_for(size=None), tok_for(size=(1, 1), subsampling="gray")):
        seq = tok.encode(path)
        assert reference(tok.decode(seq)).size == (1, 1)
        assert tok.decode_coefficients(seq).blocks[0].shape == (1, 1, 64)


def test_very_large_image_is_refused_naming_the_file(tmp_path):
    path = save(tmp_path, "big.png", Image.new("RGB", (300, 200)), "PNG")
    assert_clean_error(tok_for(max_pixels=50_000), path, "max_pixels")
    assert_round_trip(tok_for(max_pixels=60_000, size=(16, 16)), path)


@pytest.mark.parametrize("quality", [None, 25])
def test_jpeg_claiming_a_huge_size_is_refused_before_decoding(tmp_path, quality):
    data = bytearray(_small_jpeg())
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, 60000, 60000)        # height, width in the frame header
    path = tmp_path / "huge.jpg"
    path.write_bytes(bytes(data))
    assert_clean_error(tok_for(quality=quality, size=None), path, "max_pixels")


def _small_jpeg(quality=50) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(photo_pixels("coffee")[:40, :56]).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@pytest.mark.parametrize("quality", [None, 25])
@pytest.mark.parametrize("cut", [1, 100, 400, 0.5, -30, -2])
def test_truncated_jpeg(tmp_path, quality, cut):
    data = PHOTOS["china"].read_bytes()
    n = int(len(data) * cut) if isinstance(cut, float) else (cut if cut > 0 else len(data) + cut)
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[:n])
    tok = tok_for(quality=quality, size=None if quality is None else (32, 32))
    assert_clean_error(tok, path, "truncated|not a JPEG|not a readable|no frame header|no scan data")


@pytest.mark.parametrize("seed", range(12))
def test_corrupt_jpeg_round_trips_or_fails_cleanly(tmp_path, seed):
    """Flipped bytes: a correct round trip of what libjpeg reads, or an error naming the file."""
    rng = np.random.default_rng(seed)
    data = bytearray(_small_jpeg())
    for i in rng.integers(2, len(data) - 2, size=1 + seed % 4):
        data[i] = int(rng.integers(0, 256))
    path = tmp_path / f"corrupt{seed}.jpg"
    path.write_bytes(bytes(data))
    for tok in (tok_for(quality=None, size=None), tok_for(quality=25, size=(24, 24))):
        try:
            seq = tok.encode(path)
        except CLEAN_ERRORS as e:
            assert str(path) in str(e)
            continue
        reference(tok.decode(seq)).assert_equal(reference(tok.to_jpeg(path)))


NOT_AN_IMAGE = {None: "this is not a JPEG", 25: "not a readable image"}


@pytest.mark.parametrize("content, reasons", [
    (b"", NOT_AN_IMAGE),
    (b"hello, not an image", NOT_AN_IMAGE),
    (b"\xff\xd8", {None: "no frame header", 25: "no frame header"}),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF", {None: "truncated JPEG", 25: "truncated JPEG"}),
    (bytes(range(256)) * 4, NOT_AN_IMAGE),
    (b"GIF89a" + b"\x00" * 20, NOT_AN_IMAGE),
], ids=["empty", "text", "soi_only", "cut_in_app0", "bytes", "gif_header"])
@pytest.mark.parametrize("quality", [None, 25])
def test_non_image_bytes(tmp_path, content, reasons, quality):
    path = tmp_path / "junk.jpg"
    path.write_bytes(content)
    assert_clean_error(tok_for(quality=quality), path, reasons[quality])


def test_missing_file_and_directory(tmp_path):
    for tok in (tok_for(), tok_for(quality=None, size=None)):
        assert_clean_error(tok, tmp_path / "missing.jpg", "no such file", FileNotFoundError)
        assert_clean_error(tok, tmp_path, "no such file", FileNotFoundError)


@pytest.mark.parametrize("media", [12, 3.5, None, np.zeros((8, 8), np.float32), np.zeros((8, 8, 2), np.uint8),
                                   np.zeros((0, 8, 3), np.uint8)])
def test_wrong_media_types(media):
    with pytest.raises(TokenizerError):
        tok_for().encode(media)


# -- the robust-jpeg folder ---------------------------------------------------------------------------

@pytest.mark.skipif(not robust_sweep.FOLDER.is_dir(), reason=f"{robust_sweep.FOLDER} is absent")
def test_robust_jpeg_sweep():
    """Every file round-trips or fails with a named reason; exactly the pinned files round-trip."""
    paths = robust_sweep.files()
    assert len(paths) == 357
    records = robust_sweep.sweep(paths, file_timeout=60)
    report = robust_sweep.summary(records)
    print(report)
    results = [r["result"] for r in records]
    assert not {"crash", "hang"} & set(results), report
    assert set(results) <= {"ok", "error"}, report
    assert len(records) == len(paths) * len(robust_sweep.CONFIGS), report
    vague = [r for r in records if r["result"] == "error" and not robust_sweep.REASONS.search(r["message"])]
    assert not vague, f"errors that give no known reason: {vague}"
    got, want = robust_sweep.ok_pairs(records), robust_sweep.read_ok_list()
    assert got == want, (f"no longer round-trip: {sorted(want - got)}; now round-trip (if right, run "
                         f"python tests/robust_sweep.py --write-ok): {sorted(got - want)}")
    assert len(want) == 188                    # 60 files as they are, 128 re-encoded at q25 32x32
