"""Corpus at scale: bytes per token on disk, training RAM for a small and a large corpus, batch
assembly against the model step, and per-image figures for projecting larger corpora.

    python benchmarks/corpus_scale.py                       # about 10 minutes on 2 busy cores
    python benchmarks/corpus_scale.py --work /tmp/cs --tokens 1000000 --large_tokens 50000000

Data: the embedded photo corpus (tokenizer.corpus.embedded) at the quickstart's geometry (64x64,
quality 25, raster), about `--tokens` training tokens. The large corpus repeats the small one's
shards (hard links: no extra disk) until it holds `--large_tokens`. Prints, in one run:
- bytes per token on disk, against the previous layout (int32 ids + int16 x 5 positions per token,
  written here from the same sequences: the baseline);
- peak RSS of `train.py configs/quickstart.toml` for a few iterations on each corpus;
- the time to assemble a batch (memory-mapped ids, positions recomputed) against one model step
  (forward, backward, AdamW) at the quickstart's size, both on one thread: wall time, and CPU time
  (which a machine shared with other jobs disturbs less);
- the RAM the corpus index costs per shard;
- per image at 64x64 and 256x256, quality 25: tokens and bytes on disk (`--photos` embedded crops),
  tokenization core-seconds (from JPEG files 1.5x larger: decoded, resized, encoded, coded), and
  what they make of ImageNet-1k's 1.28M images and a 100M-image corpus.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.numpy import save_file

from dctgpt.config import TrainConfig
from dctgpt.data import Packer
from dctgpt.model import GPT
from tokenizer.cli import parse_config
from tokenizer.corpus.embedded import crops
from tokenizer.corpus.prepare import Source, prepare
from tokenizer.corpus.shards import Corpus
from tokenizer.jpeg.tokenizer import JpegDctConfig, JpegDctTokenizer

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "quickstart.toml"


def old_layout_bytes(corpus: Corpus, out: Path) -> int:
    """Bytes of the train split written in the previous layout (the baseline), same sequences."""
    split = corpus.split("train")
    seqs = [split[i] for i in range(len(split))]
    lengths = np.array([len(s) for s in seqs])
    save_file({"ids": np.concatenate([s.ids for s in seqs]).astype(np.int32),
               "positions": np.concatenate([s.positions for s in seqs]).astype(np.int16),
               "offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)}, str(out))
    return out.stat().st_size


def repeat_corpus(small: Path, large: Path, times: int) -> dict:
    """A corpus whose train split is `times` copies of the small one's shards (hard links)."""
    shutil.rmtree(large, ignore_errors=True)
    (large / "train").mkdir(parents=True)
    meta = json.loads((small / "corpus.json").read_text())
    train = meta["splits"]["train"]
    shards = []
    for r in range(times):
        for s in train["shards"]:
            name = f"r{r:04d}-{s['file']}"
            os.link(small / "train" / s["file"], large / "train" / name)
            shards.append({**s, "file": name})
    meta["splits"]["train"] = {**train, "shards": shards, "sequences": train["sequences"] * times,
                               "tokens": train["tokens"] * times}
    os.symlink(small / "val", large / "val")
    os.symlink(small / "tokenizer", large / "tokenizer")
    (large / "corpus.json").write_text(json.dumps(meta))
    return meta


def train_peak_rss(data: Path, out: Path, iters: int) -> float:
    """Peak RSS (MB) of a train.py process on `data` for `iters` iterations of the quickstart recipe."""
    cmd = [sys.executable, str(ROOT / "train.py"), str(RECIPE), f"--data_dir={data}", f"--out_dir={out}",
           f"--max_iters={iters}", f"--eval_interval={iters}", "--eval_iters=2", f"--log_interval={iters}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr.read().decode()[-2000:]}")
    return usage.ru_maxrss / 1024      # Linux reports KB


def timed(fn, n: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) per call of fn, over n calls after one warm-up."""
    fn()
    w, c = time.perf_counter(), time.process_time()
    for _ in range(n):
        fn()
    return (time.perf_counter() - w) / n, (time.process_time() - c) / n


def assembly_vs_step(data: Path, steps: int, batches: int) -> dict[str, tuple[float, float]]:
    """(wall, CPU) seconds of one batch assembly and one model step at the quickstart's size, on one
    thread: threads that wait for each other spin, which a shared machine turns into noise."""
    cfg = parse_config(TrainConfig, [str(RECIPE)])
    torch.set_num_threads(1)
    corpus = Corpus(data)
    split = corpus.split("train")
    packer = Packer(split, cfg.model.block_size, corpus.tokenizer().pad_id)
    seeds = iter(range(batches + 1))
    assemble = timed(lambda: packer.batch(cfg.batch_size, [0, next(seeds), 0]), batches)
    b = packer.batch(cfg.batch_size, [0, 0, 0])
    torch.manual_seed(0)
    model = GPT(replace(cfg.model, vocab_size=split.tokenizer.vocab_size))
    opt = model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), "cpu")

    def step() -> None:
        _, loss = model(b.idx, b.positions, b.targets, doc=b.doc)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return {"assembly": assemble, "step": timed(step, steps)}


def index_bytes_per_shard(data: Path) -> float:
    """RAM the open split's index costs per shard (Python allocations traced while it is built)."""
    tracemalloc.start()
    split = Corpus(data).split("train")
    used = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return used / len(split.paths)


def per_image(n: int, side: int) -> dict:
    """Per side x side q25 image of real photos: tokens and bytes on disk (n embedded crops at that
    size, as the corpus makes them), and tokenization core-seconds from a JPEG file 1.5x larger
    (quality 90: decoded, fitted, encoded, coded, as a photo collection is tokenized)."""
    tok = JpegDctTokenizer(JpegDctConfig(quality=25, size=(side, side)))
    tokens = float(np.mean([len(tok.encode(c.pixels)) for c in crops("train", n, (side, side), seed=1)]))
    files = []
    for c in crops("train", n, (side * 3 // 2, side * 3 // 2), seed=2):
        buf = io.BytesIO()
        Image.fromarray(c.pixels).save(buf, format="JPEG", quality=90)
        files.append(buf.getvalue())
    tok.encode(files[0])
    t0 = time.process_time()
    for f in files:
        tok.encode(f)
    return {"tokens": tokens, "bytes": tokens * 2 + 8, "core_s": (time.process_time() - t0) / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/dctgpt_corpus_scale", help="scratch directory (rebuilt)")
    ap.add_argument("--tokens", type=int, default=1_000_000, help="train tokens of the small corpus")
    ap.add_argument("--large_tokens", type=int, default=50_000_000)
    ap.add_argument("--iters", type=int, default=20, help="train.py iterations per RSS run")
    ap.add_argument("--photos", type=int, default=64, help="256 px crops for the per-image figures")
    a = ap.parse_args()
    work = Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    small, large = work / "small", work / "large"
    tok = JpegDctTokenizer(JpegDctConfig(quality=25, size=(64, 64)))
    t0 = time.time()
    m = prepare(Source("embedded", crop_size=(64, 64)), small, tok, train_crops=a.tokens // 660,
                val_crops=64, progress=False)
    n_tok = m["splits"]["train"]["tokens"]
    print(f"small corpus: {m['splits']['train']['sequences']} train images of 64x64 q25, {n_tok:,} tokens "
          f"(tokenized in {time.time() - t0:.0f} s)")
    shard_bytes = sum((small / "train" / s["file"]).stat().st_size for s in m["splits"]["train"]["shards"])
    old = old_layout_bytes(Corpus(small), work / "old-layout.safetensors")
    print(f"on disk: {shard_bytes / n_tok:.3f} bytes/token ({m['dtype']} ids, positions recomputed); "
          f"previous layout {old / n_tok:.2f} bytes/token: {old / shard_bytes:.1f}x smaller "
          f"(target <= 2.5 bytes/token)")

    times = -(-a.large_tokens // n_tok)
    big = repeat_corpus(small, large, times)
    print(f"large corpus: the small one's shards {times} times (hard links): "
          f"{big['splits']['train']['tokens']:,} tokens in {len(big['splits']['train']['shards'])} shards")
    rss_small = train_peak_rss(small, work / "out-small", a.iters)
    rss_large = train_peak_rss(large, work / "out-large", a.iters)
    print(f"train.py peak RSS ({a.iters} iterations of {RECIPE.name}): small {rss_small:.0f} MB, "
          f"large {rss_large:.0f} MB: {rss_large - rss_small:+.0f} MB for {times}x the tokens "
          f"(target <= +100 MB)")

    t = assembly_vs_step(large, steps=5, batches=20)
    threads = parse_config(TrainConfig, [str(RECIPE)]).num_threads or torch.get_num_threads()
    (aw, ac), (sw, sc) = t["assembly"], t["step"]
    print(f"one thread: batch assembly {aw * 1e3:.1f} ms ({ac * 1e3:.1f} ms CPU), model step "
          f"{sw * 1e3:.0f} ms ({sc * 1e3:.0f} ms CPU): assembly = 1/{sw / aw:.0f} of the step's wall time, "
          f"1/{sc / ac:.0f} of its CPU time; 1/{sc / ac / threads:.0f} if the step ran perfectly on the "
          f"recipe's {threads} threads (target <= 1/10)")

    per_shard = index_bytes_per_shard(large)
    print(f"corpus index in RAM: {per_shard:.0f} bytes per shard, nothing per image or token")
    for side in (64, 256):
        per = per_image(a.photos, side)
        src = f"{side * 3 // 2} px q90 JPEGs"
        print(f"per {side}x{side} q25 image ({a.photos} embedded crops; time from {src}): "
              f"{per['tokens']:.0f} tokens, {per['bytes'] / 1e3:.2f} kB on disk, "
              f"{per['core_s'] * 1e3:.1f} core-ms to tokenize")
    for name, n in (("ImageNet-1k train", 1_281_167), ("web corpus", 100_000_000)):
        print(f"  {name}, {n:,} images at 256x256: {n * per['tokens'] / 1e9:,.1f}B tokens, "
              f"{n * per['bytes'] / 1e9:,.0f} GB on disk, {n * per['core_s'] / 3600:,.0f} core-hours")

if __name__ == "__main__":
    main()
