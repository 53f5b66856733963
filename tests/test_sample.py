"""Sampling and evaluation from a tiny trained checkpoint: valid JPEGs, prefixes, exact bits."""

import io
import json
import math

import jpeglib
import numpy as np
import pytest
import torch
from PIL import Image
from tiny_corpus import make_corpus, write_images
from torch.nn import functional as F

import sample
import train
from dctgpt import checkpoint, evaluate
from dctgpt.config import TrainConfig
from dctgpt.generate import SamplingConfig, generate
from dctgpt.model import GPTConfig
from tokenizer import JpegDctConfig, JpegDctTokenizer, scan_bytes
from tokenizer.base import BLOCK_ROW, COMPONENT


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    corpus = tmp_path_factory.mktemp("corpus")
    make_corpus(corpus)
    out = tmp_path_factory.mktemp("run")
    train.main(TrainConfig(data_dir=str(corpus), out_dir=str(out), batch_size=4, max_iters=30,
                           eval_interval=30, eval_iters=1, warmup_iters=5, learning_rate=1e-2, num_threads=1,
                           model=GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=64)))
    return out


def test_sample_main_writes_jpegs_that_decode(run_dir, tmp_path):
    paths = sample.main(sample.SampleConfig(out_dir=str(run_dir), samples_dir=str(tmp_path), num_samples=5,
                                            batch_size=3, temperature=1.0, top_k=50, top_p=0.95))
    assert len(paths) == 5
    for p in paths:
        im = Image.open(p)
        im.load()
        assert im.size == (16, 16) and im.format == "JPEG"
    assert Image.open(tmp_path / "grid.png").size[0] > 16


def libjpeg_tables(quality: int) -> np.ndarray:
    """The luma and chroma tables libjpeg (through Pillow) writes at `quality`: (2, 8, 8), natural order."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, "JPEG", quality=quality)
    return np.array([Image.open(buf).quantization[i] for i in (0, 1)]).reshape(2, 8, 8)


def test_sampling_at_another_size_and_quality(run_dir, tmp_path):
    assert checkpoint.load(run_dir).tokenizer.config.quality == 50     # trained at 50, sampled at 80
    paths = sample.main(sample.SampleConfig(out_dir=str(run_dir), samples_dir=str(tmp_path), num_samples=2,
                                            height=24, width=40, quality=80, seed=3))
    assert len(paths) == 2
    for p in paths:
        im = Image.open(p)
        im.load()
        assert im.size == (40, 24)
        got = jpeglib.read_dct(str(p))
        assert np.array_equal(got.qt, libjpeg_tables(80))             # the quality asked for


def test_prefix_completion_keeps_the_first_rows_and_samples_the_rest(run_dir, tmp_path):
    """16x16 4:2:0 is one MCU: luma rows 0-1, chroma row 0. Keeping luma row 0 leaves luma row 1 and
    both chroma blocks to the model."""
    [img] = write_images(tmp_path / "img", 1, size=16)
    ck = checkpoint.load(run_dir)
    cfg = sample.SampleConfig(out_dir=str(run_dir), prefix_image=str(img), prefix_rows=1)
    prompt = sample.prompt_for(ck.tokenizer, cfg)
    full = ck.tokenizer.encode(img)
    assert full[:len(prompt)] == prompt
    body = prompt.positions[prompt.positions[:, COMPONENT] > 0]
    assert len(body) and body[:, BLOCK_ROW].max() == 0 and (body[:, COMPONENT] == 1).all()
    rest = full[len(prompt):]
    assert set(rest.positions[:-1, COMPONENT]) == {1, 2, 3} and rest.positions[:, BLOCK_ROW].max() == 1
    paths = sample.main(sample.SampleConfig(out_dir=str(run_dir), samples_dir=str(tmp_path / "s"),
                                            num_samples=3, prefix_image=str(img), prefix_rows=1))
    src = tmp_path / "prefix.jpg"
    src.write_bytes(ck.tokenizer.to_jpeg(img))
    ref = jpeglib.read_dct(str(src))
    sampled = []
    for p in paths:
        got = jpeglib.read_dct(str(p))
        assert got.Y.shape == ref.Y.shape and np.array_equal(got.Y[:1], ref.Y[:1])  # the kept row
        sampled.append(np.concatenate([got.Y[1:].ravel(), got.Cb.ravel(), got.Cr.ravel()]))
    ref_rest = np.concatenate([ref.Y[1:].ravel(), ref.Cb.ravel(), ref.Cr.ravel()])
    assert not any(np.array_equal(x, ref_rest) for x in sampled)     # the rest is sampled, not copied
    assert not np.array_equal(sampled[0], sampled[1])                  # and differs between samples


def test_generate_is_seeded_and_cache_matches_recompute(run_dir):
    ck = checkpoint.load(run_dir)
    tok, model = ck.tokenizer, ck.model
    prompt = tok.header(16, 16)
    a = generate(model, tok, prompt, 3, SamplingConfig(seed=5))
    b = generate(model, tok, prompt, 3, SamplingConfig(seed=5))
    assert all(x == y for x, y in zip(a, b))
    greedy = generate(model, tok, prompt, 1, SamplingConfig(temperature=0))
    top1 = generate(model, tok, prompt, 1, SamplingConfig(top_k=1, seed=9))
    no_cache = generate(model, tok, prompt, 1, SamplingConfig(temperature=0, use_cache=False))
    assert greedy[0] == top1[0] == no_cache[0]
    for seq in a + greedy:
        assert seq.ids[-1] == tok.eos_id
        Image.open(io.BytesIO(tok.decode(seq))).load()


def test_sequence_nll_equals_summed_cross_entropy(run_dir):
    ck = checkpoint.load(run_dir)
    model, tok = ck.model, ck.tokenizer
    [img] = write_images(run_dir / "eval_one", 1, size=16, seed=7)
    seq = tok.encode(img)[:model.config.block_size]  # one window: a plain forward pass
    ids = torch.from_numpy(seq.ids.astype(np.int64))[None]
    pos = torch.from_numpy(seq.positions.astype(np.int64))[None]
    with torch.no_grad():
        logits, _ = model(ids, pos)
    ref = F.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum").item()
    assert evaluate.sequence_nll(model, seq).sum() == pytest.approx(ref, rel=1e-5)


def test_sliding_window_nll_scores_every_token_once(run_dir, tmp_path):
    ck = checkpoint.load(run_dir)
    model = ck.model
    tok = JpegDctTokenizer(JpegDctConfig(quality=50, size=(40, 40)))  # the same ids, larger images
    assert tok.vocab_size == ck.tokenizer.vocab_size
    [img] = write_images(tmp_path, 1, size=40, seed=8)
    seq = tok.encode(img)  # longer than the 64-token context
    W, stride = model.config.block_size, 16
    assert len(seq) > 2 * W
    nll = evaluate.sequence_nll(model, seq, stride=stride)
    ids = torch.from_numpy(seq.ids.astype(np.int64))
    pos = torch.from_numpy(seq.positions.astype(np.int64))
    for t in (1, W - 1, W, W + 5, len(seq) - 1):  # token t from the window that first reaches it
        start = 0 if t < W else ((t - W) // stride + 1) * stride
        with torch.no_grad():
            logits, _ = model(ids[None, start:start + W], pos[None, start:start + W])
        ref = F.cross_entropy(logits[0, t - 1 - start], ids[t]).item()
        assert nll[t - 1] == pytest.approx(ref, rel=1e-5, abs=1e-6)


def scan_length_from_markers(jpeg: bytes) -> int:
    """Entropy-coded bytes of a one-scan JPEG, from its markers alone: the marker segments from SOI to
    the end of the SOS header come first, EOI is last, and what lies between is the scan."""
    assert jpeg[:2] == b"\xff\xd8" and jpeg[-2:] == b"\xff\xd9"
    i = 2
    while True:
        assert jpeg[i] == 0xFF, f"no marker at byte {i}"
        marker, length = jpeg[i + 1], int.from_bytes(jpeg[i + 2:i + 4], "big")
        i += 2 + length                                   # the length counts itself, not the marker
        if marker == 0xDA:                                # SOS: the scan starts after its header
            return len(jpeg) - 2 - i


def test_scan_length_from_markers_on_a_scan_known_in_advance():
    """Mid-gray 64x64 4:2:0 through libjpeg's standard Huffman tables: every DC difference is 0 and
    every block ends at once, so a luma block costs 2 + 4 bits ('00', EOB '1010') and a chroma block
    2 + 2 ('00', EOB '00'): 64 * 6 + 32 * 4 = 512 bits, 64 bytes (no padding, no 0xFF to stuff)."""
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (128, 128, 128)).save(buf, "JPEG", quality=50, subsampling=2)
    jpeg = buf.getvalue()
    assert scan_length_from_markers(jpeg) == 64 == scan_bytes(jpeg)


def test_evaluate_main_reports_bits_and_saving(run_dir, tmp_path):
    write_images(tmp_path / "imgs", 3, size=20, seed=4)
    report = evaluate.main(str(run_dir), str(tmp_path / "imgs"), json_path=str(tmp_path / "r.json"),
                           progress=False)
    assert json.loads((tmp_path / "r.json").read_text()) == report
    ck = checkpoint.load(run_dir)
    for r in report["images"]:
        prepared = ck.tokenizer.to_jpeg(tmp_path / "imgs" / r["name"])
        seq = ck.tokenizer.encode(tmp_path / "imgs" / r["name"])
        bits = evaluate.sequence_nll(ck.model, seq).sum() / math.log(2)
        assert r["bits"] == pytest.approx(bits, rel=1e-6)
        assert r["scan_bytes"] == scan_bytes(prepared) == scan_length_from_markers(prepared)
        assert r["saving"] == pytest.approx(1 - r["bits"] / (8 * r["scan_bytes"]))
        assert r["bits_per_pixel"] == pytest.approx(r["bits"] / (16 * 16))
    assert report["summary"]["images"] == 3
