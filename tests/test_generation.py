"""Sampling: temperature and top-p reshape the distribution they promise; streams cut by
max_new_tokens come back unfinished, the others finished, from the same draws."""

import numpy as np
import pytest
import torch

from dctgpt.generate import SamplingConfig, generate, sample_next
from dctgpt.model import GPT, GPTConfig
from tokenizer import JpegDctConfig, JpegDctTokenizer, TokenizerError

N = 20_000   # draws per distribution: a frequency is within 0.012 of its probability (> 3 sigma)


def frequencies(logits: list[float], cfg: SamplingConfig, allowed: list[bool] | None = None) -> np.ndarray:
    """How often each id is drawn from N rows of the same logits."""
    lg = torch.tensor(logits).repeat(N, 1)
    ok = torch.tensor(allowed or [True] * len(logits)).repeat(N, 1)
    ids = sample_next(lg, ok, cfg, torch.Generator().manual_seed(0))
    return np.bincount(ids.numpy(), minlength=len(logits)) / N


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_temperature_divides_the_logits(temperature):
    logits = [2.0, 1.0, 0.0, -1.0]
    expected = np.exp(np.array(logits) / temperature)
    expected /= expected.sum()
    assert np.abs(frequencies(logits, SamplingConfig(temperature=temperature)) - expected).max() < 0.012


@pytest.mark.parametrize("top_p, kept", [(0.5, [0]), (0.7, [0, 1]), (0.85, [0, 1, 2]), (1.0, [0, 1, 2, 3])])
def test_top_p_keeps_the_smallest_head_reaching_p(top_p, kept):
    """Probabilities 0.5, 0.3, 0.15, 0.05: the most likely ids whose mass first reaches top_p,
    renormalized; everything after them is never drawn."""
    p = np.array([0.5, 0.3, 0.15, 0.05])
    freq = frequencies(np.log(p).tolist(), SamplingConfig(top_p=top_p))
    expected = np.zeros(4)
    expected[kept] = p[kept] / p[kept].sum()
    assert np.flatnonzero(freq).tolist() == kept
    assert np.abs(freq - expected).max() < 0.012


def test_top_p_and_temperature_apply_to_the_allowed_ids_only():
    """The grammar's mask comes first: top-p measures mass among the allowed ids."""
    p = np.array([0.5, 0.3, 0.15, 0.05])            # id 0 not allowed: 0.6, 0.3, 0.1 of the rest
    freq = frequencies(np.log(p).tolist(), SamplingConfig(top_p=0.7), [False, True, True, True])
    assert np.abs(freq - [0, 2 / 3, 1 / 3, 0]).max() < 0.012
    greedy = frequencies([5.0, 1.0, 3.0, 0.0], SamplingConfig(temperature=0), [False, True, True, True])
    assert greedy.tolist() == [0, 0, 1, 0]


@pytest.fixture(scope="module")
def model_and_tokenizer():
    tok = JpegDctTokenizer(JpegDctConfig(quality=50, size=(16, 16)))
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=32))
    return model, tok


def test_streams_cut_by_max_new_tokens_are_unfinished_and_the_rest_finished(model_and_tokenizer):
    model, tok = model_and_tokenizer
    prompt = tok.header(16, 16)
    # unbounded: no block is drawn again, so every step keeps a token (a random model's blocks leave
    # the 8-bit range and a bounded grammar takes them back, which makes steps and tokens differ)
    full = generate(model, tok, prompt, 4, SamplingConfig(seed=3, bounded=False))
    new = sorted(len(s) - len(prompt) for s in full)
    assert new[0] < new[-1]                              # streams of different lengths
    for s in full:                                       # finished: EOS last, no padding kept
        assert s.ids[-1] == tok.eos_id and tok.pad_id not in s.ids and tok.grammar(s).done
        tok.decode(s)
    cap = (new[0] + new[-1]) // 2
    cut = generate(model, tok, prompt, 4, SamplingConfig(seed=3, max_new_tokens=cap, bounded=False))
    for a, b in zip(full, cut):                          # the same draws, stopped at the cap
        if len(a) - len(prompt) <= cap:
            assert b == a
        else:
            assert len(b) == len(prompt) + cap and b == a[:len(b)]
            g = tok.grammar(b)
            assert not g.done and g.allowed().any()      # open: it could go on
            with pytest.raises(TokenizerError):
                tok.decode(b)
    assert sum(len(a) != len(b) for a, b in zip(full, cut)) >= 1
