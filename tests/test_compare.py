"""The comparison command on three images: table, CSV, plots; numbers consistent with each other."""

import csv
import math

import numpy as np
import pytest
from PIL import Image
from tiny_corpus import make_corpus

from dctgpt.compare import cli, expand
from tokenizer import JpegDctTokenizer
from tokenizer.corpus.embedded import export
from tokenizer.vqvae.model import VqConfig
from tokenizer.vqvae.train import VqTrainConfig, train


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("compare")
    export(d / "images", "val", 3, (32, 32), seed=5)
    train(VqConfig(size=(32, 32), codebook_size=256, code_dim=8, channels=16),
          VqTrainConfig(out=str(d / "vq"), steps=2, batch_size=2, train_crops=4, val_crops=2, num_threads=1),
          progress=False)
    import train as train_py
    from dctgpt.config import TrainConfig
    from dctgpt.model import GPTConfig
    make_corpus(d / "corpus", n_train=8, n_val=2, size=16, quality=50)
    train_py.main(TrainConfig(data_dir=str(d / "corpus"), out_dir=str(d / "run"), batch_size=2, max_iters=2,
                              eval_interval=2, eval_iters=1, warmup_iters=1, num_threads=1,
                              model=GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=64)))
    return d


def test_compare_writes_table_csv_and_plots(setup):
    d = setup
    bpe_vocab = JpegDctTokenizer().vocab_size + 64
    rows = cli(["--images", str(d / "images"), "--out", str(d / "out"), "--bpe_crops", "12",
                "--tokenizers", "jpeg:q=25", "jpeg:q=50,order=coarse_to_fine", f"bpe:q=25,vocab={bpe_vocab}",
                str(d / "vq"), "--checkpoint", str(d / "run")])
    names = [r.tokenizer for r in rows]
    assert names == ["jpeg q25 raster", "jpeg q50 c2f", f"bpe{bpe_vocab} q25 raster", "vq",
                     "ckpt jpeg q50 raster"]
    by = dict(zip(names, rows))
    for r in rows:
        assert r.images == 3 and r.tokens_p95 >= r.tokens_mean * 0.5
        assert r.raw_bits == pytest.approx(r.tokens_mean * math.log2(r.vocab))
        assert 0 < r.entropy_bits <= r.raw_bits + 1e-6
        assert r.encode_ips > 0 and r.decode_ips > 0 and -1 <= r.ssim <= 1
        assert math.isnan(r.model_bits) == (r.tokenizer != "ckpt jpeg q50 raster")
    jq25, jq50, bpe, vq = by["jpeg q25 raster"], by["jpeg q50 c2f"], by[names[2]], by["vq"]
    assert jq50.psnr > jq25.psnr > 20 and jq50.tokens_mean > jq25.tokens_mean
    assert bpe.psnr == jq25.psnr and bpe.tokens_mean < jq25.tokens_mean   # lossless merges, shorter
    assert vq.tokens_mean == 3 + 8 * 8 + 1 and math.isnan(vq.scan_bits) and not math.isnan(jq25.scan_bits)
    assert by["ckpt jpeg q50 raster"].model_bits > 0

    out = d / "out"
    table = (out / "results.md").read_text()
    assert table.count("\n| ") == 1 + len(rows) and "| jpeg q25 raster | " in table
    with open(out / "results.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert [r["tokenizer"] for r in csv_rows] == names
    assert float(csv_rows[0]["psnr"]) == pytest.approx(jq25.psnr, rel=1e-5)
    rd = Image.open(out / "rd.png")
    assert rd.size == (760, 520) and len(np.unique(np.asarray(rd).reshape(-1, 3), axis=0)) > 5
    grid = Image.open(out / "recon.png")
    # original + one column per distinct reconstruction (q25 = bpe q25; the ckpt is q50 at 16x16)
    assert grid.size[0] == 5 * (64 + 4) + 4 and grid.size[1] == 18 + 3 * (64 + 4) + 4


def test_video_table_both_modes(setup, tmp_path):
    av = pytest.importorskip("av")
    frames = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((setup / "images").glob("*.png"))]
    clip = tmp_path / "still.mp4"
    with av.open(str(clip), "w") as c:                     # frame 0 held for 3 frames, then frame 1
        s = c.add_stream("libx264", rate=5)
        s.width = s.height = 32
        s.pix_fmt = "yuv420p"
        for img in [frames[0]] * 3 + [frames[1]]:
            for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    cli(["--images", str(setup / "images"), "--out", str(tmp_path / "out"), "--tokenizers", "jpeg:q=50",
         "--qualities", "50", "--videos", str(clip), "--video_size", "32", "32"])
    with open(tmp_path / "out" / "results_video.csv") as f:
        rows = {r["mode"]: r for r in csv.DictReader(f)}
    intra, delta = rows["intra"], rows["delta"]
    assert intra["frames"] == delta["frames"] == "4" and intra["first_frame"] == delta["first_frame"]
    assert float(delta["later_mean"]) < 0.7 * float(intra["later_mean"])   # held frames cost ~nothing
    assert float(delta["psnr"]) == float(intra["psnr"]) > 20              # both lossless: same frames
    assert "| still.mp4 | delta | 50 | 4 |" in (tmp_path / "out" / "results_video.md").read_text()


def test_specs_and_errors(setup, tmp_path, capsys):
    assert expand(["jpeg-grid"], [10, 50], 2048) == [
        "jpeg:q=10,order=raster", "jpeg:q=10,order=coarse_to_fine",
        "jpeg:q=50,order=raster", "jpeg:q=50,order=coarse_to_fine"]
    assert expand(["bpe-grid", "x"], [25], 1500) == [
        "bpe:q=25,order=raster,vocab=1500", "bpe:q=25,order=coarse_to_fine,vocab=1500", "x"]
    errors = []   # a user's mistake is one line on stderr and exit status 2
    for images, spec in ((setup / "images", "jpeg:quality=5"), (setup / "images", "webp:q=5"),
                         (tmp_path, "jpeg:q=5")):
        with pytest.raises(SystemExit) as e:
            cli(["--images", str(images), "--out", str(tmp_path / "o"), "--tokenizers", spec])
        assert e.value.code == 2
        errors.append(capsys.readouterr().err)
    assert errors[0] == "error: tokenizer spec 'jpeg:quality=5': unknown keys ['quality']\n"
    assert errors[1].startswith("error: tokenizer spec 'webp:q=5': expected jpeg:")
    assert errors[2].startswith(f"error: {tmp_path}: no image files (")
    assert [e.count("\n") for e in errors] == [1, 1, 1]


def test_lossless_rows_keep_a_finite_mean_and_sit_on_the_plot_top_edge(tmp_path):
    from dctgpt.compare import rd_plot
    from dctgpt.plot import COLORS, INF_BAND
    from tokenizer.corpus.embedded import crops
    from tokenizer.jpeg.io import encode_pixels

    images = tmp_path / "jpegs"                 # JPEGs at the tokenizer's quality: kept bit for bit
    images.mkdir()
    for c in crops("val", 3, (32, 32), seed=2):
        (images / f"{c.name}.jpg").write_bytes(encode_pixels(c.pixels, 25, "4:2:0"))
    rows = cli(["--images", str(images), "--out", str(tmp_path / "out"),
                "--tokenizers", "jpeg:q=25", "jpeg:q=10"])
    q25, q10 = rows
    assert q25.lossless == 3 and q25.psnr == math.inf
    assert q10.lossless == 0 and 20 < q10.psnr < 40
    assert "| jpeg q25 raster | " in (tmp_path / "out" / "results.md").read_text()

    def band_has(color: str, rows_: list) -> bool:
        """`color` on the dashed inf line inside the axes (left 64, right 200 px; band below top 36)."""
        y = 36 + INF_BAND // 2
        a = np.asarray(rd_plot(rows_))[y - 4:y + 5, 64:760 - 200].reshape(-1, 3)
        return bool((a == np.array(Image.new("RGB", (1, 1), color).getpixel((0, 0)))).all(1).any())

    assert band_has(COLORS[0], rows)            # the lossless q25 point of the "jpeg raster" curve
    dropped = q25.__class__(**{**q25.__dict__, "psnr": float("nan")})   # as when inf rows were dropped
    assert not band_has(COLORS[0], [q10, dropped])
