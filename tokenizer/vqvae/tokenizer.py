"""A small convolutional VQ-VAE behind the tokenizer interface: learned, lossy image tokens.

    python -m tokenizer.vqvae.train --out data/vq512 --downsample 4 --codebook_size 512 --steps 600
    tok = load_tokenizer("data/vq512")
    seq = tok.encode("photo.png")        # path, bytes, PIL image or HxWx3 uint8 array
    png = tok.decode(seq)                # PNG bytes (tok.decode_pixels(seq): HxWx3 uint8 array)

Stream: BOS GRID_H(rows) GRID_W(cols) code x rows*cols (raster) EOS. Ids 0..K-1 are the codebook
entries, then PAD, BOS, EOS, GRID_H(1..max_grid), GRID_W(1..max_grid). Positions: codes are
(0, 1, row, col, 0) in latent units; header tokens (0, 0, 0, 0, j) for j = 0, 1, 2; EOS (0, 0, 0, 0, 3).
The grammar is a fixed-length language once the grid is known. `CodeGridTokenizer` holds this
stream format for any tokenizer of learned codes on a grid (the hybrid JPEG + VQ one shares it).

The network is `tokenizer.vqvae.model.VqVae`; its weights, the quantizer state and the config are
saved as `vqvae.safetensors` + `tokenizer.json`. Training: `tokenizer.vqvae.train`.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from safetensors.torch import load_file, save_file

from tokenizer.base import Tokenizer, TokenizerError, TokenSequence, advance
from tokenizer.media import load_pixels, name_of, read_bytes
from tokenizer.vqvae.model import VqConfig, VqVae


class VqGrammar:
    """BOS GRID_H GRID_W, then rows*cols codes, then EOS (see the module docstring)."""

    def __init__(self, tok: CodeGridTokenizer):
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
            m[base:base + t.max_grid] = True
        elif self.n < 3 + self.rows * self.cols:
            m[:t.codebook_size] = True
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


class CodeGridTokenizer(Tokenizer):
    """The stream of learned codes on a grid (see the module docstring). A subclass calls `set_ids`
    in `__init__` and maps media to codes and back."""

    codebook_size: int
    max_grid: int
    cell: int            # pixels per code along each side
    model_class: type[torch.nn.Module]   # built from the config; its weights are saved as weights_file
    weights_file: str

    def set_ids(self, codebook_size: int, max_grid: int, cell: int) -> None:
        K = self.codebook_size = codebook_size
        self.max_grid, self.cell = max_grid, cell
        self.pad_id, self.bos_id, self.eos_id = K, K + 1, K + 2
        self.grid_h, self.grid_w = K + 3, K + 3 + max_grid
        self.vocab_size = K + 3 + 2 * max_grid

    def from_codes(self, codes: np.ndarray) -> TokenSequence:
        """(rows, cols) codes -> BOS GRID_H GRID_W codes EOS."""
        rows, cols = codes.shape
        hdr = self.header(rows * self.cell, cols * self.cell)
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
            raise TokenizerError(f"code stream of {len(seq)} tokens ends before its EOS")
        return seq.ids[3:-1].astype(np.int64).reshape(g.rows, g.cols)

    def header(self, height: int, width: int, quality: int | None = None,
               subsampling: str | None = None) -> TokenSequence:
        """BOS GRID_H GRID_W of an image of height x width pixels (quality/subsampling: unused)."""
        d, g = self.cell, self.max_grid
        if height % d or width % d or not (1 <= height // d <= g and 1 <= width // d <= g):
            raise TokenizerError(f"{width}x{height}: expected multiples of {d} up to {g * d} pixels")
        ids = [self.bos_id, self.grid_h + height // d - 1, self.grid_w + width // d - 1]
        pos = np.zeros((3, 5), np.int64)
        pos[:, 4] = [0, 1, 2]
        return TokenSequence(np.array(ids), pos)

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Positions of a complete stream, from its grid header (no walk)."""
        ids = np.asarray(ids, np.int64)
        rows, cols = (0, 0) if len(ids) < 4 else (ids[1] - self.grid_h + 1, ids[2] - self.grid_w + 1)
        if rows < 1 or cols < 1 or len(ids) != 4 + rows * cols:
            raise TokenizerError(f"a code stream of {len(ids)} tokens does not match its grid header")
        return self.from_codes(ids[3:-1].reshape(rows, cols)).positions

    def grammar(self, prefix: TokenSequence | None = None, bounded: bool = False) -> VqGrammar:
        return advance(VqGrammar(self), prefix)     # codes always decode in range: bounded is moot

    # -- persistence: the network's weights next to tokenizer.json ---------------------------------
    def save_files(self, directory: Path) -> None:
        state = {k: v.detach().contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, str(directory / self.weights_file))

    @classmethod
    def from_files(cls, config: Any, directory: Path) -> CodeGridTokenizer:
        path = directory / cls.weights_file
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (a {cls.name} tokenizer directory holds "
                                    f"{cls.weights_file})")
        model = cls.model_class(config)
        model.load_state_dict(load_file(str(path)), strict=True)
        return cls(config, model)


class VqVaeTokenizer(CodeGridTokenizer):
    """Learned image tokens: one codebook id per downsample x downsample cell (lossy)."""

    name = "vqvae"
    config_class = VqConfig
    model_class = VqVae
    weights_file = "vqvae.safetensors"

    def __init__(self, config: VqConfig | None = None, model: VqVae | None = None):
        self.config = c = config or VqConfig()
        self.model = (model or VqVae(c)).eval()
        self.set_ids(c.codebook_size, c.max_grid, c.downsample)

    # -- media <-> pixels -------------------------------------------------------------------------
    def pixels(self, media: Any, name: str | None = None) -> np.ndarray:
        """(H, W, 3) uint8 pixels of `media` at the configured size: what `encode` sees."""

        name = name or name_of(media)
        px = load_pixels(media, read_bytes(media, name), name, gray=False, limit=1 << 26)
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

