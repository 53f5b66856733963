"""BPE over JPEG-DCT tokens with sentencepiece, behind the same Tokenizer interface.

Each base id becomes one character (CJK block, one script, so sentencepiece never splits between
them), a stream becomes a "sentence", and sentencepiece learns merges. Every base id is a required
character and BOS/EOS/PAD are user-defined symbols, so any stream encodes without <unk> and
decoding is lossless. A merged token takes the position of its first base token.

    python -m tokenizer.bpe.train --corpus data/embedded64 --vocab_size 4096 --out data/bpe4096
    python -m tokenizer.corpus.prepare --source embedded --tokenizer data/bpe4096 --out data/embedded64_bpe
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm

from tokenizer.base import Tokenizer, TokenizerError, TokenSequence, advance
from tokenizer.jpeg.accepts import Pieces, accepts
from tokenizer.jpeg.tokenizer import JpegDctConfig, JpegDctTokenizer

_CHAR0 = 0x4E00        # base id i <-> chr(_CHAR0 + i)


def _chars(ids: np.ndarray) -> str:
    return "".join(map(chr, (np.asarray(ids) + _CHAR0).tolist()))


class BpeTokenizer(Tokenizer):
    """JPEG-DCT tokens merged by a sentencepiece BPE model."""

    name = "jpeg_dct_bpe"
    config_class = JpegDctConfig

    def __init__(self, base: JpegDctTokenizer, model: bytes):
        self.base, self.model = base, model
        self.config = base.config
        self.sp = spm.SentencePieceProcessor(model_proto=model)
        self.vocab_size = self.sp.get_piece_size()
        pieces = [self.sp.id_to_piece(i) for i in range(self.vocab_size)]
        # expansion[i]: the base ids of piece i (empty for <unk>)
        self.expansion = [np.zeros(0, np.int64) if self.sp.is_unknown(i) else
                          np.array([ord(ch) - _CHAR0 for ch in p], np.int64) for i, p in enumerate(pieces)]
        first = {int(e[0]): i for i, e in enumerate(self.expansion) if len(e) == 1}
        self.pad_id, self.bos_id, self.eos_id = (first[t] for t in (base.pad_id, base.bos_id, base.eos_id))

    @classmethod
    def train(cls, base: JpegDctTokenizer, streams: Iterable[np.ndarray], vocab_size: int) -> BpeTokenizer:
        """Learn `vocab_size` pieces (base vocabulary included) from base-token streams."""
        if vocab_size <= base.vocab_size + 1:
            raise ValueError(f"vocab_size={vocab_size}: must exceed the base vocabulary ({base.vocab_size})")
        specials = [base.pad_id, base.bos_id, base.eos_id]
        out = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=(_chars(s) for s in streams), model_writer=out, model_type="bpe",
            vocab_size=vocab_size, character_coverage=1.0, add_dummy_prefix=False,
            normalization_rule_name="identity", split_by_unicode_script=False, split_by_whitespace=False,
            split_by_number=False, remove_extra_whitespaces=False, max_sentence_length=1 << 24,
            max_sentencepiece_length=16, bos_id=-1, eos_id=-1, unk_id=0, hard_vocab_limit=True,
            required_chars=_chars(np.setdiff1d(np.arange(base.vocab_size), specials)),
            user_defined_symbols=list(_chars(specials)),
            num_threads=os.cpu_count() or 1, minloglevel=2)
        return cls(base, out.getvalue())

    def encode(self, media: Any, name: str | None = None) -> TokenSequence:
        return self.from_base(self.base.encode(media, name))

    def from_base(self, seq: TokenSequence) -> TokenSequence:
        """Merge a base stream; each merged token keeps its first base token's position."""
        ids = np.array(self.sp.encode(_chars(seq.ids)), np.int64)
        lengths = np.array([len(self.expansion[i]) for i in ids])
        if (lengths == 0).any():
            raise TokenizerError("a base id is missing from the BPE model (unknown piece)")
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        return TokenSequence(ids, seq.positions[starts])

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Each piece at its first base token's position, from the base stream's vectorized positions."""
        base = self.to_base(TokenSequence(ids, np.zeros((len(ids), 5)))).ids
        lengths = np.array([len(self.expansion[i]) for i in np.asarray(ids)], np.int64)
        return self.base.positions(base)[np.cumsum(lengths) - lengths]

    def to_base(self, seq: TokenSequence) -> TokenSequence:
        if len(seq.ids) and (seq.ids.min() < 0 or seq.ids.max() >= self.vocab_size):
            raise TokenizerError(f"BPE id out of range 0..{self.vocab_size - 1}")
        parts = [self.expansion[i] for i in seq.ids]
        ids = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        return TokenSequence(ids, np.zeros((len(ids), 5), np.int64))

    def decode(self, seq: TokenSequence) -> bytes:
        return self.base.decode(self.to_base(seq))

    def header(self, height: int, width: int, quality: int | None = None,
               subsampling: str | None = None) -> TokenSequence:
        """A prompt for unconditional sampling: the header tokens, each as its own piece."""
        h = self.base.header(height, width, quality, subsampling)
        single = {int(e[0]): i for i, e in enumerate(self.expansion) if len(e) == 1}
        return TokenSequence(np.array([single[int(t)] for t in h.ids]), h.positions)

    def grammar(self, prefix: TokenSequence | None = None, bounded: bool = False) -> BpeGrammar:
        g = advance(BpeGrammar(self), prefix)
        g.base.bounded = bounded     # the base cursor's DC bounds (tokenizer.jpeg.grammar)
        return g

    def to_jpeg(self, media: Any, name: str | None = None) -> bytes:
        return self.base.to_jpeg(media, name)

    def save_files(self, directory: Path) -> None:
        (directory / "bpe.model").write_bytes(self.model)

    @classmethod
    def from_files(cls, config: JpegDctConfig, directory: Path) -> BpeTokenizer:
        model = directory / "bpe.model"
        if not model.is_file():
            raise FileNotFoundError(f"{model}: missing (a BPE tokenizer directory holds bpe.model)")
        return cls(JpegDctTokenizer(config), model.read_bytes())


class BpeGrammar:
    """Allowed pieces = those whose whole expansion the base grammar accepts from here.

    In a stream's body the compiled check (tokenizer.jpeg.accepts) tests every expansion at once;
    elsewhere (the header), or without the compiled extension, `walk` does: a walk over a trie of the
    expansions with copies of the base cursor, exact but slow (it visits every valid trie node), and
    the reference the compiled check is tested against.
    """

    def __init__(self, tok: BpeTokenizer):
        self.tok = tok
        self.base = tok.base.grammar()
        self._allowed: np.ndarray | None = None
        if not hasattr(tok, "_trie"):
            trie: dict = {}
            for i, e in enumerate(tok.expansion):
                node = trie
                for t in e.tolist():
                    node = node.setdefault(t, {})
                node.setdefault(None, []).append(i)
            tok._trie = trie
            tok._pieces = Pieces.of(tok.expansion)

    @property
    def done(self) -> bool:
        return self.base.done

    def allowed(self) -> np.ndarray:
        if self._allowed is None:           # (until the next push)
            mask = accepts(self.base, self.tok._pieces)
            self._allowed = self.walk() if mask is None else mask
            self._allowed.flags.writeable = False
        return self._allowed

    def walk(self) -> np.ndarray:
        """allowed() by walking the trie of expansions with the base grammar itself."""
        mask = np.zeros(self.tok.vocab_size, bool)
        stack = [(self.tok._trie, self.base)]
        while stack:
            node, g = stack.pop()
            ok = g.allowed()
            for t, child in node.items():
                if t is None:
                    mask[child] = g is not self.base
                elif ok[t]:
                    g2 = g.copy()
                    g2.push(t)
                    stack.append((child, g2))
        return mask

    def push(self, token: int) -> np.ndarray:
        e = self.tok.expansion[int(token)] if 0 <= int(token) < self.tok.vocab_size else []
        if len(e) == 0:
            raise TokenizerError(f"BPE token {token} is not allowed here")
        self._allowed = None
        positions = [self.base.push(int(t)) for t in e]
        return positions[0]
