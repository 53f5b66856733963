"""Training rows from a tokenized corpus split: images packed into rows of `block_size` tokens.

    split = Corpus("data/embedded64").split("train")
    batch = Packer(split, block_size=768, pad_id=split.tokenizer.pad_id).batch(8, [seed, it, 0])

A row starts at the beginning of a randomly chosen image (or, for an image longer than a row, at a
random window inside it) and runs on through the following images of the split. `doc` tells the
images in a row apart, so attention stays within each image, and a target that would cross into the
next image (or into padding) is `ignore_index`.

The packer indexes images, not tokens: it reads each row's ids from the split's memory-mapped shards
and asks the tokenizer for their positions (`Tokenizer.positions`), so nothing it holds grows with
the corpus. Every row is a pure function of its seed: the batch of iteration `it`, micro-step `m`
comes from `seed, it, m`, so a resumed (or distributed) run reads exactly the rows of the
uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from tokenizer.base import POSITION_FIELDS, TokenSequence
from tokenizer.corpus.shards import CorpusSplit


@dataclass(frozen=True)
class Batch:
    idx: torch.Tensor        # (B, T) int64 input ids
    positions: torch.Tensor  # (B, T, 5) int64
    targets: torch.Tensor    # (B, T) int64, ignore_index where there is nothing to predict
    doc: torch.Tensor        # (B, T) int64 image index in the split; -1 for padding
    context: torch.Tensor | None = None   # (B, T, n_context) int64 (Tokenizer.context), if asked for

    def to(self, device: torch.device | str) -> Batch:
        nb = torch.device(device).type == "cuda"
        return Batch(*(None if t is None else t.to(device, non_blocking=nb) for t in
                       (self.idx, self.positions, self.targets, self.doc, self.context)))


class Packer:
    """Rows of `block_size` tokens from `split` (see the module docstring)."""

    def __init__(self, split: CorpusSplit, block_size: int, pad_id: int, ignore_index: int = -1,
                 context: Callable[[TokenSequence], np.ndarray] | None = None):
        """`context`: a whole image's stream -> its (T, n_context) features (Tokenizer.context), to
        pass per token; None for none."""
        if len(split) == 0:
            raise ValueError("Packer: the corpus split holds no sequences")
        if split.tokenizer is None:
            raise ValueError("Packer: the split has no tokenizer to recompute positions")
        self.split, self.block_size = split, block_size
        self.pad_id, self.ignore_index, self.context = pad_id, ignore_index, context

    def row(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """One row of T + 1 tokens: ids (T+1,), positions (T+1, 5), doc (T+1,), context (T+1, F)."""
        n = self.block_size + 1
        ids = np.full(n, self.pad_id, np.int64)
        pos = np.zeros((n, len(POSITION_FIELDS)), np.int64)
        doc = np.full(n, -1, np.int64)
        ctx = None
        i = int(rng.integers(len(self.split)))
        start, length = 0, self.split.length(i)
        if length > n:
            start = int(rng.integers(length - n + 1))
        filled = 0
        while filled < n and i < len(self.split):
            seq = self.split[i]                           # ids from the map, positions recomputed
            take = min(n - filled, len(seq) - start)
            ids[filled:filled + take] = seq.ids[start:start + take]
            pos[filled:filled + take] = seq.positions[start:start + take]
            doc[filled:filled + take] = i
            if self.context is not None:                  # features of the whole image, then the piece
                feats = self.context(seq)
                if ctx is None:
                    ctx = np.zeros((n, feats.shape[1]), np.int64)   # padding slots: 0
                ctx[filled:filled + take] = feats[start:start + take]
            filled, i, start = filled + take, i + 1, 0
        return ids, pos, doc, ctx

    def batch(self, batch_size: int, seed: list[int]) -> Batch:
        rng = np.random.default_rng(seed)
        rows = [self.row(rng) for _ in range(batch_size)]
        ctx = [r[3] for r in rows if r[3] is not None]
        ids = np.stack([r[0] for r in rows])
        pos = np.stack([r[1] for r in rows])
        doc = np.stack([r[2] for r in rows])
        targets = ids[:, 1:].copy()
        targets[(doc[:, 1:] != doc[:, :-1]) | (doc[:, 1:] < 0)] = self.ignore_index
        return Batch(torch.from_numpy(ids[:, :-1]), torch.from_numpy(pos[:, :-1]),
                     torch.from_numpy(targets), torch.from_numpy(doc[:, :-1]),
                     torch.from_numpy(np.stack(ctx)[:, :-1]) if ctx else None)

    @property
    def mean_tokens_per_image(self) -> float:
        return self.split.n_tokens / len(self.split)
