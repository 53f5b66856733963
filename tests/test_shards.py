"""The shard format: ids round trip in the narrowest dtype through memory maps, positions recomputed
by every tokenizer family equal its own, old corpora are refused in one line, and the packer holds
nothing per token."""

import gc
import io
import json
import multiprocessing
import os
import tracemalloc
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file, save_file
from tiny_corpus import make_corpus

import train
from dctgpt.config import TrainConfig
from dctgpt.data import Packer
from tokenizer import JpegDctConfig, JpegDctTokenizer, Tokenizer, TokenizerError, TokenSequence
from tokenizer.corpus import shards
from tokenizer.corpus.embedded import crops
from tokenizer.corpus.prepare import Source, prepare
from tokenizer.corpus.shards import Corpus, CorpusFormatError, Shard, write_index, write_shard


def _photos(n, size, seed=5):
    return [c.pixels for c in crops("train", n, size, seed=seed)]


def _custom_table_jpeg(px):
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, "JPEG", qtables=[[2] * 64, [180] * 64])
    return buf.getvalue()


def test_ids_round_trip_in_the_narrowest_dtype(tmp_path):
    rng = np.random.default_rng(0)
    for vocab, dtype in ((1106, np.uint16), (1 << 16, np.uint16), ((1 << 16) + 1, np.uint32)):
        seqs = [rng.integers(0, vocab, n) for n in (5, 0, 300, 1)]
        seqs[2][:2] = [0, vocab - 1]                                 # both ends of the range
        info = write_shard(tmp_path / "s.safetensors", seqs, vocab)
        assert (info.sequences, info.tokens) == (4, 306)
        shard = Shard(tmp_path / "s.safetensors")
        assert isinstance(shard.ids, np.memmap) and shard.ids.dtype == dtype
        assert [np.array_equal(shard.ids[a:b], s) for a, b, s in
                zip(shard.offsets[:-1], shard.offsets[1:], seqs)] == [True] * 4
        plain = load_file(str(tmp_path / "s.safetensors"))          # a plain safetensors file
        assert sorted(plain) == ["ids", "offsets"] and plain["ids"].dtype == dtype
        overhead = os.path.getsize(tmp_path / "s.safetensors") - 306 * np.dtype(dtype).itemsize - 5 * 8
        assert 0 < overhead < 200                                  # ids, offsets and a small header
    with pytest.raises(ValueError, match="outside the vocabulary"):
        write_shard(tmp_path / "bad.safetensors", [np.array([0, 1106])], 1106)


def test_same_ids_make_the_same_file(tmp_path):
    seqs = [np.arange(40) % 7, np.arange(9)]
    write_shard(tmp_path / "a.safetensors", seqs, 50)
    write_shard(tmp_path / "b.safetensors", [s.astype(np.int32) for s in seqs], 50)
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


def _jpeg_cases():
    def tok(**kw):
        return JpegDctTokenizer(JpegDctConfig(**kw))
    cases = []
    for order in ("raster", "coarse_to_fine"):
        cases += [(tok(quality=25, size=(32, 32), order=order), _photos(3, (32, 32))),
                  (tok(quality=100, size=(24, 40), subsampling="4:4:4", order=order), _photos(2, (24, 40))),
                  (tok(quality=50, size=(17, 9), subsampling="gray", order=order), _photos(2, (17, 9))),
                  (tok(quality=None, size=None, order=order),
                   [_custom_table_jpeg(p) for p in _photos(2, (16, 24))])]
    return cases


def _bpe_case():
    from tokenizer.bpe.tokenizer import BpeTokenizer
    base = JpegDctTokenizer(JpegDctConfig(quality=25, size=(32, 32)))
    streams = [base.encode(p).ids for p in _photos(30, (32, 32), seed=9)]
    return BpeTokenizer.train(base, streams, vocab_size=base.vocab_size + 200), _photos(3, (32, 32))


def _vq_case():
    from tokenizer.vqvae.tokenizer import VqConfig, VqVaeTokenizer
    tok = VqVaeTokenizer(VqConfig(size=(16, 24), channels=8, code_dim=8, codebook_size=256))
    return tok, _photos(2, (16, 24))


def _video_case():
    pytest.importorskip("av")
    from tokenizer.corpus.clips import pans
    from tokenizer.video.tokenizer import VideoConfig, VideoTokenizer
    tok = VideoTokenizer(VideoConfig(mode="delta", quality=50, size=(16, 16), max_frames=3))
    return tok, list(pans("train", 2, 3, (16, 16)))


@pytest.mark.parametrize("family", ["jpeg_dct", "jpeg_dct_bpe", "vqvae", "video_dct"])
def test_positions_recomputed_from_stored_ids_equal_the_tokenizers_own(family, tmp_path):
    cases = {"jpeg_dct": _jpeg_cases, "jpeg_dct_bpe": lambda: [_bpe_case()], "vqvae": lambda: [_vq_case()],
             "video_dct": lambda: [_video_case()]}[family]()
    for k, (tok, media) in enumerate(cases):
        d = tmp_path / str(k)
        (d / "train").mkdir(parents=True)
        seqs = [tok.encode(m) for m in media]
        info = write_shard(d / "train" / "shard-00000-000.safetensors", seqs, tok.vocab_size)
        tok.save(d / "tokenizer")
        write_index(d, tok, {"train": [info]})
        split = Corpus(d).split("train")
        assert len(split) == len(seqs)
        for i, seq in enumerate(seqs):
            assert split[i] == seq                                     # ids from the map + positions
            assert np.array_equal(Tokenizer.positions(tok, seq.ids), seq.positions)   # = grammar walk


def test_jpeg_positions_refuse_a_stream_encode_would_not_make():
    tok = JpegDctTokenizer(JpegDctConfig(quality=10, size=(64, 64), order="coarse_to_fine"))
    ids = tok.encode(_photos(1, (64, 64))[0]).ids
    with pytest.raises(TokenizerError):
        tok.positions(ids[:-1])                                          # no EOS
    # SKIP(n) split into SKIP(1) SKIP(n-1): decodes to the same coefficients, but encode never makes it
    at = int(np.flatnonzero(ids >= tok.vocab.skip + 1)[0])
    n = int(ids[at] - tok.vocab.skip + 1)
    split = np.concatenate([ids[:at], [tok.vocab.skip, tok.vocab.skip + n - 2], ids[at + 1:]])
    assert tok.decode_coefficients(TokenSequence(split, np.zeros((len(split), 5)))) == \
        tok.decode_coefficients(TokenSequence(ids, np.zeros((len(ids), 5))))
    for positions in (tok.positions, lambda x: Tokenizer.positions(tok, x)):
        with pytest.raises(TokenizerError):
            positions(split)


def _old_corpus(d):
    """A corpus as the previous version wrote it: int32 ids, int16 positions, no format key."""
    tok = JpegDctTokenizer(JpegDctConfig(quality=25, size=(16, 16)))
    seq = tok.encode(_photos(1, (16, 16))[0])
    for split in ("train", "val"):
        (d / split).mkdir(parents=True)
        save_file({"ids": seq.ids, "positions": seq.positions.astype(np.int16),
                   "offsets": np.array([0, len(seq)], np.int64)}, str(d / split / "shard-00000.safetensors"))
    tok.save(d / "tokenizer")
    (d / "corpus.json").write_text(json.dumps({"tokenizer": "jpeg_dct", "vocab_size": tok.vocab_size,
                                               "splits": {s: {"shards": ["shard-00000.safetensors"],
                                                              "sequences": 1, "tokens": len(seq)}
                                                          for s in ("train", "val")}}))
    (d / "plan.json").write_text(json.dumps({"source": {}, "tokenizer": "jpeg_dct"}))
    return tok


def test_old_format_corpus_is_a_one_line_error_saying_how_to_rebuild(tmp_path):
    tok = _old_corpus(tmp_path / "old")
    cfg = TrainConfig(data_dir=str(tmp_path / "old"), out_dir=str(tmp_path / "o"))
    for call in (lambda: Corpus(tmp_path / "old"),
                 lambda: Shard(tmp_path / "old" / "train" / "shard-00000.safetensors"),
                 lambda: train.main(cfg),
                 lambda: prepare(Source("embedded", crop_size=(16, 16)), tmp_path / "old", tok, train_crops=1,
                                 val_crops=1, workers=1, progress=False)):
        with pytest.raises(CorpusFormatError, match="old shard format.*rebuild it") as e:
            call()
        assert "\n" not in str(e.value) and "tokenizer.corpus.prepare" in str(e.value)


def _array_bytes(obj, seen=None) -> tuple[int, int]:
    """(bytes of numpy arrays in RAM, bytes mapped from files) reachable from obj's attributes."""
    seen = set() if seen is None else seen
    if id(obj) in seen or isinstance(obj, (Tokenizer, str, bytes, int, float)):
        return 0, 0
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        mapped = isinstance(obj, np.memmap) or isinstance(obj.base, np.memmap)
        return (0, obj.nbytes) if mapped else (obj.nbytes, 0)
    children = (list(obj.values()) if isinstance(obj, dict) else list(obj) if isinstance(obj, (list, tuple))
                else list(vars(obj).values()) if hasattr(obj, "__dict__") else [])
    sums = [_array_bytes(c, seen) for c in children]
    return sum(s[0] for s in sums), sum(s[1] for s in sums)


def _repeat(src, dst, times):
    """A corpus whose train split is `times` hard-linked copies of src's train shards."""
    meta = json.loads((src / "corpus.json").read_text())
    (dst / "train").mkdir(parents=True)
    entry = meta["splits"]["train"]
    infos = []
    for r in range(times):
        for s in entry["shards"]:
            os.link(src / "train" / s["file"], dst / "train" / f"{r:04d}-{s['file']}")
            infos.append(shards.ShardInfo(**{**s, "file": f"{r:04d}-{s['file']}"}))
    os.symlink(src / "tokenizer", dst / "tokenizer")
    write_index(dst, Corpus(src).tokenizer(), {"train": infos})


def _packer_peaks(small, large) -> dict:
    """Run in a fresh process (no state of earlier tests): per corpus, the Python heap's peak while a
    Packer builds 12 batches, the arrays it holds in RAM and mapped, and the shards left open."""
    shards.OPEN_SHARDS = 8
    Packer(Corpus(small).split("train"), 64, pad_id=0).batch(4, [1])   # one-time caches
    out = {}
    for name, directory in (("small", small), ("large", large)):
        gc.collect()
        tracemalloc.start()
        split = Corpus(directory).split("train")
        packer = Packer(split, 64, pad_id=0)
        for it in range(12):
            packer.batch(4, [0, it, 0])
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        in_ram, mapped = _array_bytes(packer)
        out[name] = dict(peak=peak, in_ram=in_ram, mapped=mapped, open=len(split._open),
                         shards=len(split.paths), tokens=split.n_tokens)
    return out


def test_packer_memory_does_not_grow_with_the_corpus(tmp_path):
    make_corpus(tmp_path / "small", n_train=100, n_val=2)
    _repeat(tmp_path / "small", tmp_path / "large", 200)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        m = pool.submit(_packer_peaks, tmp_path / "small", tmp_path / "large").result()
    for r in m.values():
        assert r["open"] <= 8 and r["mapped"] > 0                 # ids stay in the maps, at most 8 open
        # in RAM: one int64 per shard (the image index) and the offsets of the open shards, no more
        assert r["in_ram"] <= 8 * (r["shards"] + 1) + 8 * r["open"] * (100 + 1)
    tokens = m["large"]["tokens"]
    assert tokens == 200 * m["small"]["tokens"] > 1_000_000
    # what grows is the shard index, under 1 kB per shard; the old packer held 32 bytes per token
    assert m["large"]["peak"] - m["small"]["peak"] < min(1024 * 200, tokens // 4)
