"""A small convolutional VQ-VAE behind the tokenizer interface: learned, lossy image tokens.

    python -m tokenizer.vqvae train --out data/vq512 --downsample 4 --codebook_size 512 --steps 600
    tok = load_tokenizer("data/vq512")
    seq = tok.encode("photo.png")        # path, bytes, PIL image or HxWx3 uint8 array
    png = tok.decode(seq)                # PNG bytes (tok.decode_pixels(seq): HxWx3 uint8 array)

Stream: BOS GRID_H(rows) GRID_W(cols) code x rows*cols (raster) EOS. Ids 0..K-1 are the codebook
entries, then PAD, BOS, EOS, GRID_H(1..max_grid), GRID_W(1..max_grid). Positions: codes are
(0, 1, row, col, 0) in latent units; header tokens (0, 0, 0, 0, j) for j = 0, 1, 2; EOS (0, 0, 0, 0, 3).
The grammar is a fixed-length language once the grid is known.

The codebook is learned with EMA updates (or straight-through with a codebook loss), a commitment
loss, and dead-code restarts (codes whose running usage falls below a threshold are moved onto
random encoder outputs of the current batch). The model, the quantizer state and the config are
saved as `vqvae.safetensors` + `tokenizer.json`.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image, ImageOps
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from tokenizer.base import TokenizerError, TokenSequence, advance, read_config, register, save_config

QUANTIZERS = ("ema", "straight_through")


@dataclass(frozen=True)
class VqConfig:
    """Settings of a VQ-VAE tokenizer; saved with it.

    size: (height, width) images are fitted to (scale to cover, crop the middle), or None to keep
        an input's size (then it must be a multiple of `downsample`).
    downsample: 4 or 8 (pixels per latent cell along each side).
    codebook_size: number of codes K (256..4096); code_dim: their dimension.
    channels: width of the conv trunk. quantizer: "ema" or "straight_through".
    beta: commitment loss weight. ema_decay: codebook EMA decay.
    dead_threshold: a code whose running usage (EMA of assignments per step) is below this restarts.
    max_grid: largest latent rows / cols a header can name.
    """

    size: tuple[int, int] | None = (64, 64)
    downsample: int = 4
    codebook_size: int = 512
    code_dim: int = 32
    channels: int = 64
    quantizer: str = "ema"
    beta: float = 0.25
    ema_decay: float = 0.99
    dead_threshold: float = 0.01
    max_grid: int = 128

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


class VqGrammar:
    """BOS GRID_H GRID_W, then rows*cols codes, then EOS (see the module docstring)."""

    def __init__(self, tok: VqVaeTokenizer):
        self.tok, self.n, self.done = tok, 0, False
        self.rows = self.cols = 0

    def allowed(self) -> np.ndarray:
        t, m = self.tok, np.zeros(self.tok.vocab_size, bool)
        if self.done:
            return m
        if self.n == 0:
            m[t.bos_id] = True
        elif self.n in (1, 2):
            base = t.grid_h if self.n == 1 else t.grid_w
            m[base:base + t.config.max_grid] = True
        elif self.n < 3 + self.rows * self.cols:
            m[:t.config.codebook_size] = True
        else:
            m[t.eos_id] = True
        return m

    def push(self, token: int) -> np.ndarray:
        token = int(token)
        if not (0 <= token < self.tok.vocab_size and self.allowed()[token]):
            raise TokenizerError(f"token {token} is not allowed at place {self.n} of a VQ stream")
        t, j = self.tok, self.n
        self.n += 1
        if j == 1:
            self.rows = token - t.grid_h + 1
        elif j == 2:
            self.cols = token - t.grid_w + 1
        if 3 <= j < 3 + self.rows * self.cols:
            r, c = divmod(j - 3, self.cols)
            return np.array([0, 1, r, c, 0])
        if j == 3 + self.rows * self.cols:
            self.done = True
            return np.array([0, 0, 0, 0, 3])
        return np.array([0, 0, 0, 0, j])


@register
class VqVaeTokenizer:
    """Learned image tokens: one codebook id per downsample x downsample cell (lossy)."""

    name = "vqvae"

    def __init__(self, config: VqConfig | None = None, model: VqVae | None = None):
        self.config = c = config or VqConfig()
        self.model = (model or VqVae(c)).eval()
        K = c.codebook_size
        self.pad_id, self.bos_id, self.eos_id = K, K + 1, K + 2
        self.grid_h, self.grid_w = K + 3, K + 3 + c.max_grid
        self.vocab_size = K + 3 + 2 * c.max_grid

    # -- media <-> pixels -------------------------------------------------------------------------
    def pixels(self, media: Any, name: str | None = None) -> np.ndarray:
        """(H, W, 3) uint8 pixels of `media` at the configured size: what `encode` sees."""
        from tokenizer.jpeg import _load_pixels, _name_of, _read_bytes

        name = name or _name_of(media)
        px = _load_pixels(media, _read_bytes(media, name), name, gray=False, limit=1 << 26)
        if self.config.size is not None and px.shape[:2] != self.config.size:
            h, w = self.config.size
            px = np.asarray(ImageOps.fit(Image.fromarray(px), (w, h), Image.Resampling.LANCZOS))
        d = self.config.downsample
        if px.shape[0] % d or px.shape[1] % d:
            raise TokenizerError(f"{name}: {px.shape[1]}x{px.shape[0]} is not a multiple of downsample={d}")
        return px

    # -- tokens -----------------------------------------------------------------------------------
    @torch.no_grad()
    def codes(self, pixels: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (H/d, W/d) int64 codebook indices."""
        x = torch.from_numpy(np.array(pixels, np.uint8)).permute(2, 0, 1)[None].float() / 127.5 - 1
        z = self.model.encoder(x)
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.size(1))
        return self.model.quantizer.nearest(flat).view(z.shape[2], z.shape[3]).numpy()

    def encode(self, media: Any, name: str | None = None) -> TokenSequence:
        """Media comes in, BOS GRID_H GRID_W codes EOS comes out."""
        return self.from_codes(self.codes(self.pixels(media, name)))

    def from_codes(self, codes: np.ndarray) -> TokenSequence:
        rows, cols = codes.shape
        hdr = self.header(rows * self.config.downsample, cols * self.config.downsample)
        r, c = np.divmod(np.arange(rows * cols), cols)
        body = np.stack([np.zeros_like(r), np.ones_like(r), r, c, np.zeros_like(r)], 1)
        return TokenSequence(np.concatenate([hdr.ids, codes.ravel(), [self.eos_id]]),
                             np.concatenate([hdr.positions, body, [[0, 0, 0, 0, 3]]]))

    def to_codes(self, seq: TokenSequence) -> np.ndarray:
        """(rows, cols) codes of a complete stream; TokenizerError if it is not one."""
        g = self.grammar()
        for t in seq.ids:
            g.push(int(t))
        if not g.done:
            raise TokenizerError(f"VQ stream of {len(seq)} tokens ends before its EOS")
        return seq.ids[3:-1].astype(np.int64).reshape(g.rows, g.cols)

    @torch.no_grad()
    def decode_pixels(self, seq: TokenSequence) -> np.ndarray:
        """Token stream in, (H, W, 3) uint8 pixels out."""
        codes = torch.from_numpy(self.to_codes(seq))[None]
        x = self.model.decoder(self.model.quantizer.lookup(codes))[0]
        return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()

    def decode(self, seq: TokenSequence) -> bytes:
        """Token stream in, PNG bytes out (lossy reconstruction)."""
        buf = io.BytesIO()
        Image.fromarray(self.decode_pixels(seq)).save(buf, format="PNG")
        return buf.getvalue()

    def header(self, height: int, width: int, quality: int | None = None,
               subsampling: str | None = None) -> TokenSequence:
        """BOS GRID_H GRID_W of an image of height x width pixels (quality/subsampling: unused)."""
        d, g = self.config.downsample, self.config.max_grid
        if height % d or width % d or not (1 <= height // d <= g and 1 <= width // d <= g):
            raise TokenizerError(f"{width}x{height}: expected multiples of {d} up to {g * d} pixels")
        ids = [self.bos_id, self.grid_h + height // d - 1, self.grid_w + width // d - 1]
        pos = np.zeros((3, 5), np.int64)
        pos[:, 4] = [0, 1, 2]
        return TokenSequence(np.array(ids), pos)

    def grammar(self, prefix: TokenSequence | None = None) -> VqGrammar:
        return advance(VqGrammar(self), prefix)

    # -- persistence ------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, str(Path(directory) / "vqvae.safetensors"))
        save_config(directory, self.name, self.config)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> VqVaeTokenizer:
        cfg = read_config(directory)["config"]
        config = VqConfig(**cfg)
        path = Path(directory) / "vqvae.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (a VQ-VAE tokenizer directory holds vqvae.safetensors)")
        model = VqVae(config)
        model.load_state_dict(load_file(str(path)), strict=True)
        return cls(config, model)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


if __name__ == "__main__":
    from tokenizer.vqvae_train import cli

    cli()
