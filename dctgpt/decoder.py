"""GPT.forward for one new token per stream, with a ring KV cache: the step sampling repeats.

    dec = Decoder(model, batch_size=4)
    logits = dec.prefill(ids, positions)          # (B, T) and (B, T, 5) tensors: the prompt
    logits = dec.step(next_ids, next_positions)   # (B,) and (B, 5) numpy arrays -> (B, vocab)
    dec.forget(stream, index)                     # drop a token of one stream (sampling drew again)
    dec.keep(rows)                                # go on with some streams only

At the sizes we sample on a CPU a step costs a few dozen microseconds of arithmetic and far more
in Python and dispatch around each op, so this twin of `GPT.forward` (model.py) spends as few
calls as it can: one table for the frame, component and frequency embeddings, one set of rotary
factors for all layers, q and k rotated together, residual adds fused into the matmuls, and on a
CPU the weight matrices transposed once (x @ w costs half of F.linear for one row). Its logits
equal the model's with a `KVCache` (tests/test_decoder.py).

The cache is a ring of `block_size` slots per layer: the new token's keys overwrite the oldest.
No embedding depends on a token's index and attention is blind to the order of its keys, so the
ring attends to exactly the keys `KVCache` keeps (the last `block_size` tokens). A token that
`forget` drops stays in its slot, masked out of that stream's attention, until the ring comes round.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from dctgpt.model import GPT, KVCache
from tokenizer.base import BLOCK_COL, BLOCK_ROW, COMPONENT, FRAME, FREQUENCY


class Decoder:
    """One token per stream per step through `model` (eval mode, no grad). See the module docstring."""

    def __init__(self, model: GPT, batch_size: int):
        c, tr = model.config, model.transformer
        self.config, self.B = c, batch_size
        self.nh, self.hs, self.C = c.n_head, c.n_embd // c.n_head, c.n_embd
        w = next(model.parameters())
        self.device, self.dtype = w.device, w.dtype
        shape = (batch_size, self.nh, c.block_size, self.hs)   # per layer: a ring of keys, values
        self.k = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in range(c.n_layer)]
        self.v = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in range(c.n_layer)]
        self.t = 0             # tokens seen; the next one goes to slot t % block_size
        self.valid = torch.ones(batch_size, c.block_size, dtype=torch.bool, device=self.device)
        self.masked_until = -1  # the last step whose window may hold a forgotten token
        with torch.no_grad():
            # (frame, component, frequency) -> the sum of their three embeddings, one row each
            self.small = (tr.wfe.weight[:, None, None] + tr.wce.weight[None, :, None]
                          + tr.wqe.weight[None, None]).reshape(-1, self.C)
            self.layers = [self._layer(b) for b in tr.h]
            head = model.lm_head.weight.t()
            self.head = head if head.is_cuda else head.contiguous()
        self.wte, self.ln_f = tr.wte.weight, tr.ln_f
        self.rows_cols = (tr.wre.weight, tr.wke.weight) if c.pos_emb == "learned" else None
        if c.pos_emb == "rope2d":
            # angles = (row, col) @ inv: the model's [rows | cols] frequencies, twice (both halves)
            quarter = self.hs // 4
            f = c.rope_base ** (-torch.arange(quarter, dtype=torch.float32) / quarter)
            z = torch.zeros(quarter)
            half = torch.stack([torch.cat([f, z]), torch.cat([z, f])])       # (2, hs/2)
            self.inv = torch.cat([half, half], 1).to(self.device)             # (2, hs)
            self.sign = torch.cat([-torch.ones(2 * quarter), torch.ones(2 * quarter)]).to(self.device)
        self.model = model

    def _layer(self, block) -> tuple:
        """A block's layer norms and (bias, weight) pairs as the step uses them: weights transposed
        (contiguous on a CPU); missing biases are zeros in front of a layer norm's output, None
        (nothing to add) before a residual."""
        a, m = block.attn, block.mlp

        def linear(lin: torch.nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
            b = lin.bias if lin.bias is not None else torch.zeros(lin.out_features, device=self.device,
                                                                   dtype=self.dtype)
            w = lin.weight.t()
            return b, (w if w.is_cuda else w.contiguous())

        (bo, wo), (bpr, wpr) = linear(a.c_proj), linear(m.c_proj)
        if a.c_proj.bias is None:
            bo = bpr = None
        return (block.ln_1, *linear(a.c_attn), bo, wo, block.ln_2, *linear(m.c_fc), bpr, wpr)

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Run the prompt (B, T) through the model with a KVCache, keep its keys in the ring, and
        return the logits (B, vocab) for the first new token."""
        W = self.config.block_size
        cache = KVCache(self.config, self.B, self.device)
        logits = self.model(ids[:, :W], positions[:, :W], cache=cache)[0][:, -1]
        for t in range(W, ids.size(1)):  # beyond one window: one at a time keeps the window exact
            logits = self.model(ids[:, t:t + 1], positions[:, t:t + 1], cache=cache)[0][:, -1]
        n = min(cache.length, W)          # the kept keys, oldest first, go to slots 0..n-1
        for layer in range(self.config.n_layer):
            self.k[layer][:, :, :n] = cache.k[layer][:, :, cache.length - n:cache.length]
            self.v[layer][:, :, :n] = cache.v[layer][:, :, cache.length - n:cache.length]
        self.t = n                        # (when n == W, slot 0 holds the oldest: overwritten next)
        return logits

    def keep(self, rows: list[int]) -> None:
        """Go on with these batch rows only, in this order (streams that ended stop costing)."""
        index = torch.tensor(rows, device=self.device)
        self.k = [k.index_select(0, index) for k in self.k]
        self.v = [v.index_select(0, index) for v in self.v]
        self.valid = self.valid.index_select(0, index)
        self.B = len(rows)

    def forget(self, stream: int, index: int) -> None:
        """Mask token `index` (0 = the first the ring took) out of `stream`'s attention from now on."""
        W = self.config.block_size
        if self.t - W <= index < self.t:          # still in the ring
            self.valid[stream, index % W] = False
            self.masked_until = max(self.masked_until, index + W - 1)

    @torch.no_grad()
    def step(self, ids: np.ndarray, positions: np.ndarray) -> torch.Tensor:
        """ids (B,) and their position rows (B, 5) -> logits (B, vocab) for the token after them."""
        c, B, C = self.config, self.B, self.C
        # one host -> device copy: token id, small-table row, block row, block column per stream
        small = (positions[:, FRAME] * c.n_component + positions[:, COMPONENT]) * c.n_frequency \
            + positions[:, FREQUENCY]
        host = np.stack([ids, small, positions[:, BLOCK_ROW], positions[:, BLOCK_COL]], 1)   # (B, 4)
        x4 = torch.from_numpy(host.astype(np.int64)).to(self.device, non_blocking=True)   # (B, 4)
        token, table_row, row, col = x4.unbind(1)
        x = torch.embedding(self.wte, token) + torch.embedding(self.small, table_row)       # (B, C)
        if self.rows_cols is not None:  # learned block row / column tables
            x = x + torch.embedding(self.rows_cols[0], row) + torch.embedding(self.rows_cols[1], col)
        else:  # rotary factors for (B, 2 [q, k], nh, hs): x * cos + swapped(x) * sign * sin
            angles = (x4[:, 2:4].float() @ self.inv)[:, None, None]                      # (B, 1, 1, hs)
            cos, sin = angles.cos().to(self.dtype), (angles.sin() * self.sign).to(self.dtype)
        slot, n = self.t % c.block_size, min(self.t + 1, c.block_size)
        mask = None
        if self.t <= self.masked_until:            # some stream forgot a token in this window
            self.valid[:, slot] = True
            mask = self.valid[:, None, None, :n]   # (B, 1, 1, n)
        self.t += 1
        for layer, (ln_1, bqkv, wqkv, bo, wo, ln_2, bfc, wfc, bpr, wpr) in enumerate(self.layers):
            h = torch.layer_norm(x, (C,), ln_1.weight, ln_1.bias, ln_1.eps)
            qkv = torch.addmm(bqkv, h, wqkv).view(B, 3, self.nh, self.hs)
            qk, v = qkv[:, :2], qkv[:, 2]
            if self.rows_cols is None:  # rotary: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)
                qk = torch.addcmul(qk * cos, qk.roll(self.hs // 2, -1), sin)   # (B, 2, nh, hs)
            self.k[layer].select(2, slot).copy_(qk[:, 1])
            self.v[layer].select(2, slot).copy_(v)
            k, v = self.k[layer].narrow(2, 0, n), self.v[layer].narrow(2, 0, n)
            y = F.scaled_dot_product_attention(qk[:, 0, :, None], k, v, attn_mask=mask)  # (B, nh, 1, hs)
            x = torch.addmm(x if bo is None else x + bo, y.view(B, C), wo)   # residual + projection
            h = F.gelu(torch.addmm(bfc, torch.layer_norm(x, (C,), ln_2.weight, ln_2.bias, ln_2.eps), wfc))
            x = torch.addmm(x if bpr is None else x + bpr, h, wpr)
        return torch.mm(torch.layer_norm(x, (C,), self.ln_f.weight, self.ln_f.bias, self.ln_f.eps), self.head)
