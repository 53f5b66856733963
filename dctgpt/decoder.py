"""GPT.forward for one new token per stream, with a ring KV cache: the step sampling repeats.

    dec = Decoder(model, batch_size=4)
    logits = dec.prefill(ids, positions)          # (B, T) and (B, T, 5) tensors: the prompt
    logits = dec.step(next_ids, next_positions)   # (B,) and (B, 5) numpy arrays -> (B, vocab)
    # a model with context features (GPTConfig.n_context) takes their rows too: context=(B, T, n)
    # tensor in prefill, (B, n) numpy array in step
    dec.forget(stream, index)                     # drop a token of one stream (sampling drew again)
    dec.keep(rows)                                # go on with some streams only

At the sizes we sample on a CPU a step costs a few dozen microseconds of arithmetic and far more
in Python and dispatch around each op, so this twin of `GPT.forward` (model.py) spends as few
calls as it can: one table for the frame, component and frequency embeddings, one set of rotary
factors for all layers, q and k rotated together, attention's 1/sqrt(head size) folded into the q
weights, attention as two batched matmuls over keys stored transposed (a third cheaper than SDPA's
kernel for one query), residual adds fused into the matmuls, and on a CPU the weight matrices
transposed once (x @ w costs half of F.linear for one row). Its logits equal the model's with a
`KVCache` (tests/test_decoder.py).

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
        # per layer, a ring of block_size slots for each (stream, head): keys transposed (B*nh, hs, W)
        # and values (B*nh, W, hs), so attention is bmm(q, keys) and bmm(weights, values)
        BH, W = batch_size * self.nh, c.block_size
        self.k = [torch.zeros(BH, self.hs, W, device=self.device, dtype=self.dtype) for _ in range(c.n_layer)]
        self.v = [torch.zeros(BH, W, self.hs, device=self.device, dtype=self.dtype) for _ in range(c.n_layer)]
        self.t = 0             # tokens seen; the next one goes to slot t % block_size
        self.forgotten = torch.zeros(batch_size, W, dtype=torch.bool, device=self.device)
        self.masked_until = -1  # the last step whose window may hold a forgotten token
        with torch.no_grad():
            # (frame, component, frequency) -> the sum of their three embeddings, one row each
            self.small = (tr.wfe.weight[:, None, None] + tr.wce.weight[None, :, None]
                          + tr.wqe.weight[None, None]).reshape(-1, self.C)
            self.layers = [self._layer(b) for b in tr.h]
            head = model.lm_head.weight.t()
            self.head = head if head.is_cuda else head.contiguous()
        self.wte, self.ln_f = tr.wte.weight, tr.ln_f
        # context features: feature f's bucket v is row f * context_buckets + v of one table
        self.wxe = tr.wxe.weight if c.n_context else None
        self.offsets = np.arange(c.n_context) * c.context_buckets
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

        def linear(lin: torch.nn.Linear, scale: float | torch.Tensor = 1.0) -> tuple[torch.Tensor, ...]:
            """(bias, weight^T) of `lin`, its outputs times `scale` (per output row)."""
            b = lin.bias if lin.bias is not None else torch.zeros(lin.out_features, device=self.device,
                                                                   dtype=self.dtype)
            w = (lin.weight * (scale[:, None] if torch.is_tensor(scale) else scale)).t()
            return b * scale, (w if w.is_cuda else w.contiguous())

        (bo, wo), (bpr, wpr) = linear(a.c_proj), linear(m.c_proj)
        if a.c_proj.bias is None:
            bo = bpr = None
        q_scale = torch.ones(3 * self.C, device=self.device, dtype=self.dtype)   # q's rows: 1/sqrt(hs)
        q_scale[:self.C] = self.hs ** -0.5
        return (block.ln_1, *linear(a.c_attn, q_scale), bo, wo, block.ln_2, *linear(m.c_fc), bpr, wpr)

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor, positions: torch.Tensor,
                context: torch.Tensor | None = None) -> torch.Tensor:
        """Run the prompt (B, T) through the model with a KVCache, keep its keys in the ring, and
        return the logits (B, vocab) for the first new token."""
        W = self.config.block_size

        def run(a: int, b: int) -> torch.Tensor:   # tokens a..b-1 through the cache
            ctx = None if context is None else context[:, a:b]
            return self.model(ids[:, a:b], positions[:, a:b], cache=cache, context=ctx)[0][:, -1]

        cache = KVCache(self.config, self.B, self.device)
        logits = run(0, W)
        for t in range(W, ids.size(1)):  # beyond one window: one at a time keeps the window exact
            logits = run(t, t + 1)
        n = min(cache.length, W)          # the kept keys, oldest first, go to slots 0..n-1
        for layer in range(self.config.n_layer):
            k = cache.k[layer][:, :, cache.length - n:cache.length]             # (B, nh, n, hs)
            self.k[layer][:, :, :n] = k.transpose(2, 3).reshape(-1, self.hs, n)
            self.v[layer][:, :n] = cache.v[layer][:, :, cache.length - n:cache.length].reshape(-1, n, self.hs)
        self.t = n                        # (when n == W, slot 0 holds the oldest: overwritten next)
        return logits

    def keep(self, rows: list[int]) -> None:
        """Go on with these batch rows only, in this order (streams that ended stop costing)."""
        index = torch.tensor(rows, device=self.device)
        heads = (index[:, None] * self.nh + torch.arange(self.nh, device=self.device)).flatten()
        self.k = [k.index_select(0, heads) for k in self.k]
        self.v = [v.index_select(0, heads) for v in self.v]
        self.forgotten = self.forgotten.index_select(0, index)
        self.B = len(rows)

    def forget(self, stream: int, index: int) -> None:
        """Mask token `index` (0 = the first the ring took) out of `stream`'s attention from now on."""
        W = self.config.block_size
        if self.t - W <= index < self.t:          # still in the ring
            self.forgotten[stream, index % W] = True
            self.masked_until = max(self.masked_until, index + W - 1)

    @torch.no_grad()
    def step(self, ids: np.ndarray, positions: np.ndarray, context: np.ndarray | None = None) -> torch.Tensor:
        """ids (B,) and their position rows (B, 5) -> logits (B, vocab) for the token after them;
        `context` (B, n_context): their context rows, for a model with context features."""
        c, B, C = self.config, self.B, self.C
        # one host -> device copy: token id, small-table row, block row, block column per stream
        # (then the context features' rows in their table)
        small = (positions[:, FRAME] * c.n_component + positions[:, COMPONENT]) * c.n_frequency \
            + positions[:, FREQUENCY]
        host = np.stack([ids, small, positions[:, BLOCK_ROW], positions[:, BLOCK_COL]], 1)   # (B, 4)
        if self.wxe is not None:
            if context is None or context.shape != (B, c.n_context):
                raise ValueError(f"Decoder: n_context={c.n_context} needs context of shape "
                                 f"{(B, c.n_context)}, got {None if context is None else context.shape}")
            host = np.concatenate([host, context + self.offsets], 1)                      # (B, 4 + n)
        x4 = torch.from_numpy(host.astype(np.int64)).to(self.device, non_blocking=True)   # (B, 4 [+ n])
        token, table_row, row, col = x4[:, :4].unbind(1)
        x = torch.embedding(self.wte, token) + torch.embedding(self.small, table_row)       # (B, C)
        if self.wxe is not None:   # the sum of each feature's row
            x = x + torch.embedding(self.wxe, x4[:, 4:]).sum(1)
        if self.rows_cols is not None:  # learned block row / column tables
            x = x + torch.embedding(self.rows_cols[0], row) + torch.embedding(self.rows_cols[1], col)
        else:  # rotary factors for (B, 2 [q, k], nh, hs): x * cos + swapped(x) * sign * sin
            angles = (x4.narrow(1, 2, 2).float() @ self.inv).view(B, 1, 1, self.hs)    # (B, 1, 1, hs)
            cos, sin = angles.cos(), angles.sin() * self.sign
            if self.dtype != torch.float32:
                cos, sin = cos.to(self.dtype), sin.to(self.dtype)
        slot, n = self.t % c.block_size, min(self.t + 1, c.block_size)
        mask = None
        if self.t <= self.masked_until:            # some stream forgot a token in this window
            self.forgotten[:, slot] = False
            mask = self.forgotten[:, None, None, :n]   # (B, 1, 1, n)
        self.t += 1
        for layer, (ln_1, bqkv, wqkv, bo, wo, ln_2, bfc, wfc, bpr, wpr) in enumerate(self.layers):
            h = torch.layer_norm(x, (C,), ln_1.weight, ln_1.bias, ln_1.eps)
            qkv = torch.addmm(bqkv, h, wqkv).view(B, 3, self.nh, self.hs)
            qk, v = qkv.narrow(1, 0, 2), qkv.select(1, 2)        # (tensor methods: [] costs more)
            if self.rows_cols is None:  # rotary: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)
                qk = torch.addcmul(qk * cos, qk.roll(self.hs // 2, -1), sin)   # (B, 2, nh, hs)
            self.k[layer].view(B, self.nh, self.hs, -1).select(3, slot).copy_(qk.select(1, 1))  # (B, nh, hs)
            self.v[layer].view(B, self.nh, -1, self.hs).select(2, slot).copy_(v)
            q = qk.select(1, 0).reshape(-1, 1, self.hs)
            att = torch.bmm(q, self.k[layer].narrow(2, 0, n))                       # (B*nh, 1, n)
            if mask is not None:
                att.view(B, self.nh, 1, n).masked_fill_(mask, float("-inf"))
            y = torch.bmm(torch.softmax(att, -1), self.v[layer].narrow(1, 0, n))      # (B*nh, 1, hs)
            x = torch.addmm(x if bo is None else x + bo, y.view(B, C), wo)   # residual + projection
            h = F.gelu(torch.addmm(bfc, torch.layer_norm(x, (C,), ln_2.weight, ln_2.bias, ln_2.eps), wfc))
            x = torch.addmm(x if bpr is None else x + bpr, h, wpr)
        return torch.mm(torch.layer_norm(x, (C,), self.ln_f.weight, self.ln_f.bias, self.ln_f.eps), self.head)
