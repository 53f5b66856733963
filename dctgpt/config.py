"""Frozen config dataclasses from recipe files and `--key=value` overrides.

`parse_config(TrainConfig, ["configs/quickstart.json", "--max_iters=100"])`: JSON recipe files are
applied in order, then the overrides; an unknown key or a value of the wrong type is a ValueError
that names the key, the value and the expected type.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, TypeVar

C = TypeVar("C")


def _types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(cls: type, key: str, value: Any, from_text: bool) -> Any:
    """Check (JSON) or parse (command line) one value against the field's type."""
    types = _types(cls)
    if key not in types:
        raise ValueError(f"{cls.__name__}: unknown key {key!r}; known keys: "
                         f"{', '.join(sorted(f.name for f in dataclasses.fields(cls)))}")
    t = types[key]
    want = t.__name__ if isinstance(t, type) else str(t)
    if from_text:
        try:
            if t is bool:
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError
                return value.lower() in ("true", "1")
            return t(value)
        except ValueError:
            raise ValueError(f"--{key}={value}: expected {want}") from None
    ok = (isinstance(value, t) and not (t is int and isinstance(value, bool))) or (
        t is float and isinstance(value, int) and not isinstance(value, bool))
    if not ok:
        raise ValueError(f"{cls.__name__}.{key}={value!r}: expected {want}, got {type(value).__name__}")
    return float(value) if t is float else value


def parse_config(cls: type[C], argv: list[str]) -> C:
    """Build `cls` from recipe files (positional .json paths) then `--key=value` overrides."""
    values: dict[str, Any] = {}
    for arg in argv:
        if arg.startswith("--"):
            if "=" not in arg:
                raise ValueError(f"{arg}: expected --key=value")
            key, text = arg[2:].split("=", 1)
            values[key] = _coerce(cls, key, text, from_text=True)
        else:
            path = Path(arg)
            if not path.is_file():
                raise FileNotFoundError(f"{path}: no such config file (expected a JSON recipe in configs/)")
            recipe = json.loads(path.read_text())
            if not isinstance(recipe, dict):
                raise ValueError(f"{path}: expected a JSON object of key: value")
            for key, value in recipe.items():
                if key.startswith("_"):  # "_comment" and the like
                    continue
                try:
                    values[key] = _coerce(cls, key, value, from_text=False)
                except ValueError as e:
                    raise ValueError(f"{path}: {e}") from None
    return cls(**values)


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def from_dict(cls: type[C], d: dict) -> C:
    """Rebuild a config saved with `to_dict`, checking every key and type."""
    return cls(**{k: _coerce(cls, k, v, from_text=False) for k, v in d.items()})
