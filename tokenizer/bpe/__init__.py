"""BPE over JPEG-DCT tokens (sentencepiece): tokenizer.py, and train.py to learn the merges."""
