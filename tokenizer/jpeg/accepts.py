"""Which of many id sequences a JpegGrammar cursor takes next, all at once (compiled; for BPE pieces).

    pieces = Pieces.of(expansions)         # a list of 1-D base-id arrays
    mask = accepts(grammar, pieces)        # (P,) bool, or None: walk the sequences with the grammar

Sequence i is accepted iff pushing its ids one by one onto a copy of `grammar` never fails. The C
port of the grammar's body transitions (_grammar.c) checks every sequence in one pass; grammar.py
stays the reference. It covers the body of a stream (blocks, escapes, EOS) of a JpegGrammar with
exactly the state grammar.py keeps there; anywhere else (the header) or on a cursor with other state,
or with a sequence longer than 64 ids, accepts() returns None and the caller walks the sequences with
the grammar itself.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from tokenizer.jpeg.compiled import _scan, _vocab_ids
from tokenizer.jpeg.format import BlockLayout
from tokenizer.jpeg.grammar import JpegGrammar
from tokenizer.jpeg.io import AC_MAX, DC_MAX, DC_MIN

# The attributes of a JpegGrammar in the body, all of which the C port reads or does not need
# (masks, positions, the header, the block being resampled). Any other state, and the port does not
# know the cursor. A cursor that resamples blocks (grammar.py's `resample`) may take a block back at
# its EOB, which the port does not model: accepts() leaves such a cursor to the reference walk.
_BODY_STATE = frozenset({"vocab", "order", "bands", "max_pixels", "_masks", "_cur", "_bounded", "header",
                         "layout", "done", "_pending", "_pending_pos", "_dc", "_escaping", "resample",
                         "rejected", "flattened", "_n", "_block", "_start", "_tries", "_qtables",
                         "_dc_bounds", "units", "u", "k", "after_zrl", "no_skip"})


class Pieces(NamedTuple):
    """Id sequences packed for the C check: sequence i is ids[offsets[i]:offsets[i + 1]]; `order`
    lists them sorted and lcp[j] is the common prefix length of sequences order[j - 1] and order[j],
    so the check steps each shared prefix once."""

    ids: np.ndarray        # int32
    offsets: np.ndarray    # int32, (P + 1,)
    order: np.ndarray      # int32, (P,)
    lcp: np.ndarray        # int32, (P,)

    @staticmethod
    def of(sequences: list[np.ndarray]) -> Pieces:
        seqs = [tuple(int(x) for x in s) for s in sequences]
        order = sorted(range(len(seqs)), key=seqs.__getitem__)
        lcp = [0] * len(seqs)
        for j in range(1, len(order)):
            a, b = seqs[order[j - 1]], seqs[order[j]]
            while lcp[j] < min(len(a), len(b)) and a[lcp[j]] == b[lcp[j]]:
                lcp[j] += 1
        offsets = np.concatenate([[0], np.cumsum([len(s) for s in seqs])])
        return Pieces(np.array([x for s in seqs for x in s], np.int32), offsets.astype(np.int32),
                      np.array(order, np.int32), np.array(lcp, np.int32))


@functools.lru_cache(maxsize=16)
def _units(layout: BlockLayout) -> np.ndarray:
    """(U, 3) int32 (start, end, component) per unit of the layout's schedule."""
    u = layout.units
    return np.ascontiguousarray(np.stack([u[:, 1], u[:, 2], layout.comp[u[:, 0]]], 1), np.int32)


def accepts(grammar: JpegGrammar, pieces: Pieces) -> np.ndarray | None:
    """(P,) bool: which sequences `grammar` takes from where it is; None where the C port does not
    apply (no compiled extension, the header, or a cursor state it does not know)."""
    g = grammar
    if (_scan is None or type(g) is not JpegGrammar or g.layout is None or vars(g).keys() != _BODY_STATE
            or g.resample):
        return None
    n = len(g._dc)
    escape = None                         # a DC escape under way: (component, sign, payload so far)
    if g._pending and g._escaping[1] == 0:
        escape = (g._escaping[0], g._escaping[2], g._escaping[3])
    state = (g.u, g.k, int(g.after_zrl), int(g.no_skip), int(g.done), tuple(g._pending), escape,
             tuple(g._dc))
    lo, hi = zip(*g._dc_bounds) if g.bounded else ((DC_MIN,) * n, (DC_MAX,) * n)
    ctx = (g.layout.n_blocks, int(g.order == "raster"), g.vocab.max_skip, AC_MAX, lo, hi)
    mask = _scan.accepts(pieces.ids, pieces.offsets, pieces.order, pieces.lcp, state, ctx, _units(g.layout),
                         _vocab_ids(g.vocab))
    return None if mask is None else np.frombuffer(mask, np.bool_)
