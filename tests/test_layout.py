"""The tree keeps its shape: no import cycles, tokenizer/ never imports dctgpt, the tokenizer base
imports no concrete tokenizer, and every registered tokenizer loads by name."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tokenizer.base import TOKENIZERS, Tokenizer, tokenizer_class

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tokenizer", "dctgpt")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    mods = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    mods.update({p.stem: p for p in ROOT.glob("*.py")})   # train.py, sample.py
    return mods


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Project modules `path` imports anywhere in its body (function-level imports included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        out |= {n for n in names if n in known}
    return out


def import_graph() -> dict[str, set[str]]:
    mods = project_modules()
    return {m: imports_of(p, set(mods)) - {m} for m, p in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}          # 1: on the current path, 2: finished

    def visit(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (found := visit(n, path + [n])):
                return found
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m, [m])):
            return found
    return None


def test_no_import_cycles():
    assert find_cycle(import_graph()) is None, " -> ".join(find_cycle(import_graph()))


def test_cycle_finder_finds_a_planted_cycle():
    graph = import_graph()
    graph["tokenizer.base"] = graph["tokenizer.base"] | {"tokenizer.jpeg.tokenizer"}
    cycle = find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1] and "tokenizer.base" in cycle


def test_tokenizer_never_imports_dctgpt():
    for m, deps in import_graph().items():
        if m.startswith("tokenizer"):
            assert not {d for d in deps if d.startswith("dctgpt")}, m


def test_base_and_package_import_no_heavy_tokenizer():
    code = ("import sys, tokenizer, tokenizer.base; "
            "bad = [m for m in ('torch', 'av', 'sentencepiece', 'tokenizer.vqvae.tokenizer', "
            "'tokenizer.video.tokenizer', 'tokenizer.bpe.tokenizer') if m in sys.modules]; "
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == ""
    assert not {d for d in import_graph()["tokenizer.base"] if d != "tokenizer"}


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
def test_every_registered_tokenizer_is_found_by_its_name(name):
    cls = tokenizer_class(name)
    assert issubclass(cls, Tokenizer) and cls.name == name
    assert not getattr(cls, "__abstractmethods__", None)
