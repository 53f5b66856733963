"""Sampling speed: tokens per second of `generate`, one stream and a batch, against the old step.

    nice python benchmarks/sampling.py [--tokens 1000] [--ckpt out/quickstart] [--batch 16]

Three measurements in one run, on the quickstart-size model (4 layers, 128 wide, 768-token window;
a fresh one, or the checkpoint's with --ckpt):

1. The model step alone, greedy over `--tokens` tokens of synthetic positions: `GPT.forward` with a
   `KVCache` (the baseline: what sampling ran before `Decoder`), `Decoder.step`, and with
   --recompute the whole window re-run per token. Their logits must agree (to 1e-4; a recompute
   within the first window).
2. `generate` end to end (grammar, masks, sampling, model), `--tokens` steps of a 256x256 image
   (longer than the steps, so no stream ends): one stream, then `--batch` streams. Tokens/s counts
   every token sampled; "kept" leaves out those a bounded grammar took back to draw again. The gain
   from batching is (tokens/s of the batch) / (tokens/s of one stream); `--batch` is the ideal.
   A fresh model samples near-uniform noise, whose blocks a bounded grammar keeps drawing again,
   so without --ckpt the grammar is unbounded; with --ckpt it is bounded, as sample.py runs it.
3. With CUDA: `generate` on the GPU recipe's model (configs/gpu_256.toml: 12 layers, 768 wide).
4. Context features (GPTConfig.context): the tokenizer's ContextCursor alone, per token over a real
   256x256 photo's stream (embedded corpus), next to the Decoder step of part 1; and `generate` of
   a fresh model of the same shape with context features against one without (one stream, a batch).

Each figure is printed as wall-clock tokens/s and as tokens per CPU-second of this process (on a
shared machine the second is the steadier; on a quiet one they agree).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dctgpt.decoder import Decoder  # noqa: E402
from dctgpt.generate import SamplingConfig, generate  # noqa: E402
from dctgpt.model import GPT, GPTConfig, KVCache  # noqa: E402
from tokenizer import JpegDctConfig, JpegDctTokenizer  # noqa: E402


class Clock:
    """Wall and process CPU seconds since start."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def stop(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def rate(n: int, seconds: tuple[float, float]) -> str:
    return f"{n / seconds[0]:8.0f} tokens/s ({n / seconds[1]:6.0f} per CPU-s)"


def synthetic_position(t: int, width_blocks: int = 32) -> np.ndarray:
    block, k = divmod(t, 10)
    return np.array([0, 1, block // width_blocks, block % width_blocks, min(6 * k, 64)])


@torch.no_grad()
def model_step(model: GPT, n_tokens: int, how: str) -> tuple[tuple[float, float], torch.Tensor]:
    """Greedy decoding of n_tokens one at a time; returns (seconds, logits (n_tokens, vocab))."""
    ids = np.zeros(1, np.int64)
    pos = synthetic_position(0)[None]
    cache = KVCache(model.config, 1) if how == "kvcache" else None
    decoder = Decoder(model, 1) if how == "decoder" else None
    all_ids, all_pos, out = torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, 0, 5, dtype=torch.long), []
    clock = Clock()
    for t in range(n_tokens):
        x, p = torch.from_numpy(ids)[None], torch.from_numpy(pos)[None]
        if decoder is not None:
            logits = decoder.step(ids, pos)
        elif cache is not None:
            logits = model(x, p, cache=cache)[0][:, -1]
        else:
            all_ids, all_pos = torch.cat([all_ids, x], 1), torch.cat([all_pos, p], 1)
            W = model.config.block_size
            logits = model(all_ids[:, -W:], all_pos[:, -W:])[0][:, -1]
        out.append(logits[0])
        ids = logits.argmax(-1).numpy()
        pos = synthetic_position(t + 1)[None]
    return clock.stop(), torch.stack(out)


def sample_rate(model: GPT, tok: JpegDctTokenizer, n_tokens: int, batch: int,
                bounded: bool) -> tuple[int, int, tuple[float, float]]:
    """`generate` for n_tokens steps of `batch` streams of a 256x256 image: (tokens sampled, tokens
    kept, seconds); a bounded grammar takes some back to draw them again."""
    cfg = SamplingConfig(max_new_tokens=n_tokens, bounded=bounded)
    prompt = tok.header(256, 256)
    generate(model, tok, prompt, batch, SamplingConfig(max_new_tokens=20, bounded=bounded))  # warm up
    stats: dict = {}
    clock = Clock()
    out = generate(model, tok, prompt, batch, cfg, stats=stats)
    seconds = clock.stop()
    kept = sum(len(s) - len(prompt) for s in out)
    return kept + stats["taken_back"], kept, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description="sampling speed: generate, one stream and a batch")
    ap.add_argument("--tokens", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--ckpt", default="", help="use this checkpoint's model and tokenizer (else a fresh one)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: tiny ops only wait for more)")
    ap.add_argument("--recompute", action="store_true", help="also time re-running the window per token")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.ckpt:
        from dctgpt import checkpoint
        ck = checkpoint.load(a.ckpt)
        model, tok = ck.model, ck.tokenizer
    else:
        tok = JpegDctTokenizer(JpegDctConfig())
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=768, n_layer=4, n_head=4, n_embd=128))
    model.eval()
    print(f"model: {model.get_num_params() / 1e6:.2f}M params, window {model.config.block_size}, "
          f"{a.tokens} tokens, {torch.get_num_threads()} threads"
          f"{', checkpoint ' + a.ckpt if a.ckpt else ', fresh weights'}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")

    model_step(model, 20, "decoder")  # warm up
    base, ref = model_step(model, a.tokens, "kvcache")
    fast, got = model_step(model, a.tokens, "decoder")
    diff = (got - ref).abs().max().item()
    print("1. model step alone, one stream")
    print(f"   GPT.forward + KVCache (baseline) {rate(a.tokens, base)}")
    ok = "OK" if diff < 1e-4 else "ABOVE 1e-4"
    print(f"   Decoder.step                     {rate(a.tokens, fast)}   "
          f"{base[0] / fast[0]:.1f}x   max |logit difference| {diff:.1e} ({ok})")
    if a.recompute:  # (past the window a multi-layer cache is close to a recompute, not equal)
        full, rec = model_step(model, a.tokens, "recompute")
        d = (rec - ref)[:model.config.block_size].abs().max().item()
        print(f"   recompute the window per token   {rate(a.tokens, full)}   "
              f"{full[0] / fast[0]:.0f}x slower than Decoder   max |logit difference| {d:.1e}")

    bounded = bool(a.ckpt)
    print(f"2. generate (grammar {'bounded' if bounded else 'unbounded'}), 256x256 prompt")
    n1, k1, s1 = sample_rate(model, tok, a.tokens, 1, bounded)
    nb, kb, sb = sample_rate(model, tok, a.tokens, a.batch, bounded)
    print(f"   1 stream   {rate(n1, s1)}   target >= 2,000 tokens/s: "
          f"{'met' if n1 / s1[0] >= 2000 else 'NOT met'} (wall); kept {k1 / s1[0]:.0f} tokens/s")
    print(f"   {a.batch} streams {rate(nb, sb)}   gain {(nb / sb[0]) / (n1 / s1[0]):.1f}x wall, "
          f"{(nb / sb[1]) / (n1 / s1[1]):.1f}x CPU (ideal {a.batch}x); kept {kb / sb[0]:.0f} tokens/s")

    if torch.cuda.is_available():
        gpu = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=4096, n_layer=12, n_head=12,
                            n_embd=768)).to("cuda", torch.bfloat16).eval()
        print(f"3. GPU recipe model ({gpu.get_num_params() / 1e6:.0f}M params, bf16) on "
              f"{torch.cuda.get_device_name()}")
        for b in (1, a.batch):
            n, _, s = sample_rate(gpu, tok, a.tokens, b, False)
            print(f"   {b:2d} stream(s) {rate(n, s)}")
    else:
        print("3. GPU recipe model: no CUDA here, not measured")
    context_cost(model, a.tokens, a.batch, fast[1] / a.tokens)


def context_cost(model: GPT, n_tokens: int, batch: int, step_cpu: float) -> None:
    """Part 4: the context cursor per token, and generate with and without context features."""
    from dataclasses import replace

    from tokenizer.corpus.embedded import crops

    tok = JpegDctTokenizer(JpegDctConfig(size=(256, 256)))
    seq = tok.encode(next(crops("val", 1, (256, 256))).pixels)
    clock = Clock()
    cursor = tok.context_cursor(seq)      # every token pushed, one at a time
    cpu = clock.stop()[1] / len(seq)
    assert np.array_equal(np.stack(cursor.rows), tok.context(seq))
    print(f"4. context features: ContextCursor.push {cpu * 1e6:.0f} us per token (CPU) over a 256x256 photo "
          f"({len(seq)} tokens), {cpu / step_cpu:.2f}x the Decoder step of part 1")
    cfg = model.config
    pair = {}
    for on in (False, True):
        torch.manual_seed(0)
        m = GPT(replace(cfg, vocab_size=tok.vocab_size, context=on, n_context=tok.n_context * on,
                        context_buckets=tok.context_buckets * on))
        pair[on] = [sample_rate(m.eval(), tok, n_tokens, b, False) for b in (1, batch)]
    for i, b in enumerate((1, batch)):
        (n0, _, s0), (n1, _, s1) = pair[False][i], pair[True][i]
        print(f"   generate, {b:2d} stream(s): without {rate(n0, s0)}, with {rate(n1, s1)}: "
              f"{(n0 / s0[1]) / (n1 / s1[1]):.2f}x the CPU time per token")


if __name__ == "__main__":
    main()
