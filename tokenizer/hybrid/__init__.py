"""Hybrid JPEG + VQ tokenizer: learned codes over an aggressive JPEG's DCT coefficients."""
