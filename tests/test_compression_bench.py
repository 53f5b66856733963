"""benchmarks/compression.py: the model row is each file's code length, and the per-image count of
files where the model beats another coder is read off the same per-image sizes."""

import importlib.util
from pathlib import Path

import numpy as np
import torch

from dctgpt.evaluate import as_is, stream_bits
from dctgpt.model import GPT, GPTConfig
from tokenizer.corpus.embedded import crops
from tokenizer.jpeg.tokenizer import JpegDctConfig, JpegDctTokenizer

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("compression_bench", ROOT / "benchmarks" / "compression.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_model_row_is_each_files_code_length_and_wins_count_per_image(tmp_path):
    bench = _bench()
    tok = JpegDctTokenizer(JpegDctConfig(quality=25, size=(32, 32)))
    paths = []
    for i, c in enumerate(crops("val", 3, (32, 32), seed=2)):
        paths.append(tmp_path / f"img{i}.jpg")
        paths[-1].write_bytes(tok.to_jpeg(c.pixels))
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16, block_size=128)).eval()
    report = bench.run(paths, tok, model=model, as_is=True)
    per = report["per_image"]
    assert per["names"] == [p.name for p in paths]
    lifted = as_is(tok)
    want = [stream_bits(model, lifted, lifted.encode(p.read_bytes())) / 8 for p in paths]
    assert np.allclose(per["model"], want)
    assert np.isclose(report["table"]["model"]["mean_bytes"], np.mean(want))
    # the count line: an untrained model is larger than the JPEG's own scan on every file
    assert all(m > h for m, h in zip(per["model"], per["huffman_opt"]))
    assert "model smaller than huffman_opt on 0/3" in bench.format_table(report)
    per["huffman_opt"] = [per["model"][0] + 1, per["model"][1] - 1, per["model"][2] + 5]
    assert "model smaller than huffman_opt on 2/3" in bench.format_table(report)
