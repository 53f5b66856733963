"""dctgpt.video_plot: several video_eval runs in one table and chart, against repeating the last frame."""

import json

import pytest
from PIL import Image

from dctgpt.video_plot import cli


def write_run(folder, psnr, ssim, repeat_psnr=(23.0, 20.0), repeat_ssim=(0.6, 0.5)):
    """A video_eval.json of two clips and k = 1, 2: clip 0 as given, clip 1 always worse than repeating."""
    def clip(name, psnr, ssim):
        return {"name": name, "frames": 4, "tokens": 10, "bits": 0.0, "frame_bits": [0.0] * 4,
                "scan_bits": [0] * 4, "psnr": list(psnr), "ssim": list(ssim),
                "repeat_psnr": list(repeat_psnr), "repeat_ssim": list(repeat_ssim)}

    folder.mkdir()
    report = {"config": {"frames": 2}, "clips": [clip("a", psnr, ssim), clip("b", [10.0] * 2, [0.1] * 2)]}
    (folder / "video_eval.json").write_text(json.dumps(report))
    return str(folder)


def test_table_and_chart_hold_every_run_and_the_baseline(tmp_path, capsys):
    a = write_run(tmp_path / "greedy", psnr=(24.0, 19.0), ssim=(0.5, 0.55))
    b = write_run(tmp_path / "mean", psnr=(22.0, 21.0), ssim=(0.7, 0.4))
    png = tmp_path / "plots" / "psnr.png"
    table = cli(["--runs", a, b, "--labels", "greedy", "mean of 8", "--out", str(png)])
    assert table in capsys.readouterr().out
    rows = table.splitlines()
    assert rows[2] == "| repeat the last given frame | 23.00 / 20.00 | |"
    assert rows[3] == "| greedy | 17.00 / 14.50 | 1 / 0 of 2 |"
    assert rows[4] == "| mean of 8 | 16.00 / 15.50 | 0 / 1 of 2 |"
    assert Image.open(png).size == (760, 520)
    # by SSIM the clips that beat repeating are others: counted from each clip, not from the PSNR wins
    table = cli(["--runs", a, b, "--metric", "ssim", "--out", str(tmp_path / "ssim.png")])
    assert table.splitlines()[3:] == ["| greedy | 0.300 / 0.325 | 0 / 1 of 2 |",
                                      "| mean | 0.400 / 0.250 | 1 / 0 of 2 |"]


def test_runs_of_other_clips_labels_and_folders_are_one_line_errors(tmp_path, capsys):
    a = write_run(tmp_path / "a", psnr=(24.0, 19.0), ssim=(0.5, 0.5))
    other = write_run(tmp_path / "other", psnr=(24.0, 19.0), ssim=(0.5, 0.5), repeat_psnr=(23.0, 20.5))
    out = str(tmp_path / "x.png")
    for argv, message in [([a, other], "did not score the same clips"),
                          ([a, str(tmp_path / "missing")], "no video_eval.json"),
                          ([a, "--labels", "one", "two"], "2 given for 1 runs")]:
        with pytest.raises(SystemExit) as e:
            cli(["--runs", *argv, "--out", out])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.png").exists()
