"""Training of the VQ-VAE tokenizer (tokenizer.vqvae) on the embedded corpus or a folder of images.

    python -m tokenizer.vqvae.train --out data/vq512 --codebook_size 512 --downsample 4 --steps 600
    python -m tokenizer.vqvae.train --out data/vq_photos --source photos/ --size 64 64

Every VqConfig and VqTrainConfig field is a key (`--help` lists them). Writes the tokenizer
(vqvae.safetensors + tokenizer.json), `report.json` (val PSNR, codebook usage, perplexity, losses)
and `recon.png` (val originals above their reconstructions).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F
from tqdm import tqdm

from tokenizer.base import write_json_atomic
from tokenizer.cli import run
from tokenizer.vqvae.model import VqConfig, VqVae, psnr
from tokenizer.vqvae.tokenizer import VqVaeTokenizer

log = logging.getLogger("tokenizer.vqvae.train")


@dataclass(frozen=True)
class VqTrainConfig:
    out: str = "data/vqvae"       # directory to save the tokenizer, report.json and recon.png to
    source: str = "embedded"      # "embedded" or a folder of images
    steps: int = 600              # optimizer steps
    batch_size: int = 16          # crops per step
    learning_rate: float = 2e-3   # peak Adam learning rate (warmup, then cosine decay to a tenth)
    warmup: int = 20              # linear warmup steps
    train_crops: int = 2048       # crops made once up front (embedded: deterministic crops)
    val_crops: int = 64           # crops PSNR and codebook usage are measured on
    seed: int = 0                 # crops and initialization
    num_threads: int = 0          # torch CPU threads; 0 = torch's default
    log_interval: int = 50        # steps between log lines

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "train_crops", "val_crops", "log_interval"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected >= 1")
        if self.source != "embedded" and not Path(self.source).is_dir():
            raise FileNotFoundError(f"source={self.source!r}: expected 'embedded' or a folder of images")


@dataclass(frozen=True)
class VqReport:
    val_psnr: float          # dB, mean over val crops, through encode -> decode
    codebook_usage: float    # share of codes used by the val crops' tokens
    restarts: int            # dead codes restarted during training
    perplexity: float        # exp(entropy) of the val code histogram
    train_loss: float        # last logged reconstruction MSE (in [-1, 1] units)
    seconds: float


def load_images(cfg: VqTrainConfig, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W, 3) uint8 train and val crops."""
    if cfg.source == "embedded":
        from tokenizer.corpus.embedded import crops
        train = [c.pixels for c in crops("train", cfg.train_crops, size, cfg.seed)]
        val = [c.pixels for c in crops("val", cfg.val_crops, size, cfg.seed)]
        return np.stack(train), np.stack(val)
    from tokenizer.corpus.sources import IMAGE_EXTS
    files = sorted(p for p in Path(cfg.source).rglob("*") if p.suffix.lower() in IMAGE_EXTS)
    if len(files) < 2:
        raise FileNotFoundError(f"{cfg.source}: fewer than 2 image files")
    rng = np.random.default_rng(cfg.seed)
    n_val = max(1, len(files) // 10)
    photos = [np.asarray(Image.open(p).convert("RGB")) for p in files]
    h, w = size

    def crop(photo: np.ndarray) -> np.ndarray:
        im = Image.fromarray(photo)
        if photo.shape[0] < h or photo.shape[1] < w:
            s = max(h / photo.shape[0], w / photo.shape[1])
            im = im.resize((math.ceil(photo.shape[1] * s), math.ceil(photo.shape[0] * s)))
        y, x = rng.integers(im.height - h + 1), rng.integers(im.width - w + 1)
        return np.asarray(im.crop((x, y, x + w, y + h)))

    train = [crop(photos[n_val + i % (len(photos) - n_val)]) for i in range(cfg.train_crops)]
    val = [crop(photos[i % n_val]) for i in range(cfg.val_crops)]
    return np.stack(train), np.stack(val)


def _to_tensor(px: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(px).permute(0, 3, 1, 2).float() / 127.5 - 1


def lr_at(step: int, cfg: VqTrainConfig) -> float:
    """Linear warmup, then cosine decay to a tenth of the learning rate."""
    lr = cfg.learning_rate * min(1.0, (step + 1) / (cfg.warmup + 1))
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / cfg.steps)))


def train(config: VqConfig, cfg: VqTrainConfig,
          progress: bool | None = None) -> tuple[VqVaeTokenizer, VqReport]:
    """Train, save to cfg.out (tokenizer, report.json, recon.png); returns the tokenizer and report."""
    if config.size is None:
        raise ValueError("VqConfig.size=None: training needs a crop size")
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    t0 = time.time()
    train_px, val_px = load_images(cfg, config.size)
    model = VqVae(config)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate)
    rng = np.random.default_rng(cfg.seed)
    bar = tqdm(range(cfg.steps), disable=not (sys.stderr.isatty() if progress is None else progress),
               desc="vqvae", unit="step")
    recon_loss = float("nan")
    model.train()
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        pick = rng.integers(len(train_px), size=cfg.batch_size)
        x = _to_tensor(train_px[pick])
        flip = torch.from_numpy(rng.random(cfg.batch_size) < 0.5)
        x[flip] = x[flip].flip(-1)
        out, q = model(x)
        rec = F.mse_loss(out, x)
        loss = rec + q.loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % cfg.log_interval == 0 or step == cfg.steps - 1:
            recon_loss = float(rec.detach())
            restarts = model.quantizer.restarts
            bar.set_postfix(mse=f"{recon_loss:.4f}", ppl=f"{q.perplexity:.0f}", used=f"{q.used:.2f}")
            log.info("step %d: mse %.4f, commit %.4f, batch perplexity %.1f, batch codebook usage %.2f, "
                     "%d code restarts so far", step, recon_loss, float(q.loss.detach()), q.perplexity,
                     q.used, restarts)
    bar.close()
    tok = VqVaeTokenizer(config, model.eval())
    report = evaluate(tok, val_px, recon_loss, time.time() - t0)
    out = Path(cfg.out)
    tok.save(out)
    write_json_atomic(out / "report.json", {**dataclasses.asdict(report), "train": dataclasses.asdict(cfg)})
    recon_grid(tok, val_px[:8]).save(out / "recon.png")
    log.info("val PSNR %.2f dB, codebook usage %.2f, perplexity %.1f; saved to %s",
             report.val_psnr, report.codebook_usage, report.perplexity, out)
    return tok, report


def evaluate(tok: VqVaeTokenizer, val_px: np.ndarray, train_loss: float, seconds: float) -> VqReport:
    scores, hist = [], np.zeros(tok.config.codebook_size)
    for px in val_px:
        seq = tok.from_codes(tok.codes(px))
        scores.append(psnr(px, tok.decode_pixels(seq)))
        hist += np.bincount(seq.ids[3:-1], minlength=len(hist))
    p = hist / hist.sum()
    ppl = float(np.exp(-(p[p > 0] * np.log(p[p > 0])).sum()))
    return VqReport(float(np.mean(scores)), float((hist > 0).mean()), tok.model.quantizer.restarts,
                    ppl, train_loss, seconds)


def recon_grid(tok: VqVaeTokenizer, px: np.ndarray) -> Image.Image:
    """Originals (top row) above their reconstructions (bottom row)."""
    return image_rows([list(px), [tok.decode_pixels(tok.from_codes(tok.codes(p))) for p in px]])


def image_rows(rows: list[list[np.ndarray]], pad: int = 2) -> Image.Image:
    """Rows of equally sized (H, W, 3) uint8 images, side by side, `pad` pixels apart."""
    h, w = rows[0][0].shape[:2]
    grid = Image.new("RGB", (len(rows[0]) * (w + pad) + pad, len(rows) * (h + pad) + pad), "white")
    for r, row in enumerate(rows):
        for i, p in enumerate(row):
            grid.paste(Image.fromarray(p), (pad + i * (w + pad), pad + r * (h + pad)))
    return grid


@dataclass(frozen=True)
class VqRun:
    vq: VqConfig = VqConfig()     # the tokenizer's settings (saved with it)
    train: VqTrainConfig = VqTrainConfig()  # how it is trained


def main(run_cfg: VqRun) -> VqReport:
    config, tcfg = run_cfg.vq, run_cfg.train
    _, r = train(config, tcfg)
    print(f"VQ-VAE {config.codebook_size} codes, /{config.downsample}: val PSNR {r.val_psnr:.2f} dB, "
          f"codebook usage {r.codebook_usage:.2f}, perplexity {r.perplexity:.1f}, {r.restarts} code "
          f"restarts, {r.seconds:.0f} s; saved to {tcfg.out}")
    return r


def cli(argv: list[str] | None = None) -> VqReport:
    return run(main, VqRun, argv)


if __name__ == "__main__":
    cli()
