"""Hybrid JPEG + VQ tokenizer: coefficient planes, round trip to a valid JPEG, save/load, grammar,
and a few training steps that lower the loss."""

import io

import numpy as np
import pytest
from PIL import Image

from tokenizer import TokenizerError, load_tokenizer
from tokenizer.corpus.embedded import crops
from tokenizer.hybrid.model import HybridConfig, from_planes, to_planes
from tokenizer.hybrid.tokenizer import HybridTokenizer
from tokenizer.hybrid.train import train
from tokenizer.jpeg.io import AC_MAX, parse_jpeg, read_coefficients, standard_qtables
from tokenizer.vqvae.train import VqTrainConfig

TINY = HybridConfig(size=(32, 32), quality=25, codebook_size=256, code_dim=8, channels=16)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("hybrid")
    cfg = VqTrainConfig(out=str(out), steps=30, batch_size=4, train_crops=16, val_crops=4, warmup=1,
                        log_interval=5, learning_rate=5e-3, num_threads=1)
    tok, report = train(TINY, cfg, progress=False)
    return out, tok, report


def photo(seed: int = 3, size: tuple[int, int] = (32, 32)) -> np.ndarray:
    return next(crops("val", 1, size, seed=seed)).pixels


def test_planes_hold_a_jpeg_exactly():
    tok = HybridTokenizer(TINY)
    coef = tok.coefficients(photo())
    planes = to_planes(coef)
    assert planes.shape == (192, 4, 4)
    assert planes[0, 1, 2] == coef.blocks[0][1, 2, 0] * coef.qtables[0, 0]          # Y DC, dequantized
    assert planes[64 + 5, 2, 3] == planes[64 + 5, 3, 2] == coef.blocks[1][1, 1, 5] * coef.qtables[1, 5]
    assert from_planes(planes, 25) == coef                                          # and back, bit for bit
    step = np.concatenate(coef.qtables).astype(float)[:, None, None]                # (192, 1, 1) per channel
    assert from_planes(planes + 0.45 * step, 25) == coef == from_planes(planes - 0.45 * step, 25)
    assert from_planes(planes + 0.55 * step, 25).blocks[0][0, 0, 7] == coef.blocks[0][0, 0, 7] + 1
    qt = standard_qtables(25, 3)
    wild = from_planes(np.full((192, 4, 4), 1e6), 25)                               # clipped to legal values
    assert wild.blocks[0][0, 0, 0] == 1016 // qt[0, 0] and wild.blocks[2][1, 1, 5] == AC_MAX // qt[2, 5]
    assert from_planes(np.full((192, 4, 4), -1e6), 25).blocks[0][0, 0, 0] == -1024 // int(qt[0, 0])


def test_round_trip_is_a_valid_jpeg_at_the_configured_tables(trained):
    _, tok, _ = trained
    seq = tok.encode(photo())
    assert len(seq) == 3 + 4 * 4 + 1 and seq.ids[0] == tok.bos_id and seq.ids[-1] == tok.eos_id
    assert 0 <= seq.ids[3:-1].min() and seq.ids[3:-1].max() < 256
    jpeg = tok.decode(seq)
    info = parse_jpeg(jpeg)
    assert jpeg[:2] == b"\xff\xd8" and (info.height, info.width, info.subsampling) == (32, 32, "4:2:0")
    coef = read_coefficients(jpeg)
    assert coef == tok.decode_coefficients(seq)                 # the file holds the predicted coefficients
    assert np.array_equal(coef.qtables, standard_qtables(25, 3))
    assert tok.coefficients(jpeg) == coef                       # a JPEG at its quality is kept as is
    px = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    assert px.shape == (32, 32, 3) and px.std() > 0
    assert tok.to_jpeg(photo()) is None                         # the tokens are learned codes, not a JPEG's


def test_save_load_gives_the_same_ids_and_jpeg(trained, tmp_path):
    out, tok, _ = trained
    again = load_tokenizer(out)
    assert isinstance(again, HybridTokenizer) and again.config == TINY and again.vocab_size == 256 + 3 + 256
    img = photo(5, (48, 40))                                    # fitted to 32x32 on the way in
    seq = again.encode(img)
    assert seq == tok.encode(img) and again.decode(seq) == tok.decode(seq)
    tok.save(tmp_path / "copy")
    weights = "hybrid.safetensors"
    assert (tmp_path / "copy" / weights).read_bytes() == (out / weights).read_bytes()


def test_grammar_walks_the_stream_and_random_codes_decode(trained):
    _, tok, _ = trained
    seq = tok.encode(photo())
    g = tok.grammar()
    assert np.array_equal(np.array([g.push(int(t)) for t in seq.ids]), seq.positions) and g.done
    g = tok.grammar(tok.header(16, 48))
    rng = np.random.default_rng(0)
    ids = list(tok.header(16, 48).ids) + [int(rng.integers(256)) for _ in range(2 * 6)] + [tok.eos_id]
    for t in ids[3:-1]:
        assert g.allowed()[t] and g.allowed()[:256].all() and not g.allowed()[256:].any()
        g.push(t)
    assert np.flatnonzero(g.allowed()).tolist() == [tok.eos_id]
    g.push(tok.eos_id)
    walk = tok.decode(tok.from_codes(np.array(ids[3:-1]).reshape(2, 6)))
    assert Image.open(io.BytesIO(walk)).size == (48, 16)
    with pytest.raises(TokenizerError, match="multiples of 8"):
        tok.header(12, 16)


def test_training_lowers_the_loss_and_reports(trained):
    out, _, report = trained
    assert report.train_loss < 0.5 * report.first_loss         # without optimizer steps: ~0.63
    assert report.val_psnr_jpeg > 25 and 0 < report.val_psnr < report.val_psnr_jpeg
    assert (out / "report.json").is_file() and Image.open(out / "recon.png").size == (4 * 34 + 2, 3 * 34 + 2)


def test_config_errors_name_the_value():
    with pytest.raises(ValueError, match="size=\\(24, 32\\)"):
        HybridConfig(size=(24, 32))
    with pytest.raises(ValueError, match="group=3"):
        HybridConfig(group=3)
    with pytest.raises(ValueError, match="codebook_size=100"):
        HybridConfig(codebook_size=100)
    with pytest.raises(ValueError, match="quality=0"):
        HybridConfig(quality=0)
