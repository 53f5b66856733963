"""Lossless JPEG recompression: a model's next-token probabilities drive a range coder.

    python -m dctgpt.codec compress photo.jpg photo.jpg.dgt --ckpt out/quickstart
    python -m dctgpt.codec decompress photo.jpg.dgt restored.jpg --ckpt out/quickstart   # same bytes
    python -m dctgpt.codec compress photos/ packed/ --ckpt out/quickstart     # folders in, folders out

A JPEG is cut around its scan (tokenizer.jpeg.scan): the bytes before it are packed small
(tokenizer.jpeg.head), the bytes after it are kept, and the scan itself becomes the token stream of
the file's own coefficients (the checkpoint's tokenizer with its size and quality lifted), coded by
constriction's range coder with the model's probabilities, masked by the grammar (only allowed ids get
any). Decompressing decodes the tokens and re-creates the scan from the coefficients and the file's
Huffman tables, so the output is the input byte for byte. A file this path cannot carry (progressive,
arithmetic-coded, 12-bit, CMYK, broken, not a JPEG, or whose scan the re-encoding does not give back
exactly) is stored as it is, flagged; nothing is ever lost.

Both directions compute the probabilities the same way, token by token through the model's KV cache on
one thread, and quantize them to integers (logits rounded to a grid, float64 softmax, a floor of 1), so
the tables match exactly. The container records the original's length and SHA-256, a CRC of itself and
the model's id: decompressing refuses with a one-line error, never writes a different file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import struct
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from dctgpt.evaluate import as_is
from tokenizer.base import TokenSequence
from tokenizer.cli import run
from tokenizer.jpeg.format import header_ids
from tokenizer.jpeg.head import ByteReader, HeadTemplate, pack_head, unpack_head, varint
from tokenizer.jpeg.io import parse_jpeg, read_coefficients
from tokenizer.jpeg.scan import encode_scan, scan_spec, split_jpeg
from tokenizer.jpeg.tokenizer import JpegDctTokenizer

log = logging.getLogger("dctgpt.codec")
MAGIC, VERSION = b"DGT\x1a", 1
RAW, CODED = 0, 1
SUFFIX = ".dgt"
GRID = 64            # logits are rounded to 1/GRID nat before the softmax
TOTAL = 1 << 24      # integer probabilities of the allowed ids sum to TOTAL, each at least 1
_FIXED = struct.Struct(">4sBBI8s8s")   # magic, version, kind, crc32 of the rest, sha256[:8], model id


class CodecError(ValueError):
    """A container that cannot be decompressed exactly: the message says why, in one line."""


class Predictor(Protocol):
    """What the codec needs from a model: next-token logits over the tokenizer's vocabulary.

    `id` names the model (8 bytes): compressing records it, decompressing checks it. `start(ids,
    positions)` begins a stream with its header tokens and returns the logits (V,) for the token
    after them; `step(id, position)` feeds one more token and returns the logits for the next. Both
    directions make the same calls in the same order, so a deterministic model gives equal logits."""

    id: bytes

    def start(self, ids: np.ndarray, positions: np.ndarray) -> np.ndarray: ...

    def step(self, token: int, position: np.ndarray) -> np.ndarray: ...


class GPTPredictor:
    """A GPT through its KV cache, one token per call, in the sliding windows `dctgpt.evaluate`
    scores with (stride block_size / 2): when a window ends, the cache is rebuilt from the last
    block_size - stride tokens in one pass, so every token sees the context its NLL was measured with.
    A model with context features gets each token's row from the tokenizer's context cursor."""

    def __init__(self, model: torch.nn.Module, tok: JpegDctTokenizer):
        self.model, self.tok = model.eval(), tok
        config = [model.config.to_dict(), tok.name, dataclasses.asdict(tok.config)]
        h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())   # id: config, tokenizer, weights
        for name, t in sorted(model.state_dict().items()):
            h.update(name.encode() + t.detach().cpu().contiguous().numpy().tobytes())
        self.id = h.digest()[:8]
        self.window = model.config.block_size
        self.stride = max(1, self.window // 2)

    def _prefill(self, start: int) -> np.ndarray:
        """A fresh cache holding tokens start.. so far; the logits after the last of them."""
        from dctgpt.model import KVCache

        self.cache = KVCache(self.model.config, 1)
        x = torch.tensor(self.ids[start:])[None]
        p = torch.from_numpy(np.stack(self.rows[start:]).astype(np.int64))[None]
        return self.model(x, p, cache=self.cache, context=self._context(start))[0][0, -1].double().numpy()

    def _context(self, start: int, end: int | None = None) -> torch.Tensor | None:
        """The context rows (1, T, n_context) of tokens start..end-1, or None without features."""
        if self.cursor is None:
            return None
        return torch.from_numpy(np.stack(self.cursor.rows[start:end]).astype(np.int64))[None]

    def start(self, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        n = min(len(ids), self.window - 1)         # (a header longer than that goes on one by one)
        self.ids, self.rows = [int(t) for t in ids[:n]], list(positions[:n])
        self.cursor = self.tok.context_cursor(TokenSequence(ids[:n], positions[:n])) \
            if self.model.config.n_context else None
        logits = self._prefill(0)
        for t, r in zip(ids[n:], positions[n:]):
            logits = self.step(int(t), r)
        return logits

    def step(self, token: int, position: np.ndarray) -> np.ndarray:
        self.ids.append(int(token))
        self.rows.append(position)
        if self.cursor is not None:
            self.cursor.push(int(token), position)
        p = len(self.ids) - 1                       # the position whose logits are wanted
        if p >= self.window - 1 and (p - self.window + 1) % self.stride == 0:   # a new window
            return self._prefill(p + 1 - (self.window - self.stride))
        x = torch.tensor([[int(token)]])
        r = torch.from_numpy(np.asarray(position, np.int64)).view(1, 1, 5)
        return self.model(x, r, cache=self.cache, context=self._context(p))[0][0, -1].double().numpy()


@contextlib.contextmanager
def _one_thread():
    """Inference mode on one thread: more threads may sum in another order (and are slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            yield
    finally:
        torch.set_num_threads(threads)


def quantize(logits: np.ndarray) -> np.ndarray:
    """Logits (float64) of the allowed ids -> integer probabilities (as float64) summing to TOTAL,
    each at least 1: logits rounded to a grid of 1/GRID nat (float noise rarely crosses a step),
    a float64 softmax, floored, and the rest of TOTAL given to the likeliest id."""
    x = np.rint(logits * GRID)
    x -= x.max()
    counts = np.exp(x * (1 / GRID))
    counts *= (TOTAL - len(x)) / counts.sum()
    np.floor(counts, out=counts)
    counts += 1
    counts[counts.argmax()] += TOTAL - counts.sum()
    return counts


def _code(pred: Predictor, tok: JpegDctTokenizer, header: TokenSequence, coder) -> TokenSequence:
    """Walk a stream after `header`. At each token the grammar gives the allowed ids; unless only one
    is allowed, the model's integer probabilities over them go to `coder(model, allowed, t) -> id`
    (t: the token's index in the stream), which encodes the known id or decodes it."""
    with _one_thread():
        return _walk(pred, tok, header, coder)


def _walk(pred: Predictor, tok: JpegDctTokenizer, header: TokenSequence, coder) -> TokenSequence:
    import constriction

    grammar = tok.grammar(header)
    logits = pred.start(header.ids, header.positions)
    ids, rows = [], []
    while not grammar.done:
        allowed = np.flatnonzero(grammar.allowed())
        if len(allowed) == 1:
            token = int(allowed[0])          # forced: costs nothing
        else:
            model = constriction.stream.model.Categorical(quantize(logits[allowed]), perfect=False)
            token = coder(model, allowed, len(header) + len(ids))
        row = grammar.push(token)
        ids.append(token)
        rows.append(row)
        if not grammar.done:
            logits = pred.step(token, row)
    return TokenSequence.concat([header, TokenSequence(np.array(ids), np.array(rows).reshape(-1, 5))])


def _header(tok: JpegDctTokenizer, head: bytes) -> TokenSequence:
    """The stream's header tokens, from the frame header and quantization tables in `head`."""
    info = parse_jpeg(head + b"\x00\xff\xd9")   # a stand-in byte of scan and EOI: a complete file
    qt = np.stack([info.qtables[t] for t in info.table_of])
    ids = header_ids(tok.vocab, info.height, info.width, info.subsampling, qt)
    grammar = tok.grammar()
    return TokenSequence(ids, np.stack([grammar.push(int(t)) for t in ids]))


def _rebuild(template: HeadTemplate, coef, trailer: bytes) -> bytes:
    head = template.fill(coef)
    return head + encode_scan(scan_spec(head), coef) + trailer


@dataclass(frozen=True)
class Plan:
    """What compressing a JPEG needs besides the model, checked: the file comes back from it."""

    head: bytes              # packed head (tokenizer.jpeg.head)
    trailer: bytes           # the bytes after the scan
    tokens: TokenSequence    # the stream of the file's coefficients
    header: int              # its header tokens: they come from the head, not the coder


def plan(data: bytes, tok: JpegDctTokenizer, name: str = "<bytes>") -> Plan:
    """Cut, pack and tokenize a JPEG, and check that the decompressor's path gives it back from the
    tokens. ValueError (naming `name`) for anything this path cannot carry exactly."""
    parts = split_jpeg(data, name)
    scan_spec(parts.head, name)
    coef = read_coefficients(data, name)
    seq = tok.encode_coefficients(coef)
    packed = pack_head(parts.head, coef)
    template = unpack_head(packed)
    header = _header(tok, template.provisional)
    if not np.array_equal(seq.ids[:len(header)], header.ids):
        raise ValueError(f"{name}: the head does not give the stream's header")
    if _rebuild(template, tok.decode_coefficients(seq), parts.trailer) != data:
        raise ValueError(f"{name}: re-encoding the coefficients does not give the file back")
    return Plan(packed, parts.trailer, seq, len(header))


@dataclass(frozen=True)
class Packed:
    data: bytes       # the container
    coded: bool       # False: stored as it was
    reason: str       # why it was stored as it was ("" when coded)
    payload: int      # range-coded bytes (0 when stored)


def compress(data: bytes, pred: Predictor, tok: JpegDctTokenizer, name: str = "<bytes>") -> Packed:
    """A container for `data`: coded when the coefficient path carries it exactly, else stored."""
    try:
        p = plan(data, tok, name)
        payload = _encode(p, pred, tok)
    except (ValueError, OSError) as e:   # what the coefficient path cannot carry is stored as it is
        log.debug("%s: stored as it is (%s)", name, e)
        return Packed(_container(RAW, data, b"\0" * 8, data), False, str(e).replace(name + ": ", ""), 0)
    body = varint(len(p.head)) + p.head + varint(len(p.trailer)) + p.trailer + payload
    return Packed(_container(CODED, data, pred.id, body), True, "", len(payload))


def _encode(p: Plan, pred: Predictor, tok: JpegDctTokenizer) -> bytes:
    """The range coder's bytes for the tokens after the header."""
    import constriction

    encoder = constriction.stream.queue.RangeEncoder()
    ids = p.tokens.ids

    def encode(model, allowed: np.ndarray, t: int) -> int:
        encoder.encode(int(np.searchsorted(allowed, ids[t])), model)
        return int(ids[t])

    assert _code(pred, tok, p.tokens[:p.header], encode) == p.tokens
    words = encoder.get_compressed().astype("<u4").tobytes()
    cut = min(3, len(words) - len(words.rstrip(b"\0")))   # zero bytes of the last word: padding
    return words[:len(words) - cut]


def decompress(container: bytes, pred: Predictor | None, tok: JpegDctTokenizer | None) -> bytes:
    """The original bytes. CodecError (one line) if the container is damaged, from another model,
    or does not decode to exactly the original."""
    import constriction

    kind, sha, model_id, length, body = _parse(container)
    if kind == RAW:
        data = body
    else:
        if pred is None or tok is None:
            raise CodecError(f"coded with model {model_id.hex()}: give its checkpoint (--ckpt)")
        if model_id != pred.id:
            raise CodecError(f"coded with model {model_id.hex()}, not this checkpoint's {pred.id.hex()}")
        reader = ByteReader(body, CodecError, "container")
        head, trailer = reader.take(reader.varint()), reader.take(reader.varint())
        payload = reader.rest()
        words = np.frombuffer(payload + b"\0" * (-len(payload) % 4), "<u4").astype(np.uint32)
        decoder = constriction.stream.queue.RangeDecoder(words)
        try:    # the CRC passed, so a failure here is damage it missed or a bug
            template = unpack_head(head)
            seq = _code(pred, tok, _header(tok, template.provisional),
                        lambda model, allowed, t: int(allowed[decoder.decode(model)]))
            data = _rebuild(template, tok.decode_coefficients(seq), trailer)
        except (ValueError, OSError) as e:
            raise CodecError(f"container does not decode ({e})") from None
    if len(data) != length or hashlib.sha256(data).digest()[:8] != sha:
        raise CodecError("decoded bytes differ from the original (checksum); was it compressed with "
                         "another torch build or CPU?")
    return data


# -- container -----------------------------------------------------------------------------------------
# magic "DGT\x1a", version, kind (0 stored, 1 coded), CRC-32 of version, kind and all that follows,
# SHA-256[:8] of the original, model id (8 bytes, zeros when stored), varint original length; then
# the original (stored) or varint + packed head, varint + trailer, the range coder's words (trailing
# zero bytes cut).

def _container(kind: int, data: bytes, model_id: bytes, body: bytes) -> bytes:
    sha = hashlib.sha256(data).digest()[:8]
    rest = sha + model_id + varint(len(data)) + body
    crc = zlib.crc32(bytes([VERSION, kind]) + rest)
    return _FIXED.pack(MAGIC, VERSION, kind, crc, sha, model_id) + rest[16:]


def _parse(container: bytes) -> tuple[int, bytes, bytes, int, bytes]:
    """(kind, sha, model id, original length, body) of a container; CodecError if it is damaged."""
    if container[:4] != MAGIC:
        raise CodecError("not a dctgpt container (bad magic)")
    if len(container) < _FIXED.size:
        raise CodecError("truncated container")
    magic, version, kind, crc, sha, model_id = _FIXED.unpack(container[:_FIXED.size])
    if version != VERSION:
        raise CodecError(f"container version {version}; this code reads version {VERSION}")
    if zlib.crc32(container[4:6] + container[10:]) != crc or kind not in (RAW, CODED):
        raise CodecError("corrupted or truncated container (CRC mismatch)")
    reader = ByteReader(container[_FIXED.size:], CodecError, "container")
    length = reader.varint()
    return kind, sha, model_id, length, reader.rest()


# -- files and folders -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Summary:
    files: int
    coded: int
    stored: int
    failed: int           # decompress: containers refused
    bytes_in: int
    bytes_out: int
    seconds: float
    jpeg_bytes: int       # the JPEG side (input of compress, output of decompress): what KB/s counts

    @property
    def kb_per_s(self) -> float:
        return self.jpeg_bytes / 1000 / max(self.seconds, 1e-9)

    def line(self, verb: str) -> str:
        ratio = self.bytes_out / max(self.bytes_in, 1)
        return (f"{verb} {self.files} files ({self.coded} coded, {self.stored} stored as they were"
                f"{f', {self.failed} refused' if self.failed else ''}): {self.bytes_in:,} -> "
                f"{self.bytes_out:,} bytes ({ratio:.1%}), {self.seconds:.1f} s, {self.kb_per_s:.2f} KB/s")


def load_predictor(ckpt: str | os.PathLike) -> tuple[GPTPredictor, JpegDctTokenizer]:
    """The checkpoint's model as a Predictor and its tokenizer with size and quality lifted."""
    from dctgpt import checkpoint

    ck = checkpoint.load(ckpt, "cpu")
    tok = as_is(ck.tokenizer)
    return GPTPredictor(ck.model, tok), tok


def _pairs(src: Path, dst: Path, suffix_in: str, suffix_out: str) -> list[tuple[Path, Path]]:
    """(input, output) files: one file, or every file under a folder (names kept, suffix changed)."""
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or folder")
    if src.is_file():
        return [(src, dst)]
    files = sorted(p for p in src.rglob("*") if p.is_file() and p.name.endswith(suffix_in))
    if not files:
        raise FileNotFoundError(f"{src}: no files{f' ending in {suffix_in}' if suffix_in else ''}")
    return [(p, dst / p.relative_to(src).with_name(p.name[:len(p.name) - len(suffix_in)] + suffix_out))
            for p in files]


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def run_files(command: str, src: str | os.PathLike, dst: str | os.PathLike, pred: Predictor | None,
              tok: JpegDctTokenizer | None, progress: bool = True) -> Summary:
    """"compress" a file, or every file under a folder, into `dst` (NAME -> NAME.dgt), or
    "decompress" containers back (NAME.dgt -> NAME). A container that cannot be restored exactly is
    reported on stderr and nothing is written for it (a single file: CodecError)."""
    from tqdm import tqdm

    compressing = command == "compress"
    pairs = _pairs(Path(src), Path(dst), *(("", SUFFIX) if compressing else (SUFFIX, "")))
    t0, coded, failed, n_in, n_out = time.perf_counter(), 0, 0, 0, 0
    bar = tqdm(total=sum(p.stat().st_size for p, _ in pairs), unit="B", unit_scale=True, desc=command,
               disable=not (progress and sys.stderr.isatty()))
    for inp, out in pairs:
        data, t = inp.read_bytes(), time.perf_counter()
        bar.update(len(data))
        try:
            if compressing:
                packed = compress(data, pred, tok, str(inp))
                result, is_coded = packed.data, packed.coded
                log.info("%s: %d -> %d bytes, %s, %.1f s", inp, len(data), len(result),
                         f"range-coded payload {packed.payload}" if packed.coded
                         else f"stored as it is ({packed.reason})", time.perf_counter() - t)
            else:
                result, is_coded = decompress(data, pred, tok), data[5] == CODED
        except CodecError as e:
            if len(pairs) == 1:
                raise CodecError(f"{inp}: {e}") from None
            print(f"error: {inp}: {e}", file=sys.stderr)
            failed += 1
            continue
        _write(out, result)
        coded, n_in, n_out = coded + is_coded, n_in + len(data), n_out + len(result)
    bar.close()
    return Summary(len(pairs), coded, len(pairs) - coded - failed, failed, n_in, n_out,
                   time.perf_counter() - t0, n_in if compressing else n_out)


@dataclass(frozen=True)
class CodecConfig:
    command: str                  # "compress" or "decompress" (or first on the line: compress IN OUT)
    input: str                    # a file, or a folder: every file under it (decompress: every NAME.dgt)
    output: str                   # a file, or a folder for a folder
    ckpt: str = ""                # checkpoint dir or out_dir (decompress: needed for coded files only)
    verbose: bool = False         # a line per file: sizes, or why it was stored as it is

    def __post_init__(self) -> None:
        if self.command not in ("compress", "decompress"):
            raise ValueError(f"command={self.command!r}: expected 'compress' or 'decompress'")
        if self.command == "compress" and not self.ckpt:
            raise ValueError("compress needs --ckpt (a checkpoint dir or the out_dir holding ckpt/)")


def main(cfg: CodecConfig) -> int:
    """Run one command; 0, or 2 when a container of a folder was refused."""
    log.setLevel(logging.INFO if cfg.verbose else logging.WARNING)
    pred, tok = load_predictor(cfg.ckpt) if cfg.ckpt else (None, None)
    summary = run_files(cfg.command, cfg.input, cfg.output, pred, tok)
    print(summary.line(cfg.command + "ed"))
    return 2 if summary.failed else 0


def cli(argv: list[str] | None = None) -> int:
    """`compress IN OUT [--key=value ...]`: up to three leading words name the first three keys."""
    argv = list(sys.argv[1:] if argv is None else argv)
    n = next((i for i, a in enumerate(argv[:3]) if a.startswith("-")), min(3, len(argv)))
    words = [f"--{k}={v}" for k, v in zip(("command", "input", "output"), argv[:n])]
    return run(main, CodecConfig, words + argv[n:])


if __name__ == "__main__":
    sys.exit(cli())
