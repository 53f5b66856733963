"""A GPT over token ids with 2D block positions (nanoGPT's names and contract).

Every token carries a position row (frame, component, block_row, block_col, frequency). The model
embeds the small categorical fields (frame, component, frequency) with learned tables and places a
token in the image either with learned row/column tables (`pos_emb="learned"`, bounded by
`max_block_row` / `max_block_col`) or with 2D rotary embeddings over block coordinates
(`pos_emb="rope2d"`: half of each head rotates by block row, half by block column; only relative
offsets enter attention, so the model runs on images larger than its training crops).

There is no embedding of the token index itself, so a window of tokens is scored the same wherever
it starts, and a stream longer than `block_size` is handled by sliding windows (evaluation) or by a
KV cache that drops its oldest entries (generation).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

from tokenizer.base import BLOCK_COL, BLOCK_ROW, COMPONENT, FRAME, FREQUENCY

POS_EMBS = ("learned", "rope2d")
ATTENTIONS = ("sdpa", "xformers")


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 1344     # token ids; train.py takes it from the corpus's tokenizer
    block_size: int = 1024     # context length in tokens (training rows are this long)
    n_layer: int = 6           # transformer blocks
    n_head: int = 6            # attention heads per block
    n_embd: int = 384          # width of the residual stream
    dropout: float = 0.0       # dropout rate (embeddings, attention, residual branches)
    bias: bool = False         # biases in the linear layers and layer norms
    pos_emb: str = "rope2d"    # "learned" | "rope2d"
    attention: str = "sdpa"    # "sdpa" | "xformers" (CUDA only)
    max_block_row: int = 128   # learned row/col tables hold 0..max-1
    max_block_col: int = 128   # (see max_block_row)
    n_frame: int = 1           # frames a position can name (video); train.py takes it from the tokenizer
    n_component: int = 4       # 0 = header/special, 1..3 = Y, Cb, Cr
    n_frequency: int = 65      # zigzag 0..63, 64 = end of block
    rope_base: float = 100.0   # rope2d: base of the rotation frequencies
    ignore_index: int = -1     # targets equal to this (padding, cross-image) carry no loss
    context: bool = False      # feed the tokenizer's context features (Tokenizer.context) per token
    n_context: int = 0         # how many (train.py takes it from the tokenizer when context is on)
    context_buckets: int = 0   # each feature is an int in 0..context_buckets-1 (from the tokenizer too)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "max_block_row",
                     "max_block_col", "n_frame", "n_component", "n_frequency"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"GPTConfig.{name}={v!r}: expected a positive int")
        if self.pos_emb not in POS_EMBS:
            raise ValueError(f"GPTConfig.pos_emb={self.pos_emb!r}: expected one of {POS_EMBS}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"GPTConfig.attention={self.attention!r}: expected one of {ATTENTIONS}")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig.n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        hs = self.n_embd // self.n_head
        if self.pos_emb == "rope2d" and hs % 4:
            raise ValueError(f"GPTConfig: rope2d needs a head size divisible by 4, got "
                             f"n_embd/n_head = {self.n_embd}/{self.n_head} = {hs}")
        if self.n_context < 0 or (self.n_context > 0 and self.context_buckets < 1):
            raise ValueError(f"GPTConfig: n_context={self.n_context} needs context_buckets >= 1, "
                             f"got {self.context_buckets}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout={self.dropout!r}: expected 0 <= dropout < 1")
        if not self.rope_base > 1.0:
            raise ValueError(f"GPTConfig.rope_base={self.rope_base!r}: expected > 1")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GPTConfig:
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"GPTConfig: unknown keys {sorted(unknown)}")
        return cls(**d)


def rope2d_angles(positions: torch.Tensor, head_size: int, base: float) -> torch.Tensor:
    """(B, T, 5) positions -> (B, 1, T, head_size/2) rotation angles: rows then columns."""
    quarter = head_size // 4
    inv_freq = base ** (-torch.arange(quarter, dtype=torch.float32, device=positions.device) / quarter)
    rows = positions[..., BLOCK_ROW].float()[..., None] * inv_freq  # (B, T, hs/4)
    cols = positions[..., BLOCK_COL].float()[..., None] * inv_freq
    return torch.cat([rows, cols], dim=-1).unsqueeze(1)


def apply_rotary(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., :h], x[..., h:]) of x (B, nh, T, hs) by angles (B, 1, T, hs/2)."""
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class KVCache:
    """Keys and values of the last `block_size` tokens for every layer, for one batch of streams.

    Within `block_size` tokens the cached logits equal a full recompute. Past it, entries older than
    the window are dropped: sliding-window attention, the logits of one pass in which every layer's
    token attends to the last `block_size` tokens only (a band mask). For one layer that is
    recomputing the last window from scratch; with more layers the kept keys of deeper layers still
    carry what their token saw when it was computed, so logits differ slightly from such a recompute
    (no embedding depends on the token index, so nothing else shifts).
    """

    def __init__(self, config: GPTConfig, batch_size: int, device: torch.device | str = "cpu"):
        self.window = config.block_size
        hs = config.n_embd // config.n_head
        self.shape = (batch_size, config.n_head, 2 * config.block_size, hs)  # room to roll, amortized O(1)
        self.k: list[torch.Tensor] = []  # per layer, allocated on first use in the keys' dtype
        self.v: list[torch.Tensor] = []
        self.n_layer = config.n_layer
        self.length = 0    # valid entries (same for every layer once a forward pass completes)

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add k, v (B, nh, T, hs) to `layer`; return this layer's keys and values, window included."""
        # Buffers (B, nh, 2 * block_size, hs) per layer, oldest entry first; entries 0..length-1 valid.
        if layer == len(self.k):
            self.k.append(torch.zeros(self.shape, device=k.device, dtype=k.dtype))
            self.v.append(torch.zeros(self.shape, device=v.device, dtype=v.dtype))
        T, cap, n = k.size(2), self.k[layer].size(2), self.length
        if n + T > cap:  # keep the last window - T entries at the front
            # full: slide the newest `keep` entries to slots 0..keep-1 (clone: both sides share one buffer);
            # with a 2x buffer this happens once every ~block_size steps
            keep = max(0, min(n, self.window - T))
            self.k[layer][:, :, :keep] = self.k[layer][:, :, n - keep:n].clone()
            self.v[layer][:, :, :keep] = self.v[layer][:, :, n - keep:n].clone()
            n = keep
            if n + T > cap:
                raise ValueError(f"KVCache: {T} new tokens exceed the cache capacity {cap}")
        self.k[layer][:, :, n:n + T] = k  # the T new entries go right after the valid ones
        self.v[layer][:, :, n:n + T] = v
        start = max(0, n + T - self.window)  # attend to at most the last `window` entries
        if layer == self.n_layer - 1:  # every layer computed the same n from the old length
            self.length = n + T
        return self.k[layer][:, :, start:n + T], self.v[layer][:, :, start:n + T]  # (B, nh, S, hs)


class CausalSelfAttention(nn.Module):

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout
        self.attention = config.attention

    def forward(self, x: torch.Tensor, angles: torch.Tensor | None, mask: torch.Tensor | None,
                cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if angles is not None:
            q, k = apply_rotary(q, angles), apply_rotary(k, angles)
        if cache is not None:
            k, v = cache.append(layer, k, v)  # (B, nh, S, hs), S >= T: the window so far
        dropout = self.dropout if self.training else 0.0
        if self.attention == "xformers":
            y = xformers_attention(q, k, v, mask, dropout)
        elif mask is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=k.size(2) == T)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble all head outputs side by side
        return self.resid_dropout(self.c_proj(y))


def xformers_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                       dropout: float) -> torch.Tensor:
    """xformers' memory-efficient attention, same contract as the SDPA calls above (CUDA only)."""
    try:
        import xformers.ops as xops
    except ImportError as e:
        raise RuntimeError("attention='xformers' but xformers is not installed "
                           "(pip install 'dctgpt[xformers]', or use attention='sdpa')") from e
    if not q.is_cuda:
        raise RuntimeError(f"attention='xformers' needs CUDA tensors, got device {q.device}; "
                           "use attention='sdpa' on CPU")
    T, S = q.size(2), k.size(2)
    if mask is None:
        bias = xops.LowerTriangularFromBottomRightMask() if S > 1 else None
    else:  # a float bias; xformers wants it expanded over heads and its last dim 8-aligned in memory
        B, nh = q.size(0), q.size(1)
        pad = -S % 8
        full = torch.zeros(B, nh, T, S + pad, device=q.device, dtype=q.dtype)
        full[..., :S].masked_fill_(~mask, float("-inf"))
        bias = full[..., :S]
    y = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                        attn_bias=bias, p=dropout)  # (B, T, nh, hs)
    return y.transpose(1, 2)


class MLP(nn.Module):

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, angles, mask, cache=None, layer=0):
        x = x + self.attn(self.ln_1(x), angles, mask, cache, layer)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        emb = dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wfe=nn.Embedding(config.n_frame, config.n_embd),       # frame
            wce=nn.Embedding(config.n_component, config.n_embd),   # component
            wqe=nn.Embedding(config.n_frequency, config.n_embd),   # zigzag frequency
        )
        if config.n_context:   # one table of context_buckets rows per feature, as one embedding
            emb["wxe"] = nn.Embedding(config.n_context * config.context_buckets, config.n_embd)
        if config.pos_emb == "learned":
            emb["wre"] = nn.Embedding(config.max_block_row, config.n_embd)
            emb["wke"] = nn.Embedding(config.max_block_col, config.n_embd)
        self.transformer = nn.ModuleDict(dict(
            **emb,
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying, as nanoGPT
        self.apply(self._init_weights)
        for pn, p in self.named_parameters():  # scaled init of residual projections (GPT-2)
            if pn.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def get_num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _check_positions(self, positions: torch.Tensor) -> None:
        c = self.config
        limits = [(FRAME, "frame", c.n_frame, "n_frame"), (COMPONENT, "component", c.n_component,
                  "n_component"), (FREQUENCY, "frequency", c.n_frequency, "n_frequency")]
        if c.pos_emb == "learned":
            limits += [(BLOCK_ROW, "block_row", c.max_block_row, "max_block_row"),
                       (BLOCK_COL, "block_col", c.max_block_col, "max_block_col")]
        flat = positions.reshape(-1, positions.size(-1))
        lows, highs = torch.stack([flat.amin(0), flat.amax(0)]).tolist()  # one device sync
        for col, field, limit, name in limits:
            lo, hi = lows[col], highs[col]
            if lo < 0 or hi >= limit:
                hint = " (pos_emb='rope2d' has no such limit)" if col in (BLOCK_ROW, BLOCK_COL) else ""
                raise ValueError(f"GPT: position field {field} spans {lo}..{hi}, outside 0..{limit - 1} "
                                 f"of GPTConfig.{name}={limit}{hint}")

    def _context_embedding(self, context: torch.Tensor | None, B: int, T: int) -> torch.Tensor:
        """Sum over features of each feature's own embedding row: feature f, bucket v -> f * buckets + v."""
        c = self.config
        if context is None or context.shape != (B, T, c.n_context):
            got = None if context is None else tuple(context.shape)
            raise ValueError(f"GPT: n_context={c.n_context} needs context of shape {(B, T, c.n_context)}, "
                             f"got {got}")
        offsets = torch.arange(c.n_context, device=context.device) * c.context_buckets
        return self.transformer.wxe(context.long() + offsets).sum(-2)

    def forward(self, idx: torch.Tensor, positions: torch.Tensor, targets: torch.Tensor | None = None,
                doc: torch.Tensor | None = None, cache: KVCache | None = None,
                context: torch.Tensor | None = None):
        """ids (B, T) and positions (B, T, 5) in; (logits (B, T, vocab), loss or None) out.

        `doc` (B, T): segment ids of images packed in one row; a token attends only to earlier tokens
        of its own segment. `cache`: a KVCache to extend (generation); it implies a single segment.
        `context` (B, T, n_context): the tokenizer's context features, required when n_context > 0.
        """
        B, T = idx.size()
        if positions.shape != (B, T, 5):
            raise ValueError(f"GPT: positions {tuple(positions.shape)} do not match ids {(B, T)} x 5")
        if T > self.config.block_size:
            raise ValueError(f"GPT: {T} tokens in one pass exceed block_size {self.config.block_size}")
        if not torch.compiler.is_compiling():  # a data-dependent check would break the graph
            self._check_positions(positions)
        positions = positions.long()
        tr = self.transformer
        x = (tr.wte(idx) + tr.wfe(positions[..., FRAME]) + tr.wce(positions[..., COMPONENT])
             + tr.wqe(positions[..., FREQUENCY]))
        if self.config.n_context:
            x = x + self._context_embedding(context, B, T)
        angles = None
        if self.config.pos_emb == "learned":
            x = x + tr.wre(positions[..., BLOCK_ROW]) + tr.wke(positions[..., BLOCK_COL])
        else:
            angles = rope2d_angles(positions, self.config.n_embd // self.config.n_head,
                                   self.config.rope_base)
        x = tr.drop(x)
        mask = None
        if doc is not None:
            if cache is not None:
                raise ValueError("GPT: doc segments and a KV cache cannot be combined")
            causal = torch.ones(T, T, dtype=torch.bool, device=idx.device).tril()
            mask = (causal & (doc[:, :, None] == doc[:, None, :])).unsqueeze(1)  # (B, 1, T, T)
        elif cache is not None and T > 1 and cache.length > 0:
            S = min(cache.length + T, cache.window)  # keys visible after appending
            mask = torch.ones(T, S, dtype=torch.bool, device=idx.device).tril(diagonal=S - T)
        for i, block in enumerate(tr.h):
            x = block(x, angles, mask, cache, i)
        x = tr.ln_f(x)
        logits = self.lm_head(x)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1).long(),
                                   ignore_index=self.config.ignore_index)
        return logits, loss

    def configure_optimizers(self, weight_decay: float, learning_rate: float,
                             betas: tuple[float, float], device_type: str) -> torch.optim.AdamW:
        """AdamW with decay on matrices only (nanoGPT); fused on CUDA."""
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        extra = {"fused": True} if device_type == "cuda" else {}
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **extra)

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward), PaLM appendix B as in nanoGPT."""
        c = self.config
        T = seq_len or c.block_size
        return 6 * self.get_num_params() + 12 * c.n_layer * c.n_embd * T
