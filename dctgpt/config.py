"""The training recipe: one frozen dataclass, the model's settings held as a GPTConfig.

    from dctgpt.config import TrainConfig
    from tokenizer.cli import parse_config
    cfg = parse_config(TrainConfig, ["configs/quickstart.toml", "--max_iters=100", "--n_layer=2"])
    cfg.model.n_layer, cfg.prepare.source      # (2, 'embedded')

Recipes are TOML files in configs/ (the `[model]` table is the GPTConfig, `[prepare]` how to tokenize
the corpus when data_dir has none); `python train.py --help` lists every key.
"""

from __future__ import annotations

from dataclasses import dataclass

from dctgpt.model import GPTConfig
from tokenizer.corpus.prepare import PrepareConfig


@dataclass(frozen=True)
class TrainConfig:
    # I/O
    out_dir: str = "out"          # run directory: ckpt/, log.csv, loss.png
    data_dir: str = "data/embedded64"  # corpus directory (corpus.json and shards)
    init_from: str = "scratch"    # "scratch", or "resume" to continue out_dir's checkpoint exactly
    eval_interval: int = 100      # iterations between val evaluations (and checkpoints)
    eval_iters: int = 10          # val batches per evaluation
    eval_only: bool = False       # evaluate once and stop
    log_interval: int = 1         # iterations between log lines
    always_save_checkpoint: bool = True  # save at every evaluation, not only when val loss improves
    seed: int = 1337              # model init and the rows of every batch
    # data
    batch_size: int = 8           # rows of block_size tokens per micro-step (in one process)
    gradient_accumulation_steps: int = 1  # micro-steps per iteration; DDP processes share them out
    # AdamW and the learning-rate schedule (linear warmup, cosine decay to min_lr)
    learning_rate: float = 1e-3   # peak learning rate
    max_iters: int = 1000         # iterations in all
    weight_decay: float = 0.1     # AdamW weight decay (2D weights only)
    beta1: float = 0.9            # AdamW beta1
    beta2: float = 0.95           # AdamW beta2
    grad_clip: float = 1.0        # clip the gradient norm at this; 0 = off
    decay_lr: bool = True         # cosine decay after warmup; false = constant learning_rate
    warmup_iters: int = 100       # linear warmup iterations
    lr_decay_iters: int = 0       # iteration the decay reaches min_lr; 0 = max_iters
    min_lr: float = 1e-4          # learning rate at the end of the decay
    # system
    device: str = "auto"          # "auto", "cpu", "cuda" or "cuda:N"
    dtype: str = "float32"        # "float32", or "bfloat16" (autocast)
    compile: bool = False         # torch.compile the model
    num_threads: int = 0          # torch CPU threads; 0 = torch's default
    # sections
    model: GPTConfig = GPTConfig()  # the GPT; vocab_size and n_frame come from the corpus's tokenizer
    prepare: PrepareConfig | None = None  # given, it tokenizes the corpus into data_dir when that has none

    def __post_init__(self) -> None:
        if self.init_from not in ("scratch", "resume"):
            raise ValueError(f"init_from={self.init_from!r}: expected 'scratch' or 'resume'")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype={self.dtype!r}: expected 'float32' or 'bfloat16'")
        for name in ("eval_interval", "eval_iters", "log_interval", "batch_size",
                     "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: expected >= 1")
        for name in ("max_iters", "warmup_iters", "lr_decay_iters", "num_threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)}: expected >= 0")
        if self.prepare is not None and self.prepare.out not in ("", self.data_dir):
            raise ValueError(f"prepare.out={self.prepare.out!r}: leave it unset; the corpus goes to "
                             f"data_dir={self.data_dir!r}")
