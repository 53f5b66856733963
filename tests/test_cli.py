"""Command lines (tokenizer/cli.py): --help on every entry point, key syntax, one-line user errors."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import sample
import train
from dctgpt import compare, compare_train, evaluate, probe, video_eval, video_plot
from dctgpt.config import TrainConfig
from tokenizer.bpe import train as bpe_train
from tokenizer.cli import keys, parse_config
from tokenizer.corpus import clips, embedded, prepare
from tokenizer.hybrid import train as hybrid_train
from tokenizer.jpeg import reference
from tokenizer.vqvae import train as vq_train

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINTS = {   # the command, its cli(argv) and the config class it parses
    "python train.py": (train.cli, TrainConfig),
    "python sample.py": (sample.cli, sample.SampleConfig),
    "python -m tokenizer.corpus.prepare": (prepare.cli, prepare.PrepareConfig),
    "python -m tokenizer.corpus.embedded": (embedded.cli, embedded.ExportConfig),
    "python -m tokenizer.corpus.clips": (clips.cli, clips.ClipsConfig),
    "python -m tokenizer.jpeg.reference": (reference.cli, reference.ReferenceConfig),
    "python -m tokenizer.bpe.train": (bpe_train.cli, bpe_train.BpeTrainConfig),
    "python -m tokenizer.vqvae.train": (vq_train.cli, vq_train.VqRun),
    "python -m dctgpt.evaluate": (evaluate.cli, evaluate.EvaluateConfig),
    "python -m dctgpt.compare": (compare.cli, compare.CompareConfig),
    "python -m dctgpt.compare_train": (compare_train.cli, compare_train.TrainCompareConfig),
    "python -m dctgpt.probe": (probe.cli, probe.ProbeConfig),
    "python -m tokenizer.hybrid.train": (hybrid_train.cli, hybrid_train.HybridRun),
    "python -m dctgpt.video_eval": (video_eval.cli, video_eval.VideoEvalConfig),
    "python -m dctgpt.video_plot": (video_plot.cli, video_plot.VideoPlotConfig),
}


def run_cli(cli, argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of an entry point that exits."""
    with pytest.raises(SystemExit) as e:
        cli(argv)
    out, err = capsys.readouterr()
    return e.value.code, out, err


@pytest.mark.parametrize("prog", ENTRY_POINTS)
def test_help_lists_every_key_with_its_default_and_meaning(prog, capsys):
    cli, cls = ENTRY_POINTS[prog]
    status, out, err = run_cli(cli, ["--help"], capsys)
    assert (status, err) == (0, "")
    assert out.startswith(f"usage: {prog} [RECIPE.toml ...] [--key=value ...]\n")
    table = keys(cls)
    key_lines = [line for line in out.splitlines() if line.startswith("  --")]
    assert len(key_lines) == len(table) > 0
    for line, k in zip(key_lines, table.values()):   # in declaration order, one line each
        flag, _, meaning = line.strip().partition(" ")
        assert flag.startswith(f"--{k.flag}=") and meaning.strip() == k.meaning and k.meaning


def test_help_shows_defaults_as_they_are_typed(capsys):
    out = run_cli(train.cli, ["--help"], capsys)[1]
    for shown in ("--n_layer=6 ", "--learning_rate=0.001 ", "--compile=false ", "--source=(required) ",
                  "--size=64,64 ", "--prepare.seed=0 ", "--seed=1337 ", '--out="" '):
        assert f"\n  {shown}" in out
    assert "\n[model] the GPT; vocab_size and n_frame come from the corpus's tokenizer\n" in out
    out = run_cli(vq_train.cli, ["-h"], capsys)[1]
    assert "\n  --size=64,64 " in out and "\n  --quantizer=ema " in out
    assert "\n[train] how it is trained\n" in out


def test_done_when_commands_from_a_shell():
    env = {k: v for k, v in os.environ.items() if k != "DCTGPT_DEBUG"}
    helped = subprocess.run([sys.executable, "train.py", "--help"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert helped.returncode == 0 and "\n  --n_layer=6 " in helped.stdout and helped.stderr == ""
    typo = [sys.executable, "train.py", "configs/quickstart.toml", "--n_layr=3"]
    bad = subprocess.run(typo, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr == "error: unknown key 'n_layr'; did you mean 'n_layer'? (--help lists every key)\n"
    debug = subprocess.run(typo, cwd=ROOT, env={**env, "DCTGPT_DEBUG": "1"}, capture_output=True, text=True,
                           timeout=120)
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.endswith("ValueError: unknown key 'n_layr'; did you mean 'n_layer'? "
                                 "(--help lists every key)\n")


def test_user_errors_are_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    run = tmp_path / "run"
    no_ckpt = f"error: {run}: no checkpoint (expected ckpt.json in it or in {run / 'ckpt'})"
    cases = [
        (train.cli, ["--n_layr=3"],
         "error: unknown key 'n_layr'; did you mean 'n_layer'? (--help lists every key)"),
        (train.cli, ["--max_iters=lots"], "error: --max_iters=lots: expected int"),
        (train.cli, ["--size", "64"], "error: --size: expected 2 values (tuple[int, int])"),
        (train.cli, [str(tmp_path / "r.toml")],
         f"error: {tmp_path / 'r.toml'}: no such recipe file (expected a TOML file, e.g. configs/*.toml)"),
        (sample.cli, ["--temperature=hot"], "error: --temperature=hot: expected float"),
        (sample.cli, [f"--out_dir={tmp_path / 'run'}"], no_ckpt),
        (evaluate.cli, ["--ckpt", str(tmp_path / "run"), "--images", str(tmp_path)], no_ckpt),
        (prepare.cli, ["--source", str(tmp_path / "empty"), "--out", str(tmp_path / "c"), "--workers=1"],
         f"error: {tmp_path / 'empty'}: no image files ({', '.join(sorted(prepare.IMAGE_EXTS))})"),
        (prepare.cli, ["--source", str(tmp_path / "none"), "--out", str(tmp_path / "c")],
         f"error: source='{tmp_path / 'none'}': no such folder (expected \"embedded\", \"pans\", a "
         "folder of images or videos, a saved dataset or hf:NAME)"),
        (prepare.cli, ["--source=embedded"],
         "error: out: expected the corpus directory to write, e.g. --out=data/mine"),
        (embedded.cli, [], "error: missing key --export (folder to write the crops (or photos) to)"),
        (embedded.cli, ["--export=x", "--split=test"],
         "error: split='test': expected one of ['train', 'val', 'frames']"),
        (bpe_train.cli, ["--corpus", str(tmp_path), "--out", str(tmp_path / "b")],
         f"error: {tmp_path / 'corpus.json'}: not a tokenized corpus "
         "(run python -m tokenizer.corpus.prepare)"),
    ]
    for cli, argv, line in cases:
        assert run_cli(cli, argv, capsys) == (2, "", line + "\n")


@dataclass(frozen=True)
class Inner:
    size: tuple[int, int] = (8, 8)   # two ints
    seed: int = 0                    # shared with the outer seed
    name: str | None = None          # optional


@dataclass(frozen=True)
class Outer:
    path: str                        # required
    seed: int = 1                    # outer seed
    scale: float = 1.0               # a float
    flag: bool = False               # a bool
    tags: tuple[str, ...] = ()       # any number of strings
    inner: Inner = Inner()           # a section


def test_key_forms_on_the_command_line(tmp_path):
    cfg = parse_config(Outer, ["--path", "p", "--size", "3", "4", "--tags", "a", "b", "--flag", "--scale=2",
                               "--inner.seed=5", "--seed", "-7", "--name=none"])
    assert cfg == Outer("p", -7, 2.0, True, ("a", "b"), Inner((3, 4), 5, None))
    cfg = parse_config(Outer, ["--path=p", "--size=3,4", "--tags=a,b", "--flag=false", "--tags", "--name=x"])
    assert cfg == Outer("p", tags=(), inner=Inner((3, 4), name="x"))
    recipe = tmp_path / "r.toml"
    recipe.write_text('path = "from recipe"  # a comment\nscale = 3\n\n[inner]  # the section\n'
                      'size = [1, 2]\n')
    want = Outer("from recipe", scale=4.0, inner=Inner((1, 2)))
    assert parse_config(Outer, [str(recipe), "--scale=4"]) == want
    with pytest.raises(ValueError, match=r"^missing key --path \(required\)$"):
        parse_config(Outer, [])
    with pytest.raises(ValueError, match=r"^unknown key 'sead'; did you mean 'seed'\?"):
        parse_config(Outer, ["--path=p", "--sead=1"])
    with pytest.raises(ValueError, match=r"^--size=1,2,3: expected tuple\[int, int\]$"):
        parse_config(Outer, ["--path=p", "--size=1,2,3"])
    with pytest.raises(ValueError, match=r"^--flag=maybe: expected bool$"):
        parse_config(Outer, ["--path=p", "--flag=maybe"])
    recipe.write_text('path = "p"\n[inner]\nsize = [1, "2"]\n')
    with pytest.raises(ValueError, match=r"r\.toml: inner\.size = \[1, '2'\]: expected tuple\[int, int\], "
                                         r"got list$"):
        parse_config(Outer, [str(recipe)])


def test_every_entry_point_runs_through_the_shared_helper():
    """No entry point parses its own arguments (argparse) or exits with its own message."""
    for path in [ROOT / "train.py", ROOT / "sample.py", *(ROOT / "tokenizer").rglob("*.py"),
                 *(ROOT / "dctgpt").rglob("*.py")]:
        text = path.read_text()
        assert "argparse" not in text and "SystemExit(f" not in text, path
        if re.search(r'^if __name__ == "__main__":', text, re.M):
            assert re.search(r"(return|=) run\(", text), path


def test_every_documented_command_parses(monkeypatch):
    """Each `python train.py / sample.py / -m ...` command in the README and docs/ builds its config."""
    monkeypatch.chdir(ROOT)
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    text = "\n".join(p.read_text() for p in docs).replace("\\\n", " ")
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    commands = [c for b in blocks for line in b.splitlines() for c in line.split(" # ")[0].split("&&")]
    commands += re.findall(r"`(python [^`]+)`", text)
    seen = set()
    for command in commands:
        argv = shlex.split(command)
        if "python" not in argv or "torchrun" in argv or "--help" in argv:
            continue
        argv = argv[argv.index("python"):]
        n = 3 if argv[1] == "-m" else 2
        prog = " ".join(argv[:n])
        if prog in ENTRY_POINTS:
            parse_config(ENTRY_POINTS[prog][1], argv[n:])
            seen.add(prog)
    assert seen == set(ENTRY_POINTS)
