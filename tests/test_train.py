"""train.py: config parsing, a few steps, exact resume, NaN stop, packing, a 2-process gloo DDP run."""

import csv
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_corpus import make_corpus, write_images

import train
from dctgpt import checkpoint
from dctgpt.config import parse_config
from dctgpt.data import Packer
from tokenizer.corpus.shards import Corpus

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    make_corpus(d)
    return d


def tiny_config(corpus_dir: Path, out_dir: Path, **kw) -> train.TrainConfig:
    cfg = dict(data_dir=str(corpus_dir), out_dir=str(out_dir), n_layer=2, n_head=2, n_embd=32,
               block_size=64, batch_size=4, max_iters=6, eval_interval=3, eval_iters=2, warmup_iters=2,
               lr_decay_iters=6, learning_rate=3e-3, num_threads=1, dropout=0.1)
    cfg.update(kw)
    return train.TrainConfig(**cfg)


def test_parse_config_recipe_and_overrides(tmp_path):
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"_comment": "x", "max_iters": 7, "learning_rate": 1, "compile": False}))
    cfg = parse_config(train.TrainConfig, [str(recipe), "--batch_size=3", "--compile=true",
                                           "--out_dir=o"])
    got = (cfg.max_iters, cfg.learning_rate, cfg.batch_size, cfg.compile, cfg.out_dir)
    assert got == (7, 1.0, 3, True, "o")
    with pytest.raises(ValueError, match="unknown key 'max_iter'"):
        parse_config(train.TrainConfig, ["--max_iter=3"])
    with pytest.raises(ValueError, match="--batch_size=big: expected int"):
        parse_config(train.TrainConfig, ["--batch_size=big"])
    recipe.write_text(json.dumps({"max_iters": "7"}))
    with pytest.raises(ValueError, match="r.json: TrainConfig.max_iters='7': expected int"):
        parse_config(train.TrainConfig, [str(recipe)])
    with pytest.raises(ValueError, match="init_from='restart'"):
        parse_config(train.TrainConfig, ["--init_from=restart"])


def test_every_recipe_in_configs_parses():
    recipes = sorted((ROOT / "configs").glob("*.json"))
    assert {"quickstart.json", "cpu_2h.json", "gpu_256.json"} <= {p.name for p in recipes}
    for p in recipes:
        parse_config(train.TrainConfig, [str(p)])


def test_packed_rows_keep_images_apart(corpus_dir):
    split = Corpus(corpus_dir).split("train")
    b = Packer(split, 64, pad_id=0).batch(8, [0, 1, 2])
    assert b.idx.shape == (8, 64) and b.positions.shape == (8, 64, 5)
    for r in range(8):
        doc, idx, tgt = b.doc[r].numpy(), b.idx[r].numpy(), b.targets[r].numpy()
        same = np.flatnonzero((doc[1:] == doc[:-1]) & (doc[1:] >= 0))
        assert np.array_equal(tgt[same], idx[same + 1])  # within an image: next token
        assert (np.delete(tgt[:-1], same) == -1).all()  # across images / into padding: ignored
        for d in set(doc[doc >= 0]):  # each image's tokens are a contiguous piece of the corpus
            start = split.offsets[d]
            piece = idx[doc == d]
            seq = split.ids[start:start + split.lengths[d]]
            assert any(np.array_equal(seq[o:o + len(piece)], piece) for o in range(len(seq) - len(piece) + 1))
    again = Packer(split, 64, pad_id=0).batch(8, [0, 1, 2])
    assert torch.equal(again.idx, b.idx)  # a pure function of the seed


def test_train_then_resume_equals_uninterrupted(corpus_dir, tmp_path):
    full = train.main(tiny_config(corpus_dir, tmp_path / "a"))
    assert sorted(full.train_loss) == list(range(6)) and sorted(full.val_loss) == [0, 3, 6]
    assert full.train_loss[5] < full.train_loss[0]
    part = train.main(tiny_config(corpus_dir, tmp_path / "b", max_iters=3))  # as if killed at 3
    assert sorted(part.train_loss) == [0, 1, 2]
    resumed = train.main(tiny_config(corpus_dir, tmp_path / "b", init_from="resume"))
    assert sorted(resumed.train_loss) == [3, 4, 5]
    for it in (3, 4, 5):
        assert resumed.train_loss[it] == full.train_loss[it]
    assert resumed.val_loss[6] == full.val_loss[6]
    rows = list(csv.DictReader(open(tmp_path / "b" / "log.csv")))
    assert [int(r["iter"]) for r in rows if r["train_loss"]] == list(range(6))
    assert (tmp_path / "b" / "loss.png").stat().st_size > 0
    ck = checkpoint.load(tmp_path / "b")
    assert ck.meta["iter_num"] == 6 and ck.tokenizer.vocab_size == ck.model.config.vocab_size
    assert not (tmp_path / "b" / "ckpt.tmp").exists() and not (tmp_path / "b" / "ckpt.old").exists()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(corpus_dir, tmp_path):
    cfg = tiny_config(corpus_dir, tmp_path, learning_rate=1e30, decay_lr=False, grad_clip=0.0,
                      max_iters=20, eval_interval=20, dropout=0.0)
    with pytest.raises(train.TrainingDiverged, match="loss is (nan|inf)"):
        train.main(cfg)
    ck = checkpoint.load(tmp_path)
    assert ck.meta["iter_num"] == 0
    assert all(torch.isfinite(p).all() for p in ck.model.parameters())


def test_missing_corpus_without_prepare_args_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no corpus.json"):
        train.main(tiny_config(tmp_path / "nothing", tmp_path / "out"))


@pytest.mark.slow
def test_two_process_gloo_ddp_matches_one_process(corpus_dir, tmp_path):
    common = [f"--{k}={v}" for k, v in vars(replace(tiny_config(corpus_dir, tmp_path), dropout=0.0,
                                                       gradient_accumulation_steps=2)).items()
              if k != "out_dir"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    str(ROOT / "train.py"), *common, f"--out_dir={tmp_path / 'ddp'}"],
                   check=True, env=env, cwd=ROOT, capture_output=True, timeout=240)
    single = train.main(parse_config(train.TrainConfig, common + [f"--out_dir={tmp_path / 'one'}"]))
    rows = [r for r in csv.DictReader(open(tmp_path / "ddp" / "log.csv")) if r["train_loss"]]
    assert [int(r["iter"]) for r in rows] == list(range(6))
    for r in rows:  # the two processes' micro-batches are the single process's accumulation steps
        assert float(r["train_loss"]) == pytest.approx(single.train_loss[int(r["iter"])], abs=1e-5)


@pytest.mark.slow
def test_missing_corpus_is_tokenized_first_through_prepare_args(tmp_path):
    write_images(tmp_path / "photos", 16, size=16)
    data = tmp_path / "data"
    cfg = tiny_config(data, tmp_path / "out", max_iters=2, eval_interval=2,
                      prepare_args=f"--source {tmp_path / 'photos'} --size 16 16 --quality 50 "
                                   "--val_fraction 0.25 --workers 1")
    result = train.main(cfg)
    assert (data / "corpus.json").is_file() and sorted(result.train_loss) == [0, 1]
    assert checkpoint.load(tmp_path / "out").tokenizer.config.size == (16, 16)
