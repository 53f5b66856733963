"""Learned, lossy image tokens: model.py (the VQ-VAE network), tokenizer.py, train.py."""
