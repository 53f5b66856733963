"""Sampling speed: KV cache against recomputing the whole prefix at every token.

    python benchmarks/sampling.py [--tokens 1000] [--ckpt out/quickstart] [--n_layer 4 --n_embd 128]

Generates `--tokens` tokens one at a time from one BOS-like token, greedily, twice on the same model:
with the sliding KV cache and by re-running the model over the whole prefix. Both follow the same
token path (greedy, same logits), so their per-step logits are compared too (must agree to 1e-4).
Positions follow a synthetic raster of 8x8 blocks, 10 tokens per block. Measures the model only; the
grammar's per-token cost (the same in both paths) is left out.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dctgpt.model import GPT, GPTConfig, KVCache  # noqa: E402


def synthetic_position(t: int, width_blocks: int = 32) -> torch.Tensor:
    block, k = divmod(t, 10)
    return torch.tensor([0, 1, block // width_blocks, block % width_blocks, min(6 * k, 64)])


@torch.no_grad()
def run(model: GPT, n_tokens: int, use_cache: bool) -> tuple[float, torch.Tensor]:
    """Greedy decoding of n_tokens; returns (seconds, logits (n_tokens, vocab))."""
    ids = torch.zeros(1, 1, dtype=torch.long)
    pos = synthetic_position(0).view(1, 1, 5)
    cache = KVCache(model.config, 1) if use_cache else None
    out = []
    t0 = time.perf_counter()
    x, p = ids, pos
    for t in range(n_tokens):
        if cache is not None:
            logits = model(x, p, cache=cache)[0][:, -1]
        else:
            logits = model(ids, pos)[0][:, -1]
        out.append(logits[0])
        x = logits.argmax(-1, keepdim=True)
        p = synthetic_position(t + 1).view(1, 1, 5)
        ids, pos = torch.cat([ids, x], 1), torch.cat([pos, p], 1)
    return time.perf_counter() - t0, torch.stack(out)


def main() -> None:
    ap = argparse.ArgumentParser(description="KV cache vs recompute sampling speed")
    ap.add_argument("--tokens", type=int, default=1000)
    ap.add_argument("--ckpt", default="", help="use this checkpoint's model (else a fresh one)")
    ap.add_argument("--n_layer", type=int, default=4)
    ap.add_argument("--n_head", type=int, default=4)
    ap.add_argument("--n_embd", type=int, default=128)
    ap.add_argument("--vocab_size", type=int, default=1344)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.ckpt:
        from dctgpt import checkpoint
        model = checkpoint.load(a.ckpt).model
    else:
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=a.vocab_size, block_size=a.tokens + 1, n_layer=a.n_layer,
                              n_head=a.n_head, n_embd=a.n_embd))
    model.eval()
    if a.tokens > model.config.block_size:
        raise ValueError(f"--tokens={a.tokens} exceeds the model's block_size {model.config.block_size}")
    run(model, 20, True)  # warm up
    t_cache, l_cache = run(model, a.tokens, True)
    t_full, l_full = run(model, a.tokens, False)
    diff = (l_cache - l_full).abs().max().item()
    print(f"model: {model.get_num_params() / 1e6:.2f}M params, {a.tokens} tokens, "
          f"{torch.get_num_threads()} threads")
    print(f"KV cache : {a.tokens / t_cache:9.1f} tokens/s ({t_cache:.2f} s)")
    print(f"recompute: {a.tokens / t_full:9.1f} tokens/s ({t_full:.2f} s)")
    print(f"speed-up : {t_full / t_cache:.1f}x   max |logit difference| {diff:.2e} "
          f"({'OK' if diff < 1e-4 else 'ABOVE 1e-4'})")


if __name__ == "__main__":
    main()
