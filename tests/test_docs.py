"""The docs stay true: the README's layout lists the tree, docs/token-format.md matches the code
(its vocabulary table and its worked example), links resolve, and nothing points outside the repo.

Layout rule: each line of the README's "Layout" block is a path (a folder ends in "/"), two or more
spaces, and what it holds. A listed path must exist. A folder's contents are either described by
the folder's own line, or listed one by one: once one file or subfolder of a folder is listed,
every .py file and every subfolder holding .py files in it must be (an `__init__.py` may go
unlisted). So adding a file to a folder described by one line needs no README change, and adding
one where files are listed does. Checked under tokenizer/, dctgpt/, benchmarks/ and the top level.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tokenizer.jpeg import reference
from tokenizer.jpeg.format import Vocab

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ("tokenizer", "dctgpt", "benchmarks")


# -- the README's layout ----------------------------------------------------------------------------------

def layout_lines(readme: str) -> list[str]:
    """The lines of the first code block after the "## Layout" heading."""
    section = readme.split("\n## Layout\n", 1)[1]
    block = re.search(r"```\n(.*?)```", section, re.S)
    assert block, "the Layout section has no code block"
    return block.group(1).splitlines()


def has_python(folder: Path) -> bool:
    return any(p.suffix == ".py" for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def layout_problems(lines: list[str], root: Path, checked: tuple[str, ...] = CHECKED) -> list[str]:
    """Everything wrong with a layout listing of `root`, one message each (empty if it is true)."""
    problems, listed = [], set()
    for line in lines:
        m = re.fullmatch(r"(\S+?)(/?) {2,}\S.*", line)
        if not m:
            problems.append(f"not 'path  description': {line!r}")
            continue
        path, is_dir = m.group(1), bool(m.group(2))
        listed.add(path)
        full = root / path
        if not (full.is_dir() if is_dir else full.is_file()):
            problems.append(f"listed but missing: {path}{m.group(2)}")
    # folders whose children are listed one by one: each listed path's parents
    itemized = {str(Path(p).parent) for p in listed}
    itemized |= {str(parent) for p in listed for parent in Path(p).parents}
    candidates = list(root.glob("*.py"))
    for top in checked:
        if (root / top).is_dir():
            candidates += [root / top]
            candidates += [p for p in (root / top).rglob("*") if "__pycache__" not in p.parts
                           and (p.suffix == ".py" or (p.is_dir() and has_python(p)))]
    for p in sorted(candidates):
        rel = p.relative_to(root).as_posix()
        parent = Path(rel).parent.as_posix()
        if rel in listed or p.name == "__init__.py" or parent not in itemized:
            continue
        if p.is_dir() and any(q.startswith(rel + "/") for q in listed):
            continue                                   # a folder listed file by file
        problems.append(f"unlisted: {rel}{'/' if p.is_dir() else ''} (its folder {parent}/ lists its files "
                        f"one by one; add a line for it to the README's Layout)")
    return problems


def test_readme_layout_matches_the_tree():
    problems = layout_problems(layout_lines((ROOT / "README.md").read_text()), ROOT)
    assert not problems, "\n".join(problems)


def test_layout_check_finds_missing_and_unlisted_paths(tmp_path):
    for f in ("pkg/__init__.py", "pkg/a.py", "pkg/b.py", "pkg/sub/x.py", "pkg/fam/y.py", "tool.py",
              "bin/z.py"):
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("")
    lines = ["pkg/a.py    one file", "pkg/fam/    a folder described whole", "bin/  tools", "tool.py  a tool",
             "gone.py  not there"]

    def problems(lines):
        return sorted(p.split(" (")[0] for p in layout_problems(lines, tmp_path, ("pkg", "bin")))

    assert problems(lines) == ["listed but missing: gone.py", "unlisted: pkg/b.py", "unlisted: pkg/sub/"]
    lines = lines[:-1] + ["pkg/b.py  another", "pkg/sub/  a subfolder"]
    assert problems(lines) == []
    (tmp_path / "pkg/fam/new.py").write_text("")      # a new file in a folder described whole: fine
    (tmp_path / "bin/new.py").write_text("")
    assert problems(lines) == []
    (tmp_path / "pkg/c.py").write_text("")            # a new file where files are listed one by one
    (tmp_path / "setup.py").write_text("")            # a new top-level script
    assert problems(lines) == ["unlisted: pkg/c.py", "unlisted: setup.py"]
    assert problems(lines + ["pkg/c.py", "setup.py - no description"]) == [
        "not 'path  description': 'pkg/c.py'", "not 'path  description': 'setup.py - no description'",
        "unlisted: pkg/c.py", "unlisted: setup.py"]


# -- docs/token-format.md against the code ----------------------------------------------------------------

TOKEN_FORMAT = ROOT / "docs" / "token-format.md"


def test_vocabulary_table_matches_vocab():
    v = Vocab()
    expect = {"PAD": (v.pad, 1), "BOS": (v.bos, 1), "EOS": (v.eos, 1), "SUB": (v.sub, 5),
              "Q": (v.quality, 100), "QT_CUSTOM": (v.qt_custom, 1), "BYTE": (v.byte, 256),
              "DC": (v.dc, 2 * v.dc_range + 3), "AC": (v.ac, 16 * v.ac_stride), "ZRL": (v.zrl, 1),
              "EOB": (v.eob, 1), "SKIP": (v.skip, v.max_skip)}
    rows = re.findall(r"^\| (\d+)(?:-(\d+))? \| [^|]+ \| `(\w+)` \|", TOKEN_FORMAT.read_text(), re.M)
    table = {name: (int(a), int(b or a) - int(a) + 1) for a, b, name in rows}
    assert table == expect
    assert f"**{v.size:,}**" in TOKEN_FORMAT.read_text()


def test_worked_example_is_what_the_command_prints(capsys):
    text = TOKEN_FORMAT.read_text()
    command = r"```bash\npython -m tokenizer\.jpeg\.reference (.*?)\n```\n\n"
    m = re.search(command + r"```text\n(.*?)```", text, re.S)
    assert m, "docs/token-format.md lost its worked example"
    reference.cli(m.group(1).split())
    assert capsys.readouterr().out == m.group(2)


# -- links and pointers ---------------------------------------------------------------------------------

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(doc):
    for target in re.findall(r"\]\(([^)#\s]+)[^)]*\)", doc.read_text()):
        if "://" not in target:
            assert (doc.parent / target).exists(), f"{doc.name}: link to {target} goes nowhere"


def text_files() -> list[Path]:
    """Docs, code, tests and recipes: every file a reader may follow a path from."""
    files = [*DOCS, *ROOT.glob("*.py"), ROOT / "pyproject.toml"]
    for folder in (*CHECKED, "tests", "configs"):
        files += [p for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".md", ".json", ".toml")]
    return files


def test_named_python_files_exist():
    """A path to a .py file of the repository, named anywhere, still exists (catches moved files)."""
    named = re.compile(r"\b(?:tokenizer|dctgpt|benchmarks|tests)/[\w/.]+\.py\b")
    stale = [f"{f.relative_to(ROOT)}:{i}: {path}" for f in text_files()
             for i, line in enumerate(f.read_text().splitlines(), 1)
             for path in named.findall(line) if not (ROOT / path).is_file()]
    assert not stale, "\n".join(stale)


def test_nothing_points_outside_the_repository():
    """Docs and docstrings name only files in the repository; the one outside path the tests use is
    the optional folder of broken JPEGs next to it (../shared/robust-jpeg), skipped when absent."""
    outside = re.compile(r"/work/|\.\./shared/(?!robust-jpeg)|\b(?:DESIGN|STYLE)\.md")
    here = Path(__file__).resolve()
    hits = [f"{f.relative_to(ROOT)}:{i}: {line.strip()}" for f in text_files() if f != here
            for i, line in enumerate(f.read_text().splitlines(), 1) if outside.search(line)]
    assert not hits, "\n".join(hits)
