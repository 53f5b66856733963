"""The recompressor: byte-exact round trips on real photos and odd files, clean refusals."""

import io
import json
import struct
import zlib

import numpy as np
import pytest
import robust_sweep
import torch
from PIL import Image

from dctgpt import checkpoint, codec, evaluate
from dctgpt.model import GPT, GPTConfig
from tokenizer import JpegDctConfig, JpegDctTokenizer, scan_bytes
from tokenizer.corpus.embedded import export, load_photo

TOK = JpegDctTokenizer(JpegDctConfig(quality=25, size=(32, 32)))
MAX_TOKENS = 20_000     # longer robust-jpeg streams: checked up to the coder (see the test)


def tiny_gpt(seed: int = 0) -> GPT:
    """Random init; block_size 64, so every stream here runs past the KV cache's window."""
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=TOK.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=32))


class Uniform:
    """Equal logits: a stand-in model for files whose bytes, not probabilities, are under test."""

    id = b"uniform0"

    def start(self, ids, positions):
        return np.zeros(TOK.vocab_size)

    def step(self, token, position):
        return np.zeros(TOK.vocab_size)


@pytest.fixture(scope="module")
def coder():
    tok = evaluate.as_is(TOK)
    return codec.GPTPredictor(tiny_gpt(), tok), tok


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """8 held-out 32x32 crops of the embedded corpus as quality-25 JPEGs (libjpeg)."""
    return export(tmp_path_factory.mktemp("photos"), "val", 8, (32, 32), quality=25)


def test_real_photos_round_trip_byte_for_byte(coder, photos):
    pred, tok = coder
    for p in photos:
        data = p.read_bytes()
        packed = codec.compress(data, pred, tok, str(p))
        assert packed.coded, packed.reason
        assert codec.decompress(packed.data, pred, tok) == data


def test_pil_files_with_odd_size_and_restarts_round_trip(coder):
    pred, tok = coder
    px = np.ascontiguousarray(load_photo("skimage:chelsea.png")[50:91, 70:117])   # 41x47: partial MCUs
    for kw in (dict(quality=25), dict(quality=70, optimize=True, restart_marker_blocks=2)):
        b = io.BytesIO()
        Image.fromarray(px).save(b, "JPEG", **kw)
        packed = codec.compress(b.getvalue(), pred, tok)
        assert packed.coded, packed.reason
        assert codec.decompress(packed.data, pred, tok) == b.getvalue()


@pytest.mark.slow
def test_256px_photo_round_trips(coder, tmp_path):
    pred, tok = coder
    (path,) = export(tmp_path, "val", 1, (256, 256), quality=25)
    data = path.read_bytes()
    packed = codec.compress(data, pred, tok)
    assert packed.coded and len(tok.encode(data)) > 5000
    assert codec.decompress(packed.data, pred, tok) == data


def test_predictor_sees_the_context_evaluate_scores_with(coder, photos):
    """Past block_size, the coder's windows are evaluate's: the same NLL per token (to float noise),
    so file sizes follow the NLL figure."""
    pred, tok = coder
    seq = tok.encode(photos[0].read_bytes())
    assert len(seq) > 3 * pred.window
    with codec._one_thread():
        logits = [pred.start(seq.ids[:7], seq.positions[:7])]
        logits += [pred.step(int(t), r) for t, r in zip(seq.ids[7:-1], seq.positions[7:-1])]
    logits = torch.tensor(np.stack(logits))
    nll = torch.nn.functional.cross_entropy(logits, torch.as_tensor(seq.ids[7:], dtype=torch.long),
                                            reduction="none").numpy()
    assert np.abs(nll - evaluate.sequence_nll(pred.model, seq)[6:]).max() < 1e-4


def test_quantized_probabilities_floor_and_total():
    q = codec.quantize(np.array([0.0, -200.0, 3.0, 1e-9, -1e-9]))
    assert q.sum() == codec.TOTAL and q.min() == 1 and q.dtype == np.float64
    assert q[3] == q[4] == q[0]                                 # below the grid: the same integer
    assert np.array_equal(q, np.floor(q))


@pytest.mark.skipif(not robust_sweep.FOLDER.is_dir(), reason=f"{robust_sweep.FOLDER} is absent")
def test_robust_jpeg_files_round_trip_or_are_stored():
    """Every file of ../shared/robust-jpeg comes back byte for byte (stored as it was counts). The
    probabilities play no part in exactness, so a uniform stand-in codes them; streams longer than
    MAX_TOKENS (a few large photos; minutes of Python per file) are checked through `plan`, which
    rebuilds the file from its tokens exactly as decompress does, without the range coder."""
    tok = evaluate.as_is(TOK)
    coded, paths = 0, robust_sweep.files()
    assert len(paths) >= 300
    for path in paths:
        data = path.read_bytes()
        try:
            p = codec.plan(data, tok, str(path))
        except (ValueError, OSError):
            p = None
        if p is not None and len(p.tokens) > MAX_TOKENS:
            coded += 1
            continue
        packed = codec.compress(data, Uniform(), tok, str(path))
        assert packed.coded == (p is not None), (path, packed.reason)
        assert codec.decompress(packed.data, Uniform() if packed.coded else None, tok) == data, path
        coded += packed.coded
    assert coded >= 30


@pytest.fixture(scope="module")
def container(coder, photos):
    pred, tok = coder
    return codec.compress(photos[0].read_bytes(), pred, tok).data


def test_damaged_containers_are_refused(coder, container):
    pred, tok = coder
    damaged = [container[:n] for n in range(len(container))]                  # every truncation
    damaged += [container[:i] + bytes([container[i] ^ 1 << (i % 8)]) + container[i + 1:]
                for i in range(len(container))]                               # a bit flipped anywhere
    damaged += [container + b"\0", b"JFIF" + container[4:]]
    for bad in damaged:
        with pytest.raises(codec.CodecError):
            codec.decompress(bad, pred, tok)
    # damage the CRC misses (recomputed): the decoded file's checksum still refuses it
    for i in (len(container) - 1, len(container) - 20, 40):
        bad = bytearray(container)
        bad[i] ^= 0x10
        bad[6:10] = struct.pack(">I", zlib.crc32(bad[4:6] + bad[10:]))
        with pytest.raises(codec.CodecError):
            codec.decompress(bytes(bad), pred, tok)


def test_another_model_is_refused(coder, container):
    _, tok = coder
    other = codec.GPTPredictor(tiny_gpt(seed=1), tok)
    with pytest.raises(codec.CodecError, match="model"):
        codec.decompress(container, other, tok)
    with pytest.raises(codec.CodecError, match="--ckpt"):
        codec.decompress(container, None, None)


@pytest.mark.parametrize("data", [b"not an image", b"\xff\xd8\xff\xe0 cut short"])
def test_what_the_path_cannot_carry_is_stored_and_needs_no_model(coder, data):
    pred, tok = coder
    packed = codec.compress(data, pred, tok)
    assert not packed.coded and packed.reason
    assert codec.decompress(packed.data, None, None) == data


def test_progressive_jpeg_is_stored(coder, photos):
    pred, tok = coder
    b = io.BytesIO()
    Image.open(photos[0]).save(b, "JPEG", quality=50, progressive=True)
    packed = codec.compress(b.getvalue(), pred, tok)
    assert not packed.coded and "SOF2" in packed.reason
    assert codec.decompress(packed.data, None, None) == b.getvalue()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    checkpoint.save(out, tiny_gpt(), None, TOK, {"iter_num": 0})
    return out


def codec_cli(argv: list[str]) -> int:
    try:
        return codec.cli(argv)
    except SystemExit as e:       # a user error: one line on stderr, exit 2
        return e.code


def test_cli_folders_round_trip_and_refuse_damage(ckpt, photos, tmp_path, capsys):
    src = tmp_path / "in"
    for p in photos[:3]:
        (src / "sub").mkdir(parents=True, exist_ok=True)
        (src / "sub" / p.name).write_bytes(p.read_bytes())
    (src / "notes.txt").write_bytes(b"not a JPEG: stored as it is")
    packed, restored = tmp_path / "packed", tmp_path / "restored"
    assert codec_cli(["compress", str(src), str(packed), "--ckpt", str(ckpt)]) == 0
    assert "4 files (3 coded, 1 stored" in capsys.readouterr().out
    assert codec_cli(["decompress", str(packed), str(restored), "--ckpt", str(ckpt)]) == 0
    for p in src.rglob("*.*"):
        assert (restored / p.relative_to(src)).read_bytes() == p.read_bytes()
    # a damaged container: one line on stderr, exit 2, nothing written for it, the rest restored
    bad = packed / "sub" / (photos[1].name + codec.SUFFIX)
    bad.write_bytes(bad.read_bytes()[:-3])
    again = tmp_path / "again"
    assert codec_cli(["decompress", str(packed), str(again), "--ckpt", str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}") and err.count("\n") == 1
    assert sorted(p.name for p in again.rglob("*.*")) == sorted(p.name for p in src.rglob("*.*")
                                                               if p.name != photos[1].name)
    out = tmp_path / "one.jpg"
    assert codec_cli(["decompress", str(bad), str(out), "--ckpt", str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1 and not out.exists()
    assert codec_cli(["decompress", str(bad), str(out)]) == 2
    assert codec_cli(["compress", str(tmp_path / "missing"), str(out), "--ckpt", str(ckpt)]) == 2
    assert codec_cli(["compress", str(src), str(out)]) == 2                  # no --ckpt
    assert "--ckpt" in capsys.readouterr().err
    assert codec_cli(["--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: python -m dctgpt.codec")


def test_evaluate_as_is_scores_files_at_their_own_size(ckpt, photos, tmp_path, capsys):
    big = tmp_path / "jpegs"
    big.mkdir()
    (path,) = export(big, "val", 1, (40, 56), quality=25)     # not the tokenizer's 32x32
    report = evaluate.main(str(ckpt), str(big), json_path=str(tmp_path / "e.json"), progress=False,
                           as_is_files=True)
    normal = evaluate.main(str(ckpt), str(big), progress=False)
    r = report["images"][0]
    assert (r["height"], r["width"]) == (40, 56) and (normal["images"][0]["height"]) == 32
    assert r["tokens"] == len(evaluate.as_is(TOK).encode(path))
    assert r["scan_bytes"] == scan_bytes(path.read_bytes())
    assert report.keys() == normal.keys() and r.keys() == normal["images"][0].keys()
    assert json.loads((tmp_path / "e.json").read_text())["summary"] == report["summary"]
    Image.new("RGB", (8, 8)).save(big / "x.png")
    with pytest.raises(SystemExit) as e:
        evaluate.cli(["--ckpt", str(ckpt), "--images", str(big), "--as_is"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error:") and "x.png" in err and err.count("\n") == 1
