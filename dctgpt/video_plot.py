"""Several `dctgpt.video_eval` runs on the same clips in one chart and one table, against repeating
the last frame (measured in every run; the runs must agree on it, so they scored the same clips).
Each run's rows are recomputed from its per-clip scores by `video_eval.step_rows`.

    python -m dctgpt.video_plot --runs out/video_eval out/video_eval_mean --labels greedy "mean of 8" \\
        --out out/video_runs.png

Prints a markdown table (one row per run: the metric at k = 1..K and the clips where the model beats
repeating) and draws the metric against k.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dctgpt.plot import Series, line_plot
from dctgpt.video_eval import ClipResult, StepRow, step_rows
from tokenizer.cli import run


@dataclass(frozen=True)
class VideoPlotConfig:
    runs: tuple[str, ...]         # video_eval output folders (each holds video_eval.json)
    out: str                      # the chart (PNG)
    labels: tuple[str, ...] = ()  # one per run; default: the folder names
    metric: str = "psnr"          # "psnr" or "ssim"

    def __post_init__(self) -> None:
        if not self.runs:
            raise ValueError("runs: expected at least one video_eval output folder")
        if self.labels and len(self.labels) != len(self.runs):
            raise ValueError(f"labels: {len(self.labels)} given for {len(self.runs)} runs")
        if self.metric not in ("psnr", "ssim"):
            raise ValueError(f"metric={self.metric!r}: expected 'psnr' or 'ssim'")


def load_steps(folder: str) -> list[StepRow]:
    """A run's rows k = 1..K, recomputed from its clips by video_eval.step_rows."""
    path = Path(folder) / "video_eval.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no video_eval.json (not a dctgpt.video_eval output folder)")
    report = json.loads(path.read_text())
    rows = step_rows([ClipResult(**c) for c in report["clips"]], report["config"]["frames"])
    if not rows:
        raise ValueError(f"{path}: no prediction steps (no clip had enough frames)")
    return rows


def main(cfg: VideoPlotConfig) -> str:
    """Draw cfg.out; return (and print) the table."""
    m = cfg.metric
    labels = list(cfg.labels) or [Path(r).name for r in cfg.runs]
    runs = [load_steps(r) for r in cfg.runs]
    repeat = [getattr(s, f"repeat_{m}") for s in runs[0]]
    for folder, steps in zip(cfg.runs[1:], runs[1:]):
        other = [getattr(s, f"repeat_{m}") for s in steps]
        if other != repeat:   # the same clips, frames and tokenizer give the very same numbers
            raise ValueError(f"{folder}: its repeat-last-frame {m} differs from {cfg.runs[0]}'s: the runs "
                             "did not score the same clips")
    ks = [float(s.k) for s in runs[0]]
    unit = "PSNR (dB)" if m == "psnr" else "SSIM"
    series = [Series(label, [float(s.k) for s in steps], [getattr(s, m) for s in steps])
              for label, steps in zip(labels, runs)] + [Series("repeat last frame", ks, repeat)]
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    line_plot(series, f"next-frame prediction ({runs[0][0].clips} clips)", "frames ahead (k)", unit
              ).save(cfg.out)
    fmt = "{:.2f}" if m == "psnr" else "{:.3f}"
    k_list = " / ".join(str(s.k) for s in runs[0])
    lines = [f"| {unit} at k = {k_list} | mean | clips better than repeating |",
             "|---|---|---|",
             f"| repeat the last given frame | {' / '.join(fmt.format(v) for v in repeat)} | |"]
    for label, steps in zip(labels, runs):
        wins = [s.model_wins if m == "psnr" else s.ssim_wins for s in steps]
        lines.append(f"| {label} | {' / '.join(fmt.format(getattr(s, m)) for s in steps)} | "
                     f"{' / '.join(map(str, wins))} of {steps[0].clips} |")
    table = "\n".join(lines)
    print(table)
    return table


def cli(argv: list[str] | None = None) -> str:
    return run(main, VideoPlotConfig, argv)


if __name__ == "__main__":
    cli()
