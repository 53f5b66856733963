"""Train the GPT on a tokenized corpus (nanoGPT-style, but configured by a frozen dataclass).

    python train.py configs/quickstart.toml --max_iters=500 --n_layer=2
    torchrun --standalone --nproc_per_node=2 train.py configs/quickstart.toml   # DDP (gloo on CPU)

Recipes are TOML files in configs/; `--key=value` overrides any key of TrainConfig (dctgpt/config.py;
`--help` lists them). The run writes `<out_dir>/ckpt/` (see dctgpt/checkpoint.py), `log.csv` and
`loss.png`; `--init_from=resume` continues it exactly where the checkpoint left off.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from dctgpt import checkpoint
from dctgpt.config import TrainConfig
from dctgpt.data import Batch, Packer
from dctgpt.logbook import Logbook
from dctgpt.model import GPT
from tokenizer.cli import run
from tokenizer.corpus import prepare
from tokenizer.corpus.shards import Corpus

log = logging.getLogger("dctgpt.train")
EVAL_SEED = 1 << 30  # eval rows come from (seed, EVAL_SEED, k): the same rows at every evaluation


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
    """The corpus in data_dir, tokenized first (the recipe's [prepare], in this process) if it is missing."""
    if not (Path(cfg.data_dir) / "corpus.json").is_file():
        if cfg.prepare is None:
            raise FileNotFoundError(f"data_dir={cfg.data_dir!r}: no corpus.json, and no [prepare] in the "
                                    f"recipe to make one (or run python -m tokenizer.corpus.prepare "
                                    f"--out={cfg.data_dir} ...)")
        log.info("tokenizing the corpus into %s", cfg.data_dir)
        # all of the corpus in this process, whatever torchrun's or SLURM's environment says
        manifest = prepare.main(replace(cfg.prepare, out=cfg.data_dir, part=0, parts=1))
        log.info("%s", prepare.summary(manifest))
    corpus = Corpus(cfg.data_dir)
    if "val" not in corpus.splits or len(corpus.split("val")) == 0:
        raise ValueError(f"data_dir={cfg.data_dir!r}: the corpus has no val split, which training evaluates "
                         f"on; tokenize it again with a val share (prepare's val_fraction or val_crops)")
    return corpus


def share_of_iteration(cfg: TrainConfig, rank: int, world: int) -> list[tuple[int, slice]]:
    """This process's micro-steps of one iteration: (micro-batch index, its rows) pairs.

    An iteration is gradient_accumulation_steps micro-batches of batch_size rows. Each micro-batch is
    cut into `split` equal pieces (as few as let the pieces divide evenly among the processes) and
    process r takes pieces r*P .. r*P+P-1, so any number of processes reads the rows of one process.
    """
    gas = cfg.gradient_accumulation_steps
    split = world // math.gcd(gas, world)
    if cfg.batch_size % split:
        raise ValueError(f"batch_size={cfg.batch_size} x gradient_accumulation_steps={gas} rows do not "
                         f"divide among {world} processes: make batch_size a multiple of {split}")
    per = gas * split // world
    rows = cfg.batch_size // split
    return [(p // split, slice(p % split * rows, (p % split + 1) * rows))
            for p in range(rank * per, (rank + 1) * per)]


def rows_of(batch: Batch, rows: slice) -> Batch:
    return Batch(batch.idx[rows], batch.positions[rows], batch.targets[rows], batch.doc[rows],
                 None if batch.context is None else batch.context[rows])


@torch.no_grad()
def evaluate_loss(model: GPT, packer: Packer, cfg: TrainConfig, ctx, device) -> float:
    """Val loss in nats per predicted token over the fixed eval rows."""
    model.eval()
    total, count = 0.0, 0
    for k in range(cfg.eval_iters):
        b = packer.batch(cfg.batch_size, [cfg.seed, EVAL_SEED, k]).to(device)
        with ctx:
            logits, _ = model(b.idx, b.positions, doc=b.doc, context=b.context)
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
    share = share_of_iteration(cfg, rank, world)
    out = Path(cfg.out_dir)
    corpus = None
    if master:   # the other processes wait until the corpus is there
        out.mkdir(parents=True, exist_ok=True)
        corpus = ensure_corpus(cfg)
    if ddp:
        dist.barrier()
    corpus = corpus or ensure_corpus(cfg)
    tok = corpus.tokenizer()
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    ctx = torch.autocast(device_type, dtype=torch.bfloat16) if cfg.dtype == "bfloat16" else nullcontext()

    torch.manual_seed(cfg.seed)
    # a video tokenizer says how many frames its positions span; images have one
    # and the tokenizer's context features, if asked for, how many there are and their range
    if cfg.model.context and not tok.n_context:
        raise ValueError(f"model.context=true: the {tok.name!r} tokenizer of {cfg.data_dir} offers no "
                         f"context features (jpeg_dct in raster order does)")
    n_ctx, buckets = (tok.n_context, tok.context_buckets) if cfg.model.context else (0, 0)
    model = GPT(replace(cfg.model, vocab_size=tok.vocab_size, n_frame=tok.n_frame, n_context=n_ctx,
                        context_buckets=buckets)).to(device)
    optimizer = model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2),
                                           device_type)
    iter_num, best_val, elapsed_before = 0, float("inf"), 0.0
    if cfg.init_from == "resume":
        ck = checkpoint.resolve(out)
        resumed = checkpoint.load(ck, device)
        have, want = asdict(resumed.model.config), asdict(model.config)
        if diff := [f"{k}={have[k]!r} (configured {want[k]!r})" for k in want if have[k] != want[k]]:
            raise ValueError(f"{ck}: the checkpoint's model has {', '.join(diff)}; resume with its settings "
                             f"or start a new out_dir")
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

    block_size = raw.config.block_size
    feats = tok.context if cfg.model.context else None
    train_packer = Packer(corpus.split("train"), block_size, tok.pad_id, raw.config.ignore_index, feats)
    val_packer = Packer(corpus.split("val"), block_size, tok.pad_id, raw.config.ignore_index, feats)
    book = Logbook(out, start_iter) if master else None
    result = TrainResult(iter_num=iter_num, out_dir=str(out))
    tokens_per_iter = cfg.gradient_accumulation_steps * cfg.batch_size * block_size
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
                "iter_num": it, "best_val_loss": best_val, "train_config": asdict(cfg),
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
        for k, (micro, rows) in enumerate(share):
            full = train_packer.batch(cfg.batch_size, [cfg.seed, iter_num, micro])
            piece = rows_of(full, rows)
            # a piece's mean loss, weighted by its share of the micro-batch's targets: the pieces of all
            # processes add up to the micro-batch's mean loss, as in one process
            ignore = raw.config.ignore_index
            weight = int((piece.targets != ignore).sum()) / int((full.targets != ignore).sum())
            batch = piece.to(device)
            sync = nullcontext() if (not ddp or k == len(share) - 1) else model.no_sync()
            with sync, ctx:
                _, loss = model(batch.idx, batch.positions, batch.targets, doc=batch.doc,
                                context=batch.context)
            # DDP averages gradients over the processes: scale so that they sum over the pieces
            (loss * weight * world / cfg.gradient_accumulation_steps).backward()
            loss_sum += loss.detach() * weight
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


def cli(argv: list[str] | None = None) -> TrainResult:
    if int(os.environ.get("RANK", 0)) != 0:   # DDP: only rank 0 logs progress
        log.setLevel(logging.WARNING)
    try:
        return run(main, TrainConfig, argv)
    except TrainingDiverged as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    cli()
