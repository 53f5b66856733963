"""Token shards on disk: what corpus tokenization writes and what training reads.

Layout of a corpus directory:

    corpus.json                 counts per split, the shard list, the tokenizer name and config
    tokenizer/tokenizer.json    the tokenizer, so `Corpus(dir).tokenizer()` rebuilds it
    train/shard-00000.safetensors, val/shard-00000.safetensors, ...

A shard holds `ids` (N,) int32, `positions` (N, 5) int16 and `offsets` (S+1,) int64: sequence i is
ids[offsets[i]:offsets[i+1]]. Shards are written whole through a temporary name and renamed, so a
killed run leaves only finished shards.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from tokenizer.base import Tokenizer, TokenSequence, load_tokenizer


def write_shard(path: str | os.PathLike, seqs: list[TokenSequence], metadata: dict[str, str] | None = None
                ) -> dict:
    """Write sequences as one shard, atomically; returns {"sequences", "tokens"}."""
    path = Path(path)
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    if seqs:
        ids = np.concatenate([s.ids for s in seqs]).astype(np.int32)
        pos = np.concatenate([s.positions for s in seqs])
    else:
        ids, pos = np.zeros(0, np.int32), np.zeros((0, 5), np.int32)
    if pos.size and (pos.max() > np.iinfo(np.int16).max):
        raise ValueError(f"{path}: a position exceeds int16 ({pos.max()})")
    tmp = path.with_name(path.name + ".tmp")
    save_file({"ids": ids, "positions": pos.astype(np.int16), "offsets": offsets}, str(tmp), metadata)
    os.replace(tmp, path)
    return {"sequences": len(seqs), "tokens": int(offsets[-1])}


class CorpusSplit:
    """All shards of one split, concatenated in memory: `split[i]` is a TokenSequence."""

    def __init__(self, shard_paths: list[Path]):
        parts = [load_file(str(p)) for p in shard_paths]
        if not parts:
            raise FileNotFoundError(f"no shards in {shard_paths}")
        self.ids = np.concatenate([p["ids"] for p in parts])
        self.positions = np.concatenate([p["positions"] for p in parts]).astype(np.int32)
        offs, base = [np.zeros(1, np.int64)], 0
        for p in parts:
            offs.append(p["offsets"][1:] + base)
            base += int(p["offsets"][-1])
        self.offsets = np.concatenate(offs)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> TokenSequence:
        a, b = self.offsets[i], self.offsets[i + 1]
        return TokenSequence(self.ids[a:b], self.positions[a:b])

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


class Corpus:
    """A tokenized corpus directory (see the module docstring)."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        meta = self.directory / "corpus.json"
        if not meta.is_file():
            raise FileNotFoundError(f"{meta}: not a tokenized corpus "
                                    "(run python -m tokenizer.corpus.prepare)")
        self.meta = json.loads(meta.read_text())

    @property
    def splits(self) -> list[str]:
        return list(self.meta["splits"])

    def split(self, name: str) -> CorpusSplit:
        if name not in self.meta["splits"]:
            raise ValueError(f"{self.directory}: no split {name!r}; has {self.splits}")
        shards = self.meta["splits"][name]["shards"]
        return CorpusSplit([self.directory / name / s for s in shards])

    def tokenizer(self) -> Tokenizer:
        return load_tokenizer(self.directory / "tokenizer")
