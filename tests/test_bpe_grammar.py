"""The BPE grammar's compiled check (tokenizer.jpeg.accepts) against its reference, the trie walk
with the base grammar: the same allowed mask at every step of random walks that reach escapes, the
DC bounds, SKIP runs and the end of the stream."""

import numpy as np
import pytest

from tokenizer import JpegDctConfig, JpegDctTokenizer
from tokenizer.bpe.tokenizer import BpeTokenizer
from tokenizer.corpus.embedded import crops
from tokenizer.jpeg import compiled
from tokenizer.jpeg.accepts import accepts

pytestmark = pytest.mark.skipif(not compiled.enabled, reason="compiled path not built (or DCTGPT_COMPILED=0)")


@pytest.fixture(scope="module", params=[("raster", "4:2:0"), ("coarse_to_fine", "4:4:4"),
                                        ("coarse_to_fine", "gray")])
def bpe(request):
    """Small direct ranges and max_skip, so escapes, bytes and SKIP runs are common inside pieces."""
    order, sub = request.param
    base = JpegDctTokenizer(JpegDctConfig(quality=60, size=(24, 24), order=order, subsampling=sub,
                                          dc_range=6, ac_range=3, max_skip=4))
    streams = [base.encode(c.pixels).ids for c in crops("train", 40, (24, 24), seed=3)]
    return BpeTokenizer.train(base, streams, vocab_size=base.vocab_size + 400)


def pick(rng: np.random.Generator, tok: BpeTokenizer, allowed: np.ndarray) -> int:
    """A random allowed piece; often one ending in a DC escape down, and inside an escape the one with
    the largest bytes, so the walk jumps to the lower DC bound and runs along it."""
    ids = np.flatnonzero(allowed)
    v = tok.base.vocab
    with_bytes = [i for i in ids if v.byte <= tok.expansion[i][0] < v.dc]
    if with_bytes:
        return int(max(with_bytes, key=lambda i: tuple(tok.expansion[i])))
    minus = v.dc + 2 * v.dc_range + 2                     # DC escape down: the DC walks to -1024
    inside = [i for i in ids if minus in tok.expansion[i][-2:]]
    if inside and rng.random() < 0.7:
        return int(rng.choice(inside))
    return int(rng.choice(ids))


@pytest.mark.parametrize("bounded", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_compiled_check_matches_the_trie_walk(bpe, seed, bounded):
    """Unbounded (encoding's grammar) and bounded (sampling's: DC within what 8-bit blocks give)."""
    rng = np.random.default_rng(seed)
    g = bpe.grammar(bpe.header(16 + 8 * seed, 8 + 8 * seed, quality=60 + 10 * seed), bounded=bounded)
    compiled = steps = 0
    while not g.done:
        allowed = g.allowed()
        assert np.array_equal(allowed, g.walk()), f"step {steps}: masks differ"
        compiled += accepts(g.base, bpe._pieces) is not None
        g.push(pick(rng, bpe, allowed))
        steps += 1
    assert compiled == steps                 # every body step used the compiled check
    assert np.array_equal(g.allowed(), g.walk()) and not g.allowed().any()


def test_compiled_check_matches_the_trie_walk_at_the_dc_bound(bpe):
    """A longer walk that reaches DC -1024 and runs along it: the masks agree there too."""
    rng = np.random.default_rng(7)
    g = bpe.grammar(bpe.header(48, 48))
    compared = 0
    while not g.done and compared < 20:
        allowed = g.allowed()
        if min(g.base._dc or [0]) < -1024 + 4 * bpe.base.vocab.dc_range:
            assert np.array_equal(allowed, g.walk()), f"masks differ at DC {g.base._dc}"
            compared += 1
        g.push(pick(rng, bpe, allowed))
    assert compared == 20
