"""sample.py keeps what it made: a new folder per run, a record of what made it, and a prefix grid
that shows the source photo and the part of it that was kept."""

import dataclasses
import hashlib
import io
import json

import numpy as np
import pytest
import torch
from jpeg_reference import photo_pixels
from PIL import Image

import sample
from dctgpt import checkpoint
from dctgpt.model import GPT, GPTConfig
from tokenizer import JpegDctConfig, JpegDctTokenizer


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny checkpoint whose model always says DC difference 0 or EOB (flat grey samples in two
    tokens a block): these tests are about the files, not the samples."""
    out = tmp_path_factory.mktemp("run")
    tok = JpegDctTokenizer(JpegDctConfig(quality=50, size=(32, 32)))
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=32,
                          bias=True))
    with torch.no_grad():  # the last layer norm outputs ones, so logits = row sums of lm_head
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.fill_(1.0)
        model.lm_head.weight[[tok.vocab.eob, tok.vocab.dc + tok.vocab.dc_range]] += 1.0
    checkpoint.save(out, model, None, tok, {"iter_num": 7, "best_val_loss": 1.5})
    return out


def config(run_dir, **kw) -> sample.SampleConfig:
    return sample.SampleConfig(out_dir=str(run_dir), **{"num_samples": 3, "batch_size": 2, **kw})


def test_each_run_writes_a_new_folder_and_records_what_made_it(run_dir):
    first = sample.main(config(run_dir))
    second = sample.main(config(run_dir, seed=5))
    assert [p.parent for p in first] == [run_dir / "samples" / "001"] * 3
    assert [p.parent for p in second] == [run_dir / "samples" / "002"] * 3
    assert all(p.is_file() for p in first + second)          # the first run is still there
    for paths, cfg in ((first, config(run_dir)), (second, config(run_dir, seed=5))):
        folder = paths[0].parent
        assert sorted(p.name for p in folder.iterdir()) == [
            "grid.png", "sample-000.jpg", "sample-001.jpg", "sample-002.jpg", "sample.json"]
        rec = json.loads((folder / "sample.json").read_text())
        assert rec["settings"] == dataclasses.asdict(cfg)
        ck = rec["checkpoint"]
        assert ck["directory"] == str((run_dir / "ckpt").resolve()) and ck["iter_num"] == 7
        assert ck["model_sha256"] == hashlib.sha256((run_dir / "ckpt" / "model.safetensors").read_bytes()
                                                    ).hexdigest()
        assert rec["tokenizer"] == {"name": "jpeg_dct", "config": json.loads(
            (run_dir / "ckpt" / "tokenizer" / "tokenizer.json").read_text())["config"]}
        assert [s["file"] for s in rec["samples"]] == [p.name for p in paths]
        assert [s["batch_seed"] for s in rec["samples"]] == [cfg.seed, cfg.seed, cfg.seed + 2]
        tok = checkpoint.load(run_dir).tokenizer
        assert [s["tokens"] for s in rec["samples"]] == [len(tok.encode(p.read_bytes())) for p in paths]


def test_a_named_folder_with_earlier_samples_needs_overwrite(run_dir, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    sample.main(config(run_dir, samples_dir=str(folder)))              # samples next to other files: fine
    before = (folder / "sample-002.jpg").read_bytes()
    with pytest.raises(ValueError, match="overwrite"):
        sample.main(config(run_dir, samples_dir=str(folder), num_samples=2, seed=9))
    assert (folder / "sample-002.jpg").read_bytes() == before           # refused: nothing touched
    sample.main(config(run_dir, samples_dir=str(folder), num_samples=2, seed=9, overwrite=True))
    assert sorted(p.name for p in folder.iterdir()) == [               # one run's files, and the user's
        "grid.png", "notes.txt", "sample-000.jpg", "sample-001.jpg", "sample.json"]
    assert json.loads((folder / "sample.json").read_text())["settings"]["seed"] == 9


def test_prefix_grid_shows_the_source_and_the_kept_region(run_dir, tmp_path):
    photo = tmp_path / "photo.png"
    Image.fromarray(photo_pixels("coffee")[150:214, 250:314].copy()).save(photo)   # 64x64 -> 32x32
    paths = sample.main(config(run_dir, samples_dir=str(tmp_path / "s"), prefix_image=str(photo),
                               prefix_rows=2))   # 4:2:0: the first row of MCUs, 16 pixel rows
    tok = checkpoint.load(run_dir).tokenizer
    source = np.asarray(Image.open(io.BytesIO(tok.to_jpeg(photo))).convert("RGB"))
    grid = np.asarray(Image.open(tmp_path / "s" / "grid.png"))
    pad, h, w = 2, 32, 32
    assert np.array_equal(grid[pad:pad + h, pad:pad + w], source)        # top left: the photo
    kept = grid[2 * pad + h:2 * pad + 2 * h, pad:pad + w].astype(int)     # below it: the kept region
    assert np.array_equal(kept[:16], source[:16])
    assert np.array_equal(kept[16:], (0.25 * source[16:] + 120).astype(int))   # the rest dimmed
    left = pad + w + pad + 4 * pad                                        # then the completions, 2 per row
    for i, p in enumerate(paths):
        im = np.asarray(Image.open(p).convert("RGB"))
        y, x = pad + (i // 2) * (h + pad), left + pad + (i % 2) * (w + pad)
        assert np.array_equal(grid[y:y + h, x:x + w], im)
