"""A small tokenized corpus of synthetic images, for the training and sampling tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tokenizer import JpegDctConfig, JpegDctTokenizer
from tokenizer.corpus.shards import write_index, write_shard


def synthetic_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth colour gradients, a rectangle and mild noise: (size, size, 3) uint8."""
    y, x = np.mgrid[0:size, 0:size] / size
    a, b, c = rng.uniform(0, 255, 3)
    img = np.stack([a * x + 40 * y, b * (1 - y) + 30 * x, c * (x + y) / 2], -1)
    r0, c0 = rng.integers(0, size // 2, 2)
    img[r0:r0 + size // 3, c0:c0 + size // 3] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_corpus(directory: Path, n_train: int = 24, n_val: int = 6, size: int = 16,
                quality: int = 50) -> JpegDctTokenizer:
    """Tokenize synthetic images into a Corpus directory (the layout of tokenizer/corpus/shards.py)."""
    tok = JpegDctTokenizer(JpegDctConfig(quality=quality, size=(size, size)))
    rng = np.random.default_rng(0)
    shards = {}
    for split, n in (("train", n_train), ("val", n_val)):
        (directory / split).mkdir(parents=True, exist_ok=True)
        seqs = [tok.encode(synthetic_image(rng, size)) for _ in range(n)]
        shards[split] = [write_shard(directory / split / "shard-00000.safetensors", seqs, tok.vocab_size)]
    tok.save(directory / "tokenizer")
    write_index(directory, tok, shards)
    return tok


def write_images(directory: Path, n: int, size: int = 24, seed: int = 1) -> list[Path]:
    """Synthetic PNG images on disk (held out: another seed than make_corpus)."""
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        p = directory / f"img{i}.png"
        Image.fromarray(synthetic_image(rng, size)).save(p)
        paths.append(p)
    return paths
