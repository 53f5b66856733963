"""Training of the hybrid JPEG + VQ tokenizer (tokenizer.hybrid) on the embedded corpus or a folder.

    python -m tokenizer.hybrid.train --out data/hybrid --quality 25 --group 1 --codebook_size 1024 --steps 600

Every HybridConfig and VqTrainConfig field is a key (`--help` lists them; the training settings and
crops are the VQ-VAE's, tokenizer.vqvae.train). Crops are turned into their aggressive JPEG's
coefficients once, up front; the loss is the squared error of the predicted coefficients in pixel
units plus the quantizer's commitment loss. Writes the tokenizer (hybrid.safetensors +
tokenizer.json), `report.json` (val PSNR of the decoded JPEG and of the aggressive JPEG itself, both
against the original crops; codebook usage, perplexity, losses) and `recon.png` (rows: val
originals, their aggressive JPEG, the hybrid's JPEG).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from tokenizer.base import write_json_atomic
from tokenizer.cli import run
from tokenizer.hybrid.model import HybridConfig, to_planes
from tokenizer.hybrid.tokenizer import HybridTokenizer
from tokenizer.vqvae.model import psnr
from tokenizer.vqvae.train import VqTrainConfig, image_rows, load_images, lr_at

log = logging.getLogger("tokenizer.hybrid.train")


@dataclass(frozen=True)
class HybridReport:
    val_psnr: float          # dB: the decoded JPEG (encode -> decode) against the original val crops
    val_psnr_jpeg: float     # dB: the aggressive JPEG itself against them (what the codes describe)
    codebook_usage: float    # share of codes used by the val crops' tokens
    perplexity: float        # exp(entropy) of the val code histogram
    restarts: int            # dead codes restarted during training
    first_loss: float        # reconstruction loss of the first step (relative pixel units)
    train_loss: float        # mean reconstruction loss of the last log_interval steps
    seconds: float


def train(config: HybridConfig, cfg: VqTrainConfig,
          progress: bool | None = None) -> tuple[HybridTokenizer, HybridReport]:
    """Train, save to cfg.out (tokenizer, report.json, recon.png); returns the tokenizer and report."""
    if config.size is None:
        raise ValueError("HybridConfig.size=None: training needs a crop size")
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    t0 = time.time()
    train_px, val_px = load_images(cfg, config.size)
    tok = HybridTokenizer(config)
    model = tok.model
    # every train crop -> its JPEG's coefficients -> (192, h, w) dequantized planes, once
    planes = torch.from_numpy(np.stack([to_planes(tok.coefficients(p)) for p in train_px]))
    model.set_stats(planes.numpy())
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate)
    rng = np.random.default_rng(cfg.seed)
    bar = tqdm(range(cfg.steps), disable=not (sys.stderr.isatty() if progress is None else progress),
               desc="hybrid", unit="step")
    losses: list[float] = []
    model.train()
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        x = model.normalize(planes[rng.integers(len(planes), size=cfg.batch_size)])
        x_hat, q = model(x)
        rec = model.recon_loss(x_hat, x)
        opt.zero_grad(set_to_none=True)
        (rec + q.loss).backward()
        opt.step()
        losses.append(float(rec.detach()))
        if step % cfg.log_interval == 0 or step == cfg.steps - 1:
            bar.set_postfix(loss=f"{losses[-1]:.4f}", ppl=f"{q.perplexity:.0f}", used=f"{q.used:.2f}")
            log.info("step %d: loss %.4f, commit %.4f, batch perplexity %.1f, batch codebook usage %.2f, "
                     "%d code restarts so far", step, losses[-1], float(q.loss.detach()), q.perplexity,
                     q.used, model.quantizer.restarts)
    bar.close()
    model.eval()
    report = evaluate(tok, val_px, losses, cfg.log_interval, time.time() - t0)
    out = Path(cfg.out)
    tok.save(out)
    write_json_atomic(out / "report.json", {**dataclasses.asdict(report), "train": dataclasses.asdict(cfg)})
    recon_grid(tok, val_px[:8]).save(out / "recon.png")
    log.info("val PSNR %.2f dB (its JPEG: %.2f dB), codebook usage %.2f, perplexity %.1f; saved to %s",
             report.val_psnr, report.val_psnr_jpeg, report.codebook_usage, report.perplexity, out)
    return tok, report


def _pixels(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))


def evaluate(tok: HybridTokenizer, val_px: np.ndarray, losses: list[float], tail: int,
             seconds: float) -> HybridReport:
    scores, ceiling, hist = [], [], np.zeros(tok.codebook_size)
    for px in val_px:
        seq = tok.encode(px)
        scores.append(psnr(px, _pixels(tok.decode(seq))))
        ceiling.append(psnr(px, _pixels(tok.jpeg.to_jpeg(px))))
        hist += np.bincount(seq.ids[3:-1], minlength=len(hist))
    p = hist / hist.sum()
    ppl = float(np.exp(-(p[p > 0] * np.log(p[p > 0])).sum()))
    return HybridReport(float(np.mean(scores)), float(np.mean(ceiling)), float((hist > 0).mean()), ppl,
                        tok.model.quantizer.restarts, losses[0], float(np.mean(losses[-tail:])), seconds)


def recon_grid(tok: HybridTokenizer, px: np.ndarray):
    """Rows: originals, their aggressive JPEG, the hybrid tokenizer's JPEG."""
    return image_rows([list(px), [_pixels(tok.jpeg.to_jpeg(p)) for p in px],
                       [_pixels(tok.decode(tok.encode(p))) for p in px]])


@dataclass(frozen=True)
class HybridRun:
    hybrid: HybridConfig = HybridConfig()   # the tokenizer's settings (saved with it)
    train: VqTrainConfig = VqTrainConfig(out="data/hybrid")   # how it is trained


def main(run_cfg: HybridRun) -> HybridReport:
    config, tcfg = run_cfg.hybrid, run_cfg.train
    _, r = train(config, tcfg)
    print(f"hybrid {config.codebook_size} codes, group {config.group}, q{config.quality}: val PSNR "
          f"{r.val_psnr:.2f} dB (its JPEG {r.val_psnr_jpeg:.2f} dB), codebook usage {r.codebook_usage:.2f}, "
          f"perplexity {r.perplexity:.1f}, {r.seconds:.0f} s; saved to {tcfg.out}")
    return r


def cli(argv: list[str] | None = None) -> HybridReport:
    return run(main, HybridRun, argv)


if __name__ == "__main__":
    cli()
