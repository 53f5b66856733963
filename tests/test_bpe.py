"""BPE over JPEG-DCT tokens: lossless, shorter, saved and loaded, grammatical."""

import io

import numpy as np
import pytest
from PIL import Image

from tokenizer import JpegDctConfig, JpegDctTokenizer, TokenizerError, TokenSequence, load_tokenizer
from tokenizer.bpe.tokenizer import BpeTokenizer
from tokenizer.corpus.embedded import crops
from tokenizer.jpeg.io import read_coefficients


@pytest.fixture(scope="module")
def trained():
    base = JpegDctTokenizer(JpegDctConfig(quality=25, size=(32, 32)))
    train = [base.encode(c.pixels) for c in crops("train", 60, (32, 32), seed=11)]
    tok = BpeTokenizer.train(base, (s.ids for s in train), vocab_size=base.vocab_size + 300)
    val = [c.pixels for c in crops("val", 8, (32, 32), seed=11)]
    return base, tok, val


def test_lossless_and_shorter(trained):
    base, tok, val = trained
    assert tok.vocab_size == base.vocab_size + 300
    n_base = n_bpe = 0
    for px in val:
        seq = tok.encode(px)
        ref = base.encode(px)
        assert np.array_equal(tok.to_base(seq).ids, ref.ids)
        assert read_coefficients(tok.decode(seq)) == base.coefficients(px)
        assert seq.ids[0] == tok.bos_id and seq.ids[-1] == tok.eos_id
        # a merged token carries its first base token's position
        starts = np.concatenate([[0], np.cumsum([len(tok.expansion[i]) for i in seq.ids])[:-1]])
        assert np.array_equal(seq.positions, ref.positions[starts])
        n_base, n_bpe = n_base + len(ref), n_bpe + len(seq)
    assert n_bpe < 0.8 * n_base   # merges learned on photos shorten held-out photos' streams


def test_every_base_id_survives(trained):
    base, tok, _ = trained
    seq = TokenSequence(np.arange(base.vocab_size), np.zeros((base.vocab_size, 5)))
    assert np.array_equal(tok.to_base(tok.from_base(seq)).ids, seq.ids)


def test_save_load(trained, tmp_path):
    _, tok, val = trained
    tok.save(tmp_path)
    tok2 = load_tokenizer(tmp_path)
    assert isinstance(tok2, BpeTokenizer) and tok2.config == tok.config
    assert tok2.encode(val[0]) == tok.encode(val[0])


def test_grammar_accepts_encoded_and_walks_decode(trained):
    _, tok, val = trained
    seq = tok.encode(val[1])
    g = tok.grammar()
    for t, pos in zip(seq.ids, seq.positions):
        assert g.allowed()[t]
        assert np.array_equal(g.push(t), pos)
    assert g.done
    rng = np.random.default_rng(0)
    for _ in range(2):
        prompt = tok.header(16, 8)
        g = tok.grammar(prompt)
        ids = list(prompt.ids)
        while not g.done:
            t = int(rng.choice(np.flatnonzero(g.allowed())))
            g.push(t)
            ids.append(t)
        im = Image.open(io.BytesIO(tok.decode(TokenSequence(np.array(ids), np.zeros((len(ids), 5))))))
        assert im.size == (8, 16)
    with pytest.raises(TokenizerError):
        tok.grammar().push(tok.eos_id)


def test_vocab_must_exceed_base():
    base = JpegDctTokenizer()
    with pytest.raises(ValueError, match="vocab_size"):
        BpeTokenizer.train(base, [], vocab_size=base.vocab_size)
