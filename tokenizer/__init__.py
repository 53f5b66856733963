"""Everything that turns media into token ids and back (DESIGN.md)."""

from tokenizer.base import (
    POSITION_FIELDS,
    Grammar,
    Tokenizer,
    TokenizerError,
    TokenSequence,
    load_tokenizer,
)
from tokenizer.jpeg import JpegDctConfig, JpegDctTokenizer
from tokenizer.jpeg_io import Coefficients, scan_bytes

__all__ = [
    "POSITION_FIELDS", "Coefficients", "Grammar", "JpegDctConfig", "JpegDctTokenizer", "TokenSequence",
    "Tokenizer", "TokenizerError", "load_tokenizer", "scan_bytes",
]
