"""Training speed: tokens/s and model FLOPs utilization against this machine's measured matmul peak.

    python benchmarks/train_speed.py configs/quickstart.toml [--iters 10] [--vocab_size=1106]

Builds the recipe's model, times forward + backward + AdamW steps on random rows of the recipe's
batch_size x block_size, and reports tokens/s and MFU = achieved model FLOPs / the FLOP rate of a
large dense float32 matmul measured on the same threads (the baseline), with the output layer's
share of the FLOPs.
"""

from __future__ import annotations

import argparse
import time

import torch

from dctgpt.config import TrainConfig
from dctgpt.model import GPT
from tokenizer.cli import parse_config


def matmul_peak(n: int = 1024, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", nargs="*", help="recipe files and --key=value overrides for TrainConfig")
    ap.add_argument("--iters", type=int, default=10)
    a, rest = ap.parse_known_args()
    cfg = parse_config(TrainConfig, a.config + rest)   # --vocab_size=N sets the model's vocabulary
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(0)
    model = GPT(cfg.model)
    vocab_size = model.config.vocab_size
    opt = model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), "cpu")
    B, T = cfg.batch_size, cfg.model.block_size
    idx = torch.randint(0, vocab_size, (B, T))
    pos = torch.zeros(B, T, 5, dtype=torch.long)
    pos[..., 1] = 1
    pos[..., 2] = torch.arange(T) // 80 % cfg.model.max_block_row
    pos[..., 3] = torch.arange(T) // 10 % 8
    pos[..., 4] = torch.arange(T) % 10 * 6
    doc = (torch.arange(T) // 700).expand(B, T)  # packed rows of ~700-token images, as in training

    def step() -> None:
        _, loss = model(idx, pos, torch.roll(idx, -1, 1), doc=doc)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    t0 = time.perf_counter()
    for _ in range(a.iters):
        step()
    dt = (time.perf_counter() - t0) / a.iters
    tok_s = B * T / dt
    flops = model.flops_per_token(T)
    head = 6 * vocab_size * cfg.model.n_embd
    peak = matmul_peak()
    print(f"model: {model.get_num_params() / 1e6:.2f}M params, vocab {vocab_size}, rows {B}x{T}, "
          f"{torch.get_num_threads()} threads")
    print(f"train: {tok_s:,.0f} tokens/s, {dt * 1000:.0f} ms/iter, {flops / 1e6:.1f} MFLOP/token "
          f"(output layer {head / flops:.0%})")
    print(f"matmul peak (baseline): {peak / 1e9:.1f} GFLOP/s; MFU {flops * tok_s / peak:.1%}")


if __name__ == "__main__":
    main()
