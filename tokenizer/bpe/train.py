"""Learn BPE merges over a tokenized JPEG-DCT corpus: a BpeTokenizer saved next to nothing else.

    python -m tokenizer.bpe.train --corpus data/embedded64 --vocab_size 4096 --out data/bpe4096
"""

from __future__ import annotations

import argparse
from dataclasses import asdict

from tokenizer.bpe.tokenizer import BpeTokenizer
from tokenizer.corpus.shards import Corpus
from tokenizer.jpeg.tokenizer import JpegDctTokenizer


def cli(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Train BPE over a tokenized JPEG-DCT corpus.")
    ap.add_argument("--corpus", required=True, help="a corpus directory from tokenizer.corpus.prepare")
    ap.add_argument("--vocab_size", type=int, default=4096)
    ap.add_argument("--max_sequences", type=int, default=20000)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    corpus = Corpus(a.corpus)
    base = corpus.tokenizer()
    if not isinstance(base, JpegDctTokenizer):
        raise SystemExit(f"{a.corpus}: BPE trains on a jpeg_dct corpus, this one is {base.name}")
    train = corpus.split("train")
    n = min(len(train), a.max_sequences)
    tok = BpeTokenizer.train(base, (train[i].ids for i in range(n)), a.vocab_size)
    tok.save(a.out)
    val = corpus.split("val" if "val" in corpus.splits else "train")
    base_len = sum(len(val[i]) for i in range(len(val)))
    bpe_len = sum(len(tok.from_base(val[i])) for i in range(len(val)))
    print(f"BPE {tok.vocab_size} ids ({asdict(base.config)['order']} base, {base.vocab_size} ids): "
          f"val {base_len / len(val):.1f} -> {bpe_len / len(val):.1f} tokens/image "
          f"({base_len / bpe_len:.2f}x shorter); saved to {a.out}")


if __name__ == "__main__":
    cli()
