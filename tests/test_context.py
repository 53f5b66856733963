"""Context features (tokenizer/jpeg/context.py) against a slow token-by-token oracle; the model with
context trains and round-trips its checkpoint; the packer's features equal the per-image ones."""


import numpy as np
import pytest

import train
from dctgpt import checkpoint
from dctgpt.config import TrainConfig
from dctgpt.data import Packer
from dctgpt.evaluate import sequence_nll, stream_bits
from dctgpt.measure import load_rgb, measure
from dctgpt.model import GPT, GPTConfig
from tokenizer import TokenSequence
from tokenizer.corpus.embedded import crops
from tokenizer.corpus.shards import Corpus, write_index, write_shard
from tokenizer.jpeg.context import N_BUCKETS, N_CONTEXT, context_buckets, context_values
from tokenizer.jpeg.format import EOB_FREQ
from tokenizer.jpeg.io import read_coefficients, sampling_factors
from tokenizer.jpeg.tokenizer import JpegDctConfig, JpegDctTokenizer


def oracle(tok: JpegDctTokenizer, seq: TokenSequence) -> np.ndarray:
    """Walk the stream one token at a time, rebuilding the blocks as they are decoded."""
    v, ids = tok.vocab, [int(i) for i in seq.ids]
    coef = read_coefficients(tok.decode(seq))      # only for the geometry: grids and subsampling
    grids = [b.shape[:2] for b in coef.blocks]
    hlen = 7 if v.quality <= ids[6] < v.quality + 100 else 7 + 64 * len(grids)
    # the raster block order: per MCU, each component's blocks row by row
    fac = sampling_factors(coef.subsampling)          # (h, v) per component
    hm, vm = max(f[0] for f in fac), max(f[1] for f in fac)
    order = []
    for my in range(-(-coef.height // (8 * vm))):
        for mx in range(-(-coef.width // (8 * hm))):
            for c, (h, vv) in enumerate(fac):
                for dy in range(vv):
                    for dx in range(h):
                        r, q = my * vv + dy, mx * h + dx
                        if r < grids[c][0] and q < grids[c][1]:
                            order.append((c, r, q))
    done = {}                                         # (c, r, q) -> 64 zigzag values, once decoded
    last_dc = [0, 0, 0]
    out = np.zeros((len(ids), N_CONTEXT), np.int64)
    b, cur, k, t = -1, None, 0, hlen
    while t < len(ids) - 1:                           # body tokens, then EOS
        s = ids[t]
        if v.dc <= s < v.ac:                          # DC: a new block
            b += 1
            cur = np.zeros(64, np.int64)
            d = s - v.dc
            if d <= 2 * v.dc_range:
                diff, t2 = d - v.dc_range, t
            else:
                mag = (ids[t + 1] - v.byte) * 256 + ids[t + 2] - v.byte + 1 + v.dc_range
                diff, t2 = (1 if d == 2 * v.dc_range + 1 else -1) * mag, t + 2
            c = order[b][0]
            cur[0] = last_dc[c] + diff
            last_dc[c] = cur[0]
            k = 1
        elif s == v.zrl:
            k, t2 = k + 16, t
        elif s == v.eob:
            done[order[b]] = cur
            t2 = t
        else:                                         # AC(run, value)
            run, slot = divmod(s - v.ac, v.ac_stride)
            a = v.ac_range
            t2 = t
            if slot < a:
                val = slot + 1
            elif slot < 2 * a:
                val = -(slot - a + 1)
            else:
                mag = (ids[t + 1] - v.byte) * 256 + ids[t + 2] - v.byte + 1 + a
                val = (1 if slot == 2 * a else -1) * mag
                t2 = t + 2
            k += run
            cur[k] = val
            k += 1
        for u in range(t, t2 + 1):                    # this token and its escape bytes
            out[u] = features(order, done, cur, b + (s == v.eob), 0 if s == v.eob else k, last_dc)
        t = t2 + 1
    out[hlen - 1] = features(order, done, None, 0, 0, [0, 0, 0])
    return out


def features(order, done, cur, b, k, last_dc) -> np.ndarray:
    f = np.zeros(N_CONTEXT, np.int64)
    if b >= len(order):
        return f
    c, r, q = order[b]
    above, left = done.get((c, r - 1, q)), done.get((c, r, q - 1))
    f[0] = min(k, EOB_FREQ)
    for j in range(4):
        if k + j < 64:
            f[1 + j] = 0 if above is None else above[k + j]
            f[5 + j] = 0 if left is None else left[k + j]
    f[9] = 0 if k == 0 else int(np.count_nonzero(cur[1:k]))
    f[10] = 0 if above is None else int(np.count_nonzero(above[1:]))
    f[11] = 0 if left is None else int(np.count_nonzero(left[1:]))
    if k == 0:
        dcs = [n[0] for n in (above, left) if n is not None]
        f[12] = (sum(dcs) // len(dcs) if dcs else last_dc[c]) - last_dc[c]
    f[13] = c + 1
    return f


@pytest.mark.parametrize("size,sub,quality", [((64, 64), "4:2:0", 25), ((48, 80), "4:4:4", 90),
                                              ((40, 56), "gray", 50), ((32, 48), "4:2:2", 75),
                                              ((40, 40), "4:4:0", 25)])
def test_context_equals_loop_oracle_on_photo_crops(size, sub, quality):
    tok = JpegDctTokenizer(JpegDctConfig(size=size, subsampling=sub, quality=quality))
    for crop in crops("val", 2, size):
        seq = tok.encode(crop.pixels)
        np.testing.assert_array_equal(context_values(tok.vocab, seq), oracle(tok, seq))


def test_context_with_escapes_and_custom_tables_equals_oracle():
    tok = JpegDctTokenizer(JpegDctConfig(size=(32, 32), quality=100, dc_range=4, ac_range=2))
    seq = tok.encode(next(crops("train", 1, (32, 32))).pixels)
    body = seq.ids[7:]
    assert ((body >= tok.vocab.byte) & (body < tok.vocab.byte + 256)).any()   # escapes present
    np.testing.assert_array_equal(context_values(tok.vocab, seq), oracle(tok, seq))


def test_context_rejects_coarse_to_fine():
    tok = JpegDctTokenizer(JpegDctConfig(size=(32, 32), order="coarse_to_fine"))
    assert tok.n_context == 0
    seq = tok.encode(next(crops("val", 1, (32, 32))).pixels)
    with pytest.raises(ValueError, match="order='raster'"):
        context_values(tok.vocab, seq, "coarse_to_fine", tok.config.bands)


def test_context_buckets_are_in_range_and_keep_small_values():
    v = np.zeros((5, N_CONTEXT), np.int64)
    v[:, 1] = [-40000, -3, 0, 3, 40000]
    v[:, 0] = [0, 1, 63, 64, 99]
    b = context_buckets(v)
    assert b[:, 1].tolist() == [0, 13, 16, 19, 32] and b[:, 0].tolist() == [0, 1, 63, 64, 64]
    assert b.min() >= 0 and b.max() < JpegDctTokenizer().context_buckets


@pytest.fixture(scope="module")
def photo_corpus(tmp_path_factory):
    """A Corpus directory of real photo crops (32x32, q50) with a raster jpeg_dct tokenizer."""
    d = tmp_path_factory.mktemp("photos")
    tok = JpegDctTokenizer(JpegDctConfig(size=(32, 32), quality=50))
    shards = {}
    for split, n in (("train", 12), ("val", 3)):
        (d / split).mkdir()
        seqs = [tok.encode(c.pixels) for c in crops(split, n, (32, 32))]
        shards[split] = [write_shard(d / split / "shard-00000.safetensors", seqs, tok.vocab_size)]
    tok.save(d / "tokenizer")
    write_index(d, tok, shards)
    return d


def test_packed_row_context_equals_per_image_context(photo_corpus):
    corpus = Corpus(photo_corpus)
    tok, split = corpus.tokenizer(), corpus.split("train")
    b = Packer(split, 400, tok.pad_id, context=tok.context).batch(6, [0, 1])
    assert b.context.shape == (6, 400, N_CONTEXT)
    seen = 0
    for r in range(6):
        doc, ctx = b.doc[r].numpy(), b.context[r].numpy()
        for d in set(doc[doc >= 0].tolist()):
            whole = tok.context(split[d])
            at = np.nonzero(doc == d)[0]
            # the image's slice in the row starts at its first slot; find its offset by the ids
            ids = split[d].ids
            offs = [o for o in range(len(ids) - len(at) + 1)
                    if np.array_equal(ids[o:o + len(at)], b.idx[r, at].numpy())]
            assert any(np.array_equal(whole[o:o + len(at)], ctx[at]) for o in offs)
            seen += 1
    assert seen > 6      # rows hold several images, some cut


def test_model_with_context_trains_saves_and_loads(photo_corpus, tmp_path):
    model = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=128, context=True)
    result = train.main(TrainConfig(data_dir=str(photo_corpus), out_dir=str(tmp_path), batch_size=4,
                                    max_iters=8, eval_interval=8, eval_iters=1, warmup_iters=1,
                                    learning_rate=3e-3, num_threads=1, model=model))
    assert result.train_loss[7] < result.train_loss[0] - 0.5
    ck = checkpoint.load(tmp_path)
    assert (ck.model.config.n_context, ck.model.config.context_buckets) == (N_CONTEXT, N_BUCKETS)
    seq = Corpus(photo_corpus).split("val")[0]
    nll = sequence_nll(ck.model, seq, context=ck.tokenizer.context(seq))
    assert nll.mean() < np.log(ck.model.config.vocab_size)
    assert np.isclose(nll.mean(), result.val_loss[8], rtol=0.5)
    with pytest.raises(ValueError, match="n_context=14 needs context"):
        sequence_nll(ck.model, seq)
    # the features matter to the trained model
    zeros = np.zeros((len(seq), N_CONTEXT), np.int64)
    assert not np.allclose(nll, sequence_nll(ck.model, seq, context=zeros))
    # the code length every report takes (evaluate, the compression benchmark, compare's model bits)
    assert np.isclose(stream_bits(ck.model, ck.tokenizer, seq), nll.sum() / np.log(2))
    path = tmp_path / "val.jpg"
    path.write_bytes(ck.tokenizer.decode(seq))
    row, _ = measure("jpeg", ck.tokenizer, [path], [load_rgb(path)], model=ck.model)
    assert np.isclose(row.model_bits, nll.sum() / np.log(2))


def test_model_without_context_keeps_its_parameters():
    cfg = GPTConfig(vocab_size=64, n_layer=1, n_head=2, n_embd=16)
    assert not any("wxe" in k for k in GPT(cfg).state_dict())
    assert GPTConfig.from_dict({k: v for k, v in cfg.to_dict().items()
                                if k not in ("n_context", "context_buckets")}) == cfg
    with pytest.raises(ValueError, match="context_buckets"):
        GPTConfig(n_context=3)
