"""Clips as one stream of JPEG-DCT frames: tokenizer.py, delta.py (frame differences), io.py (PyAV)."""
