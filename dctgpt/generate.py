"""Grammar-constrained sampling: a prompt comes in, finished token streams come out.

Each step masks the logits with the tokenizer's grammar cursor (`allowed()`), so every finished
stream is valid for the tokenizer and decodes; the position row of each new token comes from
`grammar.push`. With `use_cache=True` the model keeps a sliding KV cache of `block_size` tokens;
with `use_cache=False` it recomputes the last `block_size` tokens at every step (the reference).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from dctgpt.model import GPT, KVCache
from tokenizer.base import Tokenizer, TokenSequence


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 1.0   # 0 = greedy
    top_k: int = 0             # 0 = off
    top_p: float = 1.0         # 1 = off
    seed: int = 1337
    max_new_tokens: int = 0    # 0 = until every stream has ended
    use_cache: bool = True

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"SamplingConfig.temperature={self.temperature}: expected >= 0")
        if self.top_k < 0:
            raise ValueError(f"SamplingConfig.top_k={self.top_k}: expected >= 0 (0 = off)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingConfig.top_p={self.top_p}: expected 0 < top_p <= 1")
        if self.max_new_tokens < 0:
            raise ValueError(f"SamplingConfig.max_new_tokens={self.max_new_tokens}: expected >= 0")


def sample_next(logits: torch.Tensor, allowed: torch.Tensor, cfg: SamplingConfig,
                generator: torch.Generator) -> torch.Tensor:
    """logits (B, V), allowed (B, V) bool -> ids (B,): masked, tempered, top-k / top-p filtered."""
    logits = logits.float().masked_fill(~allowed, float("-inf"))
    if cfg.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / cfg.temperature
    if cfg.top_k:
        kth = torch.topk(logits, min(cfg.top_k, logits.size(-1)), dim=-1).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if cfg.top_p < 1:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(dim=-1) - sorted_p >= cfg.top_p  # mass before a token already >= p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model: GPT, tokenizer: Tokenizer, prompt: TokenSequence, num_samples: int,
             cfg: SamplingConfig, progress: bool = False) -> list[TokenSequence]:
    """Continue `prompt` (e.g. `tokenizer.header(h, w)`) into `num_samples` streams, sampled in one batch.

    Returns prompt + generated tokens per stream; a stream that reached `max_new_tokens` before its
    end token is returned unfinished (its grammar's `done` is False).
    """
    if len(prompt) == 0:
        raise ValueError("generate: empty prompt (start with at least the BOS token)")
    model.eval()
    device = next(model.parameters()).device
    W = model.config.block_size
    B = num_samples
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    grammars = [tokenizer.grammar(prompt) for _ in range(B)]
    ids = torch.from_numpy(prompt.ids.astype(np.int64)).repeat(B, 1)      # (B, T)
    pos = torch.from_numpy(prompt.positions.astype(np.int64)).repeat(B, 1, 1)  # (B, T, 5)
    cache = KVCache(model.config, B, device) if cfg.use_cache else None
    logits = _prefill(model, ids.to(device), pos.to(device), cache)
    new_ids, new_pos = [], []
    bar = tqdm(total=cfg.max_new_tokens or None, disable=not progress, unit="tok", desc="sampling")
    done = np.array([g.done for g in grammars])
    pad_only = np.zeros(tokenizer.vocab_size, bool)  # what a finished stream may emit
    pad_only[tokenizer.pad_id] = True
    length = np.zeros(B, np.int64)  # generated tokens of each stream up to its end
    step = 0
    while not done.all() and (cfg.max_new_tokens == 0 or step < cfg.max_new_tokens):
        allowed = torch.from_numpy(np.stack([pad_only if d else g.allowed()
                                             for g, d in zip(grammars, done)])).to(device)
        nxt = sample_next(logits, allowed, cfg, gen).cpu()
        rows = np.zeros((B, 5), np.int64)
        for b, g in enumerate(grammars):
            if done[b]:
                nxt[b] = tokenizer.pad_id
            else:
                rows[b] = g.push(int(nxt[b]))
                done[b] = g.done
                length[b] = step + 1
        new_ids.append(nxt.clone())
        new_pos.append(torch.from_numpy(rows))
        step += 1
        bar.update(1)
        if done.all():
            break
        x, p = nxt.view(B, 1).to(device), torch.from_numpy(rows).view(B, 1, 5).to(device)
        if cache is not None:
            logits = model(x, p, cache=cache)[0][:, -1]
        else:
            ids, pos = torch.cat([ids, x.cpu()], 1), torch.cat([pos, p.cpu()], 1)
            logits = model(ids[:, -W:].to(device), pos[:, -W:].to(device))[0][:, -1]
    bar.close()
    out = []
    gen_ids = torch.stack(new_ids, 1).numpy() if new_ids else np.zeros((B, 0), np.int64)
    gen_pos = torch.stack(new_pos, 1).numpy() if new_pos else np.zeros((B, 0, 5), np.int64)
    for b in range(B):
        n = length[b]  # drop the padding after this stream's end token
        out.append(TokenSequence.concat([prompt, TokenSequence(gen_ids[b, :n], gen_pos[b, :n])]))
    return out


def _prefill(model: GPT, ids: torch.Tensor, pos: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
    """Run the prompt; return the logits (B, V) for the first new token."""
    W = model.config.block_size
    if cache is None:
        return model(ids[:, -W:], pos[:, -W:])[0][:, -1]
    logits = model(ids[:, :W], pos[:, :W], cache=cache)[0][:, -1]
    for t in range(W, ids.size(1)):  # beyond one window: one token at a time keeps the window exact
        logits = model(ids[:, t:t + 1], pos[:, t:t + 1], cache=cache)[0][:, -1]
    return logits
