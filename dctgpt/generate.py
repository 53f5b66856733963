"""Grammar-constrained sampling: a prompt comes in, finished token streams come out.

Each step masks the logits with the tokenizer's grammar cursor (`allowed()`), so every finished
stream is valid for the tokenizer and decodes; the position row of each new token comes from
`grammar.push`. The grammar is `bounded` by default: samples stay where 8-bit pixels can put them.
With `use_cache=True` each step is one call of `Decoder.step` (a ring KV cache of `block_size`
tokens); with `use_cache=False` the model recomputes the last `block_size` tokens at every step
(the reference). A finished stream feeds PAD until a quarter of the batch has finished, when the
finished rows leave the batch. A model with context features (GPTConfig.n_context) gets each
token's row from the tokenizer's `context_cursor`, one per stream, taken back with the grammar.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from dctgpt.decoder import Decoder
from dctgpt.model import GPT
from tokenizer.base import Rewind, Tokenizer, TokenSequence


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 1.0   # 0 = greedy
    top_k: int = 0             # 0 = off
    top_p: float = 1.0         # 1 = off
    seed: int = 1337
    max_new_tokens: int = 0    # 0 = until every stream has ended
    use_cache: bool = True     # False: recompute the window at every token (the slow reference)
    bounded: bool = True       # keep samples within what 8-bit pixels give (Tokenizer.grammar)

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
    if cfg.temperature != 1:
        logits = logits / cfg.temperature
    if cfg.top_k:
        kth = torch.topk(logits, min(cfg.top_k, logits.size(-1)), dim=-1).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if cfg.top_p == 1:
        return draw(probs, generator)
    sorted_p, order = probs.sort(dim=-1, descending=True)
    drop = sorted_p.cumsum(dim=-1) - sorted_p >= cfg.top_p  # mass before a token already >= p
    return order.gather(-1, draw(sorted_p.masked_fill(drop, 0.0), generator)[:, None]).squeeze(-1)


def draw(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One id per row of probs (B, V), unnormalized, by inverting the cumulative sum: the first id
    whose cumulative sum reaches u, u uniform in (0, total]. A few calls, where torch.multinomial
    costs several times more at these sizes. A zero entry is never drawn: its cumulative sum
    equals its left neighbour's, which reached u first (u > 0 covers the leading ones)."""
    cdf = probs.cumsum(dim=-1)
    u = (1 - torch.rand(probs.size(0), 1, generator=generator, device=probs.device)) * cdf[:, -1:]
    return torch.searchsorted(cdf, u).squeeze(-1)


@torch.no_grad()
def generate(model: GPT, tokenizer: Tokenizer, prompt: TokenSequence, num_samples: int,
             cfg: SamplingConfig, progress: bool = False, stats: dict | None = None) -> list[TokenSequence]:
    """Continue `prompt` (e.g. `tokenizer.header(h, w)`) into `num_samples` streams, sampled in one batch.

    Returns prompt + generated tokens per stream; a stream still open after `max_new_tokens` steps
    is returned unfinished (its grammar's `done` is False). `stats`, if given, receives `steps`,
    `rewinds` (times a bounded grammar took tokens back to draw them again), `taken_back` (those
    tokens) and `grammars` (the cursors, as they ended).
    """
    if len(prompt) == 0:
        raise ValueError("generate: empty prompt (start with at least the BOS token)")
    model.eval()
    device = next(model.parameters()).device
    B = num_samples
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    grammars = [tokenizer.grammar(prompt, bounded=cfg.bounded) for _ in range(B)]
    cursors, prompt_context = _context_cursors(model, tokenizer, prompt, B)
    s = _Streams(prompt, B, tokenizer.pad_id, cfg.max_new_tokens, prompt_context)
    if cfg.use_cache:
        decoder = Decoder(model, B)
        ids = torch.from_numpy(prompt.ids.astype(np.int64)).repeat(B, 1).to(device)          # (B, T)
        pos = torch.from_numpy(prompt.positions.astype(np.int64)).repeat(B, 1, 1).to(device)  # (B, T, 5)
        ctx = torch.from_numpy(prompt_context).repeat(B, 1, 1).to(device)                     # (B, T, n)
        logits = decoder.prefill(ids, pos, ctx)
        s.first = decoder.t - 1       # ring index of the prompt's last token
    else:
        decoder = None
        logits = _recompute(model, [s.sequence(b) for b in range(B)], [s.context(b) for b in range(B)])
    masks = MaskTable(device)
    rows = list(range(B))           # the stream in each row of the batch (finished ones until dropped)
    row_of = {b: b for b in rows}
    live = [b for b in rows if not grammars[b].done]
    bar = tqdm(total=cfg.max_new_tokens or None, disable=not progress, unit="tok", desc="sampling")
    while live and (cfg.max_new_tokens == 0 or s.step < cfg.max_new_tokens):
        if len(live) < len(rows):  # the logits of the streams still open
            logits = logits[torch.tensor([row_of[b] for b in live], device=device)]
        allowed = masks([grammars[b].allowed() for b in live])                    # (live, V)
        for b, token in zip(live, sample_next(logits, allowed, cfg, gen).tolist()):
            try:
                position = grammars[b].push(token)
                s.keep(b, token, position, cursors[b].push(token, position) if cursors else None)
            except Rewind as r:  # the grammar took this token and r.tokens - 1 before it back
                s.rewinds, s.taken_back = s.rewinds + 1, s.taken_back + r.tokens
                if cursors:
                    cursors[b].take_back(r.tokens - 1)
                for index in s.take_back(b, r.tokens - 1):
                    if decoder is not None:
                        decoder.forget(row_of[b], index)
        live = [b for b in live if not grammars[b].done]
        s.step += 1
        bar.update(1)
        if not live:
            break
        if decoder is None:
            rows, row_of = live, {b: i for i, b in enumerate(live)}
            logits = _recompute(model, [s.sequence(b) for b in live], [s.context(b) for b in live])
            continue
        if len(live) <= 0.75 * len(rows):  # drop finished streams from the batch (a copy of the cache)
            decoder.keep([row_of[b] for b in live])
            rows, row_of = live, {b: i for i, b in enumerate(live)}
        logits = decoder.step(s.ids[rows, s.step - 1], s.pos[rows, s.step - 1], s.ctx[rows, s.step - 1])
    bar.close()
    if stats is not None:
        stats.update(steps=s.step, rewinds=s.rewinds, taken_back=s.taken_back, grammars=grammars)
    return [s.sequence(b) for b in range(B)]


def _context_cursors(model: GPT, tokenizer: Tokenizer, prompt: TokenSequence,
                     B: int) -> tuple[list | None, np.ndarray]:
    """For a model with context features: a cursor per stream (Tokenizer.context_cursor) past the
    prompt, and the prompt's rows (T, n_context); else None and (T, 0)."""
    c = model.config
    if not c.n_context:
        return None, np.zeros((len(prompt), 0), np.int64)
    if (tokenizer.n_context, tokenizer.context_buckets) != (c.n_context, c.context_buckets):
        raise ValueError(f"generate: the model takes {c.n_context} context features in "
                         f"{c.context_buckets} buckets, the {tokenizer.name!r} tokenizer gives "
                         f"{tokenizer.n_context} in {tokenizer.context_buckets}")
    cursor = tokenizer.context_cursor(prompt)
    return [cursor.copy() for _ in range(B)], np.stack(cursor.rows).astype(np.int64)


class _Streams:
    """What each stream fed the model at every step, and which of those steps it keeps.

    `ids`, `pos` (B, steps), `ctx` (B, steps, n_context): the token each stream fed at each step
    (PAD once it ended), its position and context rows; `kept[b]`:
    the steps whose tokens are stream b's output, in order. When the grammar takes tokens back,
    they leave `kept`, and the token before them is fed again (its copy in the cache is dropped
    too), so the next logits are those for the place the grammar went back to.
    """

    def __init__(self, prompt: TokenSequence, B: int, pad_id: int, max_new_tokens: int,
                 prompt_context: np.ndarray | None = None):
        self.prompt, self.pad_id, self.step = prompt, pad_id, 0
        self.prompt_context = np.zeros((len(prompt), 0), np.int64) if prompt_context is None \
            else prompt_context
        self.rewinds = self.taken_back = 0
        self.ids = np.full((B, max_new_tokens or 1024), pad_id, np.int64)  # grown by doubling
        self.pos = np.zeros((B, self.ids.shape[1], 5), np.int64)
        self.ctx = np.zeros((B, self.ids.shape[1], self.prompt_context.shape[1]), np.int64)
        self.kept: list[list[int]] = [[] for _ in range(B)]
        self.first = 0                      # ring index of the prompt's last token (with a cache)
        self.prompt_copy = [-1] * B         # per stream: step that fed the prompt's last token again

    def index(self, step: int) -> int:
        """Ring index (Decoder) of the token fed at `step`."""
        return self.first + 1 + step

    def keep(self, b: int, token: int, position: np.ndarray, context: np.ndarray | None = None) -> None:
        if self.step == self.ids.shape[1]:
            self.ids = np.concatenate([self.ids, np.full_like(self.ids, self.pad_id)], 1)
            self.pos = np.concatenate([self.pos, np.zeros_like(self.pos)], 1)
            self.ctx = np.concatenate([self.ctx, np.zeros_like(self.ctx)], 1)
        self.ids[b, self.step], self.pos[b, self.step] = token, position
        if context is not None:
            self.ctx[b, self.step] = context
        self.kept[b].append(self.step)

    def take_back(self, b: int, n: int) -> list[int]:
        """Drop stream b's last n kept tokens and feed the one before them again at this step;
        returns the ring indices of the dropped copies."""
        kept = self.kept[b]
        dropped = [self.index(t) for t in kept[len(kept) - n:]] if n else []
        del kept[len(kept) - n:]
        if kept:                            # the token before them: fed again, its old copy dropped
            before = kept.pop()
            dropped.append(self.index(before))
            self.keep(b, int(self.ids[b, before]), self.pos[b, before].copy(), self.ctx[b, before].copy())
        else:                               # it is the prompt's last token
            copy = self.prompt_copy[b]
            dropped.append(self.first if copy < 0 else self.index(copy))
            self.prompt_copy[b] = self.step
            self.keep(b, int(self.prompt.ids[-1]), self.prompt.positions[-1], self.prompt_context[-1])
            kept.pop()                      # fed, but part of the prompt, not of the output
        return dropped

    def sequence(self, b: int) -> TokenSequence:
        """The prompt and stream b's kept tokens."""
        k = self.kept[b]
        return TokenSequence.concat([self.prompt, TokenSequence(self.ids[b, k], self.pos[b, k])])

    def context(self, b: int) -> np.ndarray:
        """The context rows (T, n_context) of `sequence(b)`."""
        return np.concatenate([self.prompt_context, self.ctx[b, self.kept[b]]])


class MaskTable:
    """Grammar masks (numpy, per stream) -> one (B, vocab) bool tensor on `device`.

    A read-only mask is a grammar's cached table (tokenizer.jpeg.grammar): it is moved to the
    device once and found again by identity (the table keeps it alive, so its id stays unique).
    """

    def __init__(self, device: torch.device | str):
        self.device = device
        self.seen: dict[int, tuple[np.ndarray, torch.Tensor]] = {}

    def __call__(self, masks: list[np.ndarray]) -> torch.Tensor:
        rows = []
        for m in masks:
            hit = self.seen.get(id(m))
            if hit is None or hit[0] is not m:
                t = torch.from_numpy(np.array(m)).to(self.device)
                if m.flags.writeable:  # may change after this step: not cached
                    rows.append(t)
                    continue
                hit = self.seen[id(m)] = (m, t)
            rows.append(hit[1])
        return torch.stack(rows) if len(rows) > 1 else rows[0][None]


def _recompute(model: GPT, seqs: list[TokenSequence], contexts: list[np.ndarray]) -> torch.Tensor:
    """The reference without a cache: each stream's last `block_size` tokens (and their context
    rows) from scratch -> (B, V). One batch while the streams are as long as each other, else one
    pass per stream."""
    W = model.config.block_size
    device = next(model.parameters()).device
    ids = [torch.from_numpy(q.ids[-W:].astype(np.int64)) for q in seqs]
    pos = [torch.from_numpy(q.positions[-W:].astype(np.int64)) for q in seqs]
    ctx = [torch.from_numpy(c[-W:]) for c in contexts]
    if len({len(i) for i in ids}) == 1:
        return model(torch.stack(ids).to(device), torch.stack(pos).to(device),
                     context=torch.stack(ctx).to(device))[0][:, -1]
    return torch.cat([model(i[None].to(device), p[None].to(device), context=c[None].to(device))[0][:, -1]
                      for i, p, c in zip(ids, pos, ctx)])
