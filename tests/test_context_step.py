"""Context features one token at a time (ContextCursor) against whole streams, and the models that
take them: the Decoder step, generate (cache and recompute, with blocks taken back) and the codec."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import sample
from dctgpt import checkpoint, codec, evaluate
from dctgpt import generate as generate_module
from dctgpt.decoder import Decoder
from dctgpt.generate import SamplingConfig, generate
from dctgpt.model import GPT, GPTConfig, KVCache
from tokenizer import JpegDctConfig, JpegDctTokenizer, TokenSequence
from tokenizer.corpus.embedded import crops, export
from tokenizer.jpeg.context import ContextCursor, context_values
from tokenizer.jpeg.io import Coefficients, block_grid, read_coefficients, standard_qtables

PHOTO_CASES = [((64, 64), "4:2:0", 25), ((48, 80), "4:4:4", 90), ((40, 56), "gray", 50),
               ((32, 48), "4:2:2", 75), ((24, 40), "4:4:0", 25)]


def tok_for(size=(32, 32), sub="4:2:0", quality=25, **kw) -> JpegDctTokenizer:
    return JpegDctTokenizer(JpegDctConfig(size=size, subsampling=sub, quality=quality, **kw))


def cursor_rows(tok: JpegDctTokenizer, seq: TokenSequence) -> np.ndarray:
    cur = tok.context_cursor()
    return np.stack([cur.push(int(t), p) for t, p in zip(seq.ids, seq.positions)])


def other_ending(tok: JpegDctTokenizer, seq: TokenSequence, t: int) -> TokenSequence:
    """seq's first t + 1 tokens, then another valid ending: each block closed as soon as the
    grammar allows, DC differences 0 (or the least allowed id)."""
    g = tok.grammar(seq[:t + 1])
    ids, rows = [], []
    flat = tok.vocab.dc + tok.vocab.dc_range
    while not g.done:
        allowed = g.allowed()
        token = next(i for i in (tok.vocab.eob, flat, tok.vocab.eos) if allowed[i]) \
            if allowed[[tok.vocab.eob, flat, tok.vocab.eos]].any() else int(np.flatnonzero(allowed)[0])
        rows.append(g.push(token))
        ids.append(token)
    return TokenSequence.concat([seq[:t + 1], TokenSequence(np.array(ids), np.array(rows).reshape(-1, 5))])


@pytest.mark.parametrize("size,sub,quality", PHOTO_CASES[:3])
def test_row_t_depends_on_tokens_up_to_t_only(size, sub, quality):
    """The claim the cursor rests on, on whole streams: cut a photo's stream after token t, end it
    otherwise, and rows 0..t of context_values stay the same (row t describes token t + 1)."""
    tok = tok_for(size, sub, quality)
    seq = tok.encode(next(crops("val", 1, size)).pixels)
    whole = context_values(tok.vocab, seq)
    for t in np.linspace(6, len(seq) - 40, 25).astype(int):
        other = other_ending(tok, seq, int(t))
        assert not np.array_equal(other.ids, seq.ids)
        np.testing.assert_array_equal(context_values(tok.vocab, other)[:t + 1], whole[:t + 1])


@pytest.mark.parametrize("size,sub,quality", PHOTO_CASES)
def test_cursor_rows_equal_whole_stream_context_on_photo_crops(size, sub, quality):
    tok = tok_for(size, sub, quality)
    for crop in crops("val", 2, size):
        seq = tok.encode(crop.pixels)
        np.testing.assert_array_equal(cursor_rows(tok, seq), tok.context(seq))


@st.composite
def extreme_coefficients(draw):
    """Small images of extreme coefficients (escapes in DC and AC, long zero runs), standard or
    custom quantization tables (a QT_CUSTOM header)."""
    sub = draw(st.sampled_from(["4:2:0", "4:4:4", "gray", "4:2:2"]))
    h, w = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    values = st.one_of(st.sampled_from([-1023, 1023, -40, 40, -3, 3, -1, 1]), st.integers(-1023, 1023),
                       *[st.just(0)] * 6)
    blocks = [draw(arrays(np.int16, (r, c, 64), elements=values)) for r, c in block_grid(h, w, sub)]
    for b in blocks:
        b[..., 0] = draw(arrays(np.int16, b.shape[:2], elements=st.integers(-1024, 1023)))
    n = len(blocks)
    qt = standard_qtables(50, n).copy() if draw(st.booleans()) else \
        draw(arrays(np.uint16, (n, 64), elements=st.integers(1, 255)))
    return Coefficients(h, w, sub, tuple(blocks), qt)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(coef=extreme_coefficients())
def test_cursor_rows_equal_whole_stream_context_with_escapes(coef):
    tok = tok_for(None, coef.subsampling, None, dc_range=4, ac_range=2)
    seq = tok.encode_coefficients(coef)
    np.testing.assert_array_equal(cursor_rows(tok, seq), tok.context(seq))


def test_take_back_and_copy_give_the_rows_of_the_stream_kept():
    """Push another ending for a while (several blocks), take it back, go on with the photo's
    stream: the rows are the photo's; a copy made on the way goes on on its own."""
    tok = tok_for((48, 48), "4:2:0", 50)
    seq = tok.encode(next(crops("val", 1, (48, 48))).pixels)
    whole = tok.context(seq)
    cur = tok.context_cursor(seq[:3])                          # inside the header
    rows = [cur.row]
    for t in range(3, len(seq)):
        if t % 97 == 0:                                       # wander off for 1..40 tokens
            other = other_ending(tok, seq, t - 1)
            n = min(1 + t % 40, len(other) - t)
            snapshot = cur.copy()
            for u in range(t, t + n):
                cur.push(int(other.ids[u]), other.positions[u])
            cur.take_back(n)
            assert np.array_equal(cur.row, whole[t - 1]) and np.array_equal(snapshot.row, whole[t - 1])
            snapshot.push(int(other.ids[t]), other.positions[t])      # the copy is independent
        rows.append(cur.push(int(seq.ids[t]), seq.positions[t]))
    np.testing.assert_array_equal(np.stack(rows), whole[2:])
    # right before block 0's EOB: one more AC and the EOB (block 1's rows read it), both taken back
    t = int(np.flatnonzero(seq.ids == tok.vocab.eob)[0])
    cur.take_back(len(seq) - t)
    g = tok.grammar(seq[:t])
    for token in (tok.vocab.ac, tok.vocab.eob, seq.ids[t + 1]):    # AC(0, +1), EOB, block 1's DC
        cur.push(int(token), g.push(int(token)))
    cur.take_back(3)
    other = cur.copy()                                         # a copy ends block 0 otherwise,
    cur.push(int(seq.ids[t]), seq.positions[t])               # after cur ended it: cur keeps its own
    g = tok.grammar(seq[:t])
    for token in (tok.vocab.ac, tok.vocab.eob):
        other.push(int(token), g.push(int(token)))
    for u in range(t + 1, len(seq)):
        cur.push(int(seq.ids[u]), seq.positions[u])
    np.testing.assert_array_equal(np.stack(cur.rows), whole)
    cur.take_back(len(seq) - 2)                                # back into the header, and on again
    for t in range(2, len(seq)):
        cur.push(int(seq.ids[t]), seq.positions[t])
    np.testing.assert_array_equal(np.stack(cur.rows), whole)


def context_model(tok: JpegDctTokenizer, block_size: int = 4096, seed: int = 0) -> GPT:
    """A tiny random model with context features; its context table away from zero-mean noise so
    that a wrong row shows in the logits."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=2, n_head=2,
                          n_embd=32, context=True, n_context=tok.n_context,
                          context_buckets=tok.context_buckets)).eval()
    with torch.no_grad():
        model.transformer.wxe.weight.normal_(0, 0.5)
    return model


def test_decoder_with_context_equals_the_model_with_a_kv_cache():
    tok = tok_for((32, 32))
    model = context_model(tok, block_size=40)
    seqs = [tok.encode(c.pixels) for c in crops("val", 2, (32, 32))]
    T = min(len(s) for s in seqs)
    ids = torch.from_numpy(np.stack([s.ids[:T] for s in seqs]).astype(np.int64))
    pos = torch.from_numpy(np.stack([s.positions[:T] for s in seqs]).astype(np.int64))
    ctx = torch.from_numpy(np.stack([tok.context(s)[:T] for s in seqs]).astype(np.int64))
    with torch.no_grad():
        cache = KVCache(model.config, 2)
        ref = [model(ids[:, :10], pos[:, :10], cache=cache, context=ctx[:, :10])[0][:, -1]]
        ref += [model(ids[:, t:t + 1], pos[:, t:t + 1], cache=cache, context=ctx[:, t:t + 1])[0][:, -1]
                for t in range(10, T)]
    dec = Decoder(model, 2)
    got = [dec.prefill(ids[:, :10], pos[:, :10], ctx[:, :10])]
    got += [dec.step(ids[:, t].numpy(), pos[:, t].numpy(), ctx[:, t].numpy()) for t in range(10, T)]
    assert (torch.stack(got) - torch.stack(ref)).abs().max() < 1e-5
    with pytest.raises(ValueError, match="n_context=14 needs context"):
        dec.step(ids[:, 0].numpy(), pos[:, 0].numpy())


def test_generate_with_context_logits_equal_a_full_forward_over_the_finished_stream(monkeypatch):
    """Every step's logits (recorded where they are sampled) after a photo's first half equal one
    forward pass over the finished stream with tok.context of it; with and without the cache the
    draws agree."""
    tok = tok_for((16, 24), "4:2:0", 50)
    model = context_model(tok)
    seen = []
    sample_next = generate_module.sample_next

    def record(logits, allowed, cfg, gen):
        seen.append(logits.clone())
        return sample_next(logits, allowed, cfg, gen)

    monkeypatch.setattr(generate_module, "sample_next", record)
    photo = tok.encode(next(crops("val", 1, (16, 24))).pixels)
    prompt = photo[:len(photo) // 2]                         # the header and a few blocks of a photo
    cfg = SamplingConfig(seed=3, bounded=False)
    fast = generate(model, tok, prompt, 2, cfg)
    steps = len(seen)
    slow = generate(model, tok, prompt, 2, SamplingConfig(seed=3, bounded=False, use_cache=False))
    assert all(a == b for a, b in zip(fast, slow))
    for b, seq in enumerate(fast):
        read_coefficients(tok.decode(seq))                   # a valid JPEG
        with torch.no_grad():
            full = model(torch.from_numpy(seq.ids[None].astype(np.int64)),
                         torch.from_numpy(seq.positions[None].astype(np.int64)),
                         context=torch.from_numpy(tok.context(seq)[None].astype(np.int64)))[0][0]
        n = len(seq) - len(prompt)                           # steps stream b sampled (rows: live order)
        mine = torch.stack([seen[i][b if len(seen[i]) == 2 else 0] for i in range(n)])
        assert (mine - full[len(prompt) - 1:-1]).abs().max() < 1e-5
    assert fast[0] != fast[1] and len(seen) > steps


def test_generate_with_context_takes_back_blocks_with_the_right_rows(monkeypatch):
    """A bounded grammar keeps rejecting this noise: every recompute sees the rows a fresh cursor
    gives its stream, the cache draws the same, and the cursors end at the finished streams' rows."""
    tok = tok_for((8, 16), "gray", 50)
    model = context_model(tok)
    recompute = generate_module._recompute

    def check(model, seqs, contexts):
        for s, c in zip(seqs, contexts):
            assert np.array_equal(np.stack(tok.context_cursor(s).rows), c)
        return recompute(model, seqs, contexts)

    monkeypatch.setattr(generate_module, "_recompute", check)
    stats: dict = {}
    prompt = tok.header(8, 16)
    fast = generate(model, tok, prompt, 3, SamplingConfig(seed=4), stats=stats)
    slow = generate(model, tok, prompt, 3, SamplingConfig(seed=4, use_cache=False))
    assert stats["rewinds"] > 10
    assert all(a == b for a, b in zip(fast, slow))
    for seq in fast:
        read_coefficients(tok.decode(seq))


def test_generate_refuses_a_tokenizer_without_the_models_features():
    tok = tok_for((16, 16))
    model = context_model(tok)
    other = tok_for((16, 16), order="coarse_to_fine")
    with pytest.raises(ValueError, match="14 context features"):
        generate(model, other, other.header(16, 16), 1, SamplingConfig())


@pytest.fixture(scope="module")
def ctx_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("ctxrun")
    tok = tok_for((32, 32))
    checkpoint.save(out, context_model(tok, block_size=64), None, tok, {"iter_num": 0})
    return out


def test_codec_with_context_round_trips_and_codes_evaluates_nll(ctx_ckpt, tmp_path):
    """Byte for byte back; per token the coder's NLL is evaluate's (windows past block_size 64)
    and the payload is within 1% of evaluate's bits (or under them: the grammar's mask helps)."""
    pred, tok = codec.load_predictor(ctx_ckpt)
    (path,) = export(tmp_path, "val", 1, (40, 48), quality=25)
    data = path.read_bytes()
    packed = codec.compress(data, pred, tok, str(path))
    assert packed.coded, packed.reason
    assert codec.decompress(packed.data, pred, tok) == data
    seq = tok.encode(data)
    assert len(seq) > 3 * pred.window
    with codec._one_thread():
        logits = [pred.start(seq.ids[:7], seq.positions[:7])]
        logits += [pred.step(int(t), r) for t, r in zip(seq.ids[7:-1], seq.positions[7:-1])]
    nll = torch.nn.functional.cross_entropy(torch.tensor(np.stack(logits)),
                                            torch.as_tensor(seq.ids[7:], dtype=torch.long),
                                            reduction="none").numpy()
    ref = evaluate.sequence_nll(pred.model, seq, context=tok.context(seq))
    assert np.abs(nll - ref[6:]).max() < 1e-4
    assert 8 * packed.payload < 1.01 * ref.sum() / np.log(2)


def test_sample_py_completes_a_photo_with_a_context_model(ctx_ckpt, tmp_path):
    (photo,) = export(tmp_path, "val", 1, (32, 32), quality=25)
    paths = sample.main(sample.SampleConfig(out_dir=str(ctx_ckpt), samples_dir=str(tmp_path / "s"),
                                            num_samples=2, prefix_image=str(photo), prefix_rows=2))
    for p in paths:
        assert read_coefficients(p.read_bytes()).blocks[0].shape[:2] == (4, 4)


def test_evaluate_as_is_with_a_context_model(ctx_ckpt, tmp_path):
    d = tmp_path / "jpegs"
    d.mkdir()
    (path,) = export(d, "val", 1, (40, 56), quality=25)
    report = evaluate.main(str(ctx_ckpt), str(d), progress=False, as_is_files=True)
    ck = checkpoint.load(ctx_ckpt)
    tok = evaluate.as_is(ck.tokenizer)
    seq = tok.encode(path)
    bits = evaluate.sequence_nll(ck.model, seq, context=tok.context(seq)).sum() / np.log(2)
    assert report["images"][0]["bits"] == pytest.approx(bits, rel=1e-9)
    assert (report["images"][0]["height"], report["images"][0]["width"]) == (40, 56)


def test_cursor_rejects_coarse_to_fine():
    with pytest.raises(ValueError, match="order='raster'"):
        ContextCursor(tok_for().vocab, "coarse_to_fine")
