"""Token shards on disk: what corpus tokenization writes and what training reads through memory maps.

    corpus = Corpus("data/embedded64")
    train = corpus.split("train")       # opens nothing per token: an index of shards and image counts
    ids = train.ids(0)                  # (T,) uint16, read from the shard file's memory map
    seq = train[0]                      # TokenSequence: those ids, positions recomputed by the tokenizer

Layout of a corpus directory:

    corpus.json                 format, tokenizer, ids dtype; per split its shards with their counts
    tokenizer/tokenizer.json    the tokenizer, so `Corpus(dir).tokenizer()` rebuilds it
    train/shard-00000.safetensors, val/shard-00008.safetensors, ...

A shard is a plain safetensors file holding `ids` (N,) uint16 (uint32 when the vocabulary has more
than 65,536 ids) and `offsets` (S+1,) int64: sequence i is ids[offsets[i]:offsets[i+1]]. Positions
are not stored: `Tokenizer.positions(ids)` recomputes them from the ids. Readers map `ids` straight
from the file (a numpy memmap at the offset the safetensors header gives), so RAM grows with the
number of shards a reader has open, never with the tokens. Shards are written whole through a
temporary name and renamed, so a killed writer leaves only finished shards.
"""

from __future__ import annotations

import json
import os
import struct
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from tokenizer.base import Tokenizer, TokenSequence, load_tokenizer, write_json_atomic

FORMAT = 2           # corpus.json "format"; corpora without it hold int32 ids and stored positions
OPEN_SHARDS = 64     # shards a reader keeps mapped at once (each holds a file descriptor)
_DTYPES = {"U16": np.uint16, "U32": np.uint32, "I64": np.int64}


class CorpusFormatError(ValueError):
    """A corpus or shard this version cannot read; the message says how to rebuild it."""


def ids_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned dtype that holds every id: uint16 up to 65,536 ids, else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


@dataclass(frozen=True)
class ShardInfo:
    """One shard file (its name inside the split folder) and what it holds."""

    file: str
    sequences: int
    tokens: int


def write_shard(path: str | os.PathLike, seqs: list[TokenSequence] | list[np.ndarray],
                vocab_size: int) -> ShardInfo:
    """Write the ids of `seqs` (TokenSequences or id arrays) as one shard, atomically. The bytes are
    a function of the ids alone, so the same sequences always make the same file."""
    path = Path(path)
    parts = [np.asarray(s.ids if isinstance(s, TokenSequence) else s) for s in seqs]
    lengths = np.array([len(p) for p in parts], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"{path}: an id falls outside the vocabulary 0..{vocab_size - 1}")
    meta = {"format": str(FORMAT)}     # one key: safetensors writes several in any order
    tmp = path.with_name(path.name + ".tmp")
    save_file({"ids": ids.astype(ids_dtype(vocab_size)), "offsets": offsets}, str(tmp), meta)
    os.replace(tmp, path)
    return ShardInfo(path.name, len(parts), int(offsets[-1]))


def rebuild_hint(what: str | os.PathLike) -> str:
    return (f"{what}: a corpus in the old shard format (int32 ids and stored positions); rebuild it: "
            "move it aside and rerun the prepare command that made it (python -m tokenizer.corpus.prepare "
            "... --out DIR, or train.py with its recipe's [prepare] and an empty data_dir)")


class Shard:
    """One shard file, mapped: `ids` a read-only memmap, `offsets` (S+1,) int64 in RAM."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
        except (ValueError, struct.error) as e:
            raise CorpusFormatError(f"{self.path}: not a safetensors shard ({e})") from None
        meta = header.pop("__metadata__", None) or {}
        if meta.get("format") != str(FORMAT) or set(header) != {"ids", "offsets"}:
            raise CorpusFormatError(rebuild_hint(self.path))
        start = 8 + n

        def mapped(name: str) -> np.ndarray:
            t = header[name]
            a, b = t["data_offsets"]
            if b == a:
                return np.zeros(t["shape"], _DTYPES[t["dtype"]])
            return np.memmap(self.path, _DTYPES[t["dtype"]], "r", offset=start + a, shape=tuple(t["shape"]))

        self.ids = mapped("ids")
        self.offsets = np.array(mapped("offsets"))
        self.metadata: dict[str, str] = meta

    def __len__(self) -> int:
        return len(self.offsets) - 1


class CorpusSplit:
    """The shards of one split as one sequence of images: `split[i]` is image i's TokenSequence.

    Holds per shard its path and first image index; shards are mapped on first use (at most
    OPEN_SHARDS at a time). `ids(i)` reads image i's ids from the map; `split[i]` adds the
    positions the tokenizer recomputes.
    """

    def __init__(self, directory: str | os.PathLike, shards: list[ShardInfo], tokenizer: Tokenizer | None):
        self.paths = [Path(directory) / s.file for s in shards]
        self.first = np.concatenate([[0], np.cumsum([s.sequences for s in shards])]).astype(np.int64)
        self.n_tokens = sum(s.tokens for s in shards)
        self.tokenizer = tokenizer
        self._open: OrderedDict[int, Shard] = OrderedDict()

    def __len__(self) -> int:
        return int(self.first[-1])

    def shard(self, s: int) -> Shard:
        """Shard s, mapped (least recently used maps are closed beyond OPEN_SHARDS)."""
        if s in self._open:
            self._open.move_to_end(s)
            return self._open[s]
        shard = Shard(self.paths[s])
        if len(shard) != self.first[s + 1] - self.first[s]:
            raise ValueError(f"{self.paths[s]}: holds {len(shard)} sequences, corpus.json says "
                             f"{self.first[s + 1] - self.first[s]}")
        self._open[s] = shard
        if len(self._open) > OPEN_SHARDS:
            self._open.popitem(last=False)
        return shard

    def _locate(self, i: int) -> tuple[Shard, int, int]:
        if not 0 <= i < len(self):
            raise IndexError(f"image {i} of a split of {len(self)}")
        s = int(np.searchsorted(self.first, i, side="right")) - 1
        shard = self.shard(s)
        j = i - int(self.first[s])
        return shard, int(shard.offsets[j]), int(shard.offsets[j + 1])

    def length(self, i: int) -> int:
        """Tokens in image i."""
        _, a, b = self._locate(i)
        return b - a

    def ids(self, i: int) -> np.ndarray:
        """Image i's ids (T,), as stored (uint16 or uint32), read from the memory map."""
        shard, a, b = self._locate(i)
        return np.array(shard.ids[a:b])

    def __getitem__(self, i: int) -> TokenSequence:
        if self.tokenizer is None:
            raise ValueError("this CorpusSplit has no tokenizer to recompute positions; use ids(i)")
        ids = self.ids(i)
        return TokenSequence(ids, self.tokenizer.positions(ids))

    @property
    def lengths(self) -> np.ndarray:
        """(images,) tokens per image. Reads every shard's offsets: for tools and tests, not training."""
        parts = [np.diff(Shard(p).offsets) for p in self.paths]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)


class Corpus:
    """A tokenized corpus directory (see the module docstring)."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        path = self.directory / "corpus.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not a tokenized corpus "
                                    "(run python -m tokenizer.corpus.prepare)")
        self.meta = json.loads(path.read_text())
        if self.meta.get("format") != FORMAT:
            raise CorpusFormatError(rebuild_hint(self.directory))
        self._tokenizer: Tokenizer | None = None

    @property
    def splits(self) -> list[str]:
        return list(self.meta["splits"])

    def split(self, name: str) -> CorpusSplit:
        if name not in self.meta["splits"]:
            raise ValueError(f"{self.directory}: no split {name!r}; has {self.splits}")
        shards = [ShardInfo(**s) for s in self.meta["splits"][name]["shards"]]
        return CorpusSplit(self.directory / name, shards, self.tokenizer())

    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.directory / "tokenizer")
        return self._tokenizer


def write_index(directory: str | os.PathLike, tokenizer: Tokenizer, shards: dict[str, list[ShardInfo]],
                source: Any = None, skipped: dict[str, list] | None = None) -> dict:
    """Write corpus.json over shards already in `directory`/<split>/; returns what it wrote."""
    directory = Path(directory)
    splits = {}
    for split, infos in shards.items():
        splits[split] = {"sequences": sum(s.sequences for s in infos), "tokens": sum(s.tokens for s in infos),
                         "skipped": (skipped or {}).get(split, []), "shards": [asdict(s) for s in infos]}
    nbytes = sum((directory / split / s.file).stat().st_size for split, infos in shards.items()
                 for s in infos)
    meta = {"format": FORMAT, "tokenizer": tokenizer.name, "vocab_size": tokenizer.vocab_size,
            "dtype": ids_dtype(tokenizer.vocab_size).name, "source": source, "bytes": nbytes,
            "splits": splits}
    write_json_atomic(directory / "corpus.json", meta)
    return json.loads(json.dumps(meta))
