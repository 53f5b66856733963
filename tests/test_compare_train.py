"""The comparison that trains, end to end at toy size: five tokenizers, one recipe, every output."""

import csv
import json
import math
from dataclasses import asdict

import numpy as np
import pytest
from PIL import Image

from dctgpt.compare import cli
from dctgpt.compare_train import PRESETS, TrainCompareConfig, band_bits, with_preset


@pytest.mark.slow
def test_train_mode_trains_every_tokenizer_and_writes_table_plots_and_samples(tmp_path):
    out = tmp_path / "ct"
    args = ["--train", "--quick", "--out", str(out), "--size", "16", "--train_crops", "24", "--bpe_crops",
            "16", "--block_size", "128", "--samples", "2", "--probe_crops", "1",
            "--probe_images", "embedded:val"]
    rows = cli(args)
    assert [r.tokenizer for r in rows] == ["jpeg", "jpeg_c2f", "bpe", "vqvae", "hybrid"]
    by = {r.tokenizer: r for r in rows}
    assert len({r.params_body for r in rows}) == 1 and rows[0].params_body > 0   # one recipe for all
    assert by["jpeg"].vocab == by["jpeg_c2f"].vocab < by["bpe"].vocab == 1200
    assert by["vqvae"].tokens_per_image == 3 + 4 * 4 + 1 and by["hybrid"].tokens_per_image == 3 + 2 * 2 + 1
    assert by["jpeg"].psnr == by["jpeg_c2f"].psnr == by["bpe"].psnr          # the same lossless q25 JPEG
    assert by["jpeg"].scan_bpp == by["bpe"].scan_bpp and math.isnan(by["vqvae"].scan_bpp)
    for r in rows:
        assert r.model_bpp > 0 and 0 <= r.rotation <= 1 and 0 <= r.source_random <= 1
        assert r.tokens_per_s > 0 and r.train_s > 0 and r.total_s >= r.train_s + r.tokenizer_s
    assert (by["jpeg"].tokenizer_s, by["jpeg_c2f"].tokenizer_s) == (0, 0) and by["hybrid"].tokenizer_s > 0

    table = (out / "results.md").read_text()
    assert table.count("\n| ") == 1 + 5 and "| hybrid | 515 |" in table
    with open(out / "results.csv") as f:
        assert [r["tokenizer"] for r in csv.DictReader(f)] == list(by)
    with open(out / "bands.csv") as f:
        bands = list(csv.DictReader(f))
    for order in ("jpeg", "jpeg_c2f"):                   # bands and components each add up to the model bits
        mine = {b["group"]: float(b["bits_per_image"]) for b in bands if b["tokenizer"] == order}
        header = mine["component header"]
        total = by[order].model_bpp * 16 * 16
        components = sum(v for k, v in mine.items() if k.startswith("component"))
        bands_and_header = sum(v for k, v in mine.items() if k.startswith("band")) + header
        assert components == pytest.approx(total, rel=1e-3)
        assert bands_and_header == pytest.approx(total, rel=1e-3)
    for name in ("rd.png", "bands.png", "components.png"):
        assert len(np.unique(np.asarray(Image.open(out / name)).reshape(-1, 3), axis=0)) > 5
    assert Image.open(out / "samples.png").size == (5 * (32 + 4) + 4, 18 + 2 * (32 + 4) + 4)

    again = cli(args)                                                          # finished rows are kept
    assert json.dumps([asdict(r) for r in again]) == json.dumps([asdict(r) for r in rows])
    with pytest.raises(SystemExit):                                            # other settings: refused
        cli(args + ["--iters", "5"])


def test_band_bits_split_the_model_bits_by_what_each_token_codes():
    import torch

    from dctgpt.evaluate import sequence_nll
    from dctgpt.model import GPT, GPTConfig
    from tokenizer.corpus.embedded import crops
    from tokenizer.jpeg.tokenizer import JpegDctConfig, JpegDctTokenizer

    tok = JpegDctTokenizer(JpegDctConfig(size=(16, 16), order="coarse_to_fine"))
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=256, n_layer=1, n_head=2, n_embd=32)).eval()
    seqs = [tok.encode(c.pixels) for c in crops("val", 2, (16, 16))]
    b = band_bits(model, tok, seqs)
    assert list(b) == ["band DC", "band AC 1-5", "band AC 6-14", "band AC 15-27", "band AC 28-63", "band EOB",
                       "component header", "component Y", "component Cb", "component Cr"]
    bits = [sequence_nll(model, s) / math.log(2) for s in seqs]
    dc = [x[(s.positions[1:, 4] == 0) & (s.positions[1:, 1] > 0)].sum() for s, x in zip(seqs, bits)]
    assert b["band DC"] == pytest.approx(np.mean(dc))
    cr = [x[s.positions[1:, 1] == 3].sum() for s, x in zip(seqs, bits)]
    assert b["component Cr"] == pytest.approx(np.mean(cr))


def test_presets_and_errors(capsys):
    assert with_preset(["--quick", "--iters=7"])[-2:] == ["--scale=quick", "--iters=7"]   # later keys win
    assert "--probe_C=1.0" in with_preset(["--scale", "quick"]) and with_preset([]) == []
    gpu = TrainCompareConfig(**PRESETS["gpu"])
    assert gpu.device == "cuda" and gpu.probe_seeds == (0, 1, 2)
    with pytest.raises(ValueError, match="tokenizers=\\['webp'\\]"):
        TrainCompareConfig(tokenizers=("webp",))
    for bad in (["--iters", "0"], ["--scale=tiny"]):
        with pytest.raises(SystemExit) as e:
            cli(["--train", *bad])
        assert e.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: iters=0: expected >= 1", "error: scale='tiny': expected one of ['cpu', 'quick', 'gpu']"]
