"""dctgpt.video_eval: bits per frame, the repeat-last-frame baseline, oracle predictions, the CLI."""

import json
import math

import numpy as np
import pytest
import torch

from dctgpt import checkpoint, video_eval
from dctgpt.evaluate import sequence_nll
from dctgpt.measure import to_rgb
from dctgpt.model import GPT, GPTConfig
from tokenizer.corpus.clips import pans
from tokenizer.jpeg.io import write_coefficients
from tokenizer.video.tokenizer import VideoConfig, VideoTokenizer

pytest.importorskip("av")
SIZE = (16, 16)


def tiny(tok, block_size: int = 128) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=tok.vocab_size, n_frame=tok.n_frame, n_layer=2, n_head=2, n_embd=32,
                         block_size=block_size)).eval()


@pytest.fixture(scope="module")
def setup():
    tok = VideoTokenizer(VideoConfig(mode="delta", quality=50, size=SIZE, max_frames=4))
    moving = next(c for c in pans("val", 8, 4, SIZE) if not np.array_equal(c[0], c[1]))
    return tok, tiny(tok), moving


def test_frame_bits_are_each_frames_tokens_and_sum_to_the_clip(setup):
    tok, _, clip = setup
    model = tiny(tok, block_size=32)
    seq = tok.encode(clip)
    bits = video_eval.frame_bits(model, seq, stride=16)          # sliding windows of 32 tokens
    assert len(seq) > 2 * 32
    nll = sequence_nll(model, seq, stride=16) / math.log(2)
    assert bits.sum() == pytest.approx(nll.sum(), rel=1e-12)
    for f in range(4):                                           # token t (t >= 1) counts in its frame
        want = sum(nll[t - 1] for t in range(1, len(seq)) if seq.positions[t, 0] == f)
        assert bits[f] == pytest.approx(want, rel=1e-12)
    r = video_eval.evaluate_clip(model, tok, clip, "pan", prefix=2, steps=2, stride=16)
    assert r.frames == 4 and r.tokens == len(seq) and r.bits == pytest.approx(nll.sum(), rel=1e-12)
    assert r.frame_bits == pytest.approx(bits.tolist(), rel=1e-12)


def test_repeat_last_frame_baseline_is_exact(setup):
    tok, model, clip = setup
    still = video_eval.evaluate_clip(model, tok, [clip[0]] * 4, "still", prefix=2, steps=2)
    assert still.repeat_psnr == [math.inf, math.inf] and still.repeat_ssim == [1.0, 1.0]
    moving = video_eval.evaluate_clip(model, tok, clip, "pan", prefix=2, steps=2)
    truth = [to_rgb(write_coefficients(cf)) for cf in tok.frames(clip)]
    for k in (1, 2):                                             # the last given frame vs true frame k
        psnr, ssim = video_eval.frame_quality(truth[1 + k], truth[1])
        assert math.isfinite(psnr) and moving.repeat_psnr[k - 1] == psnr and moving.repeat_ssim[k - 1] == ssim


def test_a_model_that_writes_the_true_frames_scores_them_exactly(setup, monkeypatch):
    tok, model, clip = setup
    true_stream = tok.encode(clip)

    def oracle(model, rollout, prompt, n, cfg):
        assert prompt == true_stream[:len(prompt)] and prompt.positions[-1, 0] == 1  # 2 frames given
        assert rollout.n_frames == 4 and cfg.temperature == 0                       # greedy, 2 more
        return [true_stream]

    monkeypatch.setattr(video_eval, "generate", oracle)
    r = video_eval.evaluate_clip(model, tok, clip, "pan", prefix=2, steps=2)
    assert r.psnr == [math.inf, math.inf] and r.ssim == [1.0, 1.0]
    assert all(p < math.inf for p in r.repeat_psnr)              # the clip moves: repeating is not exact
    rows = video_eval.step_rows([r], 2)
    assert [(x.psnr_exact, x.model_wins, x.repeat_exact) for x in rows] == [(1, 1, 0), (1, 1, 0)]
    assert video_eval.verdict(rows).startswith("The model beats")


def test_psnr_means_of_model_and_repeat_are_over_the_same_clips():
    def clip(name, psnr, repeat):
        return video_eval.ClipResult(name, 2, 10, 0.0, [0.0, 0.0], [0, 0], psnr=[psnr], ssim=[0.5],
                                     repeat_psnr=[repeat], repeat_ssim=[0.5])

    # a still clip that repeating predicts exactly and the model nearly (62 dB), and a moving one
    rows = video_eval.step_rows([clip("still", 62.0, math.inf), clip("moving", 20.0, 21.0),
                                 clip("solved", math.inf, math.inf)], 1)
    r = rows[0]
    assert (r.psnr, r.repeat_psnr) == (20.0, 21.0)   # the still clip in neither mean (not in one alone)
    assert (r.clips, r.psnr_exact, r.repeat_exact, r.model_wins) == (3, 1, 2, 0)
    assert video_eval.verdict(rows).startswith("The model does not beat")


def test_greedy_rollout_stops_after_the_predicted_frames(setup):
    tok, model, clip = setup
    seq = tok.encode(clip)
    g = video_eval._Rollout(tok, 3).grammar(seq[:1])
    ended = 0
    for t in seq.ids[1:]:                                        # the true stream under the horizon of 3
        m = g.allowed()
        if m[[tok.frame_i, tok.frame_d, tok.eos_id]].any():      # between frames: `ended` are complete
            assert m[tok.eos_id] == (ended == 3)                 # no EOS before the horizon
            if ended == 3:
                assert m.sum() == 1 and not g.done               # only EOS at it
                break
            ended += 1
        g.push(int(t))
    assert ended == 3
    frames = video_eval.predict(model, tok, seq, prefix=1, steps=2)
    assert len(frames) == 2 and all(f.shape == (*SIZE, 3) and f.dtype == np.uint8 for f in frames)


def test_mean_rule_predicts_the_pixel_mean_of_the_rollouts(setup, monkeypatch):
    tok, model, clip = setup
    true_stream = tok.encode(clip)
    still_stream = tok.encode(clip[:2] + [clip[1]] * 2)          # the same 2 given frames, then still
    assert still_stream[:40] == true_stream[:40]

    def two_rollouts(model, rollout, prompt, n, cfg):
        assert n == 2 and cfg.temperature == 0.7
        return [true_stream, still_stream]

    monkeypatch.setattr(video_eval, "generate", two_rollouts)
    truth = [to_rgb(write_coefficients(cf)) for cf in tok.frames(clip)]
    mean = video_eval.predict(model, tok, true_stream, 2, 2, samples=2, temperature=0.7, rule="mean")
    for k in (1, 2):                          # halfway between the true frame and the last given one
        want = np.rint((truth[1 + k].astype(float) + truth[1]) / 2).astype(np.uint8)
        assert np.array_equal(mean[k - 1], want) and not np.array_equal(want, truth[1 + k])
    likeliest = video_eval.predict(model, tok, true_stream, 2, 2, samples=2, temperature=0.7)
    assert any(np.array_equal(likeliest[0], truth[i]) for i in (1, 2))   # one of the two, whole


def save_ckpt(tmp_path, tok, name="ck"):
    model = tiny(tok)
    checkpoint.save(tmp_path / name, model, None, tok, {"iter_num": 0})
    return tmp_path / name


def test_main_writes_tables_plot_and_json(setup, tmp_path):
    tok, _, clip = setup
    ck = save_ckpt(tmp_path, tok)
    report = video_eval.cli([f"--ckpt={ck}", "--clips", "pans:2", f"--out={tmp_path / 'out'}",
                             "--prefix=2", "--frames=2", "--samples=2"])
    assert [s["k"] for s in report["steps"]] == [1, 2] and report["summary"]["clips"] == 2
    assert report["decoding"].startswith("best of 2")
    saved = json.loads((tmp_path / "out" / "video_eval.json").read_text())
    assert saved["verdict"] == report["verdict"] and len(saved["clips"][0]["psnr"]) == 2
    for f in ("video_eval.md", "video_eval.csv", "prediction.png", "ssim.png", "frames.png"):
        assert (tmp_path / "out" / f).stat().st_size > 0
    assert (tmp_path / "out" / "video_eval.csv").read_text().count("\n") == 3


def test_cli_errors_are_one_line(setup, tmp_path, capsys):
    from tokenizer.jpeg.tokenizer import JpegDctConfig, JpegDctTokenizer

    tok, _, _ = setup
    ck = save_ckpt(tmp_path, tok)
    jpeg_ck = tmp_path / "jpeg"
    checkpoint.save(jpeg_ck, GPT(GPTConfig(vocab_size=1106, n_layer=1, n_head=1, n_embd=16, block_size=8)),
                    None, JpegDctTokenizer(JpegDctConfig(size=SIZE)), {"iter_num": 0})
    cases = {(f"--ckpt={ck}", "--clips=nowhere.mp4"): "nowhere.mp4",
             (f"--ckpt={ck}", "--clips=pans:x"): "pans:N",
             (f"--ckpt={ck}", "--clips=pans:1", "--prefix=3", "--frames=2"): "max_frames=4",
             (f"--ckpt={ck}", "--clips=pans:1", "--samples=1"): "samples=1",
             (f"--ckpt={ck}", "--clips=pans:1", "--rule=median"): "rule='median'",
             (f"--ckpt={ck}", "--clips=pans:1", "--rule=mean"): "samples >= 2",
             (f"--ckpt={jpeg_ck}", "--clips=pans:1"): "'jpeg_dct'",
             (f"--ckpt={tmp_path}", "--clips=pans:1"): "no checkpoint",
             (f"--ckpt={ck}", "--clips=pans:1", "--prefx=2"): "'prefix'"}
    for args, needle in cases.items():
        with pytest.raises(SystemExit) as e:
            steps = [] if "--prefix=3" in args else ["--prefix=2", "--frames=2"]
            video_eval.cli([*args, *steps, f"--out={tmp_path / 'o'}"])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("error:") and err.count("\n") == 1 and needle in err
    with pytest.raises(SystemExit) as e:
        video_eval.cli(["--help"])
    out = capsys.readouterr().out
    keys = ("ckpt", "clips", "prefix", "frames", "samples")
    assert e.value.code == 0 and all(f"--{k}" in out for k in keys)
