"""JpegDctTokenizer: any image -> the quantized DCT coefficients of a JPEG -> token ids, and back.

    tok = JpegDctTokenizer(JpegDctConfig(quality=25, size=(64, 64), subsampling="4:2:0"))
    seq = tok.encode("photo.png")     # path, JPEG/PNG bytes, PIL image or HxWx3 / HxW uint8 array
    jpeg_bytes = tok.decode(seq)

`to_jpeg` brings an input to the configured geometry and quality. A JPEG that already has them
(or any JPEG when quality=None and size=None) is used as it is: its coefficients and tables are
read without decoding pixels. Everything else is decoded to pixels (EXIF orientation applied,
alpha composited on white, 16-bit scaled to 8), fitted to `size` by the named `resize` policy, and
encoded by libjpeg (jpeglib) at `quality`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from tokenizer.base import Tokenizer, TokenizerError, TokenSequence, advance
from tokenizer.jpeg import compiled
from tokenizer.jpeg.codec import decode_coefficients, encode_batch, encode_coefficients
from tokenizer.jpeg.context import N_BUCKETS, N_CONTEXT, ContextCursor, context_buckets, context_values
from tokenizer.jpeg.format import ORDERS, Vocab, header_ids, header_positions
from tokenizer.jpeg.grammar import JpegGrammar
from tokenizer.jpeg.io import (
    SUBSAMPLINGS,
    Coefficients,
    encode_pixels,
    parse_jpeg,
    read_coefficients,
    standard_qtables,
    standard_quality,
    write_coefficients,
)
from tokenizer.media import load_pixels, name_of, read_bytes

RESIZE_POLICIES = ("center_crop", "stretch")


@dataclass(frozen=True)
class JpegDctConfig:
    """Settings of a JPEG-DCT tokenizer; saved with it, so a checkpoint rebuilds it with no flags.

    quality: 1..100, or None to keep a JPEG input's own coefficients and tables.
    size: (height, width) in pixels, or None to keep the input's size.
    resize: how an input is fitted to `size`: "center_crop" (scale to cover, crop the middle) or
        "stretch".
    order: block order, "raster" (JPEG's MCU order) or "coarse_to_fine" (DC first, then bands).
    bands: zigzag band edges for coarse_to_fine, from 1 to 64.
    dc_range, ac_range: values coded directly; larger ones use escape tokens.
    max_skip: longest SKIP(n) token (coarse_to_fine runs of empty blocks).
    max_pixels: inputs (and sampled headers) above this many pixels are refused.
    """

    quality: int | None = 25
    size: tuple[int, int] | None = (64, 64)
    subsampling: str = "4:2:0"
    order: str = "raster"
    resize: str = "center_crop"
    bands: tuple[int, ...] = (1, 6, 15, 28, 64)
    dc_range: int = 64
    ac_range: int = 16
    max_skip: int = 64
    max_pixels: int = 1 << 26

    def __post_init__(self) -> None:
        if self.size is not None:
            object.__setattr__(self, "size", tuple(self.size))
            if len(self.size) != 2 or not all(isinstance(s, int) and 1 <= s <= 0xFFFF for s in self.size):
                raise ValueError(f"size={self.size!r}: expected (height, width) in 1..65535 or None")
        object.__setattr__(self, "bands", tuple(self.bands))
        if self.quality is not None and not (isinstance(self.quality, int) and 1 <= self.quality <= 100):
            raise ValueError(f"quality={self.quality!r}: expected an int in 1..100 or None")
        for name, value, choices in (("subsampling", self.subsampling, tuple(SUBSAMPLINGS)),
                                     ("order", self.order, ORDERS), ("resize", self.resize, RESIZE_POLICIES)):
            if value not in choices:
                raise ValueError(f"{name}={value!r}: expected one of {choices}")
        b = self.bands
        if len(b) < 2 or b[0] != 1 or b[-1] != 64 or any(x >= y for x, y in zip(b, b[1:])):
            raise ValueError(f"bands={b!r}: expected increasing edges from 1 to 64")
        for name in ("dc_range", "ac_range", "max_skip"):
            if not 1 <= getattr(self, name) <= 1024:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected 1..1024")


class JpegDctTokenizer(Tokenizer):
    """Lossless JPEG-DCT tokens (see tokenizer.jpeg.format for the format)."""

    name = "jpeg_dct"
    config_class = JpegDctConfig

    def __init__(self, config: JpegDctConfig | None = None):
        self.config = config or JpegDctConfig()
        c = self.config
        self.vocab = Vocab(c.dc_range, c.ac_range, c.max_skip)
        self.vocab_size = self.vocab.size
        self.pad_id, self.bos_id, self.eos_id = self.vocab.pad, self.vocab.bos, self.vocab.eos
        if c.order == "raster":   # tokenizer.jpeg.context (N_CONTEXT, N_BUCKETS), raster streams only
            self.n_context, self.context_buckets = N_CONTEXT, N_BUCKETS

    # -- media -> JPEG at the configured geometry -------------------------------------------------
    def to_jpeg(self, media: Any, name: str | None = None) -> bytes:
        """JPEG bytes of `media` at the configured size, quality and subsampling."""
        name = name or name_of(media)
        data = read_bytes(media, name)
        c = self.config
        if data is not None and data[:2] == b"\xff\xd8":
            info = parse_jpeg(data, name)
            if info.height * info.width > c.max_pixels:
                raise TokenizerError(f"{name}: {info.width}x{info.height} is over max_pixels={c.max_pixels}")
            size_ok = c.size is None or (info.height, info.width) == c.size
            tables = [info.qtables.get(t) for t in info.table_of]
            same_q = c.quality is None or (all(t is not None for t in tables)
                                           and info.subsampling == c.subsampling
                                           and standard_quality(np.stack(tables)) == c.quality)
            if size_ok and same_q and (c.quality is None or info.orientation == 1):
                return data     # (a rotated JPEG is decoded, turned upright and re-encoded)
            if c.quality is None:
                raise TokenizerError(f"{name}: quality=None keeps a JPEG as it is, but it is "
                                     f"{info.width}x{info.height}, not the configured size {c.size}")
        elif c.quality is None:
            raise TokenizerError(f"{name}: quality=None keeps a JPEG's own coefficients; this is not a JPEG")
        pixels = self._fit(load_pixels(media, data, name, gray=c.subsampling == "gray", limit=c.max_pixels))
        return encode_pixels(pixels, c.quality, c.subsampling)

    def _fit(self, px: np.ndarray) -> np.ndarray:
        if self.config.size is None or px.shape[:2] == self.config.size:
            return px
        h, w = self.config.size
        im = Image.fromarray(px)
        if self.config.resize == "stretch":
            return np.asarray(im.resize((w, h), Image.Resampling.LANCZOS))
        return np.asarray(ImageOps.fit(im, (w, h), Image.Resampling.LANCZOS))

    def coefficients(self, media: Any, name: str | None = None) -> Coefficients:
        """The quantized coefficients `encode` tokenizes."""
        name = name or name_of(media)
        return read_coefficients(self.to_jpeg(media, name), name)

    # -- tokens -----------------------------------------------------------------------------------
    def encode(self, media: Any, name: str | None = None) -> TokenSequence:
        """Media comes in (path, bytes, PIL image, uint8 array), a lossless token stream comes out."""
        return self.encode_batch([media], [name])[0]

    def encode_batch(self, media: list, names: list[str | None] | None = None) -> list[TokenSequence]:
        """encode() of many inputs. JPEGs the compiled path takes (tokenizer.jpeg.compiled) go straight
        from their scan to ids; the rest are read by libjpeg and coded in one numpy pass."""
        c = self.config
        out: list[TokenSequence | None] = []
        rest, coefs = [], []
        for m, n in zip(media, names or [None] * len(media)):
            n = n or name_of(m)
            data = self.to_jpeg(m, n)
            out.append(compiled.encode_jpeg(self.vocab, data, c.order, c.bands))
            if out[-1] is None:
                rest.append(len(out) - 1)
                coefs.append(read_coefficients(data, n))
        for i, seq in zip(rest, encode_batch(self.vocab, coefs, c.order, c.bands)):
            out[i] = seq
        return out

    def encode_coefficients(self, coef: Coefficients) -> TokenSequence:
        return encode_coefficients(self.vocab, coef, self.config.order, self.config.bands)

    def decode_coefficients(self, seq: TokenSequence) -> Coefficients:
        return decode_coefficients(self.vocab, seq, self.config.order, self.config.bands)

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Positions of a complete stream, vectorized: its coefficients coded again. Every stream
        `encode` makes comes back as the same ids (lossless both ways), so these are its positions."""
        ids = np.asarray(ids)
        coef = self.decode_coefficients(TokenSequence(ids, np.zeros((len(ids), 5))))
        again = self.encode_coefficients(coef)
        if not np.array_equal(again.ids, ids):
            raise TokenizerError("the stream decodes, but encode codes its coefficients as other ids")
        return again.positions

    def context(self, seq: TokenSequence) -> np.ndarray:
        """Lepton-style context features of a whole raster stream (tokenizer.jpeg.context), bucketed."""
        return context_buckets(context_values(self.vocab, seq, self.config.order, self.config.bands))

    def context_cursor(self, prefix: TokenSequence | None = None) -> ContextCursor:
        """`context` one row at a time (tokenizer.jpeg.context.ContextCursor), past `prefix`."""
        cursor = ContextCursor(self.vocab, self.config.order, self.config.bands)
        for t, p in zip(prefix.ids, prefix.positions) if prefix is not None else ():
            cursor.push(int(t), p)
        return cursor

    def decode(self, seq: TokenSequence) -> bytes:
        """Token stream in, the bytes of a baseline JPEG file out."""
        jpeg = compiled.decode_jpeg(self.vocab, seq, self.config.order, self.config.bands)
        if jpeg is not None:
            return jpeg
        coef = self.decode_coefficients(seq)
        try:
            return write_coefficients(coef)
        except OSError as e:   # libjpeg refuses what baseline JPEG cannot hold (the grammar never allows)
            raise TokenizerError(f"stream holds coefficients libjpeg cannot write ({e})") from None

    def header(self, height: int, width: int, quality: int | None = None,
               subsampling: str | None = None) -> TokenSequence:
        """BOS and header tokens of an image of this size: a prompt for unconditional sampling."""
        sub = subsampling or self.config.subsampling
        q = quality or self.config.quality or 25
        ids = header_ids(self.vocab, height, width, sub, standard_qtables(q, 1 if sub == "gray" else 3))
        return TokenSequence(ids, header_positions(len(ids)))

    def grammar(self, prefix: TokenSequence | None = None, bounded: bool = False) -> JpegGrammar:
        """A cursor over valid streams (tokenizer.jpeg.grammar), advanced past `prefix` if given.
        `bounded` (sampling): after the prefix, every DC within what 8-bit pixels give, and in raster
        order every block's pixels within [LOW, HIGH] (push raises Rewind to draw a block again)."""
        g = advance(JpegGrammar(self.vocab, self.config.order, self.config.bands, self.config.max_pixels),
                    prefix)
        g.bounded, g.resample = bounded, bounded and self.config.order == "raster"
        return g

    # -- persistence ------------------------------------------------------------------------------
