"""The hybrid JPEG + VQ network: a VQ over the quantized DCT coefficients of an aggressive JPEG.

    net = HybridVq(HybridConfig(group=1, codebook_size=1024))
    x = net.normalize(torch.from_numpy(to_planes(coef))[None])   # (1, 192, H/8, W/8)
    x_hat, q = net(x)                                              # q.codes: (1, H/8/group, W/8/group)

Blocks are channels: at every 8x8 luma block place, the 64 zigzag coefficients of the Y block and
of the Cb and Cr blocks covering it (4:2:0 chroma blocks cover 2x2 luma places, so each is repeated
there) make 192 channels at 1/8 of the image's resolution, dequantized (coefficient x table entry:
the orthonormal DCT of the pixels, so squared errors here are squared pixel errors) and
standardized per channel with statistics measured on the training crops. The encoder maps them to
one code per `group` x `group` block places; the decoder predicts the 192 channels back, and
`from_planes` rounds them to a JPEG's quantized coefficients (chroma averaged over its 2x2 places,
values clipped to what 8-bit JPEG can hold).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tokenizer.jpeg.io import AC_MAX, Coefficients, standard_qtables
from tokenizer.vqvae.model import QUANTIZERS, Quantizer, ResBlock, VqConfig

CHANNELS = 3 * 64      # Y, Cb, Cr zigzag coefficients at each luma block place
GROUPS = (1, 2)        # block places per code along a side: 1 = a code per 8x8 block, 2 = per MCU


@dataclass(frozen=True)
class HybridConfig:
    """Settings of a hybrid JPEG + VQ tokenizer; saved with it. The quantizer's settings are the
    VQ-VAE's (tokenizer.vqvae.model.VqConfig)."""

    size: tuple[int, int] | None = (64, 64)  # (height, width) inputs are fitted to, multiples of 16
    quality: int = 25             # the aggressive JPEG the codes describe (1..100); its tables write output
    group: int = 1                # block places per code along a side: 1 = a code per 8x8 block, 2 = per MCU
    codebook_size: int = 1024     # number of codes K (256..4096)
    code_dim: int = 32            # dimension of a code
    channels: int = 128           # width of the conv trunk
    quantizer: str = "ema"        # "ema" or "straight_through"
    beta: float = 0.25            # commitment loss weight
    ema_decay: float = 0.99       # codebook EMA decay
    dead_threshold: float = 0.01  # a code whose running usage (EMA of assignments per step) is below restarts
    max_grid: int = 128           # largest code rows / cols a header can name

    def __post_init__(self) -> None:
        if self.size is not None:
            object.__setattr__(self, "size", tuple(self.size))
            if len(self.size) != 2 or any(not isinstance(s, int) or s < 16 or s % 16 for s in self.size):
                raise ValueError(f"size={self.size!r}: expected (height, width), multiples of 16, or None")
        if not (isinstance(self.quality, int) and 1 <= self.quality <= 100):
            raise ValueError(f"quality={self.quality!r}: expected an int in 1..100")
        if self.group not in GROUPS:
            raise ValueError(f"group={self.group!r}: expected one of {GROUPS}")
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer={self.quantizer!r}: expected one of {QUANTIZERS}")
        self.vq_config()    # codebook_size, code_dim, ... checked where they are defined

    @property
    def cell(self) -> int:
        """Pixels per code along each side."""
        return 8 * self.group

    def vq_config(self) -> VqConfig:
        """The quantizer's settings as tokenizer.vqvae names them."""
        return VqConfig(size=None, downsample=8, codebook_size=self.codebook_size, code_dim=self.code_dim,
                        channels=self.channels, quantizer=self.quantizer, beta=self.beta,
                        ema_decay=self.ema_decay, dead_threshold=self.dead_threshold, max_grid=self.max_grid)


def to_planes(coef: Coefficients) -> np.ndarray:
    """(192, H/8, W/8) float32 dequantized coefficients of a 4:2:0 JPEG (see the module docstring)."""
    if coef.subsampling != "4:2:0" or coef.height % 16 or coef.width % 16:
        raise ValueError(f"{coef.width}x{coef.height} {coef.subsampling}: expected 4:2:0 with sides "
                         "that are multiples of 16")
    # blocks[c]: (rows, cols, 64) zigzag ints; qtables[c]: (64,) zigzag -> dequantized float planes
    deq = [b.astype(np.float32) * q.astype(np.float32) for b, q in zip(coef.blocks, coef.qtables)]
    # chroma (rows/2, cols/2, 64) -> repeated onto the 2x2 luma places each block covers
    cb, cr = (np.repeat(np.repeat(d, 2, axis=0), 2, axis=1) for d in deq[1:])
    return np.concatenate([deq[0], cb, cr], axis=2).transpose(2, 0, 1)   # (192, rows, cols)


def from_planes(planes: np.ndarray, quality: int) -> Coefficients:
    """Dequantized (192, H/8, W/8) planes -> a 4:2:0 JPEG's coefficients at `quality`'s tables."""
    qt = standard_qtables(quality, 3)                              # (3, 64) zigzag
    rows, cols = planes.shape[1:]
    y = planes[:64].transpose(1, 2, 0)                             # (rows, cols, 64)
    # chroma: (64, rows, cols) -> mean over each 2x2 group of places -> (rows/2, cols/2, 64)
    chroma = [planes[s:s + 64].reshape(64, rows // 2, 2, cols // 2, 2).mean(axis=(2, 4)).transpose(1, 2, 0)
              for s in (64, 128)]
    blocks = []
    for deq, q in zip([y, *chroma], qt.astype(np.float64)):
        # what 8x8 blocks of 8-bit samples can produce, in quantization levels: DC = 8 x (-128..127),
        # |AC| <= 1023 (the orthonormal DCT of samples in -128..127 stays within that)
        hi = np.floor(AC_MAX / q)
        lo = -hi
        lo[0], hi[0] = np.ceil(-1024 / q[0]), np.floor(1016 / q[0])
        blocks.append(np.clip(np.rint(deq / q), lo, hi).astype(np.int16))   # nearest level, clipped
    return Coefficients(rows * 8, cols * 8, "4:2:0", tuple(blocks), qt.astype(np.uint16))


class HybridVq(nn.Module):
    """Standardized coefficient planes (B, 192, h, w) -> codes -> planes back."""

    def __init__(self, c: HybridConfig):
        super().__init__()
        C, D = c.channels, c.code_dim
        down = [nn.ReLU(), nn.Conv2d(C, C, 2, stride=2)] if c.group == 2 else []
        up = [nn.ReLU(), nn.ConvTranspose2d(C, C, 2, stride=2)] if c.group == 2 else []
        self.encoder = nn.Sequential(nn.Conv2d(CHANNELS, C, 1), ResBlock(C), ResBlock(C), *down,
                                     ResBlock(C), nn.ReLU(), nn.Conv2d(C, D, 1))
        self.decoder = nn.Sequential(nn.Conv2d(D, C, 3, padding=1), ResBlock(C), *up, ResBlock(C),
                                     ResBlock(C), nn.ReLU(), nn.Conv2d(C, CHANNELS, 1))
        self.quantizer = Quantizer(c.vq_config())
        self.register_buffer("shift", torch.zeros(CHANNELS))      # per-channel mean, from training data
        self.register_buffer("scale", torch.ones(CHANNELS))       # per-channel std

    @torch.no_grad()
    def set_stats(self, planes: np.ndarray) -> None:
        """Measure the standardization on (N, 192, h, w) training planes."""
        x = torch.from_numpy(planes).float()
        self.shift.copy_(x.mean(dim=(0, 2, 3)))
        self.scale.copy_(x.std(dim=(0, 2, 3)).clamp_min(1.0))    # never divide by ~0 (always-zero bands)

    def normalize(self, planes: torch.Tensor) -> torch.Tensor:
        return (planes - self.shift[:, None, None]) / self.scale[:, None, None]

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale[:, None, None] + self.shift[:, None, None]

    def recon_loss(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Squared error of standardized planes weighted back to dequantized (= pixel) units, over the
        mean weight: proportional to the pixels' squared error, of order 1 like the commitment loss."""
        w = self.scale.pow(2) / self.scale.pow(2).mean()
        return ((x_hat - x).pow(2) * w[:, None, None]).mean()

    def forward(self, x: torch.Tensor):
        q = self.quantizer(self.encoder(x))
        return self.decoder(q.z_q), q
