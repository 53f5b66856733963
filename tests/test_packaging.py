"""pyproject's extras: `.[test]` installs every package the tests import (so none is skipped for want
of it), and `.[dev]` installs everything `.[test]` does."""

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")
NOT_NEEDED = {"xformers"}   # CUDA only; test_model checks the error a user gets without it


def requirement_names(project: dict, extra: str | None) -> set[str]:
    """Normalized distribution names of the base dependencies or of an extra, self-references expanded."""
    reqs = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    names = set()
    for req in reqs:
        m = re.match(r"([A-Za-z0-9_.-]+)(?:\[([^\]]*)\])?", req)
        name = m[1].lower().replace("_", "-")
        if name == project["name"]:
            for e in m[2].split(","):
                names |= requirement_names(project, e.strip())
        else:
            names.add(name)
    return names


def imported_by_tests() -> set[str]:
    """Top-level modules the test files import or ask pytest.importorskip for."""
    found = set()
    for path in (ROOT / "tests").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
            elif (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "importorskip"
                  and node.args and isinstance(node.args[0], ast.Constant)):
                found.add(node.args[0].value.split(".")[0])
    return found


def test_test_extra_covers_what_the_tests_import_and_dev_covers_test():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base, test, dev = (requirement_names(project, e) for e in (None, "test", "dev"))
    assert test <= dev, f"in test but not dev: {sorted(test - dev)}"
    local = {p.stem for p in (ROOT / "tests").glob("*.py")} | {"tokenizer", "dctgpt", "train", "sample"}
    dists = importlib.metadata.packages_distributions()
    third_party = imported_by_tests() - set(sys.stdlib_module_names) - local - NOT_NEEDED
    assert {"av", "skvideo", "hypothesis"} <= third_party
    missing = {}
    for module in sorted(third_party):
        names = {d.lower().replace("_", "-") for d in dists.get(module, [module])}
        if not names & (base | test):
            missing[module] = sorted(names)
    assert not missing, f"imported by tests, installed by neither the dependencies nor .[test]: {missing}"
