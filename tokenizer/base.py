"""The one interface every tokenizer keeps: ids and positions in, media out.

The model and the training loop see only what is defined here: a `TokenSequence`, the `Tokenizer`
base class and its `Grammar` cursor. `TOKENIZERS` maps each saved name to an import path, so
`load_tokenizer(dir)` rebuilds any tokenizer from its `tokenizer.json` and imports only that one.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

# Columns of `TokenSequence.positions`. Fields a tokenizer has no use for are 0.
POSITION_FIELDS = ("frame", "component", "block_row", "block_col", "frequency")
FRAME, COMPONENT, BLOCK_ROW, BLOCK_COL, FREQUENCY = range(len(POSITION_FIELDS))


class TokenizerError(ValueError):
    """Bad input to a tokenizer: the message names the input and the reason."""


class Rewind(Exception):
    """A bounded cursor's `push` took a token that completes something 8-bit pixels cannot show (a
    JPEG block whose pixels leave the range): the cursor is back where it was `tokens` pushes ago,
    this one included, so the sampler drops those tokens and samples them again."""

    def __init__(self, tokens: int):
        super().__init__(f"take back the last {tokens} tokens")
        self.tokens = tokens


@dataclass(frozen=True, eq=False)
class TokenSequence:
    """`ids` (T,) int32 and `positions` (T, 5) int32, one row per token (see POSITION_FIELDS)."""

    ids: np.ndarray
    positions: np.ndarray

    def __post_init__(self) -> None:
        ids = np.ascontiguousarray(self.ids, dtype=np.int32)
        pos = np.ascontiguousarray(self.positions, dtype=np.int32)
        if ids.ndim != 1 or pos.shape != (len(ids), len(POSITION_FIELDS)):
            raise ValueError(f"TokenSequence: ids {ids.shape} and positions {pos.shape} disagree; "
                             f"expected (T,) and (T, {len(POSITION_FIELDS)})")
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "positions", pos)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: slice) -> TokenSequence:
        return TokenSequence(self.ids[index], self.positions[index])

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, TokenSequence) and np.array_equal(self.ids, other.ids)
                and np.array_equal(self.positions, other.positions))

    @staticmethod
    def concat(parts: list[TokenSequence]) -> TokenSequence:
        return TokenSequence(np.concatenate([p.ids for p in parts]),
                             np.concatenate([p.positions for p in parts]))


@runtime_checkable
class Grammar(Protocol):
    """A cursor over the regular language of valid streams: which ids may come next.

    `allowed()` is a bool mask of shape (vocab_size,); `push(id)` consumes one id and returns its
    position row (5,), raising TokenizerError if the id is not allowed (and, from a bounded cursor,
    Rewind when it takes tokens back); `done` is True after the end token. A sampler masks the
    logits with `allowed()` so every finished stream decodes.
    """

    done: bool

    def allowed(self) -> np.ndarray: ...

    def push(self, token: int) -> np.ndarray: ...


class Tokenizer(abc.ABC):
    """Media comes in, a TokenSequence comes out; and back. The whole contract callers may use.

    A subclass sets `name` (its key in TOKENIZERS) and `config_class` (a frozen dataclass of its
    settings), builds itself from one config in `__init__`, and sets `config`, `vocab_size` and
    the special ids there. `save`/`load` are written once, here: `tokenizer.json` holds the name
    and the config; a tokenizer with more state (weights, merges) adds files through
    `save_files` and reads them back in `from_files`.
    """

    name: ClassVar[str]
    config_class: ClassVar[type]
    config: Any
    vocab_size: int
    pad_id: int
    bos_id: int
    eos_id: int
    n_frame: int = 1   # frames one stream can hold: what a model's frame embedding must cover
    n_context: int = 0         # context features per token (0: the tokenizer offers none)
    context_buckets: int = 0   # each feature is an int in 0..context_buckets-1

    @abc.abstractmethod
    def encode(self, media: Any, name: str | None = None) -> TokenSequence:
        """One image (or clip) -> its token stream. `name` labels the input in error messages."""

    @abc.abstractmethod
    def decode(self, seq: TokenSequence) -> Any:
        """A finished stream -> media: JPEG or PNG bytes for an image, a list of JPEGs for a clip."""

    @abc.abstractmethod
    def grammar(self, prefix: TokenSequence | None = None, bounded: bool = False) -> Grammar:
        """A cursor over the valid streams, after `prefix`: what may come next.

        bounded=True (for sampling; encoding never uses it): after the prefix, allow only what
        8-bit pixels can give (JPEG-DCT: each DC where a block of 0..255 puts it), where a valid
        stream may hold more. Tokenizers whose every stream decodes in range ignore it.
        """

    @abc.abstractmethod
    def header(self, height: int, width: int, quality: int | None = None,
               subsampling: str | None = None) -> TokenSequence:
        """BOS and the header of a stream of this size: a prompt for unconditional sampling."""

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """(T, 5) int32 positions of the complete stream `ids`: those `encode` gave it.

        Corpora store ids only; training recomputes positions through this. The default walks the
        grammar (a Python step per token); a tokenizer with a vectorized walk overrides it.
        """
        g = self.grammar()
        rows = [g.push(int(t)) for t in np.asarray(ids)]
        if not g.done:
            raise TokenizerError(f"a stream of {len(rows)} tokens ends before its end token")
        return np.array(rows, np.int32).reshape(-1, len(POSITION_FIELDS))

    @property
    def size(self) -> tuple[int, int] | None:
        """(height, width) every input is brought to, or None when sizes vary."""
        return getattr(self.config, "size", None)

    def prompt(self, media: Any, n_frames: int) -> TokenSequence:
        """The stream of a clip's first `n_frames` frames, open for the next (clip tokenizers only)."""
        raise TokenizerError(f"the {self.name!r} tokenizer takes no clips as prompts")

    def context(self, seq: TokenSequence) -> np.ndarray:
        """(T, n_context) int32 features of a whole stream: row t is what is known before token t+1
        beyond the ids (e.g. decoded neighbours). None here: (T, 0)."""
        return np.zeros((len(seq), self.n_context), np.int32)

    def context_cursor(self, prefix: TokenSequence | None = None) -> Any:
        """`context` one row at a time, past `prefix`, for sampling and the codec: `push(token,
        position)` returns the token's row (as `context` of any stream starting with the tokens so
        far gives it), `take_back(n)` forgets the last n, `rows` holds them all, `copy()`."""
        raise TokenizerError(f"the {self.name!r} tokenizer has no context features")

    def to_jpeg(self, media: Any, name: str | None = None) -> bytes | None:
        """The JPEG this input becomes before it is tokenized (its coefficients are the tokens),
        or None when the tokens are not a JPEG's (learned codes)."""
        return None

    def save(self, directory: str | os.PathLike) -> None:
        """Write `tokenizer.json` (name + config) and any files the tokenizer needs into `directory`."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.save_files(Path(directory))
        write_json_atomic(Path(directory) / "tokenizer.json",
                          {"name": self.name, "config": dataclasses.asdict(self.config)})

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Tokenizer:
        """Rebuild the tokenizer `save` wrote, with the same config and ids."""
        saved = read_config(directory)
        if saved["name"] != cls.name:
            raise TokenizerError(f"{directory}: holds a {saved['name']!r} tokenizer, not {cls.name!r}")
        try:
            config = cls.config_class(**saved["config"])
        except TypeError as e:
            raise TokenizerError(f"{directory}/tokenizer.json: config does not fit {cls.name!r} ({e})"
                                 ) from None
        return cls.from_files(config, Path(directory))

    def save_files(self, directory: Path) -> None:
        """Hook: write what the config alone cannot rebuild (weights, merges). Nothing by default."""

    @classmethod
    def from_files(cls, config: Any, directory: Path) -> Tokenizer:
        """Hook: build from a saved config and the files `save_files` wrote."""
        return cls(config)


def advance(grammar: Grammar, prefix: TokenSequence | None) -> Grammar:
    """Push every id of `prefix` (if any) onto `grammar` and return it: a cursor after the prefix."""
    for t in ([] if prefix is None else prefix.ids):
        grammar.push(int(t))
    return grammar


# Every tokenizer by its saved name: "module:Class", imported on first use, so this module (and
# `import tokenizer`) never imports a concrete tokenizer or its heavy dependencies (torch, av).
TOKENIZERS = {
    "jpeg_dct": "tokenizer.jpeg.tokenizer:JpegDctTokenizer",
    "jpeg_dct_bpe": "tokenizer.bpe.tokenizer:BpeTokenizer",
    "vqvae": "tokenizer.vqvae.tokenizer:VqVaeTokenizer",
    "hybrid": "tokenizer.hybrid.tokenizer:HybridTokenizer",
    "video_dct": "tokenizer.video.tokenizer:VideoTokenizer",
}


def tokenizer_class(name: str) -> type[Tokenizer]:
    """The class registered under `name` (imports its module)."""
    if name not in TOKENIZERS:
        raise TokenizerError(f"unknown tokenizer {name!r}; known: {sorted(TOKENIZERS)}")
    module, cls = TOKENIZERS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def read_config(directory: str | os.PathLike) -> dict:
    """The parsed `tokenizer.json` of a saved tokenizer: {"name", "config"}."""
    path = Path(directory) / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no tokenizer.json (expected a directory written by save())")
    try:
        saved = json.loads(path.read_text())
        return {"name": saved["name"], "config": dict(saved["config"])}
    except (ValueError, KeyError, TypeError) as e:
        raise TokenizerError(f"{path}: not a saved tokenizer ({type(e).__name__}: {e})") from None


def load_tokenizer(directory: str | os.PathLike) -> Tokenizer:
    """Rebuild whichever tokenizer was saved in `directory`, with the same config and ids."""
    return tokenizer_class(read_config(directory)["name"]).load(directory)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON through a temporary file and rename, so a kill never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)
