"""Corpus building: embedded.py (photos from the wheels), prepare.py (any source -> shards in
parallel, resumable), shards.py (shards on disk and their reader), clips.py (video clip corpora)."""
