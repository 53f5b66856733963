"""VQ-VAE tokenizer: a few training steps, save/load, encode/decode shapes, ids in range, grammar,
codebook restarts, and train.main on its tokens."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from tokenizer import TokenizerError, load_tokenizer
from tokenizer.corpus.embedded import crops
from tokenizer.corpus.prepare import Source, prepare
from tokenizer.vqvae.model import Quantizer, VqConfig
from tokenizer.vqvae.tokenizer import VqVaeTokenizer
from tokenizer.vqvae.train import VqTrainConfig, cli, train

TINY = VqConfig(size=(16, 16), downsample=4, codebook_size=256, code_dim=8, channels=16)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("vq")
    tok, report = train(TINY, VqTrainConfig(out=str(out), steps=4, batch_size=4, train_crops=16, val_crops=4,
                                            warmup=1, log_interval=2, num_threads=1), progress=False)
    return out, tok, report


def test_training_writes_tokenizer_report_and_grid(trained):
    out, tok, report = trained
    for name in ("vqvae.safetensors", "tokenizer.json", "report.json", "recon.png"):
        assert (out / name).stat().st_size > 0
    assert Image.open(out / "recon.png").size == (4 * 18 + 2, 2 * 18 + 2)   # 4 originals over 4 recons
    # the report's figures, recomputed here from the saved tokenizer on the same val crops
    again = load_tokenizer(out)
    val = [c.pixels for c in crops("val", 4, (16, 16), seed=0)]
    mse = [np.mean((px.astype(np.float64) - again.decode_pixels(again.encode(px))) ** 2) for px in val]
    assert report.val_psnr == pytest.approx(np.mean([10 * np.log10(255.0 ** 2 / m) for m in mse]), rel=1e-9)
    counts = np.bincount(np.concatenate([again.encode(px).ids[3:-1] for px in val]), minlength=256)
    p = counts[counts > 0] / counts.sum()
    assert report.codebook_usage == pytest.approx((counts > 0).mean(), rel=1e-12)
    assert report.perplexity == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-9)
    assert json.loads((out / "report.json").read_text())["val_psnr"] == report.val_psnr


def test_save_load_encode_decode(trained, tmp_path):
    out, tok, _ = trained
    again = load_tokenizer(out)
    assert isinstance(again, VqVaeTokenizer) and again.config == TINY
    assert again.vocab_size == 256 + 3 + 2 * TINY.max_grid
    img = next(crops("val", 1, (40, 24), seed=3)).pixels              # fitted to 16x16 on the way in
    seq = again.encode(img)
    assert seq == tok.encode(img)                                     # same weights, same ids
    assert len(seq) == 3 + 4 * 4 + 1 and seq.ids[0] == again.bos_id and seq.ids[-1] == again.eos_id
    body = seq.ids[3:-1]
    assert body.min() >= 0 and body.max() < 256
    assert np.array_equal(seq.positions[3:7, 2:4], [[0, 0], [0, 1], [0, 2], [0, 3]])
    assert (seq.positions[3:-1, 1] == 1).all() and (seq.positions[3:-1, 4] == 0).all()
    px = again.decode_pixels(seq)
    assert px.shape == (16, 16, 3) and px.dtype == np.uint8
    png = again.decode(seq)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and np.array_equal(np.asarray(Image.open(io.BytesIO(png))), px)
    tok.save(tmp_path / "copy")
    assert (tmp_path / "copy" / "vqvae.safetensors").read_bytes() == (out / "vqvae.safetensors").read_bytes()


def test_grammar_is_fixed_length_given_the_grid(trained):
    _, tok, _ = trained
    seq = tok.encode(next(crops("val", 1, (16, 16))).pixels)
    g = tok.grammar()
    rows = np.array([g.push(int(t)) for t in seq.ids])
    assert g.done and np.array_equal(rows, seq.positions)
    g = tok.grammar(tok.header(8, 12))                                # any multiple of downsample
    assert g.allowed()[:256].all() and g.allowed()[256:].sum() == 0
    rng = np.random.default_rng(0)
    for _ in range(6):
        g.push(int(rng.integers(256)))
    assert np.flatnonzero(g.allowed()).tolist() == [tok.eos_id]
    g.push(tok.eos_id)
    assert g.done and not g.allowed().any()
    with pytest.raises(TokenizerError, match="multiples of 4"):
        tok.header(10, 12)
    with pytest.raises(TokenizerError, match="not allowed"):
        tok.grammar().push(3)
    with pytest.raises(TokenizerError, match="ends before its EOS"):
        tok.decode(seq[:-1])


def test_dead_codes_restart_onto_encoder_outputs():
    q = Quantizer(VqConfig(codebook_size=256, code_dim=4))
    q.train()
    z = torch.randn(2, 4, 8, 8)
    q(z)                                                              # first call: codebook from latents
    q.codebook[:10] = 100.0                                           # codes 0..9: far away, never chosen
    q.embed_sum[:10] = 100.0 * q.cluster_size[:10, None]
    q.usage[:10] = 0.0
    q(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    nearest = torch.cdist(q.codebook[:10], flat).min(1).values
    assert (nearest < 0.1).all()                                      # restarted onto batch vectors
    assert (q.usage[:10] == 4 * q.c.dead_threshold).all()             # with a grace period
    assert (q.usage[10:] > 0).all() and q.restarts >= 10


def test_config_errors_name_the_value():
    with pytest.raises(ValueError, match="downsample=2"):
        VqConfig(downsample=2)
    with pytest.raises(ValueError, match="codebook_size=128"):
        VqConfig(codebook_size=128)
    with pytest.raises(ValueError, match="size=\\(30, 32\\)"):
        VqConfig(size=(30, 32))
    with pytest.raises(ValueError, match="quantizer='kmeans'"):
        VqConfig(quantizer="kmeans")
    with pytest.raises(SystemExit) as e:
        cli(["fit"])
    assert e.value.code == 2


def test_straight_through_codebook_gets_the_codebook_loss_gradient():
    """d/dc_k of mean((c_code(i) - z_i)^2) over N latents of D dims is 2/(N D) sum_{i: code k} (c_k - z_i):
    used codes get exactly that, unused codes nothing, and one step moves used codes toward their latents."""
    q = Quantizer(VqConfig(codebook_size=256, code_dim=4, quantizer="straight_through"))
    assert isinstance(q.codebook, torch.nn.Parameter)
    q.train()
    torch.manual_seed(0)
    z = torch.randn(2, 4, 8, 8)
    q(z)                                                              # first call: codebook from latents
    out = q(z)
    out.loss.backward()
    flat, codes = z.permute(0, 2, 3, 1).reshape(-1, 4), out.codes.flatten()
    cb = q.codebook.detach()
    expected = torch.zeros_like(cb).index_add_(0, codes, 2 * (cb[codes] - flat) / flat.numel())
    assert torch.allclose(q.codebook.grad, expected, atol=1e-7)
    used = torch.bincount(codes, minlength=256) > 0
    assert used.any() and not used.all() and (q.codebook.grad[~used] == 0).all()
    dist_before = (cb[codes] - flat).pow(2).sum()
    torch.optim.SGD([q.codebook], lr=1.0).step()
    assert torch.equal(q.codebook.detach()[~used], cb[~used])
    assert (q.codebook.detach()[codes] - flat).pow(2).sum() < dist_before


def test_straight_through_training_optimizes_the_codebook(tmp_path, monkeypatch):
    import tokenizer.vqvae.train as vq_train

    optimized = []

    class RecordingAdam(torch.optim.Adam):
        def __init__(self, params, **kw):
            params = list(params)
            optimized.extend(params)
            super().__init__(params, **kw)

    monkeypatch.setattr(vq_train.torch.optim, "Adam", RecordingAdam)
    cfg = VqConfig(size=(16, 16), codebook_size=256, code_dim=8, channels=16, quantizer="straight_through")
    tok, report = train(cfg, VqTrainConfig(out=str(tmp_path), steps=2, batch_size=2, train_crops=4,
                                           val_crops=2, num_threads=1), progress=False)
    assert any(p is tok.model.quantizer.codebook for p in optimized)
    ema = VqConfig(size=(16, 16), codebook_size=256, code_dim=8, channels=16)
    assert not isinstance(VqVaeTokenizer(ema).model.quantizer.codebook, torch.nn.Parameter)  # EMA: a buffer


def test_train_main_runs_on_vq_tokens(trained, tmp_path):
    import train as train_py
    from dctgpt.config import TrainConfig
    from dctgpt.model import GPTConfig

    out, tok, _ = trained
    prepare(Source("embedded", crop_size=(16, 16)), tmp_path / "corpus", tok, train_crops=24, val_crops=6,
            workers=1, progress=False)
    cfg = TrainConfig(data_dir=str(tmp_path / "corpus"), out_dir=str(tmp_path / "run"), batch_size=4,
                      max_iters=4, eval_interval=2, eval_iters=1, warmup_iters=1, lr_decay_iters=4,
                      num_threads=1,
                      model=GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32))
    result = train_py.main(cfg)
    assert sorted(result.train_loss) == [0, 1, 2, 3]
    assert result.train_loss[3] < result.train_loss[0]
    from dctgpt import checkpoint
    ck = checkpoint.load(tmp_path / "run")
    assert isinstance(ck.tokenizer, VqVaeTokenizer) and ck.model.config.vocab_size == tok.vocab_size
    import sample  # sample.py runs unchanged on VQ tokens
    paths = sample.main(sample.SampleConfig(out_dir=str(tmp_path / "run"), num_samples=2, batch_size=2))
    for p in paths:
        assert Image.open(p).size == (16, 16)
    assert (tmp_path / "run" / "samples" / "001" / "grid.png").is_file()   # each run: a new folder
    from dctgpt import evaluate  # bits per image on learned tokens; no JPEG scan to compare with
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (16, 16), (200, 40, 10)).save(folder / "red.png")
    report = evaluate.main(str(tmp_path / "run"), str(folder), progress=False)
    row = report["images"][0]
    assert row["bits"] > 0 and row["scan_bytes"] == 0 and row["saving"] != row["saving"]   # nan
