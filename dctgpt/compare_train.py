"""The comparison that trains: one GPT recipe on each tokenizer's corpus, then what each model knows.

    python -m dctgpt.compare_train --out out/compare_train             # CPU: about an hour, 2 cores
    python -m dctgpt.compare_train --out out/compare_quick --scale quick  # minutes: a smoke run
    python -m dctgpt.compare_train --out out/compare_gpu --scale gpu      # the bigger recipe, one GPU
    python -m dctgpt.compare_train --out out/ct --iters 800 --tokenizers jpeg jpeg_c2f

`python -m dctgpt.compare --train ...` is the same command, and `--quick` is `--scale quick`.

Tokenizers: `jpeg` (JPEG-DCT, raster order), `jpeg_c2f` (coarse-to-fine), `bpe` (BPE over `jpeg`),
`vqvae` (a VQ-VAE), `hybrid` (the hybrid JPEG + VQ tokenizer); JPEG-based ones at --quality. BPE,
VQ-VAE and hybrid are trained here, on the first of the corpus's train crops (--bpe_crops; at most
2,048 for the VQs). Every model sees the same recipe: the same
architecture (the transformer's parameters are equal; the tied embedding grows with the vocabulary,
both counts are reported), the same iterations of the same tokens per iteration (batch x block),
drawn from the same embedded train crops (tokenizer.corpus.embedded, --train_crops at --size).

Per tokenizer, on --val_crops held-out crops of the val photos (never trained on): the model's bits
per pixel and the distortion of the decoded tokens against the original crops (PSNR; a
rate-distortion point: JPEG tokens are lossless against their JPEG, not against the crop); linear
probe top-1 (rotation, source; dctgpt.probe, best layer on val, with the random-init margin);
training tokens/s and wall times; a sample grid. For raster and coarse-to-fine, the model's bits
per image split by frequency band and by component (the ordering study). A finished tokenizer's
row is kept in rows/NAME.json, so a killed run resumes with the next one.

Writes results.md, results.csv, rd.png, bands.csv, bands.png, components.png, samples.png.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dctgpt.plot import Series, image_grid, line_plot
from tokenizer.cli import run

log = logging.getLogger("dctgpt.compare_train")
TOKENIZERS = ("jpeg", "jpeg_c2f", "bpe", "vqvae", "hybrid")


@dataclass(frozen=True)
class TrainCompareConfig:
    out: str = "out/compare_train"  # output folder (tables, plots, tokenizers, corpora, runs)
    scale: str = "cpu"             # preset: cpu (about an hour, 2 cores), quick (smoke), gpu; keys override
    tokenizers: tuple[str, ...] = TOKENIZERS  # some of jpeg, jpeg_c2f, bpe, vqvae, hybrid
    size: int = 64                 # square crops, pixels
    quality: int = 25              # JPEG quality of the JPEG-based tokenizers
    train_crops: int = 8000        # embedded train crops: the same images for every tokenizer
    val_crops: int = 64            # embedded val crops: held out, for bits per pixel and distortion
    # the GPT recipe, the same for every tokenizer
    n_layer: int = 4               # transformer blocks
    n_head: int = 4                # attention heads
    n_embd: int = 128              # width
    block_size: int = 768          # context in tokens
    batch_size: int = 8            # rows of block_size tokens per iteration
    iters: int = 600               # training iterations per tokenizer (the CPU sizing: above PRESETS)
    learning_rate: float = 2e-3    # peak learning rate (cosine decay to a tenth)
    warmup_iters: int = 30         # linear warmup iterations
    # tokenizers trained here
    bpe_vocab: int = 2048          # BPE vocabulary (base JPEG-DCT ids included)
    bpe_crops: int = 500           # train crops BPE learns its merges from
    vq_codebook: int = 512         # VQ-VAE codes
    vq_downsample: int = 4         # VQ-VAE pixels per code along a side (4 or 8)
    vq_steps: int = 600            # VQ-VAE training steps
    hybrid_codebook: int = 1024    # hybrid codes
    hybrid_group: int = 1          # hybrid: 1 = a code per 8x8 block, 2 = per 16x16 MCU
    hybrid_steps: int = 600        # hybrid training steps
    # measurement
    probe_images: str = "embedded"  # probe photos: embedded (19), embedded:val (3 held out), a folder
    probe_crops: int = 16          # train crops per photo for the probes (dctgpt.probe_data)
    probe_seeds: tuple[int, ...] = (0,)  # probe seeds (new crops and random init each)
    probe_C: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0)   # logistic regression C, chosen on val
    samples: int = 8               # samples per model in samples.png
    threads: int = 2               # torch CPU threads (and corpus workers)
    device: str = "auto"           # "auto", "cpu", "cuda"
    dtype: str = "float32"         # "float32" or "bfloat16" (autocast)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tokenizers", tuple(self.tokenizers))
        object.__setattr__(self, "probe_seeds", tuple(self.probe_seeds))
        if self.scale not in PRESETS:
            raise ValueError(f"scale={self.scale!r}: expected one of {list(PRESETS)}")
        bad = [t for t in self.tokenizers if t not in TOKENIZERS]
        if bad or not self.tokenizers:
            raise ValueError(f"tokenizers={list(self.tokenizers)}: expected some of {list(TOKENIZERS)}")
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, int) and not isinstance(v, bool) and v < 1:
                raise ValueError(f"{f.name}={v}: expected >= 1")


# The CPU default is sized for about an hour on 2 idle cores, from the quickstart recipe's ~10,000
# tokens/s (4x128, 8x768 tokens per iteration): 5 x 600 iterations ~ 30 min of GPT training, and
# ~20 min for the tokenizers, corpora, probes and samples. The full run has not been timed yet.
PRESETS: dict[str, dict] = {
    "cpu": {},
    "quick": dict(size=32, train_crops=48, val_crops=4, n_layer=2, n_head=2, n_embd=32, block_size=256,
                  batch_size=2, iters=3, warmup_iters=1, bpe_vocab=1200, bpe_crops=8, vq_codebook=256,
                  vq_steps=2, hybrid_codebook=256, hybrid_steps=2, probe_crops=2, probe_C=(1.0,), samples=2,
                  threads=1),
    "gpu": dict(train_crops=64000, val_crops=512, n_layer=12, n_head=12, n_embd=768, block_size=2048,
                batch_size=32, iters=10000, learning_rate=6e-4, warmup_iters=500, bpe_crops=4000,
                vq_steps=5000, hybrid_steps=5000, probe_crops=64, probe_seeds=(0, 1, 2), samples=16,
                device="cuda", dtype="bfloat16"),
}


@dataclass
class TrainedRow:
    tokenizer: str
    vocab: int
    params: int                 # GPT parameters (tied embedding included)
    params_body: int            # without the token embedding: equal for every tokenizer
    tokens_per_image: float     # held-out crops, BOS/header/EOS included
    model_bpp: float            # the model's bits per pixel on the held-out crops
    psnr: float                 # decoded tokens vs the original crops (mean over lossy ones)
    lossless: int               # held-out crops decoded exactly
    scan_bpp: float             # the JPEG's Huffman scan, for JPEG-DCT tokens (nan otherwise)
    val_loss: float             # nats per token, the training run's own val split
    rotation: float             # probe top-1, trained model (best layer on val), mean over seeds
    rotation_random: float      # the same architecture at random init
    source: float
    source_random: float
    tokens_per_s: float         # GPT training throughput
    tokenizer_s: float          # training the tokenizer (BPE, VQ-VAE, hybrid)
    train_s: float              # GPT training wall time
    total_s: float              # everything for this tokenizer


def build_tokenizer(name: str, cfg: TrainCompareConfig, out: Path):
    """The tokenizer `name` (trained here for bpe, vqvae, hybrid; saved under out/tokenizers)."""
    from tokenizer.base import load_tokenizer
    from tokenizer.jpeg.tokenizer import JpegDctConfig, JpegDctTokenizer

    size = (cfg.size, cfg.size)
    order = "coarse_to_fine" if name == "jpeg_c2f" else "raster"
    base = JpegDctTokenizer(JpegDctConfig(quality=cfg.quality, size=size, order=order))
    if name in ("jpeg", "jpeg_c2f"):
        return base
    d = out / "tokenizers" / name
    if (d / "tokenizer.json").is_file():
        return load_tokenizer(d)
    if name == "bpe":
        from tokenizer.bpe.tokenizer import BpeTokenizer
        from tokenizer.corpus.embedded import crops

        streams = (base.encode(c.pixels).ids for c in crops("train", cfg.bpe_crops, size))   # corpus crops
        tok = BpeTokenizer.train(base, streams, cfg.bpe_vocab)
        tok.save(d)
        return tok
    from tokenizer.vqvae.train import VqTrainConfig

    tcfg = VqTrainConfig(out=str(d), steps=cfg.vq_steps if name == "vqvae" else cfg.hybrid_steps,
                         train_crops=min(cfg.train_crops, 2048), val_crops=min(cfg.val_crops, 64),
                         num_threads=cfg.threads, log_interval=100)   # the first of the corpus's crops
    if name == "vqvae":
        from tokenizer.vqvae.model import VqConfig
        from tokenizer.vqvae.train import train
        return train(VqConfig(size=size, downsample=cfg.vq_downsample, codebook_size=cfg.vq_codebook),
                     tcfg)[0]
    from tokenizer.hybrid.model import HybridConfig
    from tokenizer.hybrid.train import train as train_hybrid
    return train_hybrid(HybridConfig(size=size, quality=cfg.quality, group=cfg.hybrid_group,
                                     codebook_size=cfg.hybrid_codebook), tcfg)[0]


def train_gpt(corpus: Path, run: Path, cfg: TrainCompareConfig):
    """train.py's main on `corpus` with the shared recipe; returns its TrainResult."""
    import train as train_py
    from dctgpt.config import TrainConfig
    from dctgpt.model import GPTConfig

    model = GPTConfig(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.block_size)
    tc = TrainConfig(
        out_dir=str(run), data_dir=str(corpus), batch_size=cfg.batch_size, max_iters=cfg.iters,
        learning_rate=cfg.learning_rate, min_lr=cfg.learning_rate / 10, warmup_iters=cfg.warmup_iters,
        eval_interval=cfg.iters, eval_iters=max(1, min(16, cfg.iters)), log_interval=max(1, cfg.iters // 10),
        num_threads=cfg.threads, device=cfg.device, dtype=cfg.dtype, model=model)
    return train_py.main(tc)


def tokens_per_second(run: Path) -> float:
    """Training tokens per second from log.csv (first to last training step)."""
    import csv

    with open(run / "log.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["train_loss"]]
    if len(rows) < 2:
        return float("nan")
    a, b = rows[0], rows[-1]
    return (int(b["tokens"]) - int(a["tokens"])) / max(1e-9, float(b["elapsed_s"]) - float(a["elapsed_s"]))


def band_bits(model, tok, seqs) -> dict[str, float]:
    """The model's bits per image split by what each predicted token codes: frequency band (DC, the
    tokenizer's AC bands, EOB), component (Y, Cb, Cr) and header (BOS..., EOS)."""
    from dctgpt.evaluate import sequence_nll

    bands = tok.config.bands
    names = ["DC"] + [f"AC {a}-{b - 1}" for a, b in zip(bands, bands[1:])] + ["EOB"]
    out: dict[str, float] = {}
    for seq in seqs:
        bits = sequence_nll(model, seq) / math.log(2)          # entry t-1 scores token t
        pos = seq.positions[1:]
        comp, freq = pos[:, 1], pos[:, 4]
        # frequency -> 0 (DC), k (AC band k: bands[k-1] <= f < bands[k]), last (EOB, f = 64)
        # frequency -> 0 (DC), k (AC band k: bands[k-1] <= f < bands[k]), last (EOB: f = 64)
        band = np.searchsorted(bands, freq, "right")
        band = np.where(freq == 0, 0, np.where(freq >= 64, len(names) - 1, band))
        for k, name in enumerate(names):
            out[f"band {name}"] = out.get(f"band {name}", 0.0) + float(bits[(comp > 0) & (band == k)].sum())
        for c, name in enumerate(["header", "Y", "Cb", "Cr"]):
            out[f"component {name}"] = out.get(f"component {name}", 0.0) + float(bits[comp == c].sum())
    return {k: v / len(seqs) for k, v in out.items()}


def run_one(name: str, cfg: TrainCompareConfig, out: Path, paths: list[Path], originals: list[np.ndarray]
            ) -> dict:
    """Tokenizer, corpus, GPT, measurements and samples of one tokenizer: its row and extras."""
    import sample
    from dctgpt import checkpoint, probe
    from dctgpt.measure import measure
    from tokenizer.corpus.prepare import Source, prepare

    t0 = time.time()
    tok = build_tokenizer(name, cfg, out)
    t1 = time.time()
    log.info("%s: tokenizer ready after %.0f s", name, t1 - t0)
    corpus, run = out / "corpora" / name, out / "runs" / name
    prepare(Source("embedded", crop_size=(cfg.size, cfg.size)), corpus, tok, cfg.train_crops, cfg.val_crops,
            workers=cfg.threads, progress=False)
    t2 = time.time()
    result = train_gpt(corpus, run, cfg)
    t3 = time.time()
    log.info("%s: corpus %.0f s, GPT training %.0f s", name, t2 - t1, t3 - t2)
    ck = checkpoint.load(run)
    m, _ = measure(name, tok, paths, originals, ck.model)
    log.info("%s: held-out bits and distortion after %.0f s", name, time.time() - t3)
    acc = {}
    for task in ("rotation", "source"):
        rep = probe.main(probe.ProbeConfig(
            ckpt=str(run), task=task, images=cfg.probe_images, seeds=cfg.probe_seeds,
            crops_per_photo=cfg.probe_crops, C=cfg.probe_C, json=str(out / "probes" / f"{name}-{task}.json"),
            cache=str(out / "probe_cache"), threads=cfg.threads, progress=False))
        acc[task] = (rep["summary"]["trained"]["mean"], rep["summary"]["random"]["mean"])
        log.info("%s: %s probe %.3f (random init %.3f), %.0f s", name, task, *acc[task], time.time() - t3)
    sample_paths = sample.main(sample.SampleConfig(out_dir=str(run), num_samples=cfg.samples,
                                                   batch_size=cfg.samples, device=cfg.device,
                                                   num_threads=cfg.threads))
    bands = band_bits(ck.model, tok, [tok.encode(p) for p in paths]) if name.startswith("jpeg") else {}
    pixels = cfg.size * cfg.size
    body = ck.model.get_num_params() - ck.model.config.vocab_size * ck.model.config.n_embd
    row = TrainedRow(name, tok.vocab_size, ck.model.get_num_params(), body, m.tokens_mean,
                     m.model_bits / pixels, m.psnr, m.lossless, m.scan_bits / pixels,
                     result.val_loss[max(result.val_loss)], *acc["rotation"], *acc["source"],
                     tokens_per_second(run), t1 - t0 if name in ("bpe", "vqvae", "hybrid") else 0.0,
                     t3 - t2, time.time() - t0)
    return {"row": dataclasses.asdict(row), "bands": bands, "samples": [str(p) for p in sample_paths]}


def write_results(rows: list[TrainedRow], out: Path, cfg: TrainCompareConfig) -> str:
    """results.csv (every field) and results.md (the table for the README)."""
    import csv

    names = [f.name for f in dataclasses.fields(TrainedRow)]
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=names)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v)
                        for k, v in dataclasses.asdict(r).items()})
    head = ["tokenizer", "vocab", "params (body)", "tokens/img", "model bpp", "PSNR dB", "JPEG scan bpp",
            "rotation (random init)", "source (random init)", "train tok/s", "tokenizer s", "GPT s",
            "total s"]

    def cell(v: float, spec: str) -> str:
        return "-" if isinstance(v, float) and math.isnan(v) else format(v, spec)

    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([
            r.tokenizer, str(r.vocab), f"{r.params / 1e6:.2f}M ({r.params_body / 1e6:.2f}M)",
            f"{r.tokens_per_image:.0f}", cell(r.model_bpp, ".3f"),
            cell(r.psnr, ".2f") + (f" ({r.lossless} exact)" if r.lossless else ""), cell(r.scan_bpp, ".3f"),
            f"{r.rotation:.3f} ({r.rotation_random:.3f})", f"{r.source:.3f} ({r.source_random:.3f})",
            f"{r.tokens_per_s:.0f}", f"{r.tokenizer_s:.0f}", f"{r.train_s:.0f}", f"{r.total_s:.0f}"]) + " |")
    md = (f"{cfg.n_layer}x{cfg.n_embd} GPT, {cfg.iters} iterations of {cfg.batch_size}x{cfg.block_size} "
          f"tokens on {cfg.train_crops} embedded train crops at {cfg.size}x{cfg.size} (JPEG q{cfg.quality}); "
          f"bpp and PSNR on {cfg.val_crops} held-out crops of the val photos; probe top-1 at the best layer "
          f"on val ({cfg.probe_images} photos), seeds {list(cfg.probe_seeds)}.\n\n" + "\n".join(lines) + "\n")
    (out / "results.md").write_text(md)
    return md


def plots(rows: list[TrainedRow], bands: dict[str, dict[str, float]], out: Path) -> None:
    """rd.png (model bpp vs PSNR), bands.png and components.png (raster vs coarse-to-fine)."""
    rd = [Series(r.tokenizer, [r.model_bpp], [r.psnr], line=False) for r in rows]   # inf: the top band
    jpeg = [r for r in rows if math.isfinite(r.scan_bpp)][:1]
    if jpeg:
        rd.append(Series("JPEG Huffman scan", [jpeg[0].scan_bpp], [jpeg[0].psnr], line=False))
    line_plot(rd, "model bits vs distortion (held-out crops)", "bits per pixel",
              "PSNR vs original (dB)").save(out / "rd.png")
    for group, title, path in (("band", "bits per image by band: 0 DC, 1..4 AC bands, last EOB", "bands.png"),
                               ("component", "bits per image by component: 0 header, 1 Y, 2 Cb, 3 Cr",
                                "components.png")):
        series = []
        for name, b in bands.items():
            ys = [v for k, v in b.items() if k.startswith(group + " ")]
            series.append(Series(name, list(range(len(ys))), ys))
        line_plot(series, title, group, "bits per image").save(out / path)
    if bands:
        import csv
        with open(out / "bands.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["tokenizer", "group", "bits_per_image"])
            for name, b in bands.items():
                w.writerows([name, k, f"{v:.2f}"] for k, v in b.items())


def main(cfg: TrainCompareConfig) -> list[TrainedRow]:
    """Run the comparison (see the module docstring); returns the rows."""
    from dctgpt.measure import load_rgb
    from tokenizer.corpus.embedded import export

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = json.loads(json.dumps(dataclasses.asdict(cfg)))
    if (out / "config.json").is_file() and json.loads((out / "config.json").read_text()) != settings:
        raise ValueError(f"{out}: holds a comparison made with other settings (config.json); "
                         "choose a new --out or delete it")
    (out / "config.json").write_text(json.dumps(settings, indent=2) + "\n")
    paths = export(out / "heldout", "val", cfg.val_crops, (cfg.size, cfg.size), seed=1)  # not the val split
    originals = [load_rgb(p) for p in paths]
    results = {}
    for name in cfg.tokenizers:
        done = out / "rows" / f"{name}.json"
        if not done.is_file():
            log.info("== %s", name)
            done.parent.mkdir(parents=True, exist_ok=True)
            done.write_text(json.dumps(run_one(name, cfg, out, paths, originals), indent=2) + "\n")
        results[name] = json.loads(done.read_text())
    rows = [TrainedRow(**r["row"]) for r in results.values()]
    md = write_results(rows, out, cfg)
    plots(rows, {n: r["bands"] for n, r in results.items() if r["bands"]}, out)
    grids = [[np.asarray(Image.open(p).convert("RGB")) for p in r["samples"]] for r in results.values()]
    image_grid([list(col) for col in zip(*grids)], list(results)).save(out / "samples.png")
    log.info("\n%s", md)
    return rows


def with_preset(argv: list[str]) -> list[str]:
    """argv with `--quick` spelled `--scale=quick`, after the keys of its --scale preset (later keys win)."""
    argv = ["--scale=quick" if a == "--quick" else a for a in argv]
    scale = "cpu"
    for i, a in enumerate(argv):
        if a.startswith("--scale="):
            scale = a.split("=", 1)[1]
        elif a == "--scale" and i + 1 < len(argv):
            scale = argv[i + 1]
    text = {tuple: lambda v: ",".join(map(str, v))}
    return [f"--{k}={text.get(type(v), str)(v)}" for k, v in PRESETS.get(scale, {}).items()] + argv


def cli(argv: list[str] | None = None) -> list[TrainedRow]:
    """`--scale cpu|quick|gpu` (or `--quick`) picks a preset; any key overrides it (`--help`)."""
    return run(main, TrainCompareConfig, with_preset(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    cli()
