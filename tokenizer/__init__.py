"""Public API of the tokenizers: media in, token ids out, and back.

    from tokenizer import JpegDctTokenizer, JpegDctConfig, load_tokenizer
    tok = JpegDctTokenizer(JpegDctConfig(quality=25, size=(64, 64)))
    jpeg = tok.decode(tok.encode("photo.png"))

One subpackage per family (jpeg/, bpe/, vqvae/, video/) and corpus/ for building training corpora;
`base.py` holds the contract every tokenizer keeps and the table that finds them by name.
"""

from tokenizer.base import (
    POSITION_FIELDS,
    Grammar,
    Tokenizer,
    TokenizerError,
    TokenSequence,
    load_tokenizer,
)
from tokenizer.jpeg.io import Coefficients, scan_bytes
from tokenizer.jpeg.tokenizer import JpegDctConfig, JpegDctTokenizer

__all__ = [
    "POSITION_FIELDS", "Coefficients", "Grammar", "JpegDctConfig", "JpegDctTokenizer", "TokenSequence",
    "Tokenizer", "TokenizerError", "load_tokenizer", "scan_bytes",
]
