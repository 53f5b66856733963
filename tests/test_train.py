"""train.py: recipes, a few steps, exact resume, NaN stop, packing, the corpus step, gloo DDP runs."""

import csv
import json
import os
import shlex
import shutil
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
from dctgpt.config import TrainConfig
from dctgpt.data import Packer
from dctgpt.model import GPTConfig
from tokenizer.cli import parse_config
from tokenizer.corpus import prepare
from tokenizer.corpus.shards import Corpus

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    make_corpus(d)
    return d


TINY_MODEL = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, dropout=0.1)
TINY_FLAGS = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=64", "--max_iters=6",
              "--eval_interval=3", "--eval_iters=2", "--warmup_iters=2", "--lr_decay_iters=6",
              "--learning_rate=3e-3", "--num_threads=1"]


def tiny_config(corpus_dir: Path, out_dir: Path, **kw) -> TrainConfig:
    cfg = dict(data_dir=str(corpus_dir), out_dir=str(out_dir), batch_size=4, max_iters=6, eval_interval=3,
               eval_iters=2, warmup_iters=2, lr_decay_iters=6, learning_rate=3e-3, num_threads=1,
               model=TINY_MODEL)
    cfg.update(kw)
    return TrainConfig(**cfg)


def test_recipe_with_comments_tables_and_overrides(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text("# a recipe\nmax_iters = 7   # comment after a value\nlearning_rate = 1\n"
                      "compile = false\n[model]  # the GPT\nn_layer = 3\n"
                      '[prepare]\nsource = "photos/"\nsize = [32, 48]\n')
    cfg = parse_config(TrainConfig, [str(recipe), "--batch_size=3", "--compile", "--out_dir=o",
                                     "--n_embd", "96", "--size", "16", "16", "--prepare.seed=5"])
    got = (cfg.max_iters, cfg.learning_rate, cfg.batch_size, cfg.compile, cfg.out_dir, cfg.model.n_layer,
           cfg.model.n_embd, cfg.model.n_head, cfg.prepare.source, cfg.prepare.size, cfg.prepare.seed,
           cfg.seed)
    assert got == (7, 1.0, 3, True, "o", 3, 96, GPTConfig().n_head, "photos/", (16, 16), 5, 1337)
    default = parse_config(TrainConfig, [])
    assert default.prepare is None and default.model == GPTConfig()


def test_recipe_errors_name_the_key_and_file(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('max_iters = "7"\n')
    with pytest.raises(ValueError, match=r"^.*r\.toml: max_iters = '7': expected int, got str$"):
        parse_config(TrainConfig, [str(recipe)])
    recipe.write_text('[modle]\nn_layer = 3\n')
    with pytest.raises(ValueError, match=r"r\.toml: unknown key 'modle\.n_layer'; "
                                         r"did you mean 'model\.n_layer'\?"):
        parse_config(TrainConfig, [str(recipe)])
    recipe.write_text('max_iters = 7\n_comment = "JSON needed this; TOML has comments"\n')
    with pytest.raises(ValueError, match="unknown key '_comment'"):
        parse_config(TrainConfig, [str(recipe)])
    recipe.write_text('max_iters 7\n')
    with pytest.raises(ValueError, match=r"r\.toml: not valid TOML"):
        parse_config(TrainConfig, [str(recipe)])
    with pytest.raises(ValueError, match="^init_from='restart': expected 'scratch' or 'resume'$"):
        parse_config(TrainConfig, ["--init_from=restart"])
    with pytest.raises(ValueError, match="^missing key --source"):
        parse_config(TrainConfig, ["--quality=10"])   # a [prepare] key without the source


def test_every_recipe_in_configs_parses():
    recipes = sorted((ROOT / "configs").glob("*.toml"))
    assert [p.name for p in recipes] == ["cpu_2h.toml", "cpu_2h_256ctx.toml", "gpu_256.toml",
                                         "gpu_256ctx.toml", "quickstart.toml", "video_cpu.toml"]
    assert not list((ROOT / "configs").glob("*.json"))
    for p in recipes:
        cfg = parse_config(TrainConfig, [str(p)])
        assert cfg.prepare is not None and cfg.prepare.source == ("pans" if "video" in p.name else "embedded")
    video = parse_config(TrainConfig, [str(ROOT / "configs" / "video_cpu.toml"), "--order=coarse_to_fine"])
    assert (video.prepare.video_mode, video.prepare.clip_frames, video.prepare.order) == ("delta", 8,
                                                                                           "coarse_to_fine")
    quick = parse_config(TrainConfig, [str(ROOT / "configs" / "quickstart.toml")])
    model = quick.model
    assert (model.n_layer, model.n_embd, model.block_size, quick.batch_size) == (4, 128, 768, 8)
    assert (quick.prepare.size, quick.prepare.quality, quick.data_dir) == ((64, 64), 25, "data/embedded64")


def test_packed_rows_keep_images_apart(corpus_dir):
    split = Corpus(corpus_dir).split("train")
    tok = Corpus(corpus_dir).tokenizer()
    b = Packer(split, 64, pad_id=0).batch(8, [0, 1, 2])
    assert b.idx.shape == (8, 64) and b.positions.shape == (8, 64, 5)
    for r in range(8):
        doc, idx, tgt = b.doc[r].numpy(), b.idx[r].numpy(), b.targets[r].numpy()
        same = np.flatnonzero((doc[1:] == doc[:-1]) & (doc[1:] >= 0))
        assert np.array_equal(tgt[same], idx[same + 1])  # within an image: next token
        assert (np.delete(tgt[:-1], same) == -1).all()  # across images / into padding: ignored
        for d in set(doc[doc >= 0]):  # each image's tokens are a contiguous piece of it, positions too
            seq, piece, pos = split[d], idx[doc == d], b.positions[r].numpy()[doc == d]
            g = tok.grammar()  # the positions the grammar gives these ids, not the stored ones
            walked = np.stack([g.push(int(t)) for t in seq.ids])
            assert any(np.array_equal(seq.ids[o:o + len(piece)], piece)
                       and np.array_equal(walked[o:o + len(piece)], pos)
                       for o in range(len(seq) - len(piece) + 1))
        assert (b.positions[r].numpy()[doc < 0] == 0).all()  # padding has no position
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
                      max_iters=20, eval_interval=20, model=replace(TINY_MODEL, dropout=0.0))
    with pytest.raises(train.TrainingDiverged, match="loss is (nan|inf)"):
        train.main(cfg)
    ck = checkpoint.load(tmp_path)
    assert ck.meta["iter_num"] == 0
    assert all(torch.isfinite(p).all() for p in ck.model.parameters())


def test_missing_corpus_without_prepare_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing': no corpus.json, and no \[prepare\] in the"):
        train.main(tiny_config(tmp_path / "nothing", tmp_path / "out"))


def test_corpus_without_val_split_says_what_to_do(corpus_dir, tmp_path, capsys):
    shutil.copytree(corpus_dir, tmp_path / "c")
    meta = json.loads((tmp_path / "c" / "corpus.json").read_text())
    del meta["splits"]["val"]
    (tmp_path / "c" / "corpus.json").write_text(json.dumps(meta))
    with pytest.raises(SystemExit) as e:
        train.cli(TINY_FLAGS + [f"--data_dir={tmp_path / 'c'}", f"--out_dir={tmp_path / 'out'}"])
    assert e.value.code == 2
    assert capsys.readouterr().err == (
        f"error: data_dir='{tmp_path / 'c'}': the corpus has no val split, which training evaluates on; "
        "tokenize it again with a val share (prepare's val_fraction or val_crops)\n")


def test_missing_corpus_is_tokenized_first_in_process(tmp_path, monkeypatch):
    write_images(tmp_path / "photos", 16, size=16)
    calls, real = [], prepare.main
    monkeypatch.setattr(prepare, "main", lambda cfg: calls.append(cfg) or real(cfg))

    def no_process(*args, **kwargs):
        raise AssertionError(f"the corpus step started a process: {args}")
    monkeypatch.setattr(subprocess, "Popen", no_process)
    data = tmp_path / "data"
    cfg = tiny_config(data, tmp_path / "out", max_iters=2, eval_interval=2,
                      prepare=prepare.PrepareConfig(source=str(tmp_path / "photos"), size=(16, 16),
                                                    quality=50, val_fraction=0.25, workers=1))
    result = train.main(cfg)
    assert [(c.source, c.out, c.size) for c in calls] == [(str(tmp_path / "photos"), str(data), (16, 16))]
    assert sorted(result.train_loss) == [0, 1]
    corpus = Corpus(data)
    assert sorted(corpus.splits) == ["train", "val"]
    assert len(corpus.split("train")) + len(corpus.split("val")) == 16
    assert checkpoint.load(tmp_path / "out").tokenizer.config.size == (16, 16)
    train.main(replace(cfg, init_from="resume", max_iters=3))   # the corpus is there now: not made again
    assert len(calls) == 1


@pytest.mark.parametrize("gas, world, batch_size, expect", [
    (1, 1, 8, [[(0, slice(0, 8))]]),
    (2, 2, 4, [[(0, slice(0, 4))], [(1, slice(0, 4))]]),
    (1, 2, 8, [[(0, slice(0, 4))], [(0, slice(4, 8))]]),
    (4, 8, 16, [[(m, slice(h * 8, h * 8 + 8))] for m in range(4) for h in range(2)]),
    (3, 2, 8, [[(0, slice(0, 4)), (0, slice(4, 8)), (1, slice(0, 4))],
               [(1, slice(4, 8)), (2, slice(0, 4)), (2, slice(4, 8))]]),
])
def test_each_iteration_is_shared_out_among_processes(gas, world, batch_size, expect):
    cfg = TrainConfig(gradient_accumulation_steps=gas, batch_size=batch_size)
    assert [train.share_of_iteration(cfg, r, world) for r in range(world)] == expect


def test_an_iteration_that_does_not_divide_is_a_clear_error():
    cfg = TrainConfig(gradient_accumulation_steps=1, batch_size=5)
    with pytest.raises(ValueError, match="^batch_size=5 x gradient_accumulation_steps=1 rows do not "
                                         "divide among 2 processes: make batch_size a multiple of 2$"):
        train.share_of_iteration(cfg, 0, 2)


def run_torchrun(argv: list[str]) -> None:
    """`torchrun ARGS` as a subprocess (through python -m torch.distributed.run, one thread each)."""
    assert argv[0] == "torchrun"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", *argv[1:]], check=True, env=env, cwd=ROOT,
                   capture_output=True, timeout=240)


def logged_train_losses(out_dir: Path) -> dict[int, float]:
    rows = csv.DictReader(open(out_dir / "log.csv"))
    return {int(r["iter"]): float(r["train_loss"]) for r in rows if r["train_loss"]}


@pytest.mark.slow
def test_two_process_gloo_ddp_matches_one_process(corpus_dir, tmp_path):
    common = TINY_FLAGS + [f"--data_dir={corpus_dir}", "--batch_size=4", "--gradient_accumulation_steps=2"]
    run_torchrun(["torchrun", "--standalone", "--nproc_per_node=2", "train.py", *common,
                  f"--out_dir={tmp_path / 'ddp'}"])
    single = train.main(parse_config(TrainConfig, common + [f"--out_dir={tmp_path / 'one'}"]))
    ddp = logged_train_losses(tmp_path / "ddp")
    assert sorted(ddp) == list(range(6))
    for it, loss in ddp.items():  # the processes' micro-batches are one process's accumulation steps
        assert loss == pytest.approx(single.train_loss[it], abs=1e-5)


@pytest.mark.slow
def test_the_readme_ddp_line_runs_as_written(corpus_dir, tmp_path, monkeypatch):
    """The README's torchrun line, parsed from README.md, with a tiny model and corpus appended."""
    lines = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("torchrun ")]
    assert len(lines) == 1
    argv = shlex.split(lines[0].split("#")[0])
    monkeypatch.chdir(ROOT)
    args = argv[argv.index("train.py") + 1:]
    assert parse_config(TrainConfig, args).prepare is not None   # the README's recipe parses
    small = TINY_FLAGS + [f"--data_dir={corpus_dir}", "--max_iters=3", "--eval_interval=3"]
    run_torchrun(argv + small + [f"--out_dir={tmp_path / 'ddp'}"])
    single = train.main(parse_config(TrainConfig, args + small + [f"--out_dir={tmp_path / 'one'}"]))
    ddp = logged_train_losses(tmp_path / "ddp")
    assert sorted(ddp) == [0, 1, 2]
    for it, loss in ddp.items():  # each process took half of every micro-batch's rows (log.csv: 6 decimals)
        assert loss == pytest.approx(single.train_loss[it], abs=3e-6)
