"""train.py's other execution paths: bfloat16 autocast and torch.compile, each against the plain
float32 eager run of the same configuration."""

from dataclasses import replace

import pytest
import torch
from tiny_corpus import make_corpus

import train
from dctgpt import checkpoint
from dctgpt.config import TrainConfig
from dctgpt.model import GPTConfig

# torch's own Inductor code calls a deprecated torch.jit API
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    make_corpus(d, n_train=8, n_val=2)
    return d


def run(corpus_dir, out_dir, **kw) -> train.TrainResult:
    cfg = TrainConfig(data_dir=str(corpus_dir), out_dir=str(out_dir), batch_size=2, max_iters=3,
                      eval_interval=3, eval_iters=1, warmup_iters=1, learning_rate=3e-3, num_threads=1,
                      model=GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, dropout=0.0))
    return train.main(replace(cfg, **kw))


@pytest.fixture(scope="module")
def eager(corpus_dir, tmp_path_factory):
    return run(corpus_dir, tmp_path_factory.mktemp("eager"))


def linear_output_dtypes(fn) -> set:
    """The dtypes every nn.Linear produced while `fn` ran."""
    seen = set()

    def hook(module, args, output):
        if isinstance(module, torch.nn.Linear):
            seen.add(output.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        fn()
    finally:
        handle.remove()
    return seen


def test_bfloat16_autocast_trains_in_bfloat16_close_to_float32(corpus_dir, eager, tmp_path):
    result = {}
    dtypes = linear_output_dtypes(lambda: result.update(r=run(corpus_dir, tmp_path, dtype="bfloat16")))
    assert dtypes == {torch.bfloat16}                         # every matmul ran in bfloat16
    bf16 = result["r"]
    assert sorted(bf16.train_loss) == [0, 1, 2]
    for it, loss in eager.train_loss.items():
        assert bf16.train_loss[it] == pytest.approx(loss, rel=1e-3)
    assert bf16.val_loss[3] == pytest.approx(eager.val_loss[3], rel=1e-3)
    weights = checkpoint.load(tmp_path).model.parameters()
    assert {p.dtype for p in weights} == {torch.float32}     # float32 weights, bfloat16 compute


def compiled_run(corpus_dir, out_dir, monkeypatch, **options) -> train.TrainResult:
    """train.main with compile=True, torch.compile called with `options` on top of train.py's own;
    fullgraph=True turns any graph break into an error."""
    compile_ = torch.compile
    compiled = []

    def compile_with_options(model, **kw):
        compiled.append(model)
        return compile_(model, **{**kw, "fullgraph": True, **options})

    monkeypatch.setattr(torch, "compile", compile_with_options)
    torch._dynamo.reset()
    try:
        result = run(corpus_dir, out_dir, compile=True)
    finally:
        torch._dynamo.reset()
    assert len(compiled) == 1
    return result


def test_compiled_graph_has_no_breaks_and_trains_like_eager(corpus_dir, eager, tmp_path, monkeypatch):
    """Dynamo captures the whole forward (no graph break) and AOTAutograd the backward; the aot_eager
    backend then runs the captured graphs with eager kernels, so the losses equal eager's."""
    compiled = compiled_run(corpus_dir, tmp_path, monkeypatch, backend="aot_eager")
    for it, loss in eager.train_loss.items():
        assert compiled.train_loss[it] == pytest.approx(loss, rel=1e-6)
    assert compiled.val_loss[3] == pytest.approx(eager.val_loss[3], rel=1e-6)


@pytest.mark.slow
def test_inductor_compiled_training_matches_eager(corpus_dir, eager, tmp_path, monkeypatch):
    """The default backend (Inductor, C++ kernels): what compile=True runs on a user's machine."""
    compiled = compiled_run(corpus_dir, tmp_path, monkeypatch)
    for it, loss in eager.train_loss.items():
        assert compiled.train_loss[it] == pytest.approx(loss, rel=1e-4)
    assert compiled.val_loss[3] == pytest.approx(eager.val_loss[3], rel=1e-4)
