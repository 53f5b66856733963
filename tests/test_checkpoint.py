"""Checkpoints: a kill at any point of a save leaves one whole checkpoint (ckpt/ or ckpt.old/), the
next save cleans up, and resuming with another model configuration is a clear error."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dctgpt import checkpoint
from dctgpt.model import GPT, GPTConfig
from tokenizer import JpegDctConfig, JpegDctTokenizer

ROOT = Path(__file__).resolve().parents[1]


def tiny_model(step: int) -> GPT:
    """The model as saved at iteration `step`: every weight shifted by step (so steps differ)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=JpegDctTokenizer().vocab_size, block_size=32, n_layer=2, n_head=2,
                          n_embd=32))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(step)
    return model


def save(out: Path, step: int) -> None:
    model = tiny_model(step)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)
    model(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, 5, dtype=torch.long))[0].sum().backward()
    optimizer.step()   # optimizer state to save; lr 0 leaves the weights as they are
    checkpoint.save(out, model, optimizer, JpegDctTokenizer(JpegDctConfig(quality=50, size=(16, 16))),
                    {"iter_num": step})


def assert_holds(out: Path, step: int) -> None:
    """The checkpoint a reader finds in `out` is the whole one of iteration `step`."""
    ck = checkpoint.load(out)
    assert ck.meta["iter_num"] == step and ck.tokenizer.config.size == (16, 16)
    ref = tiny_model(step).state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in ck.model.state_dict().items())
    opt = torch.optim.AdamW(ck.model.parameters(), lr=1e-3)
    checkpoint.load_optimizer(ck.directory, opt)
    assert len(opt.state) == len(list(ck.model.parameters()))


# A child process saves step 1, then dies by SIGKILL at one point of saving step 2.
KILLED_SAVE = """
import os, signal, sys
from pathlib import Path
sys.path[:0] = [{root!r}, {tests!r}]
import test_checkpoint as t
from dctgpt import checkpoint
out, point = Path(sys.argv[1]), sys.argv[2]
t.save(out, 1)
die = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
replace = os.replace
def replace_then_maybe_die(src, dst):
    replace(src, dst)
    if Path(dst).name == point:
        die()
if point == "writing":                      # the optimizer file of ckpt.tmp/ is being written
    checkpoint.save_file = die
else:                                       # just after ckpt/ -> ckpt.old/, or ckpt.tmp/ -> ckpt/
    os.replace = replace_then_maybe_die
t.save(out, 2)
"""


@pytest.mark.parametrize("point, found, where", [("writing", 1, "ckpt"), ("ckpt.old", 1, "ckpt.old"),
                                                 ("ckpt", 2, "ckpt")])
def test_a_kill_during_save_leaves_a_whole_checkpoint(tmp_path, point, found, where):
    script = KILLED_SAVE.format(root=str(ROOT), tests=str(ROOT / "tests"))
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path), point], cwd=ROOT,
                          capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert checkpoint.resolve(tmp_path) == tmp_path / where
    assert_holds(tmp_path, found)
    save(tmp_path, 3)                                     # the next save works and cleans up
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert_holds(tmp_path, 3)


def test_reader_falls_back_to_ckpt_old(tmp_path):
    save(tmp_path, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    os.replace(tmp_path / "ckpt", tmp_path / "ckpt.old")      # as between the two renames of a save
    (tmp_path / "ckpt.tmp").mkdir()                           # and a new one not yet complete
    assert checkpoint.resolve(tmp_path) == tmp_path / "ckpt.old"
    assert_holds(tmp_path, 1)
    (tmp_path / "ckpt").mkdir()                               # an empty ckpt/ is not a checkpoint
    assert checkpoint.resolve(tmp_path) == tmp_path / "ckpt.old"
    for d in ("ckpt", "ckpt.old", "ckpt.tmp"):
        os.rename(tmp_path / d, tmp_path / f"gone-{d}")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        checkpoint.load(tmp_path)


def test_resume_with_another_model_config_is_a_clear_error(tmp_path):
    from dataclasses import replace

    from tiny_corpus import make_corpus

    import train  # here, so the killed child processes above need not import it
    from dctgpt.config import TrainConfig

    make_corpus(tmp_path / "corpus")
    cfg = TrainConfig(data_dir=str(tmp_path / "corpus"), out_dir=str(tmp_path / "run"), batch_size=2,
                      max_iters=1, eval_interval=1, eval_iters=1, warmup_iters=0, num_threads=1,
                      model=GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=64))
    train.main(cfg)
    resume = replace(cfg, max_iters=2, init_from="resume")
    keys = ("n_layer", 3), ("n_embd", 64), ("pos_emb", "learned"), ("rope_base", 500.0), ("dropout", 0.1)
    for key, value in keys:     # rope_base and dropout leave the weights' shapes as they are
        with pytest.raises(ValueError, match=f"has {key}=") as e:
            train.main(replace(resume, model=replace(cfg.model, **{key: value})))
        assert str(tmp_path / "run") in str(e.value)
        assert [k for k, _ in keys if f"{k}=" in str(e.value)] == [key]     # names only what differs
    assert sorted(train.main(resume).train_loss) == [1]      # the same configuration resumes
