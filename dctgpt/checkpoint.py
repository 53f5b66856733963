"""Checkpoints as safetensors + JSON, written atomically; and loading a model back from one alone.

Layout of `<out_dir>/ckpt/`:

    ckpt.json              format, model config, train config, iteration, best val loss, optimizer
                           hyper-parameters per group
    model.safetensors      weights (tied weights stored once)
    optimizer.safetensors  AdamW state, keyed state.<param index>.<name>
    rng.safetensors        torch RNG state(s)
    tokenizer/             the tokenizer (tok.save), so the checkpoint alone rebuilds it

A checkpoint is written to `ckpt.tmp/` and swapped in by renames (`ckpt` -> `ckpt.old`,
`ckpt.tmp` -> `ckpt`, remove `ckpt.old`); a reader that finds no `ckpt/` falls back to `ckpt.old/`,
so a kill at any moment leaves one whole checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from dctgpt.model import GPT, GPTConfig
from tokenizer.base import Tokenizer, load_tokenizer, write_json_atomic

FORMAT = 1


@dataclass
class Checkpoint:
    directory: Path
    meta: dict              # ckpt.json
    model: GPT
    tokenizer: Tokenizer


def resolve(path: str | os.PathLike) -> Path:
    """A checkpoint directory from itself or from the out_dir holding it."""
    p = Path(path)
    for cand in (p, p / "ckpt", p / "ckpt.old"):
        if (cand / "ckpt.json").is_file():
            return cand
    raise FileNotFoundError(f"{p}: no checkpoint (expected ckpt.json in it or in {p / 'ckpt'})")


def save(out_dir: str | os.PathLike, model: GPT, optimizer: torch.optim.Optimizer | None,
         tokenizer: Tokenizer, meta: dict) -> Path:
    """Write a checkpoint into `<out_dir>/ckpt` atomically; `meta` goes into ckpt.json."""
    out = Path(out_dir)
    final, tmp, old = out / "ckpt", out / "ckpt.tmp", out / "ckpt.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))
    groups = []
    if optimizer is not None:
        sd = optimizer.state_dict()
        tensors = {f"state.{i}.{k}": v.detach().contiguous().cpu()
                   for i, st in sd["state"].items() for k, v in st.items() if torch.is_tensor(v)}
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        groups = sd["param_groups"]
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    save_file(rng, str(tmp / "rng.safetensors"))
    tokenizer.save(tmp / "tokenizer")
    write_json_atomic(tmp / "ckpt.json", {"format": FORMAT, "model_config": model.config.to_dict(),
                                          "optimizer_param_groups": groups, **meta})
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def load(path: str | os.PathLike, device: torch.device | str = "cpu") -> Checkpoint:
    """Rebuild model (eval mode) and tokenizer from a checkpoint directory (or its out_dir)."""
    d = resolve(path)
    meta = json.loads((d / "ckpt.json").read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{d}/ckpt.json: format {meta.get('format')!r}, this code reads {FORMAT}")
    model = GPT(GPTConfig.from_dict(meta["model_config"]))
    missing, unexpected = load_model(model, str(d / "model.safetensors"), strict=True)
    assert not missing and not unexpected
    model.to(device).eval()
    return Checkpoint(d, meta, model, load_tokenizer(d / "tokenizer"))


def load_optimizer(directory: Path, optimizer: torch.optim.Optimizer) -> None:
    """Restore the optimizer state saved by `save` into a freshly built optimizer."""
    meta = json.loads((directory / "ckpt.json").read_text())
    tensors = load_file(str(directory / "optimizer.safetensors"))
    state: dict[int, dict] = {}
    for key, t in tensors.items():
        _, i, name = key.split(".", 2)
        state.setdefault(int(i), {})[name] = t
    optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer_param_groups"]})


def load_rng(directory: Path) -> None:
    rng = load_file(str(directory / "rng.safetensors"))
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
