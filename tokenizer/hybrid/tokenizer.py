"""Hybrid JPEG + VQ tokenizer: learned codes over an aggressive JPEG's coefficients, decoded to a JPEG.

    python -m tokenizer.hybrid.train --out data/hybrid --quality 25 --group 1 --steps 600
    tok = load_tokenizer("data/hybrid")
    seq = tok.encode("photo.png")        # path, bytes, PIL image or HxWx3 uint8 array
    jpeg = tok.decode(seq)               # a baseline JPEG at the configured quality's tables

An input becomes a 4:2:0 JPEG at `quality` and `size` (the JPEG-DCT tokenizer's `to_jpeg`); its
quantized coefficients go through `tokenizer.hybrid.model.HybridVq`, one code per `group` x `group`
8x8 block places. Decoding predicts the coefficients back, rounds them to the quantization levels
and writes them through libjpeg (tokenizer.jpeg.io.write_coefficients): every stream decodes to a
valid JPEG. The stream is the VQ-VAE's (tokenizer.vqvae.tokenizer.CodeGridTokenizer): BOS GRID_H
GRID_W code x rows*cols EOS. Saved as `hybrid.safetensors` + `tokenizer.json`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from tokenizer.base import TokenizerError, TokenSequence
from tokenizer.hybrid.model import HybridConfig, HybridVq, from_planes, to_planes
from tokenizer.jpeg.io import Coefficients, write_coefficients
from tokenizer.jpeg.tokenizer import JpegDctConfig, JpegDctTokenizer
from tokenizer.vqvae.tokenizer import CodeGridTokenizer


class HybridTokenizer(CodeGridTokenizer):
    """Learned codes of a JPEG's coefficients (lossy against that JPEG); decode() writes a JPEG."""

    name = "hybrid"
    config_class = HybridConfig
    model_class = HybridVq
    weights_file = "hybrid.safetensors"

    def __init__(self, config: HybridConfig | None = None, model: HybridVq | None = None):
        self.config = c = config or HybridConfig()
        self.model = (model or HybridVq(c)).eval()
        self.jpeg = JpegDctTokenizer(JpegDctConfig(quality=c.quality, size=c.size, subsampling="4:2:0"))
        self.set_ids(c.codebook_size, c.max_grid, c.cell)

    # -- media <-> coefficients -------------------------------------------------------------------
    def coefficients(self, media: Any, name: str | None = None) -> Coefficients:
        """The aggressive JPEG's quantized coefficients: what the codes describe."""
        coef = self.jpeg.coefficients(media, name)
        if coef.height % self.cell or coef.width % self.cell or coef.height % 16 or coef.width % 16:
            raise TokenizerError(f"{name or type(media).__name__}: {coef.width}x{coef.height} is not a "
                                 f"multiple of {max(16, self.cell)} pixels (set a size)")
        return coef

    # -- tokens -----------------------------------------------------------------------------------
    @torch.no_grad()
    def codes(self, coef: Coefficients) -> np.ndarray:
        """Coefficients -> (H/cell, W/cell) int64 codebook indices."""
        x = self.model.normalize(torch.from_numpy(to_planes(coef))[None])
        z = self.model.encoder(x)
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.size(1))
        return self.model.quantizer.nearest(flat).view(z.shape[2], z.shape[3]).numpy()

    def encode(self, media: Any, name: str | None = None) -> TokenSequence:
        """Media comes in, BOS GRID_H GRID_W codes EOS comes out."""
        return self.from_codes(self.codes(self.coefficients(media, name)))

    @torch.no_grad()
    def decode_coefficients(self, seq: TokenSequence) -> Coefficients:
        """Token stream in, the quantized coefficients of a JPEG at the configured quality out."""
        codes = torch.from_numpy(self.to_codes(seq))[None]
        planes = self.model.denormalize(self.model.decoder(self.model.quantizer.lookup(codes)))[0]
        return from_planes(planes.double().numpy(), self.config.quality)

    def decode(self, seq: TokenSequence) -> bytes:
        """Token stream in, the bytes of a baseline JPEG out."""
        return write_coefficients(self.decode_coefficients(seq))

