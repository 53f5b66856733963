"""Linear probes on a trained GPT's frozen features: what next-token prediction learned about images.

    python -m dctgpt.probe --ckpt out/quickstart --task rotation --images embedded --json probe.json \\
        --seeds 0 1 2
    python -m dctgpt.probe --ckpt out/quickstart --task labels --images data/cifar10 --max_images 2000

Features: every image is brought to the checkpoint tokenizer's geometry and quality (its `to_jpeg`
/ `encode`) and tokenized; the residual stream after the embedding and after every block is
mean-pooled over the image's body tokens (position component > 0: the coefficient or code tokens,
not BOS, header or EOS). A logistic regression (scikit-learn, standardized features, C chosen on
val from --C) is fitted on train per layer; the layer with the best val top-1 is the model's
figure, reported with its test top-1, and every layer is listed.

Baselines in the same run: the same architecture at random initialisation (`GPT(config)` after
`torch.manual_seed(seed)`, as train.py builds it), every layer, best on val; raw pixels (the image
the tokens encode, i.e. the tokenizer's JPEG or, for learned tokens, their decode, box-filtered to
16x16 RGB: 768 values); raw quantized coefficients of that JPEG (`coef_stats`: per component and
zigzag index, the mean value and mean |value| over blocks; `coef_grid`: every component's block
grid average-pooled to at most 8x8 block places (4x4 for 4:2:0 chroma), all 64 coefficients each).

Several seeds draw new crops (rotation, source) and a new random init; the summary gives each
method's test top-1 as mean and sample std over seeds, and the margin of the trained model over
the random init. Tasks and splits: dctgpt.probe_data. Features are cached as safetensors under
--cache, keyed by the weights' SHA-256 (or the random seed), the tokenizer and the data, so a second
probe of the same checkpoint re-fits the regressions only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from dctgpt import checkpoint
from dctgpt.model import GPT, KVCache
from dctgpt.probe_data import SPLITS, TASKS, ProbeData, probe_data
from tokenizer.base import COMPONENT, Tokenizer, TokenSequence
from tokenizer.cli import run

log = logging.getLogger("dctgpt.probe")
POOLED = "mean over body tokens (position component > 0), residual stream after the embedding and each block"
METHODS = ("trained", "random", "pixels", "coef_stats", "coef_grid")


def default_cache() -> str:
    return str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dctgpt" / "probe")


@dataclass(frozen=True)
class ProbeConfig:
    ckpt: str                     # checkpoint dir (or the out_dir holding ckpt/)
    task: str = "rotation"        # "rotation", "source" or "labels"
    images: str = "embedded"      # photos (embedded[:train|:val], a folder) or labelled data (see above)
    json: str = ""                # write the report here
    seeds: tuple[int, ...] = (0,)  # new crops (rotation, source) and a new random init per seed
    crops_per_photo: int = 32     # rotation/source: train crops per photo (val: 1/4, test: 1/2 of it)
    max_images: int = 0           # labels: at most this many images per split; 0 = all
    label_column: str | None = None  # a saved dataset's label column; none = label, labels or fine_label
    image_column: str | None = None  # a saved dataset's image column; none = its first image column
    C: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0)  # inverse regularization strengths, chosen on val
    cache: str = ""               # feature cache folder; "" = $XDG_CACHE_HOME/dctgpt/probe, "none" = off
    batch_size: int = 8           # images per forward pass
    threads: int = 0              # torch CPU threads; 0 = torch's default
    progress: bool = True         # progress bars (on a terminal)

    def __post_init__(self) -> None:
        object.__setattr__(self, "seeds", tuple(self.seeds))
        object.__setattr__(self, "C", tuple(float(c) for c in self.C))
        if self.task not in TASKS:
            raise ValueError(f"task={self.task!r}: expected one of {TASKS}")
        if not self.seeds:
            raise ValueError("seeds=(): expected at least one seed")
        if not self.C or min(self.C) <= 0:
            raise ValueError(f"C={self.C!r}: expected positive inverse regularization strengths")
        for name in ("crops_per_photo", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected >= 1")


# -- features ------------------------------------------------------------------------------------
@torch.no_grad()
def gpt_features(model: GPT, seqs: list[TokenSequence], batch_size: int = 8,
                 progress: bool = False, contexts: list[np.ndarray] | None = None) -> np.ndarray:
    """(N, n_layer + 1, n_embd) float32: each image's residual stream after the embedding and after
    every block, mean-pooled over its body tokens (see the module docstring). `contexts`: each
    stream's (T, n_context) features (Tokenizer.context), for a model with context features."""
    captured: list[torch.Tensor] = []
    modules = [model.transformer.drop, *model.transformer.h]   # drop(x) is the summed embedding
    hooks = [m.register_forward_hook(lambda m, i, o: captured.append(o)) for m in modules]
    W, n, L = model.config.block_size, len(seqs), len(modules)
    out = np.zeros((n, L, model.config.n_embd), np.float32)
    order = sorted(range(n), key=lambda i: len(seqs[i]))        # similar lengths share a batch
    short = [i for i in order if len(seqs[i]) <= W]
    C = model.config.n_context
    if C and (contexts is None or len(contexts) != n):
        raise ValueError(f"gpt_features: the model takes {C} context features per token; pass contexts")
    ctx = [torch.from_numpy(np.asarray(c, np.int64)) for c in contexts] if C else None
    bar = tqdm(total=n, desc="features", unit="img", disable=not progress)
    try:
        for s in range(0, len(short), batch_size):
            idx = short[s:s + batch_size]
            T = len(seqs[idx[-1]])
            ids = torch.zeros(len(idx), T, dtype=torch.long)    # padded at the end: causal attention
            pos = torch.zeros(len(idx), T, 5, dtype=torch.long)  # never lets a real token see padding
            cx = torch.zeros(len(idx), T, C, dtype=torch.long)
            for b, i in enumerate(idx):
                ids[b, :len(seqs[i])] = torch.from_numpy(seqs[i].ids)
                pos[b, :len(seqs[i])] = torch.from_numpy(seqs[i].positions)
                if C:
                    cx[b, :len(seqs[i])] = ctx[i]
            captured.clear()
            model(ids, pos, context=cx if C else None)
            out[idx] = _pool(torch.stack(captured, 1), [seqs[i] for i in idx])   # (B, L, T, C) -> (B, L, C)
            bar.update(len(idx))
        for i in order[len(short):]:                              # longer than the context: chunks
            captured.clear()                                      # through a sliding KV cache
            cache = KVCache(model.config, 1)
            ids = torch.from_numpy(seqs[i].ids.astype(np.int64))[None]
            pos = torch.from_numpy(seqs[i].positions.astype(np.int64))[None]
            for c in range(0, ids.size(1), W // 2):
                model(ids[:, c:c + W // 2], pos[:, c:c + W // 2], cache=cache,
                      context=ctx[i][None, c:c + W // 2] if C else None)
            per_layer = [torch.cat(captured[k::L], dim=1) for k in range(L)]   # (1, T, C) each
            out[i] = _pool(torch.stack(per_layer, 1), [seqs[i]])[0]
            bar.update(1)
    finally:
        for h in hooks:
            h.remove()
        bar.close()
    return out


def _pool(h: torch.Tensor, seqs: list[TokenSequence]) -> np.ndarray:
    """(B, L, T, C) hidden states -> (B, L, C) means over each sequence's body tokens."""
    mask = torch.zeros(h.size(0), h.size(2), dtype=torch.float64)
    for b, s in enumerate(seqs):
        body = s.positions[:, COMPONENT] > 0
        mask[b, :len(s)] = torch.from_numpy(body if body.any() else np.ones(len(s), bool))
    w = mask[:, None, :, None]                                       # (B, 1, T, 1)
    return ((h.double() * w).sum(2) / w.sum(2)).float().numpy()


def input_features(tok: Tokenizer, images: list[Any], progress: bool = False
                   ) -> tuple[list[TokenSequence], dict[str, np.ndarray]]:
    """Token streams of the images, and the pixel and coefficient baselines' features."""
    from tokenizer.jpeg.io import read_coefficients

    seqs, pixels, stats, grids = [], [], [], []
    for img in tqdm(images, desc="tokenize", unit="img", disable=not progress):
        jpeg = tok.to_jpeg(img)
        seq = tok.encode(jpeg if jpeg is not None else img)
        shown = jpeg if jpeg is not None else tok.decode(seq)      # the image the tokens encode
        seqs.append(seq)
        with Image.open(io.BytesIO(shown)) as im:
            pixels.append(np.asarray(im.convert("RGB").resize((16, 16), Image.Resampling.BOX),
                                     np.float32).ravel() / 255)
        if shown[:2] == b"\xff\xd8":
            blocks = read_coefficients(shown).blocks                 # (rows, cols, 64) per component
            stats.append(np.concatenate([np.stack([b.mean((0, 1)), np.abs(b).mean((0, 1))]).ravel()
                                         for b in blocks]).astype(np.float32))
            grids.append(np.concatenate([_block_grid(b, 8 if c == 0 else 4).ravel()
                                         for c, b in enumerate(blocks)]))
    feats = {"pixels": np.stack(pixels)}
    if len(stats) == len(images):
        feats.update(coef_stats=np.stack(stats), coef_grid=np.stack(grids))
    return seqs, feats


def _block_grid(blocks: np.ndarray, cells: int) -> np.ndarray:
    """(rows, cols, 64) coefficients average-pooled to at most (cells, cells, 64) block places."""
    t = torch.from_numpy(blocks.astype(np.float32)).permute(2, 0, 1)[None]       # (1, 64, rows, cols)
    size = (min(cells, blocks.shape[0]), min(cells, blocks.shape[1]))
    return torch.nn.functional.adaptive_avg_pool2d(t, size)[0].numpy()


def cached(cache: str, key: dict, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """`compute()` once per `key`: arrays kept as safetensors in `cache` (off when cache == "none")."""
    from safetensors.numpy import load_file, save_file

    if cache == "none":
        return compute()
    text = json.dumps(key, sort_keys=True, default=str)
    path = Path(cache) / f"{hashlib.sha256(text.encode()).hexdigest()[:32]}.safetensors"
    if path.is_file():
        from safetensors import safe_open
        with safe_open(str(path), "numpy") as f:
            if (f.metadata() or {}).get("key") == text:
                return load_file(str(path))
    arrays = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp), metadata={"key": text})
    os.replace(tmp, path)
    return arrays


# -- fits ----------------------------------------------------------------------------------------
def fit(X: np.ndarray, y: np.ndarray, parts: dict[str, np.ndarray], Cs: tuple[float, ...]) -> dict:
    """Logistic regression on standardized features; C chosen on val. {"C", "val", "test"} top-1."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    scaler = StandardScaler().fit(X[parts["train"]])
    Xs = {s: scaler.transform(X[idx]) for s, idx in parts.items()}
    ys = {s: y[idx] for s, idx in parts.items()}
    clf = LogisticRegression(max_iter=500, warm_start=True)          # each C starts from the last fit
    best: dict = {}
    for C in sorted(Cs):
        # one BLAS thread: these small products gain little from more, and spinning threads on a busy
        # machine made them 10x slower
        with warnings.catch_warnings(), threadpool_limits(1):
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.set_params(C=C).fit(Xs["train"], ys["train"])
        val = float(clf.score(Xs["val"], ys["val"]))
        if not best or val > best["val"]:
            best = {"C": C, "val": val, "test": float(clf.score(Xs["test"], ys["test"]))}
    return best


def fit_layers(F: np.ndarray, y: np.ndarray, parts: dict[str, np.ndarray], Cs: tuple[float, ...]) -> dict:
    """fit() per layer of (N, L, C) features; the best layer on val gives the figure."""
    layers = [{"layer": k, **fit(F[:, k], y, parts, Cs)} for k in range(F.shape[1])]
    best = max(layers, key=lambda r: r["val"])                       # first of equals: the shallower
    return {"best_layer": best["layer"], "val": best["val"], "test": best["test"], "layers": layers}


# -- one run -------------------------------------------------------------------------------------
def probe_seed(model: GPT, tok: Tokenizer, weights: str, data: ProbeData, seed: int,
               cfg: ProbeConfig) -> dict:
    """Every method's figures on one seed's data."""
    cache = cfg.cache or default_cache()
    images = [im for s in SPLITS for im in data.splits[s].images]
    y = np.concatenate([data.splits[s].labels for s in SPLITS])
    edges = np.cumsum([0] + [len(data.splits[s].labels) for s in SPLITS])
    parts = {s: np.arange(edges[k], edges[k + 1]) for k, s in enumerate(SPLITS)}
    base = {"tokenizer": tok.name, "tokenizer_config": asdict(tok.config), "data": data.key}
    seqs: list[TokenSequence] = []

    def inputs() -> dict[str, np.ndarray]:
        s, feats = input_features(tok, images, cfg.progress)
        seqs.extend(s)
        return feats

    def features(m: GPT) -> Callable[[], dict[str, np.ndarray]]:
        def compute() -> dict[str, np.ndarray]:
            if not seqs:
                inputs()
            contexts = [tok.context(s) for s in seqs] if m.config.n_context else None
            return {"features": gpt_features(m, seqs, cfg.batch_size, cfg.progress, contexts)}
        return compute

    feats = cached(cache, {"kind": "inputs", **base}, inputs)
    trained = cached(cache, {"kind": "gpt", "weights": weights, **base}, features(model))["features"]
    torch.manual_seed(seed)
    random_model = GPT(model.config).eval()
    random_key = {"kind": "gpt", "weights": f"random init, seed {seed}",
                  "model_config": model.config.to_dict()}
    random = cached(cache, {**random_key, **base}, features(random_model))["features"]
    out = {"seed": seed, "counts": {s: len(parts[s]) for s in SPLITS},
           "trained": fit_layers(trained, y, parts, cfg.C), "random": fit_layers(random, y, parts, cfg.C)}
    for name, X in feats.items():
        out[name] = fit(X, y, parts, cfg.C)
    return out


def summarize(per_seed: list[dict]) -> dict:
    """Per method: test top-1 mean and sample std over seeds; the margin of trained over random."""
    def ms(values: list[float]) -> dict:
        v = np.array(values)
        return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": len(v)}

    out = {m: ms([r[m]["test"] for r in per_seed]) for m in METHODS if m in per_seed[0]}
    out["margin_over_random"] = ms([r["trained"]["test"] - r["random"]["test"] for r in per_seed])
    out["best_layers"] = [r["trained"]["best_layer"] for r in per_seed]
    return out


def format_report(report: dict) -> str:
    s = report["summary"]
    c = report["per_seed"][0]["counts"]
    lines = [f"{report['task']} on {report['images']}: {len(report['classes'])} classes, "
             f"train {c['train']} / val {c['val']} / test {c['test']} images, seeds {report['seeds']}",
             f"{'method':<12} {'test top-1':>18}"]
    for m in METHODS:
        if m in s:
            lines.append(f"{m:<12} {s[m]['mean']:>10.3f} ± {s[m]['std']:.3f}")
    g = s["margin_over_random"]
    lines.append(f"margin of the trained model over random init: {g['mean']:+.3f} ± {g['std']:.3f} "
                 f"(best layers {s['best_layers']}; 0 = embedding)")
    return "\n".join(lines)


def main(cfg: ProbeConfig) -> dict:
    """Probe `cfg.ckpt` on `cfg.task` for every seed; returns (and writes to cfg.json) the report."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.time()
    ck = checkpoint.load(cfg.ckpt)
    weights = hashlib.sha256((ck.directory / "model.safetensors").read_bytes()).hexdigest()
    crop = ck.tokenizer.size or (64, 64)
    per_seed, data = [], None
    for seed in cfg.seeds:
        data = probe_data(cfg.task, cfg.images, seed, crop, cfg.crops_per_photo, cfg.max_images,
                          cfg.label_column, cfg.image_column)
        log.info("seed %d: %s", seed, {s: len(data.splits[s].labels) for s in SPLITS})
        per_seed.append(probe_seed(ck.model, ck.tokenizer, weights, data, seed, cfg))
    report = {"checkpoint": str(ck.directory), "weights_sha256": weights, "iter_num": ck.meta.get("iter_num"),
              "task": cfg.task, "images": cfg.images, "classes": data.classes, "seeds": list(cfg.seeds),
              "pooled": POOLED, "config": asdict(cfg), "per_seed": per_seed, "summary": summarize(per_seed),
              "seconds": time.time() - t0}
    if cfg.json:
        Path(cfg.json).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


def _main(cfg: ProbeConfig) -> dict:
    report = main(dataclasses.replace(cfg, progress=cfg.progress and sys.stderr.isatty()))
    print(format_report(report))
    return report


def cli(argv: list[str] | None = None) -> dict:
    return run(_main, ProbeConfig, argv)


if __name__ == "__main__":
    cli()
