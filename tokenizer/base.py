"""The one interface every tokenizer keeps: ids and positions in, media out.

The model and the training loop see only what is defined here (DESIGN.md): a `TokenSequence`,
the `Tokenizer` protocol and its `Grammar` cursor. Concrete tokenizers register themselves by name
so `load_tokenizer(dir)` can rebuild one from its saved `tokenizer.json`.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

# Columns of `TokenSequence.positions`. Fields a tokenizer has no use for are 0.
POSITION_FIELDS = ("frame", "component", "block_row", "block_col", "frequency")
FRAME, COMPONENT, BLOCK_ROW, BLOCK_COL, FREQUENCY = range(len(POSITION_FIELDS))


class TokenizerError(ValueError):
    """Bad input to a tokenizer: the message names the input and the reason."""


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
    position row (5,), raising TokenizerError if the id is not allowed; `done` is True after the end
    token. A sampler masks the logits with `allowed()` so every finished stream decodes.
    """

    done: bool

    def allowed(self) -> np.ndarray: ...

    def push(self, token: int) -> np.ndarray: ...


@runtime_checkable
class Tokenizer(Protocol):
    """Media comes in, a TokenSequence comes out; and back. Saved as `tokenizer.json` (+ files)."""

    name: str
    vocab_size: int
    pad_id: int
    bos_id: int
    eos_id: int

    def encode(self, media: Any, name: str | None = None) -> TokenSequence: ...

    def decode(self, seq: TokenSequence) -> Any: ...

    def grammar(self, prefix: TokenSequence | None = None) -> Grammar: ...

    def save(self, directory: str | os.PathLike) -> None: ...

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Tokenizer: ...


def advance(grammar: Grammar, prefix: TokenSequence | None) -> Grammar:
    """Push every id of `prefix` (if any) onto `grammar` and return it: a cursor after the prefix."""
    for t in ([] if prefix is None else prefix.ids):
        grammar.push(int(t))
    return grammar


REGISTRY: dict[str, type] = {}
LAZY_MODULES = {"vqvae": "tokenizer.vqvae", "video_dct": "tokenizer.video"}   # name -> registering module


def register(cls: type) -> type:
    """Class decorator: make `load_tokenizer` able to rebuild this tokenizer by its `name`."""
    REGISTRY[cls.name] = cls
    return cls


def save_config(directory: str | os.PathLike, name: str, config: Any) -> None:
    """Write `tokenizer.json` ({"name", "config"}) atomically."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    write_json_atomic(d / "tokenizer.json", {"name": name, "config": dataclasses.asdict(config)})


def read_config(directory: str | os.PathLike) -> dict:
    path = Path(directory) / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no tokenizer.json (expected a directory written by save())")
    return json.loads(path.read_text())


def load_tokenizer(directory: str | os.PathLike) -> Tokenizer:
    """Rebuild whichever tokenizer was saved in `directory`, with the same config and ids."""
    import tokenizer.bpe  # noqa: F401  (importing registers the tokenizers)
    import tokenizer.jpeg  # noqa: F401

    name = read_config(directory)["name"]
    if name in LAZY_MODULES and name not in REGISTRY:   # heavy imports (torch, av) only when needed
        importlib.import_module(LAZY_MODULES[name])
    if name not in REGISTRY:
        raise ValueError(f"{directory}: unknown tokenizer {name!r}; known: {sorted(REGISTRY)}")
    return REGISTRY[name].load(directory)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON through a temporary file and rename, so a kill never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)
