"""VideoTokenizer: a clip -> one stream of JPEG-DCT frames (intra, or deltas from the previous frame,
optionally moved by a motion vector).

    tok = VideoTokenizer(VideoConfig(mode="delta", quality=50, size=(64, 64), max_frames=16))
    seq = tok.encode("clip.mp4")        # a video file (PyAV, the `video` extra) or a list of frames
    jpegs = tok.decode(seq)             # list of JPEG bytes, one per frame
    write_mjpeg(jpegs, "clip.avi"); filmstrip(jpegs).save("strip.png")

Stream (ids of the JPEG-DCT vocabulary, then FRAME_I, FRAME_D, QT_NEW; mode "motion" appends
MV_Y(dy) and MV_X(dx) for dy, dx in -motion_range..motion_range):

    BOS SUB H_hi H_lo W_hi W_lo (Q | QT_CUSTOM bytes)         clip header = a JPEG header
    ( [QT_NEW (Q | QT_CUSTOM bytes)]  (FRAME_I intra body | FRAME_D [MV_Y MV_X] delta body) ) x frames
    EOS

An intra body is exactly a JPEG-DCT body (tokenizer.jpeg.codec, block order `order`); a delta body
codes the difference from a reference (tokenizer.video.delta, block order `delta_order`): the previous
frame's coefficients, or in mode "motion" those moved by the frame's motion vector in whole luma
blocks (MV_Y MV_X, chosen by the encoder: the fewest nonzero differences). QT_NEW
changes the quantization tables from this frame on (FFmpeg's MJPEG rate control changes them per
frame). Every position row carries the frame index in its frame field.

Frames come from: a list of images (anything JpegDctTokenizer takes, JPEG bytes are kept as they
are when they already have the configured geometry / quality, or always with quality=None); or a
video file: an MJPEG stream's packets are JPEG files and go through the same path (no re-encode with
quality=None: restart markers, missing Huffman tables and per-frame tables are read as they are;
sampling layouts other than gray/4:4:4/4:2:0/4:2:2/4:4:0 are refused with a message naming them);
other codecs are decoded to RGB and encoded at the configured quality.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from tokenizer.base import Tokenizer, TokenizerError, TokenSequence, advance
from tokenizer.jpeg.codec import decode_coefficients, encode_coefficients, parse_header
from tokenizer.jpeg.format import HEADER_LEN, ORDERS, Vocab, block_layout, header_ids, header_positions
from tokenizer.jpeg.io import Coefficients, write_coefficients
from tokenizer.jpeg.tokenizer import JpegDctConfig, JpegDctTokenizer
from tokenizer.video.delta import DeltaGrammar, best_motion, encode_delta, motion_reference
from tokenizer.video.io import filmstrip, read_frame, read_video, real_clip, write_mjpeg

__all__ = ["MODES", "VideoConfig", "VideoTokenizer", "filmstrip", "read_video", "real_clip", "write_mjpeg"]

MODES = ("intra", "delta", "motion")
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mjpeg", ".mpg", ".mpeg"}


@dataclass(frozen=True)
class VideoConfig:
    """Settings of a video tokenizer; saved with it. Per-frame settings as in JpegDctConfig.

    mode: "intra" (every frame on its own), "delta" (frames after the first as differences from the
        previous frame) or "motion" (differences from the previous frame moved by a per-frame motion
        vector of whole luma blocks, |dy|, |dx| <= motion_range).
    order: block order of intra frames; delta_order: of delta frames ("raster" by default, which is
        what tokenizers saved before delta frames had an order use).
    max_frames: frames taken from a clip (and the most a stream may hold); frame_step: take every
        n-th frame. keyframe_interval: in delta mode, an intra frame every n frames (0 = first only).
    """

    mode: str = "delta"
    quality: int | None = 50
    size: tuple[int, int] | None = (64, 64)
    subsampling: str = "4:2:0"
    order: str = "raster"
    resize: str = "center_crop"
    bands: tuple[int, ...] = (1, 6, 15, 28, 64)
    dc_range: int = 64
    ac_range: int = 16
    max_skip: int = 64
    max_frames: int = 16
    frame_step: int = 1
    keyframe_interval: int = 0
    delta_order: str = "raster"
    motion_range: int = 3

    def __post_init__(self) -> None:
        if self.size is not None:
            object.__setattr__(self, "size", tuple(self.size))
        object.__setattr__(self, "bands", tuple(self.bands))
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r}: expected one of {MODES}")
        for name in ("max_frames", "frame_step"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ValueError(f"{name}={getattr(self, name)!r}: expected an int >= 1")
        if self.delta_order not in ORDERS:
            raise ValueError(f"delta_order={self.delta_order!r}: expected one of {ORDERS}")
        if not (isinstance(self.motion_range, int) and 1 <= self.motion_range <= 16):
            raise ValueError(f"motion_range={self.motion_range!r}: expected an int in 1..16")
        if self.keyframe_interval < 0:
            raise ValueError(f"keyframe_interval={self.keyframe_interval!r}: expected >= 0")
        self.jpeg()                                   # validates the per-frame settings

    def jpeg(self) -> JpegDctConfig:
        keys = ("quality", "size", "subsampling", "order", "resize", "bands", "dc_range", "ac_range",
                "max_skip")
        return JpegDctConfig(**{k: getattr(self, k) for k in keys})


class VideoTokenizer(Tokenizer):
    """Clips of JPEG-DCT frames (see the module docstring). Lossless given the frames' coefficients."""

    name = "video_dct"
    config_class = VideoConfig

    def __init__(self, config: VideoConfig | None = None):
        self.config = c = config or VideoConfig()
        self.frame_tok = JpegDctTokenizer(c.jpeg())
        self.vocab: Vocab = self.frame_tok.vocab
        base = self.vocab.size
        self.frame_i, self.frame_d, self.qt_new = base, base + 1, base + 2
        self.vocab_size = base + 3
        if c.mode == "motion":                       # MV_Y(-R..R), MV_X(-R..R)
            self.mv_y = base + 3
            self.mv_x = self.mv_y + 2 * c.motion_range + 1
            self.vocab_size = self.mv_x + 2 * c.motion_range + 1
        self.pad_id, self.bos_id, self.eos_id = self.vocab.pad, self.vocab.bos, self.vocab.eos
        self.n_frame = c.max_frames                  # what a model's frame embedding must hold

    # -- media -> frames' coefficients ------------------------------------------------------------
    def frames(self, media: Any, name: str | None = None) -> list[Coefficients]:
        """The coefficients of each frame `encode` tokenizes (at most max_frames)."""
        name = name or (str(media) if isinstance(media, (str, os.PathLike)) else f"<{type(media).__name__}>")
        if isinstance(media, (list, tuple)):
            items = list(media)[::self.config.frame_step][:self.config.max_frames]
        else:
            items = read_video(media, self.config.max_frames, self.config.frame_step, name)
        if not items:
            raise TokenizerError(f"{name}: no frames")
        coefs = [read_frame(self.frame_tok.to_jpeg(x, f"{name}[{i}]"), f"{name}[{i}]")
                 for i, x in enumerate(items)]
        first = coefs[0]
        for i, cf in enumerate(coefs):
            if (cf.height, cf.width, cf.subsampling) != (first.height, first.width, first.subsampling):
                raise TokenizerError(f"{name}: frame {i} is {cf.width}x{cf.height} {cf.subsampling}, frame 0 "
                                     f"{first.width}x{first.height} {first.subsampling}; set a size")
        return coefs

    # -- tokens -----------------------------------------------------------------------------------
    def encode(self, media: Any, name: str | None = None) -> TokenSequence:
        """A clip comes in (video file or list of frames), one lossless token stream comes out."""
        return self.encode_frames(self.frames(media, name))

    def encode_frames(self, coefs: list[Coefficients]) -> TokenSequence:
        if not 1 <= len(coefs) <= self.config.max_frames:
            raise TokenizerError(f"{len(coefs)} frames: expected 1..max_frames={self.config.max_frames}")
        c, v = self.config, self.vocab
        first = coefs[0]
        hdr = header_ids(v, first.height, first.width, first.subsampling, first.qtables)
        ids, pos = [hdr], [header_positions(len(hdr))]
        layout = block_layout(first.height, first.width, first.subsampling, c.delta_order, c.bands)
        prev = None
        for f, cf in enumerate(coefs):
            new_tables = f > 0 and not np.array_equal(cf.qtables, coefs[f - 1].qtables)
            if new_tables:
                q = header_ids(v, cf.height, cf.width, cf.subsampling, cf.qtables)[HEADER_LEN - 1:]
                ids.append(np.concatenate([[self.qt_new], q]))
                pos.append(_table_positions(f, len(q) + 1))
            cur = layout.gather(cf)
            keyframe = c.keyframe_interval and f % c.keyframe_interval == 0
            if prev is None or c.mode == "intra" or new_tables or keyframe:
                body = encode_coefficients(v, cf, c.order, c.bands)
                n = len(header_ids(v, cf.height, cf.width, cf.subsampling, cf.qtables))
                ids.append(np.concatenate([[self.frame_i], body.ids[n:-1]]))
                p = body.positions[n - 1:-1].copy()
                p[0] = 0
                p[:, 0] = f
                pos.append(p)
            else:
                start, start_pos = [self.frame_d], [(f, 0, 0, 0, 0)]
                if c.mode == "motion":
                    dy, dx = best_motion(layout, prev, cur, c.motion_range)
                    prev = motion_reference(layout, prev, dy, dx)
                    start += [self.mv_y + dy + c.motion_range, self.mv_x + dx + c.motion_range]
                    start_pos += [(f, 0, 0, 0, 1), (f, 0, 0, 0, 2)]
                d_ids, d_pos = encode_delta(v, layout, prev, cur, f)
                ids.append(np.array(start + d_ids, np.int64))
                pos.append(np.array(start_pos + d_pos, np.int64).reshape(-1, 5))
            prev = cur
        ids.append(np.array([v.eos]))
        pos.append(np.array([[len(coefs) - 1, 0, 0, 0, HEADER_LEN]]))
        return TokenSequence(np.concatenate(ids), np.concatenate(pos))

    def decode_frames(self, seq: TokenSequence) -> list[Coefficients]:
        """Inverse of encode_frames. TokenizerError if the stream is not a complete valid clip."""
        g = self.grammar()
        for t in seq.ids:
            g.push(int(t))
        if not g.done:
            raise TokenizerError(f"clip stream of {len(seq)} tokens ends before its EOS")
        return g.frames

    def decode(self, seq: TokenSequence) -> list[bytes]:
        """Token stream in, a list of JPEG files (bytes), one per frame, out."""
        return [write_coefficients(cf) for cf in self.decode_frames(seq)]

    def header(self, height: int, width: int, quality: int | None = None,
               subsampling: str | None = None) -> TokenSequence:
        """BOS, clip header and FRAME_I: a prompt for sampling a clip from scratch."""
        h = self.frame_tok.header(height, width, quality, subsampling)
        return TokenSequence(np.concatenate([h.ids, [self.frame_i]]),
                             np.concatenate([h.positions, [[0, 0, 0, 0, 0]]]))

    def prompt(self, media: Any, n_frames: int) -> TokenSequence:
        """The stream of a clip's first `n_frames` frames, open for the next frame (to continue it)."""
        seq = self.encode(media)
        starts = np.flatnonzero(np.isin(seq.ids, [self.frame_i, self.frame_d, self.qt_new])
                                & (np.arange(len(seq)) > 0))
        frames = seq.positions[starts, 0]
        cut = starts[frames >= n_frames]
        return seq[:int(cut[0])] if len(cut) else seq[:-1]

    def grammar(self, prefix: TokenSequence | None = None, bounded: bool = False) -> VideoGrammar:
        g = advance(VideoGrammar(self), prefix)
        g.jpeg.bounded = bounded     # intra frames after the prefix (copies of this cursor); delta
        return g                     # frames are not bounded

    # -- persistence ------------------------------------------------------------------------------


def _table_positions(frame: int, n: int) -> np.ndarray:
    """QT_NEW and its table tokens: like a header's quality slot and custom-table bytes."""
    p = header_positions(HEADER_LEN - 2 + n)[HEADER_LEN - 2:]
    p[:, 0] = frame
    return p


class VideoGrammar:
    """A cursor over clip streams: the clip header, then frames (intra bodies walked by the JPEG
    grammar, delta bodies by DeltaGrammar), each frame's coefficients rebuilt as it ends."""

    def __init__(self, tok: VideoTokenizer):
        self.tok = tok
        self.jpeg = tok.frame_tok.grammar()      # walks the clip header, then serves as a template
        self.header: list[int] = []
        self.state = "header"            # header | start | tables | intra | mv_y | mv_x | delta | done
        self.frames: list[Coefficients] = []
        self.body: list[int] = []
        self.done = False
        self._tables: JpegTables | None = None

    def _pad(self, m: np.ndarray) -> np.ndarray:
        out = np.zeros(self.tok.vocab_size, bool)
        out[:len(m)] = m
        return out

    def allowed(self) -> np.ndarray:
        t = self.tok
        if self.state == "header":
            return self._pad(self.jpeg.allowed())
        if self.state == "tables":
            return self._pad(self._tables.allowed())
        if self.state in ("mv_y", "mv_x"):
            m = np.zeros(t.vocab_size, bool)
            first = t.mv_y if self.state == "mv_y" else t.mv_x
            m[first:first + 2 * t.config.motion_range + 1] = True
            return m
        if self.state in ("intra", "delta"):
            m = self.cursor.allowed()
            if not self._frame_finished(m):
                return self._pad(m)
        m = np.zeros(t.vocab_size, bool)
        if self.state == "done":
            return m
        started = self.state != "start"           # a frame just finished (not yet in self.frames)
        if len(self.frames) + started < t.config.max_frames:
            m[t.frame_i] = True
            m[t.frame_d] = bool(self.frames) or started
            m[t.qt_new] = started                  # tables change between frames, once
        m[t.eos_id] = started
        return m

    def _frame_finished(self, m: np.ndarray) -> bool:
        if self.state == "delta":
            return self.cursor.finished
        return bool(m[self.tok.eos_id]) and m.sum() == 1

    def push(self, token: int) -> np.ndarray:
        token, t = int(token), self.tok
        if not (0 <= token < t.vocab_size) or not self.allowed()[token]:
            raise TokenizerError(f"token {token} is not allowed here (clip {self.state}, "
                                 f"frame {len(self.frames)})")
        if self.state == "header":
            self.header.append(token)
            pos = self.jpeg.push(token)
            if self.jpeg.layout is not None:            # header complete
                h, w, sub, qt, _ = parse_header(t.vocab, np.array(self.header + [t.eos_id]))
                self.geometry, self.qtables = (h, w, sub), qt
                self.layout = block_layout(h, w, sub, t.config.delta_order, t.config.bands)
                self.template = self.jpeg
                self.state = "start"
            return pos
        if self.state == "tables":
            pos = self._tables.push(token)
            pos[0] = len(self.frames)
            if self._tables.done:
                self.qtables, self.state = self._tables.qtables, "start"
            return pos
        if self.state == "mv_y":
            self.dy, self.state = token - t.mv_y - t.config.motion_range, "mv_x"
            return np.array([len(self.frames), 0, 0, 0, 1])
        if self.state == "mv_x":
            self._start_delta(token - t.mv_x - t.config.motion_range)
            return np.array([len(self.frames), 0, 0, 0, 2])
        if self.state in ("intra", "delta") and not self._frame_finished(self.cursor.allowed()):
            if self.state == "intra":
                self.body.append(token)
            pos = np.asarray(self.cursor.push(token)).copy()
            pos[0] = len(self.frames)
            return pos
        if self.state in ("intra", "delta"):
            self._end_frame()
        f = len(self.frames)
        if token == t.eos_id:
            self.state, self.done = "done", True
            return np.array([f - 1, 0, 0, 0, HEADER_LEN])
        if token == t.qt_new:
            self._tables = JpegTables(t.vocab, len(self.qtables))
            self.state = "tables"
            return np.array([f, 0, 0, 0, HEADER_LEN - 2])
        if token == t.frame_i:
            self.cursor, self.body, self.state = self.template.copy(), [], "intra"
        elif t.config.mode == "motion":
            self.state = "mv_y"
        else:
            self._start_delta(None)
        return np.array([f, 0, 0, 0, 0])

    def _start_delta(self, dx: int | None) -> None:
        """The delta body's cursor, over the previous frame (moved by (self.dy, dx) if given)."""
        prev = self.layout.gather(self.frames[-1])
        if dx is not None:
            prev = motion_reference(self.layout, prev, self.dy, dx)
        self.cursor = DeltaGrammar(self.tok.vocab, self.layout, prev, len(self.frames))
        self.state = "delta"

    def _end_frame(self) -> None:
        h, w, sub = self.geometry
        if self.state == "intra":
            ids = np.concatenate([self.header, self.body, [self.tok.eos_id]])
            cf = decode_coefficients(self.tok.vocab, TokenSequence(ids, np.zeros((len(ids), 5))),
                                     self.tok.config.order, self.tok.config.bands)
            blocks = cf.blocks
        else:
            blocks = self.layout.scatter(self.cursor.cur)
        self.frames.append(Coefficients(h, w, sub, blocks, np.asarray(self.qtables, np.uint16)))


class JpegTables:
    """Cursor over a table change: Q(quality) or QT_CUSTOM and 64 bytes (1..255) per component."""

    def __init__(self, vocab: Vocab, n_components: int):
        self.vocab, self.n, self.ids, self.done = vocab, n_components, [], False

    def allowed(self) -> np.ndarray:
        v, m = self.vocab, np.zeros(self.vocab.size, bool)
        if not self.ids:
            m[v.quality:v.quality + 100] = True
            m[v.qt_custom] = True
        elif not self.done:
            m[v.byte + 1:v.byte + 256] = True
        return m

    def push(self, token: int) -> np.ndarray:
        j = len(self.ids)
        self.ids.append(token)
        pos = header_positions(HEADER_LEN + j)[HEADER_LEN - 1 + j]
        if j == 0 and token != self.vocab.qt_custom:
            from tokenizer.jpeg.io import standard_qtables
            self.qtables, self.done = standard_qtables(token - self.vocab.quality + 1, self.n), True
        elif j == 64 * self.n:
            self.qtables = np.array(self.ids[1:], np.int64).reshape(self.n, 64) - self.vocab.byte
            self.done = True
        return pos
