"""Decoder (the one-token step sampling runs) against GPT.forward, and generate with tokens taken back."""

import numpy as np
import pytest
import torch

from dctgpt.decoder import Decoder
from dctgpt.generate import MaskTable, SamplingConfig, _Streams, draw, generate
from dctgpt.model import GPT, GPTConfig, KVCache
from tokenizer import JpegDctConfig, JpegDctTokenizer, TokenSequence
from tokenizer.jpeg.grammar import HIGH, LOW, block_pixels, dc_bounds
from tokenizer.jpeg.io import read_coefficients

V = 300


def tiny(**kw) -> GPT:
    cfg = dict(vocab_size=V, block_size=16, n_layer=2, n_head=2, n_embd=32)
    cfg.update(kw)
    torch.manual_seed(0)
    model = GPT(GPTConfig(**cfg)).eval()
    with torch.no_grad():  # biases and norms away from their init, so a dropped one shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or "ln" in name:
                p.add_(torch.randn_like(p) * 0.3)
    return model


def random_stream(B: int, T: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, T), generator=g)
    pos = torch.stack([torch.zeros(B, T, dtype=torch.long), torch.randint(0, 4, (B, T), generator=g),
                       torch.randint(0, 9, (B, T), generator=g), torch.randint(0, 9, (B, T), generator=g),
                       torch.randint(0, 65, (B, T), generator=g)], -1)
    return ids, pos


@torch.no_grad()
def with_kv_cache(model: GPT, ids: torch.Tensor, pos: torch.Tensor, prompt: int) -> torch.Tensor:
    """Logits after each token from `prompt - 1` on: the first window at once, then one at a time."""
    cache = KVCache(model.config, ids.size(0))
    first = min(prompt, model.config.block_size)
    out = [model(ids[:, :first], pos[:, :first], cache=cache)[0][:, -1]]
    for t in range(first, ids.size(1)):
        out.append(model(ids[:, t:t + 1], pos[:, t:t + 1], cache=cache)[0][:, -1])
    return torch.stack(out[prompt - first:], 1)


@pytest.mark.parametrize("kw", [dict(), dict(pos_emb="learned", max_block_row=9, max_block_col=9),
                                dict(bias=True), dict(n_layer=1, n_head=4)])
@pytest.mark.parametrize("prompt", [5, 40])  # a prompt within the window, and one beyond it
def test_decoder_logits_equal_the_model_with_a_kv_cache(kw, prompt):
    model = tiny(**kw)
    ids, pos = random_stream(3, 70, seed=1)   # past the 16-token window: the ring wraps
    ref = with_kv_cache(model, ids, pos, prompt)
    dec = Decoder(model, 3)
    got = [dec.prefill(ids[:, :prompt], pos[:, :prompt])]
    for t in range(prompt, ids.size(1)):
        got.append(dec.step(ids[:, t].numpy(), pos[:, t].numpy()))
    assert (torch.stack(got, 1) - ref).abs().max() < 1e-5


@pytest.mark.parametrize("window", [64, 8])  # all tokens in the window; and a ring that wraps
def test_forget_and_feed_again_equals_never_having_seen_them(window):
    """Stream 0 drops tokens 6..9 and feeds token 5 again (what generate does when a grammar takes
    a block back): its logits equal a model that sees only the tokens still in the ring and not
    dropped (one layer, where a sliding window is exact); stream 1 is untouched."""
    model = tiny(block_size=window, n_layer=1)
    ids, pos = random_stream(2, 30, seed=2)
    dec = Decoder(model, 2)
    dec.prefill(ids[:, :3], pos[:, :3])      # ring indices 0..2 = tokens 0..2
    for t in range(3, 10):
        dec.step(ids[:, t].numpy(), pos[:, t].numpy())
    for index in range(5, 10):               # token 5's first copy and tokens 6..9
        dec.forget(0, index)
    ring = [*range(10), 5, *range(11, 30)]   # stream 0: the token at each ring index
    got = []
    for d in range(10, 30):                  # stream 1 goes on with its own tokens 10..29
        feed = torch.tensor([ring[d], d])
        got.append(dec.step(ids[[0, 1], feed].numpy(), pos[[0, 1], feed].numpy()))
    got = torch.stack(got)                   # (20, 2, V)
    ref0 = []
    for d in range(10, 30):
        seen = [i for i in range(max(0, d + 1 - window), d + 1) if not 5 <= i <= 9]
        ref0.append(model(ids[:1, [ring[i] for i in seen]], pos[:1, [ring[i] for i in seen]])[0][0, -1])
    assert (got[:, 0] - torch.stack(ref0)).abs().max() < 1e-5
    ref1 = with_kv_cache(model, ids[1:], pos[1:], 10)[0, 1:]
    assert (got[:, 1] - ref1).abs().max() < 1e-5


def test_keep_goes_on_with_the_rows_kept_in_their_new_order():
    model = tiny(block_size=64)
    ids, pos = random_stream(3, 20, seed=3)
    ref = with_kv_cache(model, ids, pos, 4)                 # (3, 17, V): after tokens 3..19
    dec = Decoder(model, 3)
    dec.prefill(ids[:, :4], pos[:, :4])
    for t in range(4, 10):
        dec.step(ids[:, t].numpy(), pos[:, t].numpy())
    dec.keep([2, 0])                                        # stream 1 ended; 2 and 0 go on, swapped
    got = torch.stack([dec.step(ids[[2, 0], t].numpy(), pos[[2, 0], t].numpy()) for t in range(10, 20)], 1)
    assert (got - ref[[2, 0], 7:]).abs().max() < 1e-5


def test_generate_takes_back_rejected_blocks_exactly():
    """An untrained model samples noise, whose blocks the bounded grammar keeps rejecting: the
    cached sampler (tokens dropped from the ring) gives the same streams as recomputing each
    stream's kept tokens, and every block of every sample is in range."""
    tok = JpegDctTokenizer(JpegDctConfig(quality=50, size=(8, 16), subsampling="gray"))
    torch.manual_seed(0)  # a window that holds every step, where the cache is exact
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=4096, n_layer=2, n_head=2, n_embd=32)).eval()
    prompt = tok.header(8, 16)
    stats: dict = {}
    fast = generate(model, tok, prompt, 3, SamplingConfig(seed=4), stats=stats)
    slow = generate(model, tok, prompt, 3, SamplingConfig(seed=4, use_cache=False))
    assert stats["rewinds"] > 10
    assert all(a == b for a, b in zip(fast, slow))
    for seq in fast:
        coef = read_coefficients(tok.decode(seq))
        for blocks, table in zip(coef.blocks, coef.qtables):
            px = block_pixels(blocks.reshape(-1, 64), table)
            lo, hi = dc_bounds(int(table[0]))
            assert LOW <= px.min() and px.max() <= HIGH
            assert lo <= blocks[..., 0].min() and blocks[..., 0].max() <= hi


def test_generate_unbounded_leaves_the_range():
    """The same noise without bounds leaves the 8-bit range (what the bounded grammar prevents)."""
    tok = JpegDctTokenizer(JpegDctConfig(quality=50, size=(16, 16)))
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=32)).eval()
    [seq] = generate(model, tok, tok.header(16, 24), 1, SamplingConfig(seed=4, bounded=False))
    coef = read_coefficients(tok.decode(seq))
    worst = max(np.abs(block_pixels(b.reshape(-1, 64), t) - 128).max()
                for b, t in zip(coef.blocks, coef.qtables))
    assert worst > HIGH - 128


def test_draw_follows_the_probabilities_and_never_picks_a_zero():
    probs = torch.tensor([[0.0, 0.2, 0.0, 0.5, 0.3, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]])
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([draw(probs, g) for _ in range(20000)])          # (20000, 2)
    assert torch.bincount(draws[:, 0], minlength=6)[[0, 2, 5]].tolist() == [0, 0, 0]
    share = torch.bincount(draws[:, 0], minlength=6).float() / len(draws)
    assert (share[[1, 3, 4]] - torch.tensor([0.2, 0.5, 0.3])).abs().max() < 0.01
    assert draws[:, 1].tolist() == [5] * len(draws)                     # the last entry alone


def test_mask_table_reuses_read_only_masks_only():
    table = MaskTable("cpu")
    fixed = np.zeros(6, bool)
    fixed[2] = True
    fixed.flags.writeable = False
    moving = np.zeros(6, bool)
    moving[1] = True
    assert table([fixed, moving]).tolist() == [[False, False, True, False, False, False],
                                               [False, True, False, False, False, False]]
    moving[1], moving[4] = False, True                                   # a mask that changes in place
    got = table([fixed, moving])
    assert got.tolist()[1] == [False, False, False, False, True, False]
    assert list(table.seen) == [id(fixed)]


def test_take_back_drops_the_block_and_the_old_copy_of_the_token_fed_again():
    """What generate tells the Decoder to forget (ring indices), and what each stream feeds next."""
    prompt = TokenSequence(np.array([1, 2, 3]), np.zeros((3, 5), np.int64))
    s = _Streams(prompt, 2, pad_id=0, max_new_tokens=0)
    s.first = 2                                   # the prompt filled ring slots 0..2
    for step in range(5):                          # stream 0 keeps tokens 10..14 at ring 3..7
        s.keep(0, 10 + step, np.full(5, step))
        s.step += 1
    assert s.take_back(0, 3) == [5, 6, 7, 4]       # tokens 12..14, and token 11's first copy
    assert s.ids[0, 5] == 11 and s.pos[0, 5].tolist() == [1] * 5 and s.kept[0] == [0, 5]
    s.step += 1
    assert s.take_back(0, 1) == [8, 3]             # token 11 again, and token 10's first copy
    assert s.ids[0, 6] == 10 and s.kept[0] == [6]
    s.step += 1
    assert s.take_back(0, 1) == [9, 2]             # token 10 again, then the prompt's last token
    assert s.ids[0, 7] == 3 and s.kept[0] == []
    s.step += 1
    assert s.take_back(0, 0) == [10]               # the prompt's last token, fed at step 7
    assert s.sequence(0) == prompt and s.sequence(1) == prompt
