"""Train the GPT on a tokenized corpus (nanoGPT-style, but configured by a frozen dataclass).

    python train.py configs/quickstart.json --max_iters=500
    torchrun --standalone --nproc_per_node=2 train.py configs/quickstart.json   # DDP (gloo on CPU)

Recipes live in configs/*.json; `--key=value` overrides any TrainConfig field. The run writes
`<out_dir>/ckpt/` (see dctgpt/checkpoint.py), `log.csv` and `loss.png`; `--init_from=resume`
continues it exactly where the checkpoint left off.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from dctgpt import checkpoint
from dctgpt.config import parse_config, to_dict
from dctgpt.data import Packer
from dctgpt.logbook import Logbook
from dctgpt.model import GPT, GPTConfig
from tokenizer.corpus.shards import Corpus

log = logging.getLogger("dctgpt.train")
EVAL_SEED = 1 << 30  # eval rows come from (seed, EVAL_SEED, k): the same rows at every evaluation


@dataclass(frozen=True)
class TrainConfig:
    # I/O
    out_dir: str = "out"
    data_dir: str = "data/embedded64"
    prepare_args: str = ""     # no corpus in data_dir: python -m tokenizer.corpus.prepare ARGS --out data_dir
    init_from: str = "scratch"  # "scratch" | "resume"
    eval_interval: int = 100
    eval_iters: int = 10
    eval_only: bool = False
    log_interval: int = 1
    always_save_checkpoint: bool = True
    seed: int = 1337
    # data
    batch_size: int = 8        # rows per micro-step per process
    block_size: int = 1024
    gradient_accumulation_steps: int = 1   # in total, split across DDP processes
    # model
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False
    pos_emb: str = "rope2d"
    attention: str = "sdpa"
    max_block_row: int = 128
    max_block_col: int = 128
    rope_base: float = 100.0
    # AdamW and the learning-rate schedule (linear warmup, cosine decay to min_lr)
    learning_rate: float = 1e-3
    max_iters: int = 1000
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0     # 0 = off
    decay_lr: bool = True
    warmup_iters: int = 100
    lr_decay_iters: int = 0    # 0 = max_iters
    min_lr: float = 1e-4
    # system
    device: str = "auto"       # "auto" | "cpu" | "cuda" | "cuda:N"
    dtype: str = "float32"     # "float32" | "bfloat16" (autocast)
    compile: bool = False
    num_threads: int = 0       # torch CPU threads; 0 = torch's default

    def __post_init__(self) -> None:
        if self.init_from not in ("scratch", "resume"):
            raise ValueError(f"init_from={self.init_from!r}: expected 'scratch' or 'resume'")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype={self.dtype!r}: expected 'float32' or 'bfloat16'")
        for name in ("eval_interval", "eval_iters", "log_interval", "batch_size", "block_size",
                     "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: expected >= 1")
        for name in ("max_iters", "warmup_iters", "lr_decay_iters", "num_threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)}: expected >= 0")

    def model_config(self, vocab_size: int, n_frame: int = 1) -> GPTConfig:
        return GPTConfig(vocab_size=vocab_size, n_frame=n_frame, block_size=self.block_size,
                         n_layer=self.n_layer,
                         n_head=self.n_head, n_embd=self.n_embd, dropout=self.dropout, bias=self.bias,
                         pos_emb=self.pos_emb, attention=self.attention, max_block_row=self.max_block_row,
                         max_block_col=self.max_block_col, rope_base=self.rope_base)


@dataclass
class TrainResult:
    iter_num: int
    train_loss: dict[int, float] = field(default_factory=dict)  # iteration -> mean loss (nats/token)
    val_loss: dict[int, float] = field(default_factory=dict)
    val_bits_per_image: dict[int, float] = field(default_factory=dict)
    out_dir: str = ""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


def get_lr(it: int, cfg: TrainConfig) -> float:
    if not cfg.decay_lr:
        return cfg.learning_rate
    decay_iters = cfg.lr_decay_iters or cfg.max_iters
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it >= decay_iters:
        return cfg.min_lr
    ratio = (it - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.learning_rate - cfg.min_lr)


def ensure_corpus(cfg: TrainConfig) -> Corpus:
    """The corpus in data_dir, tokenized first through tokenizer.corpus.prepare if it is missing."""
    if not (Path(cfg.data_dir) / "corpus.json").is_file():
        if not cfg.prepare_args:
            raise FileNotFoundError(f"{cfg.data_dir}: no corpus.json, and no prepare_args to make one "
                                    f"(run python -m tokenizer.corpus.prepare ... --out {cfg.data_dir})")
        cmd = [sys.executable, "-m", "tokenizer.corpus.prepare", *shlex.split(cfg.prepare_args),
               "--out", cfg.data_dir]
        log.info("tokenizing the corpus: %s", " ".join(cmd))
        subprocess.run(cmd, check=True)
    return Corpus(cfg.data_dir)


@torch.no_grad()
def evaluate_loss(model: GPT, packer: Packer, cfg: TrainConfig, ctx, device) -> float:
    """Val loss in nats per predicted token over the fixed eval rows."""
    model.eval()
    total, count = 0.0, 0
    for k in range(cfg.eval_iters):
        b = packer.batch(cfg.batch_size, [cfg.seed, EVAL_SEED, k]).to(device)
        with ctx:
            logits, _ = model(b.idx, b.positions, doc=b.doc)
        total += F.cross_entropy(logits.flatten(0, 1).float(), b.targets.flatten(),
                                 ignore_index=model.config.ignore_index, reduction="sum").item()
        count += int((b.targets != model.config.ignore_index).sum())
    model.train()
    return total / max(count, 1)


def main(cfg: TrainConfig) -> TrainResult:
    ddp = int(os.environ.get("RANK", -1)) != -1
    rank, world, local_rank = 0, 1, 0
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if ddp:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if device.startswith("cuda"):
            device = f"cuda:{local_rank}"
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    try:
        return _train(cfg, device, rank, world, ddp)
    finally:
        if ddp:
            dist.destroy_process_group()


def _train(cfg: TrainConfig, device: str, rank: int, world: int, ddp: bool) -> TrainResult:
    master = rank == 0
    if cfg.gradient_accumulation_steps % world:
        raise ValueError(f"gradient_accumulation_steps={cfg.gradient_accumulation_steps} is not "
                         f"divisible by the {world} DDP processes")
    gas = cfg.gradient_accumulation_steps // world
    out = Path(cfg.out_dir)
    if master:
        out.mkdir(parents=True, exist_ok=True)
        ensure_corpus(cfg)
    if ddp:
        dist.barrier()
    corpus = Corpus(cfg.data_dir)
    tok = corpus.tokenizer()
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    ctx = torch.autocast(device_type, dtype=torch.bfloat16) if cfg.dtype == "bfloat16" else nullcontext()

    torch.manual_seed(cfg.seed)
    # a video tokenizer says how many frames its positions span; images have one
    model = GPT(cfg.model_config(tok.vocab_size, tok.n_frame)).to(device)
    optimizer = model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2),
                                           device_type)
    iter_num, best_val, elapsed_before = 0, float("inf"), 0.0
    if cfg.init_from == "resume":
        ck = checkpoint.resolve(out)
        resumed = checkpoint.load(ck, device)
        if resumed.model.config != model.config:
            raise ValueError(f"{ck}: checkpoint model {resumed.model.config} differs from the "
                             f"configured {model.config}")
        model.load_state_dict(resumed.model.state_dict())
        checkpoint.load_optimizer(ck, optimizer)
        checkpoint.load_rng(ck)
        iter_num, best_val = resumed.meta["iter_num"], resumed.meta["best_val_loss"]
        elapsed_before = resumed.meta.get("elapsed_s", 0.0)
        log.info("resuming from %s at iteration %d", ck, iter_num)
    start_iter = iter_num
    raw = model
    if cfg.compile:
        model = torch.compile(model)
    if ddp:
        model = DDP(model, device_ids=[int(device.split(":")[1])] if device_type == "cuda" else None)

    train_packer = Packer(corpus.split("train"), cfg.block_size, tok.pad_id, raw.config.ignore_index)
    val_packer = Packer(corpus.split("val"), cfg.block_size, tok.pad_id, raw.config.ignore_index)
    book = Logbook(out, start_iter) if master else None
    result = TrainResult(iter_num=iter_num, out_dir=str(out))
    tokens_per_iter = cfg.gradient_accumulation_steps * cfg.batch_size * cfg.block_size
    if master:
        log.info("model: %.2fM parameters, vocab %d; %d tokens per iteration (%d processes)",
                 raw.get_num_params() / 1e6, tok.vocab_size, tokens_per_iter, world)
    t_start = time.time() - elapsed_before  # elapsed_s counts the whole run across resumes

    def eval_and_save(it: int) -> None:
        nonlocal best_val
        val = evaluate_loss(raw, val_packer, cfg, ctx, device)
        bits = val * (val_packer.mean_tokens_per_image - 1) / math.log(2)
        result.val_loss[it], result.val_bits_per_image[it] = val, bits
        if not master:
            return
        log.info("iter %d: val loss %.4f nats/token, ~%.0f bits/image", it, val, bits)
        book.append(iter=it, val_loss=f"{val:.6f}", val_bits_per_image=f"{bits:.1f}",
                    elapsed_s=f"{time.time() - t_start:.1f}")
        if val < best_val or cfg.always_save_checkpoint:
            best_val = min(best_val, val)
            checkpoint.save(out, raw, optimizer, tok, {
                "iter_num": it, "best_val_loss": best_val, "train_config": to_dict(cfg),
                "data_dir": str(cfg.data_dir), "val_bits_per_image": bits,
                "elapsed_s": time.time() - t_start})
        book.plot()

    if cfg.eval_only:
        eval_and_save(iter_num)
        return result
    model.train()
    while iter_num < cfg.max_iters:
        if iter_num % cfg.eval_interval == 0 and not (iter_num == start_iter and cfg.init_from == "resume"):
            eval_and_save(iter_num)
        t0 = time.time()
        lr = get_lr(iter_num, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=device)
        for micro in range(gas):
            batch = train_packer.batch(cfg.batch_size, [cfg.seed, iter_num, rank * gas + micro]).to(device)
            sync = nullcontext() if (not ddp or micro == gas - 1) else model.no_sync()
            with sync, ctx:
                _, loss = model(batch.idx, batch.positions, batch.targets, doc=batch.doc)
            (loss / gas).backward()
            loss_sum += loss.detach()
        if ddp:
            dist.all_reduce(loss_sum)
        train_loss = loss_sum.item() / cfg.gradient_accumulation_steps
        if not math.isfinite(train_loss):
            msg = (f"iter {iter_num}: loss is {train_loss}; stopping. The last good checkpoint is kept "
                   f"in {out / 'ckpt'} (try a lower learning_rate or grad_clip)")
            log.error(msg)
            raise TrainingDiverged(msg)
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        dt = time.time() - t0
        result.train_loss[iter_num] = train_loss
        if master:
            book.append(iter=iter_num, train_loss=f"{train_loss:.6f}", lr=f"{lr:.3e}",
                        tokens=(iter_num + 1) * tokens_per_iter, elapsed_s=f"{time.time() - t_start:.1f}")
            if iter_num % cfg.log_interval == 0:
                log.info("iter %d: loss %.4f, lr %.2e, %.0f ms, %.0f tok/s", iter_num, train_loss, lr,
                         dt * 1000, tokens_per_iter / dt)
        iter_num += 1
        result.iter_num = iter_num
    if iter_num != start_iter or cfg.init_from != "resume":
        eval_and_save(iter_num)
    return result


def cli(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = parse_config(TrainConfig, sys.argv[1:] if argv is None else argv)
    if int(os.environ.get("RANK", 0)) != 0:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        main(cfg)
    except TrainingDiverged as e:
        sys.exit(str(e))


if __name__ == "__main__":
    cli()
