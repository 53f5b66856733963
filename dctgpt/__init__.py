"""The GPT over DCT tokens and what trains, samples and measures it.

Never imports a concrete tokenizer: only the interface in `tokenizer.base`.
"""

from dctgpt.model import GPT, GPTConfig, KVCache

__all__ = ["GPT", "GPTConfig", "KVCache"]
