"""The VQ-VAE network: conv encoder -> quantizer (EMA or straight-through, dead-code restarts) -> decoder.

    vq = VqVae(VqConfig(downsample=4, codebook_size=512))
    x_hat, q = vq(x)          # x: (B, 3, H, W) in [-1, 1]; q.codes: (B, H/4, W/4)

The codebook is learned with EMA updates (or straight-through with a codebook loss), a commitment
loss, and dead-code restarts (codes whose running usage falls below a threshold are moved onto
random encoder outputs of the current batch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

QUANTIZERS = ("ema", "straight_through")


@dataclass(frozen=True)
class VqConfig:
    """Settings of a VQ-VAE tokenizer; saved with it."""

    size: tuple[int, int] | None = (64, 64)  # (height, width) images are fitted to; none = keep each size
    downsample: int = 4           # 4 or 8 pixels per latent cell along each side (sizes are multiples)
    codebook_size: int = 512      # number of codes K (256..4096)
    code_dim: int = 32            # dimension of a code
    channels: int = 64            # width of the conv trunk
    quantizer: str = "ema"        # "ema" or "straight_through"
    beta: float = 0.25            # commitment loss weight
    ema_decay: float = 0.99       # codebook EMA decay
    dead_threshold: float = 0.01  # a code whose running usage (EMA of assignments per step) is below restarts
    max_grid: int = 128           # largest latent rows / cols a header can name

    def __post_init__(self) -> None:
        if self.size is not None:
            object.__setattr__(self, "size", tuple(self.size))
            if len(self.size) != 2 or any(not isinstance(s, int) or s < 1 or s % self.downsample
                                          for s in self.size):
                raise ValueError(f"size={self.size!r}: expected (height, width), multiples of "
                                 f"downsample={self.downsample}, or None")
        if self.downsample not in (4, 8):
            raise ValueError(f"downsample={self.downsample!r}: expected 4 or 8")
        if not 256 <= self.codebook_size <= 4096:
            raise ValueError(f"codebook_size={self.codebook_size!r}: expected 256..4096")
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer={self.quantizer!r}: expected one of {QUANTIZERS}")
        for name in ("code_dim", "channels", "max_grid"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ValueError(f"{name}={getattr(self, name)!r}: expected a positive int")
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay={self.ema_decay!r}: expected 0 < ema_decay < 1")


class ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


def _encoder(c: VqConfig) -> nn.Sequential:
    n = c.downsample.bit_length() - 1                 # stride-2 stages: 2 or 3
    layers: list[nn.Module] = [nn.Conv2d(3, c.channels, 4, stride=2, padding=1)]
    for _ in range(n - 1):
        layers += [nn.ReLU(), nn.Conv2d(c.channels, c.channels, 4, stride=2, padding=1)]
    layers += [ResBlock(c.channels), ResBlock(c.channels), nn.ReLU(), nn.Conv2d(c.channels, c.code_dim, 1)]
    return nn.Sequential(*layers)


def _decoder(c: VqConfig) -> nn.Sequential:
    n = c.downsample.bit_length() - 1
    layers: list[nn.Module] = [nn.Conv2d(c.code_dim, c.channels, 3, padding=1),
                               ResBlock(c.channels), ResBlock(c.channels)]
    for _ in range(n - 1):
        layers += [nn.ReLU(), nn.ConvTranspose2d(c.channels, c.channels, 4, stride=2, padding=1)]
    layers += [nn.ReLU(), nn.ConvTranspose2d(c.channels, 3, 4, stride=2, padding=1)]
    return nn.Sequential(*layers)


class QuantOut(NamedTuple):
    z_q: torch.Tensor        # (B, D, h, w) quantized latents (straight-through gradient to z)
    codes: torch.Tensor      # (B, h, w) int64
    loss: torch.Tensor       # commitment (+ codebook, straight-through) loss
    perplexity: float        # exp(entropy) of this batch's code histogram
    used: float              # share of the codebook this batch uses


class Quantizer(nn.Module):
    """Nearest-code vector quantizer with EMA or straight-through codebook learning."""

    def __init__(self, c: VqConfig):
        super().__init__()
        self.c = c
        K, D = c.codebook_size, c.code_dim
        if c.quantizer == "ema":
            self.register_buffer("codebook", torch.randn(K, D) * 0.1)
            self.register_buffer("cluster_size", torch.ones(K))
            self.register_buffer("embed_sum", self.codebook.clone())
        else:
            self.codebook = nn.Parameter(torch.randn(K, D) * 0.1)
        self.register_buffer("usage", torch.full((K,), 4 * c.dead_threshold))   # EMA of assignments/step
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.restarts = 0                                       # codes restarted so far (this process)

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        cb = self.codebook
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ cb.t() + cb.pow(2).sum(1)[None]
        return dist.argmin(1)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) codes -> (B, D, h, w) latents."""
        return self.codebook[codes].permute(0, 3, 1, 2)

    def forward(self, z: torch.Tensor) -> QuantOut:
        B, D, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, D)
        if self.training and not bool(self.initialized):    # start the codebook on real latents
            with torch.no_grad():
                pick = torch.randint(len(flat), (self.c.codebook_size,))
                self.codebook.data.copy_(flat[pick] + 0.01 * torch.randn_like(flat[pick]))
                if self.c.quantizer == "ema":
                    self.embed_sum.copy_(self.codebook)
                self.initialized.fill_(True)
        codes = self.nearest(flat.detach())
        q = self.codebook[codes]
        loss = self.c.beta * F.mse_loss(flat, q.detach())
        counts = torch.bincount(codes, minlength=self.c.codebook_size).float()
        if self.training:
            self._update(flat.detach(), codes, counts)
            if self.c.quantizer == "straight_through":
                loss = loss + F.mse_loss(q, flat.detach())
        p = counts / counts.sum()
        perplexity = float(torch.exp(-(p * torch.log(p + 1e-10)).sum()))
        q = flat + (q - flat).detach()
        return QuantOut(q.view(B, h, w, D).permute(0, 3, 1, 2), codes.view(B, h, w), loss, perplexity,
                        float((counts > 0).float().mean()))

    @torch.no_grad()
    def _update(self, flat: torch.Tensor, codes: torch.Tensor, counts: torch.Tensor) -> None:
        c = self.c
        self.usage.mul_(c.ema_decay).add_(counts, alpha=1 - c.ema_decay)
        if c.quantizer == "ema":
            self.cluster_size.mul_(c.ema_decay).add_(counts, alpha=1 - c.ema_decay)
            sums = F.one_hot(codes, c.codebook_size).to(flat.dtype).t() @ flat   # (K, D)
            self.embed_sum.mul_(c.ema_decay).add_(sums, alpha=1 - c.ema_decay)
            n = self.cluster_size.sum()
            size = (self.cluster_size + 1e-5) / (n + c.codebook_size * 1e-5) * n   # Laplace smoothing
            self.codebook.copy_(self.embed_sum / size[:, None])
        dead = self.usage < c.dead_threshold
        self.restarts += int(dead.sum())
        if dead.any():                                        # restart onto random encoder outputs
            k = int(dead.sum())
            new = flat[torch.randint(len(flat), (k,))] + 0.01 * torch.randn(k, flat.size(1))
            self.codebook.data[dead] = new
            self.usage[dead] = 4 * c.dead_threshold    # a grace period
            if c.quantizer == "ema":
                self.cluster_size[dead] = 1.0
                self.embed_sum[dead] = new


class VqVae(nn.Module):
    """encoder -> quantizer -> decoder on images in [-1, 1], (B, 3, H, W)."""

    def __init__(self, c: VqConfig):
        super().__init__()
        self.encoder, self.quantizer, self.decoder = _encoder(c), Quantizer(c), _decoder(c)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, QuantOut]:
        q = self.quantizer(self.encoder(x))
        return self.decoder(q.z_q), q


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)
