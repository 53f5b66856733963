"""Linear probes: features are the pooled residual stream, every method and layer is reported, the
photo tasks keep their splits apart, labelled folders and saved datasets load, features are cached."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from dctgpt import checkpoint
from dctgpt.model import GPT, GPTConfig
from dctgpt.probe import ProbeConfig, cli, gpt_features, main
from dctgpt.probe_data import probe_data, region_crop
from tokenizer.base import TokenSequence
from tokenizer.corpus.embedded import crops
from tokenizer.corpus.prepare import Source, prepare
from tokenizer.jpeg.tokenizer import JpegDctConfig, JpegDctTokenizer


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny checkpoint trained a few steps on 16x16 crops of the embedded photos."""
    import train as train_py
    from dctgpt.config import TrainConfig

    d = tmp_path_factory.mktemp("probe")
    tok = JpegDctTokenizer(JpegDctConfig(size=(16, 16)))
    prepare(Source("embedded", crop_size=(16, 16)), d / "corpus", tok, train_crops=16, val_crops=4, workers=1,
            progress=False)
    train_py.main(TrainConfig(data_dir=str(d / "corpus"), out_dir=str(d / "run"), batch_size=2, max_iters=2,
                              eval_interval=2, eval_iters=1, warmup_iters=1, num_threads=1,
                              model=GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=128)))
    return d


def one_body_token(n: int, at: int, seed: int) -> TokenSequence:
    """n random ids; only token `at` is a body token (component 1), the rest look like a header."""
    rng = np.random.default_rng(seed)
    pos = np.zeros((n, 5), np.int64)
    pos[:, 2:4] = rng.integers(0, 4, (n, 2))
    pos[:, 4] = rng.integers(0, 65, n)
    pos[at, 1] = 1
    return TokenSequence(rng.integers(0, 100, n), pos)


def test_features_are_the_residual_stream_at_the_body_tokens():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=100, block_size=32, n_layer=2, n_head=2, n_embd=32)).eval()
    seqs = [one_body_token(20, 7, 0), one_body_token(9, 8, 1), one_body_token(31, 0, 2)]
    feats = gpt_features(model, seqs, batch_size=3)              # one padded batch
    assert feats.shape == (3, 3, 32)
    tr = model.transformer
    for s, f in zip(seqs, feats):
        at = int(np.flatnonzero(s.positions[:, 1])[0])
        p = torch.from_numpy(s.positions[at]).long()
        emb = tr.wte.weight[s.ids[at]] + tr.wfe.weight[p[0]] + tr.wce.weight[p[1]] + tr.wqe.weight[p[4]]
        assert torch.allclose(torch.from_numpy(f[0]), emb, atol=1e-6)       # layer 0: the embedding
        logits, _ = model(torch.from_numpy(s.ids)[None].long(), torch.from_numpy(s.positions)[None].long())
        last = model.lm_head(tr.ln_f(torch.from_numpy(f[-1])))              # last layer -> the logits
        assert torch.allclose(last, logits[0, at], atol=1e-4)
    alone = np.concatenate([gpt_features(model, [s]) for s in seqs])
    assert np.allclose(alone, feats, atol=1e-5)                            # padding never leaks in


def test_features_of_streams_longer_than_the_context_use_a_sliding_window():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=100, block_size=16, n_layer=1, n_head=2, n_embd=32)).eval()
    s = one_body_token(40, 27, 3)                     # chunks of 8: token 27 sees tokens 16..27
    f = gpt_features(model, [s])[0]
    ids, pos = torch.from_numpy(s.ids[16:28]).long(), torch.from_numpy(s.positions[16:28]).long()
    logits, _ = model(ids[None], pos[None])
    last = model.lm_head(model.transformer.ln_f(torch.from_numpy(f[-1])))
    assert torch.allclose(last, logits[0, -1], atol=1e-4)


def test_rotation_probe_reports_every_method_layer_and_seed(run, tmp_path):
    cfg = ProbeConfig(ckpt=str(run / "run"), task="rotation", images="embedded:val",
                      json=str(tmp_path / "p.json"), seeds=(0, 1), crops_per_photo=2, C=(1.0,),
                      cache=str(tmp_path / "cache"), progress=False)
    report = main(cfg)
    assert json.loads((tmp_path / "p.json").read_text()) == json.loads(json.dumps(report))
    assert report["classes"] == ["0", "90", "180", "270"] and report["seeds"] == [0, 1]
    for r in report["per_seed"]:
        assert r["counts"] == {"train": 3 * 2 * 4, "val": 3 * 1 * 4, "test": 3 * 1 * 4}   # 3 photos, 4 turns
        for m in ("trained", "random"):
            assert [x["layer"] for x in r[m]["layers"]] == [0, 1, 2]
            best = max(r[m]["layers"], key=lambda x: x["val"])
            assert (r[m]["best_layer"], r[m]["test"]) == (best["layer"], best["test"])
        for m in ("pixels", "coef_stats", "coef_grid"):
            assert r[m]["C"] == 1.0 and 0 <= r[m]["test"] <= 1
    margins = [r["trained"]["test"] - r["random"]["test"] for r in report["per_seed"]]
    s = report["summary"]
    assert s["margin_over_random"]["mean"] == pytest.approx(np.mean(margins))
    assert s["margin_over_random"]["std"] == pytest.approx(np.std(margins, ddof=1))
    assert report["per_seed"][0]["trained"] != report["per_seed"][1]["trained"]   # other crops, other init

    import dctgpt.probe as probe  # a second probe reads every feature from the cache
    calls = []
    real = probe.gpt_features
    probe.gpt_features = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        again = main(dataclasses.replace(cfg, seeds=(1,)))
    finally:
        probe.gpt_features = real
    assert calls == [] and again["per_seed"] == report["per_seed"][1:]


def test_photo_tasks_keep_splits_apart():
    photo = np.zeros((100, 500, 3), np.uint8)
    photo[:, :, 0] = np.arange(500)[None] // 2                   # red = column / 2
    for split, lo, hi in (("train", 0, 150), ("val", 150, 200), ("test", 200, 250)):
        for i in range(10):
            c = region_crop(photo, split, 16, np.random.default_rng(i)).astype(int)[:, :, 0]
            assert lo - 1 <= c.min() and c.max() <= hi            # (+-1: resampling)
    src = probe_data("source", "embedded:val", seed=0, crop=(16, 16), crops_per_photo=4)
    assert src.classes == ["chelsea", "coffee", "china"]
    assert src.splits["train"].labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert src.splits["test"].images[0].shape == (16, 16, 3)
    rot = probe_data("rotation", "embedded:val", seed=0, crop=(16, 16), crops_per_photo=1)
    im = rot.splits["train"].images
    assert all(np.array_equal(np.rot90(im[0], k), im[k]) for k in range(4))


def _class_folder(root, n=6, start=0):
    for cls, split in (("held", "val"), ("seen", "train")):   # a class per side of the embedded photos
        (root / cls).mkdir(parents=True)
        for c in crops(split, start + n, (16, 16), seed=4, start=start):
            Image.fromarray(c.pixels).save(root / cls / f"{c.name}.png")


def test_labelled_folder_and_saved_dataset(run, tmp_path):
    _class_folder(tmp_path / "folder", n=12)
    r = main(ProbeConfig(ckpt=str(run / "run"), task="labels", images=str(tmp_path / "folder"), C=(1.0,),
                         cache="none", progress=False))
    counts = r["per_seed"][0]["counts"]
    assert r["classes"] == ["held", "seen"] and sum(counts.values()) == 24 and min(counts.values()) >= 1
    _class_folder(tmp_path / "split" / "train", n=10)                  # train/ and test/ folders
    _class_folder(tmp_path / "split" / "test", n=3, start=10)
    r = main(ProbeConfig(ckpt=str(run / "run"), task="labels", images=str(tmp_path / "split"), C=(1.0,),
                         cache="none", progress=False))
    counts = r["per_seed"][0]["counts"]
    assert r["classes"] == ["held", "seen"] and counts["test"] == 6 and counts["train"] + counts["val"] == 20

    datasets = pytest.importorskip("datasets")
    images = [Image.fromarray(c.pixels) for c in crops("val", 20, (16, 16), seed=6)]
    feats = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["odd", "even"])})
    ds = datasets.Dataset.from_dict({"img": images, "label": [i % 2 for i in range(20)]}, features=feats)
    datasets.DatasetDict({"train": ds.select(range(14)), "test": ds.select(range(14, 20))}).save_to_disk(
        str(tmp_path / "hf"))
    r = main(ProbeConfig(ckpt=str(run / "run"), task="labels", images=str(tmp_path / "hf"), C=(1.0,),
                         cache="none", progress=False))
    counts = r["per_seed"][0]["counts"]
    assert r["classes"] == ["odd", "even"] and counts["test"] == 6 and counts["train"] + counts["val"] == 14


def test_user_errors_are_one_line(run, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli(["--ckpt", str(run / "run"), "--task", "rotation", "--images", str(tmp_path / "nope")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err == f"error: {tmp_path / 'nope'}: expected 'embedded' or a folder of photos\n"
    with pytest.raises(ValueError, match="task='colour'"):
        ProbeConfig(ckpt="x", task="colour")
    assert checkpoint.resolve(run / "run")


def test_features_of_a_context_model_take_each_streams_context_rows():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=100, block_size=16, n_layer=1, n_head=2, n_embd=32,
                          context=True, n_context=2, context_buckets=3)).eval()
    seqs = [one_body_token(12, 5, 0), one_body_token(9, 8, 1), one_body_token(40, 27, 3)]
    rng = np.random.default_rng(0)
    contexts = [rng.integers(0, 3, (len(s), 2)) for s in seqs]
    feats = gpt_features(model, seqs, batch_size=2, contexts=contexts)
    for s, c, f in zip(seqs, contexts, feats):
        at = int(np.flatnonzero(s.positions[:, 1])[0])
        lo = 0 if len(s) <= 16 else 16                     # the long one: chunks of 8, as above
        ids = torch.from_numpy(s.ids[lo:at + 1]).long()[None]
        pos = torch.from_numpy(s.positions[lo:at + 1]).long()[None]
        logits, _ = model(ids, pos, context=torch.from_numpy(c[lo:at + 1]).long()[None])
        assert torch.allclose(model.lm_head(model.transformer.ln_f(torch.from_numpy(f[-1]))),
                              logits[0, -1], atol=1e-4)
    zero = gpt_features(model, seqs, contexts=[np.zeros_like(c) for c in contexts])
    assert not np.allclose(zero, feats, atol=1e-3)          # the rows reach the features
    with pytest.raises(ValueError, match="context"):
        gpt_features(model, seqs)
