"""JPEG-DCT tokens: io.py (markers, coefficients through libjpeg), format.py (vocabulary, header,
block order), codec.py (coefficients <-> ids), grammar.py (which id may come next), tokenizer.py."""
