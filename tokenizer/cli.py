"""Command lines: a frozen config dataclass from TOML recipes and `--key=value`, user errors in one line.

    @dataclass(frozen=True)
    class ExportConfig:
        export: str                   # folder to write the PNG crops to
        crops: int = 64               # how many crops

    if __name__ == "__main__":
        run(main, ExportConfig)       # python -m pkg.mod [RECIPE.toml ...] [--key=value | --key value ...]

Every field is a key; the comment on its line is its meaning in `--help`. A field whose type is a
dataclass is a section (a TOML table; `[model]`); its keys are named by their own name, or
`section.name` where two keys share a name. Recipes (TOML files) apply in order, then the keys given on
the command line. A field without a default is required. Sequences take `--size 64 64` or `--size=64,64`;
a bare `--flag` sets a bool to true.

`run` turns a user's mistake (ValueError, OSError, TokenizerError) into one line `error: ...` on
stderr and exit status 2; set DCTGPT_DEBUG=1 to see the traceback instead.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import io
import logging
import os
import re
import sys
import tokenize
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

C = TypeVar("C")
R = TypeVar("R")
REQUIRED = dataclasses.MISSING
USER_ERRORS = (ValueError, OSError)   # TokenizerError is a ValueError
DEBUG_ENV = "DCTGPT_DEBUG"


class Key(NamedTuple):
    name: str        # full dotted name: "model.n_layer"
    flag: str        # the shortest name that selects it on the command line: "n_layer"
    type: Any        # the field's type
    default: Any     # REQUIRED when the field has no default
    meaning: str     # the comment on the field's line


def _meanings(cls: type) -> dict[str, str]:
    """Field name -> the comment on its line in the class body (the one source of --help's meanings)."""
    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    comments = {t.start[0]: t.string.lstrip("#").strip()
                for t in tokenize.generate_tokens(io.StringIO(src).readline) if t.type == tokenize.COMMENT}
    names = {f.name for f in dataclasses.fields(cls)}
    out = {}
    for i, line in enumerate(src.splitlines(), 1):
        m = re.match(r"\s+(\w+)\s*:", line)
        if m and m[1] in names and i in comments and m[1] not in out:
            out[m[1]] = comments[i]
    return out


def section_type(t: Any) -> type | None:
    """The dataclass a field of type `t` holds (`X` or `X | None`), else None."""
    args = [a for a in typing.get_args(t) if a is not type(None)] if _is_union(t) else [t]
    return args[0] if len(args) == 1 and dataclasses.is_dataclass(args[0]) else None


def _is_union(t: Any) -> bool:
    return typing.get_origin(t) in (typing.Union, types.UnionType)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return REQUIRED


def sections(cls: type, prefix: str = "") -> dict[str, tuple[type, str]]:
    """Dotted section name -> (its dataclass, its meaning), nested sections included."""
    out: dict[str, tuple[type, str]] = {}
    hints, meanings = typing.get_type_hints(cls), _meanings(cls)
    for f in dataclasses.fields(cls):
        sub = section_type(hints[f.name])
        if sub is not None:
            out[prefix + f.name] = (sub, meanings.get(f.name, ""))
            out.update(sections(sub, f"{prefix}{f.name}."))
    return out


def keys(cls: type) -> dict[str, Key]:
    """Every key of `cls`, sections flattened, in declaration order (full dotted name -> Key)."""
    raw: list[tuple[str, Any, Any, str]] = []

    def walk(c: type, prefix: str, defaults: Any) -> None:
        hints, meanings = typing.get_type_hints(c), _meanings(c)
        for f in dataclasses.fields(c):
            d = _default(f) if defaults is None else getattr(defaults, f.name)
            sub = section_type(hints[f.name])
            if sub is not None:
                walk(sub, f"{prefix}{f.name}.", d if dataclasses.is_dataclass(d) else None)
            else:
                raw.append((prefix + f.name, hints[f.name], d, meanings.get(f.name, "")))

    walk(cls, "", None)
    leaves: dict[str, int] = {}
    for name, *_ in raw:
        leaf = name.rsplit(".", 1)[-1]
        leaves[leaf] = leaves.get(leaf, 0) + 1
    out = {}
    for name, t, d, meaning in raw:
        leaf = name.rsplit(".", 1)[-1]
        flag = leaf if leaves[leaf] == 1 or leaf == name else name
        out[name] = Key(name, flag, t, d, meaning)
    return out


def resolve(name: str, table: dict[str, Key]) -> str:
    """The full name of key `name` (a full name, or a flag); a ValueError naming the nearest key."""
    if name in table:
        return name
    for k in table.values():
        if k.flag == name:
            return k.name
    candidates = [k.flag for k in table.values()] + list(table)
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown key {name!r}{hint} (--help lists every key)")


def type_name(t: Any) -> str:
    return t.__name__ if isinstance(t, type) and not typing.get_args(t) else str(t).replace("typing.", "")


def _elements(t: Any, n: int) -> list[Any] | None:
    """Element types of a tuple type for n values, or None when n does not fit it."""
    args = typing.get_args(t)
    if len(args) == 2 and args[1] is Ellipsis:
        return [args[0]] * n
    return list(args) if len(args) == n else None


def check(t: Any, value: Any) -> Any:
    """A TOML value checked against type `t` (arrays become tuples, ints fit floats); ValueError if not."""
    if _is_union(t):
        for a in typing.get_args(t):
            if a is not type(None):
                try:
                    return check(a, value)
                except ValueError:
                    pass
        raise ValueError
    if typing.get_origin(t) is tuple:
        elems = _elements(t, len(value)) if isinstance(value, (list, tuple)) else None
        if elems is None:
            raise ValueError
        return tuple(check(a, v) for a, v in zip(elems, value))
    if t is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, t) or (t is int and isinstance(value, bool)):
        raise ValueError
    return value


def from_text(t: Any, texts: list[str]) -> Any:
    """Command-line text(s) parsed as type `t`; ValueError if they do not parse."""
    if _is_union(t):
        if texts in (["none"], ["None"]) and type(None) in typing.get_args(t):
            return None
        return from_text(next(a for a in typing.get_args(t) if a is not type(None)), texts)
    if typing.get_origin(t) is tuple:
        if len(texts) == 1:   # --size=64,64 or --size=[64, 64]
            texts = [s.strip() for s in texts[0].strip("[]()").split(",") if s.strip()]
        elems = _elements(t, len(texts))
        if elems is None:
            raise ValueError
        return tuple(from_text(a, [s]) for a, s in zip(elems, texts))
    if len(texts) != 1:
        raise ValueError
    text = texts[0]
    if t is bool:
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError
        return text.lower() in ("true", "1", "yes")
    return t(text)


def _arity(t: Any) -> int | None:
    """How many tokens `--key v1 v2 ...` takes: the tuple's length, None for as many as follow, 0 for
    a bare bool."""
    if _is_union(t):
        t = next(a for a in typing.get_args(t) if a is not type(None))
    if typing.get_origin(t) is tuple:
        args = typing.get_args(t)
        return None if len(args) == 2 and args[1] is Ellipsis else len(args)
    return 0 if t is bool else 1


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        out += _flatten(v, f"{prefix}{k}.") if isinstance(v, dict) and v else [(prefix + k, v)]
    return out


def read_recipe(path: str | os.PathLike, table: dict[str, Key], known_sections: dict) -> dict[str, Any]:
    """A TOML recipe's keys, resolved and type-checked (full name -> value; a section -> {})."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such recipe file (expected a TOML file, e.g. configs/*.toml)")
    try:
        recipe = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML: {e}") from None
    values: dict[str, Any] = {}
    for name, value in _flatten(recipe):
        if name in known_sections and value == {}:
            values[name] = {}     # an empty table: the section with its defaults
            continue
        try:
            full = resolve(name, table)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        t = table[full].type
        try:
            values[full] = check(t, value)
        except ValueError:
            raise ValueError(f"{path}: {name} = {value!r}: expected {type_name(t)}, "
                             f"got {type(value).__name__}") from None
    return values


def parse_config(cls: type[C], argv: list[str]) -> C:
    """Build `cls` from TOML recipes (positional paths) then `--key=value` / `--key value ...`."""
    table, known_sections = keys(cls), sections(cls)
    values: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("--"):
            values.update(read_recipe(arg, table, known_sections))
            continue
        name, eq, text = arg[2:].partition("=")
        full = resolve(name, table)
        t = table[full].type
        if eq:
            texts = [text]
        else:
            n = _arity(t)
            j = i
            while j < len(argv) and not argv[j].startswith("--") and (n is None or j - i < n):
                j += 1
            texts, i = argv[i:j], j
            if n == 0:
                texts = ["true"]
            elif n is not None and len(texts) < n:
                raise ValueError(f"--{name}: expected {n} value{'s' * (n > 1)} ({type_name(t)})")
        try:
            values[full] = from_text(t, texts)
        except ValueError:
            raise ValueError(f"--{name}={' '.join(texts)}: expected {type_name(t)}") from None
    return build(cls, values, table)


def build(cls: type[C], values: dict[str, Any], table: dict[str, Key] | None = None, prefix: str = "",
          base: Any = None) -> C:
    """`cls` from resolved values (full name -> value); a section is built when any key under it is set."""
    table = keys(cls) if table is None else table
    hints = typing.get_type_hints(cls)
    kw: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        name = prefix + f.name
        sub = section_type(hints[f.name])
        if sub is not None:
            if any(k == name or k.startswith(name + ".") for k in values):
                start = getattr(base, f.name) if base is not None else _default(f)
                kw[f.name] = build(sub, values, table, name + ".", start if dataclasses.is_dataclass(start)
                                   else None)
        elif name in values:
            kw[f.name] = values[name]
        elif base is None and f.default is REQUIRED and f.default_factory is REQUIRED:
            k = table[name]
            raise ValueError(f"missing key --{k.flag} ({k.meaning or type_name(k.type)})")
    return dataclasses.replace(base, **kw) if base is not None else cls(**kw)


def _show(value: Any) -> str:
    if value is REQUIRED:
        return "(required)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(map(_show, value)) or '""'
    if value is None:
        return "none"
    return str(value) if value != "" else '""'


def prog_of(fn: Callable) -> str:
    """How the user ran `fn`'s module: "python -m pkg.mod" or "python script.py"."""
    mod = sys.modules.get(fn.__module__)
    spec = getattr(mod, "__spec__", None)
    name = spec.name if spec is not None else Path(getattr(mod, "__file__", "") or "main").stem
    return f"python -m {name}" if "." in name else f"python {name}.py"


def help_text(cls: type, prog: str, doc: str = "") -> str:
    """Usage, the module docstring, and every key with its default and meaning."""
    table, secs = keys(cls), sections(cls)
    lines = [f"usage: {prog} [RECIPE.toml ...] [--key=value ...]", ""]
    if doc:   # the module docstring: what the command does, with runnable examples
        lines += [doc.strip(), ""]
    lines.append("keys (--key=value or --key value; a TOML recipe sets the same keys; default, meaning):")
    section = ""
    for k in table.values():
        where = k.name.rsplit(".", 1)[0] if "." in k.name else ""
        if where != section:
            section = where
            _, meaning = secs[where]
            lines.append(f"[{where}] {meaning}".rstrip())
        left = f"  --{k.flag}={_show(k.default)}"
        lines.append(f"{left:<36} {k.meaning}" if len(left) < 36 else f"{left}  {k.meaning}")
    lines += ["", f"A user error prints one line 'error: ...' and exits 2; {DEBUG_ENV}=1 shows a traceback."]
    return "\n".join(lines)


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def run(main: Callable[[C], R], cls: type[C], argv: list[str] | None = None) -> R:
    """Parse argv into `cls` and call `main`; --help prints every key; a user error is one line, exit 2."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        if "-h" in argv or "--help" in argv:
            print(help_text(cls, prog_of(main), sys.modules[main.__module__].__doc__ or ""), flush=True)
            raise SystemExit(0)
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        return main(parse_config(cls, argv))
    except BrokenPipeError:   # the output went to `head` or the like, which has stopped reading
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0 if "-h" in argv or "--help" in argv else 1) from None
    except USER_ERRORS as e:
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        raise SystemExit(2) from None
