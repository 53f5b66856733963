"""Learn BPE merges over a tokenized JPEG-DCT corpus: a BpeTokenizer saved next to nothing else.

    python -m tokenizer.bpe.train --corpus data/embedded64 --vocab_size 4096 --out data/bpe4096
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tokenizer.bpe.tokenizer import BpeTokenizer
from tokenizer.cli import run
from tokenizer.corpus.shards import Corpus
from tokenizer.jpeg.tokenizer import JpegDctTokenizer


@dataclass(frozen=True)
class BpeTrainConfig:
    corpus: str                   # a jpeg_dct corpus directory from tokenizer.corpus.prepare
    out: str                      # directory to save the BPE tokenizer to
    vocab_size: int = 4096        # ids of the BPE tokenizer (base ids + merges)
    max_sequences: int = 20000    # train images the merges are learned from


def main(cfg: BpeTrainConfig) -> BpeTokenizer:
    corpus = Corpus(cfg.corpus)
    base = corpus.tokenizer()
    if not isinstance(base, JpegDctTokenizer):
        raise ValueError(f"corpus={cfg.corpus!r}: BPE trains on a jpeg_dct corpus, this one is {base.name}")
    train = corpus.split("train")
    n = min(len(train), cfg.max_sequences)
    tok = BpeTokenizer.train(base, (train.ids(i) for i in range(n)), cfg.vocab_size)
    tok.save(cfg.out)
    val = corpus.split("val" if "val" in corpus.splits else "train")
    base_len = sum(val.length(i) for i in range(len(val)))
    bpe_len = sum(len(tok.from_base(val[i])) for i in range(len(val)))
    print(f"BPE {tok.vocab_size} ids ({asdict(base.config)['order']} base, {base.vocab_size} ids): "
          f"val {base_len / len(val):.1f} -> {bpe_len / len(val):.1f} tokens/image "
          f"({base_len / bpe_len:.2f}x shorter); saved to {cfg.out}")
    return tok


def cli(argv: list[str] | None = None) -> BpeTokenizer:
    return run(main, BpeTrainConfig, argv)


if __name__ == "__main__":
    cli()
